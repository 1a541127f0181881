/* test_ctx.c - the context manager's turn protocol (ctx.h), over the
 * scripted LLM and the in-memory store of fakes.h: the 409/503/404/403
 * outcomes, the wait for a lagging replica and its timeout, replay by
 * request_id (on the read and on the commit-conflict path), whole oldest
 * turns left out of a full window, forks, client-side mode, delete and
 * re-create. What the model was fed is asserted token for token (the fake
 * tokenizer is one token per byte, fakes.h). The real-model tests
 * (tests/integration) prove the model side; these run in milliseconds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ctx/ctx.h"
#include "fakes.h"

#define FP 42
#define SYNC_MS 1234 /* the replication wait asked of the store (never slept: fakes.h) */

typedef struct {
    fake_core *core;
    fake_store *fa, *fb; /* node a's and node b's handles on one core */
    fake_llm *fl;
    llm *m;
    ctx *a, *b;
} world;

static world W;
static strbuf fed_text; /* fed()'s */

static ctx_params params(void) {
    ctx_params p = ctx_default_params();
    p.stale_retries = 3;
    p.stale_retry_ms = 0;
    p.sync_timeout_ms = SYNC_MS;
    return p;
}

static void open_world(int n_ctx, const ctx_params *p) {
    memset(&W, 0, sizeof W);
    W.core = fake_core_new(3600 * 1000);
    W.fa = fake_store_open(W.core);
    W.fb = fake_store_open(W.core);
    W.m = fake_llm_open(n_ctx, FP, &W.fl);
    assert_non_null(W.m);
    ctx_params pa = *p, pb = *p;
    pa.node_id = "a";
    pb.node_id = "b";
    W.a = ctx_new(&pa, W.m, &W.fa->base);
    W.b = ctx_new(&pb, W.m, &W.fb->base);
}

static int setup(void **state) {
    (void)state;
    ctx_params p = params();
    open_world(4096, &p);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ctx_free(W.a);
    ctx_free(W.b);
    store_close(&W.fa->base);
    store_close(&W.fb->base);
    llm_free(W.m);
    fake_core_free(W.core);
    strbuf_free(&fed_text);
    return 0;
}

static ctx_request req_of(const char *user, const char *sid, uint32_t turn, const char *prompt) {
    ctx_request r = {.mode = MODE_TOKENIZED,
                     .prompt = prompt,
                     .session_id = sid,
                     .user_id = user,
                     .turn = turn,
                     .gen = llm_default_gen_params()};
    r.gen.n_predict = 16;
    return r;
}

/* One turn through node c; the reply's content is kept in rep (freed by the caller). */
static dc_code turn(ctx *c, const ctx_request *r, ctx_reply *rep, dc_error *err) {
    memset(err, 0, sizeof *err);
    return ctx_complete(c, r, rep, err);
}

/* A turn that must succeed; returns the session id in sid (ID_MAX + 1). */
static void ok_turn(ctx *c, const char *user, const char *sid_in, uint32_t n, const char *prompt, char *sid_out) {
    ctx_request r = req_of(user, sid_in, n, prompt);
    ctx_reply rep;
    dc_error err;
    dc_code rc = turn(c, &r, &rep, &err);
    if (rc) fail_msg("turn %u: %d %s", n, rc, err.message);
    if (sid_out) strcpy(sid_out, rep.session_id);
    ctx_reply_free(&rep);
}

/* What the last generation was fed, as text. */
static const char *fed(void) {
    strbuf_clear(&fed_text);
    fake_llm_text(&W.fl->last_input, &fed_text);
    return fed_text.s;
}

/* The session as the core has it: its turn, 0 when absent. */
static uint32_t core_turn(const char *sid) {
    fake_store_sync(W.fb);
    session_meta m;
    return store_meta_get(&W.fb->base, sid, &m) == STORE_OK ? m.turn : 0;
}

/* The text of stored turn `n` of sid's reply, read from the core. */
static void stored_reply(const char *sid, uint32_t n, strbuf *out) {
    fake_store_sync(W.fb);
    session_meta m;
    turn_rec *t;
    assert_int_equal(store_session_load(&W.fb->base, sid, STORE_WANT_LATEST, &m, &t), STORE_OK);
    assert_true(n <= m.turn);
    fake_llm_text(&t[n - 1].tok[SEG_REPLY], out);
    store_turns_free(t, m.turn);
}

/* ---- the basic protocol ---- */

static void turns_continue_the_stored_context(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    W.fl->replies[0] = "hi there";
    ok_turn(W.a, "ann", NULL, 1, "hello", sid);
    assert_int_equal(strlen(sid), 32);
    assert_string_equal(fed(), "<s>[U]hello[/][A]");
    ctx_request r = req_of("ann", sid, 2, "again");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    /* turn 2 is fed turn 1 whole (the reply token for token, then the end markup) and its own message */
    assert_string_equal(fed(), "<s>[U]hello[/][A]hi there[/][U]again[/][A]");
    assert_int_equal(rep.context_tokens, (int)W.fl->last_input.n);
    assert_string_equal(rep.content.s, "ok");
    assert_int_equal(rep.turn, 2);
    assert_false(rep.replayed);
    ctx_reply_free(&rep);
    assert_int_equal(core_turn(sid), 2);
}

static void a_turn_taken_is_409_with_the_expected_turn(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    ok_turn(W.a, "ann", sid, 2, "two", NULL);
    int gens = W.fl->generations;
    for (uint32_t t = 1; t <= 2; t++) {
        ctx_request r = req_of("ann", sid, t, "again");
        ctx_reply rep;
        dc_error err;
        assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_CONFLICT);
        assert_int_equal(err.expected_turn, 3);
        ctx_reply_free(&rep);
    }
    assert_int_equal(W.fl->generations, gens); /* refused before any generation */
    assert_int_equal(core_turn(sid), 2);
}

static void another_users_session_is_403(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "mine", sid);
    int gens = W.fl->generations;
    ctx_request r = req_of("mallory", sid, 2, "theirs");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_FORBIDDEN);
    ctx_reply_free(&rep);
    session_meta m;
    assert_int_equal(ctx_session_get(W.a, sid, "mallory", &m, &err), DC_E_FORBIDDEN);
    assert_int_equal(ctx_session_delete(W.a, sid, "mallory", &err), DC_E_FORBIDDEN);
    assert_int_equal(ctx_session_fork(W.a, sid, 1, "mallory", NULL, "stolen", &err), DC_E_FORBIDDEN);
    assert_int_equal(W.fl->generations, gens);
    assert_int_equal(ctx_session_get(W.a, sid, "ann", &m, &err), DC_OK);
    assert_int_equal(m.turn, 1);
}

static void an_unknown_session_is_404_after_the_wait(void **state) {
    (void)state;
    ctx_request r = req_of("ann", "nosuchsession", 4, "x");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_NOT_FOUND);
    ctx_reply_free(&rep);
    /* it may have been on its way from another node: waited for once */
    assert_int_equal(W.fa->waits, 1);
    assert_int_equal(W.fa->wait_timeout_ms, SYNC_MS);
    assert_int_equal(W.fl->generations, 0);
    /* a later turn without the session's id is the client's mistake */
    r = req_of("ann", NULL, 2, "x");
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_INVALID);
    ctx_reply_free(&rep);
}

/* ---- a replica behind the client ---- */

static void ahead_of_the_replica_is_503_after_the_wait_and_the_rereads(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    ok_turn(W.a, "ann", sid, 2, "two", NULL);
    int loads = W.fa->loads;
    ctx_request r = req_of("ann", sid, 5, "five");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_STALE);
    /* one wait, with the configured timeout, then stale_retries re-reads */
    assert_int_equal(W.fa->waits, 1);
    assert_int_equal(W.fa->wait_timeout_ms, SYNC_MS);
    assert_int_equal(rep.retries, 3);
    assert_int_equal(W.fa->loads - loads, 1 + 1 + 3);
    assert_non_null(strstr(err.message, "3 re-reads"));
    ctx_reply_free(&rep);
    assert_int_equal(core_turn(sid), 2);
}

static void the_wait_sees_the_turn_arrive(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fb);
    W.fl->replies[1] = "from b";
    ok_turn(W.b, "ann", sid, 2, "two", NULL); /* through node b: a's replica has not seen it */
    W.fa->wait_sees = true;
    ctx_request r = req_of("ann", sid, 3, "three");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_int_equal(W.fa->waits, 1);
    assert_int_equal(rep.retries, 0);
    assert_string_equal(fed(), "<s>[U]one[/][A]ok[/][U]two[/][A]from b[/][U]three[/][A]");
    ctx_reply_free(&rep);
    assert_int_equal(core_turn(sid), 3);
}

static void rereads_find_a_turn_the_wait_missed(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fb);
    ok_turn(W.b, "ann", sid, 2, "two", NULL);
    W.fa->sync_after_loads = 3; /* the replica lags the notification: the second re-read sees the turn */
    ctx_request r = req_of("ann", sid, 3, "three");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_int_equal(W.fa->waits, 1);
    assert_int_equal(rep.retries, 1);
    ctx_reply_free(&rep);
    assert_int_equal(core_turn(sid), 3);
}

static void available_consistency_answers_from_what_is_here_and_commits_nothing(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fb);
    ok_turn(W.b, "ann", sid, 2, "two", NULL);
    ctx_request r = req_of("ann", sid, 3, "three");
    r.consistency = CONSISTENCY_AVAILABLE;
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_true(rep.stale);
    assert_string_equal(fed(), "<s>[U]one[/][A]ok[/][U]three[/][A]"); /* turn 2 is not here */
    ctx_reply_free(&rep);
    assert_int_equal(core_turn(sid), 2);
}

static void a_leaf_asks_the_core_when_its_mirror_is_behind(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fb);
    ok_turn(W.b, "ann", sid, 2, "two", NULL);
    W.fa->leaf = true;
    ctx_request r = req_of("ann", sid, 3, "three");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_int_equal(W.fa->waits, 0);
    assert_int_equal(rep.store_read_core_trips, 1); /* one round trip to the core, none per missing turn */
    ctx_reply_free(&rep);
    /* the core unreachable: a session this node never saw is 503, not 404 */
    W.fa->core_down = true;
    ok_turn(W.b, "bob", NULL, 1, "one", sid);
    r = req_of("bob", sid, 2, "two");
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_UNAVAILABLE);
    ctx_reply_free(&rep);
}

/* ---- replay by request_id ---- */

static void a_retry_gets_the_committed_reply(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    W.fl->replies[1] = "the answer";
    ctx_request r = req_of("ann", sid, 2, "two");
    r.request_id = "req-2";
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    int gens = W.fl->generations;
    W.fl->admit = LLM_BUSY; /* a retry needs no sequence */
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_true(rep.replayed);
    assert_string_equal(rep.content.s, "the answer");
    assert_int_equal(W.fl->generations, gens);
    ctx_reply_free(&rep);
    W.fl->admit = LLM_OK;
    /* another request for the same turn is still a conflict */
    r.request_id = "req-x";
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_CONFLICT);
    assert_int_equal(err.expected_turn, 3);
    ctx_reply_free(&rep);
    /* a first turn, retried through a node whose mirror has not seen it */
    r = req_of("ann", "first-turn", 1, "hello");
    r.request_id = "req-1";
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    W.fb->leaf = true;
    assert_int_equal(turn(W.b, &r, &rep, &err), DC_OK);
    assert_true(rep.replayed);
    ctx_reply_free(&rep);
    assert_int_equal(core_turn("first-turn"), 1);
}

static void a_retry_found_at_the_commit_gets_the_committed_reply(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.b, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fa);
    W.fl->replies[1] = "committed";
    ctx_request r = req_of("ann", sid, 2, "two");
    r.request_id = "req-2";
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK); /* its reply is lost; retried on b */
    ctx_reply_free(&rep);
    /* b's mirror ends at turn 1, just what a new turn 2 continues: the retry
     * generates, and its commit finds the turn taken by its earlier try */
    W.fb->leaf = true;
    int gens = W.fl->generations;
    assert_int_equal(turn(W.b, &r, &rep, &err), DC_OK);
    assert_int_equal(W.fl->generations, gens + 1);
    assert_true(rep.replayed);
    assert_string_equal(rep.content.s, "committed");
    ctx_reply_free(&rep);
    strbuf b = {0};
    stored_reply(sid, 2, &b);
    assert_string_equal(b.s, "committed");
    strbuf_free(&b);
    assert_int_equal(core_turn(sid), 2);
}

static void tok_sink(void *ud, int32_t tok) {
    (void)tok;
    ++*(int *)ud;
}

static void a_streamed_retry_found_at_the_commit_is_409(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.b, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fa);
    ctx_request r = req_of("ann", sid, 2, "two");
    r.request_id = "req-2";
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    W.fb->leaf = true;
    int streamed = 0;
    r.gen.on_token = tok_sink; /* this try's own reply is already out: the client asks again */
    r.gen.on_token_ud = &streamed;
    assert_int_equal(turn(W.b, &r, &rep, &err), DC_E_CONFLICT);
    assert_int_equal(err.expected_turn, 3);
    assert_true(streamed > 0);
    ctx_reply_free(&rep);
}

/* ---- racing writers ---- */

typedef struct {
    ctx *c;
    const char *sid, *user;
    uint32_t turn;
    dc_code rc;
} racer;

static void race(void *ud) {
    racer *x = ud;
    ctx_request r = req_of(x->user, x->sid, x->turn, "the other one");
    ctx_reply rep;
    dc_error err;
    x->rc = turn(x->c, &r, &rep, &err);
    ctx_reply_free(&rep);
}

static void a_turn_taken_while_generating_is_409(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fb);
    racer x = {W.b, sid, "ann", 2, -1};
    W.fl->during = race;
    W.fl->during_ud = &x;
    W.fl->replies[1] = "loser";
    W.fl->replies[2] = "winner";
    ctx_request r = req_of("ann", sid, 2, "two");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_CONFLICT);
    assert_int_equal(x.rc, DC_OK);
    assert_int_equal(err.expected_turn, 3);
    ctx_reply_free(&rep);
    strbuf b = {0};
    stored_reply(sid, 2, &b);
    assert_string_equal(b.s, "winner");
    strbuf_free(&b);
}

static void a_continuation_whose_turn_is_taken_goes_on_in_a_fork(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    W.fl->replies[0] = "r1";
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    fake_store_sync(W.fb);
    racer x = {W.b, sid, "ann", 2, -1};
    W.fl->during = race;
    W.fl->during_ud = &x;
    W.fl->replies[1] = "mine";
    W.fl->replies[2] = "theirs";
    ctx_request r = req_of("ann", sid, 2, "two");
    r.fork_on_conflict = true;
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_int_equal(x.rc, DC_OK);
    assert_string_not_equal(rep.session_id, sid);
    assert_string_equal(rep.content.s, "mine");
    char fork[ID_MAX + 1];
    strcpy(fork, rep.session_id);
    ctx_reply_free(&rep);
    /* the original keeps the winner's turn 2; the fork, turn 1 copied and this turn */
    strbuf b = {0};
    stored_reply(sid, 2, &b);
    assert_string_equal(b.s, "theirs");
    strbuf_clear(&b);
    assert_int_equal(core_turn(fork), 2);
    stored_reply(fork, 1, &b);
    assert_string_equal(b.s, "r1");
    strbuf_clear(&b);
    stored_reply(fork, 2, &b);
    assert_string_equal(b.s, "mine");
    strbuf_free(&b);
    /* the turn found taken on the read: generated from the turns before it, in a fork */
    fake_store_sync(W.fa);
    r = req_of("ann", sid, 2, "again");
    r.fork_on_conflict = true;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_string_not_equal(rep.session_id, sid);
    assert_string_equal(fed(), "<s>[U]one[/][A]r1[/][U]again[/][A]");
    ctx_reply_free(&rep);
}

static void a_fork_copies_the_turns_up_to_the_one_asked(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    ok_turn(W.a, "ann", sid, 2, "two", NULL);
    ok_turn(W.a, "ann", sid, 3, "three", NULL);
    dc_error err;
    assert_int_equal(ctx_session_fork(W.a, sid, 2, "ann", NULL, "copy", &err), DC_OK);
    assert_int_equal(core_turn("copy"), 2);
    ok_turn(W.a, "ann", "copy", 3, "branch", NULL);
    assert_string_equal(fed(), "<s>[U]one[/][A]ok[/][U]two[/][A]ok[/][U]branch[/][A]");
    assert_int_equal(core_turn(sid), 3); /* the original as it was */
    /* an id taken, a turn not here yet, a raw session */
    assert_int_equal(ctx_session_fork(W.a, sid, 1, "ann", NULL, "copy", &err), DC_E_CONFLICT);
    assert_int_equal(ctx_session_fork(W.a, sid, 7, "ann", NULL, "copy2", &err), DC_E_STALE);
    assert_int_equal(W.fa->wait_timeout_ms, SYNC_MS);
    ctx_request r = req_of("ann", "rawsess", 1, "raw");
    r.mode = MODE_RAW;
    ctx_reply rep;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    assert_int_equal(ctx_session_fork(W.a, "rawsess", 1, "ann", NULL, "copy3", &err), DC_E_MODE_MISMATCH);
}

/* ---- the context window ---- */

/* System segment: BOS "[S]sys[/]" = 6 tokens. A turn "[U]mN[/][A]" + a
 * 6-token reply + "[/]" = 12. With n_predict 8 in a 50-token window, the
 * fixed part is 6 + 5 + 8 = 19, so 31 tokens of history fit: two turns. */
static void a_full_window_leaves_out_whole_oldest_turns(void **state) {
    (void)state;
    ctx_params p = params();
    teardown(state);
    open_world(50, &p);
    for (int i = 0; i < 8; i++) W.fl->replies[i] = "rrrrrr";
    char sid[ID_MAX + 1], msg[8];
    ctx_request r = req_of("ann", NULL, 1, "m1");
    r.system = "sys";
    r.gen.n_predict = 8;
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    strcpy(sid, rep.session_id);
    ctx_reply_free(&rep);
    int truncated[6] = {0};
    for (uint32_t t = 2; t <= 5; t++) {
        snprintf(msg, sizeof msg, "m%u", t);
        r = req_of("ann", sid, t, msg);
        r.gen.n_predict = 8;
        assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
        assert_true(rep.context_tokens + 8 <= 50);
        truncated[t] = rep.truncated_turns;
        ctx_reply_free(&rep);
    }
    assert_int_equal(truncated[3], 0);
    assert_int_equal(truncated[4], 1);
    assert_int_equal(truncated[5], 2);
    /* the system segment stays; turns go whole, oldest first */
    assert_string_equal(fed(), "<s>[S]sys[/][U]m3[/][A]rrrrrr[/][U]m4[/][A]rrrrrr[/][U]m5[/][A]");
    assert_int_equal(core_turn(sid), 5); /* the store keeps every turn */
    /* raw mode drops whole turns alike */
    r = req_of("ann", "raw", 1, "m1");
    r.mode = MODE_RAW;
    r.system = "sys";
    r.gen.n_predict = 8;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    for (uint32_t t = 2; t <= 4; t++) {
        snprintf(msg, sizeof msg, "m%u", t);
        r = req_of("ann", "raw", t, msg);
        r.mode = MODE_RAW;
        r.gen.n_predict = 8;
        assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
        ctx_reply_free(&rep);
    }
    assert_string_equal(fed(), "<s>[S]sys[/][U]m2[/][A]rrrrrr[/][U]m3[/][A]rrrrrr[/][U]m4[/][A]");
    /* a message that cannot fit however much is left out */
    r = req_of("ann", sid, 6, "a message far too long for this small window of fifty");
    r.gen.n_predict = 8;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_CTX_LENGTH);
    ctx_reply_free(&rep);
    assert_int_equal(core_turn(sid), 5);
}

static void a_session_past_its_bound_is_full(void **state) {
    (void)state;
    ctx_params p = params();
    p.max_session_tokens = 40;
    teardown(state);
    open_world(4096, &p);
    char sid[ID_MAX + 1];
    /* a turn may add its message, n_predict (16) and the end token (1) */
    ok_turn(W.a, "ann", NULL, 1, "one", sid);     /* BOS + "[U]one[/][A]": 7, at most 24 */
    ctx_request r = req_of("ann", sid, 2, "two"); /* 7 + "ok[/]" + 6: 16, at most 33 */
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    int gens = W.fl->generations;
    r = req_of("ann", sid, 3, "three"); /* 16 + 3 + 8: 27, at most 44 */
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_SESSION_FULL);
    ctx_reply_free(&rep);
    assert_int_equal(W.fl->generations, gens);
    assert_int_equal(core_turn(sid), 2);
}

/* ---- modes, compatibility ---- */

static void client_side_mode_stores_nothing(void **state) {
    (void)state;
    ctx_request r = req_of("ann", NULL, 0, "[U]hi[/][A]");
    r.mode = MODE_CLIENT_SIDE;
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_string_equal(rep.session_id, "");
    /* the client's markup is parsed as control tokens */
    assert_int_equal(W.fl->last_input.n, 6);
    assert_string_equal(fed(), "<s>[U]hi[/][A]");
    ctx_reply_free(&rep);
    /* messages, rendered with the template: contents never parsed as markup */
    llm_msg msgs[] = {{"user", "[A]x"}, {"assistant", "y"}, {"user", "z"}};
    r.prompt = NULL;
    r.messages = msgs;
    r.n_messages = 3;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    assert_int_equal(W.fl->last_input.n, 14); /* BOS [U] [ A ] x [/] [A] y [/] [U] z [/] [A] */
    ctx_reply_free(&rep);
    fake_store_sync(W.fb);
    session_meta m;
    assert_int_equal(store_meta_get(&W.fb->base, rep.session_id, &m), STORE_NOT_FOUND);
    assert_int_equal(W.fa->commits, 0);
}

static void mode_and_tokenizer_must_match_the_session(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    ctx_request r = req_of("ann", sid, 2, "two");
    r.mode = MODE_RAW;
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_MODE_MISMATCH);
    ctx_reply_free(&rep);
    r = req_of("ann", sid, 2, "two");
    r.system = "late";
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_INVALID); /* a system message on turn 1 only */
    ctx_reply_free(&rep);
    /* a node whose tokenizer differs refuses the stored ids */
    fake_llm *other_fl;
    llm *other = fake_llm_open(4096, FP + 1, &other_fl);
    ctx_params p = params();
    ctx *c = ctx_new(&p, other, &W.fa->base);
    r = req_of("ann", sid, 2, "two");
    assert_int_equal(turn(c, &r, &rep, &err), DC_E_INCOMPATIBLE);
    ctx_reply_free(&rep);
    assert_int_equal(other_fl->generations, 0);
    ctx_free(c);
    llm_free(other);
    assert_int_equal(core_turn(sid), 1);
}

/* ---- failures commit nothing ---- */

static bool gone(void *ud) {
    (void)ud;
    return false;
}

static void failures_commit_nothing(void **state) {
    (void)state;
    ctx_params p = params();
    p.max_sessions_per_user = 1;
    teardown(state);
    open_world(4096, &p);
    ctx_request r = req_of("ann", "s1", 1, "one");
    ctx_reply rep;
    dc_error err;
    W.fl->admit = LLM_BUSY;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_BUSY);
    assert_true(err.retry_after_s >= 1);
    ctx_reply_free(&rep);
    W.fl->admit = LLM_OK;
    W.fl->fail = LLM_BUSY;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_BUSY);
    ctx_reply_free(&rep);
    W.fl->fail = LLM_FAIL;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_INTERNAL);
    ctx_reply_free(&rep);
    W.fl->fail = LLM_CANCELLED; /* the client left during the generation */
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_CANCELLED);
    ctx_reply_free(&rep);
    r.gen.alive = gone; /* ... or once it was over, before the commit */
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_CANCELLED);
    ctx_reply_free(&rep);
    assert_int_equal(W.fa->commits, 0);
    assert_int_equal(core_turn("s1"), 0);
    /* the limit counts the sessions that exist */
    r.gen.alive = NULL;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    r = req_of("ann", "s2", 1, "two");
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_QUOTA);
    ctx_reply_free(&rep);
    assert_int_equal(ctx_session_delete(W.a, "s1", "ann", &err), DC_OK);
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
}

/* The per-user session counts ask the store whether the sessions they
 * hold still exist: in the node's periodic upkeep (ctx_sweep), never while
 * a request creates a session. */
static void the_session_counts_are_swept_by_upkeep_not_by_requests(void **state) {
    (void)state;
    char user[16];
    enum { N = 1100, GONE = 600 };
    static char sids[N][ID_MAX + 1];
    for (int i = 0; i < N; i++) {
        snprintf(user, sizeof user, "u%d", i % 10);
        ok_turn(W.a, user, NULL, 1, "hi", sids[i]);
    }
    assert_int_equal(W.fa->meta_gets, 0);
    fake_store_sync(W.fb);
    dc_error err;
    for (int i = 0; i < GONE; i++) { /* deleted through another node: a does not know */
        snprintf(user, sizeof user, "u%d", i % 10);
        assert_int_equal(ctx_session_delete(W.b, sids[i], user, &err), DC_OK);
    }
    fake_store_sync(W.fa);
    assert_int_equal(ctx_sweep(W.a), GONE);
    assert_int_equal(W.fa->meta_gets, N);
    assert_int_equal(ctx_sweep(W.a), 0); /* nothing new since */
    assert_int_equal(W.fa->meta_gets, N);
}

static void age(void *ud) { fake_core_age(W.core, ud, 2 * 3600 * 1000); }

static void a_session_that_expires_while_generating_is_404(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    ok_turn(W.a, "ann", NULL, 1, "one", sid);
    W.fl->during = age;
    W.fl->during_ud = sid;
    ctx_request r = req_of("ann", sid, 2, "two");
    ctx_reply rep;
    dc_error err;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_NOT_FOUND);
    assert_non_null(strstr(err.message, "while turn 2 was generated"));
    ctx_reply_free(&rep);
}

/* ---- delete and re-create ---- */

static void a_deleted_session_is_gone_and_its_id_starts_over(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    W.fl->replies[0] = "old";
    ok_turn(W.a, "ann", NULL, 1, "old life", sid);
    dc_error err;
    assert_int_equal(ctx_session_delete(W.a, sid, "ann", &err), DC_OK);
    session_meta m;
    assert_int_equal(ctx_session_get(W.a, sid, "ann", &m, &err), DC_E_NOT_FOUND);
    assert_int_equal(ctx_session_delete(W.a, sid, "ann", &err), DC_E_NOT_FOUND);
    ctx_request r = req_of("ann", sid, 2, "two");
    ctx_reply rep;
    assert_int_equal(turn(W.a, &r, &rep, &err), DC_E_NOT_FOUND);
    ctx_reply_free(&rep);
    ok_turn(W.a, "ann", sid, 1, "new life", NULL);
    ok_turn(W.a, "ann", sid, 2, "two", NULL);
    assert_null(strstr(fed(), "old"));
}

static void a_view_of_an_earlier_life_is_read_again(void **state) {
    (void)state;
    char sid[ID_MAX + 1];
    W.fl->replies[0] = "old";
    ok_turn(W.a, "ann", NULL, 1, "old life", sid);
    fake_store_sync(W.fb); /* b has seen the old life ... */
    dc_error err;
    assert_int_equal(ctx_session_delete(W.a, sid, "ann", &err), DC_OK);
    W.fl->replies[1] = "new";
    ok_turn(W.a, "ann", sid, 1, "new life", NULL); /* ... not its end nor the new one */
    /* b's turn 2 is generated from the old life; its commit is refused as a
     * stale view, and the turn runs again on a fresh read */
    W.fb->sync_after_loads = 2;
    ctx_request r = req_of("ann", sid, 2, "two");
    ctx_reply rep;
    assert_int_equal(turn(W.b, &r, &rep, &err), DC_OK);
    ctx_reply_free(&rep);
    assert_string_equal(fed(), "<s>[U]new life[/][A]new[/][U]two[/][A]");
    strbuf b = {0};
    stored_reply(sid, 1, &b);
    assert_string_equal(b.s, "new");
    strbuf_free(&b);
    assert_int_equal(core_turn(sid), 2);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(turns_continue_the_stored_context),
        T(a_turn_taken_is_409_with_the_expected_turn),
        T(another_users_session_is_403),
        T(an_unknown_session_is_404_after_the_wait),
        T(ahead_of_the_replica_is_503_after_the_wait_and_the_rereads),
        T(the_wait_sees_the_turn_arrive),
        T(rereads_find_a_turn_the_wait_missed),
        T(available_consistency_answers_from_what_is_here_and_commits_nothing),
        T(a_leaf_asks_the_core_when_its_mirror_is_behind),
        T(a_retry_gets_the_committed_reply),
        T(a_retry_found_at_the_commit_gets_the_committed_reply),
        T(a_streamed_retry_found_at_the_commit_is_409),
        T(a_turn_taken_while_generating_is_409),
        T(a_continuation_whose_turn_is_taken_goes_on_in_a_fork),
        T(a_fork_copies_the_turns_up_to_the_one_asked),
        T(a_full_window_leaves_out_whole_oldest_turns),
        T(a_session_past_its_bound_is_full),
        T(client_side_mode_stores_nothing),
        T(mode_and_tokenizer_must_match_the_session),
        T(failures_commit_nothing),
        T(a_session_that_expires_while_generating_is_404),
        T(the_session_counts_are_swept_by_upkeep_not_by_requests),
        T(a_deleted_session_is_gone_and_its_id_starts_over),
        T(a_view_of_an_earlier_life_is_read_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
