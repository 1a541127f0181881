/* server.c - see server.h. The HTTP plumbing (threads, bodies, 413,
 * error bodies, CORS) is http.c's, the generating endpoints complete.c's;
 * this file authenticates, routes and answers the rest. */
#include "server.h"

#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "complete.h"
#include "errors.h"
#include "http.h"
#include "../util/identity.h"
#include "observe.h"
#include "openai.h"
#include "json.h"
#include "web.h"

struct api_server {
    api_params p;
    api_env env;
    api_turns turns;
    http_server *h;
};

api_params api_default_params(void) {
    http_params h = http_default_params();
    return (api_params){.host = h.host,
                        .port = h.port,
                        .max_body = h.max_body,
                        .node_id = "node",
                        .default_n_predict = 128,
                        .max_n_predict = 4096,
                        .max_streams = 4,
                        .max_connections = h.max_connections,
                        .max_per_address = h.max_per_address,
                        .request_timeout_s = h.request_timeout_s};
}

/* Who a sessions route runs as (util/identity.h): the key's user, else the
 * user_id query parameter, else the X-User-Id header, else anonymous. */
static const char *user_of(struct MHD_Connection *conn, const char *key_user) {
    const char *claimed = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "user_id");
    if (!claimed) claimed = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-User-Id");
    return identity_user(key_user, claimed);
}

/* Stored turns as JSON: per turn its segments, token ids (tokenized mode)
 * or text (raw mode). For clients and tests that compare contexts. */
static json_t *turns_json(const turn_rec *turns, uint32_t n) {
    static const char *names[SEG_COUNT] = {"system", "user", "reply", "end"};
    json_t *arr = json_array();
    for (uint32_t i = 0; i < n; i++) {
        json_t *t = json_pack("{s:i}", "turn", (int)turns[i].turn);
        for (int k = 0; k < SEG_COUNT; k++) {
            json_object_set_new(t, names[k],
                                turns[i].kind == TURN_TOKENS ? api_ids_json(turns[i].tok[k].v, turns[i].tok[k].n)
                                                             : api_text_json(&turns[i].text[k]));
        }
        json_array_append_new(arr, t);
    }
    return arr;
}

static enum MHD_Result handle_session(api_server *s, struct MHD_Connection *conn, const char *method, const char *sid,
                                      const char *user, int *status) {
    user = user_of(conn, user);
    ctx *c = s->env.c;
    dc_error err = {0};
    session_meta m;
    dc_code rc;
    json_t *body = NULL;
    if (!strcmp(method, "GET")) {
        const char *include = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "include");
        bool with_turns = include && !strcmp(include, "turns");
        turn_rec *turns = NULL;
        rc = with_turns ? ctx_session_turns(c, sid, user, &m, &turns, &err) : ctx_session_get(c, sid, user, &m, &err);
        if (!rc)
            body = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:I, s:I}", "session_id", sid, "user_id", m.user_id,
                             "model", m.model, "mode", ctx_mode_name(m.mode), "turn", (int)m.turn, "context_tokens",
                             (int)m.n_tokens, "created_ms", (json_int_t)m.created_ms, "last_activity_ms",
                             (json_int_t)m.last_ms);
        if (!rc && with_turns) json_object_set_new(body, "turns", turns_json(turns, m.turn));
        store_turns_free(turns, rc ? 0 : m.turn);
    } else if (!strcmp(method, "DELETE")) {
        rc = ctx_session_delete(c, sid, user, &err);
        if (!rc) body = json_pack("{s:s, s:b}", "session_id", sid, "deleted", 1);
    } else {
        rc = dc_fail(&err, DC_E_METHOD, "%s is not allowed on /v1/sessions/{id}: use GET or DELETE", method);
    }
    *status = rc ? api_error_status(rc) : 200;
    return rc ? http_send_error(conn, &err) : http_send_json(conn, 200, body, NULL);
}

/* POST /v1/sessions/{id}/warm: the handover hint (ctx_session_warm). 202:
 * accepted, the warm-up runs in the background. */
static enum MHD_Result handle_warm(api_server *s, struct MHD_Connection *conn, const char *method, const char *sid,
                                   const char *user, int *status) {
    user = user_of(conn, user);
    dc_error err = {0};
    bool warming = false;
    dc_code rc = strcmp(method, "POST")
        ? dc_fail(&err, DC_E_METHOD, "%s is not allowed on /v1/sessions/{id}/warm: use POST", method)
        : ctx_session_warm(s->env.c, sid, user, &warming, &err);
    *status = rc ? api_error_status(rc) : 202;
    if (rc) return http_send_error(conn, &err);
    return http_send_json(conn, 202, json_pack("{s:s, s:b}", "session_id", sid, "warming", warming), NULL);
}

static json_t *health_json(api_server *s) {
    llm *m = s->env.m;
    return json_pack("{s:s, s:s, s:s, s:i, s:o}", "status", "ok", "node", s->p.node_id, "model", llm_model_name(m),
                     "n_ctx", llm_n_ctx(m), "engine", api_engine_json(m));
}

/* The generating routes, by path. */
static const struct {
    const char *path;
    call_kind kind;
} calls[] = {{"/completion", CALL_COMPLETION},
             {"/completions", CALL_COMPLETION},
             {"/v1/chat/completions", CALL_CHAT},
             {"/v1/responses", CALL_RESPONSES}};

/* The generating route at url, or NULL. */
static const char *call_route(const char *url, call_kind *kind) {
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        if (!strcmp(url, calls[i].path)) {
            *kind = calls[i].kind;
            return calls[i].path;
        }
    return NULL;
}

/* What anyone may read: the page, the node's health, and its metrics:
 * counts and timings, no session ids, keys or content. */
static bool open_route(const char *method, const char *url) {
    return !strcmp(method, "GET") && (!strcmp(url, "/") || !strcmp(url, "/health") || !strcmp(url, "/metrics"));
}

/* The API key is checked as soon as a request's headers are in (http.h):
 * a client without a valid key has its body dropped unread, and cannot
 * make the node buffer or parse anything. */
static dc_code gate(void *ud, const http_req *hr, char who[ID_MAX + 1], dc_error *err) {
    api_server *s = ud;
    /* the peer routes take the peer key and nothing else: not a client's
     * API key, and not open when the node has no API keys (peer.c) */
    if (!strncmp(hr->url, "/v1/peer/", 9)) {
        if (!s->p.peer) return DC_OK; /* on_request answers 404: no such route here */
        dc_code rc = peer_check(s->p.peer, MHD_lookup_connection_value(hr->conn, MHD_HEADER_KIND, PEER_KEY_HEADER),
                                err);
        if (rc)
            observe_request(s->env.obs, hr->method, "unauthorized", api_error_status(rc), clock_mono_ms() - hr->t0,
                            NULL);
        return rc;
    }
    if (!s->p.keys || open_route(hr->method, hr->url)) return DC_OK;
    dc_code rc = auth_check(s->p.keys, MHD_lookup_connection_value(hr->conn, MHD_HEADER_KIND, "Authorization"), who,
                            err);
    if (rc)
        observe_request(s->env.obs, hr->method, "unauthorized", api_error_status(rc), clock_mono_ms() - hr->t0, NULL);
    return rc;
}

static enum MHD_Result on_request(void *ud, const http_req *hr) {
    api_server *s = ud;
    const char *url = hr->url, *method = hr->method, *route = url;
    struct MHD_Connection *conn = hr->conn;
    dc_error err = {0};
    bool get = !strcmp(method, "GET");

    if (get && !strcmp(url, "/metrics")) {
        /* counted before it is rendered, so that a scrape sees itself */
        observe_request(s->env.obs, method, route, 200, clock_mono_ms() - hr->t0, NULL);
        strbuf text = {0};
        observe_render(s->env.obs, s->env.m, &text);
        return http_send(conn, 200, "text/plain; version=0.0.4; charset=utf-8", text.s, text.n, MHD_RESPMEM_MUST_FREE,
                         NULL);
    }
    const char *who = hr->who[0] ? hr->who : NULL; /* the key's user (gate); NULL without keys */
    /* /v1/sessions/{id}[/...]: where the id ends (NULL: at the end of the url) */
    bool sessions = !strncmp(url, "/v1/sessions/", 13) && url[13];
    const char *id_end = sessions ? strchr(url + 13, '/') : NULL;
    call_kind kind;
    const char *call = call_route(url, &kind);
    int status = 200;
    enum MHD_Result ok = MHD_NO;
    if (call && !strcmp(method, "POST")) {
        return api_complete(&s->env, hr, kind, call, who); /* it logs and counts the turn */
    } else if (call) {
        dc_fail(&err, DC_E_METHOD, "%s is not allowed on %s: use POST", method, url);
    } else if (get && !strcmp(url, "/")) {
        ok = http_send(conn, 200, "text/html; charset=utf-8", (void *)web_index_html, web_index_html_len,
                       MHD_RESPMEM_PERSISTENT, NULL);
    } else if (get && !strcmp(url, "/health")) {
        ok = http_send_json(conn, 200, health_json(s), NULL);
    } else if (get && !strcmp(url, "/v1/models")) {
        ok = http_send_json(conn, 200, api_models_json(llm_model_name(s->env.m)), NULL);
    } else if (s->p.peer && !strncmp(url, "/v1/peer/kv/", 12) && url[12] && !strchr(url + 12, '/')) {
        route = "/v1/peer/kv/{id}"; /* gate() checked the peer key */
        strbuf blob = {0};
        if (!get) dc_fail(&err, DC_E_METHOD, "%s is not allowed on /v1/peer/kv/{id}: use GET", method);
        else if (!ctx_kv_export(s->env.c, url + 12, &blob, &err))
            ok = http_send(conn, 200, "application/octet-stream", blob.s, blob.n, MHD_RESPMEM_MUST_FREE, NULL);
        if (err.code) strbuf_free(&blob);
    } else if (sessions && !id_end) {
        route = "/v1/sessions/{id}";
        ok = handle_session(s, conn, method, url + 13, who, &status);
    } else if (sessions && id_end > url + 13 && !strcmp(id_end, "/warm")) {
        route = "/v1/sessions/{id}/warm";
        char sid[ID_MAX + 2]; /* one more than an id may have: a longer one stays invalid */
        size_t n = (size_t)(id_end - (url + 13));
        snprintf(sid, sizeof sid, "%.*s", (int)(n < sizeof sid - 1 ? n : sizeof sid - 1), url + 13);
        ok = handle_warm(s, conn, method, sid, who, &status);
    } else {
        route = "other"; /* a label per unknown path would let clients grow the metrics without bound */
        dc_fail(&err, DC_E_NOT_FOUND, "no route %s %s", method, url);
    }
    if (err.code) {
        status = api_error_status(err.code);
        ok = http_send_error(conn, &err);
    }
    observe_request(s->env.obs, method, route, status, clock_mono_ms() - hr->t0, NULL);
    return ok;
}

api_server *api_server_start(const api_params *p, ctx *c, llm *m, char *err, size_t errlen) {
    api_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->env = (api_env){.c = c,
                       .m = m,
                       .node_id = p->node_id,
                       .default_n_predict = p->default_n_predict,
                       .max_n_predict = p->max_n_predict,
                       .max_streams = p->max_streams,
                       .turns = &s->turns};
    if (!(s->env.obs = observe_new(p->log_content)) || !(s->env.inflight = quota_new(NULL, NULL))) {
        observe_free(s->env.obs);
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    api_turns_init(&s->turns);
    http_params hp = http_default_params();
    hp.host = p->host;
    hp.port = p->port;
    hp.max_body = p->max_body;
    hp.max_connections = p->max_connections;
    hp.max_per_address = p->max_per_address;
    hp.request_timeout_s = p->request_timeout_s;
    if (!(s->h = http_start(&hp, gate, on_request, s, err, errlen))) {
        observe_free(s->env.obs);
        quota_free(s->env.inflight);
        api_turns_drain(&s->turns);
        free(s);
        return NULL;
    }
    return s;
}

int api_server_port(const api_server *s) { return http_port(s->h); }

void api_server_stop(api_server *s) {
    if (!s) return;
    http_stop(s->h); /* closes every connection: turns in flight are cancelled */
    api_turns_drain(&s->turns);
    observe_free(s->env.obs);
    quota_free(s->env.inflight);
    free(s);
}
