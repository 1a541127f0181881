/* vec.h - the two growable buffers the whole project passes around.
 *
 * tokvec holds token ids (llama_token is int32_t); strbuf holds bytes and is
 * always NUL-terminated so it can be handed to C string APIs. Both start
 * zeroed ({0}) and own their memory until *_free. Allocation failure aborts:
 * a node that cannot allocate a few KB cannot do anything useful either, and
 * checking every push would bury the logic that matters. */
#ifndef DC_VEC_H
#define DC_VEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t *v;
    size_t n, cap;
} tokvec;

void tokvec_reserve(tokvec *t, size_t cap);
void tokvec_push(tokvec *t, int32_t tok);
void tokvec_append(tokvec *t, const int32_t *toks, size_t n);
void tokvec_clear(tokvec *t);
void tokvec_free(tokvec *t);

typedef struct {
    char *s;
    size_t n, cap;
} strbuf;

void strbuf_reserve(strbuf *b, size_t cap);
void strbuf_append(strbuf *b, const void *data, size_t n);
void strbuf_puts(strbuf *b, const char *s);
void strbuf_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void strbuf_clear(strbuf *b);
void strbuf_free(strbuf *b);

/* xmalloc-style helpers used by the buffers and elsewhere. */
void *dc_xrealloc(void *p, size_t n);
char *dc_xstrdup(const char *s);

#endif
