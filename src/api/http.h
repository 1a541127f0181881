/* http.h - the HTTP plumbing both servers share (libmicrohttpd): the node's
 * API (server.c) and the LLM service's (llm_server.c). */
#ifndef DC_API_HTTP_H
#define DC_API_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "../util/error.h"
#include "../util/ids.h"

typedef struct http_server http_server;

/* One request, its body complete (for the gate: its headers only, body ""). */
typedef struct {
    struct MHD_Connection *conn;
    const char *method, *url;
    const char *body; /* NUL-terminated; "" when there is none */
    size_t body_n;
    double t0;        /* clock_mono_ms() when its headers arrived */
    const char *addr; /* the client's IPv4 address, dotted */
    const char *who;  /* what the gate wrote into who ("" without a gate) */
} http_req;

/* Answers req (http_send_*), or returns MHD_NO to drop the connection. */
typedef enum MHD_Result (*http_handler)(void *ud, const http_req *req);

/* Runs once a request's headers are in, before its body is read (never
 * for OPTIONS, the CORS preflight): a request it refuses (an error code,
 * err filled) is answered with err without its body being kept or parsed.
 * Otherwise what it writes into who reaches the handler as req->who. */
typedef dc_code (*http_gate)(void *ud, const http_req *req, char who[ID_MAX + 1], dc_error *err);

typedef struct {
    const char *host;     /* IPv4 address to bind */
    int port;             /* 0: any free port */
    size_t max_body;      /* larger bodies get 413 without reaching the handler */
    unsigned max_connections;   /* open connections, all clients together */
    unsigned max_per_address;   /* open connections from one client address; 0: no own limit */
    unsigned request_timeout_s; /* silence allowed while a request's headers and body arrive, and
                                   between the requests of a kept-alive connection */
    unsigned answer_timeout_s;  /* silence allowed while the answer is made and sent (a generation, a
                                   stream); 0: none */
} http_params;

http_params http_default_params(void);

/* Serves p->host:p->port with one thread per connection, so a long
 * generation never holds up another request. gate may be NULL. NULL on
 * failure, reason in err. */
http_server *http_start(const http_params *p, http_gate gate, http_handler h, void *ud, char *err, size_t errlen);
int http_port(const http_server *s);
void http_stop(http_server *s);

/* Sends body (consumed) as JSON; headers as for http_send. */
enum MHD_Result http_send_json(struct MHD_Connection *conn, int status, json_t *body, const char *const *headers);
/* Sends n bytes of body as Content-Type type, with the CORS headers and
 * extra headers given as NULL-terminated name/value pairs. mode is
 * libmicrohttpd's: MHD_RESPMEM_MUST_FREE takes body (malloc'd), PERSISTENT
 * borrows one that outlives the server (the page at /). */
enum MHD_Result http_send(struct MHD_Connection *conn, int status, const char *type, void *body, size_t n,
                          enum MHD_ResponseMemoryMode mode, const char *const *headers);
/* The CORS headers every answer carries (http.c says why). */
void http_add_cors(struct MHD_Response *r);
/* Sends e as {"error":{code,type,message}} with its status (api/errors.c);
 * 429 carries Retry-After. */
enum MHD_Result http_send_error(struct MHD_Connection *conn, const dc_error *e);

/* llm_gen_params.alive for a request in flight on conn: false once the
 * client has closed or reset its end. A client that only half-closed
 * (shutdown(SHUT_WR) after sending) is still waiting for its answer and
 * stays alive (http.c says how the two are told apart). Call it on the
 * connection's own thread (the one running the handler). */
bool http_conn_alive(void *conn);

#endif
