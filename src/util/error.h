/* error.h - the error vocabulary shared by every layer.
 *
 * A layer that fails fills a dc_error; only the HTTP layer turns it into a
 * status code and JSON (api/errors.c), so the mapping lives in one place. */
#ifndef DC_ERROR_H
#define DC_ERROR_H

#include <stdint.h>

typedef enum {
    DC_OK = 0,
    DC_E_INVALID,       /* 400 invalid_request: a field is missing or wrong */
    DC_E_JSON,          /* 400 invalid_json: the body does not parse */
    DC_E_CTX_LENGTH,    /* 400 context_length_exceeded */
    DC_E_SESSION_FULL,  /* 400 session_full: the session holds the most tokens allowed (--max-session-tokens) */
    DC_E_MODE_MISMATCH, /* 400 mode_mismatch: session created in another mode */
    DC_E_UNAUTHORIZED,  /* 401 invalid_api_key: no valid Authorization: Bearer key */
    DC_E_FORBIDDEN,     /* 403 forbidden: the session belongs to another user */
    DC_E_NOT_FOUND,     /* 404 not_found */
    DC_E_METHOD,        /* 405 method_not_allowed */
    DC_E_CONFLICT,      /* 409 turn_conflict: turn already committed */
    DC_E_INCOMPATIBLE,  /* 409 incompatible_context: stored for another tokenizer */
    DC_E_TOO_LARGE,     /* 413 payload_too_large */
    DC_E_BUSY,          /* 429 server_busy: every sequence busy and the queue full (Retry-After) */
    DC_E_QUOTA,         /* 429 quota_exceeded: a per-user limit (sessions, generations at once) */
    DC_E_CANCELLED,     /* 499 client_closed_request: the client went away; nothing committed */
    DC_E_INTERNAL,      /* 500 server_error */
    DC_E_STORE,         /* 500 store_error: the store failed or holds corrupt data */
    DC_E_STALE,         /* 503 stale_context: the replica is behind the client */
    DC_E_UNAVAILABLE,   /* 503 store_unavailable: the store cannot be reached now */
    DC_E_LLM_DOWN,      /* 503 llm_unavailable: the LLM service cannot be reached now */
    DC_E__COUNT
} dc_code;

typedef struct {
    dc_code code;
    uint32_t expected_turn; /* for DC_E_CONFLICT: the turn the client should send */
    uint32_t retry_after_s; /* for DC_E_BUSY: when to retry (Retry-After); 0: 1 s */
    char message[256];
} dc_error;

/* Fills err (if non-NULL) and returns code, so callers can `return dc_fail(...)`. */
dc_code dc_fail(dc_error *err, dc_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
