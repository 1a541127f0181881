/* store_impl.h - what a store implementation provides (private to src/store).
 * Each implementation embeds `store` as its first member and fills `ops`. */
#ifndef DC_STORE_IMPL_H
#define DC_STORE_IMPL_H

#include "store.h"

typedef struct {
    const char *name;
    store_status (*meta_get)(store *s, const char *sid, session_meta *out);
    store_status (*session_load)(store *s, const char *sid, uint32_t want, session_meta *meta, turn_rec **turns);
    store_status (*turn_commit)(store *s, const char *sid, session_meta *meta, const turn_rec *t);
    store_status (*session_delete)(store *s, const char *sid);
    long (*expire)(store *s, int64_t now_ms);
    store_status (*wait)(store *s, const char *sid, uint32_t turn, int timeout_ms); /* NULL: check once */
    void (*watch)(store *s, store_watch_fn fn, void *ud); /* NULL: nothing to follow */
    void (*close)(store *s);
} store_ops;

struct store {
    const store_ops *ops;
    int64_t ttl_ms;
    const struct seal *seal; /* NULL: records are stored as the codec encodes them */
};

store *store_embedded_open(const store_params *p, char *err, size_t errlen);
store *store_nats_open(const store_params *p, char *err, size_t errlen);

/* Records the detail of a failure for store_last_error(); returns st. */
store_status store_fail(store_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Counts one round trip to the store (store_trips_now); core: to the
 * core rather than a local mirror. */
void store_count_trip(bool core);

/* Every record goes through these two on its way to and from the store.
 * ad names the record's place (session id and kind; seal.h says why).
 * store_record_seal seals rec in place when the store has a seal.
 * store_record_open returns the record's plaintext (data itself, or its
 * opened bytes in buf) and sets *n to its length; NULL, with the reason for
 * store_last_error, when the record cannot be trusted. */
void store_record_seal(const store *s, const char *ad, strbuf *rec);
const void *store_record_open(const store *s, const char *ad, const void *data, size_t *n, strbuf *buf);

/* True when a session whose last activity was at last_ms is past the TTL. */
bool store_expired(const store *s, int64_t last_ms, int64_t now_ms);

#endif
