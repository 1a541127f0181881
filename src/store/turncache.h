/* turncache.h - a node's in-memory copy of recently used sessions' turns.
 *
 * The NATS store keeps sessions in a remote stream. Reading a whole session
 * on every request would move the whole history over the network each turn;
 * with this cache a node fetches only the turns it has not seen (usually
 * none, or the one or two committed elsewhere since a hand-over). Turn
 * records are immutable once committed, so a cached prefix stays valid; the
 * store still asks the stream for every message after the cached ones on
 * every read, so a deleted or restarted session is never served from here.
 *
 * Bounded: least recently used sessions go first. Thread-safe. */
#ifndef DC_TURNCACHE_H
#define DC_TURNCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

typedef struct turncache turncache;

turncache *turncache_new(size_t max_sessions);
void turncache_free(turncache *c);

/* Copies the cached turns of sid into *turns (caller frees with
 * store_turns_free) and its meta; returns the number of turns (0: not
 * cached) and the stream sequence of the last one in *last_seq. */
uint32_t turncache_get(turncache *c, const char *sid, turn_rec **turns, session_meta *meta, uint64_t *last_seq);

/* Stores a copy of the n turns of sid, the last at stream sequence last_seq. */
void turncache_put(turncache *c, const char *sid, const turn_rec *turns, uint32_t n, const session_meta *meta,
                   uint64_t last_seq);

/* Appends one turn if the cache holds exactly the turns before it; turn 1
 * replaces whatever was cached for sid. */
void turncache_append(turncache *c, const char *sid, const turn_rec *t, const session_meta *meta, uint64_t seq);

void turncache_drop(turncache *c, const char *sid);

#endif
