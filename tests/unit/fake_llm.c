/* fake_llm.c - the scripted LLM of fakes.h, an llm_ops implementation
 * opened through llm_wrap (llm_impl.h), so that llm.c's own chat rendering
 * (sentinels, the end-of-turn markup) runs over it as over a real engine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakes.h"
#include "llm/llm_impl.h"

static const char *const markup[] = {"[S]", "[U]", "[A]", "[/]"}; /* FAKE_TOK_SYS.. */

static const char *role_markup(const char *role) {
    return !strcmp(role, "system") ? "[S]" : !strcmp(role, "assistant") ? "[A]" : "[U]";
}

static int apply_template(void *impl, const llm_msg *msgs, size_t n, bool add_assistant, strbuf *out) {
    fake_llm *f = impl;
    f->renders++;
    strbuf_clear(out);
    strbuf_puts(out, ""); /* non-NULL even when empty */
    for (size_t i = 0; i < n; i++) {
        strbuf_puts(out, role_markup(msgs[i].role));
        strbuf_puts(out, msgs[i].content);
        strbuf_puts(out, "[/]");
    }
    if (add_assistant) strbuf_puts(out, "[A]");
    return 0;
}

static int tokenize(void *impl, const char *text, size_t len, bool parse_special, tokvec *out) {
    (void)impl;
    for (size_t i = 0; i < len;) {
        int special = -1;
        for (int k = 0; parse_special && k < 4; k++)
            if (len - i >= 3 && !memcmp(text + i, markup[k], 3)) special = FAKE_TOK_SYS + k;
        if (special >= 0) {
            tokvec_push(out, special);
            i += 3;
        } else {
            tokvec_push(out, (unsigned char)text[i++]);
        }
    }
    return 0;
}

static int detokenize(void *impl, const int32_t *toks, size_t n, strbuf *out) {
    (void)impl;
    for (size_t i = 0; i < n; i++) {
        if (toks[i] < 0 || toks[i] >= FAKE_VOCAB) return -1;
        char ch = (char)toks[i];
        if (toks[i] < 256) strbuf_append(out, &ch, 1); /* special tokens are not rendered (llm.h) */
    }
    return 0;
}

static llm_status generate(void *impl, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                           llm_timings *t, char *err, size_t errlen) {
    fake_llm *f = impl;
    f->generations++;
    tokvec_clear(&f->last_input);
    tokvec_append(&f->last_input, input, n);
    /* this generation's reply is taken before the hook runs, so that a
     * racing writer's generation in it gets the next one */
    const char *reply = NULL;
    if (f->next_reply < (int)(sizeof f->replies / sizeof *f->replies)) reply = f->replies[f->next_reply++];
    if (!reply) reply = "ok";
    if (f->during) {
        void (*during)(void *) = f->during;
        f->during = NULL; /* once: a racing writer's own generation must not run it again */
        during(f->during_ud);
    }
    if (f->fail != LLM_OK) {
        llm_status st = f->fail;
        f->fail = LLM_OK;
        snprintf(err, errlen, "scripted failure");
        return st;
    }
    /* alive is not polled: a fake generation takes no time (a caller gone
     * during one is scripted: fail = LLM_CANCELLED) */
    size_t len = strlen(reply);
    if (len > (size_t)p->n_predict) len = (size_t)p->n_predict;
    for (size_t i = 0; i < len; i++) {
        int32_t tok = (unsigned char)reply[i];
        tokvec_push(out, tok);
        if (p->on_token) p->on_token(p->on_token_ud, tok);
    }
    t->prompt_n = (int)n;
    t->predicted_n = (int)len;
    t->stopped_eog = len < (size_t)p->n_predict;
    t->stopped_limit = !t->stopped_eog;
    t->eog_token = FAKE_TOK_END;
    return LLM_OK;
}

static void stats(void *impl, llm_stats *out) {
    (void)impl;
    out->n_slots = out->n_parallel = 1;
    out->retry_after_s = 1;
}

static llm_status admit(void *impl) { return ((fake_llm *)impl)->admit; }

static void fake_free(void *impl) {
    fake_llm *f = impl;
    tokvec_free(&f->last_input);
    free(f);
}

static const llm_ops fake_ops = {.apply_template = apply_template,
                                 .tokenize = tokenize,
                                 .detokenize = detokenize,
                                 .generate = generate,
                                 .stats = stats,
                                 .admit = admit,
                                 .free = fake_free};

llm *fake_llm_open(int n_ctx, uint64_t fingerprint, fake_llm **fake) {
    fake_llm *f = calloc(1, sizeof *f);
    llm_info info = {
        .n_ctx = n_ctx, .n_threads = 1, .n_vocab = FAKE_VOCAB, .fingerprint = fingerprint, .bos = FAKE_TOK_BOS};
    snprintf(info.name, sizeof info.name, "fake");
    snprintf(info.backend, sizeof info.backend, "fake");
    char err[128];
    *fake = f;
    return llm_wrap(&fake_ops, f, &info, err, sizeof err);
}

void fake_llm_text(const tokvec *toks, strbuf *out) {
    strbuf_puts(out, "");
    for (size_t i = 0; i < toks->n; i++) {
        int32_t t = toks->v[i];
        if (t == FAKE_TOK_BOS) strbuf_puts(out, "<s>");
        else if (t >= FAKE_TOK_SYS && t <= FAKE_TOK_END) strbuf_puts(out, markup[t - FAKE_TOK_SYS]);
        else strbuf_append(out, &(char){(char)t}, 1);
    }
}
