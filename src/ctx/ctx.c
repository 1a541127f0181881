/* ctx.c - the context manager; see ctx.h.
 *
 * Tokenized mode (the product): a turn renders only the new user message
 * with the chat template (ending with the assistant prefix) and tokenizes it.
 * The model input is the stored tokens plus those. The turn then commits as
 * [user tokens][generated ids][end-of-turn tokens]: the reply is never
 * re-tokenized, so the next turn feeds the model exactly what it produced.
 *
 * Raw mode (the paper's baseline): the history is stored as text; every turn
 * re-renders the whole conversation and tokenizes all of it.
 *
 * Client-side mode: the prompt is the client's own formatted history (parsed
 * with special tokens, since the client wrote the markup); nothing is stored.
 *
 * The commit is synchronous: the response goes out after the store has the
 * turn on disk, so "200" means "committed" and the next request of the
 * session, on any thread, sees it. On the embedded store this costs one
 * fsync (store_commit_ms in the timings).
 *
 * Size: this file is the turn protocol, one decision from the read of a
 * session to its commit (turn check, stale wait, replay, truncation, fork,
 * the three modes); its parts share the request's state and their order is
 * the protocol, so they stay together. The layout of a context is
 * window.c's, following commits warm.c's; tests/unit/test_ctx.c covers the
 * protocol with fakes. */
#include "ctx.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/identity.h"
#include "../util/keylock.h"
#include "../util/log.h"
#include "../util/quota.h"
#include "turn.h"
#include "warm.h"
#include "window.h"

struct ctx {
    ctx_params p;
    llm *m;
    store *s;
    keylock *locks;
    quota *owners; /* the sessions each user created here, for the limit */
    warm *w;       /* NULL: no warm-up */
};

ctx_params ctx_default_params(void) {
    return (ctx_params){.node_id = "node",
                        .stale_retries = 3,
                        .stale_retry_ms = 10,
                        .sync_timeout_ms = 2000,
                        .max_sessions_per_user = 1000,
                        .max_session_tokens = 131072,
                        .warm = warm_default_params()};
}

/* quota.h asks whether a session it counts is still there. A store that
 * cannot say (down, corrupt record) counts it: the limit errs on holding. */
static bool session_alive(void *ud, const char *sid) {
    ctx *c = ud;
    session_meta m;
    return store_meta_get(c->s, sid, &m) != STORE_NOT_FOUND;
}

ctx *ctx_new(const ctx_params *p, llm *m, store *s) {
    ctx *c = dc_xrealloc(NULL, sizeof *c);
    c->p = *p;
    c->m = m;
    c->s = s;
    c->locks = keylock_new();
    c->owners = quota_new(session_alive, c);
    warm_params wp = p->warm;
    wp.node_id = p->node_id;
    c->w = warm_new(&wp, m, s);
    return c;
}

void ctx_free(ctx *c) {
    if (!c) return;
    warm_free(c->w);
    keylock_free(c->locks);
    quota_free(c->owners);
    free(c);
}

int ctx_sweep(ctx *c) { return quota_sweep(c->owners); }

/* A new session for user: its place under the limit, or DC_E_QUOTA. */
static dc_code reserve_session(ctx *c, const char *user, const char *sid, dc_error *err) {
    if (quota_take(c->owners, user, sid, c->p.max_sessions_per_user)) return DC_OK;
    return dc_fail(err, DC_E_QUOTA,
                   "user %s has %d sessions on this node, the most allowed: delete one (DELETE /v1/sessions/{id}) "
                   "or let one expire",
                   user, c->p.max_sessions_per_user);
}

const char *ctx_mode_name(session_mode m) {
    switch (m) {
    case MODE_TOKENIZED: return "tokenized";
    case MODE_RAW: return "raw";
    case MODE_CLIENT_SIDE: return "client-side";
    }
    return "unknown";
}

session_mode ctx_mode_parse(const char *s) {
    if (!strcmp(s, "tokenized")) return MODE_TOKENIZED;
    if (!strcmp(s, "raw")) return MODE_RAW;
    if (!strcmp(s, "client-side")) return MODE_CLIENT_SIDE;
    return 0;
}

void ctx_reply_free(ctx_reply *rep) { strbuf_free(&rep->content); }

static dc_code store_error(dc_error *err, store_status st) {
    return dc_fail(err, st == STORE_UNAVAILABLE ? DC_E_UNAVAILABLE : DC_E_STORE, "store: %s (%s)", store_status_str(st),
                   store_last_error());
}

/* A failed call into the LLM service: 503 when the service cannot be
 * reached (a remote engine), otherwise code with what failed. */
static dc_code llm_error(dc_error *err, dc_code code, const char *what) {
    const char *why = llm_unreachable();
    if (why) return dc_fail(err, DC_E_LLM_DOWN, "%s: %s", what, why);
    return dc_fail(err, code, "%s", what);
}

/* 429 with the engine's own estimate of when to retry. */
static dc_code busy_error(ctx *c, dc_error *err, const char *why) {
    llm_stats st;
    llm_stats_get(c->m, &st);
    dc_fail(err, DC_E_BUSY, "the node is at capacity (%s); retry later", why);
    err->retry_after_s = st.retry_after_s;
    return DC_E_BUSY;
}

/* Refusing must cost next to nothing: under overload most requests are
 * refused, and work spent on them (rendering, tokenizing, building the
 * context) is taken from the turns that do run. So a request the engine
 * would refuse is refused before any of that (llm_admit). */
static dc_code refuse_if_full(ctx *c, dc_error *err) {
    if (llm_admit(c->m) == LLM_OK) return DC_OK;
    return busy_error(c, err, "all sequences busy and the queue is full");
}

/* Generation and its bookkeeping, shared by all three modes. */
static dc_code generate(ctx *c, const tokvec *input, const ctx_request *req, tokvec *out, ctx_reply *rep,
                        dc_error *err) {
    char why[160], owner[WARM_OWNER_MAX];
    rep->context_tokens = (int)input->n;
    llm_gen_params gp = req->gen;
    /* KV is reused only within one conversation (llm.h): a session's turns
     * share the session's KV (warm.h names it, so that a warm-up on
     * another node prepares exactly what its next turn asks for); a
     * stateless request shares with the client as the per-user limits
     * know it (ctx_request.quota_user: the key's user; without keys, the
     * claimed user at its address): key-less strangers, all "anonymous"
     * (util/identity.h), never share. */
    if (!gp.owner && req->mode != MODE_CLIENT_SIDE) {
        warm_kv_owner(rep->session_id, owner);
        gp.owner = owner;
    }
    if (!gp.owner) gp.owner = req->quota_user ? req->quota_user : rep->user_id;
    switch (llm_generate(c->m, input->v, input->n, &gp, out, &rep->llm, why, sizeof why)) {
    case LLM_OK: break;
    case LLM_BUSY: return busy_error(c, err, why);
    case LLM_CANCELLED: return dc_fail(err, DC_E_CANCELLED, "generation abandoned: %s", why);
    default:
        if (llm_unreachable()) return dc_fail(err, DC_E_LLM_DOWN, "generation failed: %s", why);
        return dc_fail(err, DC_E_INTERNAL, "generation failed: %s", why);
    }
    if (llm_detokenize(c->m, out->v, out->n, &rep->content) != 0)
        return llm_error(err, DC_E_INTERNAL, "cannot detokenize the reply");
    return DC_OK;
}

/* Both modes' builders set *whole to the conversation's length in tokens as
 * the model would see it untruncated: every stored turn of the context and
 * the new message (the session bound, --max-session-tokens, is on it). */
static dc_code build_tokenized(ctx *c, const ctx_request *req, const turn_rec *turns, uint32_t n_turns, turn_rec *rec,
                               tokvec *input, size_t *whole, ctx_reply *rep, dc_error *err) {
    double t0 = clock_mono_ms();
    if (n_turns == 0) llm_add_bos(c->m, &rec->tok[SEG_SYSTEM]); /* the conversation's start: kept whatever is cut */
    /* both messages of turn 1 in one go: a remote engine renders them in one round trip */
    llm_msg msgs[2] = {{"system", req->system}, {"user", req->prompt}};
    tokvec *const outs[2] = {&rec->tok[SEG_SYSTEM], &rec->tok[SEG_USER]};
    bool with_sys = n_turns == 0 && req->system;
    if (llm_chat_render_each(c->m, msgs + !with_sys, with_sys ? 2 : 1, true, outs + !with_sys) != 0) {
        tokvec sys = {0}; /* which one failed */
        bool sys_bad = with_sys && llm_chat_render(c->m, msgs, 1, false, &sys) != 0;
        tokvec_free(&sys);
        if (sys_bad) return llm_error(err, DC_E_INVALID, "the model's chat template cannot render a system message");
        return llm_error(err, DC_E_INTERNAL, "cannot render the message with the chat template");
    }
    rep->tokenize_ms = clock_mono_ms() - t0;

    const tokvec *sys = n_turns ? &turns[0].tok[SEG_SYSTEM] : &rec->tok[SEG_SYSTEM];
    size_t budget = (size_t)llm_n_ctx(c->m), fixed = sys->n + rec->tok[SEG_USER].n + (size_t)req->gen.n_predict;
    size_t all = 0, history = 0;
    window_first(turns, n_turns, 0, SIZE_MAX, &all);
    *whole = sys->n + all + rec->tok[SEG_USER].n;
    if (fixed > budget)
        return dc_fail(err, DC_E_CTX_LENGTH,
                       "the message (%zu tokens) plus n_predict (%d) does not fit the context window (%zu tokens)",
                       fixed - (size_t)req->gen.n_predict, req->gen.n_predict, budget);
    uint32_t first = window_first(turns, n_turns, fixed, budget, &history);
    rep->truncated_turns = (int)first;

    tokvec_reserve(input, fixed + history);
    tokvec_append(input, sys->v, sys->n);
    window_append(turns, first, n_turns, input);
    tokvec_append(input, rec->tok[SEG_USER].v, rec->tok[SEG_USER].n);
    return DC_OK;
}

static const char *text_of(const strbuf *b) { return b->s ? b->s : ""; }

/* Raw mode re-renders the conversation from its text on every turn (the
 * paper's baseline: every turn tokenizes the whole history). Each turn is
 * rendered and tokenized once (llm.h: messages rendered one at a time and
 * concatenated give the tokens of rendering them together), and when the
 * whole does not fit, the oldest whole turns go by subtracting their counts,
 * as in tokenized mode: linear in the session's length. (Rendering all that
 * remained again for each dropped turn was quadratic, and ran in the request
 * thread, outside the engine's queue and its 429.) */
static dc_code build_raw(ctx *c, const ctx_request *req, const turn_rec *turns, uint32_t n_turns, turn_rec *rec,
                         tokvec *input, size_t *whole, ctx_reply *rep, dc_error *err) {
    const char *system = n_turns ? (turns[0].text[SEG_SYSTEM].n ? turns[0].text[SEG_SYSTEM].s : NULL) : req->system;
    if (!n_turns && system) strbuf_puts(&rec->text[SEG_SYSTEM], system);
    strbuf_puts(&rec->text[SEG_USER], req->prompt);
    tokvec sys = {0}, last = {0}, *parts = calloc(n_turns ? n_turns : 1, sizeof *parts);
    if (!parts) return dc_fail(err, DC_E_INTERNAL, "out of memory");
    double t0 = clock_mono_ms();
    llm_add_bos(c->m, &sys); /* the conversation's start, counted with the system message: never cut */
    bool ok = !system || llm_chat_render(c->m, &(llm_msg){"system", system}, 1, false, &sys) == 0;
    for (uint32_t i = 0; ok && i < n_turns; i++) {
        llm_msg pair[2] = {{"user", text_of(&turns[i].text[SEG_USER])},
                           {"assistant", text_of(&turns[i].text[SEG_REPLY])}};
        ok = llm_chat_render(c->m, pair, 2, false, &parts[i]) == 0;
    }
    ok = ok && llm_chat_render(c->m, &(llm_msg){"user", req->prompt}, 1, true, &last) == 0;
    rep->tokenize_ms = clock_mono_ms() - t0;

    dc_code rc = DC_OK;
    size_t budget = (size_t)llm_n_ctx(c->m), fixed = sys.n + last.n + (size_t)req->gen.n_predict, history = 0;
    for (uint32_t i = 0; i < n_turns; i++) history += parts[i].n;
    *whole = sys.n + history + last.n;
    if (!ok) {
        rc = llm_error(err, DC_E_INVALID, "the model's chat template cannot render this conversation");
    } else if (fixed > budget) {
        rc = dc_fail(err, DC_E_CTX_LENGTH,
                     "the message (%zu tokens) plus n_predict (%d) does not fit the context window (%zu tokens)",
                     sys.n + last.n, req->gen.n_predict, budget);
    } else {
        uint32_t first = 0; /* drop the oldest whole turns until the rest fits */
        while (fixed + history > budget) history -= parts[first++].n;
        rep->truncated_turns = (int)first;
        tokvec_clear(input);
        tokvec_reserve(input, fixed + history);
        tokvec_append(input, sys.v, sys.n);
        for (uint32_t i = first; i < n_turns; i++) tokvec_append(input, parts[i].v, parts[i].n);
        tokvec_append(input, last.v, last.n);
    }
    for (uint32_t i = 0; i < n_turns; i++) tokvec_free(&parts[i]);
    free(parts);
    tokvec_free(&sys);
    tokvec_free(&last);
    return rc;
}

static dc_code complete_client_side(ctx *c, const ctx_request *req, ctx_reply *rep, dc_error *err) {
    tokvec input = {0}, out = {0};
    double t0 = clock_mono_ms();
    dc_code rc = refuse_if_full(c, err);
    if (rc) return rc;
    size_t bos = llm_add_bos(c->m, &input);
    if (req->messages ? llm_chat_render(c->m, req->messages, req->n_messages, true, &input) != 0
                      : llm_tokenize(c->m, req->prompt, strlen(req->prompt), true, &input) != 0)
        rc = llm_error(err, DC_E_INVALID,
                       req->messages ? "the messages cannot be rendered with the model's chat template"
                                     : "the prompt cannot be tokenized");
    rep->tokenize_ms = clock_mono_ms() - t0;
    if (!rc && input.n == bos) rc = dc_fail(err, DC_E_INVALID, "prompt is empty");
    if (!rc && input.n + (size_t)req->gen.n_predict > (size_t)llm_n_ctx(c->m))
        rc = dc_fail(err, DC_E_CTX_LENGTH,
                     "the prompt (%zu tokens) plus n_predict (%d) does not fit the context window (%d tokens)", input.n,
                     req->gen.n_predict, llm_n_ctx(c->m));
    if (!rc) rc = generate(c, &input, req, &out, rep, err);
    rep->turn = req->turn;
    tokvec_free(&input);
    tokvec_free(&out);
    return rc;
}

/* What load_current decided when it did not fail. */
typedef enum {
    LOAD_PROCEED,     /* the stored turn is the client's turn - 1: generate and commit */
    LOAD_REPLAY,      /* the client retries its committed turn (same request_id): answer it again */
    LOAD_FORK,        /* the turn is taken and the request continues a stored reply (fork_on_conflict):
                         generate from the turns before it, commit in a fork */
    LOAD_STALE_ANSWER /* behind, and the client accepts that: answer from what is here, commit nothing */
} load_outcome;

static dc_code check_compatible(ctx *c, const char *sid, const ctx_request *req, const session_meta *meta,
                                dc_error *err) {
    if (meta->mode != req->mode)
        return dc_fail(err, DC_E_MODE_MISMATCH, "session %s is in %s mode, not %s", sid, ctx_mode_name(meta->mode),
                       ctx_mode_name(req->mode));
    if (meta->fingerprint != llm_fingerprint(c->m))
        return dc_fail(err, DC_E_INCOMPATIBLE,
                       "session %s was stored for another tokenizer or chat template (model %s)", sid, meta->model);
    return DC_OK;
}

/* Reads the session and applies the turn protocol. When the stored turn is
 * behind the client's, it first waits for the store to see the missing turn
 * (replication: a subscription on the NATS store; returns at once on the
 * embedded one), then re-reads a bounded number of times (the paper's
 * 3 x 10 ms, for replicas that lag the notification). */
static dc_code load_current(ctx *c, const char *sid, const ctx_request *req, uint32_t turn, session_meta *meta,
                            turn_rec **turns, bool *exists, ctx_reply *rep, load_outcome *out, dc_error *err) {
    /* The read must reach the turn the request continues (a store reading
     * from a nearby replica asks the authoritative copy when the replica has
     * less). A first turn with a request_id must also see turn 1 itself: a
     * replica that has never seen the session cannot tell a new one from the
     * retry of a first turn committed through another node, whose reply the
     * client is owed. (A later turn's retry that the replica has not seen
     * yet is found at the commit instead, settle_conflict, so that a normal
     * turn costs no extra round trip.) */
    uint32_t want = turn == 1 && req->request_id ? 1 : turn - 1;
    bool waited = false;
    for (int attempt = 0;; attempt++) {
        double t0 = clock_mono_ms();
        store_trips k0 = store_trips_now();
        store_status st = store_session_load(c->s, sid, want, meta, turns);
        rep->store_read_ms += clock_mono_ms() - t0;
        store_trips k1 = store_trips_now();
        rep->store_read_trips += (int)(k1.all - k0.all);
        rep->store_read_core_trips += (int)(k1.core - k0.core);
        if (st != STORE_OK && st != STORE_NOT_FOUND) return store_error(err, st);
        *exists = st == STORE_OK;
        if (*exists && strcmp(meta->user_id, rep->user_id) != 0)
            return dc_fail(err, DC_E_FORBIDDEN, "session %s belongs to another user", sid);
        uint32_t stored = *exists ? meta->turn : 0;
        switch (turn_decide(*exists, stored, turn, attempt >= c->p.stale_retries)) {
        case TURN_PROCEED: *out = LOAD_PROCEED; return *exists ? check_compatible(c, sid, req, meta, err) : DC_OK;
        case TURN_CONFLICT:
            if (req->request_id && stored == turn && !strcmp(meta->request_id, req->request_id)) {
                *out = LOAD_REPLAY;
                return check_compatible(c, sid, req, meta, err);
            }
            if (req->fork_on_conflict) {
                *out = LOAD_FORK;
                return check_compatible(c, sid, req, meta, err);
            }
            err->expected_turn = stored + 1;
            return dc_fail(err, DC_E_CONFLICT, "turn %u of session %s is already committed; expected turn %u", turn,
                           sid, stored + 1);
        case TURN_STALE:
        case TURN_NOT_FOUND:
            if (req->consistency == CONSISTENCY_AVAILABLE) {
                *out = LOAD_STALE_ANSWER;
                rep->stale = true;
                return *exists ? check_compatible(c, sid, req, meta, err) : DC_OK;
            }
            if (*exists)
                return dc_fail(err, DC_E_STALE,
                               "stored context is at turn %u, request is turn %u; still behind after waiting %.0f ms "
                               "and %d re-reads",
                               stored, turn, rep->wait_ms, rep->retries);
            return dc_fail(err, DC_E_NOT_FOUND, "no session %s (turn %u requested)", sid, turn);
        case TURN_WAIT:
            store_turns_free(*turns, *exists ? meta->turn : 0);
            *turns = NULL;
            if (!waited) {
                waited = true;
                double w0 = clock_mono_ms();
                store_wait(c->s, sid, turn - 1, c->p.sync_timeout_ms);
                rep->wait_ms += clock_mono_ms() - w0;
                attempt = -1; /* the re-reads start after the wait */
            } else {
                rep->retries++;
                clock_sleep_ms(c->p.stale_retry_ms);
            }
            break;
        }
    }
}

/* A retried turn: the reply as committed, not a new generation. */
static dc_code replay(ctx *c, const turn_rec *t, ctx_reply *rep, dc_error *err) {
    rep->replayed = true;
    if (t->kind == TURN_TOKENS) {
        if (llm_detokenize(c->m, t->tok[SEG_REPLY].v, t->tok[SEG_REPLY].n, &rep->content) != 0)
            return llm_error(err, DC_E_STORE, "the committed reply cannot be detokenized");
        rep->llm.predicted_n = (int)t->tok[SEG_REPLY].n;
    } else {
        strbuf_append(&rep->content, t->text[SEG_REPLY].s ? t->text[SEG_REPLY].s : "", t->text[SEG_REPLY].n);
    }
    return DC_OK;
}

/* Writes turns[0..upto) as the new session new_sid, its meta from src's
 * (owner, mode, model), turn by turn through the same compare-and-set as
 * any turn: a second writer racing for new_sid loses at its first commit. A
 * copy cut short by a failure is never returned to the client, and expires
 * with the TTL. */
static dc_code copy_turns(ctx *c, const char *new_sid, const session_meta *src, const turn_rec *turns, uint32_t upto,
                          session_meta *last, dc_error *err) {
    session_meta m = *src;
    m.rev = 0; /* a new session: its turn 1 expects none; each commit gives the next one's */
    m.turn = 0;
    m.n_tokens = 0;
    m.created_ms = m.last_ms = clock_wall_ms();
    m.request_id[0] = '\0';
    m.node_url[0] = '\0'; /* no node holds KV of the copy */
    for (uint32_t i = 0; i < upto; i++) {
        m.turn = i + 1;
        m.n_tokens += (uint32_t)turn_rec_tokens(&turns[i]);
        store_status st = store_turn_commit(c->s, new_sid, &m, &turns[i]);
        if (st == STORE_CONFLICT) return dc_fail(err, DC_E_CONFLICT, "session %s already exists", new_sid);
        if (st != STORE_OK) return store_error(err, st);
    }
    if (last) *last = m; /* the copy's creation time and revision, for the turn after */
    return DC_OK;
}

/* The turn goes on in a fork of its session: a copy of the turns before it
 * (the context the reply was generated from) under a new id, then the turn.
 * rep->session_id becomes the fork's. */
static dc_code commit_in_fork(ctx *c, const turn_rec *turns, session_meta *meta, const turn_rec *rec,
                              const char *counted, ctx_reply *rep, dc_error *err) {
    char fsid[ID_MAX + 1];
    dc_code rc = identity_fork_id(fsid, err);
    if (rc) return rc;
    rc = reserve_session(c, counted, fsid, err);
    if (rc) return rc;
    session_meta copy;
    rc = copy_turns(c, fsid, meta, turns, rec->turn - 1, &copy, err);
    meta->rev = copy.rev;
    meta->created_ms = copy.created_ms;
    store_status st = rc ? STORE_OK : store_turn_commit(c->s, fsid, meta, rec);
    if (!rc && st == STORE_CONFLICT) rc = dc_fail(err, DC_E_CONFLICT, "session %s already exists", fsid);
    else if (!rc && st != STORE_OK) rc = store_error(err, st);
    if (rc) {
        quota_give(c->owners, counted, fsid);
        return rc;
    }
    log_info("session %s: turn %u was taken by another request; it went on in a fork, session %s", rep->session_id,
             rec->turn, fsid);
    strcpy(rep->session_id, fsid);
    return DC_OK;
}

/* A commit refused as a conflict: what happened, asked of the authoritative
 * copy (STORE_WANT_LATEST), since the replica the turn was read from may not
 * have shown it. The turn committed by an earlier try of this very request
 * (same request_id: its reply was lost on the way, and the retry came here)
 * is answered with the committed reply. A session gone meanwhile (idle past
 * its TTL, or deleted, while the turn was generated) is 404, as the next
 * request would find. A continuation of a stored reply goes on in a fork
 * (*fork set). Anything else is the 409 it is. */
static dc_code settle_conflict(ctx *c, const ctx_request *req, uint32_t turn, ctx_reply *rep, bool *fork,
                               dc_error *err) {
    const char *sid = rep->session_id;
    session_meta now;
    turn_rec *cur = NULL;
    store_status st;
    /* the winner's turn may not have reached the replica that answers yet */
    for (int attempt = 0;; attempt++) {
        st = store_session_load(c->s, sid, STORE_WANT_LATEST, &now, &cur);
        if (st != STORE_OK || now.turn >= turn || attempt >= c->p.stale_retries) break;
        store_turns_free(cur, now.turn);
        cur = NULL;
        clock_sleep_ms(c->p.stale_retry_ms);
    }
    bool mine = st == STORE_OK && !strcmp(now.user_id, rep->user_id);
    dc_code rc = DC_OK;
    if (mine && now.turn == turn && req->request_id && !strcmp(now.request_id, req->request_id)) {
        if (req->gen.on_token) {
            /* this try's own reply is already out, token by token */
            err->expected_turn = turn + 1;
            rc = dc_fail(err, DC_E_CONFLICT,
                         "turn %u of session %s was committed by an earlier try of request %s while this one ran; "
                         "send it again for the committed reply",
                         turn, sid, req->request_id);
        } else {
            log_info("session %s: turn %u already committed by request %s elsewhere; replayed", sid, turn,
                     req->request_id);
            strbuf_clear(&rep->content);
            rc = replay(c, &cur[turn - 1], rep, err);
            rep->context_tokens = (int)now.n_tokens;
        }
    } else if (st == STORE_NOT_FOUND && turn > 1) {
        rc = dc_fail(err, DC_E_NOT_FOUND,
                     "session %s ended (idle past its TTL, or deleted) while turn %u was generated; nothing was "
                     "committed",
                     sid, turn);
    } else if (mine && now.turn >= turn && req->fork_on_conflict) {
        *fork = true;
    } else {
        err->expected_turn = (mine && now.turn >= turn ? now.turn : turn) + 1;
        rc = dc_fail(err, DC_E_CONFLICT, "turn %u of session %s was committed by another request", turn, sid);
    }
    store_turns_free(cur, st == STORE_OK ? now.turn : 0);
    return rc;
}

/* KV transfer (issue 15 item 3), the fetching side: when this node holds
 * clearly less KV of the session's stored tokens than the node that served
 * the previous turn could send, and the fetch hook (api/peer.c) predicts
 * that fetching beats prefilling, the state is fetched, verified against
 * the tokens this node read from its own store and against its model
 * (llm_kv_import), and loaded; the generation that follows then finds it
 * as any cached prefix. Anything that fails costs the fetch only: the turn
 * prefills as it would have. Only a whole, untruncated stored context: the
 * previous node computed exactly those tokens. */
static void kv_transfer(ctx *c, const char *sid, const session_meta *meta, const tokvec *input, size_t n_stored,
                        ctx_reply *rep) {
    if (!c->p.kv_fetch || !meta->node_url[0] || rep->truncated_turns || !n_stored) return;
    if (c->p.advertise_url && !strcmp(meta->node_url, c->p.advertise_url)) return; /* served here */
    char owner[WARM_OWNER_MAX];
    warm_kv_owner(sid, owner);
    size_t held = llm_kv_held(c->m, owner, input->v, n_stored);
    /* what a spilled state must gain to be loaded (engine.c spill_min) */
    if (held + 64 > n_stored) return;
    double t0 = clock_mono_ms();
    strbuf blob = {0};
    int got = c->p.kv_fetch(c->p.kv_fetch_ud, meta->node_url, sid, n_stored, n_stored - held, &blob);
    char why[160] = "";
    size_t n = 0;
    if (got == 1 && llm_kv_import(c->m, owner, input->v, n_stored, blob.s, blob.n, &n, why, sizeof why) == 0) {
        rep->kv_transfer_ms = clock_mono_ms() - t0;
        rep->kv_transfer_tokens = (int)n;
        log_info("session %s: KV of %zu stored tokens (%zu bytes) from %s in %.1f ms", sid, n, blob.n, meta->node_url,
                 rep->kv_transfer_ms);
    } else if (got == 1) {
        log_warn("session %s: the KV state from %s was refused (%s); prefilling", sid, meta->node_url, why);
    }
    strbuf_free(&blob);
}

dc_code ctx_kv_export(ctx *c, const char *sid, strbuf *blob, dc_error *err) {
    if (!id_is_valid(sid)) return dc_fail(err, DC_E_INVALID, "session id must be 1-64 characters of [A-Za-z0-9._-]");
    session_meta meta;
    turn_rec *turns = NULL;
    store_status st = store_session_load(c->s, sid, 0, &meta, &turns);
    if (st == STORE_NOT_FOUND) return dc_fail(err, DC_E_NOT_FOUND, "no session %s", sid);
    if (st != STORE_OK) return store_error(err, st);
    dc_code rc = DC_OK;
    if (meta.mode != MODE_TOKENIZED || !meta.turn || meta.fingerprint != llm_fingerprint(c->m)) {
        rc = dc_fail(err, DC_E_NOT_FOUND, "no KV of session %s here", sid);
    } else {
        /* the stored tokens, whole, as build_tokenized lays them out */
        tokvec t = {0};
        tokvec_append(&t, turns[0].tok[SEG_SYSTEM].v, turns[0].tok[SEG_SYSTEM].n);
        window_append(turns, 0, meta.turn, &t);
        char owner[WARM_OWNER_MAX], why[160];
        warm_kv_owner(sid, owner);
        if (llm_kv_export(c->m, owner, t.v, t.n, blob, why, sizeof why) != 0)
            rc = dc_fail(err, DC_E_NOT_FOUND, "no KV of session %s here (%s)", sid, why);
        tokvec_free(&t);
    }
    store_turns_free(turns, meta.turn);
    return rc;
}

/* Load, build, generate, commit: one run of a turn, under the session lock. */
static dc_code complete_turn(ctx *c, const ctx_request *req, uint32_t turn, ctx_reply *rep, bool *stale_view,
                             dc_error *err) {
    session_meta meta = {0};
    turn_rec *turns = NULL, rec = {0};
    tokvec input = {0};
    bool exists = false, committed = false;
    load_outcome outcome = LOAD_PROCEED;
    dc_code rc = load_current(c, rep->session_id, req, turn, &meta, &turns, &exists, rep, &outcome, err);
    uint32_t n_loaded = exists ? meta.turn : 0;
    if (!rc && outcome == LOAD_REPLAY) {
        rc = replay(c, &turns[turn - 1], rep, err);
        rep->context_tokens = (int)meta.n_tokens;
        goto done;
    }
    /* after the replay check: a retry of a committed turn needs no sequence */
    if (!rc) rc = refuse_if_full(c, err);
    /* a fork goes on from the turns before the client's, whatever came after */
    uint32_t n_turns = outcome == LOAD_FORK ? turn - 1 : n_loaded;
    bool commit = outcome == LOAD_PROCEED || outcome == LOAD_FORK;
    if (!rc && exists && req->system && commit) rc = dc_fail(err, DC_E_INVALID, "system is accepted on turn 1 only");
    bool creating = !rc && !exists && outcome == LOAD_PROCEED;
    const char *counted = req->quota_user ? req->quota_user : rep->user_id; /* for the session limit */
    if (creating && (rc = reserve_session(c, counted, rep->session_id, err))) creating = false;
    size_t whole = 0;
    if (!rc)
        rc = req->mode == MODE_TOKENIZED ? build_tokenized(c, req, turns, n_turns, &rec, &input, &whole, rep, err)
                                         : build_raw(c, req, turns, n_turns, &rec, &input, &whole, rep, err);
    /* The bound on a session's size (--max-session-tokens): every turn
     * reads, and copies into the model input, what the session holds, so an
     * unbounded session is unbounded work per request. Checked before the
     * generation, on the most the turn can add. */
    size_t most = whole + (size_t)req->gen.n_predict + llm_turn_end(c->m)->n;
    if (!rc && commit && c->p.max_session_tokens > 0 && most > (size_t)c->p.max_session_tokens)
        rc = dc_fail(err, DC_E_SESSION_FULL,
                     "session %s would pass the %ld tokens a session may hold here (--max-session-tokens): it holds "
                     "%zu with this message, and n_predict asks for up to %d more; start a new session",
                     rep->session_id, c->p.max_session_tokens, whole, req->gen.n_predict);
    if (!rc && outcome == LOAD_PROCEED && n_turns && req->mode == MODE_TOKENIZED && req->gen.cache_prompt &&
        !req->gen.owner)
        kv_transfer(c, rep->session_id, &meta, &input, input.n - rec.tok[SEG_USER].n, rep);
    if (!rc) rc = generate(c, &input, req, &rec.tok[SEG_REPLY], rep, err);
    /* A client gone by now would never see the reply: commit nothing (a
     * streaming client that disconnected mid-reply must not find the turn
     * stored). One gone after this point retries with its request_id. */
    if (!rc && commit && req->gen.alive && !req->gen.alive(req->gen.alive_ud))
        rc = dc_fail(err, DC_E_CANCELLED, "the client left before the turn was committed");
    if (!rc && commit) {
        rec.turn = turn;
        rec.fingerprint = llm_fingerprint(c->m);
        if (req->mode == MODE_TOKENIZED) {
            rec.kind = TURN_TOKENS;
            const tokvec *end = llm_turn_end(c->m);
            tokvec_append(&rec.tok[SEG_END], end->v, end->n);
        } else {
            rec.kind = TURN_TEXT;
            strbuf_append(&rec.text[SEG_REPLY], rep->content.s ? rep->content.s : "", rep->content.n);
        }
        int64_t now = clock_wall_ms();
        if (!exists) {
            meta = (session_meta){.mode = (uint8_t)req->mode, .created_ms = now, .fingerprint = rec.fingerprint};
            strcpy(meta.user_id, rep->user_id);
            snprintf(meta.model, sizeof meta.model, "%s", llm_model_name(c->m));
        }
        meta.turn = turn;
        meta.last_ms = now;
        /* where this turn's KV is now (KV transfer; codec.h node_url) */
        snprintf(meta.node_url, sizeof meta.node_url, "%s", c->p.advertise_url ? c->p.advertise_url : "");
        snprintf(meta.request_id, sizeof meta.request_id, "%s", req->request_id ? req->request_id : "");
        /* the conversation's length in tokens, as the model would see it whole */
        meta.n_tokens = (uint32_t)(whole + rec.tok[SEG_REPLY].n + llm_turn_end(c->m)->n);
        bool fork = outcome == LOAD_FORK;
        if (!fork) {
            double t0 = clock_mono_ms();
            store_status st = store_turn_commit(c->s, rep->session_id, &meta, &rec);
            rep->store_commit_ms = clock_mono_ms() - t0;
            if (st == STORE_OK) {
                committed = true;
            } else if (st == STORE_STALE) {
                *stale_view = true;
                rc = dc_fail(err, DC_E_STALE, "this node's view of session %s was out of date at commit; retry",
                             rep->session_id);
            } else if (st == STORE_CONFLICT) {
                /* another writer sharing the store got there first */
                rc = settle_conflict(c, req, turn, rep, &fork, err);
            } else {
                rc = store_error(err, st);
            }
        }
        if (fork) {
            double t0 = clock_mono_ms();
            rc = commit_in_fork(c, turns, &meta, &rec, counted, rep, err);
            rep->store_commit_ms += clock_mono_ms() - t0;
        }
    }
    if (creating && !committed) quota_give(c->owners, counted, rep->session_id);
done:
    if (rc) strbuf_clear(&rep->content);
    tokvec_free(&input);
    turn_rec_free(&rec);
    store_turns_free(turns, n_loaded);
    return rc;
}

dc_code ctx_complete(ctx *c, const ctx_request *req, ctx_reply *rep, dc_error *err) {
    memset(rep, 0, sizeof *rep);
    rep->mode = req->mode;
    if (req->messages && (req->mode != MODE_CLIENT_SIDE || req->prompt || req->n_messages == 0))
        return dc_fail(err, DC_E_INVALID, "messages replace the prompt in client-side mode only, and cannot be empty");
    if (!req->prompt && !req->messages) return dc_fail(err, DC_E_INVALID, "prompt is required");
    if (req->gen.n_predict < 1) return dc_fail(err, DC_E_INVALID, "n_predict must be >= 1");
    /* what the request leaves out is decided in util/identity.h */
    const char *user = identity_user(NULL, req->user_id);
    if (!id_is_valid(user)) return dc_fail(err, DC_E_INVALID, "user_id must be 1-64 characters of [A-Za-z0-9._-]");
    strcpy(rep->user_id, user);
    if (req->request_id && !id_is_valid(req->request_id))
        return dc_fail(err, DC_E_INVALID, "request_id must be 1-64 characters of [A-Za-z0-9._-]");
    if (req->mode == MODE_CLIENT_SIDE) return complete_client_side(c, req, rep, err);

    uint32_t turn = req->turn;
    if (req->session_id) {
        if (!id_is_valid(req->session_id))
            return dc_fail(err, DC_E_INVALID, "session_id must be 1-64 characters of [A-Za-z0-9._-]");
        if (!turn) return dc_fail(err, DC_E_INVALID, "turn is required with session_id");
        strcpy(rep->session_id, req->session_id);
    } else {
        dc_code rc = identity_new_session(&turn, rep->session_id, err);
        if (rc) return rc;
    }
    rep->turn = turn;

    /* One retry when the commit finds this node's view of the session out
     * of date (the reply was generated from a context that is not current,
     * so it is thrown away and the turn runs again on a fresh read). Not
     * when the reply is streamed: the client has already seen it, so the
     * turn fails as stale and the client sends it again. */
    keylock_entry *lock = keylock_acquire(c->locks, rep->session_id);
    dc_code rc;
    for (int attempt = 0;; attempt++) {
        bool stale_view = false;
        rc = complete_turn(c, req, turn, rep, &stale_view, err);
        if (!stale_view || attempt == 1 || req->gen.on_token) break;
        log_info("session %s: view out of date at commit; running turn %u again", rep->session_id, turn);
        strbuf_clear(&rep->content);
        rep->tokenize_ms = rep->store_read_ms = rep->store_commit_ms = 0;
        rep->store_read_trips = rep->store_read_core_trips = 0;
    }
    keylock_release(c->locks, lock);
    return rc;
}

/* The session as its owner may see it. These requests carry no turn
 * counter, so they ask for the latest state (STORE_WANT_LATEST): a store
 * reading from a nearby replica checks the authoritative copy. */
static dc_code owned_session(ctx *c, const char *sid, const char *user_id, session_meta *out, turn_rec **turns,
                             dc_error *err) {
    *turns = NULL;
    if (!id_is_valid(sid)) return dc_fail(err, DC_E_INVALID, "session id must be 1-64 characters of [A-Za-z0-9._-]");
    if (!user_id) return dc_fail(err, DC_E_INVALID, "user_id is required (query parameter)");
    store_status st = store_session_load(c->s, sid, STORE_WANT_LATEST, out, turns);
    if (st == STORE_NOT_FOUND) return dc_fail(err, DC_E_NOT_FOUND, "no session %s", sid);
    if (st != STORE_OK) return store_error(err, st);
    if (strcmp(out->user_id, user_id) != 0) {
        store_turns_free(*turns, out->turn);
        *turns = NULL;
        return dc_fail(err, DC_E_FORBIDDEN, "session %s belongs to another user", sid);
    }
    return DC_OK;
}

dc_code ctx_session_get(ctx *c, const char *sid, const char *user_id, session_meta *out, dc_error *err) {
    turn_rec *turns;
    dc_code rc = owned_session(c, sid, user_id, out, &turns, err);
    store_turns_free(turns, rc ? 0 : out->turn);
    return rc;
}

dc_code ctx_session_turns(ctx *c, const char *sid, const char *user_id, session_meta *out, turn_rec **turns,
                          dc_error *err) {
    return owned_session(c, sid, user_id, out, turns, err);
}

/* Deleting checks the owner as any read does. A session whose records do
 * not decode (STORE_CORRUPT: damaged, sealed with another key, or planted by
 * someone who can write to the store) names no owner to check: it is deleted
 * all the same, since it is unreadable to everyone, its owner included, and
 * deleting is the only way to free its id and its records. When its meta
 * still decodes (a turn record is what is damaged), the owner is checked. */
dc_code ctx_session_delete(ctx *c, const char *sid, const char *user_id, dc_error *err) {
    if (!id_is_valid(sid)) return dc_fail(err, DC_E_INVALID, "session id must be 1-64 characters of [A-Za-z0-9._-]");
    if (!user_id) return dc_fail(err, DC_E_INVALID, "user_id is required (query parameter)");
    /* under the session lock, so a delete never interleaves with a commit */
    keylock_entry *lock = keylock_acquire(c->locks, sid);
    session_meta m;
    turn_rec *turns = NULL;
    dc_code rc = DC_OK;
    char why[256] = "";
    store_status st = store_session_load(c->s, sid, STORE_WANT_LATEST, &m, &turns);
    if (st == STORE_OK) {
        store_turns_free(turns, m.turn);
    } else if (st == STORE_CORRUPT) {
        snprintf(why, sizeof why, "%s", store_last_error());
        /* the owner the meta names when it still decodes; else whoever asks */
        if (store_meta_get(c->s, sid, &m) != STORE_OK) snprintf(m.user_id, sizeof m.user_id, "%s", user_id);
    } else if (st == STORE_NOT_FOUND) {
        rc = dc_fail(err, DC_E_NOT_FOUND, "no session %s", sid);
    } else {
        rc = store_error(err, st);
    }
    if (!rc && strcmp(m.user_id, user_id) != 0)
        rc = dc_fail(err, DC_E_FORBIDDEN, "session %s belongs to another user", sid);
    if (!rc) {
        st = store_session_delete(c->s, sid);
        if (st == STORE_NOT_FOUND) rc = dc_fail(err, DC_E_NOT_FOUND, "no session %s", sid);
        else if (st != STORE_OK) rc = store_error(err, st);
        /* counted under whatever name it was created for (ctx_request.quota_user) */
        if (st == STORE_OK || st == STORE_NOT_FOUND) quota_give(c->owners, NULL, sid);
        if (st == STORE_OK || st == STORE_NOT_FOUND) { /* and its KV here is no one's (other nodes: warm.c) */
            char owner[WARM_OWNER_MAX];
            warm_kv_owner(sid, owner);
            llm_forget(c->m, owner);
        }
        if (st == STORE_OK && why[0]) log_warn("session %s deleted, whose records do not decode: %s", sid, why);
    }
    keylock_release(c->locks, lock);
    return rc;
}

dc_code ctx_session_warm(ctx *c, const char *sid, const char *user_id, bool *warming, dc_error *err) {
    session_meta m;
    turn_rec *turns;
    dc_code rc = owned_session(c, sid, user_id, &m, &turns, err);
    if (rc) return rc;
    store_turns_free(turns, m.turn);
    /* only tokenized sessions keep the tokens a warm-up feeds (raw mode
     * renders its text anew every turn) */
    *warming = c->w && m.mode == MODE_TOKENIZED;
    if (*warming) warm_session(c->w, sid, m.turn);
    return DC_OK;
}

dc_code ctx_session_fork(ctx *c, const char *sid, uint32_t upto, const char *user_id, const char *quota_user,
                         const char *new_sid, dc_error *err) {
    if (!id_is_valid(sid) || !id_is_valid(new_sid))
        return dc_fail(err, DC_E_INVALID, "session id must be 1-64 characters of [A-Za-z0-9._-]");
    if (upto < 1) return dc_fail(err, DC_E_INVALID, "a fork copies at least one turn");
    session_meta src;
    turn_rec *turns;
    dc_code rc = owned_session(c, sid, user_id, &src, &turns, err);
    if (!rc && src.turn < upto) {
        /* the turn the client has seen is on its way here: wait for it once */
        store_turns_free(turns, src.turn);
        turns = NULL;
        store_wait(c->s, sid, upto, c->p.sync_timeout_ms);
        rc = owned_session(c, sid, user_id, &src, &turns, err);
        if (!rc && src.turn < upto)
            rc = dc_fail(err, DC_E_STALE, "session %s is at turn %u here, not yet at turn %u", sid, src.turn, upto);
    }
    if (!rc && src.mode != MODE_TOKENIZED)
        rc = dc_fail(err, DC_E_MODE_MISMATCH, "only tokenized sessions can be forked (session %s is %s)", sid,
                     ctx_mode_name(src.mode));
    if (!rc) rc = check_compatible(c, sid, &(ctx_request){.mode = MODE_TOKENIZED}, &src, err);
    const char *counted = quota_user ? quota_user : src.user_id; /* for the session limit */
    bool creating = !rc && !(rc = reserve_session(c, counted, new_sid, err));
    if (!rc) rc = copy_turns(c, new_sid, &src, turns, upto, NULL, err);
    if (rc && creating) quota_give(c->owners, counted, new_sid);
    if (turns) store_turns_free(turns, src.turn);
    return rc;
}
