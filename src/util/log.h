/* log.h - one line per event on stderr, with a level filter.
 * Prompts and replies are never passed to the logger. Every line is
 * escaped (log_escape) before it is written: whatever a client put in a
 * logged value, a line stays one line of valid UTF-8. */
#ifndef DC_LOG_H
#define DC_LOG_H

#include <stddef.h>

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(int level);
/* "debug", "info", "warn" or "error" to its level; -1 if none of those. */
int log_level_parse(const char *name);
int log_level(void);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* s[0..n) into out (cap bytes, always NUL-terminated; cut at a whole
 * character): control bytes and bytes of no valid UTF-8 character as
 * \xNN, line-breaking and reordering characters (C1, U+2028/9, the bidi
 * controls) as \u{N}, the rest as is. Returns the length written; 4n + 1
 * bytes are always enough. */
size_t log_escape(const char *s, size_t n, char *out, size_t cap);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
