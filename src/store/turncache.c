/* turncache.c - see turncache.h. A list in recency order under one mutex:
 * a node has at most a few thousand sessions in flight, and the work per
 * request (a list walk and a copy of token arrays) is microseconds next to a
 * network round trip. */
#include "turncache.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

typedef struct entry {
    char sid[ID_MAX + 1];
    turn_rec *turns;
    uint32_t n, cap;
    session_meta meta;
    uint64_t last_seq;
    struct entry *next;
} entry;

struct turncache {
    pthread_mutex_t mu;
    entry *head; /* most recently used first */
    size_t count, max;
};

static void copy_turn(turn_rec *dst, const turn_rec *src) {
    turn_rec_clear(dst);
    dst->turn = src->turn;
    dst->kind = src->kind;
    dst->fingerprint = src->fingerprint;
    for (int i = 0; i < SEG_COUNT; i++) {
        tokvec_append(&dst->tok[i], src->tok[i].v, src->tok[i].n);
        strbuf_append(&dst->text[i], src->text[i].s ? src->text[i].s : "", src->text[i].n);
    }
}

static void entry_free(entry *e) {
    store_turns_free(e->turns, e->cap);
    free(e);
}

turncache *turncache_new(size_t max_sessions) {
    turncache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->max = max_sessions ? max_sessions : 1;
    return c;
}

void turncache_free(turncache *c) {
    if (!c) return;
    for (entry *e = c->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Finds sid and moves it to the front; NULL if absent. Caller holds mu. */
static entry *find(turncache *c, const char *sid) {
    for (entry **pp = &c->head; *pp; pp = &(*pp)->next) {
        entry *e = *pp;
        if (strcmp(e->sid, sid) != 0) continue;
        *pp = e->next;
        e->next = c->head;
        c->head = e;
        return e;
    }
    return NULL;
}

static void unlink_entry(turncache *c, entry *e) {
    entry **pp = &c->head;
    while (*pp != e) pp = &(*pp)->next;
    *pp = e->next;
    c->count--;
    entry_free(e);
}

uint32_t turncache_get(turncache *c, const char *sid, turn_rec **turns, session_meta *meta, uint64_t *last_seq) {
    *turns = NULL;
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, sid);
    uint32_t n = e ? e->n : 0;
    if (n) {
        *turns = calloc(n, sizeof **turns);
        for (uint32_t i = 0; i < n; i++) copy_turn(&(*turns)[i], &e->turns[i]);
        *meta = e->meta;
        *last_seq = e->last_seq;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void ensure_cap(entry *e, uint32_t n) {
    if (n <= e->cap) return;
    uint32_t cap = e->cap ? e->cap : 8;
    while (cap < n) cap *= 2;
    e->turns = dc_xrealloc(e->turns, cap * sizeof *e->turns);
    memset(e->turns + e->cap, 0, (cap - e->cap) * sizeof *e->turns);
    e->cap = cap;
}

/* Replaces sid's turns with a copy of turns[0..n), creating the entry (and
 * evicting the least recently used one) if needed. Caller holds mu. */
static void put_locked(turncache *c, const char *sid, const turn_rec *turns, uint32_t n, const session_meta *meta,
                       uint64_t last_seq) {
    entry *e = find(c, sid);
    if (!e) {
        if (c->count == c->max) {
            entry *last = c->head;
            while (last->next) last = last->next;
            unlink_entry(c, last);
        }
        e = calloc(1, sizeof *e);
        snprintf(e->sid, sizeof e->sid, "%s", sid);
        e->next = c->head;
        c->head = e;
        c->count++;
    }
    ensure_cap(e, n);
    for (uint32_t i = 0; i < n; i++) copy_turn(&e->turns[i], &turns[i]);
    e->n = n;
    e->meta = *meta;
    e->last_seq = last_seq;
}

void turncache_put(turncache *c, const char *sid, const turn_rec *turns, uint32_t n, const session_meta *meta,
                   uint64_t last_seq) {
    pthread_mutex_lock(&c->mu);
    put_locked(c, sid, turns, n, meta, last_seq);
    pthread_mutex_unlock(&c->mu);
}

void turncache_append(turncache *c, const char *sid, const turn_rec *t, const session_meta *meta, uint64_t seq) {
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, sid);
    if (t->turn == 1) { /* a new life of the id: whatever was cached is over */
        put_locked(c, sid, t, 1, meta, seq);
    } else if (e && e->n + 1 == t->turn && seq > e->last_seq) {
        ensure_cap(e, e->n + 1);
        copy_turn(&e->turns[e->n++], t);
        e->meta = *meta;
        e->last_seq = seq;
    }
    pthread_mutex_unlock(&c->mu);
}

void turncache_drop(turncache *c, const char *sid) {
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, sid);
    if (e) unlink_entry(c, e);
    pthread_mutex_unlock(&c->mu);
}
