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
 * Exactly-once turns: a commit first reads the session's last message from
 * the stream leader (STREAM.MSG.GET, not a possibly stale direct get), checks
 * that it is turn N-1, and publishes turn N with
 * Nats-Expected-Last-Subject-Sequence set to that message's sequence. The
 * server accepts the publish only if no message arrived on the subject in
 * between, so of two nodes racing for turn N exactly one wins; the other gets
 * "wrong last sequence" (10071), which we report as STORE_CONFLICT.
 *
 * Reads use direct gets (allow_direct), which any replica may answer. A
 * replica may be behind, so a read may return a prefix of the session: that
 * is safe, because messages are immutable and the context manager compares
 * the stored turn with the client's turn counter and re-reads when behind.
 *
 * TTL: every message carries the session's last activity, so reads treat a
 * session idle past the TTL as absent; store_expire purges such sessions
 * (one subject at a time, never part of a session). */
#include <jansson.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "store_impl.h"

typedef struct {
    store base;
    natsConnection *nc;
    jsCtx *js;
    char stream[96];
    char subjects[96]; /* dce.<keygroup>.t. */
} nstore;

static const store_ops nats_ops;

#define SUBJECT_MAX (96 + ID_MAX + 1)

static void subject_of(const nstore *s, const char *sid, char out[SUBJECT_MAX]) {
    snprintf(out, SUBJECT_MAX, "%s%s", s->subjects, sid);
}

static store_status nats_fail(const char *what, natsStatus st, jsErrCode jerr) {
    return store_fail(STORE_IO, "%s: %s%s%s (jetstream error %d)", what, natsStatus_GetText(st),
                      nats_GetLastError(NULL) ? ": " : "", nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "",
                      (int)jerr);
}

/* Creates the keygroup's stream, or joins it when it exists. A plain JSON
 * request: the 3.4 C client's jsStreamConfig predates allow_direct. */
static int ensure_stream(nstore *s, int replicas, char *err, size_t errlen) {
    json_t *cfg = json_pack("{s:s, s:[s+], s:s, s:s, s:i, s:b, s:s, s:I}", "name", s->stream, "subjects", s->subjects,
                            ">", "retention", "limits", "storage", "file", "num_replicas", replicas, "allow_direct", 1,
                            "discard", "old", "duplicate_window", (json_int_t)120 * 1000000000LL);
    char *body = json_dumps(cfg, JSON_COMPACT);
    json_decref(cfg);
    char subj[160];
    snprintf(subj, sizeof subj, "$JS.API.STREAM.CREATE.%s", s->stream);
    natsMsg *reply = NULL;
    natsStatus st = natsConnection_RequestString(&reply, s->nc, subj, body, 5000);
    free(body);
    if (st != NATS_OK) {
        snprintf(err, errlen, "cannot create stream %s: %s (is JetStream enabled on the server?)", s->stream,
                 natsStatus_GetText(st));
        return -1;
    }
    json_t *resp = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    json_t *e = json_object_get(resp, "error");
    int rc = 0;
    if (e) {
        json_int_t code = json_integer_value(json_object_get(e, "err_code"));
        if (code == 10058) {
            /* exists with another configuration (e.g. replicas): join it as it is */
            log_info("stream %s exists with another configuration; using it as it is", s->stream);
        } else {
            snprintf(err, errlen, "cannot create stream %s: %s", s->stream,
                     json_string_value(json_object_get(e, "description")) ? json_string_value(json_object_get(e, "description")) : "error");
            rc = -1;
        }
    } else if (!resp) {
        snprintf(err, errlen, "cannot create stream %s: unreadable reply", s->stream);
        rc = -1;
    }
    json_decref(resp);
    return rc;
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
    if (st == NATS_OK) st = natsConnection_Connect(&s->nc, o);
    natsOptions_Destroy(o);
    free(urls);
    if (st != NATS_OK) {
        snprintf(err, errlen, "cannot connect to %s: %s", p->url, natsStatus_GetText(st));
        free(s);
        return NULL;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    if (natsConnection_JetStream(&s->js, s->nc, &jo) != NATS_OK || ensure_stream(s, p->replicas, err, errlen) != 0) {
        if (!err[0]) snprintf(err, errlen, "cannot use JetStream on %s", p->url);
        jsCtx_Destroy(s->js);
        natsConnection_Destroy(s->nc);
        free(s);
        return NULL;
    }
    return &s->base;
}

static void nats_close(store *base) {
    nstore *s = (nstore *)base;
    jsCtx_Destroy(s->js);
    natsConnection_Close(s->nc);
    natsConnection_Destroy(s->nc);
    free(s);
}

static uint64_t msg_seq(natsMsg *m) {
    const char *v = NULL;
    if (natsMsgHeader_Get(m, "Nats-Sequence", &v) == NATS_OK && v) return strtoull(v, NULL, 10);
    return natsMsg_GetSequence(m);
}

/* Direct get of the message after seq (or the last one when last=true). */
static store_status direct_get(nstore *s, const char *subj, uint64_t seq, bool last, natsMsg **out) {
    jsDirectGetMsgOptions o;
    jsDirectGetMsgOptions_Init(&o);
    if (last) {
        o.LastBySubject = subj;
    } else {
        o.Sequence = seq;
        o.NextBySubject = subj;
    }
    natsStatus st = js_DirectGetMsg(out, s->js, s->stream, NULL, &o);
    if (st == NATS_NOT_FOUND) return STORE_NOT_FOUND;
    return st == NATS_OK ? STORE_OK : nats_fail("direct get", st, 0);
}

static store_status decode(natsMsg *m, const char *sid, session_meta *meta, turn_rec *t) {
    codec_status cs = codec_commit_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), meta, t);
    return cs ? store_fail(STORE_CORRUPT, "record of %s: %s", sid, codec_status_str(cs)) : STORE_OK;
}

static store_status nats_meta_get(store *base, const char *sid, session_meta *out) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    natsMsg *m = NULL;
    store_status st = direct_get(s, subj, 0, true, &m);
    if (st == STORE_OK) st = decode(m, sid, out, NULL);
    natsMsg_Destroy(m);
    if (st == STORE_OK && store_expired(base, out->last_ms, clock_wall_ms())) st = STORE_NOT_FOUND;
    return st;
}

static store_status nats_session_load(store *base, const char *sid, session_meta *meta, turn_rec **turns) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    turn_rec *out = NULL;
    uint32_t n = 0, cap = 0;
    uint64_t seq = 1;
    store_status st;
    /* Walk the subject message by message. Any replica may answer each get;
     * stopping at the first "not found" yields a prefix of the session. */
    for (;;) {
        natsMsg *m = NULL;
        st = direct_get(s, subj, seq, false, &m);
        if (st == STORE_NOT_FOUND) break;
        if (st != STORE_OK) goto fail;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            out = dc_xrealloc(out, cap * sizeof *out);
            memset(out + n, 0, (cap - n) * sizeof *out);
        }
        st = decode(m, sid, meta, &out[n]);
        seq = msg_seq(m) + 1;
        natsMsg_Destroy(m);
        if (st != STORE_OK) goto fail;
        if (out[n].turn != n + 1 || meta->turn != n + 1) {
            st = store_fail(STORE_CORRUPT, "session %s: turn %u found where %u belongs", sid, out[n].turn, n + 1);
            n++;
            goto fail;
        }
        n++;
    }
    if (n == 0 || store_expired(base, meta->last_ms, clock_wall_ms())) {
        store_turns_free(out, n);
        return STORE_NOT_FOUND;
    }
    *turns = out;
    return STORE_OK;
fail:
    store_turns_free(out, n);
    return st;
}

static store_status purge_subject(nstore *s, const char *subj) {
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Subject = subj;
    jsErrCode jerr = 0;
    natsStatus st = js_PurgeStream(s->js, s->stream, &o, &jerr);
    return st == NATS_OK ? STORE_OK : nats_fail("purge", st, jerr);
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
    store_status rs = decode(m, sid, meta, NULL);
    *seq = natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return rs;
}

static store_status nats_turn_commit(store *base, const char *sid, const session_meta *meta, const turn_rec *t) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    session_meta last;
    uint64_t expect = 0;
    store_status st = leader_last(s, subj, sid, &last, &expect);
    if (st == STORE_OK && store_expired(base, last.last_ms, clock_wall_ms())) {
        /* an expired session starts over: clear it first, then expect nothing */
        if (t->turn != 1) return STORE_CONFLICT;
        if ((st = purge_subject(s, subj)) != STORE_OK) return st;
        st = STORE_NOT_FOUND;
        expect = 0;
    }
    if (st == STORE_NOT_FOUND) {
        if (t->turn != 1) return STORE_CONFLICT;
        expect = 0;
    } else if (st != STORE_OK) {
        return st;
    } else if (last.turn != t->turn - 1) {
        return STORE_CONFLICT;
    }

    strbuf rec = {0};
    codec_commit_encode(meta, t, &rec);
    natsMsg *m = NULL;
    char seqbuf[24];
    snprintf(seqbuf, sizeof seqbuf, "%llu", (unsigned long long)expect);
    natsStatus ns = natsMsg_Create(&m, subj, NULL, rec.s, (int)rec.n);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Nats-Expected-Last-Subject-Sequence", seqbuf);
    strbuf_free(&rec);
    jsErrCode jerr = 0;
    jsPubAck *ack = NULL;
    if (ns == NATS_OK) ns = js_PublishMsg(&ack, s->js, m, NULL, &jerr);
    jsPubAck_Destroy(ack);
    natsMsg_Destroy(m);
    if (ns == NATS_OK) return STORE_OK;
    if (jerr == JSStreamWrongLastSequenceErr) return STORE_CONFLICT;
    return nats_fail("publish", ns, jerr);
}

static store_status nats_session_delete(store *base, const char *sid) {
    nstore *s = (nstore *)base;
    char subj[SUBJECT_MAX];
    subject_of(s, sid, subj);
    session_meta last;
    uint64_t seq;
    store_status st = leader_last(s, subj, sid, &last, &seq);
    if (st != STORE_OK) return st;
    return purge_subject(s, subj);
}

/* Purges sessions idle past the TTL. The stream lists its subjects; each
 * session's last message says when it was last active. */
static long nats_expire(store *base, int64_t now_ms) {
    nstore *s = (nstore *)base;
    if (base->ttl_ms <= 0) return 0;
    char api[160];
    snprintf(api, sizeof api, "$JS.API.STREAM.INFO.%s", s->stream);
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
        if (leader_last(s, subj, sid, &last, &seq) == STORE_OK && store_expired(base, last.last_ms, now_ms) &&
            purge_subject(s, subj) == STORE_OK)
            removed++;
    }
    json_decref(resp);
    return removed;
}

static const store_ops nats_ops = {
    .name = "nats",
    .meta_get = nats_meta_get,
    .session_load = nats_session_load,
    .turn_commit = nats_turn_commit,
    .session_delete = nats_session_delete,
    .expire = nats_expire,
    .close = nats_close,
};
