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
 * Nats-Expected-Last-Subject-Sequence set to the sequence of the very
 * message the turn's context was read from (turn N-1's: meta->rev, store.h;
 * for turn 1, the stream leader's last message, which must be no live
 * session). The stream leader accepts the publish only if no message arrived
 * on the subject since, so of two nodes racing for turn N exactly one wins;
 * the other gets "wrong last sequence", reported as STORE_CONFLICT (or
 * STORE_STALE when the session is no longer the one that was read).
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
 * messages after those this node has seen (usually none, or the one or two
 * committed elsewhere since a hand-over), all in one batched direct get: a
 * read costs one round trip to the copy it asks, whatever it is missing, so
 * a handover whose mirror lags costs one round trip to the core, not one
 * per missing turn (load_via).
 *
 * Waiting for replication: every commit is followed by a small core-NATS
 * notification on dce.<keygroup>.n.<session> carrying the turn number; each
 * node keeps ONE subscription to all of them (creating one per request would
 * cost milliseconds) and wakes the requests waiting for that session.
 * Notifications are hints: a waiter always re-reads the store, so a lost or
 * early notification costs time, never correctness.
 *
 * Ending a session (DELETE, or idle past the TTL): a tombstone record (turn 0,
 * naming no owner and holding no content) is appended, then every message
 * before it is purged from the core stream. Mirrors do not replicate purges
 * (checked on nats-server 2.15: a purge on the core leaves a mirror's copy
 * as it was) but do replicate the tombstone, so every node reads the session
 * as gone at once; each leaf node then purges the same messages from its own
 * mirror (the deleting node at once, the others when the tombstone's
 * notification reaches them, and any node whose read finds an earlier life
 * on its mirror, or whose sweep finds its mirror holding more of a session
 * than the core: reclaim_below). What is left of a deleted session is its
 * tombstone (docs/SECURITY.md). Every record carries the session's last
 * activity, so a session idle past the TTL reads as absent even before the
 * sweep. An id can start over at turn 1; readers skip earlier lives.
 *
 * Ambiguous commits: a publish whose acknowledgement is lost (timeout,
 * connection lost) may or may not have been stored. Each commit carries a
 * Nats-Msg-Id of its own; after an ambiguous publish the same message is
 * published again, and when the stream refuses it because the subject moved
 * on, the message after the expected one says whether it was ours
 * (settle_ambiguous). A commit answers 503 only when that cannot be found out.
 *
 * Fault injection: with DC_FAULT_BURY_PAUSE_MS=N in the environment, ending a
 * session logs "fault: bury paused" and sleeps N ms after reading the
 * session's last message and again after appending the tombstone, so that a
 * test can commit in between (tests/integration/test_hardening_store.py).
 * With DC_FAULT_NO_BATCH=1 the node reads as if its servers refused batched
 * gets (one round trip per message, as with a nats-server before 2.11), so
 * that the fallback is tested too (tests/integration/test_handover_read.py). */
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

/* A batched read waiting for its replies (batch_get, on_reply); guarded
 * by the store's mu. */
typedef struct reply_wait {
    uint64_t id;     /* the last token of its reply subject */
    natsMsg **v;     /* the records so far */
    int n, cap;
    natsMsg *end;    /* what ended it: a status (EOB, 404...), or a record of a server that does not batch */
    bool done;
    struct reply_wait *next;
} reply_wait;

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
    pthread_mutex_t mu; /* guards waiters and replies */
    pthread_cond_t cv;
    waiter *waiters;
    /* store_watch's, under watch_mu, which a call of it holds: once
     * store_watch(NULL) returns, no call is running (the watcher may go) */
    pthread_mutex_t watch_mu;
    store_watch_fn watch;
    void *watch_ud;
    char node[ID_MAX + 1]; /* store_params.node_id, told with each commit */
    natsSubscription *reply_sub; /* <inbox>.*: replies to batched gets (on_reply) */
    char inbox[64];
    atomic_uint_fast64_t reply_seq;
    reply_wait *replies;
    turncache *cache;
    int fault_bury_pause_ms; /* DC_FAULT_BURY_PAUSE_MS (see top); 0 normally */
    atomic_bool no_batch[2]; /* [core]: that copy's server refused a batched get (read_from) */
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
    if (s->reply_sub) natsSubscription_Unsubscribe(s->reply_sub);
    natsSubscription_Destroy(s->reply_sub);
    if (s->jsl != s->js) jsCtx_Destroy(s->jsl);
    jsCtx_Destroy(s->js);
    if (s->nc) natsConnection_Close(s->nc);
    natsConnection_Destroy(s->nc);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->watch_mu);
    turncache_free(s->cache);
    free(s);
}

static void reclaim_below(nstore *s, bool mirror, const char *subj, uint64_t below);
static bool tombstone_at(nstore *s, const char *subj, const char *sid, uint64_t seq);

/* The node-wide subscription: a commit of `turn` of a session happened
 * (payload "TURN"), or the session ended with a tombstone at stream sequence
 * SEQ (payload "0 SEQ"): a leaf node then drops what its mirror holds of the
 * ended life, once the core confirms the tombstone (a note is only a hint). */
static void on_note(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc;
    (void)sub;
    nstore *s = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(s->notify);
    if (strncmp(subj, s->notify, plen) == 0) {
        const char *sid = subj + plen;
        char num[32 + ID_MAX] = {0}, *rest = NULL;
        int n = natsMsg_GetDataLength(msg);
        memcpy(num, natsMsg_GetData(msg), n > 0 && n < (int)sizeof num ? (size_t)n : 0);
        uint32_t turn = (uint32_t)strtoul(num, &rest, 10);
        uint64_t tomb = turn == 0 && rest ? strtoull(rest, NULL, 10) : 0;
        if (tomb) turncache_drop(s->cache, sid); /* no more use for it, whether or not the note is true */
        if (tomb && s->leaf && id_is_valid(sid)) {
            char tsubj[SUBJECT_MAX];
            subject_of(s, sid, tsubj);
            if (tombstone_at(s, tsubj, sid, tomb)) reclaim_below(s, true, tsubj, tomb);
        }
        pthread_mutex_lock(&s->mu);
        bool woke = false;
        for (waiter *w = s->waiters; w; w = w->next)
            if (!w->done && turn >= w->turn && !strcmp(w->sid, sid)) w->done = woke = true;
        if (woke) pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        /* a commit's note: "TURN NODE" (NODE since issue 15; older nodes
         * send "TURN"); an end's: "0 SEQ" */
        char node[ID_MAX + 1] = "";
        if (turn > 0 && rest && *rest == ' ') {
            snprintf(node, sizeof node, "%s", rest + 1);
            if (!id_is_valid(node)) node[0] = '\0';
        }
        pthread_mutex_lock(&s->watch_mu);
        if (s->watch && id_is_valid(sid) && (turn > 0 || tomb)) s->watch(s->watch_ud, sid, turn, node);
        pthread_mutex_unlock(&s->watch_mu);
    }
    natsMsg_Destroy(msg);
}

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/* The node's one subscription for replies to batched gets (batch_get):
 * <inbox>.*, a unique inbox (servers linked as leaf nodes share subjects).
 * Unbounded pending: a reply is bounded by BATCH_BYTES per read in flight,
 * and a record dropped as a slow consumer would only make the read time out. */
static natsStatus subscribe_replies(nstore *s) {
    natsInbox *inbox = NULL;
    natsStatus ns = natsInbox_Create(&inbox);
    if (ns != NATS_OK) return ns;
    snprintf(s->inbox, sizeof s->inbox, "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    char subj[sizeof s->inbox + 2];
    snprintf(subj, sizeof subj, "%s.*", s->inbox);
    ns = natsConnection_Subscribe(&s->reply_sub, s->nc, subj, on_reply, s);
    if (ns == NATS_OK) ns = natsSubscription_SetPendingLimits(s->reply_sub, -1, -1);
    return ns;
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
    snprintf(s->node, sizeof s->node, "%s", p->node_id && id_is_valid(p->node_id) ? p->node_id : "");
    s->cache = turncache_new(CACHE_SESSIONS);
    const char *pause = getenv("DC_FAULT_BURY_PAUSE_MS");
    s->fault_bury_pause_ms = pause ? atoi(pause) : 0;
    const char *no_batch = getenv("DC_FAULT_NO_BATCH");
    atomic_init(&s->no_batch[0], no_batch && *no_batch == '1');
    atomic_init(&s->no_batch[1], no_batch && *no_batch == '1');
    atomic_init(&s->reply_seq, 0);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->watch_mu, NULL);
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
        natsConnection_Subscribe(&s->notes, s->nc, all_notes, on_note, s) != NATS_OK || subscribe_replies(s) != NATS_OK) {
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
    store_count_trip(js == s->js);
    if (st == NATS_NOT_FOUND) return STORE_NOT_FOUND;
    return st == NATS_OK ? STORE_OK : nats_fail("direct get", st, 0);
}

/* Drops the messages of subj below stream sequence `below` (UINT64_MAX: all)
 * from the core stream, or (mirror) from this node's own mirror in leaf
 * mode. Callers pass the sequence of a tombstone, of the turn 1 that starts
 * the session's latest life, or of the core's first message of the session:
 * everything before it is an earlier life, which no reader uses, so
 * dropping it is always safe; failing to is logged and retried by the next
 * reader or sweep. Mirrors never get this from the core (purges are
 * not mirrored), hence the mirror variant. */
static void reclaim_below(nstore *s, bool mirror, const char *subj, uint64_t below) {
    if (below <= 1 || (mirror && !s->leaf)) return;
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Subject = subj;
    o.Stream.Purge.Sequence = below == UINT64_MAX ? 0 : below; /* up to, not including; UINT64_MAX: all */
    jsErrCode jerr = 0;
    natsStatus ns = js_PurgeStream(mirror ? s->jsl : s->js, s->stream, &o, &jerr);
    if (ns != NATS_OK)
        log_warn("purge of %s below %llu on the %s failed: %s", subj, (unsigned long long)below, mirror ? "mirror" : "core",
                 natsStatus_GetText(ns));
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

/* True when the core holds a tombstone of sid at exactly stream sequence seq. */
static bool tombstone_at(nstore *s, const char *subj, const char *sid, uint64_t seq) {
    natsMsg *m = NULL;
    session_meta meta;
    bool yes = direct_get(s, s->js, subj, seq, false, &m) == STORE_OK && msg_seq(m) == seq &&
               decode(s, m, subj, sid, &meta, NULL) == STORE_OK && meta.turn == 0;
    natsMsg_Destroy(m);
    return yes;
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
    store_status st = decode(s, m, subj, sid, &mm, t);
    if (st != STORE_OK) return st;
    r->last_seq = msg_seq(m);
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
 * come to the node's one reply subscription (on_reply), not to an inbox
 * subscribed per read: in leaf mode every new subscription is announced to
 * the core over the WAN link, and replication bytes are measured there.
 * Appends the records to *v (*n of them; the caller destroys them and frees
 * *v) and sets *more when the server stopped at the limits above.
 * STORE_NOT_FOUND: no message from `from` on. *refused: the server answered
 * like one that does not batch (before 2.11 the fields are ignored and the
 * reply is a single message without Nats-Num-Pending; or a 408 to the
 * request): nothing is appended then. */
static store_status batch_get(nstore *s, bool core, const char *subj, uint64_t from, natsMsg ***v, int *n,
                              bool *more, bool *refused) {
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
static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
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
                log_warn("the %s's nats-server refuses batched direct gets (before 2.11?): reading sessions one message "
                         "per round trip", core ? "core" : "mirror");
            break;
        }
        if (st == STORE_NOT_FOUND) return STORE_OK;
        if (st != STORE_OK || !more || n == 0) return st;
        from = r->last_seq + 1;
    }
    for (;;) {
        natsMsg *m = NULL;
        store_status st = direct_get(s, js, subj, from, false, &m);
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
    if (r.garbage_below) reclaim_below(s, s->leaf && js == s->jsl, subj, r.garbage_below);
    r.meta.rev = r.last_seq;
    if (r.last_seq != cached) turncache_put(s->cache, sid, r.turns, r.n, &r.meta, r.last_seq);
    *meta = r.meta;
    *turns = r.turns;
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

/* After an ambiguous publish of the message with id msgid, expecting the
 * subject's last message at `expect`: the stream refused it again because
 * the subject has moved on. The first message after `expect` says by whom:
 * ours (its Nats-Msg-Id) means the earlier attempt was stored. Any replica
 * may answer; one that has nothing after `expect` yet leaves it unknown
 * (STORE_UNAVAILABLE), and the caller asks again. */
static store_status settle_ambiguous(nstore *s, const char *subj, uint64_t expect, const char *msgid, uint64_t *seq) {
    natsMsg *m = NULL;
    store_status st = direct_get(s, s->js, subj, expect + 1, false, &m);
    if (st != STORE_OK) {
        natsMsg_Destroy(m);
        return STORE_UNAVAILABLE;
    }
    const char *id = NULL;
    bool ours = natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id && !strcmp(id, msgid);
    if (ours) *seq = msg_seq(m);
    natsMsg_Destroy(m);
    return ours ? STORE_OK : STORE_CONFLICT;
}

/* How often a commit is tried in all when its outcome stays unknown, before
 * the node gives up and answers 503 (each try waits up to the JetStream
 * timeout, 5 s, holding the session's lock). */
#define SETTLE_TRIES 3

/* Appends one record to the session's subject if its last message is still
 * at sequence `expect` (0: no message). The stream leader checks that, under
 * concurrency: of two writers expecting the same sequence, one gets 10071.
 * A lost acknowledgement is settled before answering (see top): STORE_OK
 * with the record's sequence when it was stored, STORE_CONFLICT when
 * another record took its place, STORE_UNAVAILABLE only while the store
 * cannot tell. */
static store_status publish_record(nstore *s, const char *subj, const session_meta *meta, const turn_rec *t,
                                   uint64_t expect, uint64_t *seq) {
    char seqbuf[24], msgid[33];
    if (id_random_hex(msgid) != 0) return store_fail(STORE_IO, "publish: no randomness for a message id");
    snprintf(seqbuf, sizeof seqbuf, "%llu", (unsigned long long)expect);
    strbuf rec = {0};
    codec_commit_encode(meta, t, &rec);
    store_record_seal(&s->base, subj, &rec);
    natsMsg *m = NULL;
    natsStatus ns = natsMsg_Create(&m, subj, NULL, rec.s, (int)rec.n);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Nats-Expected-Last-Subject-Sequence", seqbuf);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Nats-Msg-Id", msgid);
    strbuf_free(&rec);
    if (ns != NATS_OK) {
        natsMsg_Destroy(m);
        return nats_fail("publish", ns, 0);
    }
    store_status out = STORE_UNAVAILABLE;
    bool unsure = false; /* an earlier try may have been stored */
    for (int attempt = 1;; attempt++) {
        jsErrCode jerr = 0;
        jsPubAck *ack = NULL;
        ns = js_PublishMsg(&ack, s->js, m, NULL, &jerr);
        if (ns == NATS_OK) *seq = ack->Sequence;
        jsPubAck_Destroy(ack);
        if (ns == NATS_OK) {
            if (unsure) log_info("publish to %s: stored on try %d", subj, attempt);
            out = STORE_OK;
            break;
        }
        /* 10071 from a single server, 10164 ("wrong last sequence", no
         * number) from a clustered stream: the same refusal */
        if (jerr == JSStreamWrongLastSequenceErr || jerr == 10164) {
            out = unsure ? settle_ambiguous(s, subj, expect, msgid, seq) : STORE_CONFLICT;
            if (out != STORE_UNAVAILABLE) {
                if (unsure) log_info("publish to %s: %s", subj, out == STORE_OK ? "an earlier try was stored" : "another record was stored");
                break;
            }
        } else {
            /* A timeout or a lost connection leaves the outcome open; no
             * responders, or a stream that answered with an error, means
             * this try was not stored. */
            bool open = ns == NATS_TIMEOUT || ns == NATS_CONNECTION_CLOSED || ns == NATS_CONNECTION_DISCONNECTED;
            out = nats_fail("publish", ns, jerr);
            if (!open && !unsure) break;
            unsure = unsure || open;
        }
        if (attempt == SETTLE_TRIES) {
            char why[256];
            snprintf(why, sizeof why, "%s", store_last_error());
            out = store_fail(STORE_UNAVAILABLE, "%s; after %d tries it is not known whether this turn was committed "
                             "(retry with the same request_id)", why, attempt);
            break;
        }
        log_warn("publish to %s: %s; the record may have been stored: publishing it again (same Nats-Msg-Id)", subj,
                 natsStatus_GetText(ns));
        clock_sleep_ms(250 * attempt);
    }
    natsMsg_Destroy(m);
    return out;
}

static void notify(nstore *s, const char *sid, const char *what) {
    char note_subj[SUBJECT_MAX];
    snprintf(note_subj, sizeof note_subj, "%s%s", s->notify, sid);
    natsConnection_PublishString(s->nc, note_subj, what); /* a hint; losing it only delays a waiter */
}

static store_status nats_turn_commit(store *base, const char *sid, session_meta *meta, const turn_rec *t) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    /* The expected last sequence is the message the caller's context was
     * read from (meta->rev): the server refuses the publish if anything
     * arrived since, so neither a turn committed elsewhere nor a delete and
     * start-over of the id (same turn number, another life) can be
     * overwritten with this context. Turn 1 has no context: the stream
     * leader's last message must be no live session. */
    uint64_t expect = 0, seq = 0;
    bool over_expired = false; /* turn 1 after a life that expired but was never swept */
    if (t->turn > 1 && meta->rev) {
        expect = meta->rev;
    } else {
        session_meta last;
        store_status st = leader_last(s, subj, sid, &last, &expect);
        if (st != STORE_OK && st != STORE_NOT_FOUND) return st;
        bool live = st == STORE_OK && last.turn > 0 && !store_expired(base, last.last_ms, clock_wall_ms());
        if ((live ? last.turn : 0) != t->turn - 1) return STORE_CONFLICT;
        /* turn > 1 without a revision (a caller that did not read): at
         * least the same life, by its creation time and owner */
        if (t->turn > 1 && (last.created_ms != meta->created_ms || strcmp(last.user_id, meta->user_id) != 0))
            return STORE_STALE;
        over_expired = t->turn == 1 && st == STORE_OK && last.turn > 0;
    }
    store_status st = publish_record(s, subj, meta, t, expect, &seq);
    if (st == STORE_CONFLICT && t->turn > 1) {
        /* Refused. Either another node committed this turn (a real
         * conflict), or the caller's view was out of date (e.g. the session
         * was deleted and started over elsewhere while this node's mirror
         * lagged): then the reply was generated from the wrong context, and
         * the caller must read again. */
        turncache_drop(s->cache, sid);
        session_meta last;
        uint64_t lseq;
        store_status ls = leader_last(s, subj, sid, &last, &lseq);
        bool live = ls == STORE_OK && last.turn > 0 && !store_expired(base, last.last_ms, clock_wall_ms());
        return live && last.turn >= t->turn ? STORE_CONFLICT : STORE_STALE;
    }
    if (st != STORE_OK) return st;
    meta->rev = seq;
    turncache_append(s->cache, sid, t, meta, seq);
    if (over_expired) reclaim_below(s, false, subj, seq);
    char num[16 + ID_MAX];
    snprintf(num, sizeof num, "%u %s", t->turn, s->node);
    notify(s, sid, num);
    return STORE_OK;
}

static void fault_pause(nstore *s, const char *where, const char *sid) {
    if (s->fault_bury_pause_ms <= 0) return;
    log_warn("fault: bury paused %s (%s)", where, sid);
    clock_sleep_ms(s->fault_bury_pause_ms);
}

/* Ends a session's life: a tombstone (a record of turn 0) after its last
 * message, then every message before the tombstone is purged from the core
 * stream and from this node's mirror; the notification tells the other leaf
 * nodes to purge theirs (see top). The tombstone itself stays on the core:
 * a mirror that lags still learns from it that the life ended. It carries
 * no owner, model or content; only its time. The id may start over at turn 1.
 * idle_at > 0 (the expiry sweep): only while the session is still idle past
 * the TTL at that time; a turn that lands meanwhile keeps it alive
 * (STORE_CONFLICT then). */
static store_status bury(nstore *s, const char *sid, const char *subj, int64_t idle_at) {
    for (int attempt = 0; attempt < 3; attempt++) {
        session_meta last;
        uint64_t seq = 0, tomb_seq = 0;
        store_status st = leader_last(s, subj, sid, &last, &seq);
        /* a last record that does not decode is buried all the same
         * (deleting is the only way out for such a session; the tombstone
         * below decodes whatever it covers) */
        if (st == STORE_CORRUPT && seq) last = (session_meta){.turn = 1};
        else if (st != STORE_OK) return st;
        if (last.turn == 0) return STORE_NOT_FOUND;
        if (idle_at > 0 && !store_expired(&s->base, last.last_ms, idle_at)) return STORE_CONFLICT;
        fault_pause(s, "before the tombstone", sid);
        session_meta dead = {.mode = MODE_TOKENIZED, .turn = 0, .last_ms = clock_wall_ms()};
        turn_rec tomb = {.kind = TURN_TOKENS, .turn = 0};
        /* expecting exactly the message judged above: a turn committed
         * meanwhile refuses the tombstone, and is judged again */
        st = publish_record(s, subj, &dead, &tomb, seq, &tomb_seq);
        if (st == STORE_CONFLICT) continue;
        if (st != STORE_OK) return st;
        turncache_drop(s->cache, sid);
        fault_pause(s, "before the purge", sid);
        /* below the tombstone, not "keep the last one": a new life may
         * already have started after it */
        reclaim_below(s, false, subj, tomb_seq);
        reclaim_below(s, true, subj, tomb_seq);
        char note[40];
        snprintf(note, sizeof note, "0 %llu", (unsigned long long)tomb_seq);
        notify(s, sid, note);
        return STORE_OK;
    }
    return store_fail(STORE_IO, "session %s keeps changing; not deleted", sid);
}

static store_status nats_session_delete(store *base, const char *sid) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    return bury(s, sid, subj, 0);
}

/* The stream's subjects with their message counts, as the copy behind API
 * prefix `api` (the core's, or "$JS.API": this node's mirror) holds them.
 * False when it cannot be asked; *subjects may be NULL (no messages). The
 * caller frees *resp. */
static bool list_subjects(nstore *s, const char *api, json_t **resp, json_t **subjects) {
    char subj[200], filter[128];
    snprintf(subj, sizeof subj, "%s.STREAM.INFO.%s", api, s->stream);
    snprintf(filter, sizeof filter, "{\"subjects_filter\":\"%s>\"}", s->subjects);
    natsMsg *reply = NULL;
    *resp = *subjects = NULL;
    if (natsConnection_RequestString(&reply, s->nc, subj, filter, 5000) != NATS_OK) return false;
    *resp = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    json_t *state = json_object_get(*resp, "state");
    *subjects = json_object_get(state, "subjects");
    return state != NULL;
}

/* The stream sequence of the core's first message on subj, as the stream
 * leader has it; 0 when it holds none; UINT64_MAX when it cannot say. */
static uint64_t core_first_seq(nstore *s, const char *subj) {
    char api[200];
    snprintf(api, sizeof api, "%s.STREAM.MSG.GET.%s", s->api, s->stream);
    json_t *req = json_pack("{s:I, s:s}", "seq", (json_int_t)1, "next_by_subj", subj);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    natsMsg *reply = NULL;
    natsStatus st = natsConnection_RequestString(&reply, s->nc, api, body, 5000);
    free(body);
    if (st != NATS_OK) return UINT64_MAX;
    json_t *resp = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    json_t *m = json_object_get(resp, "message");
    uint64_t seq = UINT64_MAX;
    if (m) seq = (uint64_t)json_integer_value(json_object_get(m, "seq"));
    else if (json_integer_value(json_object_get(json_object_get(resp, "error"), "err_code")) == JSNoMessageFoundErr) seq = 0;
    json_decref(resp);
    return seq;
}

/* Purges sessions idle past the TTL. The stream lists its subjects; each
 * session's last message says when it was last active.
 * Leaf mode, whatever the TTL: this node's mirror also drops what it holds
 * of a session beyond what the core holds - lives the core purged, whose
 * notification this node missed (down, or its leaf server cut off, at the
 * time): everything below the core's first message of the session. The
 * mirror is listed before the core, so a session that appears meanwhile is
 * never taken for one the core dropped. */
static long nats_expire(store *base, int64_t now_ms) {
    nstore *s = (nstore *)base;
    json_t *mresp = NULL, *mirror = NULL, *resp = NULL, *subjects = NULL;
    bool mirror_listed = s->leaf && list_subjects(s, "$JS.API", &mresp, &mirror);
    if (!list_subjects(s, s->api, &resp, &subjects)) {
        json_decref(mresp);
        json_decref(resp);
        return -1;
    }
    long removed = 0;
    const char *subj;
    json_t *count;
    size_t plen = strlen(s->subjects);
    json_object_foreach(mirror_listed ? mirror : NULL, subj, count) {
        if (strncmp(subj, s->subjects, plen) != 0) continue;
        if (json_integer_value(count) <= json_integer_value(json_object_get(subjects, subj))) continue;
        uint64_t first = core_first_seq(s, subj);
        if (first != UINT64_MAX) reclaim_below(s, true, subj, first ? first : UINT64_MAX);
    }
    json_object_foreach(base->ttl_ms > 0 ? subjects : NULL, subj, count) {
        if (strncmp(subj, s->subjects, plen) != 0) continue;
        const char *sid = subj + plen;
        session_meta last;
        uint64_t seq;
        if (leader_last(s, subj, sid, &last, &seq) == STORE_OK && last.turn > 0 &&
            store_expired(base, last.last_ms, now_ms) && bury(s, sid, subj, now_ms) == STORE_OK)
            removed++;
    }
    json_decref(mresp);
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

static void nats_watch(store *base, store_watch_fn fn, void *ud) {
    nstore *s = (nstore *)base;
    pthread_mutex_lock(&s->watch_mu);
    s->watch = fn;
    s->watch_ud = ud;
    pthread_mutex_unlock(&s->watch_mu);
}

static const store_ops nats_ops = {
    .wait = nats_wait,
    .watch = nats_watch,
    .name = "nats",
    .meta_get = nats_meta_get,
    .session_load = nats_session_load,
    .turn_commit = nats_turn_commit,
    .session_delete = nats_session_delete,
    .expire = nats_expire,
    .close = nats_close,
};
