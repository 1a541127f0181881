/* server.c - see server.h.
 *
 * libmicrohttpd runs one thread per connection: a /completion call blocks
 * for the whole generation, and a thread per connection keeps a slow request
 * from holding up /health or another session's turn. The body is collected
 * across MHD's upload callbacks and dispatched on the final call; a body over
 * the limit is refused with 413 as soon as its size is known. */
#include "server.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "errors.h"
#include "request.h"

struct api_server {
    api_params p;
    ctx *c;
    const llm *m;
    struct MHD_Daemon *d;
    int port;
};

typedef struct {
    strbuf body;
    bool too_large;
    double t0;
} conn_state;

api_params api_default_params(void) {
    return (api_params){.host = "127.0.0.1", .port = 8080, .max_body = 1 << 20, .node_id = "node",
                        .default_n_predict = 128};
}

static enum MHD_Result send_json_headers(struct MHD_Connection *conn, int status, json_t *body,
                                         const char *const *headers) {
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) text = strdup("{\"error\":{\"code\":500,\"type\":\"server_error\",\"message\":\"cannot encode response\"}}");
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "application/json");
    for (; headers && headers[0]; headers += 2) MHD_add_response_header(r, headers[0], headers[1]);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *body) {
    return send_json_headers(conn, status, body, NULL);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, const dc_error *e) {
    /* a full queue drains within a turn or so; one second is a fair first retry */
    static const char *const busy[] = {"Retry-After", "1", NULL};
    return send_json_headers(conn, api_error_status(e->code), api_error_json(e), e->code == DC_E_BUSY ? busy : NULL);
}

/* llm_gen_params.alive for a request in flight: false once the client has
 * closed its end (or reset it). Runs on the connection's own thread, which
 * is blocked in the engine while the reply is generated. */
static bool conn_alive(void *ud) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(ud, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return true;
    struct pollfd pfd = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) <= 0 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static void log_request(const char *method, const char *url, int status, double t0, const char *sid, uint32_t turn,
                        const char *mode) {
    log_info("%s %s %d %.1fms session=%s turn=%u mode=%s", method, url, status, clock_mono_ms() - t0,
             sid && *sid ? sid : "-", turn, mode ? mode : "-");
}

static enum MHD_Result handle_completion(api_server *s, struct MHD_Connection *conn, conn_state *cs, int *status) {
    api_defaults d = {.default_n_predict = s->p.default_n_predict};
    ctx_request req;
    json_t *root = NULL;
    dc_error err = {0};
    ctx_reply rep = {0};
    dc_code rc = api_completion_parse(cs->body.s ? cs->body.s : "", cs->body.n, &d, &req, &root, &err);
    if (!rc) {
        req.gen.alive = conn_alive;
        req.gen.alive_ud = conn;
        rc = ctx_complete(s->c, &req, &rep, &err);
    }
    enum MHD_Result ok;
    if (rc == DC_E_CANCELLED) {
        *status = api_error_status(rc);
        ok = MHD_NO; /* nobody to answer: close the connection */
    } else if (rc) {
        *status = api_error_status(rc);
        ok = send_error(conn, &err);
    } else {
        *status = 200;
        ok = send_json(conn, 200, api_completion_json(&rep, s->p.node_id, llm_model_name(s->m)));
    }
    log_request("POST", "/completion", *status, cs->t0, rep.session_id, rep.turn, rc ? NULL : ctx_mode_name(rep.mode));
    ctx_reply_free(&rep);
    json_decref(root);
    return ok;
}

static enum MHD_Result handle_session(api_server *s, struct MHD_Connection *conn, const char *method,
                                      const char *sid, int *status) {
    const char *user = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "user_id");
    if (!user) user = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-User-Id");
    dc_error err = {0};
    session_meta m;
    dc_code rc;
    json_t *body = NULL;
    if (!strcmp(method, "GET")) {
        const char *include = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "include");
        bool with_turns = include && !strcmp(include, "turns");
        turn_rec *turns = NULL;
        rc = with_turns ? ctx_session_turns(s->c, sid, user, &m, &turns, &err) : ctx_session_get(s->c, sid, user, &m, &err);
        if (!rc)
            body = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:I, s:I}", "session_id", sid, "user_id", m.user_id,
                             "model", m.model, "mode", ctx_mode_name(m.mode), "turn", (int)m.turn, "context_tokens",
                             (int)m.n_tokens, "created_ms", (json_int_t)m.created_ms, "last_activity_ms",
                             (json_int_t)m.last_ms);
        if (!rc && with_turns) json_object_set_new(body, "turns", api_turns_json(turns, m.turn));
        store_turns_free(turns, rc ? 0 : m.turn);
    } else if (!strcmp(method, "DELETE")) {
        rc = ctx_session_delete(s->c, sid, user, &err);
        if (!rc) body = json_pack("{s:s, s:b}", "session_id", sid, "deleted", 1);
    } else {
        rc = dc_fail(&err, DC_E_METHOD, "%s is not allowed on /v1/sessions/{id}: use GET or DELETE", method);
    }
    *status = rc ? api_error_status(rc) : 200;
    return rc ? send_error(conn, &err) : send_json(conn, 200, body);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    api_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        cs->t0 = clock_mono_ms();
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->p.max_body) cs->too_large = true;
        if (!cs->too_large) return MHD_YES; /* wait for the body */
    }
    if (*upload_size) {
        if (!cs->too_large && cs->body.n + *upload_size > s->p.max_body) {
            cs->too_large = true;
            strbuf_free(&cs->body);
        }
        if (!cs->too_large) strbuf_append(&cs->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    int status = 0;
    dc_error err = {0};
    enum MHD_Result ok;
    if (cs->too_large) {
        dc_fail(&err, DC_E_TOO_LARGE, "request body over the limit of %zu bytes", s->p.max_body);
        status = 413;
        ok = send_error(conn, &err);
    } else if (!strcmp(url, "/completion") || !strcmp(url, "/completions")) {
        if (strcmp(method, "POST") != 0) {
            dc_fail(&err, DC_E_METHOD, "%s is not allowed on %s: use POST", method, url);
            status = 405;
            ok = send_error(conn, &err);
        } else {
            return handle_completion(s, conn, cs, &status);
        }
    } else if (!strncmp(url, "/v1/sessions/", 13) && url[13] && !strchr(url + 13, '/')) {
        ok = handle_session(s, conn, method, url + 13, &status);
    } else if (!strcmp(url, "/health")) {
        status = 200;
        ok = send_json(conn, 200, json_pack("{s:s, s:s, s:s, s:i}", "status", "ok", "node", s->p.node_id, "model",
                                            llm_model_name(s->m), "n_ctx", llm_n_ctx(s->m)));
    } else {
        dc_fail(&err, DC_E_NOT_FOUND, "no route %s %s", method, url);
        status = 404;
        ok = send_error(conn, &err);
    }
    log_request(method, url, status, cs->t0, NULL, 0, NULL);
    return ok;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode t) {
    (void)cls;
    (void)conn;
    (void)t;
    conn_state *cs = *con_cls;
    if (!cs) return;
    strbuf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

api_server *api_server_start(const api_params *p, ctx *c, const llm *m, char *err, size_t errlen) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
    if (inet_pton(AF_INET, p->host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "--host %s is not an IPv4 address", p->host);
        return NULL;
    }
    api_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->c = c;
    s->m = m;
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request,
                            s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                            s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                            MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use?)", p->host, p->port);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : p->port;
    return s;
}

int api_server_port(const api_server *s) { return s->port; }

void api_server_stop(api_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->d);
    free(s);
}
