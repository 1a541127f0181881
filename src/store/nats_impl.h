/* nats_impl.h - what the files of the NATS store share (nats.c says what
 * the store is; nats_open.c connects it, nats_read.c reads sessions,
 * nats_notes.c waits for and follows commits). Private to src/store. */
#ifndef DC_NATS_IMPL_H
#define DC_NATS_IMPL_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../util/ids.h"
#include "store_impl.h"
#include "turncache.h"

/* Sessions whose turns a node keeps in memory (turncache.h). */
#define CACHE_SESSIONS 1024

typedef struct waiter {
    const char *sid;
    uint32_t turn;
    bool done;
    struct waiter *next;
} waiter;

/* A batched read waiting for its replies (batch_get, on_reply); guarded
 * by the store's mu. */
typedef struct reply_wait {
    uint64_t id;     /* the last token of its reply subject */
    natsMsg **v;     /* the records so far */
    int n, cap;
    natsMsg *end;    /* what ended it: a status (EOB, 404...), or a record of a server that does not batch */
    bool done;
    struct reply_wait *next;
} reply_wait;

typedef struct {
    store base;
    natsConnection *nc;
    jsCtx *js;       /* the core's JetStream API: commits, leader reads, purges */
    jsCtx *jsl;      /* where reads go: the local mirror (leaf mode) or the core (== js) */
    char api[64];    /* the core's API prefix: "$JS.API" or "$JS.<domain>.API" */
    bool leaf;       /* reads from a mirror in the node's own JetStream domain */
    natsSubscription *notes;
    char stream[96];
    char subjects[96]; /* dce.<keygroup>.t. */
    char notify[96];   /* dce.<keygroup>.n. */
    pthread_mutex_t mu; /* guards waiters and replies */
    pthread_cond_t cv;
    waiter *waiters;
    /* store_watch's, under watch_mu, which a call of it holds: once
     * store_watch(NULL) returns, no call is running (the watcher may go) */
    pthread_mutex_t watch_mu;
    store_watch_fn watch;
    void *watch_ud;
    char node[ID_MAX + 1]; /* store_params.node_id, told with each commit */
    natsSubscription *reply_sub; /* <inbox>.*: replies to batched gets (on_reply) */
    char inbox[64];
    atomic_uint_fast64_t reply_seq;
    reply_wait *replies;
    turncache *cache;
    int fault_bury_pause_ms; /* DC_FAULT_BURY_PAUSE_MS (see top); 0 normally */
    atomic_bool no_batch[2]; /* [core]: that copy's server refused a batched get (read_from) */
} nstore;

extern const store_ops nats_store_ops;

#define SUBJECT_MAX (96 + ID_MAX + 1)

static inline void subject_of(const nstore *s, const char *sid, char out[SUBJECT_MAX]) {
    snprintf(out, SUBJECT_MAX, "%s%s", s->subjects, sid);
}

/* nats.c */
store_status nats_fail(const char *what, natsStatus st, jsErrCode jerr);
void nats_reclaim_below(nstore *s, bool mirror, const char *subj, uint64_t below);
void nats_close(store *base);
/* nats_read.c */
uint64_t nats_msg_seq(natsMsg *m);
store_status nats_direct_get(nstore *s, jsCtx *js, const char *subj, uint64_t seq, bool last, natsMsg **out);
store_status nats_decode(nstore *s, natsMsg *m, const char *subj, const char *sid, session_meta *meta, turn_rec *t);
bool nats_tombstone_at(nstore *s, const char *subj, const char *sid, uint64_t seq);
store_status nats_meta_get(store *base, const char *sid, session_meta *out);
store_status nats_session_load(store *base, const char *sid, uint32_t want, session_meta *meta, turn_rec **turns);
void nats_on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
/* nats_notes.c */
void nats_on_note(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void nats_notify(nstore *s, const char *sid, const char *what);
store_status nats_wait(store *base, const char *sid, uint32_t turn, int timeout_ms);
void nats_watch(store *base, store_watch_fn fn, void *ud);

#endif
