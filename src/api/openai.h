/* openai.h - the OpenAI chat API's JSON, mapped onto the context manager.
 *
 * POST /v1/chat/completions is one ctx_complete call, like /completion:
 *  - without a session it is stateless: `messages` is the whole
 *    conversation, rendered with the model's template (client-side mode);
 *  - with `session_id` (body, or the X-Session-Id header), or `store: true`
 *    to start one, the client sends only its new user message (and a system
 *    message on the first turn) and `turn` (body, or X-Turn); the node
 *    supplies the history (tokenized mode) and answers session_id and turn.
 * So there is no second code path for sessions: only another wire format. */
#ifndef DC_API_OPENAI_H
#define DC_API_OPENAI_H

#include <jansson.h>

#include "../ctx/ctx.h"
#include "request.h"

typedef struct {
    llm_msg *msgs; /* owned; the strings are borrowed from the parsed JSON */
    size_t n;
    bool session; /* server-side session (tokenized mode) */
} api_chat;

/* Parses a chat completion request into req (whose strings borrow from
 * *root: json_decref it after the request). The headers may be NULL. */
dc_code api_chat_parse(const char *body, size_t len, const char *hdr_session, const char *hdr_turn,
                       const api_defaults *d, ctx_request *req, api_chat *chat, json_t **root, dc_error *err);
void api_chat_free(api_chat *chat);

/* The chat.completion object for a reply. */
json_t *api_chat_json(const ctx_reply *rep, const api_chat *chat, const char *model, const char *node);

/* GET /v1/models: the one model this node serves. */
json_t *api_models_json(const char *model);

#endif
