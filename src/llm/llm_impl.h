/* llm_impl.h - what an LLM service implementation provides to llm.c.
 *
 * llm.c holds everything that only needs these primitives (chat rendering
 * with sentinels, the end-of-turn markup, argument checks), so the local
 * engine and a remote llama-server-compatible one behave alike by
 * construction. Private to src/llm/. */
#ifndef DC_LLM_IMPL_H
#define DC_LLM_IMPL_H

#include "../util/hash.h"
#include "llm.h"

typedef struct {
    /* Renders msgs with the model's chat template into out (replacing it). 0 or -1. */
    int (*apply_template)(void *impl, const llm_msg *msgs, size_t n, bool add_assistant, strbuf *out);
    int (*tokenize)(void *impl, const char *text, size_t len, bool parse_special, tokvec *out);
    int (*detokenize)(void *impl, const int32_t *toks, size_t n, strbuf *out);
    /* llm_chat_render (each false: all into *outs[0]) or llm_chat_render_each
     * in one go, where the service does it itself (remote.c: one round trip
     * instead of one per piece). 0, -1, or 1 when it does not offer it: llm.c
     * then renders on the primitives above. NULL: never offered (local). */
    int (*render)(void *impl, const llm_msg *msgs, size_t n, bool add_assistant, bool each, tokvec *const *outs);
    /* Arguments already checked by llm_generate. */
    llm_status (*generate)(void *impl, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                           llm_timings *t, char *err, size_t errlen);
    void (*stats)(void *impl, llm_stats *out);
    llm_status (*admit)(void *impl); /* NULL: always LLM_OK */
    bool (*warm)(void *impl, const char *owner, const int32_t *toks, size_t n); /* NULL: no warm-up */
    void (*forget)(void *impl, const char *owner);                               /* NULL: nothing kept */
    /* KV transfer (llm.h); NULL: not supported (remote) */
    size_t (*kv_held)(void *impl, const char *owner, const int32_t *toks, size_t n);
    int (*kv_export)(void *impl, const char *owner, const int32_t *toks, size_t n, strbuf *out, char *err,
                     size_t errlen);
    int (*kv_import)(void *impl, const char *owner, const int32_t *want, size_t n_want, const void *blob, size_t len,
                     size_t *n_imported, char *err, size_t errlen);
    void (*free)(void *impl);
} llm_ops;

/* What an implementation reports when it opens. */
typedef struct {
    char name[128];
    int n_ctx;     /* per conversation */
    int n_threads; /* 0 when not known (remote) */
    int n_vocab;   /* 0 when not known (remote): ids are then checked there */
    uint64_t fingerprint;
    char backend[256]; /* llm_backend() */
    int32_t bos;       /* the BOS id when the model adds one, else -1 (llm_add_bos) */
    char bos_text[64], eos_text[64]; /* llm_bos_text(), llm_eos_text() */
} llm_info;

void *llm_local_open(const llm_params *p, llm_info *info, char *err, size_t errlen);
extern const llm_ops llm_local_ops;
void *llm_remote_open(const llm_params *p, llm_info *info, char *err, size_t errlen);
extern const llm_ops llm_remote_ops;

/* An llm over an implementation already open: what llm_load does once
 * local.c or remote.c has opened. Takes impl (freed with ops->free, also on
 * failure: NULL, reason in err). The seam for a scripted implementation:
 * tests/unit/fake_llm.c drives the context manager without a model. */
llm *llm_wrap(const llm_ops *ops, void *impl, const llm_info *info, char *err, size_t errlen);

/* Records, for llm_unreachable(), that this thread's call failed because
 * the service could not be reached. */
void llm_set_unreachable(const char *why);

#endif
