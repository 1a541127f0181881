/* nats_notes.c - waiting for replication, and following commits.
 *
 * Every commit is followed by a small core-NATS notification on
 * dce.<keygroup>.n.<session> (nats_notify) carrying the turn number and the
 * committing node; each node keeps ONE subscription to all of them
 * (nats_on_note; creating one per request would cost milliseconds), wakes
 * the requests waiting for that session (nats_wait) and tells the node's
 * watcher (store_watch: warm-up). Notifications are hints: a waiter always
 * re-reads the store, so a lost or early notification costs time, never
 * correctness. An end's note also makes a leaf node drop what its mirror
 * holds of the ended life (nats.c says why mirrors need that). */
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

/* The node-wide subscription: a commit of `turn` of a session happened
 * (payload "TURN"), or the session ended with a tombstone at stream sequence
 * SEQ (payload "0 SEQ"): a leaf node then drops what its mirror holds of the
 * ended life, once the core confirms the tombstone (a note is only a hint). */
void nats_on_note(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
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
            if (nats_tombstone_at(s, tsubj, sid, tomb)) nats_reclaim_below(s, true, tsubj, tomb);
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

void nats_notify(nstore *s, const char *sid, const char *what) {
    char note_subj[SUBJECT_MAX];
    snprintf(note_subj, sizeof note_subj, "%s%s", s->notify, sid);
    natsConnection_PublishString(s->nc, note_subj, what); /* a hint; losing it only delays a waiter */
}

store_status nats_wait(store *base, const char *sid, uint32_t turn, int timeout_ms) {
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

void nats_watch(store *base, store_watch_fn fn, void *ud) {
    nstore *s = (nstore *)base;
    pthread_mutex_lock(&s->watch_mu);
    s->watch = fn;
    s->watch_ud = ud;
    pthread_mutex_unlock(&s->watch_mu);
}
