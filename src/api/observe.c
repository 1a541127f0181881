/* observe.c - see observe.h. */
#include "observe.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../util/clock.h"
#include "../util/hash.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "json.h"

/* A session counts as active while it had a turn here in this window. */
#define ACTIVE_WINDOW_MS (5 * 60 * 1000)

struct observe {
    metrics *mx;
    pthread_mutex_t mu;
    struct seen {
        uint64_t sid; /* hash of the session id: enough to count them */
        double at;
    } *seen;
    size_t n_seen, cap_seen;
    bool log_content;
};

static const double turn_s[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double store_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

observe *observe_new(bool log_content) {
    observe *o = calloc(1, sizeof *o);
    if (!o || !(o->mx = metrics_new())) {
        free(o);
        return NULL;
    }
    pthread_mutex_init(&o->mu, NULL);
    o->log_content = log_content;
    metrics *m = o->mx;
    metrics_define(m, "discedge_requests_total", METRIC_COUNTER, "HTTP requests by route and status.", NULL, 0);
    metrics_define(m, "discedge_turn_seconds", METRIC_HISTOGRAM, "Time of a generating request, by mode.", turn_s, 10);
    metrics_define(m, "discedge_prompt_tokens_total", METRIC_COUNTER,
                   "Tokens fed to the model (context and new input).", NULL, 0);
    metrics_define(m, "discedge_generated_tokens_total", METRIC_COUNTER, "Tokens generated.", NULL, 0);
    metrics_define(m, "discedge_store_read_seconds", METRIC_HISTOGRAM, "Reading a session's context from the store.",
                   store_s, 12);
    metrics_define(m, "discedge_store_commit_seconds", METRIC_HISTOGRAM, "Committing a turn to the store.", store_s,
                   12);
    metrics_define(m, "discedge_replication_waits_total", METRIC_COUNTER,
                   "Turns that waited for the previous turn to replicate here, by outcome.", NULL, 0);
    metrics_define(m, "discedge_replication_wait_seconds", METRIC_HISTOGRAM, "Time waited for replication.", store_s,
                   12);
    metrics_define(m, "discedge_stale_answers_total", METRIC_COUNTER,
                   "Answers from a context behind the client (consistency: available), not committed.", NULL, 0);
    metrics_define(m, "discedge_sessions_active", METRIC_GAUGE,
                   "Sessions with a turn on this node in the last 5 minutes.", NULL, 0);
    metrics_define(m, "discedge_kv_cache_hits_total", METRIC_COUNTER, "Generations that reused cached KV of a prefix.",
                   NULL, 0);
    metrics_define(m, "discedge_kv_cached_tokens_total", METRIC_COUNTER, "Input tokens whose KV was reused.", NULL, 0);
    metrics_define(m, "discedge_kv_prefilled_tokens_total", METRIC_COUNTER, "Input tokens prefilled.", NULL, 0);
    metrics_define(m, "discedge_kv_transfers_total", METRIC_COUNTER,
                   "KV states fetched from a peer, verified and loaded (issue 15 KV transfer).", NULL, 0);
    metrics_define(m, "discedge_kv_transfer_refused_total", METRIC_COUNTER,
                   "KV states from a peer refused: another model or KV type, or tokens not the stored ones.", NULL, 0);
    metrics_define(m, "discedge_kv_exports_total", METRIC_COUNTER, "KV states sent to peers.", NULL, 0);
    metrics_define(m, "discedge_kv_tokens", METRIC_GAUGE,
                   "Tokens whose KV is kept in memory, in the sequences and outside them.", NULL, 0);
    metrics_define(m, "discedge_kv_parked_bytes", METRIC_GAUGE,
                   "Memory of the KV kept outside the sequences (the part that follows the tokens kept).", NULL, 0);
    metrics_define(m, "discedge_engine_active", METRIC_GAUGE, "Requests generating now.", NULL, 0);
    metrics_define(m, "discedge_engine_queued", METRIC_GAUGE, "Requests waiting for a sequence.", NULL, 0);
    /* warm handover (warm.h): what it prefilled, and what that bought */
    metrics_define(m, "discedge_warm_tokens_total", METRIC_COUNTER, "Tokens prefilled by warm-up.", NULL, 0);
    metrics_define(m, "discedge_warm_seconds_total", METRIC_COUNTER, "Engine time spent on warm-up.", NULL, 0);
    metrics_define(m, "discedge_warm_used_total", METRIC_COUNTER,
                   "Warmed conversations whose next turn came here and used the warmed KV.", NULL, 0);
    metrics_define(m, "discedge_warm_unused_total", METRIC_COUNTER,
                   "Warmed conversations evicted or dropped before a turn used them.", NULL, 0);
    metrics_define(m, "discedge_warm_unused_seconds_total", METRIC_COUNTER,
                   "Engine time spent warming conversations that were then dropped unused.", NULL, 0);
    return o;
}

void observe_free(observe *o) {
    if (!o) return;
    metrics_free(o->mx);
    free(o->seen);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

/* Drops sessions outside the window; under mu. */
static void prune(observe *o, double now) {
    size_t k = 0;
    for (size_t i = 0; i < o->n_seen; i++)
        if (now - o->seen[i].at < ACTIVE_WINDOW_MS) o->seen[k++] = o->seen[i];
    o->n_seen = k;
}

static void saw_session(observe *o, const char *sid) {
    uint64_t h = hash_fnv1a(HASH_FNV_BASIS, sid, strlen(sid));
    double now = clock_mono_ms();
    pthread_mutex_lock(&o->mu);
    size_t i = 0;
    while (i < o->n_seen && o->seen[i].sid != h) i++;
    if (i == o->n_seen) {
        prune(o, now);
        i = o->n_seen;
        if (o->n_seen == o->cap_seen) {
            o->cap_seen = o->cap_seen ? 2 * o->cap_seen : 64;
            o->seen = dc_xrealloc(o->seen, o->cap_seen * sizeof *o->seen);
        }
        o->seen[o->n_seen++].sid = h;
    }
    o->seen[i].at = now;
    pthread_mutex_unlock(&o->mu);
}

void observe_request(observe *o, const char *method, const char *route, int status, double ms, const ctx_reply *rep) {
    char labels[160];
    snprintf(labels, sizeof labels, "route=\"%s\",status=\"%d\"", route, status);
    metrics_add(o->mx, "discedge_requests_total", labels, 1);
    if (!rep) {
        log_info("request method=%s route=%s status=%d ms=%.1f", method, route, status, ms);
        return;
    }
    const char *mode = ctx_mode_name(rep->mode);
    snprintf(labels, sizeof labels, "mode=\"%s\"", mode);
    if (status == 200) {
        metrics_observe(o->mx, "discedge_turn_seconds", labels, ms / 1e3);
        metrics_add(o->mx, "discedge_prompt_tokens_total", NULL, rep->context_tokens);
        metrics_add(o->mx, "discedge_generated_tokens_total", NULL, rep->llm.predicted_n);
        if (rep->session_id[0] && !rep->stale) saw_session(o, rep->session_id);
        if (rep->store_commit_ms > 0)
            metrics_observe(o->mx, "discedge_store_commit_seconds", NULL, rep->store_commit_ms / 1e3);
    }
    if (rep->store_read_ms > 0) metrics_observe(o->mx, "discedge_store_read_seconds", NULL, rep->store_read_ms / 1e3);
    if (rep->wait_ms > 0 || rep->retries > 0) {
        /* caught up: the turn went on with a current context; else it
         * failed as stale (strong) or answered stale (available) */
        bool behind = status == 503 || rep->stale;
        metrics_add(o->mx, "discedge_replication_waits_total", behind ? "outcome=\"behind\"" : "outcome=\"caught_up\"",
                    1);
        metrics_observe(o->mx, "discedge_replication_wait_seconds", NULL, rep->wait_ms / 1e3);
    }
    if (rep->stale && status == 200) metrics_add(o->mx, "discedge_stale_answers_total", NULL, 1);
    log_info("request method=%s route=%s status=%d ms=%.1f session=%s turn=%u mode=%s prompt_tokens=%d cached=%d "
             "generated=%d queue_ms=%.1f prompt_ms=%.1f predict_ms=%.1f store_read_ms=%.1f commit_ms=%.1f wait_ms=%.1f "
             "retries=%d stale=%d replayed=%d",
             method, route, status, ms, rep->session_id[0] ? rep->session_id : "-", rep->turn, mode,
             rep->context_tokens, rep->llm.cached_n, rep->llm.predicted_n, rep->llm.queue_ms, rep->llm.prompt_ms,
             rep->llm.predicted_ms, rep->store_read_ms, rep->store_commit_ms, rep->wait_ms, rep->retries, rep->stale,
             rep->replayed);
}

void observe_content(observe *o, const ctx_reply *rep, const char *prompt) {
    if (!o->log_content) return;
    json_t *p = json_string(prompt ? prompt : ""), *r = api_text_json(&rep->content);
    char *ps = json_dumps(p, JSON_ENCODE_ANY), *rs = json_dumps(r, JSON_ENCODE_ANY);
    log_info("content session=%s turn=%u prompt=%s reply=%s", rep->session_id[0] ? rep->session_id : "-", rep->turn,
             ps ? ps : "\"\"", rs ? rs : "\"\"");
    free(ps);
    free(rs);
    json_decref(p);
    json_decref(r);
}

void observe_render(observe *o, llm *m, strbuf *out) {
    pthread_mutex_lock(&o->mu);
    prune(o, clock_mono_ms());
    size_t active = o->n_seen;
    pthread_mutex_unlock(&o->mu);
    metrics_set(o->mx, "discedge_sessions_active", NULL, (double)active);
    llm_stats ls;
    llm_stats_get(m, &ls);
    /* the engine keeps its own counters: mirrored, not added */
    metrics_set(o->mx, "discedge_kv_cache_hits_total", NULL, (double)ls.kv_hits);
    metrics_set(o->mx, "discedge_kv_cached_tokens_total", NULL, (double)ls.cached_tokens);
    metrics_set(o->mx, "discedge_kv_prefilled_tokens_total", NULL, (double)ls.prefilled_tokens);
    metrics_set(o->mx, "discedge_kv_transfers_total", NULL, (double)ls.kv_imports);
    metrics_set(o->mx, "discedge_kv_transfer_refused_total", NULL, (double)ls.kv_import_refused);
    metrics_set(o->mx, "discedge_kv_exports_total", NULL, (double)ls.kv_exports);
    metrics_set(o->mx, "discedge_kv_tokens", NULL, (double)(ls.kv_slot_tokens + ls.kv_parked_tokens));
    metrics_set(o->mx, "discedge_kv_parked_bytes", NULL, (double)ls.kv_parked_bytes);
    metrics_set(o->mx, "discedge_engine_active", NULL, ls.active);
    metrics_set(o->mx, "discedge_engine_queued", NULL, ls.queued);
    metrics_set(o->mx, "discedge_warm_tokens_total", NULL, (double)ls.warm_tokens);
    metrics_set(o->mx, "discedge_warm_seconds_total", NULL, ls.warm_ms / 1000.0);
    metrics_set(o->mx, "discedge_warm_used_total", NULL, (double)ls.warm_used);
    metrics_set(o->mx, "discedge_warm_unused_total", NULL, (double)ls.warm_unused);
    metrics_set(o->mx, "discedge_warm_unused_seconds_total", NULL, ls.warm_unused_ms / 1000.0);
    metrics_render(o->mx, out);
}
