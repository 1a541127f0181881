/* test_store.c - the embedded store: persistence across reopen, the
 * compare-and-set commit, TTL, delete, and refusal of damaged records. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <lmdb.h>

#include "store/store.h"
#include "util/clock.h"

static char dir[64];

static int make_dir(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/dc-test-store-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static store *open_store(int64_t ttl_ms) {
    store_params p = store_default_params();
    p.data_dir = dir;
    p.ttl_ms = ttl_ms;
    p.map_size = 16 << 20;
    char err[256];
    store *s = store_open(&p, err, sizeof err);
    if (!s) fail_msg("store_open: %s", err);
    return s;
}

static session_meta meta_at(uint32_t turn, int64_t last_ms) {
    session_meta m = {.mode = MODE_TOKENIZED, .turn = turn, .created_ms = last_ms, .last_ms = last_ms,
                      .fingerprint = 77, .n_tokens = turn * 3};
    strcpy(m.user_id, "alice");
    strcpy(m.model, "m");
    return m;
}

static store_status commit(store *s, const char *sid, uint32_t turn, int64_t last_ms) {
    turn_rec t = {0};
    t.kind = TURN_TOKENS;
    t.turn = turn;
    t.fingerprint = 77;
    int32_t toks[3] = {(int32_t)turn, 10, 20};
    tokvec_append(&t.tok[SEG_USER], toks, 3);
    session_meta m = meta_at(turn, last_ms);
    store_status st = store_turn_commit(s, sid, &m, &t);
    turn_rec_free(&t);
    return st;
}

static void persists_across_reopen(void **state) {
    (void)state;
    store *s = open_store(0);
    int64_t now = clock_wall_ms();
    for (uint32_t t = 1; t <= 3; t++) assert_int_equal(commit(s, "sess-a", t, now), STORE_OK);
    store_close(s);
    s = open_store(0);
    session_meta m;
    turn_rec *turns;
    assert_int_equal(store_session_load(s, "sess-a", 0, &m, &turns), STORE_OK);
    assert_int_equal(m.turn, 3);
    assert_string_equal(m.user_id, "alice");
    for (uint32_t t = 0; t < 3; t++) {
        assert_int_equal(turns[t].turn, t + 1);
        assert_int_equal(turns[t].tok[SEG_USER].v[0], (int32_t)t + 1);
    }
    store_turns_free(turns, m.turn);
    store_close(s);
}

static void commit_is_compare_and_set(void **state) {
    (void)state;
    store *s = open_store(0);
    int64_t now = clock_wall_ms();
    assert_int_equal(commit(s, "sess-b", 2, now), STORE_CONFLICT); /* no turn 1 yet */
    assert_int_equal(commit(s, "sess-b", 1, now), STORE_OK);
    assert_int_equal(commit(s, "sess-b", 1, now), STORE_CONFLICT); /* the same turn twice */
    assert_int_equal(commit(s, "sess-b", 3, now), STORE_CONFLICT); /* a gap */
    assert_int_equal(commit(s, "sess-b", 2, now), STORE_OK);
    session_meta m;
    assert_int_equal(store_meta_get(s, "sess-b", &m), STORE_OK);
    assert_int_equal(m.turn, 2);
    store_close(s);
}

static void ttl_counts_from_last_activity(void **state) {
    (void)state;
    store *s = open_store(60 * 1000);
    int64_t now = clock_wall_ms();
    assert_int_equal(commit(s, "old", 1, now - 120 * 1000), STORE_OK);
    assert_int_equal(commit(s, "fresh", 1, now - 50 * 1000), STORE_OK);
    assert_int_equal(commit(s, "fresh", 2, now), STORE_OK); /* activity renews it */
    session_meta m;
    assert_int_equal(store_meta_get(s, "old", &m), STORE_NOT_FOUND);
    assert_int_equal(store_meta_get(s, "fresh", &m), STORE_OK);
    /* 20 s on, "fresh" would be gone had turn 2 not renewed it */
    assert_int_equal(store_expire(s, now + 20 * 1000), 1);
    assert_int_equal(store_expire(s, now + 20 * 1000), 0);
    assert_int_equal(store_meta_get(s, "fresh", &m), STORE_OK);
    /* an expired id starts over at turn 1; its old turns do not linger */
    assert_int_equal(commit(s, "fresh2", 1, now - 120 * 1000), STORE_OK);
    assert_int_equal(commit(s, "fresh2", 2, now), STORE_CONFLICT);
    assert_int_equal(commit(s, "fresh2", 1, now), STORE_OK);
    turn_rec *turns;
    assert_int_equal(store_session_load(s, "fresh2", 0, &m, &turns), STORE_OK);
    assert_int_equal(m.turn, 1);
    store_turns_free(turns, m.turn);
    assert_int_equal(store_expire(s, now + 61 * 1000), 2);
    store_close(s);
}

static void delete_removes_everything(void **state) {
    (void)state;
    store *s = open_store(0);
    int64_t now = clock_wall_ms();
    assert_int_equal(commit(s, "gone", 1, now), STORE_OK);
    assert_int_equal(commit(s, "gone", 2, now), STORE_OK);
    assert_int_equal(store_session_delete(s, "gone"), STORE_OK);
    assert_int_equal(store_session_delete(s, "gone"), STORE_NOT_FOUND);
    session_meta m;
    assert_int_equal(store_meta_get(s, "gone", &m), STORE_NOT_FOUND);
    assert_int_equal(commit(s, "gone", 1, now), STORE_OK); /* no leftover turn 2 blocks a new start */
    turn_rec *turns;
    assert_int_equal(store_session_load(s, "gone", 0, &m, &turns), STORE_OK);
    assert_int_equal(m.turn, 1);
    store_turns_free(turns, m.turn);
    store_close(s);
}

static void damaged_record_is_refused(void **state) {
    (void)state;
    store *s = open_store(0);
    assert_int_equal(commit(s, "dmg", 1, clock_wall_ms()), STORE_OK);
    store_close(s);
    /* flip a byte of the turn record behind the store's back */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "turns", 0, &dbi), 0);
    char key[] = {'d', 'm', 'g', 0, 0, 0, 0, 1};
    MDB_val k = {sizeof key, key}, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size / 2] ^= 0x10;
    MDB_val nv = {v.mv_size, copy};
    assert_int_equal(mdb_put(txn, dbi, &k, &nv, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(copy);

    s = open_store(0);
    session_meta m;
    turn_rec *turns;
    assert_int_equal(store_session_load(s, "dmg", 0, &m, &turns), STORE_CORRUPT);
    assert_non_null(strstr(store_last_error(), "checksum"));
    store_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(persists_across_reopen, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(commit_is_compare_and_set, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(ttl_counts_from_last_activity, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(delete_removes_everything, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(damaged_record_is_refused, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
