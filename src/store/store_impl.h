/* store_impl.h - what a store implementation provides (private to src/store).
 * Each implementation embeds `store` as its first member and fills `ops`. */
#ifndef DC_STORE_IMPL_H
#define DC_STORE_IMPL_H

#include "store.h"

typedef struct {
    const char *name;
    store_status (*meta_get)(store *s, const char *sid, session_meta *out);
    store_status (*session_load)(store *s, const char *sid, uint32_t want, session_meta *meta, turn_rec **turns);
    store_status (*turn_commit)(store *s, const char *sid, const session_meta *meta, const turn_rec *t);
    store_status (*session_delete)(store *s, const char *sid);
    long (*expire)(store *s, int64_t now_ms);
    store_status (*wait)(store *s, const char *sid, uint32_t turn, int timeout_ms); /* NULL: check once */
    void (*close)(store *s);
} store_ops;

struct store {
    const store_ops *ops;
    int64_t ttl_ms;
};

store *store_embedded_open(const store_params *p, char *err, size_t errlen);
store *store_nats_open(const store_params *p, char *err, size_t errlen);

/* Records the detail of a failure for store_last_error(); returns st. */
store_status store_fail(store_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* True when a session whose last activity was at last_ms is past the TTL. */
bool store_expired(const store *s, int64_t last_ms, int64_t now_ms);

#endif
