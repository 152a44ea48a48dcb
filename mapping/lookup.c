/* Lookup tables (mapping.lookups): a CSV export → an immutable hash table
 * the rules consult with `lookup: {table: NAME, key: VALUE}`.
 *
 * The file is read whole (at most HB_MAX_LOOKUP_FILE_BYTES) and parsed as
 * RFC 4180: comma-separated, CRLF or LF line ends, double-quoted fields
 * that may hold commas, line breaks and doubled quotes; a UTF-8 byte-order
 * mark is skipped.  The first record is the header; the configured key and
 * value columns are found by name.  Unquoted fields lose surrounding blanks
 * (exports pad them); quoted ones are kept exactly.  Rows with an empty key
 * are skipped (people without an EHR id); a key given twice is an error,
 * reported with both lines, since either answer could be the wrong person.
 *
 * Keys and values are copied into one owned blob; an open-addressing table
 * of entry indices (load factor at most 1/2) answers a lookup without
 * allocating.  Loading runs on whichever thread loads the rules; a loaded
 * table is only read. */
#include "mapping/mapping_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/limits.h"

/* Problems reported per file before the rest are only counted. */
#define LK_MAX_ERRORS 20

struct lk_entry {
    uint32_t key_off, key_len, val_off, val_len;
    uint32_t hash;
    uint32_t line; /* for duplicate-key messages */
};

struct mp_table {
    char *name;
    char *file;
    char *blob;              /* every key and value, each NUL-terminated */
    size_t blob_len, blob_cap;
    struct lk_entry *entries;
    size_t n, cap;
    uint32_t *slots;         /* entry index + 1; 0 = empty */
    size_t n_slots;          /* power of two */
};

struct lk_ctx {
    const char *file;
    struct mapping_errors *errs;
    size_t nerr;
};

__attribute__((format(printf, 3, 4))) static void lk_err(struct lk_ctx *c, size_t line,
                                                         const char *fmt, ...)
{
    c->nerr++;
    if (c->nerr > LK_MAX_ERRORS)
        return;
    char where[300];
    snprintf(where, sizeof where, "%s:%zu: ", c->file, line);
    va_list ap;
    va_start(ap, fmt);
    mp_errors_vadd(c->errs, where, fmt, ap);
    va_end(ap);
}

static uint32_t lk_hash(const uint8_t *p, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

/* ---- CSV ------------------------------------------------------------------ */

/* One field of the current record: a view into the file, or into `tmp`
 * when quotes had to be undone. */
struct lk_field {
    const char *p;
    size_t len;
};

struct lk_csv {
    const char *p, *end;
    size_t line;             /* line of the next byte */
    char tmp[HB_MAX_LOOKUP_FIELD_BYTES];
};

/* Reads one field starting at c->p.  Returns 1 when the record goes on
 * (a comma followed), 0 when it ended (line end or end of file), -1 on a
 * malformed field (reason in *why). */
static int csv_field(struct lk_csv *c, struct lk_field *f, size_t tmp_at, size_t *tmp_used,
                     const char **why)
{
    const char *p = c->p;
    if (p < c->end && *p == '"') {
        size_t n = 0;
        p++;
        for (;;) {
            if (p >= c->end) {
                *why = "a quoted field is not closed";
                return -1;
            }
            if (*p == '"') {
                if (p + 1 < c->end && p[1] == '"') {
                    p += 2;
                    if (tmp_at + n >= sizeof c->tmp) {
                        *why = "a field is longer than the limit";
                        return -1;
                    }
                    c->tmp[tmp_at + n++] = '"';
                    continue;
                }
                p++;
                break;
            }
            if (*p == '\n')
                c->line++;
            if (tmp_at + n >= sizeof c->tmp) {
                *why = "a field is longer than the limit";
                return -1;
            }
            c->tmp[tmp_at + n++] = *p++;
        }
        f->p = c->tmp + tmp_at;
        f->len = n;
        *tmp_used = n;
        while (p < c->end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < c->end && *p != ',' && *p != '\r' && *p != '\n') {
            *why = "text after the closing quote of a field";
            return -1;
        }
    } else {
        const char *s = p;
        while (p < c->end && *p != ',' && *p != '\r' && *p != '\n') {
            if (*p == '"') {
                *why = "a quote inside an unquoted field (quote the whole field)";
                return -1;
            }
            p++;
        }
        const char *e = p;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) > HB_MAX_LOOKUP_FIELD_BYTES) {
            *why = "a field is longer than the limit";
            return -1;
        }
        f->p = s;
        f->len = (size_t)(e - s);
        *tmp_used = 0;
    }
    if (p < c->end && *p == ',') {
        c->p = p + 1;
        return 1;
    }
    if (p < c->end && *p == '\r')
        p++;
    if (p < c->end && *p == '\n')
        p++;
    c->line++;
    c->p = p;
    return 0;
}

/* Skips the rest of a bad record (to the next line end outside quotes is
 * not knowable after an error: the next physical line). */
static void csv_skip_line(struct lk_csv *c)
{
    while (c->p < c->end && *c->p != '\n')
        c->p++;
    if (c->p < c->end)
        c->p++;
    c->line++;
}

/* ---- the table ------------------------------------------------------------ */

static int blob_put(struct mp_table *t, const char *p, size_t len, uint32_t *off)
{
    if (t->blob_len + len + 1 > t->blob_cap) {
        size_t nc = t->blob_cap ? t->blob_cap * 2 : 4096;
        while (nc < t->blob_len + len + 1)
            nc *= 2;
        char *nb = realloc(t->blob, nc);
        if (!nb)
            return -1;
        t->blob = nb;
        t->blob_cap = nc;
    }
    *off = (uint32_t)t->blob_len;
    memcpy(t->blob + t->blob_len, p, len);
    t->blob[t->blob_len + len] = 0;
    t->blob_len += len + 1;
    return 0;
}

static long find_entry(const struct mp_table *t, const uint8_t *key, size_t len, uint32_t h)
{
    if (!t->n_slots)
        return -1;
    size_t mask = t->n_slots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t s = t->slots[i];
        if (!s)
            return -1;
        const struct lk_entry *e = &t->entries[s - 1];
        if (e->hash == h && e->key_len == len && memcmp(t->blob + e->key_off, key, len) == 0)
            return (long)(s - 1);
    }
}

static int build_slots(struct mp_table *t)
{
    size_t ns = 16;
    while (ns < t->n * 2)
        ns *= 2;
    t->slots = calloc(ns, sizeof *t->slots);
    if (!t->slots)
        return -1;
    t->n_slots = ns;
    return 0;
}

static void slot_insert(struct mp_table *t, size_t idx)
{
    size_t mask = t->n_slots - 1;
    size_t i = t->entries[idx].hash & mask;
    while (t->slots[i])
        i = (i + 1) & mask;
    t->slots[i] = (uint32_t)idx + 1;
}

static int col_index(const struct lk_field *hdr, size_t n, const char *name)
{
    size_t l = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (hdr[i].len == l && memcmp(hdr[i].p, name, l) == 0)
            return (int)i;
    return -1;
}

/* Reads the whole file; NULL with an error reported. */
static char *read_file(struct lk_ctx *cx, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lk_err(cx, 1, "cannot open lookup table file: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        lk_err(cx, 1, "lookup table file is not a regular file");
        fclose(f);
        return NULL;
    }
    if ((uint64_t)st.st_size > HB_MAX_LOOKUP_FILE_BYTES) {
        lk_err(cx, 1, "lookup table file is larger than the limit (%u bytes)",
               HB_MAX_LOOKUP_FILE_BYTES);
        fclose(f);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n ? n : 1);
    if (!buf || fread(buf, 1, n, f) != n) {
        lk_err(cx, 1, "cannot read lookup table file");
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

static int table_fill(struct mp_table *t, struct lk_ctx *cx, const char *data, size_t len,
                      const struct mapping_lookup *o)
{
    struct lk_csv *c = malloc(sizeof *c);
    struct lk_field *hdr = calloc(256, sizeof *hdr);
    char *hcopy = NULL;
    int rc = -1;
    if (!c || !hdr)
        goto out;
    const char *nul = memchr(data, 0, len);
    if (nul) { /* values become C strings; a NUL means this is no text export */
        size_t line = 1;
        for (const char *q = data; q < nul; q++)
            line += *q == '\n';
        lk_err(cx, line, "a NUL byte: the file is not a text (CSV) export");
        goto out;
    }
    c->p = data;
    c->end = data + len;
    c->line = 1;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
        c->p += 3;
    /* header: copied, since fields may point into c->tmp */
    size_t nh = 0, tmp_at = 0, used;
    const char *why = NULL;
    int more;
    do {
        if (nh == 256) {
            lk_err(cx, 1, "the header has more than 256 columns");
            goto out;
        }
        more = csv_field(c, &hdr[nh], tmp_at, &used, &why);
        if (more < 0) {
            lk_err(cx, c->line, "%s", why);
            goto out;
        }
        tmp_at += used;
        nh++;
    } while (more == 1);
    size_t hl = 0;
    for (size_t i = 0; i < nh; i++)
        hl += hdr[i].len + 1;
    if (!(hcopy = malloc(hl ? hl : 1)))
        goto out;
    for (size_t i = 0, at = 0; i < nh; i++) {
        memcpy(hcopy + at, hdr[i].p, hdr[i].len);
        hcopy[at + hdr[i].len] = 0;
        hdr[i].p = hcopy + at;
        at += hdr[i].len + 1;
    }
    int kc = col_index(hdr, nh, o->key_column), vc = col_index(hdr, nh, o->value_column);
    if (kc < 0 || vc < 0) {
        char cols[300] = "";
        size_t at = 0;
        for (size_t i = 0; i < nh && at < sizeof cols; i++)
            at += (size_t)snprintf(cols + at, sizeof cols - at, "%s%.*s", i ? ", " : "",
                                   (int)(hdr[i].len > 60 ? 60 : hdr[i].len), hdr[i].p);
        if (kc < 0)
            lk_err(cx, 1, "no column '%.100s' (key_column) in the header; it has: %s",
                   o->key_column, cols);
        if (vc < 0)
            lk_err(cx, 1, "no column '%.100s' (value_column) in the header; it has: %s",
                   o->value_column, cols);
        goto out;
    }
    size_t need = (size_t)(kc > vc ? kc : vc) + 1;
    /* records */
    while (c->p < c->end) {
        size_t line = c->line;
        struct lk_field key = {0}, val = {0}, f;
        size_t col = 0;
        int bad = 0;
        tmp_at = 0;
        if (*c->p == '\n' || *c->p == '\r') { /* blank line */
            csv_skip_line(c);
            continue;
        }
        do {
            /* an unquoted field in tmp keeps its place: the next goes after it */
            more = csv_field(c, &f, tmp_at, &used, &why);
            if (more < 0) {
                lk_err(cx, line, "%s", why);
                csv_skip_line(c);
                bad = 1;
                break;
            }
            if ((int)col == kc)
                key = f;
            if ((int)col == vc)
                val = f;
            tmp_at += used;
            col++;
        } while (more == 1 && tmp_at < sizeof c->tmp);
        if (bad)
            continue;
        if (more == 1) {
            lk_err(cx, line, "a record is longer than the limit");
            csv_skip_line(c);
            continue;
        }
        if (col < need) {
            lk_err(cx, line, "the record has %zu fields, the columns need %zu", col, need);
            continue;
        }
        if (key.len == 0)
            continue; /* no id for this person: nothing to look up */
        if (t->n == HB_MAX_LOOKUP_ROWS) {
            lk_err(cx, line, "more than %u rows: the table is refused", HB_MAX_LOOKUP_ROWS);
            goto out;
        }
        if (t->n == t->cap) {
            size_t nc = t->cap ? t->cap * 2 : 256;
            struct lk_entry *ne = realloc(t->entries, nc * sizeof *ne);
            if (!ne)
                goto out;
            t->entries = ne;
            t->cap = nc;
        }
        struct lk_entry *e = &t->entries[t->n];
        e->hash = lk_hash((const uint8_t *)key.p, key.len);
        e->line = (uint32_t)line;
        if (blob_put(t, key.p, key.len, &e->key_off) != 0 ||
            blob_put(t, val.p, val.len, &e->val_off) != 0)
            goto out;
        e->key_len = (uint32_t)key.len;
        e->val_len = (uint32_t)val.len;
        t->n++;
    }
    /* index, reporting duplicate keys with both lines */
    if (build_slots(t) != 0)
        goto out;
    for (size_t i = 0; i < t->n; i++) {
        const struct lk_entry *e = &t->entries[i];
        long j = find_entry(t, (const uint8_t *)t->blob + e->key_off, e->key_len, e->hash);
        if (j >= 0) {
            lk_err(cx, e->line, "duplicate key '%.60s' (first on line %u)", t->blob + e->key_off,
                   (unsigned)t->entries[j].line);
            continue;
        }
        slot_insert(t, i);
    }
    rc = cx->nerr ? -1 : 0;
out:
    free(hcopy);
    free(hdr);
    free(c);
    return rc;
}

static int lk_finish(struct lk_ctx *cx, int rc);

int mp_table_load(const struct mapping_lookup *o, struct mapping_errors *errs,
                  struct mp_table **out)
{
    struct lk_ctx cx = {.file = o->file ? o->file : "", .errs = errs};
    struct mp_table *t = calloc(1, sizeof *t);
    *out = NULL;
    if (!t || !(t->name = strdup(o->name ? o->name : "")) || !(t->file = strdup(cx.file))) {
        mp_errors_add(errs, "mapping.lookups: out of memory");
        mp_table_free(t);
        return -1;
    }
    *out = t;
    if (!o->key_column || !o->value_column) {
        lk_err(&cx, 1, "lookup table '%s' needs key_column and value_column", t->name);
        return -1;
    }
    if (!o->file)
        return 0; /* an empty table (the built-in `users` when none is configured) */
    size_t len = 0;
    char *data = read_file(&cx, t->file, &len);
    int rc = data ? table_fill(t, &cx, data, len, o) : -1;
    free(data);
    return lk_finish(&cx, rc);
}

int mp_table_parse(const struct mapping_lookup *o, const char *data, size_t len,
                   struct mapping_errors *errs, struct mp_table **out)
{
    struct lk_ctx cx = {.file = o->file ? o->file : "", .errs = errs};
    struct mp_table *t = calloc(1, sizeof *t);
    *out = NULL;
    if (!t || !(t->name = strdup(o->name ? o->name : "")) || !(t->file = strdup(cx.file))) {
        mp_table_free(t);
        return -1;
    }
    *out = t;
    if (len > HB_MAX_LOOKUP_FILE_BYTES || !o->key_column || !o->value_column)
        return -1;
    return lk_finish(&cx, table_fill(t, &cx, data, len, o));
}

static int lk_finish(struct lk_ctx *cx, int rc)
{
    if (cx->nerr > LK_MAX_ERRORS) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s: %zu more problems not shown", cx->file,
                 cx->nerr - LK_MAX_ERRORS);
        mp_errors_add(cx->errs, msg);
    }
    return rc;
}

void mp_table_free(struct mp_table *t)
{
    if (!t)
        return;
    free(t->name);
    free(t->file);
    free(t->blob);
    free(t->entries);
    free(t->slots);
    free(t);
}

const char *mp_table_name(const struct mp_table *t) { return t->name; }

size_t mp_table_size(const struct mp_table *t) { return t->n; }

int mp_table_get(const struct mp_table *t, const uint8_t *key, size_t len, const char **val,
                 size_t *vlen)
{
    long i = find_entry(t, key, len, lk_hash(key, len));
    if (i < 0)
        return -1;
    *val = t->blob + t->entries[i].val_off;
    *vlen = t->entries[i].val_len;
    return 0;
}
