/* nats_open.c - connecting a node to NATS JetStream: the connection, the
 * keygroup's stream on the core (and in leaf mode its mirror in the node's
 * own domain), the node's two subscriptions (commit notes, replies to
 * batched reads), and closing it all. nats.c says what the store is. */
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
    json_t *mirror = json_pack("{s:s, s:s, s:b, s:{s:s, s:{s:s}}}", "name", s->stream, "storage", "file",
                               "allow_direct", 1, "mirror", "name", s->stream, "external", "api", s->api);
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

void nats_close(store *base) {
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
    ns = natsConnection_Subscribe(&s->reply_sub, s->nc, subj, nats_on_reply, s);
    if (ns == NATS_OK) ns = natsSubscription_SetPendingLimits(s->reply_sub, -1, -1);
    return ns;
}

store *store_nats_open(const store_params *p, char *err, size_t errlen) {
    for (const char *k = p->keygroup; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') || *k == '_' ||
              *k == '-')) {
            snprintf(err, errlen, "keygroup %s: only [A-Za-z0-9_-] allowed", p->keygroup);
            return NULL;
        }
    nstore *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base.ops = &nats_store_ops;
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
        (s->leaf && natsConnection_JetStream(&s->jsl, s->nc, &lo) != NATS_OK) ||
        ensure_stream(s, p->replicas, err, errlen) != 0 ||
        natsConnection_Subscribe(&s->notes, s->nc, all_notes, nats_on_note, s) != NATS_OK ||
        subscribe_replies(s) != NATS_OK) {
        if (!err[0]) snprintf(err, errlen, "cannot use JetStream on %s", shown);
        nats_close(&s->base);
        return NULL;
    }
    natsSubscription_SetPendingLimits(s->notes, -1, -1);
    if (!s->leaf) s->jsl = s->js;
    return &s->base;
}
