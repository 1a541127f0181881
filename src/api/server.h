/* server.h - the node's HTTP API (libmicrohttpd), routes to the context manager.
 *
 *   POST   /completion         llama.cpp's /completion plus the session fields
 *   GET    /v1/sessions/{id}   session metadata (?user_id= must be the owner)
 *   DELETE /v1/sessions/{id}   remove a session  (?user_id= must be the owner)
 *   GET    /health             node, model, and the engine's state (active, queued, KV hits)
 */
#ifndef DC_API_SERVER_H
#define DC_API_SERVER_H

#include <stddef.h>

#include "../ctx/ctx.h"

typedef struct api_server api_server;

typedef struct {
    const char *host;      /* IPv4 address to bind */
    int port;              /* 0: any free port (see api_server_port) */
    size_t max_body;       /* larger request bodies get 413 */
    const char *node_id;
    int default_n_predict;
} api_params;

api_params api_default_params(void);

/* Starts serving on background threads. NULL on failure, reason in err. */
api_server *api_server_start(const api_params *p, ctx *c, llm *m, char *err, size_t errlen);
int api_server_port(const api_server *s);
void api_server_stop(api_server *s);

#endif
