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
/* Parses a request body that must be one JSON object (*root: json_decref
 * it, also on failure). */
dc_code api_json_object(const char *body, size_t len, json_t **root, dc_error *err);
/* Optional members of a JSON object, checked: absent or null leaves *out
 * as it is (and *given false); the wrong type or range is DC_E_INVALID. */
dc_code api_get_string(json_t *root, const char *key, const char **out, dc_error *err);
dc_code api_get_number(json_t *root, const char *key, double lo, double hi, double *out, bool *given, dc_error *err);
dc_code api_get_integer(json_t *root, const char *key, long long lo, long long hi, long long *out, bool *given,
                        dc_error *err);
/* temperature, top_p, top_k, seed (a random seed when none is given), and
 * llama-server's cache_prompt and ignore_eos. */
dc_code api_sampling_parse(json_t *root, llm_gen_params *gen, dc_error *err);

/* *stream: the client asked for stream:true. */
dc_code api_completion_parse(const char *body, size_t len, const api_defaults *d, ctx_request *req, bool *stream,
                             json_t **root, dc_error *err);

/* The /completion response: llama.cpp's fields plus the session fields. */
json_t *api_completion_json(const ctx_reply *rep, const char *node, const char *model);
/* The same streamed, as llama-server does: {"content": piece, "stop": false}
 * chunks, then the whole response (content "", stop true). No [DONE]. */
void api_completion_stream_delta(const char *text, size_t n, strbuf *out);
void api_completion_stream_close(const ctx_reply *rep, const char *node, const char *model, strbuf *out);

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
