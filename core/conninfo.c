/* conninfo — scrubbing passwords out of libpq connection strings (see
 * conninfo.h).  Follows libpq's own grammar closely enough that whatever it
 * would read as a password is hidden: in a URI, the part after the first ':'
 * of the user info and the values of password / sslpassword query
 * parameters; in keyword form, the values of those keywords, quoted
 * ('…' with \' and \\ escapes) or bare (up to white space). */
#include "core/conninfo.h"

#include <string.h>

struct out {
    char *p;
    size_t cap, len;
    int over;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->over)
        return;
    if (n >= o->cap - o->len) {
        o->over = 1;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int secret_key(const char *k, size_t n)
{
    return (n == 8 && memcmp(k, "password", 8) == 0) ||
           (n == 11 && memcmp(k, "sslpassword", 11) == 0);
}

static int is_uri(const char *s)
{
    return strncmp(s, "postgresql://", 13) == 0 || strncmp(s, "postgres://", 11) == 0;
}

/* URI: scheme://[user[:password]@]hosts[/db][?k=v&…] */
static void scrub_uri(const char *in, struct out *o)
{
    const char *auth = strstr(in, "://") + 3;
    put(o, in, (size_t)(auth - in));
    /* The authority ends at the first '/' or '?'; its user info at the
     * last '@' inside it. */
    size_t alen = strcspn(auth, "/?");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@')
            at = auth + i;
    const char *p = auth;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        if (colon) {
            put(o, auth, (size_t)(colon - auth) + 1);
            put(o, "***", 3);
            p = at;
        }
    }
    const char *q = strchr(p, '?');
    if (!q) {
        put(o, p, strlen(p));
        return;
    }
    put(o, p, (size_t)(q - p) + 1);
    for (const char *s = q + 1; *s;) {
        size_t n = strcspn(s, "&");
        const char *eq = memchr(s, '=', n);
        if (eq && secret_key(s, (size_t)(eq - s))) {
            put(o, s, (size_t)(eq - s) + 1);
            put(o, "***", 3);
        } else {
            put(o, s, n);
        }
        s += n;
        if (*s == '&') {
            put(o, "&", 1);
            s++;
        }
    }
}

/* key = value pairs separated by white space. */
static void scrub_pairs(const char *in, struct out *o)
{
    const char *s = in;
    while (*s) {
        const char *sp = s;
        while (is_space(*s))
            s++;
        put(o, sp, (size_t)(s - sp));
        if (!*s)
            break;
        const char *key = s;
        while (*s && *s != '=' && !is_space(*s))
            s++;
        size_t klen = (size_t)(s - key);
        while (is_space(*s))
            s++;
        if (*s != '=') { /* not a pair libpq would take: copy the word as it is */
            put(o, key, (size_t)(s - key));
            continue;
        }
        s++;
        while (is_space(*s))
            s++;
        put(o, key, (size_t)(s - key));
        const char *val = s;
        if (*s == '\'') {
            s++;
            while (*s && *s != '\'') {
                if (*s == '\\' && s[1])
                    s++;
                s++;
            }
            if (*s == '\'')
                s++;
        } else {
            while (*s && !is_space(*s)) {
                if (*s == '\\' && s[1])
                    s++;
                s++;
            }
        }
        if (secret_key(key, klen))
            put(o, "***", 3);
        else
            put(o, val, (size_t)(s - val));
    }
}

int conninfo_scrub(const char *in, char *out, size_t cap)
{
    if (!cap)
        return -1;
    out[0] = '\0';
    if (!in)
        return 0;
    struct out o = { out, cap, 0, 0 };
    if (is_uri(in))
        scrub_uri(in, &o);
    else
        scrub_pairs(in, &o);
    return o.over ? -1 : 0;
}

int conninfo_has_password(const char *in)
{
    char buf[1024];
    if (!in)
        return 0;
    /* Scrubbing changes the text exactly where a password stands. */
    if (conninfo_scrub(in, buf, sizeof buf) != 0)
        return 1; /* too long to tell: assume it may */
    return strcmp(buf, in) != 0;
}
