/* complete.c - see complete.h.
 *
 * The runner: every turn, streamed or not, runs here, on a thread of its
 * own (call_run), while the connection's thread watches the client
 * (call_watch) and then answers: as one JSON object once the turn is done,
 * or as a stream (sse.h moves the bytes; call_next makes them). So the
 * turn is run in one place, cancelled through one alive() (call_alive),
 * and waited for at shutdown in one place (api_turns_drain).
 *
 * Three threads touch a turn: the runner (call_run), the engine's
 * thread (call_on_token appends the sampled ids of a streamed turn), and
 * the connection's thread (the handler, then libmicrohttpd's content
 * reader). They share `toks`, `finished`, `gone` and the reply under `mu`;
 * the reply is the runner's until `finished`. Whichever of the runner and
 * the connection's side lets go last frees the call.
 *
 * A streamed turn's text: the connection's thread detokenizes all the ids
 * it has so far and sends what is new (whole characters only): a token's
 * text can depend on its neighbours, so the text of the sequence is what
 * counts, not the sum of its pieces. The replies are short; the repeated
 * work is negligible. Ids that end inside a character give text that ends
 * in an incomplete sequence (local engine), or, from a remote engine, whose
 * JSON replies are valid UTF-8, in U+FFFD put there for it. Both are held
 * back until more ids (or the end) say what the character is; anything
 * else would send text that the next, longer text does not start with. */
#include "complete.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/clock.h"
#include "../util/utf8.h"
#include "auth.h"
#include "errors.h"
#include "../util/identity.h"
#include "llamacpp.h"
#include "openai.h"
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

    /* shared, under mu (see the top) */
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* new ids, finished, or gone */
    int refs;                /* the runner, and the connection's side (the handler, then the stream) */
    tokvec toks;             /* a streamed turn's ids so far */
    bool finished, gone;     /* the runner has returned; the client has left */
    dc_code rc;              /* the runner's outcome, once finished */
    ctx_reply rep;
    dc_error err;

    /* the connection thread's, while streaming */
    tokvec seen;             /* ids taken from toks */
    strbuf text;             /* their text */
    size_t sent;             /* bytes of text already sent */
    bool opened;
} call;

static call *call_new(const api_env *env, call_kind kind, const char *route, const http_req *hr, const char *user) {
    call *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    *k = (call){.env = env, .kind = kind, .route = route, .t0 = hr->t0, .refs = 1};
    if (user) snprintf(k->user, sizeof k->user, "%s", user);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    return k;
}

/* The generation is over: it no longer counts against its user's
 * generations at once (call_take). */
static void call_give(call *k) {
    if (k->holder[0]) quota_give(k->env->inflight, k->holder, k->slot);
    k->holder[0] = '\0';
}

static void call_unref(call *k) {
    pthread_mutex_lock(&k->mu);
    bool last = --k->refs == 0;
    pthread_mutex_unlock(&k->mu);
    if (!last) return;
    call_give(k);
    json_decref(k->root);
    api_chat_free(&k->chat);
    ctx_reply_free(&k->rep);
    tokvec_free(&k->toks);
    tokvec_free(&k->seen);
    strbuf_free(&k->text);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

/* The request is done, as far as logs and metrics go. rep: NULL when the
 * turn never ran (refused before). */
static void call_finish(call *k, dc_code rc, const ctx_reply *rep) {
    observe_request(k->env->obs, "POST", k->route, rc ? api_error_status(rc) : 200, clock_mono_ms() - k->t0, rep);
    if (!rc) observe_content(k->env->obs, rep, k->req.prompt);
}

/* Waits on cv for up to 100 ms: how soon a client that left is noticed. */
static void wait_a_while(call *k) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&k->cv, &k->mu, &ts);
}

/* --- the turns in flight --------------------------------------------------- */

void api_turns_init(api_turns *t) {
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->n = 0;
}

void api_turns_drain(api_turns *t) {
    pthread_mutex_lock(&t->mu);
    while (t->n > 0) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
}

static void turns_add(api_turns *t, int d) {
    pthread_mutex_lock(&t->mu);
    if ((t->n += d) == 0) pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* --- the runner ------------------------------------------------------------ */

/* llm_gen_params.alive of every turn (set in call_start only): false once
 * the client has left, which the connection's thread notices (call_watch,
 * then the stream: sse.c, call_done). The turn then commits nothing. */
static bool call_alive(void *ud) {
    call *k = ud;
    pthread_mutex_lock(&k->mu);
    bool alive = !k->gone;
    pthread_mutex_unlock(&k->mu);
    return alive;
}

/* A streamed turn's ids, on the engine's thread: kept for the connection's. */
static void call_on_token(void *ud, int32_t tok) {
    call *k = ud;
    pthread_mutex_lock(&k->mu);
    tokvec_push(&k->toks, tok);
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static void *call_run(void *arg) {
    call *k = arg;
    api_turns *turns = k->env->turns;
    dc_error err = {0};
    dc_code rc = ctx_complete(k->env->c, &k->req, &k->rep, &err);
    call_give(k); /* before the answer goes out: the client may send its next at once */
    call_finish(k, rc, &k->rep);
    pthread_mutex_lock(&k->mu);
    k->rc = rc;
    k->err = err;
    k->finished = true;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    call_unref(k);
    turns_add(turns, -1); /* last: the server may go once every turn is done */
    return NULL;
}

/* Starts the runner: the streamed output mode is on_token and call_next. */
static dc_code call_start(call *k, dc_error *err) {
    k->req.gen.alive = call_alive;
    k->req.gen.alive_ud = k;
    if (k->stream) {
        k->req.gen.on_token = call_on_token;
        k->req.gen.on_token_ud = k;
    }
    k->refs = 2;
    turns_add(k->env->turns, 1);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int started = pthread_create(&t, &attr, call_run, k);
    pthread_attr_destroy(&attr);
    if (started == 0) return DC_OK;
    k->refs = 1;
    turns_add(k->env->turns, -1);
    return dc_fail(err, DC_E_INTERNAL, "cannot start a thread for the turn");
}

/* On the connection's thread while the turn runs: waits for what decides
 * the answer's status (the end; for a stream, its first id), or for the
 * client to leave. A turn that fails before its first token is answered as
 * a plain JSON error with its own status (409, 404, 429, ...), streamed or
 * not: the status is chosen only once there is something to stream. */
static void call_watch(call *k, struct MHD_Connection *conn) {
    pthread_mutex_lock(&k->mu);
    while (!k->finished && k->toks.n == 0 && !k->gone) {
        wait_a_while(k);
        if (k->finished || k->toks.n) break;
        pthread_mutex_unlock(&k->mu);
        bool alive = http_conn_alive(conn);
        pthread_mutex_lock(&k->mu);
        if (!alive) k->gone = true;
    }
    pthread_mutex_unlock(&k->mu);
}

/* --- the output: one JSON object, or a stream in each endpoint's format --- */

/* A turn that went on in a fork (ctx_request.fork_on_conflict) is named after it. */
static void call_follow_fork(call *k, const ctx_reply *rep) {
    if (k->req.fork_on_conflict && strcmp(rep->session_id, k->chat.sid) != 0)
        api_chat_fork(&k->chat, &k->req, rep->session_id);
}

static enum MHD_Result call_send_json(call *k, struct MHD_Connection *conn) {
    if (k->kind != CALL_COMPLETION) {
        call_follow_fork(k, &k->rep);
        return http_send_json(conn, 200, api_chat_json(&k->rep, &k->chat), NULL);
    }
    json_t *o = api_completion_json(&k->rep, k->env->node_id, llm_model_name(k->env->m));
    /* the node's whole time on the request, headers in to answer out:
     * minus the engine's queue, prompt and predicted times it is what
     * everything around the engine costs (bench/engine.py) */
    json_object_set_new(json_object_get(o, "timings"), "total_ms", json_real(clock_mono_ms() - k->t0));
    return http_send_json(conn, 200, o, NULL);
}

static void call_delta(call *k, const char *text, size_t n, strbuf *out) {
    if (k->kind == CALL_COMPLETION) api_completion_stream_delta(text, n, out);
    else api_chat_stream_delta(&k->chat, text, n, out);
}

/* Sends what text adds to the text already sent, up to its last whole
 * character (see the top). */
static void send_text(call *k, const char *text, size_t n, strbuf *out) {
    static const char fffd[] = "\xef\xbf\xbd";
    size_t end = utf8_complete_prefix(text, n);
    while (end >= 3 && !memcmp(text + end - 3, fffd, 3)) end -= 3;
    if (end > k->sent) call_delta(k, text + k->sent, end - k->sent, out);
    if (end > k->sent) k->sent = end;
}

/* The stream's events (sse_source.next), on the connection's thread. */
static bool call_next(void *ud, strbuf *out) {
    call *k = ud;
    if (!k->opened) {
        k->opened = true;
        if (k->kind != CALL_COMPLETION) api_chat_stream_open(&k->chat, out);
        return true;
    }
    pthread_mutex_lock(&k->mu);
    size_t had = k->seen.n;
    if (k->toks.n == had && !k->finished) wait_a_while(k);
    if (k->toks.n > had) tokvec_append(&k->seen, k->toks.v + had, k->toks.n - had);
    /* finished is read with the last ids: after it, no more come */
    bool finished = k->finished && k->seen.n == k->toks.n;
    pthread_mutex_unlock(&k->mu);
    if (k->seen.n > had) {
        strbuf_clear(&k->text);
        if (llm_detokenize(k->env->m, k->seen.v, k->seen.n, &k->text) == 0) send_text(k, k->text.s, k->text.n, out);
        return true;
    }
    if (!finished) return true;
    if (k->rc != DC_OK) {
        if (k->kind == CALL_COMPLETION) sse_event(out, NULL, api_error_json(&k->err));
        else api_chat_stream_fail(&k->chat, &k->err, out);
        return false;
    }
    /* the reply as committed (a replayed turn streams no ids); its last
     * bytes may be a character cut at n_predict */
    if (k->rep.content.n > k->sent) call_delta(k, k->rep.content.s + k->sent, k->rep.content.n - k->sent, out);
    call_follow_fork(k, &k->rep);
    if (k->kind == CALL_COMPLETION)
        api_completion_stream_close(&k->rep, k->env->node_id, llm_model_name(k->env->m), out);
    else api_chat_stream_close(&k->chat, &k->rep, out);
    return false;
}

/* The stream is done with the call (sse_source.done): a client that left
 * before its end cancels the turn, which then commits nothing. */
static void call_done(void *ud) {
    call *k = ud;
    pthread_mutex_lock(&k->mu);
    if (!k->finished) k->gone = true;
    pthread_mutex_unlock(&k->mu);
    call_unref(k);
}

static const sse_source call_stream = {call_next, call_done};

/* Once call_watch has returned: the answer, on the connection's thread. */
static enum MHD_Result call_answer(call *k, struct MHD_Connection *conn) {
    pthread_mutex_lock(&k->mu);
    bool gone = k->gone, finished = k->finished;
    pthread_mutex_unlock(&k->mu);
    enum MHD_Result ok = MHD_NO; /* the client left (or the turn was cancelled): close the connection */
    if (gone || (finished && k->rc == DC_E_CANCELLED)) {
    } else if (finished && k->rc) {
        ok = http_send_error(conn, &k->err);
    } else if (k->stream) {
        return sse_respond(conn, &call_stream, k); /* the connection's reference goes to the stream */
    } else {
        ok = call_send_json(k, conn);
    }
    call_unref(k);
    return ok;
}

/* --- the call -------------------------------------------------------------- */

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
    default: rc = api_responses_parse(hr->body, hr->body_n, &d, &k->req, &k->chat, &k->root, err); break;
    }
    if (rc) return rc;
    if (k->kind != CALL_COMPLETION) {
        k->stream = k->chat.stream;
        k->chat.model = llm_model_name(k->env->m);
        k->chat.node = k->env->node_id;
    }
    /* who the call is (util/identity.h): the limits count the claim
     * (auth_limits_key), the session belongs to the user the call runs as */
    auth_limits_key(k->user, k->req.user_id, hr->addr, k->limits);
    k->req.user_id = identity_user(k->user, k->req.user_id);
    k->req.quota_user = k->limits;
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
    if (rc == DC_E_NOT_FOUND)
        return dc_fail(err, DC_E_NOT_FOUND, "no stored response resp_%s_%u", k->chat.prev_sid, k->chat.prev_turn);
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
    call *k = call_new(env, kind, route, hr, user);
    if (!k) return MHD_NO;
    dc_error err = {0};
    dc_code rc = call_parse(k, hr, &err);
    if (!rc) rc = call_take(k, &err);
    if (!rc) rc = call_fork_if_older(k, &err);
    if (!rc) rc = call_start(k, &err);
    if (rc) { /* refused before it ran */
        call_finish(k, rc, NULL);
        enum MHD_Result ok = http_send_error(hr->conn, &err);
        call_unref(k);
        return ok;
    }
    call_watch(k, hr->conn);
    return call_answer(k, hr->conn);
}
