/* filecheck — a prepared connector file (a daily export) held against the
 * configured schema before it is sent (`hl7bridge upload`, inputs.files).
 *
 * It splits the text into records — at '\n', a '\r' before it dropped; in
 * csv not inside quotes — and checks: UTF-8 without a byte order mark, the
 * header naming the schema's columns in order (after mapping.headers), every
 * row with as many fields as the header, mandatory columns non-empty (in
 * csv "" is empty), at least one row and at most max_rows.  Each problem is
 * handed to the caller with its line number; messages quote header names
 * only, never row content (no PHI).
 *
 * Threads: any; no state beyond the call. */
#include "mapping/mapping.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fc {
    const struct mapping *mp;
    mapping_problem_fn cb;
    void *ud;
    uint64_t problems;
    char delim;
    int csv;
};

static void problem(struct fc *c, uint64_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(struct fc *c, uint64_t line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->problems++;
    c->cb(c->ud, line, msg);
}

/* Length of the valid UTF-8 sequence at p, 0 when invalid. */
static size_t utf8_seq(const uint8_t *p, size_t left)
{
    uint8_t c = p[0];
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
             : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (!n || n > left || (n == 2 && c < 0xC2) || (n == 4 && c > 0xF4))
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if (n == 3 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0)))
        return 0;
    if (n == 4 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90)))
        return 0;
    return n;
}

static int push(struct mapping_file_rec **r, size_t *cnt, size_t *cap, size_t off, size_t len,
                uint64_t line)
{
    if (*cnt == *cap) {
        size_t ncap = *cap ? *cap * 2 : 1024;
        struct mapping_file_rec *nr = realloc(*r, ncap * sizeof *nr);
        if (!nr)
            return -1;
        *r = nr;
        *cap = ncap;
    }
    (*r)[(*cnt)++] = (struct mapping_file_rec){ off, len, line };
    return 0;
}

/* Records of p[0..n); -1 when out of memory. */
static long long split_records(struct fc *c, const uint8_t *p, size_t n,
                               struct mapping_file_rec **out)
{
    size_t cap = 0, cnt = 0;
    struct mapping_file_rec *r = NULL;
    uint64_t line = 1, rec_line = 1;
    size_t start = 0;
    int quoted = 0, bad_reported = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && p[i] >= 0x80) {
            size_t k = utf8_seq(p + i, n - i);
            if (!k) {
                if (!bad_reported)
                    problem(c, line, "not valid UTF-8 (byte %zu of the file)", i + 1);
                bad_reported = 1;
                continue;
            }
            i += k - 1;
            continue;
        }
        if (i < n && c->csv && p[i] == '"')
            quoted = !quoted;
        if (i < n && p[i] != '\n')
            continue;
        if (i < n && quoted) {
            line++;
            continue;
        }
        size_t end = i;
        if (end > start && p[end - 1] == '\r')
            end--;
        if (end > start) {
            if (push(&r, &cnt, &cap, start, end - start, rec_line) < 0) {
                free(r);
                return -1;
            }
        } else if (i < n) {
            problem(c, line, "empty line");
        }
        line++;
        rec_line = line;
        start = i + 1;
        bad_reported = 0;
    }
    if (quoted)
        problem(c, rec_line, "a quoted field is not closed before the end of the file");
    *out = r;
    return (long long)cnt;
}

struct field {
    const uint8_t *p;
    size_t len;
    int empty;
};

/* Fields of one record (the first `max` stored); returns how many. */
static size_t split_fields(const struct fc *c, const uint8_t *p, size_t n, struct field *f,
                           size_t max)
{
    size_t k = 0, start = 0;
    int quoted = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && c->csv && p[i] == '"')
            quoted = !quoted;
        if (i < n && (p[i] != (uint8_t)c->delim || quoted))
            continue;
        if (k < max) {
            const uint8_t *s = p + start;
            size_t len = i - start;
            f[k] = (struct field){ s, len, len == 0 || (c->csv && len == 2 && s[0] == '"' &&
                                                         s[1] == '"') };
        }
        k++;
        start = i + 1;
    }
    return k;
}

/* A header field's text without csv quotes, cut to cap. */
static void field_text(const struct fc *c, const struct field *f, char *out, size_t cap)
{
    const uint8_t *s = f->p;
    size_t n = f->len;
    if (c->csv && n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        s++;
        n -= 2;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* 0 when the rows can be checked against it (the column count is right). */
static int check_header(struct fc *c, const uint8_t *p, const struct mapping_file_rec *h,
                        struct field *f, size_t ncols)
{
    size_t n = split_fields(c, p + h->off, h->len, f, ncols);
    for (size_t i = 0; i < ncols && i < n; i++) {
        char got[256];
        field_text(c, &f[i], got, sizeof got);
        const char *exp = mapping_column_header(c->mp, i);
        if (strcmp(got, exp) != 0)
            problem(c, h->line, "column %zu of the header is \"%s\", expected \"%s\"", i + 1, got,
                    exp);
    }
    for (size_t i = n; i < ncols; i++)
        problem(c, h->line, "the header lacks column %zu \"%s\"", i + 1,
                mapping_column_header(c->mp, i));
    if (n > ncols)
        problem(c, h->line, "the header has %zu columns, the configured schema %zu", n, ncols);
    return n == ncols ? 0 : -1;
}

static void check_row(struct fc *c, const uint8_t *p, const struct mapping_file_rec *r,
                      struct field *f, size_t ncols)
{
    size_t n = split_fields(c, p + r->off, r->len, f, ncols);
    if (n != ncols) {
        problem(c, r->line, "%zu fields, the header has %zu", n, ncols);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (f[i].empty && mapping_column_mandatory(c->mp, i))
            problem(c, r->line, "mandatory column \"%s\" is empty",
                    mapping_column_header(c->mp, i));
}

long long mapping_check_file(const struct mapping *mp, enum mapping_format fmt, const uint8_t *p,
                             size_t n, uint64_t max_rows, struct mapping_file_rec **recs,
                             mapping_problem_fn cb, void *ud, uint64_t *problems)
{
    struct fc c = { mp, cb, ud, 0, fmt == MAPPING_FMT_CSV ? ',' : fmt == MAPPING_FMT_PSV ? '|' : '\t',
                    fmt == MAPPING_FMT_CSV };
    *recs = NULL;
    *problems = 0;
    size_t ncols = mapping_column_count(mp);
    struct field *f = calloc(ncols ? ncols : 1, sizeof *f);
    if (!f)
        return -1;
    long long cnt = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) {
        problem(&c, 1, "starts with a byte order mark: the connector takes UTF-8 without one");
        goto out;
    }
    cnt = n ? split_records(&c, p, n, recs) : 0;
    if (cnt < 0)
        goto out;
    if (cnt == 0) {
        problem(&c, 1, "empty file: a header line and at least one row are needed");
        goto out;
    }
    if (check_header(&c, p, &(*recs)[0], f, ncols) == 0)
        for (long long i = 1; i < cnt; i++)
            check_row(&c, p, &(*recs)[i], f, ncols);
    if (cnt == 1)
        problem(&c, (*recs)[0].line, "no rows after the header");
    if ((uint64_t)(cnt - 1) > max_rows)
        problem(&c, (*recs)[cnt - 1].line, "%lld rows: the connector takes at most %llu in one file",
                cnt - 1, (unsigned long long)max_rows);
out:
    free(f);
    *problems = c.problems;
    return cnt;
}
