/* complete.c - see complete.h. */
#include "complete.h"

#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "auth.h"
#include "errors.h"
#include "identity.h"
#include "openai.h"
#include "llamacpp.h"
#include "sse.h"

typedef struct {
    const api_env *env;
    call_kind kind;
    const char *route;
    char user[ID_MAX + 1];   /* the API key's user; "" without keys */
    char limits[AUTH_LIMITS_MAX + 1]; /* whom the per-user limits count this call against */
    json_t *root;
    ctx_request req;
    api_chat chat;
    bool stream;
    double t0;
    char holder[AUTH_LIMITS_MAX + 1]; /* whose generation this is, once counted (call_take) */
    char slot[24];           /* its item in env->inflight */
    char sid[ID_MAX + 1];    /* a new session's id (/completion; openai.c names its own in chat) */
    char fork_id[ID_MAX + 1]; /* the id the turn's session takes if it goes on in a fork */
} call;

static void call_release(void *ud) {
    call *k = ud;
    if (k->holder[0]) quota_give(k->env->inflight, k->holder, k->slot);
    json_decref(k->root);
    api_chat_free(&k->chat);
    free(k);
}

static void call_finish(void *ud, dc_code rc, const ctx_reply *rep, const dc_error *e) {
    (void)e;
    call *k = ud;
    observe_request(k->env->obs, "POST", k->route, rc ? api_error_status(rc) : 200, clock_mono_ms() - k->t0, rep);
    if (!rc) observe_content(k->env->obs, rep, k->req.prompt);
}

/* --- the stream, in each endpoint's format ------------------------------ */

static void call_open(void *ud, strbuf *out) {
    call *k = ud;
    if (k->kind != CALL_COMPLETION) api_chat_stream_open(&k->chat, out);
}

static void call_delta(void *ud, const char *text, size_t n, strbuf *out) {
    call *k = ud;
    if (k->kind == CALL_COMPLETION) api_completion_stream_delta(text, n, out);
    else api_chat_stream_delta(&k->chat, text, n, out);
}

/* A turn that went on in a fork (ctx_request.fork_on_conflict) is named after it. */
static void call_follow_fork(call *k, const ctx_reply *rep) {
    if (k->req.fork_on_conflict && strcmp(rep->session_id, k->chat.sid) != 0)
        api_chat_fork(&k->chat, &k->req, rep->session_id);
}

static void call_close(void *ud, const ctx_reply *rep, strbuf *out) {
    call *k = ud;
    call_follow_fork(k, rep);
    if (k->kind == CALL_COMPLETION) api_completion_stream_close(rep, k->env->node_id, llm_model_name(k->env->m), out);
    else api_chat_stream_close(&k->chat, rep, out);
}

static void call_fail(void *ud, const dc_error *e, strbuf *out) {
    call *k = ud;
    if (k->kind == CALL_COMPLETION) sse_event(out, NULL, api_error_json(e));
    else api_chat_stream_fail(&k->chat, e, out);
}

static const sse_format call_stream = {call_open, call_delta, call_close, call_fail, call_finish, call_release};

/* --- the call ------------------------------------------------------------ */

static dc_code call_parse(call *k, const http_req *hr, dc_error *err) {
    api_defaults d = {.default_n_predict = k->env->default_n_predict};
    struct MHD_Connection *conn = hr->conn;
    dc_code rc;
    switch (k->kind) {
    case CALL_COMPLETION:
        rc = api_completion_parse(hr->body, hr->body_n, &d, &k->req, &k->stream, &k->root, err);
        break;
    case CALL_CHAT:
        rc = api_chat_parse(hr->body, hr->body_n, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Session-Id"),
                            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Turn"), &d, &k->req, &k->chat,
                            &k->root, err);
        break;
    default:
        rc = api_responses_parse(hr->body, hr->body_n, &d, &k->req, &k->chat, &k->root, err);
        break;
    }
    if (rc) return rc;
    if (k->kind != CALL_COMPLETION) {
        k->stream = k->chat.stream;
        k->chat.model = llm_model_name(k->env->m);
        k->chat.node = k->env->node_id;
    }
    /* who the call is and what its session is called (identity.h): the
     * limits count the claim (auth_limits_key), the session belongs to the
     * user the call runs as */
    auth_limits_key(k->user, k->req.user_id, hr->addr, k->limits);
    k->req.user_id = identity_user(k->user, k->req.user_id);
    k->req.quota_user = k->limits;
    if (k->kind == CALL_COMPLETION && k->req.mode != MODE_CLIENT_SIDE && !k->req.session_id) {
        if ((rc = identity_new_session(&k->req.turn, k->sid, err))) return rc;
        k->req.session_id = k->sid;
    }
    if (k->req.fork_on_conflict) {
        if ((rc = identity_fork_id(k->fork_id, err))) return rc;
        k->req.fork_id = k->fork_id;
    }
    if (k->req.gen.n_predict > k->env->max_n_predict)
        return dc_fail(err, DC_E_INVALID, "a reply of %d tokens was asked for; this node allows at most %d",
                       k->req.gen.n_predict, k->env->max_n_predict);
    return DC_OK;
}

/* Counts the generation against its user's limit of generations at once:
 * the key's user; without keys, the claimed user at the client's address,
 * or the address (auth_limits_key). */
static dc_code call_take(call *k, dc_error *err) {
    const char *who = k->limits;
    if (k->env->max_streams <= 0) return DC_OK;
    snprintf(k->slot, sizeof k->slot, "%p", (void *)k);
    if (!quota_take(k->env->inflight, who, k->slot, k->env->max_streams))
        return dc_fail(err, DC_E_QUOTA, "user %s already has %d generations running, the most allowed at once", who,
                       k->env->max_streams);
    snprintf(k->holder, sizeof k->holder, "%s", who);
    return DC_OK;
}

/* A response continued from an older turn than its session's last forks
 * the session there (ctx_session_fork): the original stays as it was and
 * the conversation goes on in the copy. From the last turn (or one not yet
 * replicated here, which the turn protocol waits for) it simply continues. */
static dc_code call_fork_if_older(call *k, dc_error *err) {
    if (k->kind != CALL_RESPONSES || !k->chat.prev_turn) return DC_OK;
    session_meta m;
    dc_code rc = ctx_session_get(k->env->c, k->chat.prev_sid, k->req.user_id, &m, err);
    if (rc == DC_E_NOT_FOUND) return dc_fail(err, DC_E_NOT_FOUND, "no stored response resp_%s_%u", k->chat.prev_sid,
                                             k->chat.prev_turn);
    if (rc || m.turn <= k->chat.prev_turn) return rc;
    char sid[ID_MAX + 1];
    if ((rc = identity_fork_id(sid, err))) return rc;
    if ((rc = ctx_session_fork(k->env->c, k->chat.prev_sid, k->chat.prev_turn, k->req.user_id, k->limits, sid, err)))
        return rc;
    api_chat_fork(&k->chat, &k->req, sid);
    return DC_OK;
}

enum MHD_Result api_complete(const api_env *env, const http_req *hr, call_kind kind, const char *route,
                             const char *user) {
    call *k = calloc(1, sizeof *k);
    if (!k) return MHD_NO;
    *k = (call){.env = env, .kind = kind, .route = route, .t0 = hr->t0};
    if (user) snprintf(k->user, sizeof k->user, "%s", user);
    dc_error err = {0};
    ctx_reply rep = {0};
    dc_code rc = call_parse(k, hr, &err);
    if (!rc) rc = call_take(k, &err);
    if (!rc) rc = call_fork_if_older(k, &err);
    if (!rc && k->stream) return sse_run(hr->conn, env->c, env->m, &k->req, &call_stream, k);

    enum MHD_Result ok;
    bool ran = !rc; /* the request reached the context manager: rep says what it did */
    if (ran) {
        k->req.gen.alive = http_conn_alive;
        k->req.gen.alive_ud = hr->conn;
        rc = ctx_complete(env->c, &k->req, &rep, &err);
    }
    call_finish(k, rc, ran ? &rep : NULL, &err);
    if (rc == DC_E_CANCELLED) {
        ok = MHD_NO; /* nobody to answer: close the connection */
    } else if (rc) {
        ok = http_send_error(hr->conn, &err);
    } else if (kind != CALL_COMPLETION) {
        call_follow_fork(k, &rep);
        ok = http_send_json(hr->conn, 200, api_chat_json(&rep, &k->chat), NULL);
    } else {
        json_t *o = api_completion_json(&rep, env->node_id, llm_model_name(env->m));
        /* the node's whole time on the request, headers in to answer out:
         * minus the engine's queue, prompt and predicted times it is what
         * everything around the engine costs (bench/engine.py) */
        json_object_set_new(json_object_get(o, "timings"), "total_ms", json_real(clock_mono_ms() - hr->t0));
        ok = http_send_json(hr->conn, 200, o, NULL);
    }
    ctx_reply_free(&rep);
    call_release(k);
    return ok;
}
