/* store.h - where session context lives: the contract every store keeps.
 *
 * The context manager sees sessions through this interface only. Two
 * implementations: the embedded store (embedded.c, LMDB in --data-dir; one
 * node) and NATS JetStream (nats.c; sessions replicated between nodes).
 *
 * Contract:
 *  - store_turn_commit is the only write of context, and it is a
 *    compare-and-set: turn N commits only if the stored turn is N-1 (0 for a
 *    new session). Exactly one of two racing writers of turn N wins; the other
 *    gets STORE_CONFLICT. Meta and turn record change together or not at all.
 *  - A session whose last activity is older than the TTL reads as absent and
 *    is removed by store_expire.
 *  - Records are decoded with codec.c; a record that fails to decode is
 *    reported as STORE_CORRUPT, never handed out.
 *  - With a seal (seal.h), records are sealed before they are written and
 *    opened after they are read; a record that fails to open, and a plain
 *    record where sealed ones are expected (or the reverse), is STORE_CORRUPT. */
#ifndef DC_STORE_H
#define DC_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

typedef struct store store;

typedef enum {
    STORE_OK = 0,
    STORE_NOT_FOUND,
    STORE_CONFLICT, /* commit: the stored turn is not turn-1 */
    STORE_STALE,    /* commit refused: the caller's view of the session was out of date (read again) */
    STORE_CORRUPT,  /* a stored record failed to decode */
    STORE_IO,       /* the backing store failed (disk full, permissions...) */
    STORE_UNAVAILABLE /* the store cannot be reached now (no quorum, no connection): retry later */
} store_status;

typedef struct {
    const char *data_dir;  /* embedded: created if absent */
    const char *url;       /* "nats://[USER:PASSWORD@]HOST:PORT[,...]" (or tls://): the NATS store; NULL: embedded */
    const char *tls_ca;    /* nats: CA file the servers' TLS certificates must chain to (TLS required) */
    const char *keygroup;  /* nats: one stream per keygroup (= per model); [A-Za-z0-9_-] */
    int replicas;          /* nats: stream replicas when this node creates the stream */
    const char *core_domain; /* nats: the core's JetStream domain when `url` is the node's own leaf
                                server; reads then come from a mirror in the leaf's domain */
    int64_t ttl_ms;        /* idle sessions older than this read as absent */
    size_t map_size;       /* embedded: upper bound of the database file */
    const struct seal *seal; /* seal.h: when set, every record is sealed with it (the caller keeps it) */
    const char *node_id;   /* nats: this node's name, told with each commit (store_watch) */
} store_params;

store_params store_default_params(void);

/* Opens (creating if needed) the store. On failure returns NULL and writes a
 * reason into err. */
store *store_open(const store_params *p, char *err, size_t errlen);
void store_close(store *s);
const char *store_kind(const store *s); /* "embedded" or "nats" */
/* url with every password replaced by "***", for logs and errors. */
void store_url_redact(const char *url, char *out, size_t n);

/* Reads the session's meta record. */
store_status store_meta_get(store *s, const char *sid, session_meta *out);

/* Reads the session's meta and its turn records 1..meta.turn into turns[],
 * which the caller frees with store_turns_free. want: the turn the caller
 * needs (0: none); a store that reads from a nearby replica first asks the
 * authoritative copy when the replica has less. */
store_status store_session_load(store *s, const char *sid, uint32_t want, session_meta *meta, turn_rec **turns);
#define STORE_WANT_LATEST UINT32_MAX /* want: the latest committed state, whatever turn it is */
void store_turns_free(turn_rec *turns, uint32_t n);

/* Appends turn t->turn with the new meta (whose turn must equal t->turn).
 * Compare-and-set as described above, against the very record the caller's
 * context came from: meta->rev is the revision store_session_load returned
 * with turn t->turn - 1 (the caller builds the new meta from the one it
 * read), so a session deleted and started over since - same id, same turn
 * number, another life - refuses the commit (STORE_STALE) instead of taking
 * the old life's context and owner. Turn 1 needs no revision: the session
 * must not exist. On success meta->rev is the new record's revision, so that
 * a caller writing several turns in a row (a fork) can go on. */
store_status store_turn_commit(store *s, const char *sid, session_meta *meta, const turn_rec *t);

store_status store_session_delete(store *s, const char *sid);

/* Waits up to timeout_ms until this node's store shows the session at turn
 * >= turn (replication of a commit made elsewhere). STORE_OK when it does,
 * STORE_NOT_FOUND when it does not in time. The NATS store is woken by its
 * one node-wide subscription; the embedded store has nothing in flight and
 * returns after a single check. */
store_status store_wait(store *s, const char *sid, uint32_t turn, int timeout_ms);

/* Follows the commits of every node sharing the store: fn is called with
 * each committed turn (node: the committing node's store_params.node_id,
 * "" when not told), and with turn 0 when a session ends (deleted or
 * expired). These are hints, as store_wait's: one may be lost, or come
 * before the record reaches this node's replica (read with `want`). The
 * NATS store calls fn on its own thread (it must not block); the embedded
 * store has no other writer and never calls it. One watcher per store. */
typedef void (*store_watch_fn)(void *ud, const char *sid, uint32_t turn, const char *node);
void store_watch(store *s, store_watch_fn fn, void *ud);

/* Removes every session idle for longer than the TTL at now_ms. Returns the
 * number removed, or -1 on error. */
long store_expire(store *s, int64_t now_ms);

/* Round trips this thread has made to the store so far: all of them, and
 * those to the core (the stream's own servers; in leaf mode, not the node's
 * mirror). A caller takes the difference around a call to see what it cost,
 * e.g. how many requests a handover read sent over the WAN (ctx.c reports
 * them per turn). The embedded store makes none. */
typedef struct {
    uint64_t all, core;
} store_trips;
store_trips store_trips_now(void);

const char *store_status_str(store_status st);
/* Detail of the last STORE_IO/STORE_CORRUPT seen by this thread. */
const char *store_last_error(void);

#endif
