/* server.h - the node's HTTP API (libmicrohttpd), routes to the context manager.
 *
 *   POST   /completion            llama.cpp's /completion plus the session fields  (complete.h)
 *   POST   /v1/chat/completions   OpenAI chat, stateless or a server-side session    (complete.h)
 *   POST   /v1/responses          OpenAI Responses, chained by previous_response_id (complete.h)
 *   GET    /v1/models             the model this node serves
 *   GET    /v1/sessions/{id}      session metadata (the owner only: the key's user, or ?user_id=)
 *   DELETE /v1/sessions/{id}      remove a session (the owner only)
 *   GET    /v1/peer/kv/{id}      a session's KV state, for peer nodes only (peer.h)
 *   POST   /v1/sessions/{id}/warm the handover hint: warm the session's KV here now (the owner only; 202)
 *   GET    /health                node, model, and the engine's state      (open)
 *   GET    /metrics               Prometheus text (observe.h)              (open)
 *   GET    /                      a page that chats with the nodes (web/)  (open)
 *
 * With API keys (auth.h) every other route needs "Authorization: Bearer". */
#ifndef DC_API_SERVER_H
#define DC_API_SERVER_H

#include <stddef.h>

#include "../ctx/ctx.h"
#include "auth.h"
#include "peer.h"

typedef struct api_server api_server;

typedef struct {
    const char *host;      /* IPv4 address to bind */
    int port;              /* 0: any free port (see api_server_port) */
    size_t max_body;       /* larger request bodies get 413 */
    const char *node_id;
    int default_n_predict;
    auth *keys;            /* NULL: no keys, every route open; borrowed (reloaded by its owner) */
    bool log_content;      /* log prompts and replies (observe.h); off by default */
    int max_n_predict;     /* longest reply a request may ask for */
    int max_streams;       /* generations at once per user (auth.h auth_limits_key); 0: no limit */
    unsigned max_connections;   /* open connections, all clients together (http.h) */
    unsigned max_per_address;   /* open connections from one client address */
    unsigned request_timeout_s; /* silence allowed while a request arrives (http.h) */
    peer *peer;            /* the peer key (--peer-key-file); NULL: the peer routes do not exist; borrowed */
} api_params;

api_params api_default_params(void);

/* Starts serving on background threads. NULL on failure, reason in err. */
api_server *api_server_start(const api_params *p, ctx *c, llm *m, char *err, size_t errlen);
int api_server_port(const api_server *s);
void api_server_stop(api_server *s);

#endif
