/* fake_store.c - the in-memory store of fakes.h: a core and per-node
 * replicas, behind store_impl.h's operations. Every read hands out deep
 * copies, as a store decoding records would; the compare-and-set follows
 * nats.c (revision read; a refused later turn is a conflict when the turn
 * is taken, stale otherwise) and, for a session past its TTL, embedded.c
 * (it is absent: a later turn's commit conflicts). A read for the latest
 * state (STORE_WANT_LATEST) is the core's, as store.h promises. */
#include <stdlib.h>
#include <string.h>

#include "fakes.h"
#include "store/store_impl.h"
#include "util/clock.h"

typedef struct {
    char sid[ID_MAX + 1];
    session_meta meta; /* meta.rev: the revision of its last commit */
    turn_rec *turns;   /* meta.turn of them */
} fsess;

typedef struct {
    fsess *v;
    size_t n;
} table;

#define MAX_NODES 8

struct fake_core {
    table t;
    uint64_t seq; /* the last revision given */
    int64_t ttl_ms;
    fake_store *nodes[MAX_NODES];
    int n_nodes;
};

static void rec_copy(turn_rec *dst, const turn_rec *src) {
    memset(dst, 0, sizeof *dst);
    dst->turn = src->turn;
    dst->kind = src->kind;
    dst->fingerprint = src->fingerprint;
    for (int s = 0; s < SEG_COUNT; s++) {
        tokvec_append(&dst->tok[s], src->tok[s].v, src->tok[s].n);
        if (src->text[s].s) strbuf_append(&dst->text[s], src->text[s].s, src->text[s].n);
    }
}

static turn_rec *turns_copy(const turn_rec *src, uint32_t n) {
    turn_rec *t = calloc(n ? n : 1, sizeof *t);
    for (uint32_t i = 0; i < n; i++) rec_copy(&t[i], &src[i]);
    return t;
}

static void sess_clear(fsess *s) {
    store_turns_free(s->turns, s->meta.turn);
    s->turns = NULL;
}

static fsess *find(table *t, const char *sid) {
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->v[i].sid, sid)) return &t->v[i];
    return NULL;
}

static void drop(table *t, const char *sid) {
    fsess *s = find(t, sid);
    if (!s) return;
    sess_clear(s);
    *s = t->v[--t->n];
}

/* t's copy of sid becomes src's (or goes, when src is NULL). */
static void put(table *t, const char *sid, const fsess *src) {
    drop(t, sid);
    if (!src) return;
    t->v = dc_xrealloc(t->v, (t->n + 1) * sizeof *t->v);
    fsess *s = &t->v[t->n++];
    *s = *src;
    s->turns = turns_copy(src->turns, src->meta.turn);
}

static void table_free(table *t) {
    for (size_t i = 0; i < t->n; i++) sess_clear(&t->v[i]);
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

static table *replica_of(fake_store *fs) { return fs->replica; }

static bool expired(const fake_store *fs, const fsess *s) {
    return store_expired(&fs->base, s->meta.last_ms, clock_wall_ms());
}

/* The live session sid in t, or NULL. */
static fsess *live(fake_store *fs, table *t, const char *sid) {
    fsess *s = find(t, sid);
    return s && !expired(fs, s) ? s : NULL;
}

static void sync_one(fake_store *fs, const char *sid) { put(replica_of(fs), sid, find(&fs->core->t, sid)); }

void fake_store_sync(fake_store *fs) {
    table *r = replica_of(fs);
    table_free(r);
    for (size_t i = 0; i < fs->core->t.n; i++) put(r, fs->core->t.v[i].sid, &fs->core->t.v[i]);
}

static store_status fake_meta_get(store *base, const char *sid, session_meta *out) {
    fake_store *fs = (fake_store *)base;
    fs->meta_gets++;
    fsess *s = live(fs, replica_of(fs), sid);
    if (!s && fs->leaf && !fs->core_down) s = live(fs, &fs->core->t, sid);
    if (!s) return STORE_NOT_FOUND;
    *out = s->meta;
    return STORE_OK;
}

static store_status fake_session_load(store *base, const char *sid, uint32_t want, session_meta *meta,
                                      turn_rec **turns) {
    fake_store *fs = (fake_store *)base;
    fs->loads++;
    if (fs->sync_after_loads > 0 && --fs->sync_after_loads == 0) fake_store_sync(fs);
    fsess *s = live(fs, replica_of(fs), sid);
    /* the latest state is the core's; a leaf also asks it for a turn its mirror lacks */
    if (want == STORE_WANT_LATEST || (fs->leaf && want > 0 && (!s || s->meta.turn < want))) {
        if (fs->core_down) {
            /* the replica cannot tell an unknown session from one not yet here (nats.c) */
            if (!s) return store_fail(STORE_UNAVAILABLE, "fake: the core is down");
        } else {
            fs->core_loads++;
            store_count_trip(true);
            s = live(fs, &fs->core->t, sid);
        }
    }
    if (!s) return STORE_NOT_FOUND;
    *meta = s->meta;
    *turns = turns_copy(s->turns, s->meta.turn);
    return STORE_OK;
}

static store_status fake_turn_commit(store *base, const char *sid, session_meta *meta, const turn_rec *t) {
    fake_store *fs = (fake_store *)base;
    fake_core *core = fs->core;
    if (fs->core_down) return store_fail(STORE_UNAVAILABLE, "fake: the core is down");
    fs->commits++;
    fsess *cur = live(fs, &core->t, sid);
    if (t->turn == 1) {
        if (cur) return STORE_CONFLICT;
    } else if (meta->rev) {
        /* the record the caller read must still be the latest */
        if (!cur) return find(&core->t, sid) ? STORE_CONFLICT : STORE_STALE; /* expired (embedded.c) : deleted */
        if (cur->meta.rev != meta->rev) return cur->meta.turn >= t->turn ? STORE_CONFLICT : STORE_STALE;
    } else {
        if (!cur || cur->meta.turn != t->turn - 1) return STORE_CONFLICT;
        if (cur->meta.created_ms != meta->created_ms || strcmp(cur->meta.user_id, meta->user_id) != 0)
            return STORE_STALE;
    }
    if (t->turn == 1) { /* a new life: whatever an expired one left goes */
        drop(&core->t, sid);
        core->t.v = dc_xrealloc(core->t.v, (core->t.n + 1) * sizeof *core->t.v);
        cur = &core->t.v[core->t.n++];
        memset(cur, 0, sizeof *cur);
        strcpy(cur->sid, sid);
    }
    cur->turns = dc_xrealloc(cur->turns, t->turn * sizeof *cur->turns);
    rec_copy(&cur->turns[t->turn - 1], t);
    meta->rev = ++core->seq;
    cur->meta = *meta;
    sync_one(fs, sid); /* this node's own commit is here at once */
    return STORE_OK;
}

static store_status fake_session_delete(store *base, const char *sid) {
    fake_store *fs = (fake_store *)base;
    if (fs->core_down) return store_fail(STORE_UNAVAILABLE, "fake: the core is down");
    if (!find(&fs->core->t, sid)) return STORE_NOT_FOUND;
    drop(&fs->core->t, sid);
    sync_one(fs, sid);
    return STORE_OK;
}

static long fake_expire(store *base, int64_t now_ms) {
    fake_store *fs = (fake_store *)base;
    long n = 0;
    for (size_t i = 0; i < fs->core->t.n;) {
        fsess *s = &fs->core->t.v[i];
        if (store_expired(base, s->meta.last_ms, now_ms)) {
            char sid[ID_MAX + 1];
            strcpy(sid, s->sid);
            drop(&fs->core->t, sid);
            sync_one(fs, sid);
            n++;
        } else {
            i++;
        }
    }
    return n;
}

static store_status fake_wait(store *base, const char *sid, uint32_t turn, int timeout_ms) {
    fake_store *fs = (fake_store *)base;
    fs->waits++;
    fs->wait_timeout_ms = timeout_ms;
    if (fs->wait_sees) fake_store_sync(fs);
    fsess *s = live(fs, replica_of(fs), sid);
    return s && s->meta.turn >= turn ? STORE_OK : STORE_NOT_FOUND; /* no sleeping: the timeout has passed */
}

static void fake_close(store *base) {
    fake_store *fs = (fake_store *)base;
    fake_core *core = fs->core;
    for (int i = 0; i < core->n_nodes; i++)
        if (core->nodes[i] == fs) core->nodes[i] = core->nodes[--core->n_nodes];
    table_free(replica_of(fs));
    free(fs->replica);
    free(fs);
}

static const store_ops fake_ops = {.name = "fake",
                                   .meta_get = fake_meta_get,
                                   .session_load = fake_session_load,
                                   .turn_commit = fake_turn_commit,
                                   .session_delete = fake_session_delete,
                                   .expire = fake_expire,
                                   .wait = fake_wait,
                                   .close = fake_close};

fake_core *fake_core_new(int64_t ttl_ms) {
    fake_core *core = calloc(1, sizeof *core);
    core->ttl_ms = ttl_ms;
    return core;
}

void fake_core_free(fake_core *core) {
    if (!core) return;
    table_free(&core->t);
    free(core);
}

fake_store *fake_store_open(fake_core *core) {
    if (core->n_nodes == MAX_NODES) return NULL;
    fake_store *fs = calloc(1, sizeof *fs);
    fs->base.ops = &fake_ops;
    fs->base.ttl_ms = core->ttl_ms;
    fs->core = core;
    fs->replica = calloc(1, sizeof(table));
    core->nodes[core->n_nodes++] = fs;
    fake_store_sync(fs);
    return fs;
}

void fake_core_age(fake_core *core, const char *sid, int64_t ms) {
    fsess *s = find(&core->t, sid);
    if (s) s->meta.last_ms -= ms;
    for (int i = 0; i < core->n_nodes; i++)
        if ((s = find(replica_of(core->nodes[i]), sid))) s->meta.last_ms -= ms;
}
