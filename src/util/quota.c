/* owners.c - see quota.h.
 *
 * One flat array of (user hash, user, session) entries, scanned per
 * creation: a node creates at most a few sessions per second, and comparing
 * 64-bit hashes first keeps a scan of 100k entries in the tens of
 * microseconds. The store checks run without the mutex held. */
#include "../util/quota.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/hash.h"
#include "../util/ids.h"
#include "../util/vec.h"

typedef struct {
    uint64_t h;
    char user[ID_MAX + 1];
    char item[ID_MAX + 1];
} entry;

struct quota {
    pthread_mutex_t mu;
    entry *e;
    size_t n, cap;
    size_t checked_at; /* n after the last check of every entry */
    quota_alive_fn alive;
    void *ud;
};

static uint64_t hash_of(const char *user) { return hash_fnv1a(HASH_FNV_BASIS, user, strlen(user)); }

quota *quota_new(quota_alive_fn alive, void *ud) {
    quota *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    pthread_mutex_init(&o->mu, NULL);
    o->alive = alive;
    o->ud = ud;
    return o;
}

void quota_free(quota *o) {
    if (!o) return;
    pthread_mutex_destroy(&o->mu);
    free(o->e);
    free(o);
}

/* Under mu. */
static void remove_at(quota *o, size_t i) { o->e[i] = o->e[--o->n]; }

static size_t find(quota *o, uint64_t h, const char *user, const char *item) {
    for (size_t i = 0; i < o->n; i++)
        if (o->e[i].h == h && !strcmp(o->e[i].user, user) && !strcmp(o->e[i].item, item)) return i;
    return o->n;
}

/* Copies the entries matching user (all when NULL), asks the store about
 * each without the lock, and drops those gone. */
static void check(quota *o, const char *user) {
    pthread_mutex_lock(&o->mu);
    uint64_t h = user ? hash_of(user) : 0;
    size_t k = 0;
    entry *copy = dc_xrealloc(NULL, (o->n ? o->n : 1) * sizeof *copy);
    for (size_t i = 0; i < o->n; i++)
        if (!user || (o->e[i].h == h && !strcmp(o->e[i].user, user))) copy[k++] = o->e[i];
    pthread_mutex_unlock(&o->mu);
    for (size_t i = 0; i < k; i++) {
        if (o->alive(o->ud, copy[i].item)) continue;
        pthread_mutex_lock(&o->mu);
        size_t at = find(o, copy[i].h, copy[i].user, copy[i].item);
        if (at < o->n) remove_at(o, at);
        pthread_mutex_unlock(&o->mu);
    }
    free(copy);
}

/* Under mu. */
static int count_locked(quota *o, uint64_t h, const char *user) {
    int c = 0;
    for (size_t i = 0; i < o->n; i++) c += o->e[i].h == h && !strcmp(o->e[i].user, user);
    return c;
}

int quota_count(quota *o, const char *user) {
    pthread_mutex_lock(&o->mu);
    int c = count_locked(o, hash_of(user), user);
    pthread_mutex_unlock(&o->mu);
    return c;
}

/* Before a take: asks alive() about user's items when the user is at max,
 * and about every item when the table has doubled since the last time. */
static void forget_gone(quota *o, const char *user, int max) {
    pthread_mutex_lock(&o->mu);
    bool sweep = o->n >= 2 * o->checked_at + 1024;
    pthread_mutex_unlock(&o->mu);
    if (sweep) {
        check(o, NULL);
        pthread_mutex_lock(&o->mu);
        o->checked_at = o->n;
        pthread_mutex_unlock(&o->mu);
    }
    if (quota_count(o, user) >= max) check(o, user);
}

bool quota_take(quota *o, const char *user, const char *item, int max) {
    if (max <= 0) return true;
    if (o->alive) forget_gone(o, user, max);
    pthread_mutex_lock(&o->mu);
    uint64_t h = hash_of(user);
    bool ok = count_locked(o, h, user) < max;
    if (ok) {
        if (o->n == o->cap) o->e = dc_xrealloc(o->e, (o->cap = o->cap ? 2 * o->cap : 64) * sizeof *o->e);
        entry *e = &o->e[o->n++];
        e->h = h;
        snprintf(e->user, sizeof e->user, "%s", user);
        snprintf(e->item, sizeof e->item, "%s", item);
    }
    pthread_mutex_unlock(&o->mu);
    return ok;
}

void quota_give(quota *o, const char *user, const char *item) {
    pthread_mutex_lock(&o->mu);
    size_t at = find(o, hash_of(user), user, item);
    if (at < o->n) remove_at(o, at);
    pthread_mutex_unlock(&o->mu);
}
