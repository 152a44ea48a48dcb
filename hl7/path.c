/* hl7/path.c — compiled paths (PID-3[2].1, OBX[3]-5.1, MSH-9.2, PID-3[*].1)
 * and lookups through the message index.
 *
 * A path is parsed once (when mapping rules are compiled) into a small
 * struct; a lookup is then a segment search over the flat index, one field
 * offset read and at most three memchr splits.  Paths come from
 * configuration, not from the wire, but the parser is still written for
 * arbitrary bytes: explicit length, numbers through core/num.h.
 *
 * Any thread. */
#include "hl7/hl7_int.h"

#include <stdio.h>
#include <string.h>

#include "core/limits.h"
#include "core/num.h"

static int perr(const char **why, size_t *at, const char *reason, size_t where)
{
    if (why)
        *why = reason;
    if (at)
        *at = where;
    return -1;
}

/* Reads a 1-based decimal at s[*i..] up to max. */
static int read_num(const char *s, size_t len, size_t *i, uint64_t max, uint64_t *v,
                    const char **why, size_t *at)
{
    size_t j = *i;
    while (j < len && s[j] >= '0' && s[j] <= '9')
        j++;
    if (j == *i)
        return perr(why, at, "expected a number", *i);
    if (num_parse_u64((const uint8_t *)s + *i, j - *i, max, v) != 0)
        return perr(why, at, "number out of range", *i);
    if (*v == 0)
        return perr(why, at, "positions are 1-based", *i);
    *i = j;
    return 0;
}

int hl7_path_parse(const char *s, size_t len, struct hl7_path *out, const char **why, size_t *at)
{
    struct hl7_path p;
    memset(&p, 0, sizeof p);
    if (!s || len < 3)
        return perr(why, at, "a path starts with a three-letter segment id", s ? len : 0);
    if (!hl7__is_segid((const uint8_t *)s))
        return perr(why, at, "invalid segment id", 0);
    memcpy(p.seg, s, 3);
    size_t i = 3;
    uint64_t v;
    if (i < len && s[i] == '[') {
        i++;
        if (read_num(s, len, &i, HL7_MAX_SEGMENTS, &v, why, at) != 0)
            return -1;
        if (i >= len || s[i] != ']')
            return perr(why, at, "expected ']'", i);
        i++;
        p.seg_nth = (unsigned)v;
    }
    if (i < len) {
        if (s[i] != '-')
            return perr(why, at, "expected '-' before the field number", i);
        i++;
        if (read_num(s, len, &i, HL7_MAX_FIELDS_PER_SEGMENT + 1, &v, why, at) != 0)
            return -1;
        p.field = (unsigned)v;
        if (i < len && s[i] == '[') {
            i++;
            if (i < len && s[i] == '*') {
                p.rep = HL7_REP_ALL;
                i++;
            } else {
                if (read_num(s, len, &i, 1000000, &v, why, at) != 0)
                    return -1;
                p.rep = (int)v;
            }
            if (i >= len || s[i] != ']')
                return perr(why, at, "expected ']'", i);
            i++;
        }
        if (i < len && s[i] == '.') {
            i++;
            if (read_num(s, len, &i, 65535, &v, why, at) != 0)
                return -1;
            p.comp = (unsigned)v;
            if (i < len && s[i] == '.') {
                i++;
                if (read_num(s, len, &i, 65535, &v, why, at) != 0)
                    return -1;
                p.sub = (unsigned)v;
            }
        }
        if (i < len)
            return perr(why, at, "unexpected character after the path", i);
    }
    if (out)
        *out = p;
    return 0;
}

void hl7_path_format(const struct hl7_path *p, char *out, size_t cap)
{
    if (!out || cap == 0)
        return;
    out[0] = '\0';
    if (!p)
        return;
    char nth[16] = "", field[16] = "", rep[16] = "", comp[16] = "", sub[16] = "";
    if (p->seg_nth)
        snprintf(nth, sizeof nth, "[%u]", p->seg_nth);
    if (p->field) {
        snprintf(field, sizeof field, "-%u", p->field);
        if (p->rep == HL7_REP_ALL)
            snprintf(rep, sizeof rep, "[*]");
        else if (p->rep > 0)
            snprintf(rep, sizeof rep, "[%d]", p->rep);
        if (p->comp) {
            snprintf(comp, sizeof comp, ".%u", p->comp);
            if (p->sub)
                snprintf(sub, sizeof sub, ".%u", p->sub);
        }
    }
    snprintf(out, cap, "%.3s%s%s%s%s%s", p->seg, nth, field, rep, comp, sub);
}

/* The segment a path designates, or -1. */
static long resolve_seg(const struct hl7_msg *m, const struct hl7_path *path, long seg)
{
    if (!m || !path || m->nseg == 0)
        return -1;
    if (seg >= 0) {
        if ((size_t)seg >= m->nseg)
            return -1;
        if (path->seg[0] &&
            m->segs[seg].id != HL7_ID(path->seg[0], path->seg[1], path->seg[2]))
            return -1;
        return seg;
    }
    return hl7_seg_find(m, path->seg, path->seg_nth ? path->seg_nth : 1);
}

int hl7_get_rep(const struct hl7_msg *m, const struct hl7_path *path, long seg, unsigned rep,
                struct hl7_slice *out)
{
    struct hl7_slice v = {NULL, 0};
    if (out)
        *out = v;
    long s = resolve_seg(m, path, seg);
    if (s < 0)
        return 0;
    if (path->field == 0) {
        v = hl7_seg_text(m, (size_t)s);
    } else {
        v = hl7_seg_field(m, (size_t)s, path->field);
        int is_msh = m->segs[s].id == HL7_ID('M', 'S', 'H');
        if (is_msh && path->field <= 2) {
            /* MSH-1 and MSH-2 hold the delimiters themselves: never split. */
            if (rep > 1 || path->comp > 1 || path->sub > 1)
                return 0;
        } else {
            v = hl7_slice_piece(v, m->d.rep, rep ? rep : 1);
            if (path->comp) {
                v = hl7_slice_piece(v, m->d.comp, path->comp);
                if (path->sub)
                    v = hl7_slice_piece(v, m->d.sub, path->sub);
            }
        }
    }
    if (out)
        *out = v;
    return v.len > 0;
}

int hl7_get(const struct hl7_msg *m, const struct hl7_path *path, long seg, struct hl7_slice *out)
{
    unsigned rep = path && path->rep > 0 ? (unsigned)path->rep : 1;
    return hl7_get_rep(m, path, seg, rep, out);
}

unsigned hl7_rep_count(const struct hl7_msg *m, const struct hl7_path *path, long seg)
{
    long s = resolve_seg(m, path, seg);
    if (s < 0 || path->field == 0)
        return s < 0 ? 0 : 1;
    struct hl7_slice v = hl7_seg_field(m, (size_t)s, path->field);
    if (v.len == 0)
        return 0;
    if (m->segs[s].id == HL7_ID('M', 'S', 'H') && path->field <= 2)
        return 1;
    return hl7_slice_count(v, m->d.rep);
}
