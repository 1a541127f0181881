/* nats.c - the replicated store: NATS JetStream.
 *
 * One stream per keygroup (the paper's "keygroup per model": a node joins
 * the streams of the models it serves and no others), named
 * DISCEDGE_<keygroup>, holding subjects dce.<keygroup>.t.<session id>. A
 * session is the sequence of messages on its subject, one per committed turn;
 * each message is a commit record (codec.h): the turn's delta plus the
 * session's meta after it. Replication therefore ships each turn once, and the
 * bytes per turn grow with the turn, not with the session.
 *
 * Exactly-once turns: turn N is published with
 * Nats-Expected-Last-Subject-Sequence set to the sequence of turn N-1's
 * message (as this node read it, or as the stream leader reports it). The
 * stream leader accepts the publish only if no message arrived on the subject
 * since, so of two nodes racing for turn N exactly one wins; the other gets
 * "wrong last sequence", reported as STORE_CONFLICT.
 *
 * Reads are direct gets (allow_direct). Two topologies:
 *  - nodes connected to the core: any replica of the core stream answers;
 *  - leaf mode (core_domain set): the node's own nats-server is a leaf of the
 *    core with a JetStream domain of its own, holding a mirror of the stream
 *    (same name, same sequence numbers); reads go to the mirror, commits and
 *    leader reads to the core's domain. When the mirror has less than the
 *    client's previous turn, the read is retried against the core.
 * A replica may be behind, so a read may return a prefix of the session: that
 * is safe, because messages are immutable and the context manager compares
 * the stored turn with the client's turn counter and waits when behind. A
 * per-node cache of turns (turncache.h) means a read fetches only the
 * session's last message and turns this node has not seen.
 *
 * Waiting for replication: every commit is followed by a small core-NATS
 * notification on dce.<keygroup>.n.<session> carrying the turn number; each
 * node keeps ONE subscription to all of them (creating one per request would
 * cost milliseconds) and wakes the requests waiting for that session.
 * Notifications are hints: a waiter always re-reads the store, so a lost or
 * early notification costs time, never correctness.
 *
 * Ending a session (DELETE, or idle past the TTL): a tombstone record (turn 0)
 * is appended, then older messages are purged from the core stream. Mirrors
 * do not replicate purges but do replicate the tombstone, so every node reads
 * the session as gone. Every record carries the session's last activity, so
 * a session idle past the TTL reads as absent even before the sweep. An id
 * can start over at turn 1; readers skip earlier lives. */
#include <errno.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "store_impl.h"
#include "turncache.h"

/* Sessions whose turns a node keeps in memory (turncache.h). */
#define CACHE_SESSIONS 1024

typedef struct waiter {
    const char *sid;
    uint32_t turn;
    bool done;
    struct waiter *next;
} waiter;

typedef struct {
    store base;
    natsConnection *nc;
    jsCtx *js;       /* the core's JetStream API: commits, leader reads, purges */
    jsCtx *jsl;      /* where reads go: the local mirror (leaf mode) or the core (== js) */
    char api[64];    /* the core's API prefix: "$JS.API" or "$JS.<domain>.API" */
    bool leaf;       /* reads from a mirror in the node's own JetStream domain */
    natsSubscription *notes;
    char stream[96];
    char subjects[96]; /* dce.<keygroup>.t. */
    char notify[96];   /* dce.<keygroup>.n. */
    pthread_mutex_t mu; /* guards waiters */
    pthread_cond_t cv;
    waiter *waiters;
    turncache *cache;
} nstore;

static const store_ops nats_ops;

#define SUBJECT_MAX (96 + ID_MAX + 1)

static void subject_of(const nstore *s, const char *sid, char out[SUBJECT_MAX]) {
    snprintf(out, SUBJECT_MAX, "%s%s", s->subjects, sid);
}

static store_status nats_fail(const char *what, natsStatus st, jsErrCode jerr) {
    /* unreachable (no responders, timeouts, no connection) is "retry later",
     * not "broken" */
    bool unavailable = st == NATS_NO_RESPONDERS || st == NATS_TIMEOUT || st == NATS_CONNECTION_CLOSED ||
                       st == NATS_CONNECTION_DISCONNECTED || st == NATS_NO_SERVER || jerr == 10008 /* cluster not avail */;
    return store_fail(unavailable ? STORE_UNAVAILABLE : STORE_IO, "%s: %s%s%s (jetstream error %d)", what, natsStatus_GetText(st),
                      nats_GetLastError(NULL) ? ": " : "", nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "",
                      (int)jerr);
}

/* Sends a JetStream API request (JSON) and checks the reply; an error whose
 * code is in `ok_codes` counts as success. */
static int js_api(nstore *s, const char *subj, json_t *req, const int *ok_codes, char *err, size_t errlen) {
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    natsMsg *reply = NULL;
    natsStatus st = natsConnection_RequestString(&reply, s->nc, subj, body, 5000);
    free(body);
    if (st != NATS_OK) {
        snprintf(err, errlen, "%s: %s (is JetStream enabled, and the domain right?)", subj, natsStatus_GetText(st));
        return -1;
    }
    json_t *resp = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    json_t *e = json_object_get(resp, "error");
    int rc = resp ? 0 : -1;
    if (e) {
        json_int_t code = json_integer_value(json_object_get(e, "err_code"));
        rc = -1;
        for (const int *c = ok_codes; c && *c; c++)
            if (code == *c) rc = 0;
        if (rc) {
            const char *d = json_string_value(json_object_get(e, "description"));
            snprintf(err, errlen, "%s: %s", subj, d ? d : "error");
        }
    } else if (!resp) {
        snprintf(err, errlen, "%s: unreadable reply", subj);
    }
    json_decref(resp);
    return rc;
}

/* Creates the keygroup's stream on the core, or joins it when it exists
 * (10058: exists with another configuration, e.g. replicas - used as it is).
 * In leaf mode also a mirror of it in the node's own JetStream domain, with
 * the same name, which answers this node's reads. Plain JSON requests: the
 * 3.4 C client's jsStreamConfig predates allow_direct. */
static int ensure_stream_once(nstore *s, int replicas, char *err, size_t errlen) {
    static const int exists[] = {10058, 0};
    char subj[200];
    snprintf(subj, sizeof subj, "%s.STREAM.CREATE.%s", s->api, s->stream);
    json_t *cfg = json_pack("{s:s, s:[s+], s:s, s:s, s:i, s:b, s:s, s:I}", "name", s->stream, "subjects", s->subjects,
                            ">", "retention", "limits", "storage", "file", "num_replicas", replicas, "allow_direct", 1,
                            "discard", "old", "duplicate_window", (json_int_t)120 * 1000000000LL);
    if (js_api(s, subj, cfg, exists, err, errlen) != 0) return -1;
    if (!s->leaf) return 0;
    snprintf(subj, sizeof subj, "$JS.API.STREAM.CREATE.%s", s->stream);
    json_t *mirror = json_pack("{s:s, s:s, s:b, s:{s:s, s:{s:s}}}", "name", s->stream, "storage", "file", "allow_direct",
                               1, "mirror", "name", s->stream, "external", "api", s->api);
    return js_api(s, subj, mirror, exists, err, errlen);
}

/* A node may start while the core is electing leaders (after a restart, or
 * before a new cluster has formed): keep trying for a while before giving up. */
static int ensure_stream(nstore *s, int replicas, char *err, size_t errlen) {
    double deadline = clock_mono_ms() + 30000;
    for (int attempt = 0;; attempt++) {
        if (ensure_stream_once(s, replicas, err, errlen) == 0) return 0;
        if (clock_mono_ms() > deadline) return -1;
        if (attempt == 0) log_warn("%s; retrying for up to 30 s", err);
        clock_sleep_ms(500);
    }
}

static void nats_close(store *base) {
    nstore *s = (nstore *)base;
    if (s->notes) natsSubscription_Unsubscribe(s->notes);
    natsSubscription_Destroy(s->notes);
    if (s->jsl != s->js) jsCtx_Destroy(s->jsl);
    jsCtx_Destroy(s->js);
    if (s->nc) natsConnection_Close(s->nc);
    natsConnection_Destroy(s->nc);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    turncache_free(s->cache);
    free(s);
}

/* The node-wide subscription: a commit of `turn` of a session happened. */
static void on_note(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc;
    (void)sub;
    nstore *s = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(s->notify);
    if (strncmp(subj, s->notify, plen) == 0) {
        const char *sid = subj + plen;
        char num[16] = {0};
        int n = natsMsg_GetDataLength(msg);
        memcpy(num, natsMsg_GetData(msg), n > 0 && n < 16 ? (size_t)n : 0);
        uint32_t turn = (uint32_t)strtoul(num, NULL, 10);
        pthread_mutex_lock(&s->mu);
        bool woke = false;
        for (waiter *w = s->waiters; w; w = w->next)
            if (!w->done && turn >= w->turn && !strcmp(w->sid, sid)) w->done = woke = true;
        if (woke) pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    natsMsg_Destroy(msg);
}

store *store_nats_open(const store_params *p, char *err, size_t errlen) {
    for (const char *k = p->keygroup; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') || *k == '_' || *k == '-')) {
            snprintf(err, errlen, "keygroup %s: only [A-Za-z0-9_-] allowed", p->keygroup);
            return NULL;
        }
    nstore *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base.ops = &nats_ops;
    s->base.ttl_ms = p->ttl_ms;
    snprintf(s->stream, sizeof s->stream, "DISCEDGE_%s", p->keygroup);
    snprintf(s->subjects, sizeof s->subjects, "dce.%s.t.", p->keygroup);
    snprintf(s->notify, sizeof s->notify, "dce.%s.n.", p->keygroup);
    s->cache = turncache_new(CACHE_SESSIONS);
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* "nats://a:4222,nats://b:4222" or "nats://a:4222,b:4222" */
    char *urls = strdup(p->url), *save = NULL;
    const char *servers[16];
    int n = 0;
    for (char *tok = strtok_r(urls, ",", &save); tok && n < 16; tok = strtok_r(NULL, ",", &save)) servers[n++] = tok;
    natsOptions *o = NULL;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK) st = natsOptions_SetServers(o, servers, n);
    /* the first server is the node's own (nearest): prefer it, fail over in order */
    if (st == NATS_OK) st = natsOptions_SetNoRandomize(o, true);
    if (st == NATS_OK) st = natsOptions_SetMaxReconnect(o, -1); /* a node outlives store outages */
    if (st == NATS_OK) st = natsOptions_SetReconnectWait(o, 250);
    if (st == NATS_OK) st = natsOptions_SetRetryOnFailedConnect(o, false, NULL, NULL);
    if (st == NATS_OK) st = natsOptions_SetName(o, "discedge");
    /* TLS with the deployment's own CA (deploy/nats): the server's
     * certificate must chain to it. tls:// URLs without one use the
     * system's CAs. */
    if (st == NATS_OK && p->tls_ca) st = natsOptions_SetSecure(o, true);
    if (st == NATS_OK && p->tls_ca) st = natsOptions_LoadCATrustedCertificates(o, p->tls_ca);
    if (st == NATS_OK) st = natsConnection_Connect(&s->nc, o);
    natsOptions_Destroy(o);
    free(urls);
    char shown[512];
    store_url_redact(p->url, shown, sizeof shown);
    if (st != NATS_OK) {
        snprintf(err, errlen, "cannot connect to %s: %s (%s)", shown, natsStatus_GetText(st), nats_GetLastError(NULL));
        free(s);
        return NULL;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    s->leaf = p->core_domain && *p->core_domain;
    if (s->leaf) {
        jo.Domain = p->core_domain;
        snprintf(s->api, sizeof s->api, "$JS.%s.API", p->core_domain);
    } else {
        snprintf(s->api, sizeof s->api, "$JS.API");
    }
    char all_notes[128];
    snprintf(all_notes, sizeof all_notes, "%s>", s->notify);
    jsOptions lo;
    jsOptions_Init(&lo);
    lo.Wait = 5000;
    if (natsConnection_JetStream(&s->js, s->nc, &jo) != NATS_OK ||
        (s->leaf && natsConnection_JetStream(&s->jsl, s->nc, &lo) != NATS_OK) || ensure_stream(s, p->replicas, err, errlen) != 0 ||
        natsConnection_Subscribe(&s->notes, s->nc, all_notes, on_note, s) != NATS_OK) {
        if (!err[0]) snprintf(err, errlen, "cannot use JetStream on %s", shown);
        nats_close(&s->base);
        return NULL;
    }
    natsSubscription_SetPendingLimits(s->notes, -1, -1);
    if (!s->leaf) s->jsl = s->js;
    return &s->base;
}


static uint64_t msg_seq(natsMsg *m) {
    const char *v = NULL;
    if (natsMsgHeader_Get(m, "Nats-Sequence", &v) == NATS_OK && v) return strtoull(v, NULL, 10);
    return natsMsg_GetSequence(m);
}

/* Direct get of the message after seq (or the last one when last=true). */
static store_status direct_get(nstore *s, jsCtx *js, const char *subj, uint64_t seq, bool last, natsMsg **out) {
    jsDirectGetMsgOptions o;
    jsDirectGetMsgOptions_Init(&o);
    if (last) {
        o.LastBySubject = subj;
    } else {
        o.Sequence = seq;
        o.NextBySubject = subj;
    }
    natsStatus st = js_DirectGetMsg(out, js, s->stream, NULL, &o);
    if (st == NATS_NOT_FOUND) return STORE_NOT_FOUND;
    return st == NATS_OK ? STORE_OK : nats_fail("direct get", st, 0);
}

/* Opens (when sealed, under its subject subj: seal.h) and decodes a commit
 * record of session sid. */
static store_status decode(nstore *s, natsMsg *m, const char *subj, const char *sid, session_meta *meta,
                           turn_rec *t) {
    strbuf buf = {0};
    size_t n = (size_t)natsMsg_GetDataLength(m);
    const void *p = store_record_open(&s->base, subj, natsMsg_GetData(m), &n, &buf);
    codec_status cs = p ? codec_commit_decode(p, n, meta, t) : CODEC_OK;
    strbuf_free(&buf);
    if (!p) return STORE_CORRUPT;
    return cs ? store_fail(STORE_CORRUPT, "record of %s: %s", sid, codec_status_str(cs)) : STORE_OK;
}

static store_status nats_meta_get(store *base, const char *sid, session_meta *out) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    natsMsg *m = NULL;
    store_status st = direct_get(s, s->jsl, subj, 0, true, &m);
    if (st == STORE_OK) st = decode(s, m, subj, sid, out, NULL);
    natsMsg_Destroy(m);
    if (st == STORE_OK && (out->turn == 0 || store_expired(base, out->last_ms, clock_wall_ms()))) st = STORE_NOT_FOUND;
    return st;
}

/* Appends the session's messages from stream sequence `from` on, up to
 * `upto`, to turns[0..*n). Any replica may answer each get; stopping at the
 * first "not found" yields a prefix of the session, which is safe (see top). */
static store_status walk(nstore *s, jsCtx *js, const char *subj, const char *sid, uint64_t from, uint64_t upto, turn_rec **turns,
                         uint32_t *n, uint32_t *cap, session_meta *meta, uint64_t *last_seq) {
    for (uint64_t seq = from; seq <= upto;) {
        natsMsg *m = NULL;
        store_status st = direct_get(s, js, subj, seq, false, &m);
        if (st == STORE_NOT_FOUND) break;
        if (st != STORE_OK) return st;
        if (*n == *cap) {
            uint32_t c = *cap ? *cap * 2 : 8;
            *turns = dc_xrealloc(*turns, c * sizeof **turns);
            memset(*turns + *cap, 0, (c - *cap) * sizeof **turns);
            *cap = c;
        }
        turn_rec *t = &(*turns)[*n];
        session_meta mm;
        st = decode(s, m, subj, sid, &mm, t);
        seq = msg_seq(m) + 1;
        natsMsg_Destroy(m);
        if (st != STORE_OK) return st;
        *last_seq = seq - 1;
        /* A subject can hold earlier lives of a session id (deleted or
         * expired, then started over): a tombstone or a new turn 1 begins
         * a new life, and only the latest counts. */
        if (t->turn == 0) {
            *n = 0;
            continue;
        }
        if (t->turn == 1 && *n > 0) {
            turn_rec tmp = (*turns)[0];
            (*turns)[0] = *t;
            *t = tmp;
            *n = 0;
        } else if (t->turn != *n + 1) {
            return store_fail(STORE_CORRUPT, "session %s: turn %u found where %u belongs", sid, t->turn, *n + 1);
        }
        (*n)++;
        *meta = mm;
    }
    return STORE_OK;
}

/* Reads a session through js (the local mirror or the core). The last
 * message says where the session stands; this node's cache, then the stream,
 * supply the turns up to it. A replica that is behind what this node itself
 * committed or read is answered from the cache (read-your-writes). */
static store_status load_via(nstore *s, jsCtx *js, const char *sid, session_meta *meta, turn_rec **turns) {
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    natsMsg *m = NULL;
    store_status st = direct_get(s, js, subj, 0, true, &m);
    session_meta last_meta;
    if (st == STORE_OK) st = decode(s, m, subj, sid, &last_meta, NULL);
    uint64_t last = st == STORE_OK ? msg_seq(m) : 0;
    natsMsg_Destroy(m);
    if (st != STORE_OK && st != STORE_NOT_FOUND) return st;

    turn_rec *out = NULL;
    uint64_t seq = 0;
    uint32_t n = turncache_get(s->cache, sid, &out, meta, &seq), cap = n;
    if (n && seq > last) { /* the replica is behind this node */
        if (!store_expired(&s->base, meta->last_ms, clock_wall_ms())) {
            *turns = out;
            return STORE_OK;
        }
        st = STORE_NOT_FOUND;
    }
    if (st == STORE_OK && (last_meta.turn == 0 || store_expired(&s->base, last_meta.last_ms, clock_wall_ms())))
        st = STORE_NOT_FOUND; /* a tombstone, or idle past the TTL */
    if (st != STORE_OK) {
        store_turns_free(out, cap);
        turncache_drop(s->cache, sid);
        return st;
    }
    if (n && last_meta.turn < n) { /* deleted and started over since */
        store_turns_free(out, cap);
        out = NULL;
        n = cap = 0;
    }
    if (seq != last || n == 0) st = walk(s, js, subj, sid, n ? seq + 1 : 1, last, &out, &n, &cap, meta, &seq);
    if (st != STORE_OK || n == 0) {
        store_turns_free(out, cap);
        return st != STORE_OK ? st : STORE_NOT_FOUND;
    }
    turncache_put(s->cache, sid, out, n, meta, seq);
    *turns = out;
    return STORE_OK;
}

static store_status nats_session_load(store *base, const char *sid, uint32_t want, session_meta *meta,
                                      turn_rec **turns) {
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
            return STORE_OK;
        }
        store_turns_free(cached, n);
        char why[256];
        snprintf(why, sizeof why, "%s", store_last_error());
        store_fail(STORE_UNAVAILABLE, "%s; session %s is not cached on this node", why, sid);
    }
    return st;
}

/* The session's last message as the stream leader has it. */
static store_status leader_last(nstore *s, const char *subj, const char *sid, session_meta *meta, uint64_t *seq) {
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetLastMsg(&m, s->js, s->stream, subj, NULL, &jerr);
    if (st == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) {
        natsMsg_Destroy(m);
        return STORE_NOT_FOUND;
    }
    if (st != NATS_OK) return nats_fail("get last", st, jerr);
    store_status rs = decode(s, m, subj, sid, meta, NULL);
    *seq = natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return rs;
}

/* Appends one record to the session's subject if its last message is still
 * at sequence `expect` (0: no message). The stream leader checks that, under
 * concurrency: of two writers expecting the same sequence, one gets 10071. */
static store_status publish_record(nstore *s, const char *subj, const session_meta *meta, const turn_rec *t,
                                   uint64_t expect, uint64_t *seq) {
    strbuf rec = {0};
    codec_commit_encode(meta, t, &rec);
    store_record_seal(&s->base, subj, &rec);
    natsMsg *m = NULL;
    char seqbuf[24];
    snprintf(seqbuf, sizeof seqbuf, "%llu", (unsigned long long)expect);
    natsStatus ns = natsMsg_Create(&m, subj, NULL, rec.s, (int)rec.n);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Nats-Expected-Last-Subject-Sequence", seqbuf);
    strbuf_free(&rec);
    jsErrCode jerr = 0;
    jsPubAck *ack = NULL;
    if (ns == NATS_OK) ns = js_PublishMsg(&ack, s->js, m, NULL, &jerr);
    if (ns == NATS_OK) *seq = ack->Sequence;
    jsPubAck_Destroy(ack);
    natsMsg_Destroy(m);
    if (ns == NATS_OK) return STORE_OK;
    /* 10071 from a single server, 10164 ("wrong last sequence", no number)
     * from a clustered stream: the same refusal */
    if (jerr == JSStreamWrongLastSequenceErr || jerr == 10164) return STORE_CONFLICT;
    return nats_fail("publish", ns, jerr);
}

static store_status nats_turn_commit(store *base, const char *sid, const session_meta *meta, const turn_rec *t) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    /* The expected last sequence: from this node's own read of turn N-1 when
     * it has one (the server refuses the publish if anything arrived since,
     * so a stale belief costs a 409, never a double commit); otherwise, and
     * always for turn 1, from the stream leader. */
    uint32_t cached_turn = 0;
    uint64_t expect = 0, seq = 0;
    bool from_cache = t->turn > 1 && turncache_last(s->cache, sid, &cached_turn, &expect) &&
                      cached_turn == t->turn - 1;
    if (!from_cache) {
        session_meta last;
        expect = 0;
        store_status st = leader_last(s, subj, sid, &last, &expect);
        if (st != STORE_OK && st != STORE_NOT_FOUND) return st;
        /* absent, deleted or expired: the id (re)starts at turn 1, after its last message */
        bool live = st == STORE_OK && last.turn > 0 && !store_expired(base, last.last_ms, clock_wall_ms());
        if ((live ? last.turn : 0) != t->turn - 1) return STORE_CONFLICT;
    }
    store_status st = publish_record(s, subj, meta, t, expect, &seq);
    if (st == STORE_CONFLICT && from_cache) {
        /* Refused on this node's cached view. Either another node committed
         * this turn (a real conflict), or the view was out of date (e.g. the
         * session was deleted and started over elsewhere while this node's
         * mirror lagged): then the reply was generated from the wrong
         * context, and the caller must read again. */
        turncache_drop(s->cache, sid);
        session_meta last;
        uint64_t lseq;
        store_status ls = leader_last(s, subj, sid, &last, &lseq);
        bool live = ls == STORE_OK && last.turn > 0 && !store_expired(base, last.last_ms, clock_wall_ms());
        return live && last.turn >= t->turn ? STORE_CONFLICT : STORE_STALE;
    }
    if (st != STORE_OK) return st;
    turncache_append(s->cache, sid, t, meta, seq);
    char note_subj[SUBJECT_MAX], num[16];
    snprintf(note_subj, sizeof note_subj, "%s%s", s->notify, sid);
    snprintf(num, sizeof num, "%u", t->turn);
    natsConnection_PublishString(s->nc, note_subj, num); /* a hint; losing it only delays a waiter */
    return STORE_OK;
}

/* Ends a session's life: a tombstone (a record of turn 0) after its last
 * message, then the older messages are purged from the core stream. The
 * tombstone is what mirrors see (they do not replicate purges), so every
 * node reads the session as gone; the id may start over at turn 1. */
static store_status bury(nstore *s, const char *sid, const char *subj) {
    for (int attempt = 0; attempt < 3; attempt++) {
        session_meta last;
        uint64_t seq = 0;
        store_status st = leader_last(s, subj, sid, &last, &seq);
        /* a last record that does not decode is buried all the same
         * (deleting is the only way out for such a session), under a
         * tombstone that does */
        if (st == STORE_CORRUPT && seq) last = (session_meta){.turn = 1, .mode = MODE_TOKENIZED, .user_id = "unreadable"};
        else if (st != STORE_OK) return st;
        if (last.turn == 0) return STORE_NOT_FOUND;
        turn_rec tomb = {.kind = TURN_TOKENS, .turn = 0, .fingerprint = last.fingerprint};
        last.turn = 0;
        last.last_ms = clock_wall_ms();
        last.request_id[0] = '\0';
        st = publish_record(s, subj, &last, &tomb, seq, &seq);
        if (st == STORE_CONFLICT) continue; /* a turn committed meanwhile: bury that one */
        if (st != STORE_OK) return st;
        turncache_drop(s->cache, sid);
        jsOptions o;
        jsOptions_Init(&o);
        o.Stream.Purge.Subject = subj;
        o.Stream.Purge.Keep = 1;
        jsErrCode jerr = 0;
        natsStatus ns = js_PurgeStream(s->js, s->stream, &o, &jerr);
        if (ns != NATS_OK) log_warn("purge of %s after its tombstone failed: %s", subj, natsStatus_GetText(ns));
        return STORE_OK;
    }
    return store_fail(STORE_IO, "session %s keeps changing; not deleted", sid);
}

static store_status nats_session_delete(store *base, const char *sid) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    return bury(s, sid, subj);
}

/* Purges sessions idle past the TTL. The stream lists its subjects; each
 * session's last message says when it was last active. */
static long nats_expire(store *base, int64_t now_ms) {
    nstore *s = (nstore *)base;
    if (base->ttl_ms <= 0) return 0;
    char api[200];
    snprintf(api, sizeof api, "%s.STREAM.INFO.%s", s->api, s->stream);
    char filter[128];
    snprintf(filter, sizeof filter, "{\"subjects_filter\":\"%s>\"}", s->subjects);
    natsMsg *reply = NULL;
    if (natsConnection_RequestString(&reply, s->nc, api, filter, 5000) != NATS_OK) return -1;
    json_t *resp = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    json_t *subjects = json_object_get(json_object_get(resp, "state"), "subjects");
    long removed = 0;
    const char *subj;
    json_t *count;
    size_t plen = strlen(s->subjects);
    json_object_foreach(subjects, subj, count) {
        (void)count;
        if (strncmp(subj, s->subjects, plen) != 0) continue;
        const char *sid = subj + plen;
        session_meta last;
        uint64_t seq;
        if (leader_last(s, subj, sid, &last, &seq) == STORE_OK && last.turn > 0 &&
            store_expired(base, last.last_ms, now_ms) && bury(s, sid, subj) == STORE_OK)
            removed++;
    }
    json_decref(resp);
    return removed;
}

static store_status nats_wait(store *base, const char *sid, uint32_t turn, int timeout_ms) {
    nstore *s = (nstore *)base;
    waiter w = {.sid = sid, .turn = turn};
    /* register before checking, so a commit between the check and the wait
     * still wakes us */
    pthread_mutex_lock(&s->mu);
    w.next = s->waiters;
    s->waiters = &w;
    pthread_mutex_unlock(&s->mu);
    session_meta m;
    bool seen = nats_meta_get(base, sid, &m) == STORE_OK && m.turn >= turn;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    while (!seen && !w.done)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) == ETIMEDOUT) break;
    seen = seen || w.done;
    waiter **pp = &s->waiters;
    while (*pp != &w) pp = &(*pp)->next;
    *pp = w.next;
    pthread_mutex_unlock(&s->mu);
    return seen ? STORE_OK : STORE_NOT_FOUND;
}

static const store_ops nats_ops = {
    .wait = nats_wait,
    .name = "nats",
    .meta_get = nats_meta_get,
    .session_load = nats_session_load,
    .turn_commit = nats_turn_commit,
    .session_delete = nats_session_delete,
    .expire = nats_expire,
    .close = nats_close,
};
