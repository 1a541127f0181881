/* nats_read.c - reading sessions: direct gets from the local mirror or the
 * core, batched (one round trip for all the messages a node misses), over
 * the node's cache of turns (turncache.h); nats.c says why a prefix is safe
 * and when the core is asked. */
#include <errno.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/ids.h"
#include "../util/log.h"
#include "nats_impl.h"

uint64_t nats_msg_seq(natsMsg *m) {
    const char *v = NULL;
    if (natsMsgHeader_Get(m, "Nats-Sequence", &v) == NATS_OK && v) return strtoull(v, NULL, 10);
    return natsMsg_GetSequence(m);
}

/* Direct get of the message after seq (or the last one when last=true). */
store_status nats_direct_get(nstore *s, jsCtx *js, const char *subj, uint64_t seq, bool last, natsMsg **out) {
    jsDirectGetMsgOptions o;
    jsDirectGetMsgOptions_Init(&o);
    if (last) {
        o.LastBySubject = subj;
    } else {
        o.Sequence = seq;
        o.NextBySubject = subj;
    }
    natsStatus st = js_DirectGetMsg(out, js, s->stream, NULL, &o);
    store_count_trip(js == s->js);
    if (st == NATS_NOT_FOUND) return STORE_NOT_FOUND;
    return st == NATS_OK ? STORE_OK : nats_fail("direct get", st, 0);
}

/* Opens (when sealed, under its subject subj: seal.h) and decodes a commit
 * record of session sid. */
store_status nats_decode(nstore *s, natsMsg *m, const char *subj, const char *sid, session_meta *meta, turn_rec *t) {
    strbuf buf = {0};
    size_t n = (size_t)natsMsg_GetDataLength(m);
    const void *p = store_record_open(&s->base, subj, natsMsg_GetData(m), &n, &buf);
    codec_status cs = p ? codec_commit_decode(p, n, meta, t) : CODEC_OK;
    strbuf_free(&buf);
    if (!p) return STORE_CORRUPT;
    return cs ? store_fail(STORE_CORRUPT, "record of %s: %s", sid, codec_status_str(cs)) : STORE_OK;
}

/* True when the core holds a tombstone of sid at exactly stream sequence seq. */
bool nats_tombstone_at(nstore *s, const char *subj, const char *sid, uint64_t seq) {
    natsMsg *m = NULL;
    session_meta meta;
    bool yes = nats_direct_get(s, s->js, subj, seq, false, &m) == STORE_OK && nats_msg_seq(m) == seq &&
        nats_decode(s, m, subj, sid, &meta, NULL) == STORE_OK && meta.turn == 0;
    natsMsg_Destroy(m);
    return yes;
}

store_status nats_meta_get(store *base, const char *sid, session_meta *out) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    natsMsg *m = NULL;
    store_status st = nats_direct_get(s, s->jsl, subj, 0, true, &m);
    if (st == STORE_OK) st = nats_decode(s, m, subj, sid, out, NULL);
    natsMsg_Destroy(m);
    if (st == STORE_OK && (out->turn == 0 || store_expired(base, out->last_ms, clock_wall_ms()))) st = STORE_NOT_FOUND;
    return st;
}

/* A session read in progress: the turns of the session's latest life found
 * so far (from this node's cache, then the stream), fed one message at a
 * time to absorb(). */
typedef struct {
    turn_rec *turns;  /* turns[0..n); entries up to cap may hold buffers of earlier lives */
    uint32_t n, cap;
    session_meta meta; /* the meta after turns[n-1] */
    uint64_t last_seq; /* stream sequence of the last message absorbed (or cached) */
    uint64_t garbage_below; /* below this sequence only earlier lives of the id were found (0: none) */
} reading;

/* Adds the session's next message to r. */
static store_status absorb(nstore *s, natsMsg *m, const char *subj, const char *sid, reading *r) {
    if (r->n == r->cap) {
        uint32_t c = r->cap ? r->cap * 2 : 8;
        r->turns = dc_xrealloc(r->turns, c * sizeof *r->turns);
        memset(r->turns + r->cap, 0, (c - r->cap) * sizeof *r->turns);
        r->cap = c;
    }
    turn_rec *t = &r->turns[r->n];
    session_meta mm;
    store_status st = nats_decode(s, m, subj, sid, &mm, t);
    if (st != STORE_OK) return st;
    r->last_seq = nats_msg_seq(m);
    /* A subject can hold earlier lives of a session id (deleted or
     * expired, then started over): a tombstone or a new turn 1 begins a new
     * life, and only the latest counts. */
    if (t->turn == 0) {
        r->n = 0;
        r->garbage_below = r->last_seq; /* keep the tombstone itself */
        return STORE_OK;
    }
    if (t->turn == 1 && r->n > 0) {
        turn_rec tmp = r->turns[0];
        r->turns[0] = *t;
        *t = tmp;
        r->n = 0;
        r->garbage_below = r->last_seq;
    } else if (t->turn != r->n + 1) {
        return store_fail(STORE_CORRUPT, "session %s: turn %u found where %u belongs", sid, t->turn, r->n + 1);
    }
    r->n++;
    r->meta = mm;
    return STORE_OK;
}

/* A batched read: at most this many messages, and about this many bytes
 * (the server stops at whichever comes first, always after at least one
 * message, and says how many are left; the read then asks again from
 * there). Bounds what one reply puts in this node's memory; a session
 * rarely comes near either. */
#define BATCH_MSGS 1024
#define BATCH_BYTES (8 << 20)
#define REQUEST_MS 5000 /* as the JetStream contexts' Wait; whole seconds */

/* A batched direct get (nats-server 2.11+, ADR-31): the messages on subj
 * from stream sequence `from` on, in one request and one round trip. The C
 * client used (3.4) has no call for it, so it is asked here: a request on
 * <api>.DIRECT.GET.<stream> (the core's API prefix carries its JetStream
 * domain in leaf mode), answered with one message per record and a
 * status-204 "EOB" saying how many are left (Nats-Num-Pending). The replies
 * come to the node's one reply subscription (nats_on_reply), not to an inbox
 * subscribed per read: in leaf mode every new subscription is announced to
 * the core over the WAN link, and replication bytes are measured there.
 * Appends the records to *v (*n of them; the caller destroys them and frees
 * *v) and sets *more when the server stopped at the limits above.
 * STORE_NOT_FOUND: no message from `from` on. *refused: the server answered
 * like one that does not batch (before 2.11 the fields are ignored and the
 * reply is a single message without Nats-Num-Pending; or a 408 to the
 * request): nothing is appended then. */
static store_status batch_get(nstore *s, bool core, const char *subj, uint64_t from, natsMsg ***v, int *n, bool *more,
                              bool *refused) {
    char api[200], reply[96];
    snprintf(api, sizeof api, "%s.DIRECT.GET.%s", core ? s->api : "$JS.API", s->stream);
    json_t *req = json_pack("{s:I, s:s, s:i, s:i}", "seq", (json_int_t)from, "next_by_subj", subj, "batch", BATCH_MSGS,
                            "max_bytes", BATCH_BYTES);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    reply_wait w = {.id = atomic_fetch_add(&s->reply_seq, 1) + 1};
    snprintf(reply, sizeof reply, "%s.%llu", s->inbox, (unsigned long long)w.id);
    pthread_mutex_lock(&s->mu);
    w.next = s->replies;
    s->replies = &w;
    pthread_mutex_unlock(&s->mu);
    natsStatus ns = body ? natsConnection_PublishRequestString(s->nc, api, reply, body) : NATS_NO_MEMORY;
    free(body);
    store_count_trip(core);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += REQUEST_MS / 1000; /* whole seconds */
    pthread_mutex_lock(&s->mu);
    while (ns == NATS_OK && !w.done)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) == ETIMEDOUT) break;
    reply_wait **pp = &s->replies;
    while (*pp != &w) pp = &(*pp)->next;
    *pp = w.next;
    pthread_mutex_unlock(&s->mu);
    if (ns == NATS_OK && !w.done) ns = NATS_TIMEOUT;

    *v = w.v;
    *n = w.n;
    *more = *refused = false;
    store_status st = STORE_OK;
    const char *code = NULL, *np = NULL;
    if (ns != NATS_OK) {
        st = nats_fail("batched get", ns, 0);
    } else if (natsMsgHeader_Get(w.end, "Status", &code) != NATS_OK || !code || !strcmp(code, "408")) {
        *refused = true; /* a record without Nats-Num-Pending, or a request it did not understand */
    } else if (!strcmp(code, "204")) { /* EOB */
        *more = natsMsgHeader_Get(w.end, "Nats-Num-Pending", &np) == NATS_OK && np && strtoull(np, NULL, 10) > 0;
    } else if (!strcmp(code, "404")) {
        st = STORE_NOT_FOUND;
    } else if (!strcmp(code, "503")) {
        st = nats_fail("batched get", NATS_NO_RESPONDERS, 0);
    } else {
        const char *d = NULL;
        natsMsgHeader_Get(w.end, "Description", &d);
        st = store_fail(STORE_IO, "batched get on %s: %s %s", api, code, d ? d : "");
    }
    natsMsg_Destroy(w.end);
    if (st != STORE_OK || *refused) {
        for (int i = 0; i < *n; i++) natsMsg_Destroy((*v)[i]);
        free(*v);
        *v = NULL;
        *n = 0;
    }
    return st;
}

/* The node's reply subscription (<inbox>.*): a reply to batched get <id>
 * (the subject's last token). Records are collected; anything else - the
 * EOB or another status, or a record without Nats-Num-Pending (a server
 * that does not batch sends that one and nothing more) - ends the read.
 * Replies to a read that gave up waiting are dropped. */
void nats_on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc;
    (void)sub;
    nstore *s = closure;
    const char *dot = strrchr(natsMsg_GetSubject(msg), '.');
    uint64_t id = dot ? strtoull(dot + 1, NULL, 10) : 0;
    const char *hv = NULL;
    bool record = natsMsgHeader_Get(msg, "Status", &hv) != NATS_OK &&
        natsMsgHeader_Get(msg, "Nats-Num-Pending", &hv) == NATS_OK;
    pthread_mutex_lock(&s->mu);
    reply_wait *w = s->replies;
    while (w && w->id != id) w = w->next;
    if (w && !w->done) {
        if (record) {
            if (w->n == w->cap) {
                w->cap = w->cap ? w->cap * 2 : 8;
                w->v = dc_xrealloc(w->v, (size_t)w->cap * sizeof *w->v);
            }
            w->v[w->n++] = msg;
        } else {
            w->end = msg;
            w->done = true;
            pthread_cond_broadcast(&s->cv);
        }
        msg = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    natsMsg_Destroy(msg);
}

/* Feeds r the session's messages from stream sequence `from` on, as the
 * copy behind js holds them: in one round trip (a batched get), or one per
 * message where the server refuses batched gets (an older nats-server;
 * then the next read does not ask again). Stopping at the first "not found"
 * yields a prefix of the session, which is safe (see top). */
static store_status read_from(nstore *s, jsCtx *js, const char *subj, const char *sid, uint64_t from, reading *r) {
    bool core = js == s->js;
    while (!atomic_load(&s->no_batch[core])) {
        natsMsg **v;
        int n;
        bool more, refused;
        store_status st = batch_get(s, core, subj, from, &v, &n, &more, &refused);
        for (int i = 0; i < n; i++) {
            if (st == STORE_OK) st = absorb(s, v[i], subj, sid, r);
            natsMsg_Destroy(v[i]);
        }
        free(v);
        if (refused) {
            if (!atomic_exchange(&s->no_batch[core], true))
                log_warn(
                    "the %s's nats-server refuses batched direct gets (before 2.11?): reading sessions one message "
                    "per round trip",
                    core ? "core" : "mirror");
            break;
        }
        if (st == STORE_NOT_FOUND) return STORE_OK;
        if (st != STORE_OK || !more || n == 0) return st;
        from = r->last_seq + 1;
    }
    for (;;) {
        natsMsg *m = NULL;
        store_status st = nats_direct_get(s, js, subj, from, false, &m);
        if (st == STORE_NOT_FOUND) return STORE_OK;
        if (st == STORE_OK) st = absorb(s, m, subj, sid, r);
        natsMsg_Destroy(m);
        if (st != STORE_OK) return st;
        from = r->last_seq + 1;
    }
}

/* Reads a session through js (the local mirror or the core): the turns
 * this node's cache holds, then every message after them, in one round
 * trip. The last message read says where the session stands (a tombstone,
 * idle past the TTL, a new life). A replica that has nothing after what
 * this node itself committed or read - even one behind it - leaves the
 * cache's answer (read-your-writes). */
static store_status load_via(nstore *s, jsCtx *js, const char *sid, session_meta *meta, turn_rec **turns) {
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    reading r = {0};
    uint64_t cached = 0;
    r.n = r.cap = turncache_get(s->cache, sid, &r.turns, &r.meta, &cached);
    r.last_seq = cached;
    store_status st = read_from(s, js, subj, sid, r.n ? cached + 1 : 1, &r);
    if (st == STORE_OK && (r.n == 0 || store_expired(&s->base, r.meta.last_ms, clock_wall_ms())))
        st = STORE_NOT_FOUND; /* none, a tombstone last, or idle past the TTL */
    if (st != STORE_OK) {
        store_turns_free(r.turns, r.cap);
        if (st == STORE_NOT_FOUND) turncache_drop(s->cache, sid);
        return st;
    }
    /* earlier lives read over: their buffers, and (so that the next miss
     * does not read them again) their messages where this read came from */
    for (uint32_t i = r.n; i < r.cap; i++) turn_rec_free(&r.turns[i]);
    if (r.garbage_below) nats_reclaim_below(s, s->leaf && js == s->jsl, subj, r.garbage_below);
    r.meta.rev = r.last_seq;
    if (r.last_seq != cached) turncache_put(s->cache, sid, r.turns, r.n, &r.meta, r.last_seq);
    *meta = r.meta;
    *turns = r.turns;
    return STORE_OK;
}

store_status nats_session_load(store *base, const char *sid, uint32_t want, session_meta *meta, turn_rec **turns) {
    nstore *s = (nstore *)base;
    store_status st = load_via(s, s->jsl, sid, meta, turns);
    /* Leaf mode: the local mirror does not have the turn the client needs
     * (it lags, or stopped following): ask the core, which has every
     * committed turn. */
    if (s->leaf && want > 0 && (st == STORE_NOT_FOUND || (st == STORE_OK && meta->turn < want))) {
        /* (STORE_WANT_LATEST always asks the core) */
        session_meta core_meta;
        turn_rec *core_turns = NULL;
        store_status cs = load_via(s, s->js, sid, &core_meta, &core_turns);
        if (cs == STORE_OK || cs == STORE_NOT_FOUND || cs == STORE_CORRUPT) {
            if (st == STORE_OK) store_turns_free(*turns, meta->turn);
            *turns = core_turns;
            *meta = core_meta;
            st = cs;
        } else if (st == STORE_NOT_FOUND) {
            /* The core cannot be asked, and the mirror has nothing of the
             * session: it cannot tell an unknown session from one it has
             * not received yet. That is unavailable, not absent. */
            st = STORE_UNAVAILABLE;
        }
        /* otherwise keep what the mirror has; the turn protocol decides
         * (strong: 503, available: a stale answer) */
    }
    if (st == STORE_UNAVAILABLE) {
        /* No store reachable at all (this host's leaf server down, or every
         * server): what this node last read or wrote of the session is the
         * best context there is. The turn protocol decides what it is good
         * for, as above; a commit from it fails until the store is back. */
        uint64_t seq;
        turn_rec *cached = NULL;
        uint32_t n = turncache_get(s->cache, sid, &cached, meta, &seq);
        if (n && !store_expired(base, meta->last_ms, clock_wall_ms())) {
            *turns = cached;
            meta->rev = seq;
            return STORE_OK;
        }
        store_turns_free(cached, n);
        char why[256];
        snprintf(why, sizeof why, "%s", store_last_error());
        store_fail(STORE_UNAVAILABLE, "%s; session %s is not cached on this node", why, sid);
    }
    return st;
}
