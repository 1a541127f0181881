/* server.c - see server.h. The HTTP plumbing (threads, bodies, 413,
 * error bodies) is http.c's; this file routes and speaks JSON. */
#include "server.h"

#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "errors.h"
#include "http.h"
#include "openai.h"
#include "request.h"

struct api_server {
    api_params p;
    ctx *c;
    llm *m;
    http_server *h;
};

api_params api_default_params(void) {
    return (api_params){.host = "127.0.0.1", .port = 8080, .max_body = 1 << 20, .node_id = "node",
                        .default_n_predict = 128};
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *body) {
    return http_send_json(conn, status, body, NULL);
}

static void log_request(const char *method, const char *url, int status, double t0, const char *sid, uint32_t turn,
                        const char *mode) {
    log_info("%s %s %d %.1fms session=%s turn=%u mode=%s", method, url, status, clock_mono_ms() - t0,
             sid && *sid ? sid : "-", turn, mode ? mode : "-");
}

/* POST /completion (llama.cpp's format) and /v1/chat/completions (OpenAI's):
 * two wire formats over the one ctx_complete. */
static enum MHD_Result handle_completion(api_server *s, const http_req *hr, bool openai, int *status) {
    struct MHD_Connection *conn = hr->conn;
    api_defaults d = {.default_n_predict = s->p.default_n_predict};
    ctx_request req;
    api_chat chat = {0};
    json_t *root = NULL;
    dc_error err = {0};
    ctx_reply rep = {0};
    dc_code rc = openai ? api_chat_parse(hr->body, hr->body_n, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Session-Id"),
                                         MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Turn"), &d, &req, &chat,
                                         &root, &err)
                        : api_completion_parse(hr->body, hr->body_n, &d, &req, &root, &err);
    if (!rc) {
        req.gen.alive = http_conn_alive;
        req.gen.alive_ud = conn;
        rc = ctx_complete(s->c, &req, &rep, &err);
    }
    enum MHD_Result ok;
    if (rc == DC_E_CANCELLED) {
        *status = api_error_status(rc);
        ok = MHD_NO; /* nobody to answer: close the connection */
    } else if (rc) {
        *status = api_error_status(rc);
        ok = http_send_error(conn, &err);
    } else if (openai) {
        *status = 200;
        ok = send_json(conn, 200, api_chat_json(&rep, &chat, llm_model_name(s->m), s->p.node_id));
    } else {
        *status = 200;
        json_t *o = api_completion_json(&rep, s->p.node_id, llm_model_name(s->m));
        /* the node's whole time on the request, headers in to answer out:
         * minus the engine's queue, prompt and predicted times it is what
         * everything around the engine costs (bench/engine.py) */
        json_object_set_new(json_object_get(o, "timings"), "total_ms", json_real(clock_mono_ms() - hr->t0));
        ok = send_json(conn, 200, o);
    }
    log_request("POST", hr->url, *status, hr->t0, rep.session_id, rep.turn, rc ? NULL : ctx_mode_name(rep.mode));
    ctx_reply_free(&rep);
    api_chat_free(&chat);
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
    return rc ? http_send_error(conn, &err) : send_json(conn, 200, body);
}

static json_t *health_json(api_server *s) {
    return json_pack("{s:s, s:s, s:s, s:i, s:o}", "status", "ok", "node", s->p.node_id, "model", llm_model_name(s->m),
                     "n_ctx", llm_n_ctx(s->m), "engine", api_engine_json(s->m));
}

static enum MHD_Result on_request(void *ud, const http_req *hr) {
    api_server *s = ud;
    const char *url = hr->url, *method = hr->method;
    int status = 0;
    dc_error err = {0};
    enum MHD_Result ok;
    bool openai = !strcmp(url, "/v1/chat/completions");
    if (openai || !strcmp(url, "/completion") || !strcmp(url, "/completions")) {
        if (strcmp(method, "POST") != 0) {
            dc_fail(&err, DC_E_METHOD, "%s is not allowed on %s: use POST", method, url);
            status = 405;
            ok = http_send_error(hr->conn, &err);
        } else {
            return handle_completion(s, hr, openai, &status);
        }
    } else if (!strcmp(url, "/v1/models")) {
        status = 200;
        ok = send_json(hr->conn, 200, api_models_json(llm_model_name(s->m)));
    } else if (!strncmp(url, "/v1/sessions/", 13) && url[13] && !strchr(url + 13, '/')) {
        ok = handle_session(s, hr->conn, method, url + 13, &status);
    } else if (!strcmp(url, "/health")) {
        status = 200;
        ok = send_json(hr->conn, 200, health_json(s));
    } else {
        dc_fail(&err, DC_E_NOT_FOUND, "no route %s %s", method, url);
        status = 404;
        ok = http_send_error(hr->conn, &err);
    }
    log_request(method, url, status, hr->t0, NULL, 0, NULL);
    return ok;
}

api_server *api_server_start(const api_params *p, ctx *c, llm *m, char *err, size_t errlen) {
    api_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->c = c;
    s->m = m;
    if (!(s->h = http_start(p->host, p->port, p->max_body, on_request, s, err, errlen))) {
        free(s);
        return NULL;
    }
    return s;
}

int api_server_port(const api_server *s) { return http_port(s->h); }

void api_server_stop(api_server *s) {
    if (!s) return;
    http_stop(s->h);
    free(s);
}
