/* http.c - see http.h.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * with the headers, then once per chunk of body, then once more with no
 * data. We collect the body across those calls and hand the handler one
 * complete request.
 *
 * What a client without a key, or a slow or hostile one, can hold:
 *  - connections: at most max_per_address from one address and
 *    max_connections in all (libmicrohttpd closes the ones over);
 *  - time: request_timeout_s of silence while its request arrives, and
 *    between requests on a kept-alive connection; the long answer timeout
 *    is set only once a request is complete and being answered (a
 *    generation may take minutes, a request's bytes should not);
 *  - work: the gate (the API key) runs on the headers, and a request
 *    refused there, or whose body is over max_body, has its body dropped
 *    as it arrives, never kept or parsed (refused below says when it is
 *    answered at once and when after its body), and at most DRAIN_MAX
 *    bytes of it are read: a longer one (a chunked body without end) is cut. */
#include "http.h"

#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "../util/vec.h"
#include "errors.h"

struct http_server {
    struct MHD_Daemon *d;
    int port;
    http_params p;
    http_gate gate;
    http_handler h;
    void *ud;
};

/* The most body bytes read of a refused request (see refused). */
#define DRAIN_MAX (64ULL << 20)

/* One request. */
typedef struct {
    strbuf body;
    bool refused;                 /* answered with err, without its body */
    bool by_gate;                 /* refused by the gate, which logs and counts its refusals */
    dc_error err;
    unsigned long long received;  /* body bytes read */
    double t0;
    char addr[INET_ADDRSTRLEN];
    char who[ID_MAX + 1];
} conn_state;

/* One connection (libmicrohttpd's socket context), across its requests. */
typedef struct {
    bool http11; /* this request's client speaks HTTP/1.1: it may be sent a 1xx */
    bool probed; /* this request's answer has been preceded by a 100 Continue (http_conn_alive) */
} conn_life;

/* 512 connections: each is a thread and a descriptor, and libmicrohttpd's
 * select() loop and the usual descriptor limit stop at 1024, with the
 * store's and the engine's own descriptors to leave room for. 64 from one
 * address: eight addresses to fill the table, and well above what one
 * honest client (a browser opens six) or the load test (64 clients over
 * two nodes) holds at once. */
http_params http_default_params(void) {
    return (http_params){.host = "127.0.0.1",
                         .port = 8080,
                         .max_body = 1 << 20,
                         .max_connections = 512,
                         .max_per_address = 64,
                         .request_timeout_s = 30,
                         .answer_timeout_s = 600};
}

/* Every answer may be read by a page of any origin: the page at / chats
 * with several nodes (it runs on one, talks to another), and the API
 * carries no cookies, so a foreign page gains nothing a plain client
 * could not do. Access is what API keys (Authorization) control. */
void http_add_cors(struct MHD_Response *r) {
    MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
    MHD_add_response_header(r, "Access-Control-Expose-Headers", "Retry-After");
}

static enum MHD_Result send_preflight(struct MHD_Connection *conn) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    http_add_cors(r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
    MHD_add_response_header(r, "Access-Control-Allow-Headers", "Content-Type, Authorization, X-Session-Id, X-Turn");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    enum MHD_Result ok = MHD_queue_response(conn, 204, r);
    MHD_destroy_response(r);
    return ok;
}

enum MHD_Result http_send(struct MHD_Connection *conn, int status, const char *type, void *body, size_t n,
                          enum MHD_ResponseMemoryMode mode, const char *const *headers) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    http_add_cors(r);
    for (; headers && headers[0]; headers += 2) MHD_add_response_header(r, headers[0], headers[1]);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

enum MHD_Result http_send_json(struct MHD_Connection *conn, int status, json_t *body, const char *const *headers) {
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        /* the status says what the body says: a body that cannot be
         * encoded (out of memory) is a 500, whatever was meant */
        status = 500;
        headers = NULL;
        text = strdup("{\"error\":{\"code\":500,\"type\":\"server_error\",\"message\":\"cannot encode response\"}}");
    }
    if (!text) return MHD_NO;
    return http_send(conn, status, "application/json", text, strlen(text), MHD_RESPMEM_MUST_FREE, headers);
}

enum MHD_Result http_send_error(struct MHD_Connection *conn, const dc_error *e) {
    /* the engine's estimate of when its queue will have drained (llm_stats) */
    char secs[16];
    snprintf(secs, sizeof secs, "%u", e->retry_after_s ? e->retry_after_s : 1);
    const char *const busy[] = {"Retry-After", secs, NULL};
    return http_send_json(conn, api_error_status(e->code), api_error_json(e), e->code == DC_E_BUSY ? busy : NULL);
}

static int conn_fd(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* Writes all of b to the connection's socket, past libmicrohttpd, which
 * is not writing (this is its connection thread, inside a callback).
 * Best effort: a peer that is gone makes it fail, which is fine. */
static void raw_send(struct MHD_Connection *conn, const char *b, size_t n) {
    int fd = conn_fd(conn);
    while (fd >= 0 && n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        b += w;
        n -= (size_t)w;
    }
}

/* Half-closed or gone? A client that sends its request and then shuts
 * down its sending side (shutdown(SHUT_WR): some clients and proxies do)
 * is still waiting for the answer; one that closed its socket is not. The
 * server sees the same FIN from both. They differ when something is sent:
 * a closed socket answers with a reset, a half-closed one takes it. So on
 * a FIN, before the answer has begun, the node sends an interim
 * "100 Continue" (HTTP/1.1 clients must accept a 1xx they did not ask for,
 * RFC 9110 15.2), once per request, and waits briefly for a reset. After
 * the answer has begun, what it sends does the same. An HTTP/1.0 client
 * cannot be sent a 1xx: a FIN from it counts as gone. */
bool http_conn_alive(void *conn) {
    int fd = conn_fd(conn);
    if (fd < 0) return true;
    struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
    if (poll(&pfd, 1, 0) <= 0) return true;
    if (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) return false; /* reset, or closed both ways */
    if (!(pfd.revents & POLLRDHUP)) return true;
    const union MHD_ConnectionInfo *st = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS);
    if (st && st->http_status) return true; /* the answer is being sent: a closed peer will reset it */
    const union MHD_ConnectionInfo *ctx = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_life *life = ctx ? ctx->socket_context : NULL;
    if (!life || !life->http11) return false;
    if (life->probed) return true; /* and no reset since */
    life->probed = true;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    raw_send(conn, cont, sizeof cont - 1);
    /* a peer nearby resets within a round trip; a farther one is caught at
     * the next check (the engine checks every 100 ms) */
    pfd = (struct pollfd){.fd = fd};
    return !(poll(&pfd, 1, 20) > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)));
}

/* The answer to a request refused with cs->err, logged here when it was
 * refused here (it never reaches the handler; the gate logs its own). */
static enum MHD_Result answer_refused(struct MHD_Connection *conn, const conn_state *cs, const char *method,
                                      const char *url) {
    if (!cs->by_gate)
        log_info("%s %s %d %.1fms", method, url, api_error_status(cs->err.code), clock_mono_ms() - cs->t0);
    return http_send_error(conn, &cs->err);
}

/* A refused request whose body went past DRAIN_MAX: libmicrohttpd cannot
 * queue an answer in the middle of a body, so the error goes out on the
 * socket directly, the sending side is shut, and the connection closed. */
static enum MHD_Result cut(struct MHD_Connection *conn, const conn_state *cs, const char *method, const char *url) {
    int status = api_error_status(cs->err.code);
    json_t *j = api_error_json(&cs->err);
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n\r\n",
                     status, status == 413 ? "Payload Too Large" : "Error", body ? strlen(body) : 0);
    raw_send(conn, head, (size_t)n);
    if (body) raw_send(conn, body, strlen(body));
    free(body);
    int fd = conn_fd(conn);
    if (fd >= 0) shutdown(fd, SHUT_WR);
    log_info("%s %s %d %.1fms (body cut after %llu bytes)", method, url, status, clock_mono_ms() - cs->t0,
             cs->received);
    return MHD_NO;
}

/* Whether a refused request is answered as soon as its headers are in, or
 * after its body has been read and dropped. At once, libmicrohttpd closes
 * the connection after the answer, and closing a socket with unread data
 * makes the kernel send a reset that can destroy the answer before the
 * client reads it: so at once only when no body comes (none declared, or
 * the client waits for a 100 Continue before sending it) or the body is
 * too big to be worth reading (over DRAIN_MAX). */
static bool refuse_at_once(struct MHD_Connection *conn, unsigned long long len, bool declared) {
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    bool body_coming = declared ? len > 0 : te && strcasestr(te, "chunked");
    return !body_coming || (expect && strcasestr(expect, "100-continue")) || len > DRAIN_MAX;
}

static void client_address(struct MHD_Connection *conn, char out[INET_ADDRSTRLEN]) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr_in *a = ci ? (const struct sockaddr_in *)ci->client_addr : NULL;
    if (!a || a->sin_family != AF_INET || !inet_ntop(AF_INET, &a->sin_addr, out, INET_ADDRSTRLEN))
        snprintf(out, INET_ADDRSTRLEN, "unknown");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    http_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        cs->t0 = clock_mono_ms();
        *con_cls = cs;
        client_address(conn, cs->addr);
        const union MHD_ConnectionInfo *ctx = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        conn_life *life = ctx ? ctx->socket_context : NULL;
        if (life) *life = (conn_life){.http11 = version && !strcmp(version, MHD_HTTP_VERSION_1_1)};
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
        if (s->gate && strcmp(method, "OPTIONS") != 0) {
            http_req head = {
                .conn = conn, .method = method, .url = url, .body = "", .t0 = cs->t0, .addr = cs->addr, .who = ""};
            cs->refused = cs->by_gate = s->gate(s->ud, &head, cs->who, &cs->err) != DC_OK;
        }
        if (!cs->refused && len > s->p.max_body) {
            dc_fail(&cs->err, DC_E_TOO_LARGE, "request body over the limit of %zu bytes", s->p.max_body);
            cs->refused = true;
        }
        if (cs->refused && refuse_at_once(conn, len, cl != NULL)) return answer_refused(conn, cs, method, url);
        return MHD_YES;
    }
    if (*upload_size) {
        cs->received += *upload_size;
        if (!cs->refused && cs->body.n + *upload_size > s->p.max_body) {
            dc_fail(&cs->err, DC_E_TOO_LARGE, "request body over the limit of %zu bytes", s->p.max_body);
            cs->refused = true;
            strbuf_free(&cs->body);
        }
        if (cs->refused && cs->received > DRAIN_MAX) return cut(conn, cs, method, url);
        if (!cs->refused) strbuf_append(&cs->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->refused) return answer_refused(conn, cs, method, url);
    if (!strcmp(method, "OPTIONS")) return send_preflight(conn); /* CORS (http_add_cors) */
    /* the request is in: from here the answer's time applies (on_completed
     * sets the request timeout back for the connection's next request) */
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, s->p.answer_timeout_s);
    http_req req = {.conn = conn,
                    .method = method,
                    .url = url,
                    .body = cs->body.s ? cs->body.s : "",
                    .body_n = cs->body.n,
                    .t0 = cs->t0,
                    .addr = cs->addr,
                    .who = cs->who};
    return s->h(s->ud, &req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode t) {
    (void)t;
    http_server *s = cls;
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, s->p.request_timeout_s);
    conn_state *cs = *con_cls;
    if (!cs) return;
    strbuf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    (void)cls, (void)conn;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = calloc(1, sizeof(conn_life));
    } else {
        free(*socket_context);
        *socket_context = NULL;
    }
}

http_server *http_start(const http_params *p, http_gate gate, http_handler h, void *ud, char *err, size_t errlen) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
    if (inet_pton(AF_INET, p->host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "--host %s is not an IPv4 address", p->host);
        return NULL;
    }
    http_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->gate = gate;
    s->h = h;
    s->ud = ud;
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request,
                            s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_CONNECTION_TIMEOUT, p->request_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
                            p->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, p->max_per_address, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use?)", p->host, p->port);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : p->port;
    return s;
}

int http_port(const http_server *s) { return s->port; }

void http_stop(http_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->d);
    free(s);
}
