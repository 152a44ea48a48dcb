/* config loader: YAML text → struct config.
 *
 * libyaml builds a node tree (with line/column marks) for the one document;
 * a single generic walker then visits it against the key tables of
 * config_keys.c.  Every value goes through a parser chosen by the key's type,
 * defaults included, and every problem is appended to the error list rather
 * than stopping, so an operator sees all mistakes in one run.  If any error
 * was recorded the half-built struct is released and NULL returned: none of a
 * bad configuration is ever applied.
 *
 * The walker only descends where a table says there is a section, so the
 * depth of the work is bounded by the schema whatever the input (aliases that
 * form cycles or fan out are never followed further than that).
 *
 * Runs on whichever thread calls it; no global state besides getenv(). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "config/config_int.h"
#include "core/buf.h"
#include "core/num.h"

/* A section has at most this many keys (checked when walking). */
#define CFG_MAX_KEYS 32
/* Longest scalar after ${NAME} expansion. */
#define CFG_MAX_SCALAR (1u << 20)
/* Largest secret file and configuration file read. */
#define CFG_MAX_SECRET_FILE (64u * 1024u)
#define CFG_MAX_FILE (16u * 1024u * 1024u)
/* How much of a bad value is quoted back in a message. */
#define Q "%.64s"

struct cfg_walk {
    const char *file;
    const char *base_dir;       /* relative written paths resolve here; NULL: kept */
    struct config *cfg;         /* gets the written form of each resolved path */
    yaml_document_t *doc;
    struct config_errors *errs;
    size_t n_errors;            /* counted even past CONFIG_MAX_ERRORS */
};

/* ---- errors ------------------------------------------------------------ */

static void add_error(struct cfg_walk *w, size_t line, size_t col, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

static void add_error(struct cfg_walk *w, size_t line, size_t col, const char *fmt, va_list ap)
{
    w->n_errors++;
    if (w->n_errors > CONFIG_MAX_ERRORS + 1)
        return;
    char msg[512];
    if (w->n_errors == CONFIG_MAX_ERRORS + 1)
        snprintf(msg, sizeof msg, "too many errors; only the first %d are shown",
                 CONFIG_MAX_ERRORS);
    else
        vsnprintf(msg, sizeof msg, fmt, ap);
    char *item = NULL;
    if (asprintf(&item, "%s:%zu:%zu: %s", w->file, line, col, msg) < 0)
        return;     /* still counted: the config is refused either way */
    char **grown = realloc(w->errs->items, (w->errs->n + 1) * sizeof *grown);
    if (!grown) {
        free(item);
        return;
    }
    grown[w->errs->n++] = item;
    w->errs->items = grown;
}

void cfg_error(struct cfg_walk *w, const yaml_node_t *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    /* libyaml marks are 0-based; editors count from 1.  A NULL node means
     * "the file as a whole". */
    add_error(w, at ? at->start_mark.line + 1 : 1, at ? at->start_mark.column + 1 : 1, fmt, ap);
    va_end(ap);
}

static void error_at_mark(struct cfg_walk *w, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void error_at_mark(struct cfg_walk *w, yaml_mark_t m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_error(w, m.line + 1, m.column + 1, fmt, ap);
    va_end(ap);
}

void config_errors_release(struct config_errors *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i]);
    free(e->items);
    e->items = NULL;
    e->n = 0;
}

/* ---- node helpers ------------------------------------------------------ */

yaml_document_t *cfg_doc(struct cfg_walk *w)
{
    return w->doc;
}

static const yaml_node_t *node_at(struct cfg_walk *w, int id)
{
    return yaml_document_get_node(w->doc, id);
}

static const char *scalar_text(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* A plain empty, "~" or "null" scalar: the key counts as not written, so
 * `charset:` or `store: ~` leave the default in place. */
static int is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *v = scalar_text(n);
    return n->data.scalar.length == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static int key_is(const yaml_node_t *k, const char *name)
{
    return k && k->type == YAML_SCALAR_NODE && strlen(name) == k->data.scalar.length &&
           memcmp(k->data.scalar.value, name, k->data.scalar.length) == 0;
}

const yaml_node_t *cfg_find_key(struct cfg_walk *w, const yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
        if (key_is(node_at(w, p->key), key))
            return node_at(w, p->key);
    return NULL;
}

const yaml_node_t *cfg_find(struct cfg_walk *w, const yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
        if (key_is(node_at(w, p->key), key))
            return node_at(w, p->value);
    return NULL;
}

/* The scalar's text, or -1 (reported) when it is not a scalar or hides a NUL
 * that C strings would silently cut at. */
static int get_scalar(struct cfg_walk *w, const yaml_node_t *n, const char *path,
                      const char *what, const char **out)
{
    if (n->type != YAML_SCALAR_NODE) {
        cfg_error(w, n, "%s: expected %s", path, what);
        return -1;
    }
    if (strlen(scalar_text(n)) != n->data.scalar.length) {
        cfg_error(w, n, "%s: value contains a NUL byte", path);
        return -1;
    }
    *out = scalar_text(n);
    return 0;
}

static char *dup_or_fail(struct cfg_walk *w, const yaml_node_t *at, const char *s)
{
    char *d = strdup(s);
    if (!d)
        cfg_error(w, at, "out of memory");
    return d;
}

/* ---- ${NAME} expansion ------------------------------------------------- */

static int name_char(char ch, int first)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '_' ||
           (!first && ch >= '0' && ch <= '9');
}

/* Length of a valid variable name at s (up to '}'), or 0. */
static size_t var_name_len(const char *s)
{
    size_t i = 0;
    while (s[i] && name_char(s[i], i == 0))
        i++;
    return s[i] == '}' ? i : 0;
}

/* Returns an owned copy of `raw` with ${NAME} replaced and $$ turned into $,
 * or NULL (reported).  A '$' followed by anything else is kept as is, so
 * prices and regular expressions need no escaping. */
static char *expand(struct cfg_walk *w, const yaml_node_t *at, const char *path, const char *raw)
{
    if (!strchr(raw, '$'))
        return dup_or_fail(w, at, raw);
    struct buf b;
    buf_init(&b, CFG_MAX_SCALAR);
    char *out = NULL;
    for (const char *s = raw; *s;) {
        const char *piece = s;
        size_t plen = 1;
        if (s[0] == '$' && s[1] == '$') {
            s += 2;
        } else if (s[0] == '$' && s[1] == '{') {
            size_t n = var_name_len(s + 2);
            if (n == 0) {
                cfg_error(w, at, "%s: bad variable reference; write ${NAME} (letters, digits, _) "
                          "or $$ for a literal $", path);
                goto out;
            }
            char name[256];
            if (n >= sizeof name) {
                cfg_error(w, at, "%s: variable name too long", path);
                goto out;
            }
            memcpy(name, s + 2, n);
            name[n] = '\0';
            piece = getenv(name);
            if (!piece) {
                cfg_error(w, at, "%s: environment variable %s is not set", path, name);
                goto out;
            }
            plen = strlen(piece);
            s += n + 3;
        } else {
            s++;
        }
        if (buf_append(&b, piece, plen) != 0) {
            cfg_error(w, at, "%s: value too long after expanding variables", path);
            goto out;
        }
    }
    out = malloc(b.len + 1);
    if (!out) {
        cfg_error(w, at, "out of memory");
        goto out;
    }
    if (b.len)
        memcpy(out, buf_data(&b), b.len);
    out[b.len] = '\0';
out:
    buf_release(&b);
    return out;
}

/* ---- scalar parsers ---------------------------------------------------- */

/* Digits then optional unit; units[] maps suffix → multiplier. */
struct unit { const char *suffix; uint64_t mul; };

static const struct unit size_units[] = {
    {"", 1}, {"B", 1},
    {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}, {"TiB", 1ull << 40},
    {"kB", 1000ull}, {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull},
    {"TB", 1000000000000ull},
};

static int parse_size(const char *v, uint64_t *out)
{
    size_t nd = 0;
    while (v[nd] >= '0' && v[nd] <= '9')
        nd++;
    uint64_t n;
    if (num_parse_u64((const uint8_t *)v, nd, UINT64_MAX, &n) != 0)
        return -1;
    const char *u = v + nd;
    if (*u == ' ' && u[1])
        u++;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++) {
        if (strcmp(u, size_units[i].suffix) == 0) {
            if (n > UINT64_MAX / size_units[i].mul)
                return -1;
            *out = n * size_units[i].mul;
            return 0;
        }
    }
    return -1;
}

/* "1h30m", "90s", "2d", or "0".  Each part is digits then one of d h m s. */
static int parse_duration(const char *v, uint64_t *out)
{
    if (strcmp(v, "0") == 0) {
        *out = 0;
        return 0;
    }
    uint64_t total = 0;
    if (!*v)
        return -1;
    while (*v) {
        size_t nd = 0;
        while (v[nd] >= '0' && v[nd] <= '9')
            nd++;
        uint64_t n, mul;
        if (num_parse_u64((const uint8_t *)v, nd, UINT32_MAX, &n) != 0)
            return -1;
        switch (v[nd]) {
        case 'd': mul = 86400; break;
        case 'h': mul = 3600; break;
        case 'm': mul = 60; break;
        case 's': mul = 1; break;
        default: return -1;
        }
        total += n * mul;   /* n < 2^32, mul < 2^17, at most a few parts */
        if (total > UINT32_MAX)
            return -1;
        v += nd + 1;
    }
    *out = total;
    return 0;
}

static int parse_hhmm(const char *v, uint64_t *out)
{
    uint64_t h, m;
    if (strlen(v) != 5 || v[2] != ':' ||
        num_parse_u64((const uint8_t *)v, 2, 23, &h) != 0 ||
        num_parse_u64((const uint8_t *)v + 3, 2, 59, &m) != 0)
        return -1;
    *out = h * 60 + m;
    return 0;
}

static int hostname_ok(const char *h, size_t len)
{
    if (len == 0 || len > 253)
        return 0;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = h[i];
        if (ch == '.') {
            if (label == 0 || h[i - 1] == '-')
                return 0;
            label = 0;
            continue;
        }
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || (ch == '-' && label > 0);
        if (!ok || ++label > 63)
            return 0;
    }
    return label > 0 && h[len - 1] != '-';
}

/* "1.2.3.4:80", "[::1]:80", "name.example:80".  On success *host is owned. */
static int parse_addr(const char *v, char **host, unsigned *port, const char **why)
{
    const char *hs, *colon;
    size_t hl;
    int v6 = 0;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close) {
            *why = "missing ']' after an IPv6 address";
            return -1;
        }
        hs = v + 1;
        hl = (size_t)(close - hs);
        colon = close + 1;
        if (*colon != ':') {
            *why = "expected host:port";
            return -1;
        }
        v6 = 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon) {
            *why = "expected host:port";
            return -1;
        }
        if (memchr(v, ':', (size_t)(colon - v))) {
            *why = "write an IPv6 address in brackets, like [::1]:2575";
            return -1;
        }
        hs = v;
        hl = (size_t)(colon - v);
    }
    if (hl == 0) {
        *why = "missing host before the port";
        return -1;
    }
    uint64_t p;
    const char *ps = colon + 1;
    if (num_parse_u64((const uint8_t *)ps, strlen(ps), 65535, &p) != 0 || p == 0) {
        *why = "port must be a number from 1 to 65535";
        return -1;
    }
    char *h = strndup(hs, hl);
    if (!h) {
        *why = "out of memory";
        return -1;
    }
    unsigned char bin[16];
    int ok;
    if (v6) {
        ok = inet_pton(AF_INET6, h, bin) == 1;
        *why = "invalid IPv6 address";
    } else if (strspn(h, "0123456789.") == hl) {
        /* All digits and dots: it was meant as an IPv4 address, so do not
         * let "300.1.2.3" pass as a host name. */
        ok = inet_pton(AF_INET, h, bin) == 1;
        *why = "invalid IPv4 address";
    } else {
        ok = hostname_ok(h, hl);
        *why = "invalid host name";
    }
    if (!ok) {
        free(h);
        return -1;
    }
    *host = h;
    *port = (unsigned)p;
    return 0;
}

/* "a, b, c" for messages. */
static void join_words(const char *const *words, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; words[i] && used < len; i++) {
        int n = snprintf(out + used, len - used, "%s%s", i ? ", " : "", words[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static void set_str(void *base, size_t off, char *v)
{
    char **f = CFG_AT(base, off, char *);
    free(*f);
    *f = v;
}

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static int check_range(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                       const char *path, uint64_t v, const char *text)
{
    if (v < k->min || v > k->max) {
        cfg_error(w, at, "%s: " Q " is out of range (%llu..%llu)", path, text,
                  (unsigned long long)k->min, (unsigned long long)k->max);
        return -1;
    }
    return 0;
}

/* Parses text (already expanded) for a scalar-typed key and stores it.
 * `at` is the value node for messages (NULL for a built-in default). */
static void set_scalar(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                       const char *text, void *base, const char *path)
{
    uint64_t u;
    char why[256];
    switch (k->type) {
    case CT_STR:
        if (k->check && k->check(text, why, sizeof why) != 0) {
            cfg_error(w, at, "%s: %s", path, why);
            return;
        }
        set_str(base, k->off, dup_or_fail(w, at, text));
        return;
    case CT_CHOICE:
    case CT_ENUM:
        for (size_t i = 0; k->words[i]; i++) {
            if (strcmp(text, k->words[i]) == 0) {
                if (k->type == CT_CHOICE) {
                    set_str(base, k->off, dup_or_fail(w, at, k->words[i]));
                } else {
                    int e = (int)i;
                    memcpy(CFG_AT(base, k->off, char), &e, sizeof e);
                }
                return;
            }
        }
        join_words(k->words, why, sizeof why);
        cfg_error(w, at, "%s: \"" Q "\" is not one of: %s", path, text, why);
        return;
    case CT_UINT:
    case CT_U64:
        if (num_parse_u64((const uint8_t *)text, strlen(text), UINT64_MAX, &u) != 0) {
            cfg_error(w, at, "%s: expected an unsigned integer, got \"" Q "\"", path, text);
            return;
        }
        break;
    case CT_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0) {
            *CFG_AT(base, k->off, bool) = text[0] == 't';
            return;
        }
        cfg_error(w, at, "%s: expected true or false, got \"" Q "\"", path, text);
        return;
    case CT_DURATION:
        if (parse_duration(text, &u) != 0) {
            cfg_error(w, at, "%s: expected a duration like 30s, 90m, 2h or 1d, got \"" Q "\"",
                      path, text);
            return;
        }
        break;
    case CT_SIZE:
        if (parse_size(text, &u) != 0) {
            cfg_error(w, at, "%s: expected a size like 16MiB or 1048576, got \"" Q "\"", path, text);
            return;
        }
        break;
    case CT_HHMM:
        if (parse_hhmm(text, &u) != 0) {
            cfg_error(w, at, "%s: expected a time of day HH:MM (00:00..23:59), got \"" Q "\"",
                      path, text);
            return;
        }
        break;
    case CT_ADDR: {
        char *host;
        unsigned port;
        const char *reason;
        if (parse_addr(text, &host, &port, &reason) != 0) {
            cfg_error(w, at, "%s: %s in \"" Q "\"", path, reason, text);
            return;
        }
        set_str(base, k->off, dup_or_fail(w, at, text));
        set_str(base, k->off2, host);
        *CFG_AT(base, k->off3, unsigned) = port;
        return;
    }
    default:
        cfg_error(w, at, "%s: internal error: not a scalar key", path);
        return;
    }
    /* The numeric types share the range check and the store. */
    if (check_range(w, k, at, path, u, text) != 0)
        return;
    if (k->type == CT_U64 || k->type == CT_SIZE)
        *CFG_AT(base, k->off, uint64_t) = u;
    else
        *CFG_AT(base, k->off, unsigned) = (unsigned)u;
}

/* ---- secrets ----------------------------------------------------------- */

/* The whole value must be one ${NAME}: anything else means the secret itself
 * was typed into the file.  Messages never quote the value. */
static void set_secret(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                       void *base, const char *path)
{
    const char *raw;
    if (get_scalar(w, at, path, "a ${NAME} reference", &raw) != 0)
        return;
    size_t n = raw[0] == '$' && raw[1] == '{' ? var_name_len(raw + 2) : 0;
    if (n == 0 || raw[n + 3] != '\0') {
        cfg_error(w, at, "%s: secret written in clear; put it in an environment variable "
                  "(%s: ${NAME}) or a file (%s_file: PATH)", path, k->name, k->name);
        return;
    }
    char name[256];
    if (n >= sizeof name) {
        cfg_error(w, at, "%s: variable name too long", path);
        return;
    }
    memcpy(name, raw + 2, n);
    name[n] = '\0';
    const char *v = getenv(name);
    if (!v) {
        cfg_error(w, at, "%s: environment variable %s is not set", path, name);
        return;
    }
    if (!*v) {
        cfg_error(w, at, "%s: environment variable %s is empty", path, name);
        return;
    }
    char *copy = dup_or_fail(w, at, v);
    if (!copy)
        return;
    char **f = CFG_AT(base, k->off, char *);
    wipe_free(*f);
    *f = copy;
}

/* Reads a secret from `file`: a regular file no one but its owner may read
 * or write, at most CFG_MAX_SECRET_FILE bytes, trailing newlines dropped.
 * O_NONBLOCK keeps a FIFO from hanging start-up; the checks run on the
 * opened descriptor so the file cannot be swapped between check and read. */
static void set_secret_file(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                            const char *file, void *base, const char *path)
{
    char *data = NULL;
    int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        cfg_error(w, at, "%s: cannot open %s: %s", path, file, strerror(e));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        cfg_error(w, at, "%s: cannot stat %s: %s", path, file, strerror(e));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        cfg_error(w, at, "%s: %s is not a regular file", path, file);
        goto out;
    }
    if (st.st_mode & 077) {
        cfg_error(w, at, "%s: %s has mode %04o; a secret file must not be readable or "
                  "writable by group or others (chmod 600 %s)",
                  path, file, (unsigned)(st.st_mode & 07777), file);
        goto out;
    }
    data = malloc(CFG_MAX_SECRET_FILE + 1);
    if (!data) {
        cfg_error(w, at, "out of memory");
        goto out;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, data + len, CFG_MAX_SECRET_FILE + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            cfg_error(w, at, "%s: cannot read %s: %s", path, file, strerror(e));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > CFG_MAX_SECRET_FILE) {
            cfg_error(w, at, "%s: %s is larger than %u bytes", path, file, CFG_MAX_SECRET_FILE);
            goto out;
        }
    }
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;
    data[len] = '\0';
    if (len == 0) {
        cfg_error(w, at, "%s: %s is empty", path, file);
        goto out;
    }
    if (memchr(data, '\0', len)) {
        cfg_error(w, at, "%s: %s contains a NUL byte", path, file);
        goto out;
    }
    char *p = dup_or_fail(w, at, file);
    if (!p)
        goto out;
    set_str(base, k->off2, p);
    char **f = CFG_AT(base, k->off, char *);
    wipe_free(*f);
    *f = data;
    data = NULL;
out:
    if (data) {
        explicit_bzero(data, CFG_MAX_SECRET_FILE + 1);
        free(data);
    }
    close(fd);
}

/* ---- paths ------------------------------------------------------------ */

/* Where a written path leads: `text` itself when absolute, empty or when
 * there is no base directory (a string configuration), else base/text.  The
 * written form is recorded against `field` (the char * that will hold the
 * result) for config_dump.  Returns an owned string, NULL when out of memory. */
static char *resolve_path(struct cfg_walk *w, const yaml_node_t *at, const void *field,
                          const char *text)
{
    if (!w->base_dir || !w->cfg || text[0] == '/' || text[0] == '\0')
        return dup_or_fail(w, at, text);
    size_t lb = strlen(w->base_dir), lt = strlen(text);
    char *out = malloc(lb + 1 + lt + 1);
    struct config *c = w->cfg;
    struct config_written_path *n =
        realloc(c->written_paths, (c->n_written_paths + 1) * sizeof *n);
    if (n)
        c->written_paths = n;
    char *written = n ? strdup(text) : NULL;
    if (!out || !written) {
        free(out);
        free(written);
        cfg_error(w, at, "out of memory");
        return NULL;
    }
    memcpy(out, w->base_dir, lb);
    out[lb] = '/';
    memcpy(out + lb + 1, text, lt + 1);
    c->written_paths[c->n_written_paths++] = (struct config_written_path){field, written};
    return out;
}

/* ---- lists and maps ---------------------------------------------------- */

static int list_count_ok(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                         const char *path, size_t n)
{
    if (n < k->min_n) {
        cfg_error(w, at, "%s: needs at least %zu item%s", path, k->min_n,
                  k->min_n == 1 ? "" : "s");
        return -1;
    }
    if (k->max_n && n > k->max_n) {
        cfg_error(w, at, "%s: at most %zu items are allowed", path, k->max_n);
        return -1;
    }
    return 0;
}

/* One list item from text: a string or a duration. */
static void list_item(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                      const char *text, void *base, size_t i, const char *path)
{
    if (k->type == CT_STRLIST) {
        char why[160];
        if (k->check && k->check(text, why, sizeof why) != 0) {
            cfg_error(w, at, "%s: \"" Q "\" %s", path, text, why);
            return;
        }
        (*CFG_AT(base, k->off, char **))[i] = dup_or_fail(w, at, text);
        return;
    }
    uint64_t u;
    if (parse_duration(text, &u) != 0) {
        cfg_error(w, at, "%s: expected a duration like 30s, 90m, 2h or 1d, got \"" Q "\"",
                  path, text);
        return;
    }
    if (check_range(w, k, at, path, u, text) == 0)
        (*CFG_AT(base, k->off, unsigned *))[i] = (unsigned)u;
}

/* Allocates the array for n items (zeroed) and sets the count. */
static int list_alloc(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                      void *base, size_t n, size_t elem)
{
    void *arr = n ? calloc(n, elem) : NULL;
    if (n && !arr) {
        cfg_error(w, at, "out of memory");
        return -1;
    }
    *CFG_AT(base, k->off, void *) = arr;
    *CFG_AT(base, k->off2, size_t) = n;
    return 0;
}

static size_t list_elem_size(const struct cfg_key *k)
{
    return k->type == CT_STRLIST ? sizeof(char *) : sizeof(unsigned);
}

static void set_list(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                     void *base, const char *path)
{
    if (at->type != YAML_SEQUENCE_NODE) {
        cfg_error(w, at, "%s: expected a list", path);
        return;
    }
    size_t n = (size_t)(at->data.sequence.items.top - at->data.sequence.items.start);
    if (list_count_ok(w, k, at, path, n) != 0 || list_alloc(w, k, at, base, n, list_elem_size(k)) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = node_at(w, at->data.sequence.items.start[i]);
        char ipath[256];
        snprintf(ipath, sizeof ipath, "%.200s[%zu]", path, i);
        const char *raw;
        if (get_scalar(w, item, ipath, k->type == CT_STRLIST ? "a string" : "a duration", &raw) != 0)
            continue;
        char *text = expand(w, item, ipath, raw);
        if (text && (k->flags & CK_PATH)) {
            char *p = resolve_path(w, item, &(*CFG_AT(base, k->off, char **))[i], text);
            free(text);
            text = p;
        }
        if (!text)
            continue;
        list_item(w, k, item, text, base, i, ipath);
        free(text);
    }
}

/* The scalars of a sequence joined by '\n' (for CK_MAP_LIST values), or
 * NULL after reporting an error. */
static char *join_items(struct cfg_walk *w, const yaml_node_t *seq, const char *path)
{
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    size_t len = 0, cap = 64;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *it = node_at(w, seq->data.sequence.items.start[i]);
        const char *raw;
        char ipath[300];
        snprintf(ipath, sizeof ipath, "%.200s[%zu]", path, i);
        if (get_scalar(w, it, ipath, "a string", &raw) != 0) {
            free(out);
            return NULL;
        }
        char *v = expand(w, it, ipath, raw);
        if (!v) {
            free(out);
            return NULL;
        }
        size_t vl = strlen(v);
        if (len + vl + 2 > cap) {
            cap = (len + vl + 2) * 2;
            char *no = realloc(out, cap);
            if (!no) {
                free(v);
                free(out);
                return NULL;
            }
            out = no;
        }
        if (i)
            out[len++] = '\n';
        memcpy(out + len, v, vl + 1);
        len += vl;
        free(v);
    }
    return out;
}

static void set_map(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                    void *base, const char *path)
{
    if (at->type != YAML_MAPPING_NODE) {
        cfg_error(w, at, "%s: expected a mapping of names to values", path);
        return;
    }
    size_t n = (size_t)(at->data.mapping.pairs.top - at->data.mapping.pairs.start);
    if (list_alloc(w, k, at, base, n, sizeof(struct config_pair)) != 0)
        return;
    struct config_pair *pairs = *CFG_AT(base, k->off, struct config_pair *);
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *kn = node_at(w, at->data.mapping.pairs.start[i].key);
        const yaml_node_t *vn = node_at(w, at->data.mapping.pairs.start[i].value);
        const char *kraw, *vraw;
        if (get_scalar(w, kn, path, "a string key", &kraw) != 0)
            continue;
        char kpath[256];
        snprintf(kpath, sizeof kpath, "%.180s." Q, path, kraw);
        char *key, *val;
        if ((k->flags & CK_MAP_LIST) && vn->type == YAML_SEQUENCE_NODE) {
            val = join_items(w, vn, kpath);
            key = val ? expand(w, kn, kpath, kraw) : NULL;
            if (!key) {
                free(val);
                continue;
            }
        } else {
            if (get_scalar(w, vn, kpath, "a string", &vraw) != 0)
                continue;
            key = expand(w, kn, kpath, kraw);
            val = key ? expand(w, vn, kpath, vraw) : NULL;
        }
        if (!val) {
            free(key);
            continue;
        }
        size_t j;
        for (j = 0; j < i; j++)
            if (pairs[j].key && strcmp(pairs[j].key, key) == 0)
                break;
        if (j < i) {
            const yaml_node_t *first = node_at(w, at->data.mapping.pairs.start[j].key);
            cfg_error(w, kn, "%s: duplicate key (first at line %zu)", kpath,
                      (size_t)first->start_mark.line + 1);
            free(key);
            free(val);
            continue;
        }
        pairs[i].key = key;
        pairs[i].value = val;
    }
}

/* ---- the walker -------------------------------------------------------- */

static void walk_section(struct cfg_walk *w, const struct cfg_section *sec,
                         const yaml_node_t *node, void *base, const char *path);

static void join_path(char *out, size_t len, const char *path, const char *name)
{
    snprintf(out, len, "%.180s%s" Q, path, *path ? "." : "", name);
}

/* CK_NAMED: `NAME: {section}` pairs; the element's first member (char *)
 * gets NAME (letters, digits, '_', '.', '-': it is used in rules and logs). */
static void set_named_sections(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                               void *base, const char *path)
{
    if (at->type != YAML_MAPPING_NODE) {
        cfg_error(w, at, "%s: expected a mapping of names to sections", path);
        return;
    }
    size_t n = (size_t)(at->data.mapping.pairs.top - at->data.mapping.pairs.start);
    if (list_count_ok(w, k, at, path, n) != 0 || list_alloc(w, k, at, base, n, k->sub->elem_size) != 0)
        return;
    char *arr = *CFG_AT(base, k->off, char *);
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *kn = node_at(w, at->data.mapping.pairs.start[i].key);
        const yaml_node_t *vn = node_at(w, at->data.mapping.pairs.start[i].value);
        const char *kraw;
        if (get_scalar(w, kn, path, "a name", &kraw) != 0)
            continue;
        char ipath[256];
        snprintf(ipath, sizeof ipath, "%.180s." Q, path, kraw);
        size_t kl = strlen(kraw);
        if (kl == 0 || kl > 64 ||
            strspn(kraw, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") != kl) {
            cfg_error(w, kn, "%s: a name is 1 to 64 letters, digits, '_', '.' or '-'", ipath);
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            const char *other = *CFG_AT(arr + j * k->sub->elem_size, 0, char *);
            if (other && strcmp(other, kraw) == 0)
                cfg_error(w, kn, "%s: duplicate name", ipath);
        }
        char *elem = arr + i * k->sub->elem_size;
        *CFG_AT(elem, 0, char *) = dup_or_fail(w, kn, kraw);
        walk_section(w, k->sub, is_null(vn) ? NULL : vn, elem, ipath);
        if (is_null(vn))
            cfg_error(w, kn, "%s: expected a mapping of keys", ipath);
    }
}

static void set_sections(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *at,
                         void *base, const char *path)
{
    if (k->flags & CK_NAMED) {
        set_named_sections(w, k, at, base, path);
        return;
    }
    if (at->type != YAML_SEQUENCE_NODE) {
        cfg_error(w, at, "%s: expected a list", path);
        return;
    }
    size_t n = (size_t)(at->data.sequence.items.top - at->data.sequence.items.start);
    if (list_count_ok(w, k, at, path, n) != 0 || list_alloc(w, k, at, base, n, k->sub->elem_size) != 0)
        return;
    char *arr = *CFG_AT(base, k->off, char *);
    for (size_t i = 0; i < n; i++) {
        char ipath[256];
        snprintf(ipath, sizeof ipath, "%.200s[%zu]", path, i);
        const yaml_node_t *item = node_at(w, at->data.sequence.items.start[i]);
        walk_section(w, k->sub, item, arr + i * k->sub->elem_size, ipath);
    }
}

/* A written, non-null value for key k. */
static void set_value(struct cfg_walk *w, const struct cfg_key *k, const yaml_node_t *v,
                      void *base, const char *path)
{
    const char *raw;
    char *text;
    switch (k->type) {
    case CT_SECTION:
        walk_section(w, k->sub, v, base, path);
        return;
    case CT_SECTIONS:
        set_sections(w, k, v, base, path);
        return;
    case CT_STRLIST:
    case CT_DURLIST:
        set_list(w, k, v, base, path);
        return;
    case CT_MAP:
        set_map(w, k, v, base, path);
        return;
    case CT_SECRET:
        set_secret(w, k, v, base, path);
        return;
    default:
        break;
    }
    if (get_scalar(w, v, path, "a single value", &raw) != 0 || !(text = expand(w, v, path, raw)))
        return;
    if (k->flags & CK_PATH) {
        size_t off = k->type == CT_SECRET_FILE ? k->off2 : k->off;
        char *p = resolve_path(w, v, CFG_AT(base, off, char *), text);
        free(text);
        if (!(text = p))
            return;
    }
    if (k->type == CT_SECRET_FILE)
        set_secret_file(w, k, v, text, base, path);
    else
        set_scalar(w, k, v, text, base, path);
    free(text);
}

/* Default for a key that was not written.  Sections recurse so their own
 * defaults apply; a list of sections with min >= 1 gets one default element. */
static void set_default(struct cfg_walk *w, const struct cfg_key *k, void *base, const char *path)
{
    switch (k->type) {
    case CT_SECTION:
        walk_section(w, k->sub, NULL, base, path);
        return;
    case CT_SECTIONS:
        if (k->min_n == 0 || list_alloc(w, k, NULL, base, 1, k->sub->elem_size) != 0)
            return;
        walk_section(w, k->sub, NULL, *CFG_AT(base, k->off, char *), path);
        return;
    case CT_STRLIST:
    case CT_DURLIST: {
        size_t n = 0;
        while (k->defs && k->defs[n])
            n++;
        if (list_alloc(w, k, NULL, base, n, list_elem_size(k)) != 0)
            return;
        for (size_t i = 0; i < n; i++)
            list_item(w, k, NULL, k->defs[i], base, i, path);
        return;
    }
    default:
        if (k->def)
            set_scalar(w, k, NULL, k->def, base, path);
        return;
    }
}

static void walk_section(struct cfg_walk *w, const struct cfg_section *sec,
                         const yaml_node_t *node, void *base, const char *path)
{
    const yaml_node_t *seen[CFG_MAX_KEYS] = {0};
    int given[CFG_MAX_KEYS] = {0};
    char kpath[256];

    if (sec->n_keys > CFG_MAX_KEYS) {
        cfg_error(w, node, "%s: internal error: section has too many keys", path);
        return;
    }
    if (node && node->type != YAML_MAPPING_NODE) {
        if (*path)
            cfg_error(w, node, "%s: expected a mapping of keys", path);
        else
            cfg_error(w, node, "the configuration must be a mapping of keys");
        node = NULL;
    }
    for (yaml_node_pair_t *p = node ? node->data.mapping.pairs.start : NULL;
         node && p < node->data.mapping.pairs.top; p++) {
        const yaml_node_t *kn = node_at(w, p->key), *vn = node_at(w, p->value);
        if (kn->type != YAML_SCALAR_NODE) {
            cfg_error(w, kn, "%s%sexpected a key name", path, *path ? ": " : "");
            continue;
        }
        size_t i;
        for (i = 0; i < sec->n_keys; i++)
            if (key_is(kn, sec->keys[i].name))
                break;
        join_path(kpath, sizeof kpath, path, scalar_text(kn));
        if (i == sec->n_keys) {
            cfg_error(w, kn, "%s: unknown key", kpath);
            continue;
        }
        if (seen[i]) {
            cfg_error(w, kn, "%s: duplicate key (first at line %zu)", kpath,
                      (size_t)seen[i]->start_mark.line + 1);
            continue;
        }
        seen[i] = kn;
        if (is_null(vn))
            continue;
        size_t before = w->n_errors;
        set_value(w, &sec->keys[i], vn, base, kpath);
        given[i] = w->n_errors == before ? 1 : -1;
    }
    for (size_t i = 0; i < sec->n_keys; i++) {
        const struct cfg_key *k = &sec->keys[i];
        if (given[i])
            continue;
        join_path(kpath, sizeof kpath, path, k->name);
        /* Required keys are only demanded of a section that was written:
         * an absent section is entirely defaults. */
        if (node && (k->flags & CK_REQUIRED))
            cfg_error(w, node, "%s: required key is missing", kpath);
        set_default(w, k, base, kpath);
    }
    if (sec->validate)
        sec->validate(w, base, path, node, seen, given);
}

/* ---- release ----------------------------------------------------------- */

static void release_section(const struct cfg_section *sec, void *base)
{
    for (size_t i = 0; i < sec->n_keys; i++) {
        const struct cfg_key *k = &sec->keys[i];
        switch (k->type) {
        case CT_STR:
        case CT_CHOICE:
            free(*CFG_AT(base, k->off, char *));
            break;
        case CT_SECRET:     /* shared with its *_file sibling: freed once, here */
            wipe_free(*CFG_AT(base, k->off, char *));
            break;
        case CT_SECRET_FILE:
            free(*CFG_AT(base, k->off2, char *));
            break;
        case CT_ADDR:
            free(*CFG_AT(base, k->off, char *));
            free(*CFG_AT(base, k->off2, char *));
            break;
        case CT_STRLIST: {
            char **items = *CFG_AT(base, k->off, char **);
            for (size_t j = 0; items && j < *CFG_AT(base, k->off2, size_t); j++)
                free(items[j]);
            free(items);
            break;
        }
        case CT_DURLIST:
            free(*CFG_AT(base, k->off, unsigned *));
            break;
        case CT_MAP: {
            struct config_pair *pairs = *CFG_AT(base, k->off, struct config_pair *);
            for (size_t j = 0; pairs && j < *CFG_AT(base, k->off2, size_t); j++) {
                free(pairs[j].key);
                free(pairs[j].value);
            }
            free(pairs);
            break;
        }
        case CT_SECTION:
            release_section(k->sub, base);
            break;
        case CT_SECTIONS: {
            char *arr = *CFG_AT(base, k->off, char *);
            for (size_t j = 0; arr && j < *CFG_AT(base, k->off2, size_t); j++) {
                if (k->flags & CK_NAMED)
                    free(*CFG_AT(arr + j * k->sub->elem_size, 0, char *));
                release_section(k->sub, arr + j * k->sub->elem_size);
            }
            free(arr);
            break;
        }
        default:
            break;
        }
    }
}

void config_free(struct config *c)
{
    if (!c)
        return;
    release_section(&cfg_root, c);
    for (size_t i = 0; i < c->n_written_paths; i++)
        free(c->written_paths[i].written);
    free(c->written_paths);
    free(c->base_dir);
    free(c->path);
    free(c);
}

/* ---- entry points ------------------------------------------------------ */

static void syntax_error(struct cfg_walk *w, const yaml_parser_t *p)
{
    const char *problem = p->problem ? p->problem : "cannot parse";
    if (p->error == YAML_MEMORY_ERROR)
        error_at_mark(w, p->problem_mark, "out of memory while parsing");
    else if (p->context)
        error_at_mark(w, p->problem_mark, "YAML syntax error: %s (%s at line %zu)", problem,
                      p->context, (size_t)p->context_mark.line + 1);
    else
        error_at_mark(w, p->problem_mark, "YAML syntax error: %s", problem);
}

/* `base_dir` (borrowed, may be NULL): where relative written paths lead. */
static struct config *load_text(const char *name, const char *text, size_t len,
                                const char *base_dir, struct config_errors *errs)
{
    struct config_errors local = {0};
    struct cfg_walk w = { .file = name, .base_dir = base_dir, .errs = errs ? errs : &local };
    struct config *c = NULL;
    yaml_parser_t parser;
    yaml_document_t doc;
    int have_doc = 0;

    w.errs->items = NULL;
    w.errs->n = 0;
    if (!yaml_parser_initialize(&parser)) {
        cfg_error(&w, NULL, "out of memory");
        goto out;
    }
    /* libyaml insists on a non-NULL input even when it is empty. */
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""),
                                 text ? len : 0);
    if (!yaml_parser_load(&parser, &doc)) {
        syntax_error(&w, &parser);
        goto out_parser;
    }
    have_doc = 1;
    w.doc = &doc;

    /* A second document would be silently ignored by a naive loader; an
     * operator who appended one meant something by it. */
    yaml_document_t extra;
    if (!yaml_parser_load(&parser, &extra)) {
        syntax_error(&w, &parser);
    } else {
        const yaml_node_t *r = yaml_document_get_root_node(&extra);
        if (r)
            cfg_error(&w, r, "only one YAML document is allowed");
        yaml_document_delete(&extra);
    }

    c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(name)) || (base_dir && !(c->base_dir = strdup(base_dir)))) {
        cfg_error(&w, NULL, "out of memory");
        goto out_parser;
    }
    w.cfg = c;
    walk_section(&w, &cfg_root, yaml_document_get_root_node(&doc), c, "");

out_parser:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
out:
    if (w.n_errors) {
        config_free(c);
        c = NULL;
    }
    config_errors_release(&local);
    return c;
}

struct config *config_load_string(const char *name, const char *text, size_t len,
                                  struct config_errors *errs)
{
    return load_text(name, text, len, NULL, errs);
}

/* The absolute directory of `path` (owned), or NULL with errno set. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    char *abs = dir ? realpath(dir, NULL) : NULL;
    free(dir);
    return abs;
}

struct config *config_load(const char *path, struct config_errors *errs)
{
    struct config_errors local = {0};
    struct config_errors *e = errs ? errs : &local;
    struct cfg_walk w = { .file = path, .errs = e };
    e->items = NULL;
    e->n = 0;

    FILE *f = fopen(path, "rb");
    if (!f) {
        int en = errno;
        cfg_error(&w, NULL, "cannot open: %s", strerror(en));
        config_errors_release(&local);
        return NULL;
    }
    struct buf b;
    buf_init(&b, CFG_MAX_FILE);
    struct config *c = NULL;
    for (;;) {
        uint8_t *dst = buf_reserve(&b, 65536);
        if (!dst) {
            cfg_error(&w, NULL, "file too large (more than %u bytes)", CFG_MAX_FILE);
            goto out;
        }
        size_t r = fread(dst, 1, 65536, f);
        buf_commit(&b, r);
        if (r < 65536) {
            if (ferror(f)) {
                cfg_error(&w, NULL, "read error");
                goto out;
            }
            break;
        }
    }
    char *base = dir_of(path);
    if (!base) {
        int en = errno;
        cfg_error(&w, NULL, "cannot resolve its directory: %s", strerror(en));
        goto out;
    }
    c = load_text(path, b.len ? (const char *)buf_data(&b) : "", b.len, base, e);
    free(base);
out:
    buf_release(&b);
    fclose(f);
    config_errors_release(&local);
    return c;
}
