/* hl7/decode.c — escape sequences and character sets, decoded on access.
 *
 * hl7_decode turns a raw view into UTF-8 text in two stages fused into one
 * pass: escape sequences are resolved to bytes (still in the message's
 * charset, as HL7 defines \Xhh\ to be), and those bytes go through a small
 * streaming converter to UTF-8.  Output is staged in a stack buffer and
 * appended in chunks, so a ceiling on `out` is only hit when the decoded
 * text really exceeds it.  Anything malformed (a lone escape character, an
 * unknown sequence, a bad UTF-8 byte) degrades to literal text or U+FFFD;
 * nothing here fails except a full `out`.
 *
 * Any thread; no state outside the call. */
#include "hl7/hl7_int.h"

#include <string.h>

/* ---- charset names (HL7 table 0211) ----------------------------------- */

struct cs_name {
    const char *name;
    size_t len; /* compared first: most names differ in length */
    enum hl7_charset cs;
};

#define CS(lit, cs) {(lit), sizeof(lit) - 1, (cs)}

/* Converted sets first; the rest are legal names we pass through.  "8859"
 * without a part number, "UTF-8" and the DICOM-style "ISO IR100" are not in
 * table 0211 but are what some senders write for the obvious set. */
static const struct cs_name cs_names[] = {
    CS("ASCII", HL7_CS_ASCII),          CS("ISO IR6", HL7_CS_ASCII),
    CS("8859/1", HL7_CS_LATIN1),        CS("8859", HL7_CS_LATIN1),
    CS("ISO IR100", HL7_CS_LATIN1),     CS("8859/15", HL7_CS_LATIN15),
    CS("UNICODE UTF-8", HL7_CS_UTF8),   CS("UTF-8", HL7_CS_UTF8),
    CS("8859/2", HL7_CS_UNSUPPORTED),   CS("8859/3", HL7_CS_UNSUPPORTED),
    CS("8859/4", HL7_CS_UNSUPPORTED),   CS("8859/5", HL7_CS_UNSUPPORTED),
    CS("8859/6", HL7_CS_UNSUPPORTED),   CS("8859/7", HL7_CS_UNSUPPORTED),
    CS("8859/8", HL7_CS_UNSUPPORTED),   CS("8859/9", HL7_CS_UNSUPPORTED),
    CS("ISO IR14", HL7_CS_UNSUPPORTED), CS("ISO IR87", HL7_CS_UNSUPPORTED),
    CS("ISO IR159", HL7_CS_UNSUPPORTED), CS("GB 18030-2000", HL7_CS_UNSUPPORTED),
    CS("KS X 1001", HL7_CS_UNSUPPORTED), CS("CNS 11643-1992", HL7_CS_UNSUPPORTED),
    CS("BIG-5", HL7_CS_UNSUPPORTED),    CS("UNICODE", HL7_CS_UNSUPPORTED),
    CS("UNICODE UTF-16", HL7_CS_UNSUPPORTED), CS("UNICODE UTF-32", HL7_CS_UNSUPPORTED),
};

static int name_eq(struct hl7_slice s, const char *lit)
{
    size_t i = 0;
    for (; i < s.len; i++) {
        uint8_t c = s.p[i];
        if (c >= 'a' && c <= 'z')
            c = (uint8_t)(c - 32);
        if (lit[i] == '\0' || (uint8_t)lit[i] != c)
            return 0;
    }
    return lit[i] == '\0';
}

enum hl7_charset hl7__charset_from(struct hl7_slice name, int *unknown)
{
    *unknown = 0;
    if (name.len == 0)
        return HL7_CS_ASCII;
    for (size_t i = 0; i < sizeof cs_names / sizeof cs_names[0]; i++)
        if (name.len == cs_names[i].len && name_eq(name, cs_names[i].name))
            return cs_names[i].cs;
    *unknown = 1;
    return HL7_CS_UNSUPPORTED;
}

/* ---- staged UTF-8 output ---------------------------------------------- */

struct emitter {
    struct buf *out;
    enum hl7_charset cs;
    int failed;
    /* UTF-8 validation state carried across feeds. */
    unsigned need, npend;
    uint8_t lo, hi;
    uint8_t pend[4];
    size_t n;
    uint8_t tmp[512];
};

static void flush(struct emitter *e)
{
    if (e->n && !e->failed && buf_append(e->out, e->tmp, e->n) != 0)
        e->failed = 1;
    e->n = 0;
}

static void put(struct emitter *e, const uint8_t *p, size_t n)
{
    if (n > sizeof e->tmp - e->n)
        flush(e);
    if (n > sizeof e->tmp) {
        if (!e->failed && buf_append(e->out, p, n) != 0)
            e->failed = 1;
        return;
    }
    memcpy(e->tmp + e->n, p, n);
    e->n += n;
}

static void put1(struct emitter *e, uint8_t b)
{
    if (e->n == sizeof e->tmp)
        flush(e);
    e->tmp[e->n++] = b;
}

static void put_cp(struct emitter *e, uint32_t cp)
{
    uint8_t u[3];
    if (cp < 0x80) {
        put1(e, (uint8_t)cp);
    } else if (cp < 0x800) {
        u[0] = (uint8_t)(0xc0 | (cp >> 6));
        u[1] = (uint8_t)(0x80 | (cp & 0x3f));
        put(e, u, 2);
    } else {
        u[0] = (uint8_t)(0xe0 | (cp >> 12));
        u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (uint8_t)(0x80 | (cp & 0x3f));
        put(e, u, 3);
    }
}

static uint32_t latin15_cp(uint8_t b)
{
    switch (b) {
    case 0xa4: return 0x20ac;
    case 0xa6: return 0x160;
    case 0xa8: return 0x161;
    case 0xb4: return 0x17d;
    case 0xb8: return 0x17e;
    case 0xbc: return 0x152;
    case 0xbd: return 0x153;
    case 0xbe: return 0x178;
    default: return b;
    }
}

/* A byte that is not valid UTF-8: in a UTF-8 message it becomes U+FFFD; in
 * an undeclared ("ASCII") message it is most likely Latin-1 from a legacy
 * sender, and reading it so keeps names like Müller intact. */
static void bad_byte(struct emitter *e, uint8_t b)
{
    if (e->cs == HL7_CS_UTF8)
        put_cp(e, 0xfffd);
    else
        put_cp(e, b);
}

static void bad_pending(struct emitter *e)
{
    if (e->cs == HL7_CS_UTF8) {
        put_cp(e, 0xfffd); /* one replacement per maximal invalid subpart */
    } else {
        for (unsigned i = 0; i < e->npend; i++)
            put_cp(e, e->pend[i]);
    }
    e->npend = 0;
    e->need = 0;
}

static void utf8_byte(struct emitter *e, uint8_t b)
{
    if (e->need) {
        if (b >= e->lo && b <= e->hi) {
            e->pend[e->npend++] = b;
            e->lo = 0x80;
            e->hi = 0xbf;
            if (--e->need == 0) {
                put(e, e->pend, e->npend);
                e->npend = 0;
            }
            return;
        }
        bad_pending(e);
    }
    if (b < 0x80) {
        put1(e, b);
        return;
    }
    e->lo = 0x80;
    e->hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) {
        e->need = 1;
    } else if (b >= 0xe0 && b <= 0xef) {
        e->need = 2;
        if (b == 0xe0)
            e->lo = 0xa0; /* no overlongs */
        else if (b == 0xed)
            e->hi = 0x9f; /* no surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        e->need = 3;
        if (b == 0xf0)
            e->lo = 0x90;
        else if (b == 0xf4)
            e->hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        bad_byte(e, b);
        return;
    }
    e->pend[0] = b;
    e->npend = 1;
}

/* Feeds bytes in the message's charset. */
static void feed(struct emitter *e, const uint8_t *p, size_t n)
{
    size_t i = 0;
    switch (e->cs) {
    case HL7_CS_UNSUPPORTED:
        put(e, p, n);
        return;
    case HL7_CS_LATIN1:
    case HL7_CS_LATIN15:
        for (; i < n; i++) {
            if (p[i] < 0x80)
                put1(e, p[i]);
            else
                put_cp(e, e->cs == HL7_CS_LATIN15 ? latin15_cp(p[i]) : p[i]);
        }
        return;
    default:
        while (i < n) {
            if (e->need == 0 && p[i] < 0x80) {
                size_t j = i + 1;
                while (j < n && p[j] < 0x80)
                    j++;
                put(e, p + i, j - i);
                i = j;
                continue;
            }
            utf8_byte(e, p[i++]);
        }
        return;
    }
}

static void finish(struct emitter *e)
{
    if (e->need)
        bad_pending(e);
    flush(e);
}

/* ---- escape sequences -------------------------------------------------- */

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int all_hex(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return 0;
    return 1;
}

/* Formatting commands with an optional signed number argument. */
static int fmt_arg_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        i++;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* Handles the sequence whose content (between the escape characters) is
 * s[0..n).  Returns 1 when it was recognised (and emitted or dropped), 0
 * when it should be kept as literal text. */
static int escape_seq(struct emitter *e, const struct hl7_delims *d, const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    if (n == 1) {
        uint8_t c;
        switch (s[0]) {
        case 'F': c = d->field; break;
        case 'S': c = d->comp; break;
        case 'T': c = d->sub; break;
        case 'R': c = d->rep; break;
        case 'E': c = d->esc; break;
        case 'P':
            if (!d->trunc)
                return 0;
            c = d->trunc;
            break;
        case 'H': /* highlighting on/off: no meaning in plain text */
        case 'N':
            return 1;
        default:
            return 0;
        }
        feed(e, &c, 1);
        return 1;
    }
    switch (s[0]) {
    case 'X':
        if ((n - 1) % 2 || !all_hex(s + 1, n - 1))
            return 0;
        for (size_t i = 1; i < n; i += 2) {
            /* all_hex() above: both values are 0..15 */
            uint8_t b = (uint8_t)((unsigned)hexval(s[i]) << 4 | (unsigned)hexval(s[i + 1]));
            feed(e, &b, 1);
        }
        return 1;
    case 'C': /* single- and multi-byte charset switches: cannot be honoured */
    case 'M':
        return (n == 5 || n == 7) && all_hex(s + 1, n - 1);
    case 'Z': /* locally defined: meaningless to us */
        return 1;
    case '.':
        if (n < 3)
            return 0;
        if (s[1] == 'b' && s[2] == 'r' && n == 3) {
            uint8_t nl = '\n';
            feed(e, &nl, 1);
            return 1;
        }
        if (n == 3 && ((s[1] == 'c' && s[2] == 'e') || (s[1] == 'f' && s[2] == 'i') ||
                       (s[1] == 'n' && s[2] == 'f')))
            return 1;
        if (((s[1] == 's' && s[2] == 'p') || (s[1] == 'i' && s[2] == 'n') ||
             (s[1] == 't' && s[2] == 'i') || (s[1] == 's' && s[2] == 'k')) &&
            fmt_arg_ok(s + 3, n - 3))
            return 1;
        return 0;
    default:
        return 0;
    }
}

static const struct hl7_delims std_delims = {'|', '^', '~', '\\', '&', 0};

int hl7_decode(const struct hl7_msg *m, struct hl7_slice raw, struct buf *out)
{
    const struct hl7_delims *d = m && m->delims_ok ? &m->d : &std_delims;
    enum hl7_charset cs = m ? m->cs : HL7_CS_ASCII;
    if (raw.len == 0 || !raw.p || hl7_slice_is_null(raw))
        return 0;

    const uint8_t *p = raw.p;
    size_t n = raw.len;
    if (!memchr(p, d->esc, n)) {
        size_t i = 0;
        if (cs != HL7_CS_UNSUPPORTED)
            while (i < n && p[i] < 0x80)
                i++;
        if (cs == HL7_CS_UNSUPPORTED || i == n)
            return buf_append(out, p, n);
    }

    struct emitter e;
    e.out = out;
    e.cs = cs;
    e.failed = 0;
    e.need = e.npend = 0;
    e.lo = 0x80;
    e.hi = 0xbf;
    e.n = 0;

    size_t i = 0;
    while (i < n && !e.failed) {
        const uint8_t *o = memchr(p + i, d->esc, n - i);
        if (!o) {
            feed(&e, p + i, n - i);
            break;
        }
        size_t at = (size_t)(o - p);
        feed(&e, p + i, at - i);
        const uint8_t *c = memchr(o + 1, d->esc, n - at - 1);
        if (c && escape_seq(&e, d, o + 1, (size_t)(c - o - 1))) {
            i = (size_t)(c - p) + 1;
            continue;
        }
        /* Lone or unknown: keep the escape character literally and carry on
         * right after it, so a stray one cannot swallow a real sequence. */
        feed(&e, o, 1);
        i = at + 1;
    }
    finish(&e);
    return e.failed ? -1 : 0;
}

int hl7_escape(const struct hl7_delims *d, const uint8_t *p, size_t len, struct buf *out)
{
    if (!d)
        d = &std_delims;
    if (len == 0)
        return 0;
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        const char *code = NULL;
        if (c == d->field)
            code = "F";
        else if (c == d->comp)
            code = "S";
        else if (c == d->sub)
            code = "T";
        else if (c == d->rep)
            code = "R";
        else if (c == d->esc)
            code = "E";
        else if (d->trunc && c == d->trunc)
            code = "P";
        else if (c == '\r')
            code = "X0D";
        else if (c == '\n')
            code = ".br";
        if (!code)
            continue;
        if (buf_append(out, p + run, i - run) != 0 || buf_append(out, &d->esc, 1) != 0 ||
            buf_append_str(out, code) != 0 || buf_append(out, &d->esc, 1) != 0)
            return -1;
        run = i + 1;
    }
    return buf_append(out, p + run, len - run);
}
