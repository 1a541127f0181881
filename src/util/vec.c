/* vec.c - tokvec and strbuf; see vec.h. */
#include "vec.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *dc_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "discedge: out of memory (%zu bytes)\n", n);
        abort();
    }
    return q;
}

char *dc_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(dc_xrealloc(NULL, n), s, n);
}

static size_t grow(size_t cap, size_t need) {
    size_t c = cap ? cap : 16;
    while (c < need) c *= 2;
    return c;
}

void tokvec_reserve(tokvec *t, size_t cap) {
    if (cap <= t->cap) return;
    t->cap = grow(t->cap, cap);
    t->v = dc_xrealloc(t->v, t->cap * sizeof *t->v);
}

void tokvec_push(tokvec *t, int32_t tok) {
    tokvec_reserve(t, t->n + 1);
    t->v[t->n++] = tok;
}

void tokvec_append(tokvec *t, const int32_t *toks, size_t n) {
    if (!n) return;
    tokvec_reserve(t, t->n + n);
    memcpy(t->v + t->n, toks, n * sizeof *toks);
    t->n += n;
}

void tokvec_clear(tokvec *t) { t->n = 0; }

void tokvec_free(tokvec *t) {
    free(t->v);
    *t = (tokvec){0};
}

void strbuf_reserve(strbuf *b, size_t cap) {
    if (cap + 1 <= b->cap) return;
    b->cap = grow(b->cap, cap + 1);
    b->s = dc_xrealloc(b->s, b->cap);
}

void strbuf_append(strbuf *b, const void *data, size_t n) {
    strbuf_reserve(b, b->n + n);
    if (n) memcpy(b->s + b->n, data, n);
    b->n += n;
    b->s[b->n] = '\0';
}

void strbuf_puts(strbuf *b, const char *s) { strbuf_append(b, s, strlen(s)); }

void strbuf_printf(strbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        strbuf_append(b, tmp, (size_t)n);
        return;
    }
    strbuf_reserve(b, b->n + (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void strbuf_clear(strbuf *b) {
    b->n = 0;
    if (b->s) b->s[0] = '\0';
}

void strbuf_free(strbuf *b) {
    free(b->s);
    *b = (strbuf){0};
}
