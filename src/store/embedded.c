/* embedded.c - the embedded store: LMDB in --data-dir.
 *
 * Why LMDB: a crash-safe B+tree in one file with ACID transactions and no
 * server. Its single-writer transactions make the store's compare-and-set
 * trivially correct: the check of the stored turn and the append happen in
 * one write transaction, and LMDB serializes write transactions across
 * threads and processes. Each commit is synced to disk before it returns, so
 * a node that answered 200 has the turn even if it crashes right after.
 *
 * Layout, two named databases:
 *   "meta"   key: session id                    value: meta record (codec)
 *   "turns"  key: session id, NUL, u32 BE turn  value: turn record (codec)
 * The big-endian turn keeps a session's turns adjacent and in order, so a
 * session loads with one cursor walk.
 *
 * Fault injection: with DC_FAULT_COMMIT_PAUSE_MS=N in the environment, each
 * commit logs "fault: commit paused" and sleeps N ms after writing the turn
 * and meta records, before its transaction commits, so that a test can
 * kill -9 the node in the middle of a commit (tests/integration/test_faults.py). */
#include "store_impl.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../util/clock.h"
#include "../util/log.h"

typedef struct {
    store base;
    MDB_env *env;
    MDB_dbi meta, turns;
    int fault_pause_ms; /* DC_FAULT_COMMIT_PAUSE_MS (see top); 0 normally */
} embedded;

static const store_ops embedded_ops;

static store_status fail(store_status st, const char *what, int rc) {
    return store_fail(st, "%s: %s", what, rc ? mdb_strerror(rc) : "bad record");
}

store *store_embedded_open(const store_params *p, char *err, size_t errlen) {
    if (mkdir(p->data_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data dir %s: %s", p->data_dir, strerror(errno));
        return NULL;
    }
    embedded *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base.ops = &embedded_ops;
    s->base.ttl_ms = p->ttl_ms;
    const char *pause = getenv("DC_FAULT_COMMIT_PAUSE_MS");
    s->fault_pause_ms = pause ? atoi(pause) : 0;
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&s->env);
    if (!rc) rc = mdb_env_set_maxdbs(s->env, 4);
    if (!rc) rc = mdb_env_set_mapsize(s->env, p->map_size);
    /* MDB_NOTLS: read transactions are not tied to a thread slot, so the many
     * short-lived connection threads of the HTTP server cannot exhaust the
     * reader table. */
    if (!rc) rc = mdb_env_open(s->env, p->data_dir, MDB_NOTLS, 0600);
    if (!rc) rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (!rc) rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta);
    if (!rc) rc = mdb_dbi_open(txn, "turns", MDB_CREATE, &s->turns);
    if (!rc) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (rc) {
        snprintf(err, errlen, "cannot open store in %s: %s", p->data_dir, mdb_strerror(rc));
        if (txn) mdb_txn_abort(txn);
        mdb_env_close(s->env);
        free(s);
        return NULL;
    }
    return &s->base;
}

static void embedded_close(store *base) {
    embedded *s = (embedded *)base;
    mdb_env_close(s->env);
    free(s);
}

static MDB_val key_of(const char *sid) { return (MDB_val){strlen(sid), (void *)sid}; }

/* turns key: sid NUL turn(BE) */
static MDB_val turn_key(char buf[ID_MAX + 6], const char *sid, uint32_t turn) {
    size_t n = strlen(sid);
    memcpy(buf, sid, n);
    buf[n] = '\0';
    unsigned char *t = (unsigned char *)buf + n + 1;
    t[0] = (unsigned char)(turn >> 24);
    t[1] = (unsigned char)(turn >> 16);
    t[2] = (unsigned char)(turn >> 8);
    t[3] = (unsigned char)turn;
    return (MDB_val){n + 5, buf};
}

/* The names records are sealed under (seal.h): where they sit. */
#define AD_MAX (ID_MAX + 24)
static void meta_ad(char ad[AD_MAX], const char *sid) { snprintf(ad, AD_MAX, "embedded/meta/%s", sid); }
static void turn_ad(char ad[AD_MAX], const char *sid, uint32_t turn) {
    snprintf(ad, AD_MAX, "embedded/turn/%s/%u", sid, turn);
}

/* Opens (when sealed, under ad) and decodes a stored record: a meta record
 * into meta, or a turn record into turn (the other NULL). */
static codec_status record_decode(embedded *s, const char *ad, MDB_val v, session_meta *meta, turn_rec *turn,
                                  bool *opened) {
    strbuf buf = {0};
    size_t n = v.mv_size;
    const void *p = store_record_open(&s->base, ad, v.mv_data, &n, &buf);
    codec_status cs = !p ? CODEC_OK : meta ? codec_meta_decode(p, n, meta) : codec_turn_decode(p, n, turn);
    strbuf_free(&buf);
    *opened = p != NULL;
    return cs;
}

static store_status meta_decode(embedded *s, const char *sid, MDB_val v, session_meta *out) {
    char ad[AD_MAX];
    bool opened;
    meta_ad(ad, sid);
    codec_status cs = record_decode(s, ad, v, out, NULL, &opened);
    if (!opened) return STORE_CORRUPT; /* store_record_open said why */
    return cs ? store_fail(STORE_CORRUPT, "meta of %s: %s", sid, codec_status_str(cs)) : STORE_OK;
}

static store_status turn_decode(embedded *s, const char *sid, uint32_t turn, MDB_val v, turn_rec *out) {
    char ad[AD_MAX];
    bool opened;
    turn_ad(ad, sid, turn);
    codec_status cs = record_decode(s, ad, v, NULL, out, &opened);
    if (!opened) return STORE_CORRUPT;
    if (cs || out->turn != turn)
        return store_fail(STORE_CORRUPT, "turn %u of %s: %s", turn, sid,
                          cs ? codec_status_str(cs) : "turn number mismatch");
    return STORE_OK;
}

/* Reads and decodes the meta record inside txn. */
static store_status meta_read(embedded *s, MDB_txn *txn, const char *sid, session_meta *out) {
    MDB_val k = key_of(sid), v;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return STORE_NOT_FOUND;
    if (rc) return fail(STORE_IO, "meta read", rc);
    store_status st = meta_decode(s, sid, v, out);
    if (st) return st;
    return store_expired(&s->base, out->last_ms, clock_wall_ms()) ? STORE_NOT_FOUND : STORE_OK;
}

static store_status embedded_meta_get(store *base, const char *sid, session_meta *out) {
    embedded *s = (embedded *)base;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return fail(STORE_IO, "begin read", rc);
    store_status st = meta_read(s, txn, sid, out);
    mdb_txn_abort(txn);
    return st;
}

static store_status embedded_session_load(store *base, const char *sid, uint32_t want, session_meta *meta,
                                          turn_rec **turns) {
    (void)want; /* one copy, always current */
    embedded *s = (embedded *)base;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return fail(STORE_IO, "begin read", rc);
    store_status st = meta_read(s, txn, sid, meta);
    turn_rec *out = NULL;
    if (st == STORE_OK && meta->turn > 0) {
        out = calloc(meta->turn, sizeof *out);
        if (!out) st = fail(STORE_IO, "out of memory", ENOMEM);
    }
    /* Every turn 1..meta.turn must be there: a gap means the store is damaged. */
    for (uint32_t i = 0; st == STORE_OK && i < meta->turn; i++) {
        char kb[ID_MAX + 6];
        MDB_val k = turn_key(kb, sid, i + 1), v;
        rc = mdb_get(txn, s->turns, &k, &v);
        if (rc) {
            st = rc == MDB_NOTFOUND ? STORE_CORRUPT : STORE_IO;
            fail(st, "turn read", rc == MDB_NOTFOUND ? 0 : rc);
            break;
        }
        st = turn_decode(s, sid, i + 1, v, &out[i]);
    }
    mdb_txn_abort(txn);
    if (st != STORE_OK) {
        store_turns_free(out, meta->turn);
        return st;
    }
    *turns = out;
    return STORE_OK;
}

/* Deletes the session's records inside a write transaction: its meta and
 * every turn record under its key prefix, however many the meta says there
 * are (a meta that does not decode says nothing, and its turns must not be
 * left behind). */
static int delete_in(embedded *s, MDB_txn *txn, const char *sid) {
    MDB_val k = key_of(sid);
    int rc = mdb_del(txn, s->meta, &k, NULL);
    if (rc && rc != MDB_NOTFOUND) return rc;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, s->turns, &cur))) return rc;
    char kb[ID_MAX + 6];
    MDB_val tk = turn_key(kb, sid, 0), tv;
    size_t plen = tk.mv_size - 4; /* sid NUL */
    for (rc = mdb_cursor_get(cur, &tk, &tv, MDB_SET_RANGE); !rc; rc = mdb_cursor_get(cur, &tk, &tv, MDB_NEXT)) {
        if (tk.mv_size != plen + 4 || memcmp(tk.mv_data, kb, plen) != 0) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static store_status embedded_turn_commit(store *base, const char *sid, session_meta *meta, const turn_rec *t) {
    embedded *s = (embedded *)base;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) return fail(STORE_IO, "begin write", rc);
    session_meta cur;
    store_status st = meta_read(s, txn, sid, &cur);
    uint32_t stored = 0;
    if (st == STORE_OK) {
        stored = cur.turn;
    } else if (st == STORE_NOT_FOUND) {
        /* absent, or expired: whatever an earlier life left goes before turn 1 */
        if ((rc = delete_in(s, txn, sid)) != 0) {
            mdb_txn_abort(txn);
            return fail(STORE_IO, "expire", rc);
        }
        st = STORE_OK;
    } else {
        mdb_txn_abort(txn);
        return st;
    }
    if (stored != t->turn - 1) {
        mdb_txn_abort(txn);
        return STORE_CONFLICT;
    }
    /* Turn N > 1 continues the life the caller read (store.h): a session
     * deleted and started over since (another process on this LMDB file)
     * has another creation time, and maybe another owner. LMDB keeps no
     * revision per key; the creation time stands for it (meta->rev unused). */
    if (t->turn > 1 && (cur.created_ms != meta->created_ms || strcmp(cur.user_id, meta->user_id) != 0)) {
        mdb_txn_abort(txn);
        return STORE_STALE;
    }
    strbuf rec = {0};
    char kb[ID_MAX + 6], ad[AD_MAX];
    codec_turn_encode(t, &rec);
    turn_ad(ad, sid, t->turn);
    store_record_seal(&s->base, ad, &rec);
    MDB_val tk = turn_key(kb, sid, t->turn), tv = {rec.n, rec.s};
    rc = mdb_put(txn, s->turns, &tk, &tv, 0);
    if (!rc) {
        strbuf_clear(&rec);
        codec_meta_encode(meta, &rec);
        meta_ad(ad, sid);
        store_record_seal(&s->base, ad, &rec);
        MDB_val mk = key_of(sid), mv = {rec.n, rec.s};
        rc = mdb_put(txn, s->meta, &mk, &mv, 0);
    }
    strbuf_free(&rec);
    if (rc) {
        mdb_txn_abort(txn);
        return fail(STORE_IO, "commit", rc);
    }
    if (s->fault_pause_ms > 0) {
        log_warn("fault: commit paused (turn %u of %s)", t->turn, sid);
        clock_sleep_ms(s->fault_pause_ms);
    }
    rc = mdb_txn_commit(txn);
    return rc ? fail(STORE_IO, "commit", rc) : STORE_OK;
}

static store_status embedded_session_delete(store *base, const char *sid) {
    embedded *s = (embedded *)base;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) return fail(STORE_IO, "begin write", rc);
    MDB_val k = key_of(sid), v;
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return STORE_NOT_FOUND;
    }
    if (!rc) rc = delete_in(s, txn, sid);
    if (rc) {
        mdb_txn_abort(txn);
        return fail(STORE_IO, "delete", rc);
    }
    rc = mdb_txn_commit(txn);
    return rc ? fail(STORE_IO, "delete", rc) : STORE_OK;
}

static long embedded_expire(store *base, int64_t now_ms) {
    embedded *s = (embedded *)base;
    MDB_txn *txn;
    if (mdb_txn_begin(s->env, NULL, 0, &txn)) return -1;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, s->meta, &cur)) {
        mdb_txn_abort(txn);
        return -1;
    }
    /* Collect first, delete after: deleting under a live cursor is legal in
     * LMDB but its repositioning rules are subtle; this is not a hot path. */
    typedef struct {
        char sid[ID_MAX + 1];
    } victim;
    victim *vs = NULL;
    size_t nv = 0, cap = 0;
    MDB_val k, v;
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        session_meta m;
        if (k.mv_size > ID_MAX) continue;
        if (nv == cap) vs = dc_xrealloc(vs, (cap = cap ? cap * 2 : 16) * sizeof *vs);
        memcpy(vs[nv].sid, k.mv_data, k.mv_size);
        vs[nv].sid[k.mv_size] = '\0';
        if (meta_decode(s, vs[nv].sid, v, &m) != STORE_OK || !store_expired(&s->base, m.last_ms, now_ms)) continue;
        nv++;
    }
    mdb_cursor_close(cur);
    int rc = 0;
    for (size_t i = 0; i < nv && !rc; i++) rc = delete_in(s, txn, vs[i].sid);
    free(vs);
    if (rc) {
        mdb_txn_abort(txn);
        return -1;
    }
    return mdb_txn_commit(txn) ? -1 : (long)nv;
}

static const store_ops embedded_ops = {
    .name = "embedded",
    .meta_get = embedded_meta_get,
    .session_load = embedded_session_load,
    .turn_commit = embedded_turn_commit,
    .session_delete = embedded_session_delete,
    .expire = embedded_expire,
    .close = embedded_close,
};
