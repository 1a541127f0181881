/* request.h - /completion request bodies to ctx_request, responses back to JSON.
 *
 * Parsing is strict about the types of the fields it knows and ignores the
 * ones it does not (as llama-server does), so clients that send extra
 * llama.cpp options still work. */
#ifndef DC_API_REQUEST_H
#define DC_API_REQUEST_H

#include <jansson.h>
#include <stddef.h>

#include "../ctx/ctx.h"

typedef struct {
    int default_n_predict; /* used when n_predict is absent or negative */
} api_defaults;

/* Parses body into req. Strings in req point into *root, which the caller
 * json_decref()s after use (also on error, where *root may be NULL). */
dc_code api_completion_parse(const char *body, size_t len, const api_defaults *d, ctx_request *req, json_t **root,
                             dc_error *err);

/* The /completion response: llama.cpp's fields plus the session fields. */
json_t *api_completion_json(const ctx_reply *rep, const char *node, const char *model);

/* Stored turns as JSON: per turn its segments, token ids (tokenized mode)
 * or text (raw mode). For clients and tests that compare contexts. */
json_t *api_turns_json(const turn_rec *turns, uint32_t n);

/* Text as a JSON string, invalid UTF-8 replaced (a reply cut mid-character). */
json_t *api_text_json(const strbuf *b);
/* Token ids as a JSON array. */
json_t *api_ids_json(const int32_t *toks, size_t n);

/* The LLM engine's state and counters (llm_stats), for /health. */
json_t *api_engine_json(llm *m);

#endif
