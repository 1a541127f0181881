/* quota.c - see quota.h.
 *
 * One flat array of (user hash, user, item) entries, scanned per take: a
 * node starts at most tens of requests per second, and comparing 64-bit
 * hashes first keeps a scan of 100k entries in the tens of microseconds.
 *
 * The alive checks (store reads) run without the mutex held, and an item
 * the store confirmed is not asked about again for RECHECK_MS: a user at
 * the limit who keeps asking costs at most one round of store reads per
 * interval, not one per request. The price: a session deleted elsewhere
 * can hold its place for up to that long. */
#include "quota.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "hash.h"
#include "ids.h"
#include "vec.h"

#define RECHECK_MS 60000.0

typedef struct {
    uint64_t h;
    char user[QUOTA_NAME_MAX + 1];
    char item[ID_MAX + 1];
    double alive_at; /* when alive() last said yes (monotonic ms); 0: never asked */
} entry;

struct quota {
    pthread_mutex_t mu;
    entry *e;
    size_t n, cap;
    size_t checked_at; /* n after the last sweep */
    quota_alive_fn alive;
    void *ud;
};

static uint64_t hash_of(const char *user) { return hash_fnv1a(HASH_FNV_BASIS, user, strlen(user)); }

quota *quota_new(quota_alive_fn alive, void *ud) {
    quota *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    pthread_mutex_init(&q->mu, NULL);
    q->alive = alive;
    q->ud = ud;
    return q;
}

void quota_free(quota *q) {
    if (!q) return;
    pthread_mutex_destroy(&q->mu);
    free(q->e);
    free(q);
}

/* Under mu. */
static size_t find(quota *q, uint64_t h, const char *user, const char *item) {
    for (size_t i = 0; i < q->n; i++)
        if (q->e[i].h == h && !strcmp(q->e[i].user, user) && !strcmp(q->e[i].item, item)) return i;
    return q->n;
}

/* Under mu. */
static int count_locked(quota *q, uint64_t h, const char *user) {
    int c = 0;
    for (size_t i = 0; i < q->n; i++) c += q->e[i].h == h && !strcmp(q->e[i].user, user);
    return c;
}

/* Asks alive() about the entries of user (all when NULL) not confirmed in
 * the last RECHECK_MS, without the lock; drops those gone, stamps the rest.
 * Returns how many it dropped. */
static int check(quota *q, const char *user) {
    double now = clock_mono_ms();
    uint64_t h = user ? hash_of(user) : 0;
    pthread_mutex_lock(&q->mu);
    size_t k = 0;
    entry *ask = dc_xrealloc(NULL, (q->n ? q->n : 1) * sizeof *ask);
    for (size_t i = 0; i < q->n; i++)
        if ((!user || (q->e[i].h == h && !strcmp(q->e[i].user, user))) &&
            (q->e[i].alive_at == 0 || now - q->e[i].alive_at > RECHECK_MS))
            ask[k++] = q->e[i];
    pthread_mutex_unlock(&q->mu);
    int dropped = 0;
    for (size_t i = 0; i < k; i++) {
        bool alive = q->alive(q->ud, ask[i].item);
        pthread_mutex_lock(&q->mu);
        size_t at = find(q, ask[i].h, ask[i].user, ask[i].item);
        if (at < q->n && !alive) {
            q->e[at] = q->e[--q->n];
            dropped++;
        } else if (at < q->n) {
            q->e[at].alive_at = now;
        }
        pthread_mutex_unlock(&q->mu);
    }
    free(ask);
    return dropped;
}

int quota_count(quota *q, const char *user) {
    pthread_mutex_lock(&q->mu);
    int c = count_locked(q, hash_of(user), user);
    pthread_mutex_unlock(&q->mu);
    return c;
}

/* The sweep of every entry runs here, on the node's periodic loop: in a
 * take it ran inside a request, under the session's lock, as one store
 * read per entry. A take asks only about its own user's entries, and only
 * at the limit (at most max reads, once per RECHECK_MS). */
int quota_sweep(quota *q) {
    if (!q->alive) return 0;
    pthread_mutex_lock(&q->mu);
    bool due = q->n >= 2 * q->checked_at + 1024;
    pthread_mutex_unlock(&q->mu);
    if (!due) return 0;
    int dropped = check(q, NULL);
    pthread_mutex_lock(&q->mu);
    q->checked_at = q->n;
    pthread_mutex_unlock(&q->mu);
    return dropped;
}

bool quota_take(quota *q, const char *user, const char *item, int max) {
    if (max <= 0) return true;
    /* at the limit: forget this user's items that are gone */
    if (q->alive && quota_count(q, user) >= max) check(q, user);
    pthread_mutex_lock(&q->mu);
    uint64_t h = hash_of(user);
    bool ok = count_locked(q, h, user) < max;
    if (ok) {
        if (q->n == q->cap) q->e = dc_xrealloc(q->e, (q->cap = q->cap ? 2 * q->cap : 64) * sizeof *q->e);
        entry *e = &q->e[q->n++];
        *e = (entry){.h = h};
        snprintf(e->user, sizeof e->user, "%s", user);
        snprintf(e->item, sizeof e->item, "%s", item);
    }
    pthread_mutex_unlock(&q->mu);
    return ok;
}

void quota_give(quota *q, const char *user, const char *item) {
    pthread_mutex_lock(&q->mu);
    size_t at = user ? find(q, hash_of(user), user, item) : q->n;
    for (size_t i = 0; !user && i < q->n; i++) /* under whatever name (quota.h) */
        if (!strcmp(q->e[i].item, item)) at = i;
    if (at < q->n) q->e[at] = q->e[--q->n];
    pthread_mutex_unlock(&q->mu);
}
