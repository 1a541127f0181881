/* complete.h - the generating endpoints, one call type for all three:
 *
 *   POST /completion            llama.cpp's format plus the session fields
 *   POST /v1/chat/completions   OpenAI's chat completions
 *   POST /v1/responses          OpenAI's Responses (previous_response_id)
 *
 * Each parses its body into a ctx_request (llamacpp.h, openai.h), names
 * it (util/identity.h) and runs it: here, the one runner of every turn, which
 * answers as one JSON object or, with stream:true, as Server-Sent Events
 * (streaming is an output mode of the runner; sse.h only moves the bytes),
 * and logs the request and counts it (observe.h). */
#ifndef DC_API_COMPLETE_H
#define DC_API_COMPLETE_H

#include <pthread.h>

#include "http.h"
#include "observe.h"
#include "../util/quota.h"

typedef enum { CALL_COMPLETION, CALL_CHAT, CALL_RESPONSES } call_kind;

/* The turns running now, each on a thread of its own. The server's: it
 * waits for them once its connections are closed (which cancels them),
 * before the context manager goes. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
} api_turns;
void api_turns_init(api_turns *t);
/* Waits until no turn runs, then frees what init made. */
void api_turns_drain(api_turns *t);

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
    api_turns *turns;   /* every turn running now, for the drain at shutdown */
} api_env;

/* user: the API key's user, who then owns the session (NULL without keys:
 * the body's claim, or no one; auth.h says who a call is). */
enum MHD_Result api_complete(const api_env *env, const http_req *hr, call_kind kind, const char *route,
                             const char *user);

#endif
