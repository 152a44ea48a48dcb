/* hl7/msg.c — the zero-copy message index, header facts and validation.
 *
 * Design: one pass over the bytes records where every segment starts and
 * ends and where each field separator sits, in two flat arrays owned by the
 * struct hl7_msg and kept between parses (so a warmed-up index never
 * mallocs).  The pass takes 64 bytes at a time as bit masks of separators
 * and line ends (scan_segment), so its cost follows the number of fields
 * rather than the number of bytes.  Components, repetitions and
 * subcomponents are not indexed: they are split on access with memchr,
 * which is cheaper than indexing delimiters nobody asks for.  Encoding
 * characters come from MSH-1/MSH-2 and are never assumed.  Every read is
 * bounded by the length given, so no input, however broken, makes the
 * parser leave [p, p+len).
 *
 * Any thread; one struct hl7_msg belongs to one thread at a time. */
#include "hl7/hl7_int.h"

#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/limits.h"
#include "core/num.h"

#define CR 0x0d
#define LF 0x0a

/* ---- errors ------------------------------------------------------------ */

static void copy_text(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    if (src)
        for (; i + 1 < cap && src[i]; i++)
            dst[i] = src[i];
    dst[i] = '\0';
}

void hl7_err_set(struct hl7_err *e, int code, const char *seg, unsigned seg_seq,
                 unsigned field, const char *text)
{
    if (!e)
        return;
    memset(e, 0, sizeof *e);
    e->code = code;
    copy_text(e->seg, sizeof e->seg, seg);
    e->seg_seq = seg_seq;
    e->field = field;
    copy_text(e->text, sizeof e->text, text);
}

const char *hl7__errcode_text(int code)
{
    switch (code) {
    case HL7_E_OK: return "Message accepted";
    case HL7_E_SEGMENT_SEQUENCE: return "Segment sequence error";
    case HL7_E_REQUIRED_MISSING: return "Required field missing";
    case HL7_E_DATA_TYPE: return "Data type error";
    case HL7_E_TABLE_VALUE: return "Table value not found";
    case HL7_E_UNSUPPORTED_TYPE: return "Unsupported message type";
    case HL7_E_UNSUPPORTED_EVENT: return "Unsupported event code";
    case HL7_E_UNSUPPORTED_PROCESSING_ID: return "Unsupported processing id";
    case HL7_E_UNSUPPORTED_VERSION: return "Unsupported version id";
    case HL7_E_UNKNOWN_KEY: return "Unknown key identifier";
    case HL7_E_DUPLICATE_KEY: return "Duplicate key identifier";
    case HL7_E_RECORD_LOCKED: return "Application record locked";
    default: return "Application internal error";
    }
}

/* ---- small shared helpers --------------------------------------------- */

int hl7__version_num(struct hl7_slice v, unsigned *out)
{
    uint64_t part[3] = {0, 0, 0};
    unsigned np = 0;
    size_t i = 0;
    if (!v.p || v.len == 0)
        return -1;
    while (np < 3) {
        size_t j = i;
        while (j < v.len && v.p[j] != '.')
            j++;
        if (num_parse_u64(v.p + i, j - i, 999, &part[np]) != 0)
            return -1;
        np++;
        if (j == v.len)
            break;
        i = j + 1;
        if (np == 3)
            return -1; /* a fourth part */
    }
    if (np < 2)
        return -1;
    *out = (unsigned)(part[0] * 1000000u + part[1] * 1000u + part[2]);
    return 0;
}

static int is_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* The field separator must be a visible ASCII punctuation byte: a letter
 * or digit there would make "MSH" plus the separator ambiguous with a
 * segment id, controls and non-ASCII would clash with terminators and
 * charsets. */
static int delim_ok(uint8_t c) { return c > 0x20 && c < 0x7f && !is_alnum(c); }

/* The other encoding characters may be any visible ASCII byte other than
 * the field separator, letters and digits included: the standard allows
 * it and some engines use such sets. */
static int enc_char_ok(uint8_t c) { return c > 0x20 && c < 0x7f; }

int hl7__read_delims(const uint8_t *p, size_t n, struct hl7_delims *d)
{
    if (n == 0)
        return HL7_E_REQUIRED_MISSING;
    if (n < 4 || n > 5)
        return HL7_E_DATA_TYPE;
    for (size_t i = 0; i < n; i++) {
        if (!enc_char_ok(p[i]) || p[i] == d->field)
            return HL7_E_DATA_TYPE;
        for (size_t j = 0; j < i; j++)
            if (p[j] == p[i])
                return HL7_E_DATA_TYPE;
    }
    d->comp = p[0];
    d->rep = p[1];
    d->esc = p[2];
    d->sub = p[3];
    d->trunc = n == 5 ? p[4] : 0;
    return 0;
}

struct hl7_slice hl7__raw_field(const uint8_t *s, const uint8_t *e, uint8_t fs, unsigned n,
                                int msh_style)
{
    struct hl7_slice r = {e, 0};
    size_t len = (size_t)(e - s);
    if (n == 0 || len < 4)
        return r;
    if (msh_style) {
        if (n == 1)
            return hl7__slice(s + 3, 1);
        n--;
    }
    /* Field k (1-based) starts after the k-th separator, counting the one
     * right after the segment id as the first. */
    const uint8_t *q = s + 3;
    unsigned k = 0;
    for (;;) {
        if (q >= e || *q != fs)
            return r;
        k++;
        const uint8_t *f = q + 1;
        const uint8_t *nx = memchr(f, fs, (size_t)(e - f));
        if (!nx)
            nx = e;
        if (k == n)
            return hl7__slice(f, (size_t)(nx - f));
        q = nx;
    }
}

/* ---- slices ------------------------------------------------------------ */

/* memchr for the short runs typical of HL7 values, where a library call
 * costs more than the scan. */
static inline const uint8_t *find(const uint8_t *p, const uint8_t *end, uint8_t c)
{
    if (end - p > 32)
        return memchr(p, c, (size_t)(end - p));
    for (; p < end; p++)
        if (*p == c)
            return p;
    return NULL;
}

struct hl7_slice hl7_slice_piece(struct hl7_slice s, uint8_t delim, unsigned nth)
{
    struct hl7_slice r = {s.p, 0};
    if (nth == 0 || !s.p)
        return r;
    const uint8_t *p = s.p, *end = s.p + s.len;
    for (unsigned i = 1;; i++) {
        const uint8_t *nx = find(p, end, delim);
        if (i == nth)
            return hl7__slice(p, (size_t)((nx ? nx : end) - p));
        if (!nx)
            return hl7__slice(end, 0);
        p = nx + 1;
    }
}

unsigned hl7_slice_count(struct hl7_slice s, uint8_t delim)
{
    unsigned n = 1;
    if (!s.p)
        return 1;
    const uint8_t *p = s.p, *end = s.p + s.len;
    while ((p = memchr(p, delim, (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    return n;
}

int hl7_slice_is_null(struct hl7_slice s) { return s.len == 2 && s.p[0] == '"' && s.p[1] == '"'; }

int hl7_slice_eq(struct hl7_slice s, const char *lit)
{
    size_t n = lit ? strlen(lit) : 0; /* our literal, not wire data */
    return s.len == n && (n == 0 || memcmp(s.p, lit, n) == 0);
}

/* ---- lifecycle --------------------------------------------------------- */

struct hl7_msg *hl7_msg_new(void)
{
    struct hl7_msg *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    return m;
}

void hl7_msg_free(struct hl7_msg *m)
{
    if (!m)
        return;
    free(m->segs);
    free(m->seps);
    free(m);
}

static int grow(void **arr, size_t *cap, size_t elem, size_t start)
{
    size_t ncap = *cap ? *cap * 2 : start;
    void *np = realloc(*arr, ncap * elem);
    if (!np)
        return -1;
    *arr = np;
    *cap = ncap;
    return 0;
}

/* ---- field access ------------------------------------------------------ */

static struct hl7_slice field_of(const struct hl7_msg *m, size_t s, unsigned f)
{
    const struct hl7_seg_ix *sg = &m->segs[s];
    struct hl7_slice r = {m->p + sg->end, 0};
    if (f == 0)
        return r;
    if (sg->id == HL7_ID('M', 'S', 'H')) {
        if (f == 1)
            return hl7__slice(m->p + sg->start + 3, 1);
        f--;
    }
    if (f > sg->nsep)
        return r;
    uint32_t a = m->seps[sg->sep0 + f - 1] + 1;
    uint32_t b = f < sg->nsep ? m->seps[sg->sep0 + f] : sg->end;
    return hl7__slice(m->p + a, b - a);
}

/* MSH-f as a view, MSH numbering (f >= 2).  Only for the first segment,
 * which fill_header reads right after it was indexed. */
static inline struct hl7_slice msh_field(const struct hl7_msg *m, const struct hl7_seg_ix *sg,
                                         unsigned f)
{
    unsigned k = f - 1; /* the separator before MSH-f */
    if (k > sg->nsep)
        return hl7__slice(m->p + sg->end, 0);
    uint32_t a = m->seps[sg->sep0 + k - 1] + 1;
    uint32_t b = k < sg->nsep ? m->seps[sg->sep0 + k] : sg->end;
    return hl7__slice(m->p + a, b - a);
}

/* Length of the start of s that holds neither a nor b.  s lies in the
 * message, so sixteen bytes may be compared at once while that many remain
 * before its end; header values are short, and the loop's exit would
 * otherwise be a mispredicted branch per value. */
static inline size_t span_until(const struct hl7_msg *m, struct hl7_slice s, uint8_t a, uint8_t b)
{
    size_t i = 0;
#if defined(__SSE2__)
    const uint8_t *lim = m->p + m->len;
    const __m128i va = _mm_set1_epi8((char)a), vb = _mm_set1_epi8((char)b);
    while (i < s.len && (size_t)(lim - (s.p + i)) >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s.p + i));
        unsigned hit = (unsigned)_mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(x, va), _mm_cmpeq_epi8(x, vb)));
        if (hit) {
            i += (unsigned)__builtin_ctz(hit);
            return i < s.len ? i : s.len;
        }
        i += 16;
    }
    if (i >= s.len)
        return s.len;
#else
    (void)m; /* only the wide loads need the message's bounds */
#endif
    while (i < s.len && s.p[i] != a && s.p[i] != b)
        i++;
    return i;
}

static void fill_header(struct hl7_msg *m)
{
    struct hl7_header *h = &m->h;
    const struct hl7_delims *d = &m->d;
    const struct hl7_seg_ix *sg = &m->segs[0];
    h->send_app = msh_field(m, sg, 3);
    h->send_fac = msh_field(m, sg, 4);
    h->recv_app = msh_field(m, sg, 5);
    h->recv_fac = msh_field(m, sg, 6);
    h->timestamp = msh_field(m, sg, 7);
    /* MSH-9 type^trigger^structure of the first repetition */
    struct hl7_slice t = msh_field(m, sg, 9);
    t.len = span_until(m, t, d->rep, d->rep);
    struct hl7_slice *part[3] = {&h->msg_type, &h->trigger, &h->structure};
    for (unsigned i = 0; i < 3; i++) {
        size_t n = span_until(m, t, d->comp, d->comp);
        *part[i] = hl7__slice(t.p, n);
        n += n < t.len; /* past the delimiter; an absent part is empty at the end */
        t.p += n;
        t.len -= n;
    }
    h->control_id = msh_field(m, sg, 10);
    h->processing_id = msh_field(m, sg, 11);
    h->version = msh_field(m, sg, 12);
    /* first component of the first repetition */
    h->version_id = hl7__slice(h->version.p, span_until(m, h->version, d->rep, d->comp));
    h->accept_ack = msh_field(m, sg, 15);
    h->app_ack = msh_field(m, sg, 16);
    struct hl7_slice cs = msh_field(m, sg, 18);
    h->charset = hl7__slice(cs.p, span_until(m, cs, d->rep, d->rep));
}

/* ---- parsing ----------------------------------------------------------- */

/* When MSH-1/MSH-2 cannot be accepted, the header is still read from the
 * first line by best effort (split on the field separator, components on
 * MSH-2's first byte or '^'), so the rejection can echo MSH-3/4/10/11/12 and
 * the sender can match it by MSA-2.  Nothing else is indexed. */
static void recover_header(struct hl7_msg *m, const uint8_t *b, size_t n, uint8_t fs)
{
    size_t eol = 4;
    while (eol < n && b[eol] != CR && b[eol] != LF)
        eol++;
    const uint8_t *s = b, *e = b + eol;
    struct hl7_slice enc = hl7__raw_field(s, e, fs, 2, 1);
    uint8_t comp = enc.len && enc.p[0] != fs ? enc.p[0] : '^';
    uint8_t rep = enc.len > 1 && enc.p[1] != fs && enc.p[1] != comp ? enc.p[1] : fs;
    struct hl7_header *h = &m->h;
    memset(h, 0, sizeof *h);
    h->send_app = hl7__raw_field(s, e, fs, 3, 1);
    h->send_fac = hl7__raw_field(s, e, fs, 4, 1);
    h->recv_app = hl7__raw_field(s, e, fs, 5, 1);
    h->recv_fac = hl7__raw_field(s, e, fs, 6, 1);
    h->timestamp = hl7__raw_field(s, e, fs, 7, 1);
    struct hl7_slice t = hl7_slice_piece(hl7__raw_field(s, e, fs, 9, 1), rep, 1);
    h->msg_type = hl7_slice_piece(t, comp, 1);
    h->trigger = hl7_slice_piece(t, comp, 2);
    h->structure = hl7_slice_piece(t, comp, 3);
    h->control_id = hl7__raw_field(s, e, fs, 10, 1);
    h->processing_id = hl7__raw_field(s, e, fs, 11, 1);
    h->version = hl7__raw_field(s, e, fs, 12, 1);
    h->version_id = hl7_slice_piece(hl7_slice_piece(h->version, rep, 1), comp, 1);
    h->accept_ack = hl7__raw_field(s, e, fs, 15, 1);
    h->app_ack = hl7__raw_field(s, e, fs, 16, 1);
    m->h_recovered = 1;
}

static int fail(struct hl7_err *err, int code, const char *seg, unsigned seq, unsigned field,
                size_t off, const char *text)
{
    hl7_err_set(err, code, seg, seq, field, text);
    err->offset = off;
    return -1;
}

static unsigned count_id(const struct hl7_msg *m, uint32_t id)
{
    unsigned n = 0;
    for (size_t i = 0; i < m->nseg; i++)
        n += m->segs[i].id == id;
    return n;
}

/* Bit i of *fsm / *eolm says whether blk[i] is the field separator / a CR
 * or LF, for the 64 bytes at blk.  With SSE2 (every x86-64) that is four
 * loads and a dozen compares, against a compare and a branch per byte. */
static inline void block_masks(const uint8_t *blk, uint8_t fs, uint64_t *fsm, uint64_t *eolm)
{
#if defined(__SSE2__)
    const __m128i vfs = _mm_set1_epi8((char)fs), vcr = _mm_set1_epi8(CR), vlf = _mm_set1_epi8(LF);
    const __m128i x0 = _mm_loadu_si128((const __m128i *)(const void *)blk);
    const __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)(blk + 16));
    const __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(blk + 32));
    const __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(blk + 48));
#define FS_BITS(x) ((uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8((x), vfs)))
#define EOL_BITS(x)                                                                               \
    ((uint64_t)(unsigned)_mm_movemask_epi8(                                                       \
        _mm_or_si128(_mm_cmpeq_epi8((x), vcr), _mm_cmpeq_epi8((x), vlf))))
    *fsm = FS_BITS(x0) | FS_BITS(x1) << 16 | FS_BITS(x2) << 32 | FS_BITS(x3) << 48;
    *eolm = EOL_BITS(x0) | EOL_BITS(x1) << 16 | EOL_BITS(x2) << 32 | EOL_BITS(x3) << 48;
#undef FS_BITS
#undef EOL_BITS
#else
    uint64_t f = 0, e = 0;
    for (unsigned i = 0; i < 64; i++) {
        f |= (uint64_t)(blk[i] == fs) << i;
        e |= (uint64_t)(blk[i] == CR || blk[i] == LF) << i;
    }
    *fsm = f;
    *eolm = e;
#endif
}

/* Records the field separators of the segment whose fields start at q, up
 * to the next CR/LF (or n); returns where the segment ends.  *overflow is
 * set to 1 past HL7_MAX_FIELDS_PER_SEGMENT (the segment then ends at the
 * separator that was one too many), 2 when memory runs out.
 *
 * The bytes are taken 64 at a time as two bit masks, and the separator
 * positions are read off the mask with count-trailing-zeros: the cost is a
 * few instructions per block and per separator instead of a compare and an
 * unpredictable branch per byte.  The last block of the message is copied
 * into a zero-padded buffer first (no separator is NUL), so nothing past
 * b[n-1] is ever read. */
static size_t scan_segment(struct hl7_msg *m, const uint8_t *b, size_t n, size_t q, uint8_t fs,
                           int *overflow)
{
    const size_t sep0 = m->nsep;
    uint8_t tail[64];
    while (q < n) {
        const uint8_t *blk = b + q;
        size_t avail = n - q;
        uint64_t fsm, eolm;
        if (avail < 64) {
            memcpy(tail, blk, avail);
            memset(tail + avail, 0, sizeof tail - avail);
            blk = tail;
        }
        block_masks(blk, fs, &fsm, &eolm);
        if (avail < 64)
            eolm |= (uint64_t)1 << avail; /* the end of the bytes ends the segment */
        unsigned stop = eolm ? (unsigned)__builtin_ctzll(eolm) : 64;
        if (stop < 64)
            fsm &= ((uint64_t)1 << stop) - 1;
        while (m->sepcap - m->nsep < 64) {
            if (grow((void **)&m->seps, &m->sepcap, sizeof *m->seps, 256) != 0) {
                *overflow = 2;
                return q;
            }
        }
        uint32_t *w = m->seps + m->nsep;
        size_t k = 0;
        while (fsm) {
            w[k++] = (uint32_t)(q + (unsigned)__builtin_ctzll(fsm));
            fsm &= fsm - 1;
        }
        m->nsep += k;
        if (m->nsep - sep0 > HL7_MAX_FIELDS_PER_SEGMENT) {
            m->nsep = sep0 + HL7_MAX_FIELDS_PER_SEGMENT;
            *overflow = 1;
            return m->seps[m->nsep];
        }
        if (stop < 64)
            return q + stop;
        q += 64;
    }
    return q;
}

static int parse(struct hl7_msg *m, const uint8_t *p, size_t len,
                 const struct hl7_parse_opts *opts, struct hl7_err *err);

int hl7_msg_parse(struct hl7_msg *m, const uint8_t *p, size_t len,
                  const struct hl7_parse_opts *opts, struct hl7_err *err)
{
    struct hl7_err scratch;
    if (!err)
        err = &scratch;
    /* Only what a success reports; failures fill the whole struct. */
    err->code = 0;
    err->seg[0] = '\0';
    err->text[0] = '\0';
    err->offset = 0;
    if (!m)
        return fail(err, HL7_E_INTERNAL, NULL, 0, 0, 0, "no index");
    int rc = parse(m, p, len, opts, err);
    /* fill_header sets every member as soon as MSH is indexed; before
     * that the header is empty, or what recover_header could read */
    if (m->nseg == 0 && !m->h_recovered)
        memset(&m->h, 0, sizeof m->h);
    return rc;
}

static int parse(struct hl7_msg *m, const uint8_t *p, size_t len,
                 const struct hl7_parse_opts *opts, struct hl7_err *err)
{
    m->nseg = 0;
    m->nsep = 0;
    m->delims_ok = 0;
    m->cs = HL7_CS_ASCII;
    m->cs_unknown = 0;
    m->cs_override = 0;
    m->h_recovered = 0;
    memset(&m->d, 0, sizeof m->d);
    if (!p)
        len = 0;

    size_t i = 0;
    if (len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf)
        i = 3;
    while (i < len && (p[i] == CR || p[i] == LF))
        i++;
    m->p = p ? p + i : (const uint8_t *)"";
    m->len = len - i;
    const uint8_t *b = m->p;
    size_t n = m->len;

    if (n >= UINT32_MAX)
        return fail(err, HL7_E_INTERNAL, NULL, 0, 0, 0, "message too large to index");
    if (n < 3 || b[0] != 'M' || b[1] != 'S' || b[2] != 'H')
        return fail(err, HL7_E_SEGMENT_SEQUENCE, NULL, 0, 0, 0, "message does not begin with MSH");
    if (n == 3 || b[3] == CR || b[3] == LF)
        return fail(err, HL7_E_REQUIRED_MISSING, "MSH", 1, 1, 3, "MSH truncated before MSH-1");
    uint8_t fs = b[3];
    if (is_alnum(fs))
        return fail(err, HL7_E_SEGMENT_SEQUENCE, NULL, 0, 0, 0, "message does not begin with MSH");
    if (!delim_ok(fs)) {
        if (fs > 0x20 && fs != 0x7f)
            recover_header(m, b, n, fs);
        return fail(err, HL7_E_DATA_TYPE, "MSH", 1, 1, 3, "invalid field separator in MSH-1");
    }

    size_t j = 4;
    while (j < n && j < 10 && b[j] != fs && b[j] != CR && b[j] != LF)
        j++;
    size_t k = j - 4;
    m->d.field = fs;
    if (k == 0) {
        recover_header(m, b, n, fs);
        return fail(err, HL7_E_REQUIRED_MISSING, "MSH", 1, 2, 4, "MSH-2 encoding characters missing");
    }
    if (k < 4 && (j == n || b[j] == CR || b[j] == LF))
        return fail(err, HL7_E_REQUIRED_MISSING, "MSH", 1, 2, 4,
                    "MSH truncated inside MSH-2 encoding characters");
    int rc = hl7__read_delims(b + 4, k, &m->d);
    if (rc != 0) {
        recover_header(m, b, n, fs);
        return fail(err, rc, "MSH", 1, 2, 4, "invalid MSH-2 encoding characters");
    }
    m->delims_ok = 1;

    size_t pos = 0;
    while (pos < n) {
        uint8_t c0 = b[pos];
        if (c0 == CR || c0 == LF) {
            pos++;
            continue;
        }
        if (c0 == ' ' || c0 == '\t') {
            /* A line of blanks is an empty line, as some exporters write. */
            size_t q = pos;
            while (q < n && (b[q] == ' ' || b[q] == '\t'))
                q++;
            if (q == n || b[q] == CR || b[q] == LF) {
                pos = q;
                continue;
            }
        }
        if (n - pos < 3 || !hl7__is_segid(b + pos) ||
            (n - pos > 3 && b[pos + 3] != fs && b[pos + 3] != CR && b[pos + 3] != LF))
            return fail(err, HL7_E_SEGMENT_SEQUENCE, NULL, 0, 0, pos, "invalid segment id");
        uint32_t id = HL7_ID(b[pos], b[pos + 1], b[pos + 2]);
        if (m->nseg > 0 &&
            (id == HL7_ID('M', 'S', 'H') || id == HL7_ID('F', 'H', 'S') || id == HL7_ID('B', 'H', 'S') ||
             id == HL7_ID('B', 'T', 'S') || id == HL7_ID('F', 'T', 'S'))) {
            char sid[4] = {(char)b[pos], (char)b[pos + 1], (char)b[pos + 2], 0};
            return fail(err, HL7_E_SEGMENT_SEQUENCE, sid, count_id(m, id) + 1, 0, pos,
                        "message header or batch segment inside a message");
        }
        if (m->nseg >= HL7_MAX_SEGMENTS)
            return fail(err, HL7_E_INTERNAL, NULL, 0, 0, pos, "too many segments");
        if (m->nseg == m->segcap &&
            grow((void **)&m->segs, &m->segcap, sizeof *m->segs, 32) != 0)
            return fail(err, HL7_E_INTERNAL, NULL, 0, 0, pos, "out of memory");

        struct hl7_seg_ix *sg = &m->segs[m->nseg];
        sg->start = (uint32_t)pos;
        sg->sep0 = (uint32_t)m->nsep;
        sg->id = id;
        int overflow = 0;
        size_t q = scan_segment(m, b, n, pos + 3, fs, &overflow);
        sg->end = (uint32_t)q;
        sg->nsep = (uint32_t)(m->nsep - sg->sep0);
        m->nseg++;
        if (m->nseg == 1) {
            fill_header(m);
            if (opts && opts->override_charset) {
                m->cs = opts->charset;
                m->cs_override = 1;
            } else {
                m->cs = hl7__charset_from(m->h.charset, &m->cs_unknown);
            }
        }
        if (overflow) {
            char sid[4] = {(char)b[pos], (char)b[pos + 1], (char)b[pos + 2], 0};
            return fail(err, HL7_E_INTERNAL, sid, count_id(m, id), 0, q,
                        overflow == 1 ? "too many fields in a segment" : "out of memory");
        }
        pos = q;
    }
    return 0;
}

/* ---- validation -------------------------------------------------------- */

static int digits2(const uint8_t *p, unsigned lo, unsigned hi)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9')
        return 0;
    unsigned v = (unsigned)(p[0] - '0') * 10u + (unsigned)(p[1] - '0');
    return v >= lo && v <= hi;
}

/* MSH-7 as a TS/DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ], with an
 * optional TS.2 degree of precision.  Some engines glue milliseconds to the
 * seconds without the dot (17 digits); that is tolerated. */
static int ts_ok(struct hl7_slice ts, uint8_t comp)
{
    if (ts.len == 0)
        return 1;
    if (hl7_slice_count(ts, comp) > 2)
        return 0;
    struct hl7_slice prec = hl7_slice_piece(ts, comp, 2);
    if (prec.len > 1 || (prec.len == 1 && !memchr("YLMDHS", prec.p[0], 6)))
        return 0;
    struct hl7_slice t = hl7_slice_piece(ts, comp, 1);
    size_t nd = 0;
    while (nd < t.len && t.p[nd] >= '0' && t.p[nd] <= '9')
        nd++;
    if (nd < 4 || nd > 17 || (nd < 14 && nd % 2))
        return 0;
    const uint8_t *d = t.p;
    if ((nd >= 6 && !digits2(d + 4, 1, 12)) || (nd >= 8 && !digits2(d + 6, 1, 31)) ||
        (nd >= 10 && !digits2(d + 8, 0, 23)) || (nd >= 12 && !digits2(d + 10, 0, 59)) ||
        (nd >= 14 && !digits2(d + 12, 0, 60)))
        return 0;
    size_t i = nd;
    if (i < t.len && t.p[i] == '.') {
        if (nd != 14)
            return 0;
        size_t f = ++i;
        while (i < t.len && t.p[i] >= '0' && t.p[i] <= '9')
            i++;
        if (i == f || i - f > 4)
            return 0;
    }
    if (i < t.len && (t.p[i] == '+' || t.p[i] == '-')) {
        if (t.len - i != 5 || !digits2(t.p + i + 1, 0, 23) || !digits2(t.p + i + 3, 0, 59))
            return 0;
        i += 5;
    }
    return i == t.len;
}

static int vfail(const struct hl7_msg *m, struct hl7_err *err, int code, unsigned field,
                 unsigned comp, struct hl7_slice at, const char *text)
{
    hl7_err_set(err, code, "MSH", 1, field, text);
    err->comp = comp;
    err->offset = at.p && at.p >= m->p && at.p <= m->p + m->len ? (size_t)(at.p - m->p) : 0;
    return -1;
}

/* A 102 naming the segment and field that hold byte `off`. */
static int locate_fail(const struct hl7_msg *m, struct hl7_err *err, size_t off, const char *text)
{
    char sid[4] = {0};
    unsigned seq = 0, field = 0;
    for (size_t s = 0; s < m->nseg; s++) {
        const struct hl7_seg_ix *sg = &m->segs[s];
        if (off < sg->start)
            break;
        if (off >= sg->end && s + 1 < m->nseg)
            continue;
        sid[0] = (char)(sg->id >> 16);
        sid[1] = (char)(sg->id >> 8);
        sid[2] = (char)sg->id;
        for (size_t i = 0; i <= s; i++)
            seq += m->segs[i].id == sg->id;
        unsigned k = 0;
        while (k < sg->nsep && m->seps[sg->sep0 + k] < off)
            k++;
        field = k + (sg->id == HL7_ID('M', 'S', 'H') ? 1u : 0u);
        break;
    }
    hl7_err_set(err, HL7_E_DATA_TYPE, sid, seq, field, text);
    err->offset = off;
    return -1;
}

int hl7_msg_validate(const struct hl7_msg *m, struct hl7_err *err)
{
    struct hl7_err scratch;
    if (!err)
        err = &scratch;
    hl7_err_set(err, 0, NULL, 0, 0, NULL);
    if (!m || !m->delims_ok || m->nseg == 0) {
        hl7_err_set(err, HL7_E_SEGMENT_SEQUENCE, NULL, 0, 0, "no readable MSH segment");
        return -1;
    }
    const struct hl7_header *h = &m->h;
    /* Any v2 minor version from 2.1 on: 2.1–2.8 are read as specified, and a
     * later or unknown 2.x (2.9, test values like 2.999) is parsed the same
     * way — refusing it would stop the sender's interface for nothing. */
    unsigned ver = 0;
    int ver_ok = hl7__version_num(h->version_id, &ver) == 0 && ver >= 2001000u && ver < 3000000u;

    /* A NUL is no text in any HL7 character set; it cuts C strings short
     * downstream, so the message is refused and the ERR says where. */
    const uint8_t *nul = memchr(m->p, 0, m->len);
    if (nul)
        return locate_fail(m, err, (size_t)(nul - m->p), "NUL byte in the message");
    struct hl7_slice f9 = field_of(m, 0, 9);
    if (f9.len == 0)
        return vfail(m, err, HL7_E_REQUIRED_MISSING, 9, 0, f9, "MSH-9 message type missing");
    if (h->msg_type.len == 0)
        return vfail(m, err, HL7_E_REQUIRED_MISSING, 9, 1, f9, "MSH-9.1 message type missing");
    /* MSH-9.2 (trigger) may be empty at every version: v2.1 carried it in
     * EVN, older feeds keep sending "ORU" alone, and plain "ACK" is common.
     * Which rule such a message maps to is the rules' business. */
    /* An empty MSH-10 is accepted: the ACK's MSA-2 is then empty too, and
     * the store cannot recognise a re-send of it as a duplicate.  Several
     * engines' test and replay tools send such messages. */
    if (h->version.len == 0)
        return vfail(m, err, HL7_E_REQUIRED_MISSING, 12, 0, h->version, "MSH-12 version id missing");
    if (!ver_ok)
        return vfail(m, err, HL7_E_UNSUPPORTED_VERSION, 12, 1, h->version_id,
                     "MSH-12 version is not an HL7 v2 version (2.1 or later)");
    if (!ts_ok(h->timestamp, m->d.comp))
        return vfail(m, err, HL7_E_DATA_TYPE, 7, 0, h->timestamp, "MSH-7 is not a valid timestamp");
    if (m->cs_unknown && !m->cs_override)
        return vfail(m, err, HL7_E_TABLE_VALUE, 18, 0, h->charset,
                     "MSH-18 names no HL7 table 0211 character set");
    return 0;
}

/* ---- content for duplicate detection ----------------------------------- */

int hl7_msg_content(const struct hl7_msg *m, struct buf *out)
{
    static const uint8_t cr = CR;
    if (!m || m->nseg == 0)
        return 0;
    /* MSH-7 as indexed: empty when the segment is too short to hold it. */
    struct hl7_slice ts = m->h.timestamp;
    for (size_t i = 0; i < m->nseg; i++) {
        const struct hl7_seg_ix *sg = &m->segs[i];
        const uint8_t *a = m->p + sg->start, *e = m->p + sg->end;
        if (i == 0 && ts.len && ts.p >= a && ts.p + ts.len <= e) {
            if (buf_append(out, a, (size_t)(ts.p - a)) != 0)
                return -1;
            a = ts.p + ts.len;
        }
        if (buf_append(out, a, (size_t)(e - a)) != 0 || buf_append(out, &cr, 1) != 0)
            return -1;
    }
    return 0;
}

/* ---- accessors --------------------------------------------------------- */

const struct hl7_header *hl7_msg_header(const struct hl7_msg *m) { return &m->h; }

static const struct hl7_delims default_delims = {'|', '^', '~', '\\', '&', 0};

const struct hl7_delims *hl7_msg_delims(const struct hl7_msg *m)
{
    return m && m->delims_ok ? &m->d : &default_delims;
}

enum hl7_charset hl7_msg_charset(const struct hl7_msg *m) { return m->cs; }

struct hl7_slice hl7_msg_bytes(const struct hl7_msg *m) { return hl7__slice(m->p, m->len); }

size_t hl7_seg_count(const struct hl7_msg *m) { return m ? m->nseg : 0; }

struct hl7_slice hl7_seg_id(const struct hl7_msg *m, size_t seg)
{
    if (!m || seg >= m->nseg)
        return hl7__slice(NULL, 0);
    return hl7__slice(m->p + m->segs[seg].start, 3);
}

struct hl7_slice hl7_seg_text(const struct hl7_msg *m, size_t seg)
{
    if (!m || seg >= m->nseg)
        return hl7__slice(NULL, 0);
    const struct hl7_seg_ix *sg = &m->segs[seg];
    return hl7__slice(m->p + sg->start, sg->end - sg->start);
}

long hl7_seg_find(const struct hl7_msg *m, const char id[3], unsigned nth)
{
    if (!m || !id || nth == 0)
        return -1;
    uint32_t want = HL7_ID(id[0], id[1], id[2]);
    for (size_t i = 0; i < m->nseg; i++)
        if (m->segs[i].id == want && --nth == 0)
            return (long)i;
    return -1;
}

unsigned hl7_seg_field_count(const struct hl7_msg *m, size_t seg)
{
    if (!m || seg >= m->nseg)
        return 0;
    const struct hl7_seg_ix *sg = &m->segs[seg];
    return sg->nsep + (sg->id == HL7_ID('M', 'S', 'H') ? 1u : 0u);
}

struct hl7_slice hl7_seg_field(const struct hl7_msg *m, size_t seg, unsigned field)
{
    if (!m || seg >= m->nseg)
        return hl7__slice(NULL, 0);
    return field_of(m, seg, field);
}

/* ---- strict escape check ---------------------------------------------- */

int hl7_msg_check_escapes(const struct hl7_msg *m, struct hl7_err *err)
{
    struct hl7_err scratch;
    if (!err)
        err = &scratch;
    hl7_err_set(err, 0, NULL, 0, 0, NULL);
    if (!m || !m->delims_ok)
        return 0;
    const uint8_t esc = m->d.esc;
    for (size_t s = 0; s < m->nseg; s++) {
        const struct hl7_seg_ix *sg = &m->segs[s];
        int is_msh = sg->id == HL7_ID('M', 'S', 'H');
        unsigned nf = sg->nsep + (is_msh ? 1u : 0u);
        /* MSH-1 and MSH-2 are the delimiters themselves, not text. */
        for (unsigned f = is_msh ? 3u : 1u; f <= nf; f++) {
            struct hl7_slice v = field_of(m, s, f);
            unsigned n = 0;
            const uint8_t *p = v.p, *end = v.p + v.len;
            while (v.len && (p = memchr(p, esc, (size_t)(end - p))) != NULL) {
                n++;
                p++;
            }
            if (n % 2) {
                char sid[4] = {(char)(sg->id >> 16), (char)(sg->id >> 8), (char)sg->id, 0};
                unsigned seq = 0;
                for (size_t i = 0; i <= s; i++)
                    seq += m->segs[i].id == sg->id;
                hl7_err_set(err, HL7_E_DATA_TYPE, sid, seq, f, "unterminated escape sequence");
                err->offset = (size_t)(v.p - m->p);
                return -1;
            }
        }
    }
    return 0;
}
