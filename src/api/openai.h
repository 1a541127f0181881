/* openai.h - the OpenAI APIs' JSON, mapped onto the context manager.
 *
 * POST /v1/chat/completions is one turn (complete.c), like /completion:
 *  - without a session it is stateless: `messages` is the whole
 *    conversation, rendered with the model's template (client-side mode);
 *  - with `session_id` (body, or the X-Session-Id header), or `store: true`
 *    to start one, the client sends only its new user message (and a system
 *    message on the first turn) and `turn` (body, or X-Turn); the node
 *    supplies the history (tokenized mode) and answers session_id and turn.
 *
 * POST /v1/responses is the same call again. A stored response's id names
 * its session and turn ("resp_<session>_<turn>"), so `previous_response_id`
 * says where to continue: from the session's last turn it is the next
 * turn; from an older one, the node forks a new session sharing that
 * prefix (complete.c). `store: false` answers statelessly.
 *
 * So there is no second code path for sessions: only other wire formats.
 * Both stream (`stream: true`) as their own chunk and event formats. */
#ifndef DC_API_OPENAI_H
#define DC_API_OPENAI_H

#include <jansson.h>

#include "../ctx/ctx.h"
#include "../util/ids.h"
#include "../util/identity.h"
#include "json.h"

/* One parsed OpenAI request and its reply's identity, fixed before the
 * generation so that every streamed chunk can carry it. */
typedef struct {
    bool responses;     /* /v1/responses (else /v1/chat/completions) */
    llm_msg *msgs;      /* owned; the strings are borrowed from the parsed JSON */
    size_t n;
    bool session;       /* a server-side session (tokenized mode) */
    bool stream, include_usage;
    char sid[ID_MAX + 1];       /* the session; chosen here for a new one */
    char prev_sid[ID_MAX + 1];  /* responses: previous_response_id's session and turn (0: none) */
    uint32_t prev_turn;
    char id[IDENTITY_REPLY_MAX]; /* chatcmpl-..., resp_... (util/identity.h) */
    long long created;
    int seq;                    /* responses stream: sequence_number */
    const char *model, *node;
    char owner[ID_MAX + 1];     /* the owner id of the body's `user` (auth_owner_of) */
} api_chat;

/* Parse a request into req (whose strings borrow from *root and chat:
 * json_decref and api_chat_free after the request). Headers may be NULL. */
dc_code api_chat_parse(const char *body, size_t len, const char *hdr_session, const char *hdr_turn,
                       const api_defaults *d, ctx_request *req, api_chat *chat, json_t **root, dc_error *err);
dc_code api_responses_parse(const char *body, size_t len, const api_defaults *d, ctx_request *req, api_chat *chat,
                            json_t **root, dc_error *err);
void api_chat_free(api_chat *chat);
/* Moves the reply to session sid (a fork of the one asked for). */
void api_chat_fork(api_chat *chat, ctx_request *req, const char *sid);

/* Splits "resp_<session>_<turn>" (util/identity.h); false when id is not one. */
static inline bool api_response_id_parse(const char *id, char sid[ID_MAX + 1], uint32_t *turn) {
    return identity_response_id_parse(id, sid, turn);
}

/* The whole reply: a chat.completion, or a response object. */
json_t *api_chat_json(const ctx_reply *rep, const api_chat *chat);

/* The stream's events (see sse.h) in the request's format: chunks and a
 * final [DONE] for chat, typed events for responses. */
void api_chat_stream_open(api_chat *chat, strbuf *out);
void api_chat_stream_delta(api_chat *chat, const char *text, size_t n, strbuf *out);
void api_chat_stream_close(api_chat *chat, const ctx_reply *rep, strbuf *out);
void api_chat_stream_fail(api_chat *chat, const dc_error *e, strbuf *out);

/* GET /v1/models: the one model this node serves. */
json_t *api_models_json(const char *model);

#endif
