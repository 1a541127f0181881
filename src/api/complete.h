/* complete.h - the generating endpoints, one call type for all three:
 *
 *   POST /completion            llama.cpp's format plus the session fields
 *   POST /v1/chat/completions   OpenAI's chat completions
 *   POST /v1/responses          OpenAI's Responses (previous_response_id)
 *
 * Each parses its body into a ctx_request, runs ctx_complete, and answers
 * as one JSON object or, with stream:true, as Server-Sent Events (sse.h);
 * then logs the request and counts it (observe.h). */
#ifndef DC_API_COMPLETE_H
#define DC_API_COMPLETE_H

#include "http.h"
#include "observe.h"
#include "../util/quota.h"

typedef enum { CALL_COMPLETION, CALL_CHAT, CALL_RESPONSES } call_kind;

/* What a call needs of the node; borrowed for the server's lifetime. */
typedef struct {
    ctx *c;
    llm *m;
    observe *obs;
    const char *node_id;
    int default_n_predict;
    int max_n_predict;  /* a longer reply asked for is 400 */
    int max_streams;    /* generations at once per user (auth_limits_key); more get 429; 0: no limit */
    quota *inflight;    /* who is generating now, for max_streams */
} api_env;

/* user: the API key's user, who then owns the session (NULL without keys:
 * the body's claim, or no one; auth.h says who a call is). */
enum MHD_Result api_complete(const api_env *env, const http_req *hr, call_kind kind, const char *route,
                             const char *user);

#endif
