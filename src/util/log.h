/* log.h - one line per event on stderr, with a level filter.
 * Prompts and replies are never passed to the logger. */
#ifndef DC_LOG_H
#define DC_LOG_H

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(int level);
/* "debug", "info", "warn" or "error" to its level; -1 if none of those. */
int log_level_parse(const char *name);
int log_level(void);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
