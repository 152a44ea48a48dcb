/* One-line structured logging to stderr: `ts=… level=… event=… key=value`.
 * Never log PHI: control ids and counts only.  Thread-safe (one write(2) per
 * line).  An event is always one line: control bytes in values are written
 * as escapes. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FMT_LOGFMT = 0, LOG_FMT_JSON };

void log_set_level(enum log_level lvl);
void log_set_format(enum log_format fmt);
enum log_level log_get_level(void);

/* `fmt` continues the line after `event=…`: it should be a sequence of
 * ` key=value` pairs (a leading space is added if missing). */
void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies `s` (may be NULL) into out (cap bytes, NUL-terminated) escaped
 * for a quoted logfmt value: '"' and '\\' get a backslash, control bytes
 * become \r \n \t \u00XX.  For values that came from outside (an error
 * body, a certificate name): `error=\"%s\"` with log_quote(buf, sizeof buf,
 * text).  Returns out.  Any thread. */
const char *log_quote(char *out, size_t cap, const char *s);

#define log_debug(ev, ...) do { if (log_get_level() <= LOG_DEBUG) log_event(LOG_DEBUG, ev, __VA_ARGS__); } while (0)
#define log_info(ev, ...)  log_event(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...)  log_event(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_ERROR, ev, __VA_ARGS__)

#endif
