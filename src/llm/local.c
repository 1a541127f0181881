/* local.c - the `local` LLM service: llama.cpp linked in-process.
 *
 * The libraries are the prebuilt ones shipped in @node-llama-cpp/linux-x64;
 * the CPU backend is one of several libggml-cpu-<arch>.so variants picked at
 * run time by score. ggml_backend_load_all() only looks beside the executable
 * and in the working directory, so we load from an explicit folder instead.
 *
 * Chat rendering: llama_chat_apply_template renders text, but user text must
 * never become control tokens. We render with every message content replaced
 * by a unique sentinel, then tokenize the template's markup (between
 * sentinels) with special-token parsing on and each real content with it off.
 * Markup and content boundaries always fall on special tokens or at the ends
 * of markup ("<|im_start|>user\n" | content | "<|im_end|>\n"), so rendering
 * messages one by one and concatenating equals rendering them together. */
#include "llm.h"

#include <ggml-backend.h>
#include <llama.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "engine.h"

#ifndef DC_BACKEND_DIR
#define DC_BACKEND_DIR "."
#endif

struct llm {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    char *tmpl;          /* the model's chat template, or "chatml" */
    char name[128];
    int n_ctx, n_threads; /* n_ctx: per conversation */
    uint64_t fingerprint;
    tokvec turn_end;
    size_t kv_bytes;
    engine *eng;
};

/* Content placeholders: control characters no template adds or trims. */
#define SENTINEL_FMT "\x1e" "dc%zu" "\x1f"

llm_params llm_default_params(void) {
    return (llm_params){.model_path = NULL, .backend_dir = NULL, .n_ctx = 0, .n_threads = 0, .n_parallel = 4,
                        .n_queue = 16, .kv_sessions = 8, .progress = true};
}

llm_gen_params llm_default_gen_params(void) {
    return (llm_gen_params){.n_predict = 128, .temperature = 0.8f, .top_p = 0.95f, .top_k = 40, .seed = 0,
                            .cache_prompt = true};
}

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

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t compute_fingerprint(const llm *m) {
    uint64_t h = 0xcbf29ce484222325ULL;
    int32_t n = llama_vocab_n_tokens(m->vocab);
    h = fnv1a(h, &n, sizeof n);
    for (int32_t i = 0; i < n; i++) {
        const char *t = llama_vocab_get_text(m->vocab, i);
        int32_t attr = (int32_t)llama_vocab_get_attr(m->vocab, i);
        h = fnv1a(h, t, strlen(t) + 1);
        h = fnv1a(h, &attr, sizeof attr);
    }
    return fnv1a(h, m->tmpl, strlen(m->tmpl));
}

/* Renders msgs to text, NUL-terminated, into out. Returns 0 or -1. */
static int apply_template(const llm *m, const struct llama_chat_message *msgs, size_t n, bool add_ass,
                          strbuf *out) {
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

int llm_tokenize(const llm *m, const char *text, size_t len, bool parse_special, tokvec *out) {
    if (len == 0) return 0;
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

int llm_chat_render(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, tokvec *out) {
    struct llama_chat_message *cm = calloc(n ? n : 1, sizeof *cm);
    char (*sent)[32] = calloc(n ? n : 1, sizeof *sent);
    strbuf text = {0};
    int rc = -1;
    if (!cm || !sent) goto done;
    for (size_t i = 0; i < n; i++) {
        snprintf(sent[i], sizeof sent[i], SENTINEL_FMT, i);
        cm[i].role = msgs[i].role;
        cm[i].content = sent[i];
    }
    if (apply_template(m, cm, n, add_assistant, &text) != 0) goto done;
    const char *p = text.s;
    for (size_t i = 0; i < n; i++) {
        const char *at = strstr(p, sent[i]);
        if (!at) goto done; /* the template dropped a message (e.g. no system role) */
        if (llm_tokenize(m, p, (size_t)(at - p), true, out) != 0) goto done;
        if (llm_tokenize(m, msgs[i].content, strlen(msgs[i].content), false, out) != 0) goto done;
        p = at + strlen(sent[i]);
    }
    rc = llm_tokenize(m, p, strlen(p), true, out);
done:
    strbuf_free(&text);
    free(sent);
    free(cm);
    return rc;
}

const tokvec *llm_turn_end(const llm *m) { return &m->turn_end; }

/* What the template writes after an assistant message's content. */
static int compute_turn_end(llm *m) {
    struct llama_chat_message cm[2] = {{"user", "u"}, {"assistant", "\x1e" "dcend" "\x1f"}};
    strbuf text = {0};
    int rc = -1;
    if (apply_template(m, cm, 2, false, &text) == 0) {
        const char *at = strstr(text.s, cm[1].content);
        if (at) {
            at += strlen(cm[1].content);
            rc = llm_tokenize(m, at, strlen(at), true, &m->turn_end);
        }
    }
    strbuf_free(&text);
    return rc;
}

void llm_detokenize(const llm *m, const int32_t *toks, size_t n, strbuf *out) {
    if (n == 0) return;
    int32_t cap = (int32_t)n * 8 + 16;
    for (;;) {
        strbuf_reserve(out, out->n + (size_t)cap);
        int32_t got = llama_detokenize(m->vocab, toks, (int32_t)n, out->s + out->n, cap, false, false);
        if (got >= 0) {
            out->n += (size_t)got;
            out->s[out->n] = '\0';
            return;
        }
        cap = -got + 1;
    }
}

llm *llm_load(const llm_params *p, char *err, size_t errlen) {
    if (!p->model_path) {
        snprintf(err, errlen, "no model given (--model PATH)");
        return NULL;
    }
    if (access(p->model_path, R_OK) != 0) {
        snprintf(err, errlen, "cannot read model %s", p->model_path);
        return NULL;
    }
    backend_dir_arg = p->backend_dir ? p->backend_dir : DC_BACKEND_DIR;
    pthread_once(&backend_once, backend_init);
    if (!ggml_backend_dev_count()) {
        snprintf(err, errlen, "no ggml backend found in %s", backend_dir_arg);
        return NULL;
    }

    llm *m = calloc(1, sizeof *m);
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
        llm_free(m);
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
            llm_free(m);
            return NULL;
        }
    }
    if (llama_model_meta_val_str(m->model, "general.name", m->name, sizeof m->name) <= 0) {
        const char *base = strrchr(p->model_path, '/');
        snprintf(m->name, sizeof m->name, "%s", base ? base + 1 : p->model_path);
    }

    if (p->n_parallel < 1 || p->n_queue < 0 || p->kv_sessions < 0) {
        snprintf(err, errlen, "n_parallel must be >= 1, n_queue and kv_sessions >= 0");
        llm_free(m);
        return NULL;
    }
    int train = llama_model_n_ctx_train(m->model);
    m->n_ctx = p->n_ctx > 0 ? p->n_ctx : (train > 0 && train < 4096 ? train : 4096);
    m->n_ctx = (m->n_ctx + 255) / 256 * 256; /* llama.cpp pads each sequence's cells to 256 */
    m->n_threads = p->n_threads > 0 ? p->n_threads : llm_physical_cores();
    /* One KV stream per slot; every kept conversation needs one, and so
     * does every request generating at once. */
    int n_slots = p->kv_sessions > p->n_parallel ? p->kv_sessions : p->n_parallel;
    int n_batch = m->n_ctx < 512 ? m->n_ctx : 512;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)m->n_ctx * (uint32_t)n_slots;
    cp.n_batch = (uint32_t)n_batch;
    cp.n_ubatch = (uint32_t)n_batch;
    cp.n_seq_max = (uint32_t)n_slots;
    cp.kv_unified = false;
    cp.n_threads = m->n_threads;
    cp.n_threads_batch = m->n_threads;
    cp.no_perf = true;
    m->ctx = llama_init_from_model(m->model, cp);
    if (!m->ctx) {
        snprintf(err, errlen, "cannot create a context of %d sequences of %d tokens", n_slots, m->n_ctx);
        llm_free(m);
        return NULL;
    }
    /* f16 K and V for every cell of every layer */
    int n_head = llama_model_n_head(m->model);
    size_t head_dim = n_head > 0 ? (size_t)llama_model_n_embd(m->model) / (size_t)n_head : 0;
    m->kv_bytes = (size_t)n_slots * (size_t)m->n_ctx * (size_t)llama_model_n_layer(m->model) *
                  (size_t)llama_model_n_head_kv(m->model) * head_dim * 2 * 2;
    engine_params ep = {.n_slots = n_slots, .n_parallel = p->n_parallel, .n_queue = p->n_queue,
                        .n_ctx_seq = m->n_ctx, .n_batch = n_batch, .reuse = p->kv_sessions > 0};
    m->eng = engine_new(m->ctx, m->vocab, &ep);
    if (!m->eng) {
        snprintf(err, errlen, "cannot start the generation engine");
        llm_free(m);
        return NULL;
    }
    if (compute_turn_end(m) != 0) {
        snprintf(err, errlen, "cannot derive the end-of-turn markup from the chat template");
        llm_free(m);
        return NULL;
    }
    m->fingerprint = compute_fingerprint(m);
    return m;
}

void llm_free(llm *m) {
    if (!m) return;
    engine_free(m->eng);
    if (m->ctx) llama_free(m->ctx);
    if (m->model) llama_model_free(m->model);
    tokvec_free(&m->turn_end);
    free(m->tmpl);
    free(m);
}

const char *llm_model_name(const llm *m) { return m->name; }
int llm_n_ctx(const llm *m) { return m->n_ctx; }
int llm_n_threads(const llm *m) { return m->n_threads; }
uint64_t llm_fingerprint(const llm *m) { return m->fingerprint; }

void llm_stats_get(llm *m, llm_stats *out) {
    engine_stats_get(m->eng, out);
    out->kv_bytes = m->kv_bytes;
}

llm_status llm_generate(llm *m, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                        llm_timings *t, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (n == 0) {
        snprintf(err, errlen, "empty input");
        return LLM_FAIL;
    }
    if (n >= (size_t)m->n_ctx) {
        snprintf(err, errlen, "input of %zu tokens does not fit the context of %d", n, m->n_ctx);
        return LLM_FAIL;
    }
    if (p->n_predict < 1) {
        snprintf(err, errlen, "n_predict must be >= 1");
        return LLM_FAIL;
    }
    return engine_generate(m->eng, input, n, p, out, t, err, errlen);
}
