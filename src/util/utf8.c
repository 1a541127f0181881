/* utf8.c - see utf8.h. Accepts exactly the well-formed sequences of RFC 3629
 * (no overlongs, no surrogates, nothing above U+10FFFF). */
#include "utf8.h"

static size_t valid_len(const unsigned char *p, size_t n) {
    if (n == 0) return 0;
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return 0;
    if (n < len) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return len;
}

size_t utf8_char_len(const char *s, size_t n) { return valid_len((const unsigned char *)s, n); }

void utf8_sanitize(const char *s, size_t n, strbuf *out) {
    const unsigned char *p = (const unsigned char *)s;
    strbuf_reserve(out, out->n + n);
    size_t i = 0;
    while (i < n) {
        size_t k = valid_len(p + i, n - i);
        if (k) {
            strbuf_append(out, p + i, k);
            i += k;
        } else {
            strbuf_append(out, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    strbuf_append(out, "", 0); /* terminated also when nothing was appended */
}

size_t utf8_complete_prefix(const char *s, size_t n) {
    /* look back at most 3 bytes for the lead byte of the last character */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: keep looking */
        size_t need = c >= 0xF5 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}
