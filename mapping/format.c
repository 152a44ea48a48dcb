/* Schemas and row output.
 *
 * One table lists the connector's semantic columns in the order the
 * connectors document them, with the healthcare and Epic header names and
 * the mandatory marks; a rule names columns by key (or by either header), and
 * the configured schema decides which columns are written and under which
 * header.  The formatter writes tsv, csv (RFC 4180) or psv; the audit sink
 * and `hl7bridge map` both call it, so what `map` prints is what is
 * uploaded.
 *
 * Rows never carry control characters (see write_value()).
 *
 * Evaluation leaves a row's values back to back in the result's arena, each
 * followed by its NUL.  A row in which no value holds a byte the format must
 * alter (checked sixteen bytes at a time; the NULs are counted, so one
 * inside a value is told from the separators) is therefore written with one
 * copy of that span and a delimiter stored over each NUL; other rows go
 * value by value.  Any thread. */
#include "mapping/mapping_int.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

const struct mp_coldef mp_cols[MP_NCOLS] = {
    {"creation_time", "Creation Time", "ACCESS_LOG.ACCESS_TIME", 1},
    {"event_name", "Event Name", "ACCESS_LOG_METRIC.METRIC_NAME", 1},
    {"workstation_id", "Workstation Id", "ACCESS_LOG.WORKSTATION_ID", 0},
    {"event_section", "Event Section", "ZC_METRIC_GROUP.NAME", 0},
    {"event_category", "Event Category", "ZC_ACCESS_ACTION.NAME", 0},
    {"patient_reg_id", "Patient Reg Id", "PATIENT.PAT_MRN_ID", 0},
    {"patient_first_name", "Patient First Name", "PATIENT.PAT_FIRST_NAME", 1},
    {"patient_middle_name", "Patient Middle Name", "PATIENT.PAT_MIDDLE_NAME", 0},
    {"patient_last_name", "Patient Last Name", "PATIENT.PAT_LAST_NAME", 1},
    {"patient_address_line_1", "Patient Address Line 1", "PATIENT.ADD_LINE_1", 1},
    {"patient_address_line_2", "Patient Address Line 2", "PATIENT.ADD_LINE_2", 0},
    {"patient_city", "Patient City", "PATIENT.CITY", 1},
    {"patient_zip_code", "Patient Zip Code", "PATIENT.ZIP", 1},
    {"patient_state", "Patient State", "ZC_STATE.NAME", 0},
    {"patient_country", "Patient Country", "ZC_COUNTRY.NAME", 0},
    {"patient_department", "Patient Department", "CLARITY_DEP.DEPARTMENT_NAME", 0},
    {"restricted_access_reason", "Restricted Access Reason", "ZC_BTG_REASON.NAME", 1},
    {"restricted_access_comment", "Restricted Access Comment", "PAT_BTG_AUDIT.BTG_EXPLANATION", 0},
    {"user_login", "Email Address (UPN) or SamAccountName", "EMP.SYSTEM_LOGIN", 1},
    /* The Epic connector has no separate user-name column. */
    {"employee_user_name", "Employee User Name", NULL, 0},
    {"employee_id", "Employee Id", "CLARITY_EMP.USER_ID", 0},
    {"employee_last_name", "Employee Last Name", "employee_last_name", 0},
    {"employee_first_name", "Employee First Name", "employee_first_name", 0},
};

static int name_is(const char *name, size_t len, const char *s)
{
    return s && strlen(s) == len && memcmp(name, s, len) == 0;
}

int mp_col_lookup(const char *name, size_t len)
{
    for (int i = 0; i < MP_NCOLS; i++)
        if (name_is(name, len, mp_cols[i].key) || name_is(name, len, mp_cols[i].healthcare) ||
            name_is(name, len, mp_cols[i].epic))
            return i;
    return -1;
}

size_t mapping_column_count(const struct mapping *mp) { return mp->ncols; }

const char *mapping_column_header(const struct mapping *mp, size_t i)
{
    return i < mp->ncols ? mp->headers[i] : NULL;
}

int mapping_column_mandatory(const struct mapping *mp, size_t i)
{
    return i < mp->ncols ? mp_cols[mp->colmap[i]].mandatory : 0;
}

const char *mapping_column_key(const struct mapping *mp, size_t i)
{
    return i < mp->ncols ? mp_cols[mp->colmap[i]].key : NULL;
}

int mapping_format_parse(const char *s, enum mapping_format *out)
{
    if (strcmp(s, "tsv") == 0)
        *out = MAPPING_FMT_TSV;
    else if (strcmp(s, "csv") == 0)
        *out = MAPPING_FMT_CSV;
    else if (strcmp(s, "psv") == 0)
        *out = MAPPING_FMT_PSV;
    else
        return -1;
    return 0;
}

static uint8_t delim_of(enum mapping_format f)
{
    return f == MAPPING_FMT_CSV ? ',' : f == MAPPING_FMT_PSV ? '|' : '\t';
}

static const char *eol_of(enum mapping_format f, const char *eol)
{
    return eol ? eol : f == MAPPING_FMT_CSV ? "\r\n" : "\n";
}

/* A C1 control (U+0080..U+009F, NEL among them) is C2 80..C2 9F in UTF-8. */
static inline int c1_at(const uint8_t *p, size_t i, size_t len)
{
    return p[i] == 0xc2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f;
}

/* A byte that sends a value down the careful path: the delimiter, the quote,
 * a C0 control (NUL, tab, CR, LF …), DEL, or 0xC2, the lead byte of a C1
 * control (the careful path looks at the byte after it). */
static inline int special(uint8_t c, uint8_t d, uint8_t q)
{
    return c == d || c == q || c < 0x20 || c == 0x7f || c == 0xc2;
}

/* Writes one value at w (room for 2 * len + 2 bytes) as format f needs it.
 * Rows never carry control characters: every C0 control (NUL, tab, CR, LF
 * …), DEL and C1 control becomes one space, in every format.  Then csv
 * quotes a value holding a comma or a quote (quotes doubled); tsv/psv make
 * their delimiter a space.  A value so altered is counted in *replaced (may
 * be NULL).  Returns the bytes written. */
static size_t write_value(uint8_t *w, enum mapping_format f, const uint8_t *p, size_t len,
                          unsigned *replaced)
{
    const int csv = f == MAPPING_FMT_CSV;
    const uint8_t d = delim_of(f), q = csv ? '"' : d;
    size_t i = 0;
    while (i < len && !special(p[i], d, q))
        i++;
    if (i == len) { /* the common case: nothing to escape */
        memcpy(w, p, len);
        return len;
    }
    int quote = 0, changed = 0;
    for (size_t k = i; csv && k < len && !quote; k++)
        quote = p[k] == d || p[k] == q;
    size_t o = 0;
    if (quote)
        w[o++] = '"';
    for (i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (c < 0x20 || c == 0x7f || c1_at(p, i, len) || (!csv && c == d)) {
            i += c == 0xc2; /* a C1 control is two bytes */
            w[o++] = ' ';
            changed = 1;
            continue;
        }
        if (quote && c == '"')
            w[o++] = '"';
        w[o++] = c;
    }
    if (quote)
        w[o++] = '"';
    if (changed && replaced)
        (*replaced)++;
    return o;
}

int mapping_format_header(const struct mapping *mp, enum mapping_format fmt, const char *eol,
                          struct buf *out)
{
    uint8_t d = delim_of(fmt);
    for (unsigned k = 0; k < mp->ncols; k++) {
        if (k && buf_append(out, &d, 1) != 0)
            return -1;
        size_t len = strlen(mp->headers[k]);
        uint8_t *w = buf_reserve(out, 2 * len + 2);
        if (!w)
            return -1;
        buf_commit(out, write_value(w, fmt, (const uint8_t *)mp->headers[k], len, NULL));
    }
    return buf_append_str(out, eol_of(fmt, eol));
}

/* 1 when p[0..len) holds a byte that format `f` may alter (see special())
 * other than NUL; the NULs are counted in *nuls, so the caller can tell its
 * own separators from a NUL inside a value.  Reads nothing outside
 * [p, p+len). */
static int needs_care(const uint8_t *p, size_t len, enum mapping_format f, size_t *nuls)
{
    const uint8_t d = delim_of(f), q = f == MAPPING_FMT_CSV ? '"' : d;
    size_t i = 0;
    *nuls = 0;
#if defined(__SSE2__)
    if (len >= 16) {
        const __m128i vd = _mm_set1_epi8((char)d), vq = _mm_set1_epi8((char)q);
        const __m128i vdel = _mm_set1_epi8(0x7f), vc2 = _mm_set1_epi8((char)0xc2);
        const __m128i v1f = _mm_set1_epi8(0x1f), zero = _mm_setzero_si128();
        unsigned seen = 0; /* bytes of this block already looked at */
        for (;;) {
            /* the last block overlaps the one before rather than reading on */
            if (i + 16 > len) {
                seen = (unsigned)(i - (len - 16));
                i = len - 16;
            }
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
            __m128i dq = _mm_or_si128(_mm_cmpeq_epi8(x, vd), _mm_cmpeq_epi8(x, vq));
            __m128i hi = _mm_or_si128(_mm_cmpeq_epi8(x, vdel), _mm_cmpeq_epi8(x, vc2));
            /* x <= 0x1f unsigned: saturating x - 0x1f is zero */
            __m128i ctl = _mm_cmpeq_epi8(_mm_subs_epu8(x, v1f), zero);
            unsigned nul = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, zero)) >> seen;
            unsigned hit = ((unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(dq, hi), ctl))
                            >> seen) & ~nul;
            if (hit)
                return 1;
            *nuls += (size_t)__builtin_popcount(nul);
            i += 16;
            if (i >= len)
                return 0;
        }
    }
#endif
    for (; i < len; i++) {
        if (p[i] == 0)
            (*nuls)++;
        else if (special(p[i], d, q))
            return 1;
    }
    return 0;
}

/* The fast form of one row: when the cells lie back to back in the arena
 * (each followed by exactly its NUL) and nothing needs altering, copies the
 * whole span and puts the delimiter where each NUL was.  Returns 1 when
 * written, 0 when the row must go value by value, -1 when out is full. */
static int put_row_span(const uint8_t *base, const struct mp_cell *c, size_t ncols,
                        enum mapping_format f, const char *eol, size_t elen, struct buf *out)
{
    if (ncols == 0)
        return 0;
    for (size_t k = 1; k < ncols; k++)
        if (c[k].off != (size_t)c[k - 1].off + c[k - 1].len + 1)
            return 0;
    size_t from = c[0].off, span = (size_t)c[ncols - 1].off + c[ncols - 1].len - from;
    size_t nuls;
    if (needs_care(base + from, span, f, &nuls) || nuls != ncols - 1)
        return 0; /* a byte to alter, or a NUL inside a value */
    uint8_t *w = buf_reserve(out, span + elen);
    if (!w)
        return -1;
    memcpy(w, base + from, span);
    const uint8_t d = delim_of(f);
    for (size_t k = 0; k + 1 < ncols; k++)
        w[c[k].off + c[k].len - from] = d;
    memcpy(w + span, eol, elen);
    buf_commit(out, span + elen);
    return 1;
}

int mapping_format_rows(const struct mapping *mp, const struct mapping_result *r,
                        enum mapping_format fmt, const char *eol, struct buf *out,
                        unsigned *replaced)
{
    uint8_t d = delim_of(fmt);
    const char *e = eol_of(fmt, eol);
    size_t elen = strlen(e);
    const uint8_t *base = buf_data(&r->arena);
    if (r->outcome != MAPPING_ROWS || r->ncols != mp->ncols)
        return 0;
    for (size_t row = 0; row < r->nrows; row++) {
        const struct mp_cell *c = r->cells + row * r->ncols;
        int fast = put_row_span(base, c, r->ncols, fmt, e, elen, out);
        if (fast < 0)
            return -1;
        if (fast)
            continue;
        /* One reservation per row: every value may double (csv quotes). */
        size_t need = elen + r->ncols;
        for (unsigned k = 0; k < r->ncols; k++)
            need += 2 * (size_t)c[k].len + 2;
        uint8_t *w = buf_reserve(out, need);
        if (!w)
            return -1;
        size_t o = 0;
        for (unsigned k = 0; k < r->ncols; k++) {
            if (k)
                w[o++] = d;
            o += write_value(w + o, fmt, base + c[k].off, c[k].len, replaced);
        }
        memcpy(w + o, e, elen);
        buf_commit(out, o + elen);
    }
    return 0;
}

int mapping_format_values(const struct mapping *mp, const char *const *values,
                          enum mapping_format fmt, const char *eol, struct buf *out,
                          unsigned *replaced)
{
    uint8_t d = delim_of(fmt);
    for (unsigned k = 0; k < mp->ncols; k++) {
        if (k && buf_append(out, &d, 1) != 0)
            return -1;
        const char *v = values[k] ? values[k] : "";
        size_t len = strlen(v);
        uint8_t *w = buf_reserve(out, 2 * len + 2);
        if (!w)
            return -1;
        buf_commit(out, write_value(w, fmt, (const uint8_t *)v, len, replaced));
    }
    return buf_append_str(out, eol_of(fmt, eol));
}
