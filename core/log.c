/* Structured logging.  Each line is formatted into a stack buffer and written
 * with a single write(2) so lines from different threads never interleave.
 * The JSON format turns the ` key=value` pairs into members. */
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level g_level = LOG_INFO;
static enum log_format g_format = LOG_FMT_LOGFMT;

void log_set_level(enum log_level lvl) { g_level = lvl; }
void log_set_format(enum log_format fmt) { g_format = fmt; }
enum log_level log_get_level(void) { return g_level; }

static const char *level_name(enum log_level l)
{
    switch (l) {
    case LOG_DEBUG: return "debug";
    case LOG_INFO: return "info";
    case LOG_WARN: return "warn";
    default: return "error";
    }
}

/* Appends `s` (length n) to out as a JSON string body, escaping quotes,
 * backslashes and control bytes. */
static size_t json_escape(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

/* Converts " a=1 b=\"x y\"" into ,"a":"1","b":"x y". */
static size_t kv_to_json(char *out, size_t cap, const char *kv)
{
    size_t o = 0;
    const char *p = kv;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *k = p;
        while (*p && *p != '=' && *p != ' ')
            p++;
        size_t klen = (size_t)(p - k);
        const char *v = p;
        size_t vlen = 0;
        if (*p == '=') {
            p++;
            if (*p == '"') {
                p++;
                v = p;
                while (*p && !(*p == '"' && p[-1] != '\\'))
                    p++;
                vlen = (size_t)(p - v);
                if (*p == '"')
                    p++;
            } else {
                v = p;
                while (*p && *p != ' ')
                    p++;
                vlen = (size_t)(p - v);
            }
        }
        if (o + klen + vlen + 16 >= cap)
            break;
        out[o++] = ',';
        out[o++] = '"';
        o += json_escape(out + o, cap - o, k, klen);
        out[o++] = '"';
        out[o++] = ':';
        out[o++] = '"';
        o += json_escape(out + o, cap - o, v, vlen);
        out[o++] = '"';
    }
    return o;
}

void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
{
    if (lvl < g_level)
        return;
    int saved = errno;
    char kv[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(kv, sizeof kv, fmt, ap);
    va_end(ap);
    if (n < 0)
        kv[0] = '\0';

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[80];
    snprintf(tbuf, sizeof tbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    char line[4096];
    size_t o;
    if (g_format == LOG_FMT_JSON) {
        int m = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"%s\"", tbuf,
                         level_name(lvl), event);
        o = m > 0 ? (size_t)m : 0;
        if (o < sizeof line)
            o += kv_to_json(line + o, sizeof line - o - 3, kv);
        line[o++] = '}';
    } else {
        int m = snprintf(line, sizeof line, "ts=%s level=%s event=%s%s%s", tbuf, level_name(lvl),
                         event, (kv[0] && kv[0] != ' ') ? " " : "", kv);
        o = m > 0 ? (size_t)m : 0;
        if (o > sizeof line - 2)
            o = sizeof line - 2;
    }
    line[o++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, o);
    (void)w;
    errno = saved;
}
