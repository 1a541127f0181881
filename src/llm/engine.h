/* engine.h - continuous batching with KV-cache reuse over one llama.cpp
 * context. Private to the local LLM service (local.c); see engine.c. */
#ifndef DC_ENGINE_H
#define DC_ENGINE_H

#include <llama.h>

#include "llm.h"

typedef struct engine engine;

typedef struct {
    int n_slots;    /* sequences in the context, one KV stream each (>= n_parallel) */
    int kv_sessions; /* conversations whose KV is kept in memory, those in sequences included;
                      * the rest of them in the spill, in the bytes their tokens need */
    int n_parallel; /* sequences generating at once */
    int n_queue;    /* requests waiting for a free sequence; more get LLM_BUSY */
    int n_ctx_seq;  /* tokens per sequence */
    int n_batch;    /* tokens per llama_decode call */
    bool reuse;     /* keep KV between requests (false: every request prefills from scratch) */
    const char *spill_dir; /* where sequence states go past kv_sessions; NULL: dropped (see spill.c) */
    size_t spill_budget;   /* bytes of spilled states kept on disk */
    int spill_min;         /* tokens a spill must save (or a restore gain) to be worth its I/O (disk
                            * only: with kv_sessions > n_slots the engine takes any, engine_new) */
    int warm_sessions;     /* conversations warm-up may keep in sequences at once (0: warm-up off) */
    int warm_chunk;        /* tokens a warm-up prefills per step: the most a live request waits for it */
    double warm_window_ms; /* a warmed conversation unused this long is the first evicted */
} engine_params;

/* Borrows ctx (created with n_seq_max = n_slots, one KV stream per
 * sequence) and vocab; starts the engine thread. NULL on failure. */
engine *engine_new(struct llama_context *ctx, const struct llama_vocab *vocab, const engine_params *p);
/* Stops the thread after failing every queued and running request. */
void engine_free(engine *e);

/* Runs one request to completion (blocking the caller). See llm_generate. */
llm_status engine_generate(engine *e, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                           llm_timings *t, char *err, size_t errlen);

void engine_stats_get(engine *e, llm_stats *out);
/* llm_warm / llm_forget */
bool engine_warm(engine *e, const char *owner, const int32_t *toks, size_t n);
void engine_forget(engine *e, const char *owner);
llm_status engine_admit(engine *e); /* llm_admit */

/* KV transfer between nodes (engine.c, "KV transfer"); each runs on the
 * engine thread between two steps and blocks the caller until then.
 * held: the longest prefix of toks whose KV owner has here (0: none).
 * export: appends to out the state of owner's slot or spilled entry whose
 * tokens are the longest whole prefix of toks, their count in *n_held.
 * import: loads a state of exactly toks[0..n) into a free slot for owner.
 * 0, or -1 with the reason in err. */
size_t engine_kv_held(engine *e, const char *owner, const int32_t *toks, size_t n);
int engine_kv_export(engine *e, const char *owner, const int32_t *toks, size_t n, strbuf *out, size_t *n_held,
                     char *err, size_t errlen);
int engine_kv_import(engine *e, const char *owner, const int32_t *toks, size_t n, const void *state, size_t state_n,
                     char *err, size_t errlen);

#endif
