/* hl7/ack.c — acknowledgement choice and ACK message construction.
 *
 * An ACK is written straight into the caller's buffer in one pass.  It uses
 * the sender's delimiters when they are usable for an ACK (none is a letter,
 * digit or one of . + - that our own fixed text holds: "MSA", "AA", "2.5",
 * the timestamp), else |^~\&.  Values echoed from the incoming message
 * (MSH-3/4 as receiver, MSH-9.2, MSH-10, MSH-11, MSH-12) are copied raw when
 * the delimiters are the sender's (they are already escaped with them), and
 * re-escaped for ours otherwise; a control byte in them is never echoed but
 * written as \Xhh\.  Our own text (application, facility, control id,
 * MSA-3, error text) goes through hl7_escape so no value can break the
 * message structure.  MSH-11 is echoed as it came, empty included; P is
 * written only when there was no MSH to echo.
 *
 * Version-dependent form (decided from MSH-12.1, 2.5 when unknown):
 *  - MSH-9 is ACK^<trigger>^ACK from v2.3.1 on (the message structure
 *    component exists there) and ACK^<trigger> before; with no trigger it is
 *    ACK^^ACK, or plain ACK before v2.3.1.
 *  - Errors: v2.5+ ERR-2 location (SEG^seq^field^rep^comp^sub, empty
 *    trailing parts left out), ERR-3 code^text^HL70357, ERR-4 E, and the
 *    caller's reason in ERR-8 (user message).  Before v2.5 the one field
 *    ERR-1 of type CM_ELD: SEG^seq^field^code&text&HL70357.
 *
 * Any thread; no state. */
#include "hl7/hl7_int.h"

#include "core/num.h"

#include <string.h>
#include <time.h>

static const struct hl7_delims std_delims = {'|', '^', '~', '\\', '&', 0};

static const char *const code_names[] = {"AA", "AE", "AR", "CA", "CE", "CR"};

const char *hl7_ack_code_name(enum hl7_ack_code c)
{
    return (unsigned)c < 6 ? code_names[c] : "AR";
}

int hl7_ack_code_parse(const uint8_t *p, size_t len, enum hl7_ack_code *out)
{
    if (!p || len != 2)
        return -1;
    for (unsigned i = 0; i < 6; i++)
        if (p[0] == (uint8_t)code_names[i][0] && p[1] == (uint8_t)code_names[i][1]) {
            if (out)
                *out = (enum hl7_ack_code)i;
            return 0;
        }
    return -1;
}

enum hl7_ack_code hl7_ack_choose(const struct hl7_msg *m, int enhanced, enum hl7_outcome o,
                                 int *send)
{
    int s = 1;
    enum hl7_ack_code c;
    if (!enhanced) {
        c = o == HL7_ACCEPT ? HL7_ACK_AA : o == HL7_ERROR ? HL7_ACK_AE : HL7_ACK_AR;
    } else {
        c = o == HL7_ACCEPT ? HL7_ACK_CA : o == HL7_ERROR ? HL7_ACK_CE : HL7_ACK_CR;
        struct hl7_slice a = m ? m->h.accept_ack : hl7__slice(NULL, 0);
        if (hl7_slice_eq(a, "NE"))
            s = 0;
        else if (hl7_slice_eq(a, "ER"))
            s = o != HL7_ACCEPT;
        else if (hl7_slice_eq(a, "SU"))
            s = o == HL7_ACCEPT;
        /* AL, empty or an unknown value: always, the safe default. */
    }
    if (send)
        *send = s;
    return c;
}

/* What an ACK echoes, whatever it acknowledges. */
struct ack_in {
    const struct hl7_delims *d;
    int raw_ok;      /* d are the sender's own: echoed values need no escaping */
    int have_header; /* an incoming header was read (else MSH-11 P, MSH-12 2.5) */
    struct hl7_slice recv_app, recv_fac, trigger, proc_id, version, echo_id;
};

static int plain(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           c == '.' || c == '+' || c == '-';
}

/* The sender's delimiters serve for the ACK unless one of them could be
 * read inside the fixed text an ACK holds. */
static const struct hl7_delims *ack_delims(const struct hl7_delims *d, int *raw_ok)
{
    *raw_ok = 0;
    if (!d || plain(d->field) || plain(d->comp) || plain(d->rep) || plain(d->esc) ||
        plain(d->sub) || (d->trunc && plain(d->trunc)))
        return &std_delims;
    *raw_ok = 1;
    return d;
}

struct w {
    struct buf *out;
    int failed;
};

static void raw(struct w *w, const void *p, size_t n)
{
    if (!w->failed && n && buf_append(w->out, p, n) != 0)
        w->failed = 1;
}

static void ch(struct w *w, uint8_t c) { raw(w, &c, 1); }
static void lit(struct w *w, const char *s) { raw(w, s, strlen(s)); }

/* An echoed value: raw when the delimiters are the sender's, control bytes
 * always as \Xhh\, and re-escaped for our delimiters otherwise. */
static void echo(struct w *w, const struct ack_in *in, struct hl7_slice s)
{
    static const char hex[] = "0123456789ABCDEF";
    const struct hl7_delims *d = in->d;
    size_t run = 0;
    if (s.len == 0)
        return; /* an absent value may be a NULL view */
    for (size_t i = 0; i < s.len; i++) {
        uint8_t c = s.p[i];
        int ctl = c < 0x20 || c == 0x7f;
        if (!ctl && (in->raw_ok || (c != d->field && c != d->comp && c != d->rep &&
                                    c != d->esc && c != d->sub && c != d->trunc)))
            continue;
        raw(w, s.p + run, i - run);
        run = i + 1;
        if (ctl) {
            uint8_t x[5] = {d->esc, 'X', (uint8_t)hex[c >> 4], (uint8_t)hex[c & 15], d->esc};
            raw(w, x, sizeof x);
        } else if (!w->failed && hl7_escape(d, &c, 1, w->out) != 0) {
            w->failed = 1;
        }
    }
    raw(w, s.p + run, s.len - run);
}

static void esc(struct w *w, const struct hl7_delims *d, const char *s)
{
    if (!w->failed && s && hl7_escape(d, (const uint8_t *)s, strlen(s), w->out) != 0)
        w->failed = 1;
}

static void num(struct w *w, unsigned v)
{
    char tmp[NUM_U64_DIGITS];
    if (v)
        raw(w, tmp, num_format_u64(tmp, v));
}

/* MSH-7 of every ACK: YYYYMMDDHHMMSS.mmm+0000.  The calendar part only
 * changes once a second, so each thread keeps the last one it formatted;
 * at tens of thousands of ACKs a second, gmtime and printf were a tenth of
 * the network thread's instructions. */
static void timestamp(struct w *w, int64_t ms)
{
    static _Thread_local int64_t cached_sec = INT64_MIN;
    static _Thread_local char cached[14];
    int64_t sec = ms / 1000, frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        sec--;
    }
    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (!gmtime_r(&t, &tm))
            memset(&tm, 0, sizeof tm);
        num_format_fixed(cached, (unsigned)(tm.tm_year + 1900) % 10000u, 4);
        num_format_fixed(cached + 4, (unsigned)tm.tm_mon + 1, 2);
        num_format_fixed(cached + 6, (unsigned)tm.tm_mday, 2);
        num_format_fixed(cached + 8, (unsigned)tm.tm_hour, 2);
        num_format_fixed(cached + 10, (unsigned)tm.tm_min, 2);
        num_format_fixed(cached + 12, (unsigned)tm.tm_sec, 2);
        cached_sec = sec;
    }
    char tmp[sizeof cached + 9];
    memcpy(tmp, cached, sizeof cached);
    tmp[14] = '.';
    num_format_fixed(tmp + 15, (unsigned)frac, 3);
    memcpy(tmp + 18, "+0000", 5);
    raw(w, tmp, sizeof tmp);
}

static void err_location(struct w *w, const struct hl7_delims *d, const struct hl7_err *e)
{
    if (!e->seg[0])
        return;
    unsigned parts[5] = {e->seg_seq, e->field, e->rep, e->comp, e->sub};
    int last = -1;
    for (int i = 0; i < 5; i++)
        if (parts[i])
            last = i;
    esc(w, d, e->seg);
    for (int i = 0; i <= last; i++) {
        ch(w, d->comp);
        num(w, parts[i]);
    }
}

static int ack_write(const struct ack_in *in, enum hl7_ack_code code, const char *text,
                     const struct hl7_err *err, const struct hl7_ack_ctx *ctx, struct buf *out)
{
    const struct hl7_delims *d = in->d;
    struct w w = {out, 0};
    unsigned ver = 0;
    struct hl7_slice vid = hl7_slice_piece(hl7_slice_piece(in->version, d->rep, 1), d->comp, 1);
    if (hl7__version_num(vid, &ver) != 0 || ver < 2001000u || ver >= 2009000u)
        ver = 2005000u;

    /* MSH */
    lit(&w, "MSH");
    ch(&w, d->field);
    ch(&w, d->comp);
    ch(&w, d->rep);
    ch(&w, d->esc);
    ch(&w, d->sub);
    if (d->trunc)
        ch(&w, d->trunc);
    ch(&w, d->field);
    esc(&w, d, ctx ? ctx->app : NULL);
    ch(&w, d->field);
    esc(&w, d, ctx ? ctx->facility : NULL);
    ch(&w, d->field);
    echo(&w, in, in->recv_app);
    ch(&w, d->field);
    echo(&w, in, in->recv_fac);
    ch(&w, d->field);
    timestamp(&w, ctx ? ctx->now_ms : 0);
    ch(&w, d->field);
    ch(&w, d->field);
    lit(&w, "ACK");
    if (ver >= 2003001u) {
        ch(&w, d->comp);
        echo(&w, in, in->trigger);
        ch(&w, d->comp);
        lit(&w, "ACK");
    } else if (in->trigger.len) {
        ch(&w, d->comp);
        echo(&w, in, in->trigger);
    }
    ch(&w, d->field);
    esc(&w, d, ctx ? ctx->control_id : NULL);
    ch(&w, d->field);
    if (in->have_header)
        echo(&w, in, in->proc_id);
    else
        lit(&w, "P");
    ch(&w, d->field);
    if (in->version.len)
        echo(&w, in, in->version);
    else
        lit(&w, "2.5");
    ch(&w, '\r');

    /* MSA */
    lit(&w, "MSA");
    ch(&w, d->field);
    lit(&w, hl7_ack_code_name(code));
    ch(&w, d->field);
    echo(&w, in, in->echo_id);
    if (text && text[0]) {
        ch(&w, d->field);
        esc(&w, d, text);
    }
    ch(&w, '\r');

    /* ERR */
    if (err) {
        lit(&w, "ERR");
        ch(&w, d->field);
        if (ver >= 2005000u) {
            ch(&w, d->field);
            err_location(&w, d, err);
            ch(&w, d->field);
            num(&w, (unsigned)err->code);
            if (err->code == 0)
                ch(&w, '0');
            ch(&w, d->comp);
            esc(&w, d, hl7__errcode_text(err->code));
            ch(&w, d->comp);
            lit(&w, "HL70357");
            ch(&w, d->field);
            ch(&w, 'E');
            if (err->text[0]) {
                for (int i = 0; i < 4; i++)
                    ch(&w, d->field);
                esc(&w, d, err->text);
            }
        } else {
            esc(&w, d, err->seg);
            ch(&w, d->comp);
            num(&w, err->seg_seq);
            ch(&w, d->comp);
            num(&w, err->field);
            ch(&w, d->comp);
            num(&w, (unsigned)err->code);
            if (err->code == 0)
                ch(&w, '0');
            ch(&w, d->sub);
            esc(&w, d, hl7__errcode_text(err->code));
            ch(&w, d->sub);
            lit(&w, "HL70357");
        }
        ch(&w, '\r');
    }
    return w.failed ? -1 : 0;
}

int hl7_ack_build(const struct hl7_msg *m, enum hl7_ack_code code, const char *text,
                  const struct hl7_err *err, const struct hl7_ack_ctx *ctx, struct buf *out)
{
    struct ack_in in;
    memset(&in, 0, sizeof in);
    in.d = ack_delims(m && m->delims_ok ? &m->d : NULL, &in.raw_ok);
    if (m && (m->nseg > 0 || m->h_recovered)) {
        in.have_header = 1;
        in.recv_app = m->h.send_app;
        in.recv_fac = m->h.send_fac;
        in.trigger = m->h.trigger;
        in.proc_id = m->h.processing_id;
        in.version = m->h.version;
        in.echo_id = m->h.control_id;
    }
    return ack_write(&in, code, text, err, ctx, out);
}

int hl7_ack_build_batch(const struct hl7_batch_iter *it, enum hl7_ack_code code, const char *text,
                        const struct hl7_err *err, const struct hl7_ack_ctx *ctx, struct buf *out)
{
    struct ack_in in;
    memset(&in, 0, sizeof in);
    in.d = ack_delims(it && it->d.comp ? &it->d : NULL, &in.raw_ok);
    if (it) {
        in.recv_app = it->send_app;
        in.recv_fac = it->send_fac;
        in.version = it->version;
        in.echo_id = it->batch_control_id;
    }
    return ack_write(&in, code, text, err, ctx, out);
}
