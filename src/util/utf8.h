/* utf8.h - make byte strings safe for JSON. A reply cut at n_predict can end
 * inside a multi-byte character, and JSON strings must be valid UTF-8. */
#ifndef DC_UTF8_H
#define DC_UTF8_H

#include <stddef.h>

#include "vec.h"

/* The length (1-4) of the well-formed character at the start of s[0..n),
 * or 0 when s does not start with one (an invalid or cut sequence, or n 0). */
size_t utf8_char_len(const char *s, size_t n);

/* Appends s to out with every invalid sequence replaced by U+FFFD. */
void utf8_sanitize(const char *s, size_t n, strbuf *out);

/* The length of s without a multi-byte character begun at its end and not
 * yet complete: what a stream can send now, the rest waiting for the next
 * token. Invalid bytes are not held back (sanitize replaces them). */
size_t utf8_complete_prefix(const char *s, size_t n);

#endif
