/* keylock.h - one mutex per string key, created on demand.
 *
 * The context manager serializes requests of one session without serializing
 * different sessions. Entries are reference-counted and freed when the last
 * holder or waiter lets go, so the table holds only sessions in flight. */
#ifndef DC_KEYLOCK_H
#define DC_KEYLOCK_H

typedef struct keylock keylock;
typedef struct keylock_entry keylock_entry;

keylock *keylock_new(void);
void keylock_free(keylock *kl);

/* Blocks until the key's lock is held; returns the handle for unlock. */
keylock_entry *keylock_acquire(keylock *kl, const char *key);
void keylock_release(keylock *kl, keylock_entry *e);

#endif
