/* Structured logging.  Each line is formatted into a stack buffer and written
 * with a single write(2) so lines from different threads never interleave.
 * The JSON format turns the ` key=value` pairs into members.
 *
 * One event is one line, whatever its values hold: logfmt writes CR, LF,
 * tab and every other control byte as an escape (\r \n \t \u00XX), so a
 * value that came from a peer (an error body, a certificate name) cannot
 * end the line and forge another event.  Callers quote such values with
 * log_quote(), which also escapes '"' and '\'. */
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

/* Four hex digits at p (the caller checked there are four bytes). */
static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d > 15)
            return -1;
        v = v * 16 + d;
    }
    if (v > 0x7f)
        return -1; /* only what escape_value writes */
    *out = v;
    return 0;
}

/* Appends the JSON body of a logfmt value: `quoted` values have their
 * escapes (\" \\ \n \r \t \u00XX, as escape_value writes them) undone first, so JSON shows the original text. */
static size_t json_value(char *out, size_t cap, const char *v, size_t n, int quoted)
{
    if (!quoted)
        return json_escape(out, cap, v, n);
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        char c = v[i];
        if (c == '\\' && i + 1 < n) {
            char e = v[++i];
            unsigned hex = 0;
            switch (e) {
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (i + 4 < n && hex4(v + i + 1, &hex) == 0) {
                    c = (char)hex;
                    i += 4;
                } else {
                    c = 'u';
                }
                break;
            default: c = e; break;
            }
        }
        o += json_escape(out + o, cap - o, &c, 1);
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
        int quoted = 0;
        if (*p == '=') {
            p++;
            if (*p == '"') {
                quoted = 1;
                p++;
                v = p;
                /* a backslash escapes the next byte, so \" never ends it */
                while (*p && *p != '"')
                    p += p[0] == '\\' && p[1] ? 2 : 1;
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
        o += json_value(out + o, cap - o - 2, v, vlen, quoted);
        out[o++] = '"';
    }
    return o;
}

/* Copies s into out (room for cap bytes, NUL-terminated) as logfmt needs
 * it: CR, LF and tab as \r \n \t, other control bytes and DEL as \u00XX;
 * with `quote` also '"' and '\' get a backslash.  An escape is written
 * whole or not at all, so a cut value never ends in a lone backslash.
 * Returns the length written. */
static size_t escape_value(char *out, size_t cap, const char *s, int quote)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!cap)
        return 0;
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[6];
        size_t n = 0;
        if (c < 0x20 || c == 0x7f) {
            e[n++] = '\\';
            switch (c) {
            case '\n': e[n++] = 'n'; break;
            case '\r': e[n++] = 'r'; break;
            case '\t': e[n++] = 't'; break;
            default:
                e[n++] = 'u';
                e[n++] = '0';
                e[n++] = '0';
                e[n++] = hex[c >> 4];
                e[n++] = hex[c & 15];
                break;
            }
        } else if (quote && (c == '"' || c == '\\')) {
            e[n++] = '\\';
            e[n++] = (char)c;
        } else {
            e[n++] = (char)c;
        }
        if (o + n >= cap)
            break;
        memcpy(out + o, e, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}

const char *log_quote(char *out, size_t cap, const char *s)
{
    escape_value(out, cap, s, 1);
    return cap ? out : "";
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
        char safe[sizeof kv];
        escape_value(safe, sizeof safe, kv, 0);
        int m = snprintf(line, sizeof line, "ts=%s level=%s event=%s%s%s", tbuf, level_name(lvl),
                         event, (safe[0] && safe[0] != ' ') ? " " : "", safe);
        o = m > 0 ? (size_t)m : 0;
        if (o > sizeof line - 2)
            o = sizeof line - 2;
    }
    line[o++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, o);
    (void)w;
    errno = saved;
}
