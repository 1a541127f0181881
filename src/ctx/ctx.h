/* ctx.h - the context manager: sessions, the turn protocol, the three modes.
 *
 * One request, one call: ctx_complete takes the new user message of a turn,
 * checks the client's turn counter against the store, builds the model input
 * in token space, generates, and commits the turn. It depends on the llm.h and
 * store.h contracts only; it never sees HTTP. */
#ifndef DC_CTX_H
#define DC_CTX_H

#include <stdint.h>

#include "../llm/llm.h"
#include "../store/store.h"
#include "../util/error.h"
#include "warm.h"

typedef struct ctx ctx;

typedef struct {
    const char *node_id;
    int stale_retries;    /* re-reads when the stored turn is behind (paper: 3) */
    int stale_retry_ms;   /* pause between re-reads (paper: 10 ms) */
    int sync_timeout_ms;  /* longest wait for a missing turn to replicate (store_wait) */
    int max_sessions_per_user; /* live sessions a user may create through this node (util/quota.h); 0: no limit */
    long max_session_tokens;   /* the longest conversation a session may hold, in tokens (its whole stored context
                                  plus a turn's message and n_predict); a turn past it is DC_E_SESSION_FULL; 0: no limit */
    warm_params warm;          /* warm handover (warm.h; node_id is node_id's): on when the engine warms */
    /* KV transfer between nodes (issue 15 item 3). advertise_url: how peers reach this node, recorded with
     * every turn it commits (session_meta.node_url); NULL: not recorded. kv_fetch: asked, for a turn whose
     * session this node holds too little KV of, to fetch the KV state blob (llm_kv_export's) of session sid
     * from the node at url that served the previous turn, when that is predicted faster than prefilling the
     * n_missing tokens of the n stored ones (api/peer.c decides and fetches). 1: fetched into blob; 0: not
     * worth it or not configured; -1: failed. NULL: no transfer. */
    const char *advertise_url;
    int (*kv_fetch)(void *ud, const char *url, const char *sid, size_t n, size_t n_missing, strbuf *blob);
    void *kv_fetch_ud;
} ctx_params;

/* What a client accepts when its turn has not reached this node in time. */
typedef enum {
    CONSISTENCY_STRONG = 0, /* fail: 503 stale_context (404 for an unknown session) */
    CONSISTENCY_AVAILABLE   /* answer from the local context, say stale, commit nothing */
} ctx_consistency;

ctx_params ctx_default_params(void);

/* Borrows m and s; both must outlive the ctx. */
ctx *ctx_new(const ctx_params *p, llm *m, store *s);
void ctx_free(ctx *c);

typedef struct {
    session_mode mode;
    const char *prompt;     /* tokenized/raw: the new user message; client-side: the formatted history */
    const llm_msg *messages; /* client-side only, instead of prompt: the whole conversation, rendered with
                                the model's template (contents never parsed as markup) */
    size_t n_messages;
    const char *system;     /* optional system message, first turn only */
    /* Who and what: util/identity.h decides what the caller leaves out, for every caller alike. */
    const char *session_id; /* NULL: a new session (turn 1 only), named before the generation; a caller that
                               must know its id sooner (a stream's first event) names it itself the same way */
    const char *user_id;    /* NULL: the default user ("anonymous"); the session belongs to its user (others: 403) */
    const char *quota_user; /* the client as limits and the KV cache know it: whom --max-sessions-per-user
                               counts a new session against, and whose cached prefixes the engine may reuse
                               (llm_gen_params.owner); NULL: the session's owner (the API layer decides:
                               auth.h auth_limits_key) */
    uint32_t turn;          /* 0: not given (allowed only for a new session) */
    const char *request_id; /* optional: a retry with the same id gets the committed reply again */
    ctx_consistency consistency;
    bool fork_on_conflict;  /* the turn continues a stored reply (a Responses previous_response_id): when another
                               request has taken the turn meanwhile, the turn goes on in a fork of the session at
                               turn - 1 (a new session id, in rep->session_id) instead of failing with 409 */
    llm_gen_params gen;
} ctx_request;

typedef struct {
    char session_id[ID_MAX + 1]; /* empty in client-side mode; a fork's id when the turn went to one */
    char user_id[ID_MAX + 1];
    session_mode mode;
    uint32_t turn;
    strbuf content;
    int context_tokens;      /* tokens fed to the model */
    int truncated_turns;     /* oldest turns left out to fit the context window */
    int retries;             /* store re-reads while the replica was behind */
    double wait_ms;          /* time spent waiting for replication */
    bool stale;              /* answered from a context behind the client's turn; not committed */
    bool replayed;           /* a retry of a committed turn: the committed reply, not a new one */
    llm_timings llm;
    double tokenize_ms, store_read_ms, store_commit_ms;
    /* round trips of the reads of the session (store_trips): all, and those
     * to the core; a handover whose mirror lags costs one to the core */
    int store_read_trips, store_read_core_trips;
    double kv_transfer_ms;   /* fetching and loading a peer's KV of the stored context (0: none) */
    int kv_transfer_tokens;  /* the stored tokens whose KV came from that peer (0: none, or refused) */
} ctx_reply;

dc_code ctx_complete(ctx *c, const ctx_request *req, ctx_reply *rep, dc_error *err);
void ctx_reply_free(ctx_reply *rep);

/* Session metadata, for its owner only (user_id must match: else 403). */
dc_code ctx_session_get(ctx *c, const char *sid, const char *user_id, session_meta *out, dc_error *err);
/* The same, with the stored turn records (freed with store_turns_free(turns, out->turn)). */
dc_code ctx_session_turns(ctx *c, const char *sid, const char *user_id, session_meta *out, turn_rec **turns,
                          dc_error *err);
dc_code ctx_session_delete(ctx *c, const char *sid, const char *user_id, dc_error *err);
/* The handover hint: prepares this node for the session's next turn (its
 * owner's only, as any read: 404, 403) by warming its KV in the background
 * (warm.h). *warming: false when this node does no warm-up. Idempotent. */
dc_code ctx_session_warm(ctx *c, const char *sid, const char *user_id, bool *warming, dc_error *err);
/* Copies turns 1..upto of sid (its owner's, tokenized) into the new session
 * new_sid, for the same user: a conversation continued from an older turn
 * goes on in the copy and leaves the original as it was. Waits for turn
 * upto to replicate here, as a turn would. quota_user: as in ctx_request. */
dc_code ctx_session_fork(ctx *c, const char *sid, uint32_t upto, const char *user_id, const char *quota_user,
                         const char *new_sid, dc_error *err);

/* Upkeep for the node's periodic loop (serve.c), never a request: forgets,
 * for --max-sessions-per-user, sessions counted here that no longer exist
 * (deleted through another node, expired) once enough have been created to
 * be worth the store reads (quota_sweep). Returns the sessions forgotten. */
int ctx_sweep(ctx *c);

/* KV transfer, the serving side (api/peer.c): appends to blob the KV state
 * this node holds of session sid's stored tokens (llm_kv_export), read from
 * this node's store. No owner check: the caller is an authenticated peer.
 * DC_E_NOT_FOUND when there is no such session or no KV of it here. */
dc_code ctx_kv_export(ctx *c, const char *sid, strbuf *blob, dc_error *err);

const char *ctx_mode_name(session_mode m);
/* Parses "tokenized", "raw", "client-side"; returns 0 if unknown. */
session_mode ctx_mode_parse(const char *s);

#endif
