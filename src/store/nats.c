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
 * that the fallback is tested too (tests/integration/test_handover_read.py).
 *
 * Files: nats_open.c connects (the stream, the mirror, the subscriptions),
 * nats_read.c reads sessions, nats_notes.c waits for and follows commits;
 * this one commits and ends sessions. nats_impl.h is what they share. */
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

store_status nats_fail(const char *what, natsStatus st, jsErrCode jerr) {
    /* unreachable (no responders, timeouts, no connection) is "retry later",
     * not "broken" */
    bool unavailable = st == NATS_NO_RESPONDERS || st == NATS_TIMEOUT || st == NATS_CONNECTION_CLOSED ||
        st == NATS_CONNECTION_DISCONNECTED || st == NATS_NO_SERVER || jerr == 10008 /* cluster not avail */;
    return store_fail(unavailable ? STORE_UNAVAILABLE : STORE_IO, "%s: %s%s%s (jetstream error %d)", what,
                      natsStatus_GetText(st), nats_GetLastError(NULL) ? ": " : "",
                      nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "", (int)jerr);
}

/* Drops the messages of subj below stream sequence `below` (UINT64_MAX: all)
 * from the core stream, or (mirror) from this node's own mirror in leaf
 * mode. Callers pass the sequence of a tombstone, of the turn 1 that starts
 * the session's latest life, or of the core's first message of the session:
 * everything before it is an earlier life, which no reader uses, so
 * dropping it is always safe; failing to is logged and retried by the next
 * reader or sweep. Mirrors never get this from the core (purges are
 * not mirrored), hence the mirror variant. */
void nats_reclaim_below(nstore *s, bool mirror, const char *subj, uint64_t below) {
    if (below <= 1 || (mirror && !s->leaf)) return;
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Subject = subj;
    o.Stream.Purge.Sequence = below == UINT64_MAX ? 0 : below; /* up to, not including; UINT64_MAX: all */
    jsErrCode jerr = 0;
    natsStatus ns = js_PurgeStream(mirror ? s->jsl : s->js, s->stream, &o, &jerr);
    if (ns != NATS_OK)
        log_warn("purge of %s below %llu on the %s failed: %s", subj, (unsigned long long)below,
                 mirror ? "mirror" : "core", natsStatus_GetText(ns));
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
    store_status rs = nats_decode(s, m, subj, sid, meta, NULL);
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
    store_status st = nats_direct_get(s, s->js, subj, expect + 1, false, &m);
    if (st != STORE_OK) {
        natsMsg_Destroy(m);
        return STORE_UNAVAILABLE;
    }
    const char *id = NULL;
    bool ours = natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id && !strcmp(id, msgid);
    if (ours) *seq = nats_msg_seq(m);
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
                if (unsure)
                    log_info("publish to %s: %s", subj,
                             out == STORE_OK ? "an earlier try was stored" : "another record was stored");
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
            out = store_fail(STORE_UNAVAILABLE,
                             "%s; after %d tries it is not known whether this turn was committed "
                             "(retry with the same request_id)",
                             why, attempt);
            break;
        }
        log_warn("publish to %s: %s; the record may have been stored: publishing it again (same Nats-Msg-Id)", subj,
                 natsStatus_GetText(ns));
        clock_sleep_ms(250 * attempt);
    }
    natsMsg_Destroy(m);
    return out;
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
    if (over_expired) nats_reclaim_below(s, false, subj, seq);
    char num[16 + ID_MAX];
    snprintf(num, sizeof num, "%u %s", t->turn, s->node);
    nats_notify(s, sid, num);
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
        nats_reclaim_below(s, false, subj, tomb_seq);
        nats_reclaim_below(s, true, subj, tomb_seq);
        char note[40];
        snprintf(note, sizeof note, "0 %llu", (unsigned long long)tomb_seq);
        nats_notify(s, sid, note);
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
    else if (json_integer_value(json_object_get(json_object_get(resp, "error"), "err_code")) == JSNoMessageFoundErr)
        seq = 0;
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
        if (first != UINT64_MAX) nats_reclaim_below(s, true, subj, first ? first : UINT64_MAX);
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

const store_ops nats_store_ops = {
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
