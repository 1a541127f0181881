/* observe.h - what a node tells its operators: one log line per request
 * (key=value fields: session, turn, mode, status, timings; never prompts,
 * replies or keys) and the Prometheus metrics of GET /metrics. Prompts and
 * replies reach the log only when the operator asks (serve --log-content):
 * a shared log is one more place a conversation would otherwise leak to. */
#ifndef DC_API_OBSERVE_H
#define DC_API_OBSERVE_H

#include "../ctx/ctx.h"
#include "../llm/llm.h"
#include "../util/vec.h"

typedef struct observe observe;

observe *observe_new(bool log_content);
void observe_free(observe *o);

/* A request is done. route: the route's name (a fixed string, not the
 * URL); rep: the turn's reply for the generating endpoints (also when it
 * failed, for what it measured), else NULL. */
void observe_request(observe *o, const char *method, const char *route, int status, double ms, const ctx_reply *rep);

/* With log_content: one more line with the turn's prompt and reply
 * (JSON-escaped). Otherwise nothing. */
void observe_content(observe *o, const ctx_reply *rep, const char *prompt);

/* The metrics, with the engine's counters read from m now. */
void observe_render(observe *o, llm *m, strbuf *out);

#endif
