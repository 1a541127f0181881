/* warm.c - see warm.h.
 *
 * The store's watch callback runs on the store's thread and must not
 * block, so it only queues the session; one thread of ours reads and hands
 * the context to the engine (which itself only queues: the prefill runs on
 * the engine's idle time). The queue holds one entry per session (a newer
 * turn replaces an older one: the warm-up of turn N+1 extends turn N's) and
 * at most QUEUE_MAX: under a burst of commits the oldest are dropped, since
 * the engine could not warm more than it keeps anyway. */
#include "warm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "window.h"

#define QUEUE_MAX 256

typedef struct {
    char sid[ID_MAX + 1];
    uint32_t turn; /* the turn to read up to */
} pending;

struct warm {
    warm_params p;
    char node[ID_MAX + 1];
    char *peers; /* ",edge-1,edge-3," (commas around each, for a whole-name match); NULL: any */
    llm *m;
    store *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pending q[QUEUE_MAX];
    int n;
    bool stop;
    pthread_t thread;
};

warm_params warm_default_params(void) {
    return (warm_params){.node_id = "", .window_s = 600, .peers = NULL, .reserve = 256};
}

void warm_kv_owner(const char *sid, char out[WARM_OWNER_MAX]) { snprintf(out, WARM_OWNER_MAX, "session:%s", sid); }

static void enqueue(warm *w, const char *sid, uint32_t turn) {
    pthread_mutex_lock(&w->mu);
    int i = 0;
    while (i < w->n && strcmp(w->q[i].sid, sid)) i++;
    if (i == w->n && w->n == QUEUE_MAX) { /* full: the oldest goes */
        memmove(&w->q[0], &w->q[1], (QUEUE_MAX - 1) * sizeof w->q[0]);
        i = --w->n;
    }
    if (i == w->n) {
        snprintf(w->q[i].sid, sizeof w->q[i].sid, "%s", sid);
        w->q[i].turn = 0;
        w->n++;
    }
    if (turn > w->q[i].turn) w->q[i].turn = turn;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* store_watch: on the store's thread, so only queue (or forget, which the
 * engine queues too). */
static void on_commit(void *ud, const char *sid, uint32_t turn, const char *node) {
    warm *w = ud;
    if (turn == 0) { /* ended somewhere: its KV here is no one's any more */
        char owner[WARM_OWNER_MAX];
        warm_kv_owner(sid, owner);
        llm_forget(w->m, owner);
        pthread_mutex_lock(&w->mu);
        for (int i = 0; i < w->n; i++)
            if (!strcmp(w->q[i].sid, sid)) {
                memmove(&w->q[i], &w->q[i + 1], (size_t)(w->n - i - 1) * sizeof w->q[0]);
                w->n--;
                break;
            }
        pthread_mutex_unlock(&w->mu);
        return;
    }
    if (!strcmp(node, w->node)) return; /* served here: its KV is here */
    if (w->peers) {
        char key[ID_MAX + 3];
        snprintf(key, sizeof key, ",%s,", node);
        if (!*node || !strstr(w->peers, key)) return; /* not a neighbour's (or an older node, which does not say) */
    }
    enqueue(w, sid, turn);
}

/* Reads sid and hands its context to the engine. */
static void warm_one(warm *w, const pending *pd) {
    session_meta meta;
    turn_rec *turns = NULL;
    /* the note can come before the record reaches this node's replica;
     * a read that wants the turn asks the core when the replica lags */
    store_status st = store_session_load(w->s, pd->sid, pd->turn, &meta, &turns);
    if (st != STORE_OK) return;
    int64_t age_ms = clock_wall_ms() - meta.last_ms;
    /* only this node's own kind of session: tokenized (raw mode re-renders
     * its text every turn), and stored for this tokenizer */
    if (meta.mode == MODE_TOKENIZED && meta.fingerprint == llm_fingerprint(w->m) && meta.turn > 0 &&
        age_ms <= (int64_t)w->p.window_s * 1000) {
        const tokvec *sys = &turns[0].tok[SEG_SYSTEM];
        size_t history;
        /* laid out as the next turn will (window.h), leaving room for its
         * message and reply; if it drops more, the engine still reuses all
         * it can (engine.c) */
        uint32_t first = window_first(turns, meta.turn, sys->n + (size_t)w->p.reserve, (size_t)llm_n_ctx(w->m),
                                      &history);
        tokvec toks = {0};
        tokvec_reserve(&toks, sys->n + history);
        tokvec_append(&toks, sys->v, sys->n);
        window_append(turns, first, meta.turn, &toks);
        char owner[WARM_OWNER_MAX];
        warm_kv_owner(pd->sid, owner);
        if (toks.n && llm_warm(w->m, owner, toks.v, toks.n))
            log_debug("warm-up: session %s turn %u, %zu tokens", pd->sid, meta.turn, toks.n);
        tokvec_free(&toks);
    }
    store_turns_free(turns, meta.turn);
}

static void *warm_main(void *arg) {
    warm *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && !w->n) pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop) break;
        pending pd = w->q[0];
        memmove(&w->q[0], &w->q[1], (size_t)(w->n - 1) * sizeof w->q[0]);
        w->n--;
        pthread_mutex_unlock(&w->mu);
        warm_one(w, &pd);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

warm *warm_new(const warm_params *p, llm *m, store *s) {
    llm_stats ls;
    llm_stats_get(m, &ls);
    if (ls.warm_sessions <= 0) return NULL; /* the engine does not warm: follow nothing */
    warm *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->p = *p;
    snprintf(w->node, sizeof w->node, "%s", p->node_id ? p->node_id : "");
    if (p->peers && *p->peers) {
        size_t n = strlen(p->peers);
        w->peers = malloc(n + 3);
        if (w->peers) snprintf(w->peers, n + 3, ",%s,", p->peers);
    }
    w->m = m;
    w->s = s;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, warm_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w->peers);
        free(w);
        return NULL;
    }
    store_watch(s, on_commit, w);
    return w;
}

void warm_free(warm *w) {
    if (!w) return;
    store_watch(w->s, NULL, NULL);
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->peers);
    free(w);
}

void warm_session(warm *w, const char *sid, uint32_t turn) {
    if (w) enqueue(w, sid, turn);
}
