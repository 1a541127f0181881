/* local.c - the `local` LLM service: llama.cpp linked in-process.
 *
 * The libraries are the prebuilt ones shipped in @node-llama-cpp/linux-x64;
 * the CPU backend is one of several libggml-cpu-<arch>.so variants picked at
 * run time by score. ggml_backend_load_all() only looks beside the executable
 * and in the working directory, so we load from an explicit folder instead.
 * Generation goes through the engine (engine.c): continuous batching over
 * several sequences of one context, with KV-cache reuse. */
#include "llm_impl.h"

#include <dlfcn.h>
#include <ggml-backend.h>
#include <llama.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../util/log.h"
#include "engine.h"

#ifndef DC_BACKEND_DIR
#define DC_BACKEND_DIR "."
#endif

typedef struct {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    char *tmpl;          /* the model's chat template, or "chatml" */
    size_t kv_bytes;
    engine *eng;
    int n_ctx_seq;
    enum ggml_type kv_type; /* K and V (--kv-type) */
    uint64_t fingerprint;
    uint64_t desc_hash; /* llama_model_desc and general.name */
} local;

int llm_physical_cores(void) {
    /* Distinct (package, core) pairs; hyperthreads share a core and would only
     * contend for it during matrix multiplications. */
    int seen[256][2], n = 0;
    for (int cpu = 0; cpu < 1024 && n < 256; cpu++) {
        char path[128];
        int pkg = -1, core = -1;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        FILE *f = fopen(path, "r");
        if (!f) break;
        if (fscanf(f, "%d", &pkg) != 1) pkg = -1;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        if ((f = fopen(path, "r"))) {
            if (fscanf(f, "%d", &core) != 1) core = -1;
            fclose(f);
        }
        int dup = 0;
        for (int i = 0; i < n && !dup; i++) dup = seen[i][0] == pkg && seen[i][1] == core;
        if (!dup) {
            seen[n][0] = pkg;
            seen[n][1] = core;
            n++;
        }
    }
    if (n > 0) return n;
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)c : 1;
}

static void on_llama_log(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    /* llama.cpp is chatty at INFO; keep its errors, and everything at debug. */
    if (level == GGML_LOG_LEVEL_ERROR || log_level() == LOG_DEBUG) fputs(text, stderr);
}

static bool on_progress(float p, void *ud) {
    int *last = ud;
    int pct = (int)(p * 100.0f);
    if (pct != *last) {
        *last = pct;
        fprintf(stderr, "\rloading model: %3d%%%s", pct, pct >= 100 ? "\n" : "");
    }
    return true;
}

static pthread_once_t backend_once = PTHREAD_ONCE_INIT;
static const char *backend_dir_arg;

static void backend_init(void) {
    llama_log_set(on_llama_log, NULL);
    ggml_backend_load_all_from_path(backend_dir_arg);
    llama_backend_init();
}

/* Loads the backends (once per process: the first folder asked for wins).
 * The CPU variant is the shared object that holds the CPU registry's
 * functions; ggml does not name it otherwise. */
int llm_cpu_backend(const char *backend_dir, char *out, size_t outlen) {
    snprintf(out, outlen, "none");
    backend_dir_arg = backend_dir ? backend_dir : DC_BACKEND_DIR;
    pthread_once(&backend_once, backend_init);
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CPU");
    ggml_backend_get_features_t features = reg
        ? (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features")
        : NULL;
    if (!features) return -1;
    Dl_info di;
    const char *file = dladdr((void *)features, &di) && di.dli_fname ? di.dli_fname : "?";
    const char *base = strrchr(file, '/');
    int n = snprintf(out, outlen, "%s:", base ? base + 1 : file);
    for (struct ggml_backend_feature *f = features(reg); f && f->name && n >= 0 && (size_t)n < outlen; f++)
        if (!strcmp(f->value, "1")) n += snprintf(out + n, outlen - (size_t)n, " %s", f->name);
    return 0;
}

int llm_cpu_name(char *out, size_t outlen) {
    snprintf(out, outlen, "unknown");
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) return -1;
    snprintf(out, outlen, "%s", ggml_backend_dev_description(dev));
    return 0;
}

/* Over the vocabulary (every token's text and attributes) and the chat
 * template: two nodes agree on it exactly when stored token ids mean the same
 * thing to both. */
static uint64_t compute_fingerprint(const local *m) {
    uint64_t h = HASH_FNV_BASIS;
    int32_t n = llama_vocab_n_tokens(m->vocab);
    h = hash_fnv1a(h, &n, sizeof n);
    for (int32_t i = 0; i < n; i++) {
        const char *t = llama_vocab_get_text(m->vocab, i);
        int32_t attr = (int32_t)llama_vocab_get_attr(m->vocab, i);
        h = hash_fnv1a(h, t, strlen(t) + 1);
        h = hash_fnv1a(h, &attr, sizeof attr);
    }
    return hash_fnv1a(h, m->tmpl, strlen(m->tmpl));
}

/* Renders msgs to text, NUL-terminated, into out. Returns 0 or -1. */
static int local_apply_template(void *impl, const llm_msg *lm, size_t n, bool add_ass, strbuf *out) {
    local *m = impl;
    /* llm_msg has llama_chat_message's layout; say so rather than copy */
    _Static_assert(sizeof(llm_msg) == sizeof(struct llama_chat_message), "llm_msg layout");
    const struct llama_chat_message *msgs = (const struct llama_chat_message *)lm;
    strbuf_clear(out);
    int32_t cap = 256;
    for (size_t i = 0; i < n; i++) cap += 2 * (int32_t)strlen(msgs[i].content) + 64;
    for (;;) {
        strbuf_reserve(out, (size_t)cap);
        int32_t need = llama_chat_apply_template(m->tmpl, msgs, n, add_ass, out->s, cap);
        if (need < 0) return -1;
        /* strncpy semantics: no terminator when the buffer is exactly full, so
         * require one spare byte */
        if (need < cap) {
            out->n = (size_t)need;
            out->s[need] = '\0';
            return 0;
        }
        cap = need + 1;
    }
}

static int local_tokenize(void *impl, const char *text, size_t len, bool parse_special, tokvec *out) {
    local *m = impl;
    if (len > INT32_MAX / 2) return -1;
    int32_t cap = (int32_t)len + 8; /* a token covers at least one byte, plus a possible BOS/space */
    tokvec_reserve(out, out->n + (size_t)cap);
    int32_t got = llama_tokenize(m->vocab, text, (int32_t)len, out->v + out->n, cap, false, parse_special);
    if (got < 0) {
        if (got == INT32_MIN) return -1;
        tokvec_reserve(out, out->n + (size_t)-got);
        got = llama_tokenize(m->vocab, text, (int32_t)len, out->v + out->n, -got, false, parse_special);
        if (got < 0) return -1;
    }
    out->n += (size_t)got;
    return 0;
}

static int local_detokenize(void *impl, const int32_t *toks, size_t n, strbuf *out) {
    local *m = impl;
    int32_t cap = (int32_t)n * 8 + 16;
    for (;;) {
        strbuf_reserve(out, out->n + (size_t)cap);
        int32_t got = llama_detokenize(m->vocab, toks, (int32_t)n, out->s + out->n, cap, false, false);
        if (got >= 0) {
            out->n += (size_t)got;
            out->s[out->n] = '\0';
            return 0;
        }
        cap = -got + 1;
    }
}

static void local_free(void *impl);

/* A special token's text ("<eos>"), as llama-server's /props gives it. */
static void token_text(const local *m, llama_token t, char *out, size_t n) {
    int32_t got = t == LLAMA_TOKEN_NULL ? 0 : llama_token_to_piece(m->vocab, t, out, (int32_t)n - 1, 0, true);
    out[got > 0 ? got : 0] = '\0';
}

void *llm_local_open(const llm_params *p, llm_info *info, char *err, size_t errlen) {
    if (!p->model_path) {
        snprintf(err, errlen, "no model given (--model PATH)");
        return NULL;
    }
    if (access(p->model_path, R_OK) != 0) {
        snprintf(err, errlen, "cannot read model %s", p->model_path);
        return NULL;
    }
    if (llm_cpu_backend(p->backend_dir, info->backend, sizeof info->backend) != 0) {
        snprintf(err, errlen, "no ggml CPU backend found in %s", backend_dir_arg);
        return NULL;
    }

    local *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    int last_pct = -1;
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    if (p->progress && isatty(STDERR_FILENO)) {
        mp.progress_callback = on_progress;
        mp.progress_callback_user_data = &last_pct;
    }
    m->model = llama_model_load_from_file(p->model_path, mp);
    if (!m->model) {
        snprintf(err, errlen, "cannot load model %s (not a GGUF llama.cpp can read?)", p->model_path);
        local_free(m);
        return NULL;
    }
    m->vocab = llama_model_get_vocab(m->model);

    const char *t = llama_model_chat_template(m->model, NULL);
    m->tmpl = strdup(t ? t : "chatml");
    {
        /* llama_chat_apply_template knows built-in templates only */
        struct llama_chat_message probe = {"user", "x"};
        char buf[256];
        if (llama_chat_apply_template(m->tmpl, &probe, 1, true, buf, sizeof buf) < 0) {
            snprintf(err, errlen, "the model's chat template is not one llama_chat_apply_template supports");
            local_free(m);
            return NULL;
        }
    }
    if (llama_model_meta_val_str(m->model, "general.name", info->name, sizeof info->name) <= 0) {
        const char *base = strrchr(p->model_path, '/');
        snprintf(info->name, sizeof info->name, "%s", base ? base + 1 : p->model_path);
    }

    int train = llama_model_n_ctx_train(m->model);
    info->n_ctx = p->n_ctx > 0 ? p->n_ctx : (train > 0 && train < 4096 ? train : 4096);
    info->n_ctx = (info->n_ctx + 255) / 256 * 256; /* llama.cpp pads each sequence's cells to 256 */
    info->n_threads = p->n_threads > 0 ? p->n_threads : llm_physical_cores();
    /* One KV stream per request generating at once, each a full window
     * reserved now; the other kept conversations wait in the engine's
     * spill, in the bytes their tokens need (spill.c says why). */
    int n_slots = p->n_parallel;
    int n_batch = info->n_ctx < 512 ? info->n_ctx : 512;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)info->n_ctx * (uint32_t)n_slots;
    cp.n_batch = (uint32_t)n_batch;
    cp.n_ubatch = (uint32_t)n_batch;
    cp.n_seq_max = (uint32_t)n_slots;
    cp.kv_unified = false;
    cp.n_threads = info->n_threads;
    cp.n_threads_batch = info->n_threads;
    cp.no_perf = true;
    /* --kv-type: llama.cpp quantizes V only with flash attention, which
     * the default (auto) turns on where the backend has it */
    m->kv_type = GGML_TYPE_F16;
    if (p->kv_type && !strcmp(p->kv_type, "q8_0")) m->kv_type = GGML_TYPE_Q8_0;
    else if (p->kv_type && strcmp(p->kv_type, "f16") != 0) {
        snprintf(err, errlen, "unknown KV type %s (f16 or q8_0)", p->kv_type);
        local_free(m);
        return NULL;
    }
    cp.type_k = cp.type_v = m->kv_type;
    m->ctx = llama_init_from_model(m->model, cp);
    if (!m->ctx) {
        snprintf(err, errlen, "cannot create a context of %d sequences of %d tokens", n_slots, info->n_ctx);
        local_free(m);
        return NULL;
    }
    /* K and V (of --kv-type) for every cell of every layer */
    int n_head = llama_model_n_head(m->model);
    size_t head_dim = n_head > 0 ? (size_t)llama_model_n_embd(m->model) / (size_t)n_head : 0;
    m->kv_bytes = (size_t)n_slots * (size_t)info->n_ctx * (size_t)llama_model_n_layer(m->model) * 2 *
        ggml_row_size(m->kv_type, (int64_t)((size_t)llama_model_n_head_kv(m->model) * head_dim));
    m->n_ctx_seq = info->n_ctx;
    engine_params ep = {.n_slots = n_slots,
                        .kv_sessions = p->kv_sessions,
                        .n_parallel = p->n_parallel,
                        .n_queue = p->n_queue,
                        .n_ctx_seq = info->n_ctx,
                        .n_batch = n_batch,
                        .reuse = p->kv_sessions > 0,
                        .spill_dir = p->spill_mib ? p->spill_dir : NULL,
                        .spill_budget = p->spill_mib << 20,
                        .spill_min = 64,
                        /* warm-up runs on an idle engine only and may use
                         * every sequence (a conversation it pushes out is
                         * spilled, not lost); its chunk bounds a live
                         * request's wait for it (engine.c) */
                        .warm_sessions = p->warm_sessions < n_slots ? p->warm_sessions : n_slots,
                        .warm_chunk = 128,
                        .warm_window_ms = p->warm_window_s * 1000.0};
    m->eng = engine_new(m->ctx, m->vocab, &ep);
    if (!m->eng) {
        snprintf(err, errlen, "cannot start the generation engine");
        local_free(m);
        return NULL;
    }
    info->fingerprint = m->fingerprint = compute_fingerprint(m);
    {
        char desc[256];
        llama_model_desc(m->model, desc, sizeof desc);
        m->desc_hash = hash_fnv1a(hash_fnv1a(HASH_FNV_BASIS, desc, strlen(desc)), info->name, strlen(info->name));
    }
    info->n_vocab = llama_vocab_n_tokens(m->vocab);
    /* tokenizer.ggml.add_bos_token: llama_tokenize would add it with
     * add_special, but we tokenize pieces of a conversation, so the context
     * manager places it once at the start (llm_add_bos) */
    llama_token bos = llama_vocab_bos(m->vocab), eos = llama_vocab_eos(m->vocab);
    info->bos = llama_vocab_get_add_bos(m->vocab) && bos != LLAMA_TOKEN_NULL ? bos : -1;
    token_text(m, bos, info->bos_text, sizeof info->bos_text);
    token_text(m, eos, info->eos_text, sizeof info->eos_text);
    return m;
}

static void local_free(void *impl) {
    local *m = impl;
    if (!m) return;
    engine_free(m->eng);
    if (m->ctx) llama_free(m->ctx);
    if (m->model) llama_model_free(m->model);
    free(m->tmpl);
    free(m);
}

static void local_stats(void *impl, llm_stats *out) {
    local *m = impl;
    engine_stats_get(m->eng, out);
    out->kv_bytes = m->kv_bytes;
}

static llm_status local_generate(void *impl, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                                 llm_timings *t, char *err, size_t errlen) {
    return engine_generate(((local *)impl)->eng, input, n, p, out, t, err, errlen);
}

static llm_status local_admit(void *impl) { return engine_admit(((local *)impl)->eng); }

static bool local_warm(void *impl, const char *owner, const int32_t *toks, size_t n) {
    return engine_warm(((local *)impl)->eng, owner, toks, n);
}

static void local_forget(void *impl, const char *owner) { engine_forget(((local *)impl)->eng, owner); }

/* --- KV transfer: the blob (llm.h) ---------------------------------------
 *
 * Little endian:
 *   "DCKV" | u32 version (1) | u64 fingerprint (tokenizer and template) |
 *   u64 model desc hash (llama_model_desc, general.name) | u64 model size |
 *   u64 model parameters | u32 layers | u32 n_embd | u32 KV heads |
 *   u32 K type | u32 V type (ggml_type) | u32 tokens per sequence (the
 *   sender's; informative) | u32 n | n x u32 token ids | u64 state bytes |
 *   llama_state_seq_get_data's bytes
 * Every model fact must equal the receiver's: a state computed by other
 * weights (another quantization of the same model shares the tokenizer
 * fingerprint, not the size) or with another KV type is not this model's
 * KV. What llama.cpp checks again when loading (layers, types, row sizes)
 * is checked here first, so a mismatch is told by name. The header cannot
 * prove that the KV was computed from those tokens: only that it claims
 * to be, by a node holding the peer key (docs/SECURITY.md). */
#define KV_MAGIC "DCKV"
#define KV_VERSION 1
enum { KV_HEADER = 4 + 4 + 8 * 4 + 4 * 7 };

static void put32(strbuf *b, uint32_t v) {
    unsigned char t[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    strbuf_append(b, t, 4);
}

static void put64(strbuf *b, uint64_t v) {
    put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
}

static uint64_t get_n(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The model facts of the header, in its order. */
static void kv_facts(const local *m, uint64_t f64[4], uint32_t f32[6]) {
    f64[0] = m->fingerprint;
    f64[1] = m->desc_hash;
    f64[2] = llama_model_size(m->model);
    f64[3] = llama_model_n_params(m->model);
    f32[0] = (uint32_t)llama_model_n_layer(m->model);
    f32[1] = (uint32_t)llama_model_n_embd(m->model);
    f32[2] = (uint32_t)llama_model_n_head_kv(m->model);
    f32[3] = f32[4] = (uint32_t)m->kv_type;
    f32[5] = (uint32_t)m->n_ctx_seq;
}

static size_t local_kv_held(void *impl, const char *owner, const int32_t *toks, size_t n) {
    return engine_kv_held(((local *)impl)->eng, owner, toks, n);
}

static int local_kv_export(void *impl, const char *owner, const int32_t *toks, size_t n, strbuf *out, char *err,
                           size_t errlen) {
    local *m = impl;
    strbuf state = {0};
    size_t held = 0;
    if (engine_kv_export(m->eng, owner, toks, n, &state, &held, err, errlen) != 0) {
        strbuf_free(&state);
        return -1;
    }
    uint64_t f64[4];
    uint32_t f32[6];
    kv_facts(m, f64, f32);
    strbuf_reserve(out, out->n + KV_HEADER + 4 * held + 8 + state.n);
    strbuf_append(out, KV_MAGIC, 4);
    put32(out, KV_VERSION);
    for (int i = 0; i < 4; i++) put64(out, f64[i]);
    for (int i = 0; i < 6; i++) put32(out, f32[i]);
    put32(out, (uint32_t)held);
    for (size_t i = 0; i < held; i++) put32(out, (uint32_t)toks[i]);
    put64(out, state.n);
    strbuf_append(out, state.s, state.n);
    strbuf_free(&state);
    return 0;
}

static int local_kv_import(void *impl, const char *owner, const int32_t *want, size_t n_want, const void *blob,
                           size_t len, size_t *n_imported, char *err, size_t errlen) {
    static const char *const what64[4] = {"tokenizer fingerprint", "model", "model size", "model parameters"};
    static const char *const what32[5] = {"layer count", "embedding size", "KV head count", "K type", "V type"};
    local *m = impl;
    const unsigned char *p = blob, *end = p + len;
    if (len < KV_HEADER || memcmp(p, KV_MAGIC, 4) != 0) return snprintf(err, errlen, "not a KV state"), -1;
    if (get_n(p + 4, 4) != KV_VERSION) return snprintf(err, errlen, "unsupported KV state version"), -1;
    uint64_t f64[4];
    uint32_t f32[6];
    kv_facts(m, f64, f32);
    p += 8;
    for (int i = 0; i < 4; i++, p += 8)
        if (get_n(p, 8) != f64[i])
            return snprintf(err, errlen, "the state's %s differs from this node's", what64[i]), -1;
    for (int i = 0; i < 6; i++, p += 4)
        if (i < 5 && get_n(p, 4) != f32[i])
            return snprintf(err, errlen, "the state's %s differs from this node's", what32[i]), -1;
    uint64_t n = get_n(p, 4);
    p += 4;
    /* exactly a prefix of the stored tokens, at least one */
    if (n == 0 || n > n_want || n > (uint64_t)(end - p) / 4)
        return snprintf(err, errlen, "the state holds %llu tokens; the stored context has %zu", (unsigned long long)n,
                        n_want),
               -1;
    for (size_t i = 0; i < n; i++, p += 4)
        if (get_n(p, 4) != (uint32_t)want[i])
            return snprintf(err, errlen, "the state's tokens differ from the stored ones at %zu", i), -1;
    if (end - p < 8 || get_n(p, 8) != (uint64_t)(end - p - 8))
        return snprintf(err, errlen, "the state's length does not match its header"), -1;
    p += 8;
    if (engine_kv_import(m->eng, owner, want, (size_t)n, p, (size_t)(end - p), err, errlen) != 0) return -1;
    *n_imported = (size_t)n;
    return 0;
}

const llm_ops llm_local_ops = {
    .apply_template = local_apply_template,
    .tokenize = local_tokenize,
    .detokenize = local_detokenize,
    .generate = local_generate,
    .stats = local_stats,
    .admit = local_admit,
    .warm = local_warm,
    .forget = local_forget,

    .kv_held = local_kv_held,
    .kv_export = local_kv_export,
    .kv_import = local_kv_import,
    .free = local_free,
};
