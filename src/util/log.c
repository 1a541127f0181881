/* log.c - see log.h. A single fprintf per line keeps lines from different
 * threads whole (stdio locks the stream per call).
 *
 * Every line goes through log_escape: clients control much of what is
 * logged (URLs, after percent-decoding; methods; ids; error texts that
 * quote them), and a "%0A" in a URL must not start a forged line, nor a
 * cut or invalid UTF-8 sequence garble the next one. Escaping the whole
 * line in the one place every line passes, rather than each value at each
 * call, means no call can forget it. */
#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "utf8.h"

static int min_level = LOG_INFO;

void log_set_level(int level) { min_level = level; }
int log_level(void) { return min_level; }

/* Characters that end or reorder a line in some terminal or log viewer
 * though they are well-formed UTF-8: C1 controls (NEL is a newline to
 * some), the Unicode line and paragraph separators, and the bidirectional
 * overrides and isolates (text shown in another order than written). */
static bool shown_escaped(unsigned cp) {
    return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
        (cp >= 0x2066 && cp <= 0x2069);
}

static unsigned code_point(const unsigned char *p, size_t k) {
    if (k == 2) return (p[0] & 0x1fu) << 6 | (p[1] & 0x3fu);
    if (k == 3) return (p[0] & 0x0fu) << 12 | (p[1] & 0x3fu) << 6 | (p[2] & 0x3fu);
    return (p[0] & 0x07u) << 18 | (p[1] & 0x3fu) << 12 | (p[2] & 0x3fu) << 6 | (p[3] & 0x3fu);
}

size_t log_escape(const char *s, size_t n, char *out, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    if (cap == 0) return 0;
    for (size_t i = 0; i < n;) {
        char buf[12];
        size_t k = utf8_char_len(s + i, n - i), w;
        if (k == 1 && p[i] >= 0x20 && p[i] != 0x7f) {
            buf[0] = (char)p[i];
            w = 1;
        } else if (k == 0 || k == 1) { /* a control byte, or a byte of no valid character */
            buf[0] = '\\', buf[1] = 'x', buf[2] = hex[p[i] >> 4], buf[3] = hex[p[i] & 15];
            w = 4, k = 1;
        } else if (shown_escaped(code_point(p + i, k))) {
            w = (size_t)snprintf(buf, sizeof buf, "\\u{%x}", code_point(p + i, k));
        } else {
            memcpy(buf, s + i, k);
            w = k;
        }
        if (o + w >= cap) break; /* cut at a whole character, never inside an escape */
        memcpy(out + o, buf, w);
        o += w;
        i += k;
    }
    out[o] = '\0';
    return o;
}

void log_msg(int level, const char *fmt, ...) {
    if (level < min_level) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char msg[1024], clean[4 * sizeof msg];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    log_escape(msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1, clean, sizeof clean);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s\n", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
            tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[level], clean);
}

int log_level_parse(const char *name) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return LOG_DEBUG + i;
    return -1;
}
