/* llm.h - the LLM service as the context manager sees it.
 *
 * Everything here is in token space: the context manager renders and
 * tokenizes a user message once, keeps token ids, and hands whole token
 * sequences to llm_generate. Two implementations keep this contract: local.c
 * links llama.cpp in-process, remote.c drives a llama-server compatible
 * engine on another machine (llm_params.url); see llm.c.
 *
 * Threading: every function may be called from any thread at any time.
 * llm_generate blocks its caller; calls from several threads are batched
 * together (up to n_parallel at once) and the engine keeps the KV cache of
 * recent conversations, so a call whose input extends one of them prefills
 * only the new tokens (engine.c). So does one whose input is such a
 * conversation with one range taken out (its oldest turns, dropped to fit
 * the window), where the model's memory can shift positions: the kept
 * cells are moved into place, not computed again. */
#ifndef DC_LLM_H
#define DC_LLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../util/vec.h"

typedef struct llm llm;

typedef struct {
    const char *model_path;  /* local: the GGUF file */
    const char *url;         /* remote: http://HOST:PORT of a llama-server compatible engine; wins over model_path */
    const char *backend_dir; /* where libggml-cpu-*.so live; NULL = built-in default */
    int n_ctx;               /* context window in tokens; 0 = the model's training size, capped at 8192 */
    int n_threads;           /* 0 = physical cores */
    int n_parallel;          /* requests generating at once (continuous batching) */
    int n_queue;             /* requests waiting for one of those; more are refused (LLM_BUSY) */
    int kv_sessions;         /* conversations whose KV cache is kept (>= n_parallel); 0 = no reuse */
    const char *spill_dir;   /* KV of conversations pushed out of memory goes here; NULL = dropped */
    size_t spill_mib;        /* disk budget for those (default 1024) */
    int warm_sessions;       /* conversations llm_warm may keep warmed at once, among kv_sessions (0: off) */
    int warm_window_s;       /* a warmed conversation unused this long is the first evicted (default 600) */
    const char *kv_type;     /* the KV cache's element type: "f16" (default) or "q8_0" (half the bytes to keep,
                                spill and transfer; llama.cpp then computes attention with flash attention) */
    bool progress;           /* print loading progress (when stderr is a terminal) */
} llm_params;

llm_params llm_default_params(void);

/* Loads the model and creates its context. NULL on failure, reason in err. */
llm *llm_load(const llm_params *p, char *err, size_t errlen);
void llm_free(llm *m);

/* Model facts. */
const char *llm_model_name(const llm *m);   /* general.name, or the file name */
int llm_n_ctx(const llm *m);
int llm_n_threads(const llm *m);
int llm_n_vocab(const llm *m); /* 0 when not known */
/* 64-bit FNV-1a over the vocabulary (every token's text and attributes) and the
 * chat template: two nodes agree on it exactly when stored token ids mean the
 * same thing to both. */
uint64_t llm_fingerprint(const llm *m);
bool llm_is_remote(const llm *m);
/* Where a local engine computes: the ggml CPU variant ggml picked for this
 * CPU and the instruction sets it was built for, e.g. "libggml-cpu-zen4.so:
 * SSE3 ... AVX512". llama.cpp's numerics differ between variants, so logs,
 * /health and test output name it. "remote" for a remote engine. */
const char *llm_backend(const llm *m);

/* The same without a model: loads the ggml backends from backend_dir (NULL:
 * the built-in folder) and describes the CPU variant into out. 0 or -1. */
int llm_cpu_backend(const char *backend_dir, char *out, size_t outlen);
/* The CPU's own name as ggml reads it (after llm_cpu_backend). 0 or -1. */
int llm_cpu_name(char *out, size_t outlen);

/* Tokenizes text. parse_special=false keeps "<|im_end|>" in user text as plain
 * text; true turns it into the control token. No BOS is added. Returns 0, or
 * -1 if the text cannot be tokenized. */
int llm_tokenize(const llm *m, const char *text, size_t len, bool parse_special, tokvec *out);

/* Appends the token a conversation must start with to out: the model's BOS
 * when its metadata asks for one (tokenizer.ggml.add_bos_token: Llama,
 * Gemma, Mistral; not SmolLM2, Qwen; a remote engine says through /tokenize
 * with add_special). Returns the tokens appended (0 or 1). Whoever builds the start of a conversation calls it exactly once
 * (the context manager: turn 1's first stored segment, a raw or client-side
 * input), so the model sees BOS once, at position 0. */
size_t llm_add_bos(const llm *m, tokvec *out);
/* The text of the model's BOS and EOS tokens (llama-server's /props
 * bos_token, eos_token); "" when it has none. */
const char *llm_bos_text(const llm *m);
const char *llm_eos_text(const llm *m);

/* A chat message for rendering. role is "system", "user" or "assistant". */
typedef struct {
    const char *role;
    const char *content;
} llm_msg;

/* Renders messages with the model's own chat template and appends their
 * tokens to out. The template's markup is tokenized with special tokens
 * parsed; message contents never are, so a message cannot forge markup. With
 * add_assistant the assistant prefix (e.g. "<|im_start|>assistant\n") ends the
 * output. Rendering messages one at a time and concatenating gives the same
 * tokens as rendering them together (the context manager relies on it; a test
 * checks it). Returns 0, or -1 if the template fails. */
int llm_chat_render(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, tokvec *out);

/* The same for each message on its own: appends msgs[i]'s tokens to
 * *outs[i], as n calls of llm_chat_render with one message each would (the
 * last one's followed by the assistant prefix with add_assistant). Made for
 * a remote engine, which renders them all in one round trip where the
 * service offers it (remote.c). 0, or -1 when any fails (the outs may then
 * hold part of it). */
int llm_chat_render_each(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, tokvec *const *outs);

/* Renders msgs with the model's chat template as text (replacing out's
 * contents): what llama-server's /apply-template answers. 0 or -1. */
int llm_apply_template(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, strbuf *out);

/* The tokens the template puts after an assistant reply (e.g. "<|im_end|>\n").
 * A committed turn stores the generated ids followed by these. */
const tokvec *llm_turn_end(const llm *m);

/* Appends the text of toks to out (special tokens are not rendered).
 * Returns 0, or -1 if an id is not in the vocabulary or the service cannot
 * be reached. */
int llm_detokenize(const llm *m, const int32_t *toks, size_t n, strbuf *out);

typedef enum {
    LLM_OK = 0,
    LLM_FAIL = -1,      /* the input does not fit, or llama.cpp failed; reason in err */
    LLM_BUSY = -2,      /* the admission queue is full: try again later */
    LLM_CANCELLED = -3  /* alive() said the caller is gone; partial output discarded */
} llm_status;

typedef struct {
    int n_predict;       /* cap on generated tokens; must be >= 1 */
    float temperature;   /* <= 0: greedy */
    float top_p;         /* 0 < top_p <= 1 */
    int top_k;           /* <= 0: off */
    uint32_t seed;       /* for sampling when temperature > 0 */
    bool cache_prompt;   /* reuse KV of a previous request sharing a prefix (default true) */
    /* Whose KV this is. A request reuses only KV computed for requests of the
     * same owner (byte-equal strings): another owner's cached prefix counts
     * as 0, is never reused, and its length is never reported (cached_n), so
     * one user cannot probe another's prompts through the cache (engine.c;
     * docs/SECURITY.md). NULL or "": shares with nobody. The context manager
     * passes the request's user. */
    const char *owner;
    bool ignore_eos;     /* never stop at an end-of-generation token: exactly n_predict tokens */
    /* Polled while the request waits or runs (about every 100 ms); returning
     * false abandons it (LLM_CANCELLED). NULL: never abandoned. */
    bool (*alive)(void *ud);
    void *alive_ud;
    /* Streaming: called with each generated token as it is sampled, on the
     * engine's thread (local; so it must not block), or with all of them once
     * the reply is complete (remote). The end-of-generation token is not
     * passed. NULL: not streamed. */
    void (*on_token)(void *ud, int32_t tok);
    void *on_token_ud;
    /* Inspection: called on the engine's thread with the logits each token is
     * sampled from (n_vocab floats, valid only during the call), the
     * end-of-generation token's included. The logits are what the model
     * computed for this request's context, KV reuse or not: a test compares
     * them with a fresh prefill of the same tokens (test_llm). Local engine
     * only; a remote engine refuses a request that sets it. NULL: off. */
    void (*on_logits)(void *ud, const float *logits, int n_vocab);
    void *on_logits_ud;
} llm_gen_params;

llm_gen_params llm_default_gen_params(void);

typedef struct {
    int prompt_n;        /* tokens prefilled (input tokens not found in the KV cache) */
    int cached_n;        /* input tokens whose KV was reused (the owner's own, see owner) */
    double queue_ms;     /* waiting for a free sequence */
    double prompt_ms;
    int predicted_n;     /* tokens generated (end-of-generation token not counted) */
    double predicted_ms;
    bool stopped_eog;    /* stopped at an end-of-generation token */
    bool stopped_limit;  /* stopped at n_predict or the context end */
    int32_t eog_token;   /* with stopped_eog: the token it stopped at (not in the output) */
} llm_timings;

/* Generates a reply to the token sequence input, appending the generated ids
 * (without the end-of-generation token) to out. On anything but LLM_OK, err
 * says why and out holds nothing new. */
llm_status llm_generate(llm *m, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out, llm_timings *t,
                        char *err, size_t errlen);

/* After a call of this thread failed: why, when the reason is that the LLM
 * service cannot be reached (remote); NULL for any other failure. */
const char *llm_unreachable(void);

/* Counters since load, and the engine's state now. */
typedef struct {
    uint64_t requests, kv_hits, cached_tokens, prefilled_tokens, generated_tokens, busy, cancelled;
    uint64_t spill_saves, spill_restores;
    size_t spill_bytes;
    int active, queued;
    int n_slots, n_parallel;
    /* when a refused request should retry, in seconds (>= 1): the engine's
     * estimate of when the queue now waiting will have reached a sequence */
    unsigned retry_after_s;
    size_t kv_bytes; /* the context's KV streams: n_slots windows, reserved at start */
    /* what is kept now: tokens in the sequences, and the conversations
     * kept in memory outside them (their count, tokens and bytes: the part
     * of resident KV that follows the tokens, engine.c) */
    size_t kv_slot_tokens, kv_parked_tokens, kv_parked_bytes;
    int kv_parked;
    /* warm-up (llm_warm): asked, finished (all its tokens held), tokens and
     * milliseconds prefilled, warmed conversations a request of their
     * owner then used and those given up unused (with the prefill time they
     * had cost); pending now, slots holding warmed KV now */
    uint64_t warm_requests, warm_done, warm_tokens, warm_used, warm_unused;
    double warm_ms, warm_unused_ms;
    int warm_pending, warm_slots;
    int warm_sessions; /* the bound (llm_params.warm_sessions as the engine applies it); 0: no warm-up */
    /* warm-up chunks decoded, and the most of them any request waited for
     * between arriving and starting (the bound is 1: engine.c) */
    uint64_t warm_chunks, warm_wait_chunks_max;
    double prompt_ms; /* summed over requests: prefilled_tokens / prompt_ms is the measured prefill rate */
    /* KV transfer between nodes (llm_kv_export/import) */
    uint64_t kv_exports, kv_imports, kv_import_refused;
} llm_stats;

void llm_stats_get(llm *m, llm_stats *out);

/* Admission ahead of the work: LLM_BUSY when a generation asked for now
 * would be refused (counted in llm_stats.busy as one), so that a caller
 * can refuse before rendering and tokenizing for nothing; LLM_OK otherwise.
 * Racy by design: llm_generate still refuses what it cannot take. A remote
 * engine always says LLM_OK: its service decides. */
llm_status llm_admit(llm *m);

/* Warm-up: prefills toks into a kept conversation of owner in the
 * background, so that a later llm_generate of the same owner whose input
 * extends toks prefills only the rest. Returns at once; the work runs only
 * while no generation is active or waiting, a chunk at a time (a request
 * that arrives waits for one chunk at most), and warms at most
 * warm_sessions conversations besides the live ones. A conversation warmed
 * before is extended, not prefilled again. A newer call for the same owner
 * replaces a pending one. False when warm-up is off (warm_sessions 0, KV
 * reuse off, a remote engine) or toks cannot fit a sequence. */
bool llm_warm(llm *m, const char *owner, const int32_t *toks, size_t n);
/* Drops every KV of owner this engine keeps (memory, spill, warm-up under
 * way), e.g. of a deleted session. A generation running for owner keeps
 * its own. */
void llm_forget(llm *m, const char *owner);
/* KV transfer between nodes (issue 15; api/peer.c, ctx.c).
 *
 * A state travels as one blob: a header naming everything the receiver must
 * share for the KV to mean the same thing there (local.c: the tokenizer
 * fingerprint, the model's size, parameters and shape, the KV element
 * types, the tokens per sequence), then the token ids whose KV it is, then
 * llama.cpp's sequence state. A remote engine supports none of it (-1,
 * "not supported").
 *
 * held: how many leading tokens of toks owner's KV covers here (0: none).
 * export: appends the blob of owner's cached entry whose tokens are the
 * longest whole prefix of toks to out; an entry holding tokens past what
 * toks holds is never exported. 0, or -1 (nothing held; reason in err).
 * import: verifies blob against this model and against want, the tokens
 * the caller read from its own store (the blob's tokens must be exactly a
 * prefix of them, at least one), then loads it for owner, so that the next
 * generation of owner extending those tokens reuses it. *n_imported: the
 * tokens loaded. 0, or -1 (refused, counted in kv_import_refused). */
size_t llm_kv_held(llm *m, const char *owner, const int32_t *toks, size_t n);
int llm_kv_export(llm *m, const char *owner, const int32_t *toks, size_t n, strbuf *out, char *err, size_t errlen);
int llm_kv_import(llm *m, const char *owner, const int32_t *want, size_t n_want, const void *blob, size_t len,
                  size_t *n_imported, char *err, size_t errlen);

/* Physical cores of this machine (for the default thread count). */
int llm_physical_cores(void);

#endif
