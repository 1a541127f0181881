/* test_store.c - the embedded store: persistence across reopen, the
 * compare-and-set commit, TTL, delete, refusal of damaged records; and
 * sealed records (seal.h): ciphertext on disk, tampering refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sys/stat.h>
#include <lmdb.h>

#include "store/seal.h"
#include "store/store.h"
#include "util/clock.h"

static char dir[64];
static seal *sealer; /* what open_store seals with; NULL: plain records */

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
    p.seal = sealer;
    char err[256];
    store *s = store_open(&p, err, sizeof err);
    if (!s) fail_msg("store_open: %s", err);
    return s;
}

static session_meta meta_at(uint32_t turn, int64_t last_ms) {
    /* one life per session id: a commit continues the life it read (store.h) */
    session_meta m = {.mode = MODE_TOKENIZED,
                      .turn = turn,
                      .created_ms = 1700000000000,
                      .last_ms = last_ms,
                      .fingerprint = 77,
                      .n_tokens = turn * 3};
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

/* Behind the store's back: turn 1 of session `from` (the store closed),
 * with one byte flipped when flip >= 0, written as turn 1 of session `to`. */
static void raw_turn_copy(const char *from, const char *to, long flip) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "turns", 0, &dbi), 0);
    char kf[40], kt[40];
    size_t nf = strlen(from) + 1, nt = strlen(to) + 1;
    memcpy(kf, from, nf);
    memcpy(kt, to, nt);
    memcpy(kf + nf, "\0\0\0\1", 4);
    memcpy(kt + nt, "\0\0\0\1", 4);
    MDB_val k = {nf + 4, kf}, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    if (flip >= 0) copy[(size_t)flip % v.mv_size] ^= 0x10;
    MDB_val tk = {nt + 4, kt}, nv = {v.mv_size, copy};
    assert_int_equal(mdb_put(txn, dbi, &tk, &nv, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(copy);
}

static void damaged_record_is_refused(void **state) {
    (void)state;
    store *s = open_store(0);
    assert_int_equal(commit(s, "dmg", 1, clock_wall_ms()), STORE_OK);
    store_close(s);
    raw_turn_copy("dmg", "dmg", 13); /* inside the token segments */

    s = open_store(0);
    session_meta m;
    turn_rec *turns;
    assert_int_equal(store_session_load(s, "dmg", 0, &m, &turns), STORE_CORRUPT);
    assert_non_null(strstr(store_last_error(), "checksum"));
    store_close(s);
}

static const uint8_t key_a[SEAL_KEY_BYTES] = {1, 2, 3}, key_b[SEAL_KEY_BYTES] = {3, 2, 1};

static void seal_opens_only_what_it_sealed(void **state) {
    (void)state;
    seal *a = seal_new(key_a), *b = seal_new(key_b);
    strbuf rec = {0}, out = {0};
    strbuf_puts(&rec, "the context of turn 1");
    size_t plain_n = rec.n;
    seal_encrypt(a, "s1/turn/1", &rec);
    assert_int_equal(rec.n, plain_n + SEAL_OVERHEAD);
    assert_null(memmem(rec.s, rec.n, "context", 7)); /* ciphertext */
    assert_true(seal_decrypt(a, "s1/turn/1", rec.s, rec.n, &out));
    assert_int_equal(out.n, plain_n);
    assert_memory_equal(out.s, "the context of turn 1", plain_n);
    /* every byte is covered: header, nonce, ciphertext, tag */
    for (size_t i = 0; i < rec.n; i++) {
        rec.s[i] ^= 0x01;
        assert_false(seal_decrypt(a, "s1/turn/1", rec.s, rec.n, &out));
        rec.s[i] ^= 0x01;
    }
    assert_false(seal_decrypt(a, "s1/turn/2", rec.s, rec.n, &out)); /* moved to another place */
    assert_false(seal_decrypt(b, "s1/turn/1", rec.s, rec.n, &out)); /* another deployment's key */
    assert_false(seal_decrypt(a, "s1/turn/1", rec.s, rec.n - 1, &out)); /* cut short */
    assert_false(seal_decrypt(a, "s1/turn/1", "DX", 2, &out));
    /* the same plaintext twice: fresh nonces, different ciphertexts */
    strbuf again = {0};
    strbuf_puts(&again, "the context of turn 1");
    seal_encrypt(a, "s1/turn/1", &again);
    assert_memory_not_equal(again.s, rec.s, rec.n);
    strbuf_free(&again);
    strbuf_free(&rec);
    strbuf_free(&out);
    seal_free(a);
    seal_free(b);
}

static void keygen_writes_a_loadable_private_key(void **state) {
    (void)state;
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/store.key", dir);
    assert_int_equal(seal_keygen(path, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    seal *k = seal_load(path, err, sizeof err);
    assert_non_null(k);
    seal_free(k);
    assert_int_equal(seal_keygen(path, err, sizeof err), -1); /* never overwrites a key */
    FILE *f = fopen(path, "w");
    fputs("not a key\n", f);
    fclose(f);
    assert_null(seal_load(path, err, sizeof err));
    assert_non_null(strstr(err, "64 hex digits"));
}

/* True when the bytes of needle appear anywhere in the store's files. */
static bool on_disk(const char *needle) {
    char path[128];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    strbuf all = {0};
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) strbuf_append(&all, buf, n);
    fclose(f);
    bool found = memmem(all.s, all.n, needle, strlen(needle)) != NULL;
    strbuf_free(&all);
    return found;
}

static void sealed_store_keeps_ciphertext_and_refuses_tampering(void **state) {
    (void)state;
    sealer = seal_new(key_a);
    store *s = open_store(0);
    assert_int_equal(commit(s, "sa", 1, clock_wall_ms()), STORE_OK);
    assert_int_equal(commit(s, "sa", 2, clock_wall_ms()), STORE_OK);
    assert_int_equal(commit(s, "sb", 1, clock_wall_ms()), STORE_OK);
    store_close(s);
    assert_false(on_disk("alice")); /* the user id is in every meta record */

    /* sb's turn 1 replaced by sa's, intact but in the wrong place */
    raw_turn_copy("sa", "sb", -1);
    s = open_store(0);
    session_meta m;
    turn_rec *turns;
    assert_int_equal(store_session_load(s, "sb", 0, &m, &turns), STORE_CORRUPT);
    assert_non_null(strstr(store_last_error(), "fails authentication"));
    assert_int_equal(store_session_load(s, "sa", 0, &m, &turns), STORE_OK); /* the others are untouched */
    assert_int_equal(m.turn, 2);
    assert_string_equal(m.user_id, "alice");
    assert_int_equal(turns[1].tok[SEG_USER].v[0], 2);
    store_turns_free(turns, m.turn);
    store_close(s);

    /* a node without the key, or with another one, refuses the records */
    seal_free(sealer);
    sealer = NULL;
    s = open_store(0);
    assert_int_equal(store_session_load(s, "sa", 0, &m, &turns), STORE_CORRUPT);
    assert_non_null(strstr(store_last_error(), "no --store-key"));
    assert_int_equal(commit(s, "plain", 1, clock_wall_ms()), STORE_OK);
    store_close(s);
    assert_true(on_disk("alice")); /* unsealed, the same meta shows it */
    sealer = seal_new(key_b);
    s = open_store(0);
    assert_int_equal(store_meta_get(s, "sa", &m), STORE_CORRUPT);
    store_close(s);
    seal_free(sealer);

    /* and with the key, a plain record planted in the store is refused */
    sealer = seal_new(key_a);
    s = open_store(0);
    assert_int_equal(store_meta_get(s, "plain", &m), STORE_CORRUPT);
    assert_non_null(strstr(store_last_error(), "not encrypted"));
    assert_int_equal(store_meta_get(s, "sa", &m), STORE_OK);
    store_close(s);
    seal_free(sealer);
    sealer = NULL;
}

static void urls_are_logged_without_passwords(void **state) {
    (void)state;
    char out[256];
    store_url_redact("tls://edge-1:s3cret@core-1:4222,nats://core-2:4222,edge-1:pw@core-3:4222", out, sizeof out);
    assert_string_equal(out, "tls://edge-1:***@core-1:4222,nats://core-2:4222,edge-1:***@core-3:4222");
    store_url_redact("nats://127.0.0.1:4222", out, sizeof out);
    assert_string_equal(out, "nats://127.0.0.1:4222");
    store_url_redact("nats://token@host:4222", out, sizeof out); /* a user (or token) alone stays */
    assert_string_equal(out, "nats://token@host:4222");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(persists_across_reopen, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(commit_is_compare_and_set, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(ttl_counts_from_last_activity, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(delete_removes_everything, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(damaged_record_is_refused, make_dir, remove_dir),
        cmocka_unit_test(seal_opens_only_what_it_sealed),
        cmocka_unit_test(urls_are_logged_without_passwords),
        cmocka_unit_test_setup_teardown(keygen_writes_a_loadable_private_key, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(sealed_store_keeps_ciphertext_and_refuses_tampering, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
