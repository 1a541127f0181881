/* http.c - see http.h.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * with the headers, then once per chunk of body, then once more with no
 * data. We collect the body across those calls and hand the handler one
 * complete request. A body over the limit is dropped as it arrives and
 * refused with 413 once it has (on_request says why not earlier). */
#include "http.h"

#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "../util/vec.h"
#include "errors.h"

struct http_server {
    struct MHD_Daemon *d;
    int port;
    size_t max_body;
    http_handler h;
    void *ud;
};

/* Bodies over the limit but under this are drained before the 413 (see on_request). */
#define DRAIN_MAX (64ULL << 20)

typedef struct {
    strbuf body;
    bool too_large;
    double t0;
} conn_state;

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
    if (!text) text = strdup("{\"error\":{\"code\":500,\"type\":\"server_error\",\"message\":\"cannot encode response\"}}");
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

bool http_conn_alive(void *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return true;
    /* POLLRDHUP: the peer closed (or half-closed) its end; an HTTP client
     * that is still waiting for its answer does neither */
    struct pollfd pfd = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) <= 0 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    http_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        cs->t0 = clock_mono_ms();
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
        cs->too_large = len > s->max_body;
        /* An oversized body is read and dropped, and the 413 goes out after
         * it: answering early and closing while the client still sends
         * makes its kernel see a reset, and the client loses the answer.
         * Only a body too big to be worth reading is refused at once. */
        if (len <= DRAIN_MAX) return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->too_large && cs->body.n + *upload_size > s->max_body) {
            cs->too_large = true;
            strbuf_free(&cs->body);
        }
        if (!cs->too_large) strbuf_append(&cs->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->too_large) {
        dc_error err = {0};
        dc_fail(&err, DC_E_TOO_LARGE, "request body over the limit of %zu bytes", s->max_body);
        log_info("%s %s 413 %.1fms", method, url, clock_mono_ms() - cs->t0);
        return http_send_error(conn, &err);
    }
    if (!strcmp(method, "OPTIONS")) return send_preflight(conn); /* CORS (http_add_cors) */
    http_req req = {.conn = conn, .method = method, .url = url, .body = cs->body.s ? cs->body.s : "",
                    .body_n = cs->body.n, .t0 = cs->t0};
    return s->h(s->ud, &req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode t) {
    (void)cls, (void)conn, (void)t;
    conn_state *cs = *con_cls;
    if (!cs) return;
    strbuf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

http_server *http_start(const char *host, int port, size_t max_body, http_handler h, void *ud, char *err,
                        size_t errlen) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "--host %s is not an IPv4 address", host);
        return NULL;
    }
    http_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->max_body = max_body;
    s->h = h;
    s->ud = ud;
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request,
                            s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                            s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                            MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use?)", host, port);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : port;
    return s;
}

int http_port(const http_server *s) { return s->port; }

void http_stop(http_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->d);
    free(s);
}
