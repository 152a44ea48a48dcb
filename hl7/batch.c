/* hl7/batch.c — batch envelopes (FHS/BHS ... BTS/FTS) split into messages.
 *
 * A batch is walked segment by segment without an index: hl7_batch_begin
 * checks the envelope's shape in one pass (FHS only first, no BHS inside an
 * open batch, no data segment outside a message, nothing after FTS) so a
 * broken envelope is refused before any message is handed out; then
 * hl7_batch_next returns each message as a view from its MSH up to the next
 * MSH or envelope segment, and checks BTS-1/FTS-1 counts when it reaches
 * them — a mismatch is noted for a warning, never an error, since BHS/BTS
 * are optional and the messages themselves are fine.  Envelopes with BHS
 * only, FHS+BHS, FHS only, with or without trailers, a trailer without a
 * header, and a bare run of MSH messages are all accepted; every MSH must
 * use the header's delimiters.
 *
 * The iterator holds no allocation; any thread. */
#include "hl7/hl7_int.h"

#include <string.h>

#include "core/num.h"

#define CR 0x0d
#define LF 0x0a

static const uint32_t ID_MSH = HL7_ID('M', 'S', 'H'), ID_FHS = HL7_ID('F', 'H', 'S'),
                      ID_BHS = HL7_ID('B', 'H', 'S'), ID_BTS = HL7_ID('B', 'T', 'S'),
                      ID_FTS = HL7_ID('F', 'T', 'S');

static size_t skip_bom(const uint8_t *p, size_t len)
{
    return len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf ? 3 : 0;
}

static int is_blank(uint8_t c) { return c == ' ' || c == '\t'; }

/* Same rule as for MSH-1: visible ASCII punctuation. */
static int sep_ok(uint8_t c)
{
    return c > 0x20 && c < 0x7f && !((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
                                     (c >= 'a' && c <= 'z'));
}

/* Finds the next non-blank line at or after pos.  Returns 1 with [*s, *e)
 * the segment text, or 0 at the end. */
static int next_seg(const uint8_t *p, size_t len, size_t pos, size_t *s, size_t *e)
{
    while (pos < len) {
        if (p[pos] == CR || p[pos] == LF) {
            pos++;
            continue;
        }
        size_t q = pos;
        int blank = 1;
        while (q < len && p[q] != CR && p[q] != LF) {
            blank &= is_blank(p[q]);
            q++;
        }
        if (!blank) {
            *s = pos;
            *e = q;
            return 1;
        }
        pos = q;
    }
    return 0;
}

static uint32_t seg_id(const uint8_t *p, size_t s, size_t e)
{
    if (e - s < 3 || !hl7__is_segid(p + s))
        return 0;
    return HL7_ID(p[s], p[s + 1], p[s + 2]);
}

static int envelope_fail(struct hl7_err *err, int code, uint32_t id, unsigned field, size_t off,
                         const char *text)
{
    char sid[4] = {0};
    if (id) {
        sid[0] = (char)(id >> 16);
        sid[1] = (char)(id >> 8);
        sid[2] = (char)id;
    }
    hl7_err_set(err, code, sid, id ? 1 : 0, field, text);
    err->offset = off;
    return -1;
}

int hl7_is_batch(const uint8_t *p, size_t len)
{
    if (!p)
        return 0;
    size_t s, e, pos = skip_bom(p, len);
    while (pos < len && (p[pos] == CR || p[pos] == LF))
        pos++;
    /* Asked of every message: when the first line starts with a non-blank
     * byte it is the first segment, and its first four bytes decide, so
     * the rest of MSH need not be scanned.  Otherwise next_seg skips the
     * blank lines. */
    if (pos + 4 <= len && !is_blank(p[pos])) {
        s = pos;
        e = pos + 1;
        while (e < pos + 4 && p[e] != CR && p[e] != LF)
            e++;
    } else if (!next_seg(p, len, pos, &s, &e)) {
        return 0;
    }
    uint32_t id = seg_id(p, s, e);
    return (id == ID_FHS || id == ID_BHS) && e - s >= 4 && sep_ok(p[s + 3]);
}

/* Takes BHS (or FHS) fields as the current batch's identity, and its
 * offset as the start the BTS count is taken from. */
static void take_envelope(struct hl7_batch_iter *it, size_t s, size_t e)
{
    const uint8_t *a = it->p + s, *b = it->p + e;
    it->batch_start = s;
    if (e - s < 4) { /* a bare "BHS": no fields at all */
        it->send_app = it->send_fac = it->batch_control_id = hl7__slice(b, 0);
        return;
    }
    uint8_t fs = a[3];
    it->send_app = hl7__raw_field(a, b, fs, 3, 1);
    it->send_fac = hl7__raw_field(a, b, fs, 4, 1);
    it->batch_control_id = hl7__raw_field(a, b, fs, 11, 1);
}

/* 1 when the segment at a (n bytes) has the iterator's field separator and
 * encoding characters. */
static int same_delims(const struct hl7_batch_iter *it, const uint8_t *a, size_t n)
{
    if (n < 4 || a[3] != it->d.field)
        return 0;
    struct hl7_slice enc = hl7__raw_field(a, a + n, a[3], 2, 1);
    struct hl7_delims d = {.field = a[3]};
    if (hl7__read_delims(enc.p, enc.len, &d) != 0)
        return 0;
    return d.comp == it->d.comp && d.rep == it->d.rep && d.esc == it->d.esc &&
           d.sub == it->d.sub && d.trunc == it->d.trunc;
}

int hl7_batch_begin(struct hl7_batch_iter *it, const uint8_t *p, size_t len, struct hl7_err *err)
{
    struct hl7_err scratch;
    if (!err)
        err = &scratch;
    hl7_err_set(err, 0, NULL, 0, 0, NULL);
    if (!it)
        return envelope_fail(err, HL7_E_INTERNAL, 0, 0, 0, "no iterator");
    memset(it, 0, sizeof *it);
    if (!p)
        len = 0;
    size_t bom = skip_bom(p, len);
    it->p = p ? p + bom : (const uint8_t *)"";
    it->len = len - bom;
    it->batch_control_id = hl7__slice(it->p, 0);
    it->send_app = it->send_fac = it->version = it->batch_control_id;

    size_t s, e;
    if (!next_seg(it->p, it->len, 0, &s, &e))
        return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, 0, 0, 0, "empty batch");
    uint32_t id = seg_id(it->p, s, e);
    if (id != ID_FHS && id != ID_BHS && id != ID_MSH)
        return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, 0, 0, s,
                             "batch does not begin with FHS, BHS or MSH");
    const uint8_t *a = it->p + s;
    if (e - s < 4)
        return envelope_fail(err, HL7_E_REQUIRED_MISSING, id, 1, s, "envelope header truncated");
    if (!sep_ok(a[3]))
        return envelope_fail(err, HL7_E_DATA_TYPE, id, 1, s, "invalid field separator");
    it->d.field = a[3];
    struct hl7_slice enc = hl7__raw_field(a, it->p + e, a[3], 2, 1);
    int rc = hl7__read_delims(enc.p, enc.len, &it->d);
    if (rc != 0)
        return envelope_fail(err, rc, id, 2, s, "invalid envelope encoding characters");
    if (id != ID_MSH) {
        take_envelope(it, s, e);
        it->has_header = 1;
    }

    /* Shape check in one pass. */
    int have_fhs = 0, open = 0, any_bhs = 0, implicit_done = 0, in_msg = 0, ended = 0;
    int seen_msh = 0;
    size_t idx = 0, pos = 0;
    while (next_seg(it->p, it->len, pos, &s, &e)) {
        id = seg_id(it->p, s, e);
        pos = e;
        if (ended)
            return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, id, 0, s, "data after FTS");
        if (id == ID_FHS) {
            if (idx != 0)
                return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, id, 0, s, "FHS inside a file");
            have_fhs = 1;
        } else if (id == ID_BHS) {
            if (!same_delims(it, it->p + s, e - s))
                return envelope_fail(err, HL7_E_DATA_TYPE, id, 2, s,
                                     "batch header delimiters differ from the file header's");
            if (open || (any_bhs == 0 && idx > (size_t)have_fhs))
                return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, id, 0, s,
                                     "BHS inside an open batch");
            if (!any_bhs)
                take_envelope(it, s, e); /* the first batch's identity */
            open = 1;
            any_bhs = 1;
            in_msg = 0;
        } else if (id == ID_MSH) {
            in_msg = 1;
            const uint8_t *m = it->p + s;
            if (!same_delims(it, m, e - s))
                return envelope_fail(err, HL7_E_DATA_TYPE, id, 2, s,
                                     "message delimiters differ from the batch header's");
            if (!seen_msh) {
                seen_msh = 1;
                it->version = hl7__raw_field(m, it->p + e, m[3], 12, 1);
                if (!it->has_header) {
                    it->send_app = hl7__raw_field(m, it->p + e, m[3], 3, 1);
                    it->send_fac = hl7__raw_field(m, it->p + e, m[3], 4, 1);
                    it->batch_control_id = hl7__raw_field(m, it->p + e, m[3], 10, 1);
                }
            }
        } else if (id == ID_BTS) {
            if (open)
                open = 0;
            else if (!any_bhs && !implicit_done)
                implicit_done = 1;
            else
                return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, id, 0, s, "BTS without BHS");
            in_msg = 0;
        } else if (id == ID_FTS) {
            /* FTS without FHS is tolerated: some exporters write it. */
            ended = 1;
            in_msg = 0;
        } else if (!in_msg) {
            return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, id, 0, s,
                                 id ? "segment outside a message" : "invalid segment id");
        }
        idx++;
    }
    return 0;
}

/* Counts segments with this id that start in [from, to), beginning at the
 * line after `from` (which points into an envelope segment). */
static unsigned count_from(const uint8_t *p, size_t from, size_t to, uint32_t want, int skip_line)
{
    unsigned n = 0;
    size_t pos = from, s, e;
    if (skip_line)
        while (pos < to && p[pos] != CR && p[pos] != LF)
            pos++;
    while (next_seg(p, to, pos, &s, &e)) {
        n += seg_id(p, s, e) == want;
        pos = e;
    }
    return n;
}

/* Compares BTS-1 / FTS-1 with what the batch holds; a mismatch (or a
 * count that is no number) is noted in it->count_*, not returned. */
static void check_count(struct hl7_batch_iter *it, size_t s, size_t e, uint32_t id, unsigned have,
                        unsigned *declared)
{
    struct hl7_slice f = hl7__raw_field(it->p + s, it->p + e, it->d.field, 1, 0);
    *declared = 0;
    if (f.len == 0)
        return;
    uint64_t v;
    int bad = num_parse_u64(f.p, f.len, 1000000000u, &v) != 0;
    if (!bad) {
        *declared = (unsigned)v;
        if (v == have)
            return;
    }
    if (it->count_mismatches++ == 0)
        (void)envelope_fail(&it->count_err, bad ? HL7_E_DATA_TYPE : HL7_E_SEGMENT_SEQUENCE, id,
                            1, s,
                            bad ? "envelope count is not a number"
                            : id == ID_BTS ? "BTS-1 message count does not match the batch"
                                           : "FTS-1 batch count does not match the file");
}

int hl7_batch_next(struct hl7_batch_iter *it, struct hl7_slice *msg, struct hl7_err *err)
{
    struct hl7_err scratch;
    if (!err)
        err = &scratch;
    if (msg)
        *msg = hl7__slice(NULL, 0);
    if (!it || !it->p)
        return 0;
    size_t s, e;
    while (it->pos < it->len && next_seg(it->p, it->len, it->pos, &s, &e)) {
        uint32_t id = seg_id(it->p, s, e);
        if (id == ID_FHS) {
            it->pos = e;
        } else if (id == ID_BHS) {
            take_envelope(it, s, e);
            it->pos = e;
        } else if (id == ID_BTS) {
            /* The batch began at its BHS (or FHS); a bare stream at the top. */
            size_t anchor = it->has_header ? it->batch_start : 0;
            unsigned have = count_from(it->p, anchor, s, ID_MSH, it->has_header);
            unsigned dummy;
            check_count(it, s, e, id, have, &dummy);
            it->declared_count = dummy;
            it->pos = e;
        } else if (id == ID_FTS) {
            /* Batches in the file: BHS segments, or one implicit batch when
             * the file holds messages without any. */
            unsigned have = count_from(it->p, 0, s, ID_BHS, 0), dummy;
            if (have == 0 && count_from(it->p, 0, s, ID_MSH, 0) > 0)
                have = 1;
            check_count(it, s, e, id, have, &dummy);
            it->pos = e;
        } else if (id == ID_MSH) {
            size_t end = it->len, pos = e, s2, e2;
            while (next_seg(it->p, it->len, pos, &s2, &e2)) {
                uint32_t id2 = seg_id(it->p, s2, e2);
                if (id2 == ID_MSH || id2 == ID_BHS || id2 == ID_BTS || id2 == ID_FHS ||
                    id2 == ID_FTS) {
                    end = s2;
                    break;
                }
                pos = e2;
            }
            if (msg)
                *msg = hl7__slice(it->p + s, end - s);
            it->seen++;
            it->pos = end;
            return 1;
        } else {
            it->pos = it->len;
            return envelope_fail(err, HL7_E_SEGMENT_SEQUENCE, id, 0, s,
                                 "segment outside a message");
        }
    }
    it->pos = it->len;
    return 0;
}
