/* utf8.h - make byte strings safe for JSON. A reply cut at n_predict can end
 * inside a multi-byte character, and JSON strings must be valid UTF-8. */
#ifndef DC_UTF8_H
#define DC_UTF8_H

#include <stddef.h>

#include "vec.h"

/* Appends s to out with every invalid sequence replaced by U+FFFD. */
void utf8_sanitize(const char *s, size_t n, strbuf *out);

#endif
