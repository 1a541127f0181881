/* store.c - the store interface: picks the implementation from the
 * parameters and forwards to it. See store.h for the contract. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seal.h"
#include "store_impl.h"

static _Thread_local char last_error[256];

store_status store_fail(store_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

const char *store_last_error(void) { return last_error; }

/* Per thread, like last_error: a request's store calls run on its thread. */
static _Thread_local store_trips trips;

void store_count_trip(bool core) {
    trips.all++;
    if (core) trips.core++;
}

store_trips store_trips_now(void) { return trips; }

bool store_expired(const store *s, int64_t last_ms, int64_t now_ms) {
    return s->ttl_ms > 0 && last_ms + s->ttl_ms < now_ms;
}

void store_record_seal(const store *s, const char *ad, strbuf *rec) {
    if (s->seal) seal_encrypt(s->seal, ad, rec);
}

const void *store_record_open(const store *s, const char *ad, const void *data, size_t *n, strbuf *buf) {
    bool sealed = seal_is_sealed(data, *n);
    if (!s->seal) {
        if (!sealed) return data;
        store_fail(STORE_CORRUPT, "%s is encrypted and this node has no --store-key", ad);
        return NULL;
    }
    /* A plain record where sealed ones are expected is refused too: anyone
     * who can write to the store could otherwise plant context unsealed. */
    if (!seal_decrypt(s->seal, ad, data, *n, buf)) {
        store_fail(STORE_CORRUPT, "%s: %s", ad,
                   sealed ? "fails authentication (tampered, or sealed with another key)" : "not encrypted");
        return NULL;
    }
    *n = buf->n;
    return buf->s;
}

store_params store_default_params(void) {
    return (store_params){
        .data_dir = "data",
        .url = NULL,
        .keygroup = "default",
        .replicas = 1,
        .ttl_ms = 24LL * 3600 * 1000,
        .map_size = (size_t)4 << 30, /* address space only; the file grows as used */
    };
}

store *store_open(const store_params *p, char *err, size_t errlen) {
    store *s;
    if (p->url && *p->url) {
        if (strncmp(p->url, "nats://", 7) != 0 && strncmp(p->url, "tls://", 6) != 0) {
            char shown[512];
            store_url_redact(p->url, shown, sizeof shown);
            snprintf(err, errlen, "--store %s: expected nats://HOST:PORT[,...] or tls://...", shown);
            return NULL;
        }
        s = store_nats_open(p, err, errlen);
    } else {
        s = store_embedded_open(p, err, errlen);
    }
    if (s) s->seal = p->seal;
    return s;
}

const char *store_kind(const store *s) { return s->ops->name; }

void store_url_redact(const char *url, char *out, size_t n) {
    strbuf b = {0};
    /* each comma-separated URL: SCHEME://USER:PASSWORD@HOST -> SCHEME://USER:***@HOST */
    for (const char *u = url; *u;) {
        size_t len = strcspn(u, ",");
        const char *at = memchr(u, '@', len), *scheme = strstr(u, "://");
        const char *user = scheme && scheme < u + len ? scheme + 3 : u;
        const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
        if (colon) {
            strbuf_append(&b, u, (size_t)(colon - u));
            strbuf_puts(&b, ":***");
            strbuf_append(&b, at, len - (size_t)(at - u));
        } else {
            strbuf_append(&b, u, len);
        }
        u += len;
        if (*u == ',') strbuf_append(&b, u++, 1);
    }
    snprintf(out, n, "%s", b.s ? b.s : "");
    strbuf_free(&b);
}

void store_close(store *s) {
    if (s) s->ops->close(s);
}

store_status store_meta_get(store *s, const char *sid, session_meta *out) { return s->ops->meta_get(s, sid, out); }

store_status store_session_load(store *s, const char *sid, uint32_t want, session_meta *meta, turn_rec **turns) {
    *turns = NULL;
    return s->ops->session_load(s, sid, want, meta, turns);
}

store_status store_turn_commit(store *s, const char *sid, session_meta *meta, const turn_rec *t) {
    if (meta->turn != t->turn || t->turn == 0) return store_fail(STORE_IO, "commit: meta and turn record disagree");
    return s->ops->turn_commit(s, sid, meta, t);
}

store_status store_session_delete(store *s, const char *sid) { return s->ops->session_delete(s, sid); }

void store_watch(store *s, store_watch_fn fn, void *ud) {
    if (s->ops->watch) s->ops->watch(s, fn, ud);
}

store_status store_wait(store *s, const char *sid, uint32_t turn, int timeout_ms) {
    if (s->ops->wait) return s->ops->wait(s, sid, turn, timeout_ms);
    session_meta m;
    store_status st = store_meta_get(s, sid, &m);
    return st == STORE_OK && m.turn >= turn ? STORE_OK : st == STORE_OK ? STORE_NOT_FOUND : st;
}

long store_expire(store *s, int64_t now_ms) { return s->ops->expire(s, now_ms); }

void store_turns_free(turn_rec *turns, uint32_t n) {
    if (!turns) return;
    for (uint32_t i = 0; i < n; i++) turn_rec_free(&turns[i]);
    free(turns);
}

const char *store_status_str(store_status st) {
    switch (st) {
    case STORE_OK: return "ok";
    case STORE_NOT_FOUND: return "not found";
    case STORE_CONFLICT: return "conflict";
    case STORE_STALE: return "stale view";
    case STORE_CORRUPT: return "corrupt record";
    case STORE_IO: return "store i/o error";
    case STORE_UNAVAILABLE: return "store unavailable";
    }
    return "unknown";
}
