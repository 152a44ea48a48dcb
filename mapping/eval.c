/* Rule evaluation: one parsed message → rows, appointment facts, or the
 * reason it is filtered, quarantined or rejected.
 *
 * The first rule (files in configured order, rules in file order) whose
 * `match` and `when` hold selects the message.  Every value is built at the
 * tail of the result's arena: field views are decoded (escapes, charset →
 * UTF-8) straight into it and the modifiers (trim, case, map, datetime,
 * units, default) then rewrite that tail in place, so a value costs no
 * allocation once the arena has grown to the working size.  Segment
 * references are resolved once per message into indices (one pass over the
 * segments), and paths on the for_each segment follow the current row.
 *
 * Each field a rule reads has a compile-time key (load.c); the first read
 * of a repetition splits it into components once, into the result's split
 * table, and later paths on the same field (the six PID-11 columns, a
 * `where` and the value it picks) only index that table.  Values that are
 * plain ASCII without escapes, the usual case, are tested and copied
 * sixteen bytes at a time; everything else goes through hl7_decode.  Wide
 * loads stay inside the message bytes (e->lim), so nothing outside what
 * the parser indexed is read.
 *
 * Any thread; the compiled rules are only read. */
#include "mapping/mapping_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/num.h"

/* For the few helpers on the per-value path, whose calls would cost more
 * than their bodies. */
#define EV_HOT static inline __attribute__((always_inline))

struct ev {
    const struct mapping *mp;
    const struct hl7_msg *m;
    struct mapping_result *r;
    const struct mp_rule *rule;
    /* repetition picked by an enclosing `where` */
    int wslot;
    unsigned wfield, wrep;
    unsigned row_ordinal; /* 1-based instance of the for_each segment */
    int full;             /* the arena hit its ceiling */
    uint8_t esc;          /* the message's escape character */
    uint8_t d_rep, d_comp, d_sub;
    const uint8_t *lim;   /* end of the message bytes: wide loads stay below */
    uint64_t split_ok;    /* r->splits[k] was filled during this evaluation */
};

/* ---- freeing compiled values (used by load.c) ------------------------------- */

void mp_map_free(struct mp_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->keys[i].p);
        free(m->vals[i].p);
    }
    free(m->keys);
    free(m->vals);
    free(m->fallback.p);
    free(m);
}

void mp_cond_release(struct mp_cond *c)
{
    for (size_t i = 0; i < c->n_vals; i++)
        free(c->vals[i].p);
    free(c->vals);
    if (c->has_re)
        regfree(&c->re);
    memset(c, 0, sizeof *c);
}

static void val_release(struct mp_val *v)
{
    free(v->lit.p);
    for (size_t i = 0; i < v->n_kids; i++)
        val_release(&v->kids[i]);
    free(v->kids);
    for (size_t i = 0; i < v->n_where; i++)
        mp_cond_release(&v->where[i]);
    free(v->where);
    if (v->map && !v->map->shared)
        mp_map_free(v->map);
    mp_val_free(v->units);
    free(v->dflt.p);
}

void mp_val_free(struct mp_val *v)
{
    if (!v)
        return;
    val_release(v);
    free(v);
}

/* ---- result ------------------------------------------------------------------- */

struct mapping_result *mapping_result_new(void)
{
    struct mapping_result *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    buf_init(&r->arena, MP_MAX_RESULT_BYTES);
    buf_init(&r->scratch, MP_MAX_RESULT_BYTES);
    return r;
}

void mapping_result_free(struct mapping_result *r)
{
    if (!r)
        return;
    buf_release(&r->arena);
    buf_release(&r->scratch);
    free(r->cells);
    free(r);
}

/* 1 when raw decodes to itself: no escape character, no byte above 0x7f
 * (the same in every charset), and not the HL7 null "". */
static inline int plain(const struct ev *e, struct hl7_slice raw)
{
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i vesc = _mm_set1_epi8((char)e->esc);
    while (i < raw.len && (size_t)(e->lim - (raw.p + i)) >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(raw.p + i));
        unsigned bad =
            (unsigned)(_mm_movemask_epi8(x) | _mm_movemask_epi8(_mm_cmpeq_epi8(x, vesc)));
        if (raw.len - i < 16)
            bad &= (1u << (raw.len - i)) - 1u;
        if (bad)
            return 0;
        i += 16;
    }
#endif
    for (; i < raw.len; i++)
        if (raw.p[i] >= 0x80 || raw.p[i] == e->esc)
            return 0;
    return !(raw.len == 2 && raw.p[0] == '"' && raw.p[1] == '"');
}

/* ---- lookups -------------------------------------------------------------------- */

static void resolve_segments(struct ev *e, const struct mp_rule *rule)
{
    unsigned cnt[MP_MAX_SEGREFS];
    size_t left = rule->n_segrefs;
    for (size_t s = 0; s < rule->n_segrefs; s++) {
        e->r->segidx[s] = -1;
        cnt[s] = 0;
    }
    size_t nseg = hl7_seg_count(e->m);
    for (size_t i = 0; i < nseg && left; i++) {
        struct hl7_slice id = hl7_seg_id(e->m, i);
        if (id.len != 3)
            continue;
        for (size_t s = 0; s < rule->n_segrefs; s++) {
            const struct mp_segref *sr = &rule->segrefs[s];
            if (e->r->segidx[s] >= 0 || memcmp(id.p, sr->id, 3) != 0)
                continue;
            if (++cnt[s] == (sr->nth ? sr->nth : 1)) {
                e->r->segidx[s] = (long)i;
                left--;
            }
        }
    }
}

/* The nth (1-based) piece of a short value split on `delim`: what
 * hl7_slice_piece returns, without a call for the subcomponents of one
 * component. */
static inline struct hl7_slice piece(struct hl7_slice s, uint8_t delim, unsigned nth)
{
    const uint8_t *p = s.p, *end = s.p + s.len;
    for (unsigned i = 1; i < nth; i++) {
        while (p < end && *p != delim)
            p++;
        if (p == end) {
            s.p = end;
            s.len = 0;
            return s;
        }
        p++;
    }
    const uint8_t *q = p;
    while (q < end && *q != delim)
        q++;
    s.p = p;
    s.len = (size_t)(q - p);
    return s;
}

static inline void split_add(struct mp_split *f, size_t at)
{
    if (f->ncomp < MP_MAX_SPLIT_COMPS)
        f->start[f->ncomp++] = (uint32_t)at;
    else
        f->more = 1;
}

/* Splits the repetition that starts at p into components, recording where
 * each starts.  The repetition ends at the first repetition delimiter or at
 * p+len (the end of the field).  Sixteen bytes are compared at once while
 * that many remain before e->lim (the end of the message, so bytes past
 * the field may be loaded but are masked off); the rest goes byte by
 * byte. */
static void split_rep(struct ev *e, struct mp_split *f, const uint8_t *p, size_t len)
{
    const uint8_t comp = e->d_comp, rep = e->d_rep;
    size_t i = 0, end = len;
    f->ncomp = 1;
    f->more = 0;
    f->start[0] = 0;
#if defined(__SSE2__)
    const __m128i vc = _mm_set1_epi8((char)comp), vr = _mm_set1_epi8((char)rep);
    while (i < end && (size_t)(e->lim - (p + i)) >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        unsigned keep = end - i >= 16 ? 0xffffu : (1u << (end - i)) - 1u;
        unsigned mc = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, vc)) & keep;
        unsigned mr = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, vr)) & keep;
        if (mr) {
            unsigned stop = (unsigned)__builtin_ctz(mr);
            mc &= (1u << stop) - 1u;
            end = i + stop;
        }
        while (mc) {
            split_add(f, i + (unsigned)__builtin_ctz(mc) + 1);
            mc &= mc - 1u;
        }
        i += 16;
        if (mr)
            i = end;
    }
#endif
    for (; i < end; i++) {
        if (p[i] == rep) {
            end = i;
            break;
        }
        if (p[i] == comp)
            split_add(f, i + 1);
    }
    f->whole.p = p;
    f->whole.len = end;
    f->next = end < len ? (size_t)(p - f->field.p) + end + 1 : 0;
    if (!f->more)
        f->start[f->ncomp] = (uint32_t)end + 1;
}

/* Fills split f with repetition `rep` of the path's field in segment seg.
 * Walking the repetitions in order (`where`, [*]) goes on from where the
 * previous one ended instead of searching the field again. */
static __attribute__((noinline)) void split_fill(struct ev *e, struct mp_split *f,
                                                 const struct mp_path *mpath, long seg,
                                                 unsigned rep)
{
    uint64_t bit = (uint64_t)1 << mpath->fkey;
    const uint8_t *from;
    if ((e->split_ok & bit) && f->seg == seg && rep > 1 && f->rep + 1 == rep) {
        from = f->next ? f->field.p + f->next : f->field.p + f->field.len;
    } else {
        f->field = hl7_seg_field(e->m, (size_t)seg, mpath->p.field);
        from = rep > 1 ? hl7_slice_piece(f->field, e->d_rep, rep).p : f->field.p;
    }
    f->seg = seg;
    f->rep = rep;
    e->split_ok |= bit;
    split_rep(e, f, from, (size_t)(f->field.p + f->field.len - from));
}

/* hl7_get_rep through the split cache: the same answer, each repetition
 * split once.  Paths without a cache key (MSH-1/MSH-2, the delimiters
 * themselves, and keys past MP_MAX_FKEYS) go to the parser unchanged. */
EV_HOT int lookup(struct ev *e, const struct mp_path *mpath, long seg, unsigned rep,
                  struct hl7_slice *out)
{
    const struct hl7_path *p = &mpath->p;
    if (mpath->fkey < 0)
        return hl7_get_rep(e->m, p, seg, rep, out);
    struct mp_split *f = &e->r->splits[mpath->fkey];
    if (!(e->split_ok >> mpath->fkey & 1) || f->seg != seg || f->rep != rep)
        split_fill(e, f, mpath, seg, rep);
    struct hl7_slice v = f->whole;
    if (p->comp) {
        unsigned k = p->comp;
        if (k < f->ncomp || (k == f->ncomp && !f->more)) {
            uint32_t a = f->start[k - 1], b = f->start[k] - 1;
            v.p += a;
            v.len = b - a;
        } else if (f->more) {
            v = hl7_slice_piece(v, e->d_comp, k);
        } else {
            v.p += v.len;
            v.len = 0;
        }
        if (p->sub)
            v = piece(v, e->d_sub, p->sub);
    }
    *out = v;
    return v.len > 0;
}

/* The raw view of a path, honouring an enclosing `where` and [*]. */
EV_HOT int get_raw(struct ev *e, const struct mp_path *p, struct hl7_slice *out)
{
    long seg = e->r->segidx[p->slot];
    if (seg < 0)
        return 0;
    if (p->p.rep != HL7_REP_ALL)
        return lookup(e, p, seg, p->p.rep > 0 ? (unsigned)p->p.rep : 1, out);
    if (e->wrep && p->slot == e->wslot && p->p.field == e->wfield)
        return lookup(e, p, seg, e->wrep, out);
    unsigned n = hl7_rep_count(e->m, &p->p, seg);
    for (unsigned k = 1; k <= n; k++)
        if (lookup(e, p, seg, k, out) && !hl7_slice_is_null(*out))
            return 1;
    return 0;
}

static int str_find(const struct mp_str *a, size_t n, const uint8_t *p, size_t len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        size_t k = a[mid].len < len ? a[mid].len : len;
        int c = memcmp(a[mid].p, p, k);
        if (c == 0)
            c = (a[mid].len > len) - (a[mid].len < len);
        if (c == 0)
            return (int)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Tests one decoded value. */
static int cond_value(struct ev *e, const struct mp_cond *c, enum mp_cop op, struct hl7_slice raw,
                      int have)
{
    struct buf *s = &e->r->scratch;
    const uint8_t *p;
    size_t len;
    if (!have) {
        buf_reset(s);
        p = buf_data(s);
        len = 0;
    } else if (op != MP_C_REGEX && plain(e, raw)) {
        /* decoding would copy it unchanged; regexec needs a C string */
        p = raw.p;
        len = raw.len;
    } else {
        buf_reset(s);
        if (hl7_decode(e->m, raw, s) != 0) {
            e->full = 1;
            return 0;
        }
        p = buf_data(s);
        len = s->len;
    }
    switch (op) {
    case MP_C_PRESENT:
        return len > 0;
    case MP_C_ABSENT:
        return len == 0;
    case MP_C_EQUALS:
    case MP_C_IN:
        return len > 0 && str_find(c->vals, c->n_vals, p, len) >= 0;
    case MP_C_REGEX:
        if (buf_append(s, "", 1) != 0) {
            e->full = 1;
            return 0;
        }
        return regexec(&c->re, (const char *)buf_data(s), 0, NULL, 0) == 0;
    }
    return 0;
}

/* A condition at message level (rep 0: [*] means "any repetition") or on
 * one repetition picked by `where` (rep > 0). */
static int cond_true(struct ev *e, const struct mp_cond *c, unsigned rep)
{
    struct hl7_slice raw = {0};
    long seg = e->r->segidx[c->path.slot];
    int have;
    if (seg < 0)
        return cond_value(e, c, c->op, raw, 0);
    if (rep || c->path.p.rep != HL7_REP_ALL) {
        if (!rep)
            rep = c->path.p.rep > 0 ? (unsigned)c->path.p.rep : 1;
        have = lookup(e, &c->path, seg, rep, &raw);
        return cond_value(e, c, c->op, raw, have);
    }
    /* any repetition; "absent" means no repetition has a value */
    unsigned n = hl7_rep_count(e->m, &c->path.p, seg);
    if (c->op == MP_C_ABSENT) {
        for (unsigned k = 1; k <= n; k++) {
            have = lookup(e, &c->path, seg, k, &raw);
            if (cond_value(e, c, MP_C_PRESENT, raw, have))
                return 0;
        }
        return 1;
    }
    for (unsigned k = 1; k <= n; k++) {
        have = lookup(e, &c->path, seg, k, &raw);
        if (cond_value(e, c, c->op, raw, have))
            return 1;
    }
    return n == 0 ? cond_value(e, c, c->op, raw, 0) : 0;
}

/* ---- values ------------------------------------------------------------------------- */

/* Appends to the arena; the common case (room left) stays inline. */
static inline void put(struct ev *e, const void *p, size_t n)
{
    struct buf *a = &e->r->arena;
    if (a->off + a->len + n <= a->cap && n) {
        memcpy(a->p + a->off + a->len, p, n);
        a->len += n;
    } else if (buf_append(a, p, n) != 0) {
        e->full = 1;
    }
}

/* Decodes a raw view into the arena: a plain value is copied as it is,
 * anything else goes through hl7_decode (escapes, charset, invalid UTF-8). */
static __attribute__((noinline)) void put_decoded_slow(struct ev *e, struct hl7_slice raw)
{
    if (plain(e, raw)) {
        put(e, raw.p, raw.len);
        return;
    }
    if (hl7_decode(e->m, raw, &e->r->arena) != 0)
        e->full = 1;
}

EV_HOT void put_decoded(struct ev *e, struct hl7_slice raw)
{
#if defined(__SSE2__)
    /* Most values are short: one load both tests and copies them (the
     * store may write past the value into the arena's spare room, which
     * the next value overwrites). */
    struct buf *a = &e->r->arena;
    if (raw.len <= 16 && (size_t)(e->lim - raw.p) >= 16 && a->cap - a->off - a->len >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)raw.p);
        __m128i esc = _mm_cmpeq_epi8(x, _mm_set1_epi8((char)e->esc));
        unsigned bad = (unsigned)(_mm_movemask_epi8(x) | _mm_movemask_epi8(esc));
        if (!(bad & ((1u << raw.len) - 1u)) &&
            !(raw.len == 2 && raw.p[0] == '"' && raw.p[1] == '"')) {
            _mm_storeu_si128((__m128i *)(void *)(a->p + a->off + a->len), x);
            a->len += raw.len;
            return;
        }
    }
#endif
    put_decoded_slow(e, raw);
}

static inline int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Minutes for `amount` in `units` (empty = minutes); -1 when unknown. */
static int64_t to_minutes(const uint8_t *a, size_t alen, const uint8_t *u, size_t ulen)
{
    uint64_t whole = 0, frac = 0, scale = 1;
    size_t dot = alen;
    for (size_t i = 0; i < alen; i++)
        if (a[i] == '.') {
            dot = i;
            break;
        }
    if (num_parse_u64(a, dot, 100000000, &whole) != 0)
        return -1;
    if (dot < alen) {
        size_t fl = alen - dot - 1;
        if (fl > 6 || (fl && num_parse_u64(a + dot + 1, fl, 999999, &frac) != 0))
            return -1;
        for (size_t i = 0; i < fl; i++)
            scale *= 10;
    }
    char unit[16];
    size_t n = 0;
    for (size_t i = 0; i < ulen && n + 1 < sizeof unit; i++) {
        uint8_t c = u[i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c - 'A' + 'a');
        unit[n++] = (char)c;
    }
    unit[n] = 0;
    if (ulen >= sizeof unit)
        return -1;
    uint64_t secs_per; /* seconds per unit */
    static const struct {
        const char *name;
        uint64_t secs;
    } units[] = {{"", 60},        {"m", 60},      {"min", 60},  {"mins", 60},   {"minute", 60},
                 {"minutes", 60}, {"s", 1},       {"sec", 1},   {"secs", 1},    {"second", 1},
                 {"seconds", 1},  {"h", 3600},    {"hr", 3600}, {"hrs", 3600},  {"hour", 3600},
                 {"hours", 3600}, {"d", 86400},   {"day", 86400}, {"days", 86400}};
    size_t i;
    for (i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strlen(units[i].name) == n && memcmp(unit, units[i].name, n) == 0)
            break;
    if (i == sizeof units / sizeof units[0])
        return -1;
    secs_per = units[i].secs;
    uint64_t secs = whole * secs_per + (frac * secs_per + scale / 2) / scale;
    return (int64_t)((secs + 30) / 60);
}

static void eval_val(struct ev *e, const struct mp_val *v);
static void replace_tail(struct ev *e, size_t start, const void *p, size_t n);

static void eval_inner(struct ev *e, const struct mp_val *v)
{
    struct buf *a = &e->r->arena;
    size_t start = a->len;
    struct hl7_slice raw;
    switch (v->op) {
    case MP_V_LIT:
        put(e, v->lit.p, v->lit.len);
        break;
    case MP_V_FIELD:
        if (get_raw(e, &v->path, &raw))
            put_decoded(e, raw);
        break;
    case MP_V_TEMPLATE: {
        int any = 0;
        for (size_t i = 0; i < v->n_kids; i++) {
            const struct mp_val *k = &v->kids[i];
            if (k->op == MP_V_LIT) {
                put(e, k->lit.p, k->lit.len);
                continue;
            }
            size_t before = a->len;
            if (get_raw(e, &k->path, &raw))
                put_decoded(e, raw);
            if (a->len > before)
                any = 1;
        }
        if (!any) /* a template of empty fields is empty, so `first` moves on */
            a->len = start;
        break;
    }
    case MP_V_LOOKUP: {
        /* the key is built at the tail, then replaced by its value */
        eval_val(e, &v->kids[0]);
        const char *val;
        size_t vlen;
        if (e->full)
            break;
        if (a->len > start &&
            mp_table_get(v->table, buf_data(a) + start, a->len - start, &val, &vlen) == 0)
            replace_tail(e, start, val, vlen);
        else
            a->len = start;
        break;
    }
    case MP_V_FIRST:
        for (size_t i = 0; i < v->n_kids && a->len == start && !e->full; i++)
            eval_val(e, &v->kids[i]);
        break;
    }
}

static void replace_tail(struct ev *e, size_t start, const void *p, size_t n)
{
    e->r->arena.len = start;
    put(e, p, n);
}

/* Removes leading and trailing blanks of the value at [start, len). */
static inline void trim_tail(struct buf *a, size_t start)
{
    uint8_t *d = buf_data(a);
    size_t b = start, t = a->len;
    while (b < t && is_ws(d[b]))
        b++;
    while (t > b && is_ws(d[t - 1]))
        t--;
    if (b > start)
        memmove(d + start, d + b, t - b);
    a->len = start + (t - b);
}

static void eval_mods(struct ev *e, const struct mp_val *v);

/* A value without modifiers (most columns) skips their checks. */
static void eval_val(struct ev *e, const struct mp_val *v)
{
    if (v->mods) {
        eval_mods(e, v);
        return;
    }
    struct buf *a = &e->r->arena;
    size_t start = a->len;
    if (v->op == MP_V_FIELD) { /* the most common value: one field, inline */
        struct hl7_slice raw;
        if (get_raw(e, &v->path, &raw))
            put_decoded(e, raw);
    } else {
        eval_inner(e, v);
    }
    if (v->trim && a->len > start && !e->full) {
        const uint8_t *d = buf_data(a);
        if (is_ws(d[start]) || is_ws(d[a->len - 1]))
            trim_tail(a, start);
    }
}

static void eval_mods(struct ev *e, const struct mp_val *v)
{
    struct buf *a = &e->r->arena;
    size_t start = a->len;
    if (v->n_where) {
        long seg = e->r->segidx[v->where_field.slot];
        unsigned n = seg >= 0 ? hl7_rep_count(e->m, &v->where_field.p, seg) : 0;
        int oslot = e->wslot;
        unsigned ofield = e->wfield, orep = e->wrep;
        e->wslot = v->where_field.slot;
        e->wfield = v->where_field.p.field;
        for (unsigned k = 1; k <= n && a->len == start && !e->full; k++) {
            int ok = 1;
            for (size_t i = 0; i < v->n_where && ok; i++)
                ok = cond_true(e, &v->where[i], k);
            if (!ok)
                continue;
            e->wrep = k;
            eval_inner(e, v);
            if (v->trim) { /* a blank repetition does not count */
                size_t j = start;
                while (j < a->len && is_ws(buf_data(a)[j]))
                    j++;
                if (j == a->len)
                    a->len = start;
            }
        }
        e->wslot = oslot;
        e->wfield = ofield;
        e->wrep = orep;
    } else {
        eval_inner(e, v);
    }
    if (e->full)
        return;
    if (v->trim && a->len > start)
        trim_tail(a, start);
    uint8_t *d = buf_data(a);
    if (v->kase != MP_CASE_KEEP) {
        for (size_t i = start; i < a->len; i++) {
            uint8_t c = d[i];
            if (v->kase == MP_CASE_UPPER && c >= 'a' && c <= 'z')
                d[i] = (uint8_t)(c - 32);
            else if (v->kase == MP_CASE_LOWER && c >= 'A' && c <= 'Z')
                d[i] = (uint8_t)(c + 32);
        }
    }
    if (v->map && a->len > start) {
        int k = str_find(v->map->keys, v->map->n, d + start, a->len - start);
        if (k >= 0)
            replace_tail(e, start, v->map->vals[k].p, v->map->vals[k].len);
        else if (v->map->has_fallback)
            replace_tail(e, start, v->map->fallback.p, v->map->fallback.len);
    }
    if (v->dt != MP_DT_NONE && a->len > start) {
        int64_t t;
        char out[160];
        size_t n = 0;
        if (mp_dtm_parse(e->mp->tz, buf_data(a) + start, a->len - start, &t) == 0) {
            if (v->dt == MP_DT_EPOCH)
                n = num_format_i64(out, t);
            else if (v->dt == MP_DT_ISO)
                n = mp_time_format(t, MAPPING_DEFAULT_DATE_FORMAT, 1, out, sizeof out);
            else
                n = mp_time_format(t, e->mp->date_format, e->mp->iso_default, out, sizeof out);
        }
        replace_tail(e, start, out, n); /* not a date-time → empty */
    }
    if (v->units && a->len > start) {
        size_t ustart = a->len;
        eval_val(e, v->units);
        if (e->full)
            return;
        d = buf_data(a);
        int64_t mins = to_minutes(d + start, ustart - start, d + ustart, a->len - ustart);
        char out[32];
        size_t n = mins >= 0 ? num_format_i64(out, mins) : 0;
        replace_tail(e, start, out, n);
    }
    if (v->has_dflt && a->len == start)
        put(e, v->dflt.p, v->dflt.len);
}

/* ---- rows ---------------------------------------------------------------------------- */

static void fill_location(struct ev *e, const struct mp_path *src, struct hl7_err *err)
{
    if (!src)
        return;
    memcpy(err->seg, src->p.seg, 4);
    const struct mp_segref *sr = &e->rule->segrefs[src->slot];
    err->seg_seq = sr->nth ? sr->nth : e->row_ordinal;
    err->field = src->p.field;
    err->rep = src->p.rep > 0 ? (unsigned)src->p.rep : 0;
    err->comp = src->p.comp;
    err->sub = src->p.sub;
    long seg = e->r->segidx[src->slot];
    if (seg >= 0) {
        struct hl7_slice all = hl7_msg_bytes(e->m), st = hl7_seg_text(e->m, (size_t)seg);
        if (st.p >= all.p && st.p <= all.p + all.len)
            err->offset = (size_t)(st.p - all.p);
    }
}

static void missing(struct ev *e, unsigned outcol, const struct mp_val *v)
{
    struct mapping_result *r = e->r;
    char where[48] = "no source field";
    if (v && v->src) {
        hl7_path_format(&v->src->p, where, sizeof where);
        const struct mp_segref *sr = &e->rule->segrefs[v->src->slot];
        if (e->rule->for_each[0] && sr->nth == 0) {
            size_t l = strlen(where);
            snprintf(where + l, sizeof where - l, " in %s #%u", e->rule->for_each,
                     e->row_ordinal);
        }
    }
    snprintf(r->reason, sizeof r->reason, "mandatory column '%s' is empty (%s; rule '%s')",
             e->mp->headers[outcol], where, e->rule->name);
    if (e->rule->missing == MP_MISSING_REJECT) {
        r->outcome = MAPPING_REJECT;
        memset(&r->err, 0, sizeof r->err);
        r->err.code = HL7_E_REQUIRED_MISSING;
        fill_location(e, v ? v->src : NULL, &r->err);
        snprintf(r->err.text, sizeof r->err.text, "required field missing for column '%s' (%s)",
                 e->mp->headers[outcol], where);
    } else {
        r->outcome = MAPPING_QUARANTINE;
    }
}

/* Why a message is quarantined for want of a user (no PHI: paths only). */
static void unresolved_reason(struct ev *e, const struct mp_val *v)
{
    char where[48] = "no source field";
    if (v && v->src)
        hl7_path_format(&v->src->p, where, sizeof where);
    snprintf(e->r->reason, sizeof e->r->reason,
             "no resolved user for column '%s' (%s; rule '%s')",
             mp_cols[e->mp->user_col].key, where, e->rule->name);
}

static int finish_cell(struct ev *e, struct mp_cell *c, size_t start)
{
    struct buf *a = &e->r->arena;
    c->off = (uint32_t)start;
    c->len = (uint32_t)(a->len - start);
    put(e, "", 1); /* NUL terminator, not counted */
    return e->full ? -1 : 0;
}

/* One row for the current for_each instance; -1 when the message is decided
 * (reject/quarantine) or the arena is full. */
static int eval_row(struct ev *e)
{
    struct mapping_result *r = e->r;
    size_t need = (r->nrows + 1) * r->ncols;
    if (need > r->cells_cap) {
        size_t ncap = r->cells_cap ? r->cells_cap * 2 : 64;
        while (ncap < need)
            ncap *= 2;
        struct mp_cell *nc = realloc(r->cells, ncap * sizeof *nc);
        if (!nc) {
            e->full = 1;
            return -1;
        }
        r->cells = nc;
        r->cells_cap = ncap;
    }
    struct mp_cell *row = r->cells + r->nrows * r->ncols;
    size_t row_start = r->arena.len;
    /* The user first: a row without one is dropped (or the message kept
     * aside) before its other columns could quarantine it. */
    struct mp_cell user = {0};
    int have_user = 0;
    const struct mp_val *uv = e->rule->cols[e->mp->user_col];
    if (e->rule->unresolved != MAPPING_UNRESOLVED_KEEP) {
        size_t start = r->arena.len;
        eval_val(e, uv);
        if (e->full)
            return -1;
        if (r->arena.len == start) {
            r->unresolved++;
            r->arena.len = row_start;
            if (e->rule->unresolved == MAPPING_UNRESOLVED_FILTER)
                return 0;
            unresolved_reason(e, uv);
            r->outcome = MAPPING_QUARANTINE;
            return -1;
        }
        if (finish_cell(e, &user, start) != 0)
            return -1;
        have_user = 1;
    }
    for (unsigned k = 0; k < r->ncols; k++) {
        unsigned c = e->mp->colmap[k];
        const struct mp_val *v = e->rule->cols[c];
        size_t start = r->arena.len;
        if (have_user && (int)c == e->mp->user_col) {
            row[k] = user;
            continue;
        }
        if (v)
            eval_val(e, v);
        if (e->full)
            return -1;
        if ((int)c == e->mp->user_col && v && r->arena.len == start)
            r->unresolved++; /* on_unresolved_user: keep — counted, then as any column */
        if (mp_cols[c].mandatory && r->arena.len == start) {
            if (e->rule->missing != MP_MISSING_DEFAULT) {
                missing(e, k, v);
                return -1;
            }
            put(e, e->rule->missing_value.p, e->rule->missing_value.len);
        }
        if (finish_cell(e, &row[k], start) != 0)
            return -1;
    }
    r->nrows++;
    return 0;
}

static int slice_is(struct hl7_slice s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.p, lit, n) == 0;
}

static int rule_selects(struct ev *e, const struct mp_rule *rule, const struct hl7_header *h,
                        int *type_seen)
{
    int ok = 0;
    for (size_t i = 0; i < rule->n_match && !ok; i++) {
        const struct mp_match *mt = &rule->match[i];
        if (mt->type[0] && !slice_is(h->msg_type, mt->type))
            continue;
        *type_seen = 1;
        if (mt->trigger[0] && !slice_is(h->trigger, mt->trigger))
            continue;
        ok = 1;
    }
    if (!ok)
        return 0;
    e->rule = rule;
    e->split_ok = 0; /* split keys are per rule */
    resolve_segments(e, rule);
    for (size_t i = 0; i < rule->n_when; i++)
        if (!cond_true(e, &rule->when[i], 0))
            return 0;
    return 1;
}

/* Printable copy of a short wire token for reasons (no PHI in MSH-9). */
static void token(char *out, size_t cap, struct hl7_slice s)
{
    size_t n = 0;
    for (size_t i = 0; i < s.len && n + 1 < cap && i < 7; i++) {
        uint8_t c = s.p[i];
        out[n++] = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
                       ? (char)c
                       : '?';
    }
    out[n] = 0;
}

static int decide_full(struct mapping_result *r)
{
    r->outcome = MAPPING_REJECT;
    r->nrows = 0;
    r->has_appt = 0;
    memset(&r->err, 0, sizeof r->err);
    r->err.code = HL7_E_INTERNAL;
    snprintf(r->err.text, sizeof r->err.text, "mapped output exceeds the size limit");
    snprintf(r->reason, sizeof r->reason, "mapped output exceeds the size limit");
    return r->outcome;
}

int mapping_eval(const struct mapping *mp, const struct hl7_msg *msg, struct mapping_result *r)
{
    struct ev e = {.mp = mp, .m = msg, .r = r, .wslot = -1};
    const struct hl7_delims *dl = hl7_msg_delims(msg);
    e.esc = dl->esc;
    struct hl7_slice all = hl7_msg_bytes(msg);
    e.lim = all.p + all.len;
    e.d_rep = dl->rep;
    e.d_comp = dl->comp;
    e.d_sub = dl->sub;
    r->outcome = MAPPING_ROWS;
    r->rule = NULL;
    r->nrows = 0;
    r->ncols = mp->ncols;
    r->has_appt = 0;
    r->unresolved = 0;
    r->reason[0] = 0;
    memset(&r->err, 0, sizeof r->err);
    buf_reset(&r->arena);
    /* offset 0 holds an empty string for absent appointment facts */
    put(&e, "", 1);

    const struct hl7_header *h = hl7_msg_header(msg);
    int type_seen = 0;
    const struct mp_rule *rule = NULL;
    for (size_t i = 0; i < mp->n_rules && !rule; i++)
        if (rule_selects(&e, &mp->rules[i], h, &type_seen))
            rule = &mp->rules[i];
    if (e.full)
        return decide_full(r);
    if (!rule) {
        char ty[8], tr[8];
        token(ty, sizeof ty, h->msg_type);
        token(tr, sizeof tr, h->trigger);
        snprintf(r->reason, sizeof r->reason, "no mapping rule selects %s^%s", ty, tr);
        if (mp->unmatched == MAPPING_UNMATCHED_REJECT) {
            r->outcome = MAPPING_REJECT;
            r->err.code = type_seen ? HL7_E_UNSUPPORTED_EVENT : HL7_E_UNSUPPORTED_TYPE;
            memcpy(r->err.seg, "MSH", 4);
            r->err.seg_seq = 1;
            r->err.field = 9;
            r->err.comp = type_seen ? 2 : 1;
            snprintf(r->err.text, sizeof r->err.text, "%.150s", r->reason);
        } else {
            r->outcome = MAPPING_FILTERED;
        }
        return r->outcome;
    }
    r->rule = rule;
    e.rule = rule;
    if (rule->has_columns) {
        if (rule->for_each[0]) {
            size_t nseg = hl7_seg_count(msg);
            long first = r->segidx[rule->for_each_slot];
            for (size_t i = first >= 0 ? (size_t)first : nseg; i < nseg; i++) {
                struct hl7_slice id = hl7_seg_id(msg, i);
                if (id.len != 3 || memcmp(id.p, rule->for_each, 3) != 0)
                    continue;
                if (r->nrows >= MP_MAX_ROWS) {
                    e.full = 1;
                    break;
                }
                r->segidx[rule->for_each_slot] = (long)i;
                e.row_ordinal++;
                if (eval_row(&e) != 0)
                    break;
            }
            if (first >= 0)
                r->segidx[rule->for_each_slot] = first;
        } else {
            e.row_ordinal = 1;
            (void)eval_row(&e);
        }
        if (e.full)
            return decide_full(r);
        if (r->outcome != MAPPING_ROWS) {
            r->nrows = 0;
            /* A quarantined message keeps its appointment facts: the
             * patient's texts do not depend on the connector's columns. */
            if (r->outcome != MAPPING_QUARANTINE || !rule->has_appt)
                return r->outcome;
        }
    }
    if (rule->has_appt) {
        e.row_ordinal = 1;
        for (int f = 0; f < MAPPING_APPT_N; f++) {
            size_t start = r->arena.len;
            struct hl7_slice cv;
            if (f == MAPPING_APPT_CONSENT && mp->has_consent_path) {
                if (hl7_get(msg, &mp->consent_path, -1, &cv) && hl7_decode(msg, cv, &r->arena) != 0)
                    e.full = 1;
            } else if (rule->appt[f]) {
                eval_val(&e, rule->appt[f]);
            }
            if (finish_cell(&e, &r->appt[f], start) != 0)
                return decide_full(r);
        }
        r->has_appt = 1;
    }
    if (r->nrows == 0 && !r->has_appt) {
        r->outcome = MAPPING_FILTERED;
        if (r->unresolved) {
            char where[48] = "no source field";
            const struct mp_val *uv = rule->cols[mp->user_col];
            if (uv && uv->src)
                hl7_path_format(&uv->src->p, where, sizeof where);
            snprintf(r->reason, sizeof r->reason, "no resolved user (%s; rule '%s')", where,
                     rule->name);
        } else {
            snprintf(r->reason, sizeof r->reason, "rule '%s' produced no row", rule->name);
        }
    }
    return r->outcome;
}

/* ---- accessors -------------------------------------------------------------------------- */

enum mapping_outcome mapping_result_outcome(const struct mapping_result *r) { return r->outcome; }

const char *mapping_result_rule(const struct mapping_result *r)
{
    return r->rule ? r->rule->name : "";
}

size_t mapping_result_row_count(const struct mapping_result *r) { return r->nrows; }

const char *mapping_result_value(const struct mapping_result *r, size_t row, size_t col,
                                 size_t *len)
{
    if (row >= r->nrows || col >= r->ncols) {
        if (len)
            *len = 0;
        return "";
    }
    const struct mp_cell *c = &r->cells[row * r->ncols + col];
    if (len)
        *len = c->len;
    return (const char *)buf_data(&r->arena) + c->off;
}

const struct hl7_err *mapping_result_err(const struct mapping_result *r) { return &r->err; }

const char *mapping_result_reason(const struct mapping_result *r) { return r->reason; }

size_t mapping_result_unresolved(const struct mapping_result *r, enum mapping_unresolved *action)
{
    if (action)
        *action = r->rule ? r->rule->unresolved : MAPPING_UNRESOLVED_KEEP;
    return r->unresolved;
}

int mapping_result_has_appt(const struct mapping_result *r) { return r->has_appt; }

const char *mapping_result_appt(const struct mapping_result *r, enum mapping_appt_field f)
{
    if (!r->has_appt || (unsigned)f >= MAPPING_APPT_N)
        return NULL;
    return (const char *)buf_data(&r->arena) + r->appt[f].off;
}

const char *mapping_result_appt_named(const struct mapping_result *r, const char *name)
{
    for (int f = 0; f < MAPPING_APPT_N; f++)
        if (strcmp(name, mapping_appt_field_name((enum mapping_appt_field)f)) == 0)
            return mapping_result_appt(r, (enum mapping_appt_field)f);
    return NULL;
}

int mapping_result_appt_i64(const struct mapping_result *r, enum mapping_appt_field f,
                            int64_t *out)
{
    const char *s = mapping_result_appt(r, f);
    if (!s || !*s)
        return -1;
    return num_parse_i64((const uint8_t *)s, r->appt[f].len, INT64_MIN, INT64_MAX, out);
}

int mapping_dtm_to_utc(const struct mapping *mp, const uint8_t *p, size_t len, int64_t *out)
{
    return mp_dtm_parse(mp->tz, p, len, out);
}
