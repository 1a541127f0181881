/* keylock.c - see keylock.h. A linked list under one table mutex: the table
 * holds only sessions with a request in flight (tens, not millions), and the
 * table mutex is held for a list walk, never while waiting for a key. */
#include "keylock.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

struct keylock_entry {
    char *key;
    int refs;
    pthread_mutex_t mu;
    keylock_entry *next;
};

struct keylock {
    pthread_mutex_t mu;
    keylock_entry *head;
};

keylock *keylock_new(void) {
    keylock *kl = dc_xrealloc(NULL, sizeof *kl);
    pthread_mutex_init(&kl->mu, NULL);
    kl->head = NULL;
    return kl;
}

void keylock_free(keylock *kl) {
    if (!kl) return;
    for (keylock_entry *e = kl->head, *n; e; e = n) {
        n = e->next;
        pthread_mutex_destroy(&e->mu);
        free(e->key);
        free(e);
    }
    pthread_mutex_destroy(&kl->mu);
    free(kl);
}

keylock_entry *keylock_acquire(keylock *kl, const char *key) {
    pthread_mutex_lock(&kl->mu);
    keylock_entry *e = kl->head;
    while (e && strcmp(e->key, key) != 0) e = e->next;
    if (!e) {
        e = dc_xrealloc(NULL, sizeof *e);
        e->key = dc_xstrdup(key);
        e->refs = 0;
        pthread_mutex_init(&e->mu, NULL);
        e->next = kl->head;
        kl->head = e;
    }
    e->refs++;
    pthread_mutex_unlock(&kl->mu);
    pthread_mutex_lock(&e->mu);
    return e;
}

void keylock_release(keylock *kl, keylock_entry *e) {
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_lock(&kl->mu);
    if (--e->refs == 0) {
        keylock_entry **pp = &kl->head;
        while (*pp != e) pp = &(*pp)->next;
        *pp = e->next;
        pthread_mutex_destroy(&e->mu);
        free(e->key);
        free(e);
    }
    pthread_mutex_unlock(&kl->mu);
}
