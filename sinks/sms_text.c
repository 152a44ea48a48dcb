/* sinks/sms_text — what a text looks like: E.164 numbers, templates, GSM-7 /
 * UCS-2 segment counting and cutting, the repeatability id, dates, quiet
 * hours and JSON string escaping.
 *
 * Design: pure functions over NUL-terminated UTF-8 with explicit buffer
 * sizes, so each can be tested alone.  Segment counting walks the text once
 * the way a handset encodes it: GSM-7 when every character is in the basic
 * table or its extension table (extension characters take an escape septet
 * as well), UCS-2 otherwise (characters outside the BMP take two units);
 * a multipart message carries a 7-septet / 3-unit header per segment, and an
 * escape pair or surrogate pair never straddles two segments.
 *
 * Threads: any; no shared state. */
#include "sinks/sms.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- UTF-8 --------------------------------------------------------------- */

/* Decodes one character at p (n bytes left): *cp and its length, or length
 * 1 with *cp = -1 for an invalid sequence. */
static size_t utf8_next(const unsigned char *p, size_t n, long *cp)
{
    unsigned char c = p[0];
    size_t len;
    long v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
    } else {
        *cp = -1;
        return 1;
    }
    if (len > n) {
        *cp = -1;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            *cp = -1;
            return 1;
        }
        v = (v << 6) | (p[i] & 0x3F);
    }
    /* overlong forms, surrogates and values past U+10FFFF are invalid */
    if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)) ||
        (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = -1;
        return 1;
    }
    *cp = v;
    return len;
}

/* ---- GSM 03.38 ------------------------------------------------------------- */

/* The basic table's non-ASCII characters (Latin-1 and Greek capitals). */
static const long gsm_basic_extra[] = {
    0x00A3, 0x00A5, 0x00E8, 0x00E9, 0x00F9, 0x00EC, 0x00F2, 0x00C7, 0x00D8, 0x00F8, 0x00C5,
    0x00E5, 0x0394, 0x03A6, 0x0393, 0x039B, 0x03A9, 0x03A0, 0x03A8, 0x03A3, 0x0398, 0x039E,
    0x00C6, 0x00E6, 0x00DF, 0x00C9, 0x00A4, 0x00A1, 0x00C4, 0x00D6, 0x00D1, 0x00DC, 0x00A7,
    0x00BF, 0x00E4, 0x00F6, 0x00F1, 0x00FC, 0x00E0,
};

/* Septets a character takes in GSM-7: 1 basic, 2 extension, 0 not encodable. */
static unsigned gsm_septets(long cp)
{
    if (cp == '\n' || cp == '\r')
        return 1;
    if (cp >= 0x20 && cp < 0x7F) {
        switch (cp) {
        case '[': case '\\': case ']': case '^': case '{': case '|': case '}': case '~':
            return 2;
        case '`':
            return 0; /* its slot holds the inverted question mark */
        default:
            return 1;
        }
    }
    if (cp == 0x20AC || cp == 0x0C) /* euro sign, form feed: extension table */
        return 2;
    for (size_t i = 0; i < sizeof gsm_basic_extra / sizeof gsm_basic_extra[0]; i++)
        if (gsm_basic_extra[i] == cp)
            return 1;
    return 0;
}

void sink_sms_count(const char *text, size_t len, struct sink_sms_segments *out)
{
    const unsigned char *p = (const unsigned char *)text;
    memset(out, 0, sizeof *out);
    int gsm = 1;
    for (size_t i = 0; i < len;) {
        long cp;
        i += utf8_next(p + i, len - i, &cp);
        out->chars++;
        if (cp < 0 || gsm_septets(cp) == 0)
            gsm = 0;
    }
    out->encoding = gsm ? SINK_SMS_GSM7 : SINK_SMS_UCS2;
    size_t single = gsm ? 160 : 70, per = gsm ? 153 : 67;
    /* Second pass: total units, and the units of a multipart split where a
     * two-unit character that does not fit moves to the next segment. */
    size_t total = 0, in_seg = 0;
    unsigned segs = 1;
    for (size_t i = 0; i < len;) {
        long cp;
        i += utf8_next(p + i, len - i, &cp);
        size_t u = gsm ? gsm_septets(cp) : (cp > 0xFFFF ? 2 : 1);
        total += u;
        if (in_seg + u > per) {
            segs++;
            in_seg = 0;
        }
        in_seg += u;
    }
    out->units = total;
    out->segments = total == 0 ? 1 : total <= single ? 1 : segs;
}

/* Writes text[0..cut) + "..." into text when that fits in max_segments;
 * returns 1 then, 0 when it does not fit (text unchanged). */
static int try_cut(char *text, size_t cut, unsigned max_segments)
{
    char tmp[SINK_SMS_TEXT_MAX];
    struct sink_sms_segments sg;
    if (cut + 4 > sizeof tmp)
        return 0;
    memcpy(tmp, text, cut);
    memcpy(tmp + cut, "...", 4);
    sink_sms_count(tmp, cut + 3, &sg);
    if (sg.segments > max_segments)
        return 0;
    memcpy(text, tmp, cut + 4);
    return 1;
}

int sink_sms_fit(char *text, unsigned max_segments)
{
    struct sink_sms_segments sg;
    size_t len = strlen(text);
    sink_sms_count(text, len, &sg);
    if (sg.segments <= max_segments)
        return 0;
    size_t cut = len;
    /* Word boundaries first: the last space before the current cut. */
    for (;;) {
        size_t sp = cut;
        while (sp > 0 && text[sp - 1] != ' ')
            sp--;
        if (sp == 0)
            break;
        cut = sp - 1; /* drop the space itself */
        while (cut > 0 && text[cut - 1] == ' ')
            cut--;
        if (try_cut(text, cut, max_segments))
            return 1;
    }
    /* One long word: cut at character boundaries. */
    cut = len;
    while (cut > 0) {
        cut--;
        while (cut > 0 && ((unsigned char)text[cut] & 0xC0) == 0x80)
            cut--;
        if (try_cut(text, cut, max_segments))
            return 1;
    }
    memcpy(text, "...", 4);
    return 1;
}

/* ---- E.164 ------------------------------------------------------------------ */

int sink_sms_e164(const char *in, const char *default_country, char *out, size_t cap)
{
    char d[40];
    size_t n = 0;
    int plus = 0;
    if (!in)
        return -1;
    for (const char *s = in; *s; s++) {
        if (*s >= '0' && *s <= '9') {
            if (n + 1 >= sizeof d)
                return -1;
            d[n++] = *s;
        } else if (*s == '+' && n == 0) {
            plus = 1; /* "++44": a rule put "+" before a country code that had one */
        } else if (!strchr(" .-()/\t", *s)) {
            return -1;
        }
    }
    d[n] = '\0';
    if (n == 0)
        return -1;
    const char *cc = default_country && *default_country ? default_country : "1";
    char e[48];
    int nanp_default = strcmp(cc, "1") == 0;
    if (plus)
        snprintf(e, sizeof e, "%s", d);
    else if (n > 2 && d[0] == '0' && d[1] == '0')
        snprintf(e, sizeof e, "%s", d + 2);
    else if (nanp_default && n > 3 && memcmp(d, "011", 3) == 0)
        snprintf(e, sizeof e, "%s", d + 3);
    else if (nanp_default) {
        if (n == 10)
            snprintf(e, sizeof e, "1%s", d);
        else if (n == 11 && d[0] == '1')
            snprintf(e, sizeof e, "%s", d);
        else
            return -1;
    } else {
        const char *nat = d[0] == '0' ? d + 1 : d; /* trunk prefix */
        snprintf(e, sizeof e, "%s%s", cc, nat);
    }
    size_t el = strlen(e);
    if (el < 8 || el > 15 || e[0] == '0')
        return -1;
    /* North American numbers: 1 + area code + exchange, neither starting
     * with 0 or 1. */
    if (e[0] == '1' && (el != 11 || e[1] < '2' || e[4] < '2'))
        return -1;
    if (el + 2 > cap)
        return -1;
    out[0] = '+';
    memcpy(out + 1, e, el + 1);
    return 0;
}

/* ---- templates ----------------------------------------------------------------- */

#define DEFAULT_START_FMT "%a %b %e %l:%M %p"
#define MAX_FMT 64

enum ph { PH_FIRST, PH_LOCATION, PH_PROVIDER, PH_LINK, PH_APPT, PH_FACILITY, PH_START, PH_BAD };

static enum ph placeholder(const char *name, size_t n, const char **fmt, size_t *fmt_len)
{
    static const char *const names[] = { "first_name", "location", "provider", "link",
                                         "appointment_id", "facility" };
    *fmt = NULL;
    *fmt_len = 0;
    for (int i = 0; i < 6; i++)
        if (strlen(names[i]) == n && memcmp(name, names[i], n) == 0)
            return (enum ph)i;
    if (n == 5 && memcmp(name, "start", 5) == 0)
        return PH_START;
    if (n > 6 && memcmp(name, "start:", 6) == 0) {
        *fmt = name + 6;
        *fmt_len = n - 6;
        return *fmt_len < MAX_FMT ? PH_START : PH_BAD;
    }
    return PH_BAD;
}

int sink_sms_template_check(const char *t, char *why, size_t cap)
{
    for (size_t i = 0; t[i]; i++) {
        if (t[i] == '{' && t[i + 1] == '{') {
            i++;
        } else if (t[i] == '}' && t[i + 1] == '}') {
            i++;
        } else if (t[i] == '{') {
            const char *end = strchr(t + i + 1, '}');
            const char *fmt;
            size_t fl;
            if (!end) {
                snprintf(why, cap, "unclosed \"{\" at offset %zu", i);
                return -1;
            }
            if (placeholder(t + i + 1, (size_t)(end - t - i - 1), &fmt, &fl) == PH_BAD) {
                snprintf(why, cap,
                         "unknown placeholder {%.*s} (known: {first_name} {location} {provider} "
                         "{link} {appointment_id} {facility} {start} {start:FORMAT})",
                         (int)(end - t - i - 1 > 40 ? 40 : end - t - i - 1), t + i + 1);
                return -1;
            }
            i = (size_t)(end - t);
        } else if (t[i] == '}') {
            snprintf(why, cap, "lone \"}\" at offset %zu (write }} for a brace)", i);
            return -1;
        }
    }
    return 0;
}

struct out {
    char *p;
    size_t len, cap;
};

/* Appends bytes, control characters as spaces (a name with a line break
 * must not break the text).  When the buffer is full the rest is dropped
 * and a character left incomplete at the end is removed. */
static void put(struct out *o, const char *s, size_t n, int clean)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (clean && (unsigned char)c < 0x20)
            c = ' ';
        if (o->len + 1 >= o->cap) {
            size_t k = o->len;
            while (k > 0 && ((unsigned char)o->p[k - 1] & 0xC0) == 0x80)
                k--;
            if (k > 0 && ((unsigned char)o->p[k - 1] & 0x80)) {
                unsigned char lead = (unsigned char)o->p[k - 1];
                size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
                if (o->len - (k - 1) < want)
                    o->len = k - 1;
            }
            break;
        }
        o->p[o->len++] = c;
    }
    o->p[o->len] = '\0';
}

/* A value inside a URL: RFC 3986 unreserved bytes as they are, every other
 * byte (UTF-8 included) as %XX, so an id with "/", "?" or "#" cannot change
 * where the link leads. */
static void put_url(struct out *o, const char *s, size_t n)
{
    static const char hx[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            put(o, (const char *)&c, 1, 0);
        } else {
            char e[3] = { '%', hx[c >> 4], hx[c & 15] };
            if (o->len + 3 >= o->cap)
                break;
            put(o, e, 3, 0);
        }
    }
}

static void put_val(struct out *o, const char *s, size_t n, int url)
{
    if (url)
        put_url(o, s, n);
    else
        put(o, s, n, 1);
}

static void put_time(struct out *o, const struct sink_sms_vars *v, const char *fmt, size_t fl,
                     int url)
{
    char f[MAX_FMT + 1];
    if (!fmt) {
        fmt = DEFAULT_START_FMT;
        fl = strlen(fmt);
    }
    if (fl > MAX_FMT)
        return;
    memcpy(f, fmt, fl);
    f[fl] = '\0';
    time_t local = (time_t)(v->start + v->utc_offset);
    struct tm tm;
    if (!gmtime_r(&local, &tm))
        return;
    tm.tm_gmtoff = v->utc_offset; /* %z prints the clinic's offset */
    tm.tm_zone = "";
    char buf[256];
    /* The format comes from the operator's template, checked at start-up. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    size_t n = strftime(buf, sizeof buf, f, &tm);
#pragma GCC diagnostic pop
    put_val(o, buf, n, url);
}

static void render(const char *t, const struct sink_sms_vars *v, char *dst, size_t cap, int url)
{
    if (cap == 0)
        return;
    struct out o = { dst, 0, cap };
    dst[0] = '\0';
    for (size_t i = 0; t[i]; i++) {
        if ((t[i] == '{' && t[i + 1] == '{') || (t[i] == '}' && t[i + 1] == '}')) {
            put(&o, t + i, 1, 0);
            i++;
            continue;
        }
        if (t[i] != '{') {
            put(&o, t + i, 1, 0);
            continue;
        }
        const char *end = strchr(t + i + 1, '}');
        if (!end)
            break; /* rejected by sink_sms_template_check */
        const char *fmt;
        size_t fl;
        const char *val = NULL;
        switch (placeholder(t + i + 1, (size_t)(end - t - i - 1), &fmt, &fl)) {
        case PH_FIRST: val = v->first_name; break;
        case PH_LOCATION: val = v->location; break;
        case PH_PROVIDER: val = v->provider; break;
        case PH_LINK: val = url ? NULL : v->link; break;
        case PH_APPT: val = v->appointment_id; break;
        case PH_FACILITY: val = v->facility; break;
        case PH_START: put_time(&o, v, fmt, fl, url); break;
        case PH_BAD: break;
        }
        if (val)
            put_val(&o, val, strlen(val), url);
        i = (size_t)(end - t);
    }
}

void sink_sms_render_link(const char *t, const struct sink_sms_vars *v, char *dst, size_t cap)
{
    if (cap == 0)
        return;
    render(t, v, dst, cap, 1);
}

void sink_sms_render(const char *t, const struct sink_sms_vars *v, char *dst, size_t cap)
{
    if (cap == 0)
        return;
    render(t, v, dst, cap, 0);
    /* Fold runs of spaces and trim. */
    size_t w = 0, len = strlen(dst);
    for (size_t r = 0; r < len; r++) {
        if (dst[r] == ' ' && (w == 0 || dst[w - 1] == ' ' || dst[w - 1] == '\n'))
            continue;
        dst[w++] = dst[r];
    }
    while (w > 0 && (dst[w - 1] == ' ' || dst[w - 1] == '\n'))
        w--;
    dst[w] = '\0';
}

/* ---- ids and dates ------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void sink_sms_request_id(const char *facility, const char *appt_id, const char *event_key,
                         char out[37])
{
    unsigned char ns[16];
    const char *s = SINK_SMS_UUID_NS;
    for (size_t i = 0, k = 0; s[i] && k < 16; i++) {
        if (s[i] == '-')
            continue;
        ns[k++] = (unsigned char)(hexval(s[i]) << 4 | hexval(s[i + 1]));
        i++;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    static const char sep = 0x1f;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, ns, sizeof ns) != 1 ||
        EVP_DigestUpdate(ctx, facility, strlen(facility)) != 1 ||
        EVP_DigestUpdate(ctx, &sep, 1) != 1 ||
        EVP_DigestUpdate(ctx, appt_id, strlen(appt_id)) != 1 ||
        EVP_DigestUpdate(ctx, &sep, 1) != 1 ||
        EVP_DigestUpdate(ctx, event_key, strlen(event_key)) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen < 16)
        memset(md, 0, sizeof md); /* allocation failure only; still well-formed */
    EVP_MD_CTX_free(ctx);
    md[6] = (unsigned char)((md[6] & 0x0F) | 0x50); /* version 5 */
    md[8] = (unsigned char)((md[8] & 0x3F) | 0x80); /* RFC 4122 variant */
    static const char hx[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hx[md[i] >> 4];
        out[o++] = hx[md[i] & 15];
    }
    out[o] = '\0';
}

void sink_sms_rfc1123(int64_t t, char out[32])
{
    static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm)) {
        snprintf(out, 32, "Thu, 01 Jan 1970 00:00:00 GMT");
        return;
    }
    /* Built by hand: strftime's %a/%b follow the locale. */
    snprintf(out, 32, "%s, %02d %s %04d %02d:%02d:%02d GMT", wd[tm.tm_wday], tm.tm_mday,
             mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- quiet hours ----------------------------------------------------------------- */

int64_t sink_sms_quiet_adjust(int64_t due, const struct sink_sms_zone *z, unsigned start_min,
                              unsigned end_min)
{
    if (start_min == end_min)
        return due;
    int64_t local = due + z->offset_at(z->zone, due);
    int64_t sod = ((local % 86400) + 86400) % 86400;
    int64_t day0 = local - sod;
    unsigned m = (unsigned)(sod / 60);
    int in = start_min < end_min ? (m >= start_min && m < end_min)
                                 : (m >= start_min || m < end_min);
    if (!in)
        return due;
    /* The window that holds `due` began today, or yesterday when it wraps
     * past midnight and `due` is in its morning part. */
    int64_t wstart = (start_min < end_min || m >= start_min) ? day0 + start_min * 60
                                                             : day0 - 86400 + start_min * 60;
    int64_t r = z->local_to_utc(z->zone, wstart - 60);
    return r < due ? r : due;
}

/* ---- JSON ----------------------------------------------------------------------- */

int sink_sms_json_escape(struct buf *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        long cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        int rc;
        if (cp < 0) {
            rc = buf_append(out, "\xEF\xBF\xBD", 3);
        } else if (cp == '"' || cp == '\\') {
            char e[2] = { '\\', (char)cp };
            rc = buf_append(out, e, 2);
        } else if (cp == '\n') {
            rc = buf_append(out, "\\n", 2);
        } else if (cp == '\r') {
            rc = buf_append(out, "\\r", 2);
        } else if (cp == '\t') {
            rc = buf_append(out, "\\t", 2);
        } else if (cp < 0x20 || cp == 0x7F) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04lx", cp);
            rc = buf_append(out, e, 6);
        } else {
            rc = buf_append(out, p + i, n);
        }
        if (rc != 0)
            return -1;
        i += n;
    }
    return 0;
}
