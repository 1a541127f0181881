/* llm.c - the LLM service interface, over one of two implementations:
 * local.c (llama.cpp in this process) or remote.c (a llama-server
 * compatible engine on another machine, e.g. `discedge llm-serve`).
 *
 * Chat rendering lives here, on the implementations' primitives, so both
 * tokenize a conversation identically. The template renders text, but user
 * text must never become control tokens: we render with every message
 * content replaced by a unique sentinel, then tokenize the template's markup
 * (between sentinels) with special-token parsing on and each real content
 * with it off. Markup and content boundaries always fall on special tokens
 * or at the ends of markup ("<|im_start|>user\n" | content |
 * "<|im_end|>\n"), so rendering messages one by one and concatenating
 * equals rendering them together. */
#include "llm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm_impl.h"

struct llm {
    const llm_ops *ops;
    void *impl;
    llm_info info;
    tokvec turn_end;
    uint64_t kv_exports, kv_imports, kv_refused; /* atomics */
};

/* llm_unreachable(): per thread, cleared by every public call that can fail. */
static __thread char unreachable_why[256];
static __thread bool unreachable;

void llm_set_unreachable(const char *why) {
    snprintf(unreachable_why, sizeof unreachable_why, "%s", why);
    unreachable = true;
}

const char *llm_unreachable(void) { return unreachable ? unreachable_why : NULL; }

/* Content placeholders: control characters no template adds or trims. */
#define SENTINEL_FMT                                                                                                   \
    "\x1e"                                                                                                             \
    "dc%zu"                                                                                                            \
    "\x1f"

llm_params llm_default_params(void) {
    return (llm_params){.model_path = NULL,
                        .url = NULL,
                        .backend_dir = NULL,
                        .n_ctx = 0,
                        .n_threads = 0,
                        .n_parallel = 4,
                        .n_queue = 16,
                        .kv_sessions = 8,
                        .spill_dir = NULL,
                        .spill_mib = 1024,
                        .warm_sessions = 0,
                        .warm_window_s = 600,
                        .progress = true};
}

llm_gen_params llm_default_gen_params(void) {
    return (llm_gen_params){
        .n_predict = 128, .temperature = 0.8f, .top_p = 0.95f, .top_k = 40, .seed = 0, .cache_prompt = true};
}

int llm_tokenize(const llm *m, const char *text, size_t len, bool parse_special, tokvec *out) {
    unreachable = false;
    if (len == 0) return 0;
    return m->ops->tokenize(m->impl, text, len, parse_special, out);
}

/* Ids reach us from clients and from the store: never hand llama.cpp one
 * outside its vocabulary. */
static bool ids_valid(const llm *m, const int32_t *toks, size_t n) {
    if (!m->info.n_vocab) return true;
    for (size_t i = 0; i < n; i++)
        if (toks[i] < 0 || toks[i] >= m->info.n_vocab) return false;
    return true;
}

int llm_detokenize(const llm *m, const int32_t *toks, size_t n, strbuf *out) {
    unreachable = false;
    if (n == 0) return 0;
    if (!ids_valid(m, toks, n)) return -1;
    return m->ops->detokenize(m->impl, toks, n, out);
}

/* llm_chat_render on the implementation's primitives (see the top). */
static int render_here(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, tokvec *out) {
    llm_msg *cm = calloc(n ? n : 1, sizeof *cm);
    char(*sent)[32] = calloc(n ? n : 1, sizeof *sent);
    strbuf text = {0};
    int rc = -1;
    if (!cm || !sent) goto done;
    for (size_t i = 0; i < n; i++) {
        snprintf(sent[i], sizeof sent[i], SENTINEL_FMT, i);
        cm[i].role = msgs[i].role;
        cm[i].content = sent[i];
    }
    if (m->ops->apply_template(m->impl, cm, n, add_assistant, &text) != 0) goto done;
    const char *p = text.s ? text.s : "";
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

int llm_chat_render(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, tokvec *out) {
    unreachable = false;
    int rc = m->ops->render ? m->ops->render(m->impl, msgs, n, add_assistant, false, &out) : 1;
    return rc <= 0 ? rc : render_here(m, msgs, n, add_assistant, out);
}

int llm_chat_render_each(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, tokvec *const *outs) {
    unreachable = false;
    if (n == 0) return 0;
    int rc = m->ops->render ? m->ops->render(m->impl, msgs, n, add_assistant, true, outs) : 1;
    for (size_t i = 0; rc > 0 && i < n; i++)
        if (render_here(m, &msgs[i], 1, add_assistant && i + 1 == n, outs[i]) != 0) rc = -1;
    return rc > 0 ? 0 : rc;
}

const tokvec *llm_turn_end(const llm *m) { return &m->turn_end; }

int llm_apply_template(const llm *m, const llm_msg *msgs, size_t n, bool add_assistant, strbuf *out) {
    unreachable = false;
    return m->ops->apply_template(m->impl, msgs, n, add_assistant, out);
}

/* What the template writes after an assistant message's content. */
static int compute_turn_end(llm *m) {
    llm_msg cm[2] = {{"user", "u"},
                     {"assistant",
                      "\x1e"
                      "dcend"
                      "\x1f"}};
    strbuf text = {0};
    int rc = -1;
    if (m->ops->apply_template(m->impl, cm, 2, false, &text) == 0 && text.s) {
        const char *at = strstr(text.s, cm[1].content);
        if (at) {
            at += strlen(cm[1].content);
            rc = llm_tokenize(m, at, strlen(at), true, &m->turn_end);
        }
    }
    strbuf_free(&text);
    return rc;
}

llm *llm_load(const llm_params *p, char *err, size_t errlen) {
    if (p->n_parallel < 1 || p->n_queue < 0 || p->kv_sessions < 0) {
        snprintf(err, errlen, "n_parallel must be >= 1, n_queue and kv_sessions >= 0");
        return NULL;
    }
    llm_info info = {.bos = -1}; /* unless the implementation finds one */
    void *impl = p->url ? llm_remote_open(p, &info, err, errlen) : llm_local_open(p, &info, err, errlen);
    return impl ? llm_wrap(p->url ? &llm_remote_ops : &llm_local_ops, impl, &info, err, errlen) : NULL;
}

llm *llm_wrap(const llm_ops *ops, void *impl, const llm_info *info, char *err, size_t errlen) {
    llm *m = calloc(1, sizeof *m);
    if (!m) {
        ops->free(impl);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->ops = ops;
    m->impl = impl;
    m->info = *info;
    if (compute_turn_end(m) != 0) {
        snprintf(err, errlen, "cannot derive the end-of-turn markup from the chat template");
        llm_free(m);
        return NULL;
    }
    return m;
}

void llm_free(llm *m) {
    if (!m) return;
    if (m->impl) m->ops->free(m->impl);
    tokvec_free(&m->turn_end);
    free(m);
}

const char *llm_bos_text(const llm *m) { return m->info.bos_text; }
const char *llm_eos_text(const llm *m) { return m->info.eos_text; }

size_t llm_add_bos(const llm *m, tokvec *out) {
    if (m->info.bos < 0) return 0;
    tokvec_push(out, m->info.bos);
    return 1;
}

const char *llm_model_name(const llm *m) { return m->info.name; }
int llm_n_ctx(const llm *m) { return m->info.n_ctx; }
int llm_n_threads(const llm *m) { return m->info.n_threads; }
int llm_n_vocab(const llm *m) { return m->info.n_vocab; }
uint64_t llm_fingerprint(const llm *m) { return m->info.fingerprint; }
const char *llm_backend(const llm *m) { return m->info.backend; }
bool llm_is_remote(const llm *m) { return m->ops == &llm_remote_ops; }

void llm_stats_get(llm *m, llm_stats *out) {
    memset(out, 0, sizeof *out);
    m->ops->stats(m->impl, out);
    out->kv_exports = __atomic_load_n(&m->kv_exports, __ATOMIC_RELAXED);
    out->kv_imports = __atomic_load_n(&m->kv_imports, __ATOMIC_RELAXED);
    out->kv_import_refused = __atomic_load_n(&m->kv_refused, __ATOMIC_RELAXED);
}

size_t llm_kv_held(llm *m, const char *owner, const int32_t *toks, size_t n) {
    return m->ops->kv_held && owner && *owner && n ? m->ops->kv_held(m->impl, owner, toks, n) : 0;
}

int llm_kv_export(llm *m, const char *owner, const int32_t *toks, size_t n, strbuf *out, char *err, size_t errlen) {
    if (!m->ops->kv_export) return snprintf(err, errlen, "not supported by a remote LLM service"), -1;
    if (!owner || !*owner || !n) return snprintf(err, errlen, "no tokens"), -1;
    int rc = m->ops->kv_export(m->impl, owner, toks, n, out, err, errlen);
    if (!rc) __atomic_add_fetch(&m->kv_exports, 1, __ATOMIC_RELAXED);
    return rc;
}

int llm_kv_import(llm *m, const char *owner, const int32_t *want, size_t n_want, const void *blob, size_t len,
                  size_t *n_imported, char *err, size_t errlen) {
    *n_imported = 0;
    int rc = -1;
    if (!m->ops->kv_import) snprintf(err, errlen, "not supported by a remote LLM service");
    else if (!owner || !*owner || !ids_valid(m, want, n_want)) snprintf(err, errlen, "no owner, or invalid tokens");
    else rc = m->ops->kv_import(m->impl, owner, want, n_want, blob, len, n_imported, err, errlen);
    __atomic_add_fetch(rc ? &m->kv_refused : &m->kv_imports, 1, __ATOMIC_RELAXED);
    return rc;
}

llm_status llm_admit(llm *m) { return m->ops->admit ? m->ops->admit(m->impl) : LLM_OK; }

bool llm_warm(llm *m, const char *owner, const int32_t *toks, size_t n) {
    return m->ops->warm && m->ops->warm(m->impl, owner, toks, n);
}

void llm_forget(llm *m, const char *owner) {
    if (m->ops->forget) m->ops->forget(m->impl, owner);
}

llm_status llm_generate(llm *m, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out, llm_timings *t,
                        char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    unreachable = false;
    if (n == 0) {
        snprintf(err, errlen, "empty input");
        return LLM_FAIL;
    }
    if (n >= (size_t)m->info.n_ctx) {
        snprintf(err, errlen, "input of %zu tokens does not fit the context of %d", n, m->info.n_ctx);
        return LLM_FAIL;
    }
    if (p->n_predict < 1) {
        snprintf(err, errlen, "n_predict must be >= 1");
        return LLM_FAIL;
    }
    if (!ids_valid(m, input, n)) {
        snprintf(err, errlen, "the input holds a token id outside the vocabulary of %d", m->info.n_vocab);
        return LLM_FAIL;
    }
    return m->ops->generate(m->impl, input, n, p, out, t, err, errlen);
}
