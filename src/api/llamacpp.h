/* llamacpp.h - llama.cpp's POST /completion format plus the session fields
 * (the paper's client): request bodies to ctx_request, replies back to
 * JSON, whole or streamed. The fields it shares with the OpenAI formats are
 * json.h's. */
#ifndef DC_API_LLAMACPP_H
#define DC_API_LLAMACPP_H

#include "../ctx/ctx.h"
#include "json.h"

/* Parses body into req. Strings in req point into *root, which the caller
 * json_decref()s after use (also on error, where *root may be NULL).
 * *stream: the client asked for stream:true. */
dc_code api_completion_parse(const char *body, size_t len, const api_defaults *d, ctx_request *req, bool *stream,
                             json_t **root, dc_error *err);

/* The /completion response: llama.cpp's fields plus the session fields. */
json_t *api_completion_json(const ctx_reply *rep, const char *node, const char *model);
/* The same streamed, as llama-server does: {"content": piece, "stop": false}
 * chunks, then the whole response (content "", stop true). No [DONE]. */
void api_completion_stream_delta(const char *text, size_t n, strbuf *out);
void api_completion_stream_close(const ctx_reply *rep, const char *node, const char *model, strbuf *out);

#endif
