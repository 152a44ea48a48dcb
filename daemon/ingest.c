/* The ingest pipeline (network thread).
 *
 * A frame is parsed and validated at once.  A message that cannot be
 * accepted is answered at once (AR); one that can is copied into a store
 * message and queued for the writer thread.  The ACK for it is built only
 * when the writer reports the commit: AA (or CA) when stored, the original
 * code for a duplicate, AE "cannot store" when the commit failed.  Building
 * the ACK needs only the MSH segment, so each pending entry keeps a copy of
 * MSH rather than of the whole message.
 *
 * A batch (FHS/BHS … BTS/FTS) gets one acknowledgement: its members are
 * queued one by one, and the batch ACK is sent when the last of them is
 * answered: AA when all were accepted, AE naming how many were not.
 *
 * Pending entries live in a ring indexed by submission number: the writer
 * answers in submission order, so the ring is FIFO. */
#include "daemon/ingest.h"
#include "daemon/stats.h"
#include "core/clock.h"
#include "core/limits.h"
#include "core/log.h"
#include "core/num.h"
#include "mllp/mllp.h"

#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RESULTS_PER_TAKE 512
/* Keep this many queue places free: a batch of several messages is taken as
 * one frame. */
#define STORE_HEADROOM   64

struct batch {
    uint64_t conn_id, seq;
    uint8_t *envelope;   /* copy of the FHS/BHS lines (owned) */
    size_t envelope_len;
    unsigned outstanding; /* members queued and not yet answered */
    unsigned total, failed;
    int done_queuing;
    int enhanced;
    struct hl7_err first_err;
    int have_err;
    unsigned first_err_member; /* 1-based member that first_err is about */
    const char *count_note;    /* count_text when a BTS-1/FTS-1 count did not match */
    char count_text[160];
    const struct ingest_listener *il; /* for stats */
    uint64_t rx_ns;       /* frame arrival (clock_mono_ns), for stats */
    unsigned duplicates;  /* members the store found already stored */
};

struct pending {
    uint64_t conn_id, seq;
    uint8_t *msh;         /* copy of the MSH segment (owned) */
    size_t msh_len;
    struct batch *batch;  /* non-NULL for a batch member */
    unsigned member;      /* its 1-based place in the batch */
    const struct ingest_listener *il;
    uint64_t rx_ns;       /* frame arrival (clock_mono_ns), for stats */
    int kept;             /* a rejected message kept for the browser: already answered */
};

struct ingest {
    struct loop *loop;
    struct store *store;
    struct mllp_server *srv;
    struct ingest_opts o;
    struct hl7_msg *msg;    /* scratch index, reused for every frame */
    struct hl7_msg *ackmsg; /* scratch index for the MSH copies */
    struct buf ack;         /* scratch ACK text */
    struct mapping_result *mres; /* scratch mapping result */
    struct buf rows;        /* scratch formatted rows */
    struct buf content;     /* scratch: what duplicate detection compares */
    struct pending *ring;
    size_t ring_cap;
    uint64_t ring_head, ring_tail; /* submission numbers */
    uint64_t ack_counter;
    char ack_prefix[16];
    size_t ack_prefix_len;
    char ack_id[40];
    int draining;
    uint64_t next_hint_ms;
    uint64_t (*backlog)(const void *ud);
    const void *backlog_ud;
    uint64_t backlog_max;
    struct ingest_stats st;
    struct stats *stats;  /* NULL: monitoring off (and no clock reads for it) */
    /* The frame being answered, for stats: set when it arrives, and again
     * from its pending entry when the store's result comes back. */
    const struct ingest_listener *cur_il;
    uint64_t cur_rx_ns;
    int cur_dup;
};

/* ---- ACK helpers ---------------------------------------------------------- */

static const char *next_ack_id(struct ingest *in)
{
    /* prefix + counter, by hand: snprintf cost a thousand instructions a
     * message here. ack_id holds the 16-byte prefix, 20 digits and NUL. */
    size_t n = in->ack_prefix_len;
    memcpy(in->ack_id, in->ack_prefix, n);
    n += num_format_u64(in->ack_id + n, ++in->ack_counter);
    in->ack_id[n] = '\0';
    return in->ack_id;
}

static void ack_ctx(struct ingest *in, struct hl7_ack_ctx *ctx)
{
    ctx->app = in->o.application;
    ctx->facility = in->o.facility;
    ctx->control_id = next_ack_id(in);
    ctx->now_ms = clock_wall_ms();
}

/* Counts one single-message ACK (frame in cur_*).  The latency ends here,
 * when the code is decided: building and handing over the ACK that follows
 * takes a few microseconds, below the smallest histogram bucket. */
static void note_ack(struct ingest *in, const struct hl7_msg *m, enum hl7_ack_code code,
                     const struct hl7_err *err)
{
    uint64_t now = clock_mono_ns();
    uint64_t lat = in->cur_rx_ns && now > in->cur_rx_ns ? now - in->cur_rx_ns : 1;
    stats_record_msg(in->stats, in->cur_il ? in->cur_il->name : NULL, m, code,
                     err ? err->code : HL7_E_INTERNAL, in->cur_dup, lat);
}

/* Counts an ACK sent, and gives the node's totals (AA, AE, AR; the
 * enhanced-mode codes with them) to the store for its heartbeat. */
static void count_ack(struct ingest *in, enum hl7_ack_code code)
{
    uint64_t *a = in->st.acks;
    a[code]++;
    store_set_acks(in->store, a[HL7_ACK_AA] + a[HL7_ACK_CA], a[HL7_ACK_AE] + a[HL7_ACK_CE],
                   a[HL7_ACK_AR] + a[HL7_ACK_CR]);
}

/* Builds and sends the acknowledgement for message `m` with outcome `o`;
 * returns the code it chose. */
static enum hl7_ack_code answer(struct ingest *in, struct mllp_conn *c, uint64_t seq,
                                const struct hl7_msg *m, enum hl7_outcome o,
                                const char *code_override, const char *text,
                                const struct hl7_err *err)
{
    int send = 1;
    enum hl7_ack_code code = hl7_ack_choose(m, in->o.enhanced, o, &send);
    if (code_override) {
        enum hl7_ack_code oc;
        if (hl7_ack_code_parse((const uint8_t *)code_override, strlen(code_override), &oc) == 0)
            code = oc;
    }
    count_ack(in, code);
    if (in->stats)
        note_ack(in, m, code, err);
    if (!c)
        return code; /* the connection went away; the count still stands */
    if (!send) {
        (void)mllp_conn_reply(c, seq, NULL, 0);
        return code;
    }
    struct hl7_ack_ctx ctx;
    ack_ctx(in, &ctx);
    buf_reset(&in->ack);
    if (hl7_ack_build(m, code, text, err, &ctx, &in->ack) != 0) {
        /* Cannot happen with HL7_ACK_MAX_BYTES of room unless MSH is huge:
         * answer without the echoed fields rather than not at all. */
        buf_reset(&in->ack);
        if (hl7_ack_build(NULL, code, text, err, &ctx, &in->ack) != 0)
            return code;
    }
    (void)mllp_conn_reply(c, seq, buf_data(&in->ack), in->ack.len);
    return code;
}

static const char *outcome_text(enum hl7_outcome o)
{
    return o == HL7_ACCEPT ? "Message accepted" : o == HL7_ERROR ? "Message not accepted"
                                                                 : "Message rejected";
}

/* ---- logs of refusals and quarantines ------------------------------------ */

/* Field `n` (as in MSH-n, n >= 3) of the frame's first segment, first
 * `comps` components joined by '^', read straight from the bytes so it
 * works for frames that did not parse.  Only letters, digits and . _ - ^
 * are kept (others become '?', at most 48 bytes): these are system names
 * and ids, and the log line stays one key=value token. */
static void raw_msh_field(const uint8_t *p, size_t len, unsigned n, unsigned comps, char *out,
                          size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    if (len < 8 || memcmp(p, "MSH", 3) != 0)
        return;
    uint8_t fs = p[3], cs = p[4];
    unsigned f = 1, comp = 1;
    for (size_t i = 3; i < len && p[i] != '\r' && p[i] != '\n'; i++) {
        if (p[i] == fs) {
            if (++f > n)
                break;
            comp = 1;
            continue;
        }
        if (f != n)
            continue;
        if (p[i] == cs) {
            if (++comp > comps)
                continue;
        } else if (comp > comps) {
            continue;
        }
        if (o + 1 >= cap || o >= 48)
            break;
        uint8_t c = p[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-' || c == cs;
        out[o++] = c == cs ? '^' : ok ? (char)c : '?';
    }
    out[o] = 0;
}

/* One line for a message that is refused or kept aside: where it came from
 * (listener, peer), who sent it (MSH-3^MSH-4), what it is (MSH-9) and its
 * control id (MSH-10), so an analyst can find it; the reason names fields
 * and rules, never their content. */
static void log_msg(enum log_level lvl, const char *event, const struct ingest_listener *il,
                    struct mllp_conn *c, const uint8_t *p, size_t len, int code,
                    const char *reason)
{
    char sender[64], type[64], cid[64], why[240];
    raw_msh_field(p, len, 3, 1, sender, sizeof sender);
    size_t sl = strlen(sender);
    if (sl + 1 < sizeof sender) {
        sender[sl] = '^';
        raw_msh_field(p, len, 4, 1, sender + sl + 1, sizeof sender - sl - 1);
    }
    raw_msh_field(p, len, 9, 2, type, sizeof type);
    raw_msh_field(p, len, 10, 1, cid, sizeof cid);
    size_t w = 0;
    for (const char *r = reason ? reason : ""; *r && w + 1 < sizeof why; r++)
        why[w++] = *r == '"' || *r == '\\' || (unsigned char)*r < 0x20 ? '\'' : *r;
    why[w] = 0;
    log_event(lvl, event,
              "listener=%s peer=%s sender=%s type=%s control_id=%s code=%d reason=\"%s\"",
              il ? il->name : "", c ? mllp_conn_peer(c) : "", sender, type, cid, code, why);
}

/* ---- batches ------------------------------------------------------------- */

/* Counts a batch ACK for all its members, sender from BHS-3/BHS-4. */
static void note_batch(struct ingest *in, const struct batch *b, enum hl7_ack_code code)
{
    struct hl7_batch_iter it;
    struct hl7_err e;
    int ok = b->envelope && hl7_batch_begin(&it, b->envelope, b->envelope_len, &e) == 0;
    uint64_t now = clock_mono_ns();
    stats_record_batch(in->stats, b->il ? b->il->name : NULL, ok ? &it : NULL, code,
                       b->have_err ? b->first_err.code : HL7_E_INTERNAL, b->total, b->duplicates,
                       b->rx_ns && now > b->rx_ns ? now - b->rx_ns : 1);
}

/* Member `member` (1-based) of the batch was not stored. */
static void batch_fail(struct batch *b, unsigned member, const struct hl7_err *err)
{
    b->failed++;
    if (!b->have_err && err) {
        b->first_err = *err;
        b->first_err_member = member;
        b->have_err = 1;
    }
}

static void batch_finish(struct ingest *in, struct batch *b)
{
    struct mllp_conn *c = mllp_server_conn(in->srv, b->conn_id);
    struct hl7_batch_iter it;
    struct hl7_err e;
    enum hl7_ack_code code;
    char text[320];
    /* Exactly what is on disk: every member not failed is stored (new, or
     * already there from an earlier send). */
    unsigned stored = b->total - b->failed;
    int n;
    if (b->failed == 0) {
        code = b->enhanced ? HL7_ACK_CA : HL7_ACK_AA;
        n = snprintf(text, sizeof text, "Batch accepted: %u of %u messages stored", stored,
                     b->total);
    } else {
        code = b->enhanced ? HL7_ACK_CE : HL7_ACK_AE;
        n = snprintf(text, sizeof text,
                     "Batch: %u of %u messages stored, %u not accepted (first: message %u)",
                     stored, b->total, b->failed, b->first_err_member);
    }
    if (b->duplicates && n > 0 && (size_t)n < sizeof text)
        n += snprintf(text + n, sizeof text - (size_t)n, ", %u of them already received",
                      b->duplicates);
    if (b->count_note && n > 0 && (size_t)n < sizeof text)
        (void)snprintf(text + n, sizeof text - (size_t)n, "; warning: %s", b->count_note);
    count_ack(in, code);
    if (in->stats)
        note_batch(in, b, code);
    if (c) {
        struct hl7_ack_ctx ctx;
        ack_ctx(in, &ctx);
        buf_reset(&in->ack);
        int ok = hl7_batch_begin(&it, b->envelope, b->envelope_len, &e) == 0 &&
                 hl7_ack_build_batch(&it, code, text, b->have_err ? &b->first_err : NULL, &ctx,
                                     &in->ack) == 0;
        if (!ok) {
            buf_reset(&in->ack);
            ok = hl7_ack_build(NULL, code, text, b->have_err ? &b->first_err : NULL, &ctx,
                               &in->ack) == 0;
        }
        if (ok)
            (void)mllp_conn_reply(c, b->seq, buf_data(&in->ack), in->ack.len);
    }
    free(b->envelope);
    free(b);
}

static void batch_member_done(struct ingest *in, struct batch *b, unsigned member, int failed,
                              const struct hl7_err *err)
{
    if (failed)
        batch_fail(b, member, err);
    b->outstanding--;
    if (b->done_queuing && b->outstanding == 0)
        batch_finish(in, b);
}

/* ---- submission ------------------------------------------------------------ */

static char *dup_slice(struct hl7_slice s, size_t *len)
{
    uint8_t *p = malloc(s.len ? s.len : 1);
    if (p && s.len)
        memcpy(p, s.p, s.len);
    *len = s.len;
    return (char *)p;
}

/* What the rules made of a message, for the store. */
struct mapped {
    const uint8_t *rows;
    size_t rows_len;
    unsigned row_count;
    int quarantined;
    int filtered;
    const char *reason;
    int has_appt;                  /* appt holds the appointment facts */
    struct store_appt_facts appt;  /* strings point into in->mres */
};

/* The rules' appointment facts, in the store's terms.  Mapped here, once:
 * the SMS sink reads them from the store and never sees the message. */
static void take_appt(const struct mapping_result *r, struct store_appt_facts *out)
{
    static const struct { enum store_appt_text to; enum mapping_appt_field from; } text[] = {
        { STORE_APPT_ID, MAPPING_APPT_ID },
        { STORE_APPT_FACILITY, MAPPING_APPT_FACILITY },
        { STORE_APPT_EVENT, MAPPING_APPT_EVENT },
        { STORE_APPT_LOCATION, MAPPING_APPT_LOCATION },
        { STORE_APPT_PROVIDER, MAPPING_APPT_PROVIDER },
        { STORE_APPT_FIRST_NAME, MAPPING_APPT_FIRST_NAME },
        { STORE_APPT_PHONE, MAPPING_APPT_PHONE },
        { STORE_APPT_CONSENT, MAPPING_APPT_CONSENT },
        { STORE_APPT_LANGUAGE, MAPPING_APPT_LANGUAGE },
        { STORE_APPT_LINK, MAPPING_APPT_LINK },
    };
    _Static_assert(sizeof text / sizeof text[0] == STORE_APPT_NTEXT, "every stored fact mapped");
    for (size_t i = 0; i < sizeof text / sizeof text[0]; i++)
        out->text[text[i].to] = mapping_result_appt(r, text[i].from);
    if (mapping_result_appt_i64(r, MAPPING_APPT_EVENT_TIME, &out->event_time) < 0 ||
        out->event_time < 0)
        out->event_time = -1;
    if (mapping_result_appt_i64(r, MAPPING_APPT_START, &out->start_s) < 0 || out->start_s < 0)
        out->start_s = -1;
    if (mapping_result_appt_i64(r, MAPPING_APPT_DURATION, &out->duration_min) < 0 ||
        out->duration_min < 0)
        out->duration_min = -1;
}

static void note_appt(struct ingest *in, struct mapped *out)
{
    if (!in->o.appt_facts || !mapping_result_has_appt(in->mres))
        return;
    take_appt(in->mres, &out->appt);
    out->has_appt = 1;
}

/* Counts the rows of the last evaluation whose user stayed unresolved,
 * under the rule's name. */
static void note_unresolved(struct ingest *in)
{
    enum mapping_unresolved act;
    size_t n = mapping_result_unresolved(in->mres, &act);
    if (!n)
        return;
    const char *rule = mapping_result_rule(in->mres);
    struct ingest_stats *st = &in->st;
    unsigned i;
    for (i = 0; i < st->n_unresolved; i++)
        if (strcmp(st->unresolved[i].rule, rule) == 0)
            break;
    if (i == st->n_unresolved) {
        if (i == INGEST_MAX_RULE_STATS - 1) {
            rule = "other";
            for (i = 0; i < st->n_unresolved && strcmp(st->unresolved[i].rule, rule) != 0; i++)
                ;
        }
        if (i == st->n_unresolved) {
            snprintf(st->unresolved[i].rule, sizeof st->unresolved[i].rule, "%s", rule);
            st->n_unresolved++;
        }
    }
    st->unresolved[i].rows[act] += n;
    st->unresolved_users += n;
}

/* Runs the rules on the parsed message in in->msg.  Returns 0 with *out
 * filled (rows point into in->rows), or -1 when the rules reject the
 * message: *err then holds the ERR content. */
static int map_message(struct ingest *in, struct mapped *out, struct hl7_err *err)
{
    memset(out, 0, sizeof *out);
    if (!in->o.mapping)
        return 0;
    int oc = mapping_eval(in->o.mapping, in->msg, in->mres);
    note_unresolved(in);
    switch (oc) {
    case MAPPING_ROWS: {
        unsigned replaced = 0;
        buf_reset(&in->rows);
        if (mapping_format_rows(in->o.mapping, in->mres, in->o.format, in->o.eol, &in->rows,
                                &replaced) != 0) {
            hl7_err_set(err, HL7_E_INTERNAL, "", 0, 0, "mapped rows too large");
            return -1;
        }
        out->rows = buf_data(&in->rows);
        out->rows_len = in->rows.len;
        out->row_count = (unsigned)mapping_result_row_count(in->mres);
        in->st.rows += out->row_count;
        in->st.rows_replaced += replaced;
        note_appt(in, out);
        return 0;
    }
    case MAPPING_QUARANTINE:
        out->quarantined = 1;
        out->reason = mapping_result_reason(in->mres);
        in->st.quarantined++;
        note_appt(in, out); /* the audit outcome does not decide the texts */
        return 0;
    case MAPPING_REJECT: {
        const struct hl7_err *e = mapping_result_err(in->mres);
        if (e)
            *err = *e;
        else
            hl7_err_set(err, HL7_E_REQUIRED_MISSING, "", 0, 0, mapping_result_reason(in->mres));
        in->st.mapping_rejected++;
        return -1;
    }
    default:
        out->filtered = 1;
        out->reason = mapping_result_reason(in->mres);
        in->st.filtered++;
        note_appt(in, out);
        return 0;
    }
}

/* The MSH facts of a store message, views into the frame. */
static void header_fields(struct store_msg_fields *f, const struct hl7_header *h)
{
    f->send_app = h->send_app.p;
    f->send_app_len = h->send_app.len;
    f->send_fac = h->send_fac.p;
    f->send_fac_len = h->send_fac.len;
    f->control_id = h->control_id.p;
    f->control_id_len = h->control_id.len;
    f->msg_type = h->msg_type.p;
    f->msg_type_len = h->msg_type.len;
    f->trigger = h->trigger.p;
    f->trigger_len = h->trigger.len;
    f->version = h->version_id.p;
    f->version_len = h->version_id.len;
}

/* The content digest duplicate detection compares: the first 64 bits of
 * SHA-256 over hl7_msg_content (the message without MSH-7).  Cryptographic,
 * so no sender can make a new message pass for a re-send of another one;
 * 0 when the content cannot be gathered (every such message then counts
 * as the same content, the rule of the key alone). */
static uint64_t content_digest(struct ingest *in, const struct hl7_msg *m)
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    buf_reset(&in->content);
    if (hl7_msg_content(m, &in->content) != 0)
        return 0;
    SHA256(buf_data(&in->content), in->content.len, md);
    uint64_t d = 0;
    for (int i = 0; i < 8; i++)
        d = d << 8 | md[i];
    return d;
}

/* Queues a parsed, valid message.  Returns 0, or -1 (nothing queued; the
 * caller answers AE). */
static int submit(struct ingest *in, struct mllp_conn *c, uint64_t seq, const struct hl7_msg *m,
                  const struct ingest_listener *il, struct batch *b, const struct mapped *mp)
{
    if (in->ring_head - in->ring_tail >= in->ring_cap)
        return -1;
    const struct hl7_header *h = hl7_msg_header(m);
    struct hl7_slice raw = hl7_msg_bytes(m);
    int enhanced = in->o.enhanced;
    int dummy;
    enum hl7_ack_code code = hl7_ack_choose(m, enhanced, HL7_ACCEPT, &dummy);
    struct store_msg_fields f = {
        .raw = raw.p, .raw_len = raw.len,
        .listener = il->name,
        .peer = mllp_conn_peer(c),
        .ack_code = hl7_ack_code_name(code),
        .received_ms = clock_wall_ms(),
        .rows = mp->rows, .rows_len = mp->rows_len, .row_count = mp->row_count,
        .layout = mp->row_count ? in->o.layout : 0,
        .quarantined = mp->quarantined, .reason = mp->reason, .filtered = mp->filtered,
        .appt = mp->has_appt ? &mp->appt : NULL,
        .digest = content_digest(in, m),
    };
    header_fields(&f, h);
    struct store_msg *sm = store_msg_new(&f);
    if (!sm)
        return -1;
    struct pending *p = &in->ring[in->ring_head % in->ring_cap];
    memset(p, 0, sizeof *p);
    p->msh = (uint8_t *)dup_slice(hl7_seg_text(m, 0), &p->msh_len);
    if (!p->msh) {
        store_msg_free(sm);
        return -1;
    }
    p->conn_id = mllp_conn_id(c);
    p->seq = seq;
    p->batch = b;
    p->member = b ? b->total : 0;
    p->il = il;
    p->rx_ns = in->cur_rx_ns;
    if (store_submit(in->store, sm, in->ring_head) != 0) {
        free(p->msh);
        p->msh = NULL;
        return -1;
    }
    in->ring_head++;
    return 0;
}

/* ERR-2 style location of an error ("PID^1^5"), "" when it has none. */
static void err_where(const struct hl7_err *e, char *out, size_t cap)
{
    out[0] = '\0';
    if (!e || !e->seg[0])
        return;
    if (e->field)
        snprintf(out, cap, "%s^%u^%u", e->seg, e->seg_seq ? e->seg_seq : 1, e->field);
    else
        snprintf(out, cap, "%s^%u", e->seg, e->seg_seq ? e->seg_seq : 1);
}

/* Keeps a message answered AE/AR (code) in the store for the browser,
 * with the reason and ERR it got.  `m` is the message index when the
 * header could be read (an empty header otherwise), `raw` the frame as
 * received.  The answer has already gone out and does not wait for this:
 * the store's result only frees the entry.  Best effort: with the queue
 * full nothing is kept (counted). */
static void keep_rejected(struct ingest *in, struct mllp_conn *c, const struct ingest_listener *il,
                          const uint8_t *raw, size_t raw_len, const struct hl7_msg *m,
                          enum hl7_ack_code code, const char *reason, const struct hl7_err *err)
{
    if (code != HL7_ACK_AE && code != HL7_ACK_AR && code != HL7_ACK_CE && code != HL7_ACK_CR)
        return;
    if (in->ring_head - in->ring_tail >= in->ring_cap || store_space(in->store) == 0) {
        in->st.rejected_not_kept++;
        return;
    }
    static const struct hl7_header none;
    const struct hl7_header *h = m ? hl7_msg_header(m) : &none;
    char where[32];
    err_where(err, where, sizeof where);
    struct store_msg_fields f = {
        .raw = raw, .raw_len = raw_len,
        .listener = il ? il->name : "",
        .peer = c ? mllp_conn_peer(c) : "",
        .ack_code = hl7_ack_code_name(code),
        .received_ms = clock_wall_ms(),
        .rejected = 1,
        .reason = reason && reason[0] ? reason : (err && err->text[0] ? err->text : "rejected"),
        .err_code = err ? err->code : 0,
        .err_where = where,
    };
    header_fields(&f, h);
    struct store_msg *sm = store_msg_new(&f);
    if (!sm) {
        in->st.rejected_not_kept++;
        return;
    }
    struct pending *p = &in->ring[in->ring_head % in->ring_cap];
    memset(p, 0, sizeof *p);
    p->kept = 1;
    if (store_submit(in->store, sm, in->ring_head) != 0) {
        in->st.rejected_not_kept++;
        return;
    }
    in->ring_head++;
}

static void on_result(struct ingest *in, const struct store_result *r)
{
    if (r->tag != in->ring_tail) {
        /* The writer answers in order; anything else is a broken invariant. */
        log_error("ingest_result_out_of_order", "tag=%" PRIu64 " expected=%" PRIu64, r->tag,
                  in->ring_tail);
        abort();
    }
    struct pending *p = &in->ring[in->ring_tail % in->ring_cap];
    in->ring_tail++;
    if (p->kept) {
        if (r->status == STORE_STORED)
            in->st.rejected_kept++;
        else
            in->st.rejected_not_kept++;
        return;
    }
    in->cur_il = p->il;
    in->cur_rx_ns = p->rx_ns;
    in->cur_dup = r->status == STORE_DUPLICATE;
    if (p->batch && in->cur_dup)
        p->batch->duplicates++;
    struct hl7_err err;
    int parsed = hl7_msg_parse(in->ackmsg, p->msh, p->msh_len, NULL, &err) == 0;
    const struct hl7_msg *m = parsed ? in->ackmsg : NULL;
    struct hl7_err fail;
    hl7_err_set(&fail, HL7_E_INTERNAL, "", 0, 0, "cannot store message");

    if (r->status == STORE_DUPLICATE)
        in->st.duplicates++;
    if (r->status == STORE_STORED && r->key_reused) {
        /* Not a re-send: the sender reused a control id (a counter reset
         * on restart or daily) for a different message, which is stored. */
        in->st.control_id_reused++;
        struct hl7_slice cid = m ? hl7_msg_header(m)->control_id : (struct hl7_slice){NULL, 0};
        log_warn("control_id_reused", "listener=%s control_id=\"%.*s\" id=%lld",
                 p->il ? p->il->name : "", (int)(cid.len < 64 ? cid.len : 64),
                 cid.p ? (const char *)cid.p : "", (long long)r->id);
    }
    if (r->status == STORE_FAILED)
        in->st.store_failures++;

    if (p->batch) {
        batch_member_done(in, p->batch, p->member, r->status == STORE_FAILED,
                          r->status == STORE_FAILED ? &fail : NULL);
    } else {
        struct mllp_conn *c = mllp_server_conn(in->srv, p->conn_id);
        if (r->status == STORE_FAILED)
            answer(in, c, p->seq, m, HL7_ERROR, NULL, "Cannot store message", &fail);
        else if (r->status == STORE_DUPLICATE)
            answer(in, c, p->seq, m, HL7_ACCEPT, r->ack_code,
                   "Duplicate message: already received", NULL);
        else
            answer(in, c, p->seq, m, HL7_ACCEPT, NULL, "Message accepted", NULL);
    }
    free(p->msh);
    p->msh = NULL;
}

static void store_cb(void *ud, int fd, unsigned ev)
{
    (void)fd;
    (void)ev;
    struct ingest *in = ud;
    struct store_result rs[RESULTS_PER_TAKE];
    size_t n;
    while ((n = store_take_results(in->store, rs, RESULTS_PER_TAKE)) > 0) {
        for (size_t i = 0; i < n; i++)
            on_result(in, &rs[i]);
    }
    mllp_server_kick(in->srv);
}

/* ---- frames -------------------------------------------------------------- */

/* 1 when `list` ('\n'-separated "APP^FAC" names) contains app^fac. */
static int list_has(const char *list, struct hl7_slice app, struct hl7_slice fac)
{
    const char *p = list;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        const char *caret = memchr(p, '^', l);
        if (caret) {
            size_t al = (size_t)(caret - p), fl = l - al - 1;
            if (al == app.len && fl == fac.len && memcmp(p, app.p, al) == 0 &&
                memcmp(caret + 1, fac.p, fl) == 0)
                return 1;
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    return 0;
}

/* Sender binding: with `senders:` on the listener, the client certificate
 * must name the message's MSH-3^MSH-4 (first components), so one engine
 * cannot speak for another. */
static int sender_allowed(const struct ingest_listener *il, const struct mllp_conn *c,
                          const struct hl7_msg *m, const struct hl7_delims *d)
{
    if (il->n_senders == 0)
        return 1;
    const struct hl7_header *h = hl7_msg_header(m);
    struct hl7_slice app = hl7_slice_piece(h->send_app, d->comp, 1);
    struct hl7_slice fac = hl7_slice_piece(h->send_fac, d->comp, 1);
    for (size_t i = 0; i < il->n_senders; i++) {
        if (mllp_conn_cert_matches(c, il->senders[i].key) &&
            list_has(il->senders[i].value, app, fac))
            return 1;
    }
    return 0;
}

/* 1 when the audit sink's undelivered rows, plus `extra` rows this frame
 * has already queued (a batch's earlier members, not yet in the sink's
 * count), are past store.max_pending_rows. */
static int backlog_full(const struct ingest *in, uint64_t extra)
{
    return in->backlog && in->backlog_max &&
           in->backlog(in->backlog_ud) + extra > in->backlog_max;
}

/* AR for a batch whose envelope cannot be accepted, echoing what the
 * iterator could read (BHS-11 or the first MSH-10, the sender). */
static void reject_batch(struct ingest *in, struct mllp_conn *c, uint64_t seq,
                         const struct hl7_batch_iter *it, const struct hl7_err *err)
{
    enum hl7_ack_code code = in->o.enhanced ? HL7_ACK_CR : HL7_ACK_AR;
    count_ack(in, code);
    if (in->stats)
        note_ack(in, NULL, code, err);
    struct hl7_ack_ctx ctx;
    ack_ctx(in, &ctx);
    buf_reset(&in->ack);
    if (hl7_ack_build_batch(it, code, "Batch envelope cannot be read", err, &ctx, &in->ack) != 0) {
        buf_reset(&in->ack);
        if (hl7_ack_build(NULL, code, "Batch envelope cannot be read", err, &ctx, &in->ack) != 0)
            return;
    }
    (void)mllp_conn_reply(c, seq, buf_data(&in->ack), in->ack.len);
}

static void handle_batch(struct ingest *in, struct mllp_conn *c, uint64_t seq,
                         const struct ingest_listener *il, const uint8_t *p, size_t len)
{
    struct hl7_batch_iter it;
    struct hl7_err err;
    in->st.batches++;
    if (hl7_batch_begin(&it, p, len, &err) != 0) {
        in->st.received++;
        log_info("hl7_rejected", "listener=%s peer=%s code=%d reason=\"%s\"", il->name,
                 mllp_conn_peer(c), err.code, err.text);
        reject_batch(in, c, seq, &it, &err);
        return;
    }
    struct batch *b = calloc(1, sizeof *b);
    if (!b) {
        answer(in, c, seq, NULL, HL7_ERROR, NULL, "Out of memory", NULL);
        return;
    }
    b->conn_id = mllp_conn_id(c);
    b->seq = seq;
    b->enhanced = in->o.enhanced;
    b->il = il;
    b->rx_ns = in->cur_rx_ns;
    struct hl7_slice msg;
    int r;
    size_t env_end = len;
    int first = 1;
    uint64_t batch_rows = 0; /* rows of the members queued so far */
    unsigned backlog_refused = 0;
    while ((r = hl7_batch_next(&it, &msg, &err)) == 1) {
        if (first) {
            /* The envelope kept for the ACK runs to the end of the first
             * MSH line: it gives MSH-12 (the ACK's version) and, for a
             * batch with only a trailer, MSA-2 and the receiver. */
            size_t k = 0;
            while (k < msg.len && msg.p[k] != '\r' && msg.p[k] != '\n')
                k++;
            env_end = (size_t)(msg.p - p) + k;
            first = 0;
        }
        in->st.received++;
        b->total++;
        struct hl7_err e;
        enum hl7_ack_code rej = b->enhanced ? HL7_ACK_CR : HL7_ACK_AR;
        enum hl7_ack_code err_code = b->enhanced ? HL7_ACK_CE : HL7_ACK_AE;
        if (hl7_msg_parse(in->msg, msg.p, msg.len, &il->parse, &e) != 0 ||
            hl7_msg_validate(in->msg, &e) != 0) {
            log_msg(LOG_INFO, "hl7_rejected", il, c, msg.p, msg.len, e.code, e.text);
            batch_fail(b, b->total, &e);
            keep_rejected(in, c, il, msg.p, msg.len, in->msg, rej, e.text, &e);
            continue;
        }
        if (!sender_allowed(il, c, in->msg, hl7_msg_delims(in->msg))) {
            in->st.sender_refused++;
            hl7_err_set(&e, HL7_E_INTERNAL, "MSH", 1, 3,
                        "sender not allowed for this client certificate");
            log_msg(LOG_INFO, "hl7_rejected", il, c, msg.p, msg.len, e.code, e.text);
            batch_fail(b, b->total, &e);
            keep_rejected(in, c, il, msg.p, msg.len, in->msg, rej, e.text, &e);
            continue;
        }
        /* The sink's backlog bounds a batch member by member, as it bounds
         * single messages: a batch is no way around store.max_pending_rows. */
        if (backlog_full(in, batch_rows)) {
            in->st.backlog_refused++;
            backlog_refused++;
            hl7_err_set(&e, HL7_E_INTERNAL, "", 0, 0, "sink backlog full");
            batch_fail(b, b->total, &e);
            continue;
        }
        struct mapped mr;
        if (map_message(in, &mr, &e) != 0) {
            log_msg(LOG_INFO, "mapping_rejected", il, c, msg.p, msg.len, e.code,
                    mapping_result_reason(in->mres));
            batch_fail(b, b->total, &e);
            keep_rejected(in, c, il, msg.p, msg.len, in->msg, err_code,
                          mapping_result_reason(in->mres), &e);
            continue;
        }
        if (mr.quarantined)
            log_msg(LOG_INFO, "mapping_quarantined", il, c, msg.p, msg.len, 0, mr.reason);
        b->outstanding++;
        batch_rows += mr.row_count;
        if (submit(in, c, seq, in->msg, il, b, &mr) != 0) {
            struct hl7_err f;
            hl7_err_set(&f, HL7_E_INTERNAL, "", 0, 0, "store queue full");
            batch_member_done(in, b, b->total, 1, &f);
        }
    }
    if (backlog_refused)
        log_warn("backlog_full", "listener=%s peer=%s max_pending_rows=%llu batch_refused=%u",
                 il->name, mllp_conn_peer(c), (unsigned long long)in->backlog_max,
                 backlog_refused);
    if (r < 0)
        batch_fail(b, b->total, &err);
    if (it.count_mismatches) {
        /* BHS/BTS/FHS/FTS counts are the sender's bookkeeping: the members
         * were judged one by one, so a wrong count is a warning only. */
        in->st.batch_count_mismatch++;
        snprintf(b->count_text, sizeof b->count_text, "%s", it.count_err.text);
        b->count_note = b->count_text;
        log_warn("batch_count_mismatch", "listener=%s peer=%s segment=%s reason=\"%s\" messages=%u",
                 il->name, mllp_conn_peer(c), it.count_err.seg, it.count_err.text, b->total);
    }
    b->envelope = malloc(env_end ? env_end : 1);
    if (b->envelope) {
        memcpy(b->envelope, p, env_end);
        b->envelope_len = env_end;
    }
    b->done_queuing = 1;
    if (b->outstanding == 0)
        batch_finish(in, b);
}

/* Tells the store how many senders are active, every 10 ms at most, so its
 * writer can gather their messages into one commit. */
static void update_group_hint(struct ingest *in)
{
    uint64_t now = clock_mono_ms();
    if (now < in->next_hint_ms)
        return;
    in->next_hint_ms = now + 10;
    store_set_expected_group(in->store, (unsigned)mllp_server_active_conns(in->srv, 1000));
}

/* 1 when a line of the frame begins with BTS or FTS: messages followed by
 * a batch trailer are a batch even without a header.  Only asked of frames
 * that failed to parse as one message. */
static int has_trailer(const uint8_t *p, size_t len)
{
    for (size_t i = 1; i + 3 <= len; i++) {
        if ((p[i - 1] == '\r' || p[i - 1] == '\n') && p[i + 1] == 'T' && p[i + 2] == 'S' &&
            (p[i] == 'B' || p[i] == 'F'))
            return 1;
    }
    return 0;
}

static void on_frame(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *p, size_t len)
{
    struct ingest *in = ud;
    update_group_hint(in);
    const struct ingest_listener *il = mllp_conn_listener_user(c);
    in->cur_il = il;
    in->cur_rx_ns = in->stats ? clock_mono_ns() : 0;
    in->cur_dup = 0;
    if (hl7_is_batch(p, len)) {
        handle_batch(in, c, seq, il, p, len);
        return;
    }
    struct hl7_err err;
    enum hl7_ack_code code;
    if (hl7_msg_parse(in->msg, p, len, &il->parse, &err) != 0 &&
        err.code == HL7_E_SEGMENT_SEQUENCE && has_trailer(p, len)) {
        /* MSH … BTS/FTS: a batch with a trailer and no header. */
        handle_batch(in, c, seq, il, p, len);
        return;
    }
    in->st.received++;
    if (err.code != 0) {
        log_msg(LOG_INFO, "hl7_rejected", il, c, p, len, err.code, err.text);
        code = answer(in, c, seq, in->msg, HL7_REJECT, NULL, "Message cannot be parsed", &err);
        keep_rejected(in, c, il, p, len, in->msg, code, err.text, &err);
        return;
    }
    if (hl7_msg_validate(in->msg, &err) != 0) {
        log_msg(LOG_INFO, "hl7_rejected", il, c, p, len, err.code, err.text);
        code = answer(in, c, seq, in->msg, HL7_REJECT, NULL, outcome_text(HL7_REJECT), &err);
        keep_rejected(in, c, il, p, len, in->msg, code, err.text, &err);
        return;
    }
    if (!sender_allowed(il, c, in->msg, hl7_msg_delims(in->msg))) {
        in->st.sender_refused++;
        hl7_err_set(&err, HL7_E_INTERNAL, "MSH", 1, 3,
                    "sender not allowed for this client certificate");
        char q[768];
        log_warn("sender_refused", "listener=%s peer=%s cn=\"%s\"", il->name, mllp_conn_peer(c),
                 log_quote(q, sizeof q, mllp_conn_tls_name(c))); /* the peer's certificate */
        log_msg(LOG_INFO, "hl7_rejected", il, c, p, len, err.code, err.text);
        code = answer(in, c, seq, in->msg, HL7_REJECT, NULL, "Sender not allowed", &err);
        keep_rejected(in, c, il, p, len, in->msg, code, err.text, &err);
        return;
    }
    if (backlog_full(in, 0)) {
        in->st.backlog_refused++;
        hl7_err_set(&err, HL7_E_INTERNAL, "", 0, 0, "sink backlog full");
        log_warn("backlog_full", "listener=%s peer=%s max_pending_rows=%llu", il->name,
                 mllp_conn_peer(c), (unsigned long long)in->backlog_max);
        log_msg(LOG_INFO, "hl7_rejected", il, c, p, len, err.code, err.text);
        code = answer(in, c, seq, in->msg, HL7_ERROR, NULL, "Sink backlog full", &err);
        keep_rejected(in, c, il, p, len, in->msg, code, err.text, &err);
        return;
    }
    struct mapped mr;
    if (map_message(in, &mr, &err) != 0) {
        log_msg(LOG_INFO, "mapping_rejected", il, c, p, len, err.code,
                mapping_result_reason(in->mres));
        code = answer(in, c, seq, in->msg, HL7_ERROR, NULL,
                      "Message not accepted by the mapping rules", &err);
        keep_rejected(in, c, il, p, len, in->msg, code, mapping_result_reason(in->mres), &err);
        return;
    }
    if (mr.quarantined)
        log_msg(LOG_INFO, "mapping_quarantined", il, c, p, len, 0, mr.reason);
    if (submit(in, c, seq, in->msg, il, NULL, &mr) != 0) {
        struct hl7_err f;
        hl7_err_set(&f, HL7_E_INTERNAL, "", 0, 0, "store queue full");
        in->st.store_failures++;
        answer(in, c, seq, in->msg, HL7_ERROR, NULL, "Cannot store message", &f);
    }
}

/* A frame the transport gave up on (over max_message_bytes, or over the
 * input budget): AR 207 echoing the control id of what arrived, kept
 * without its body (it is larger than anything we store). */
static void refuse_unfinished(struct ingest *in, struct mllp_conn *c, uint64_t seq,
                              const uint8_t *p, size_t len, const char *text, const char *why)
{
    const struct ingest_listener *il = mllp_conn_listener_user(c);
    in->cur_il = il;
    in->cur_rx_ns = in->stats ? clock_mono_ns() : 0;
    in->cur_dup = 0;
    in->st.received++;
    struct hl7_err err;
    /* Parse what arrived so the AR can echo the control id. */
    size_t n = len < 65536 ? len : 65536;
    if (hl7_msg_parse(in->msg, p, n, &il->parse, &err) != 0)
        log_debug("unfinished_prefix_unparsed", "code=%d", err.code);
    hl7_err_set(&err, HL7_E_INTERNAL, "", 0, 0, why);
    log_msg(LOG_INFO, "hl7_rejected", il, c, p, n, err.code, err.text);
    enum hl7_ack_code code = answer(in, c, seq, in->msg, HL7_REJECT, NULL, text, &err);
    keep_rejected(in, c, il, NULL, 0, in->msg, code, err.text, &err);
}

static void on_oversize(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *p, size_t len)
{
    refuse_unfinished(ud, c, seq, p, len, "Message too large", "message exceeds max_message_bytes");
}

/* The input budget (limits.max_buffered_mb) stayed spent and this
 * connection's unfinished frame gives way. */
static void on_over_budget(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *p,
                           size_t len)
{
    refuse_unfinished(ud, c, seq, p, len, "Server input limit reached",
                      "buffered input over limits.max_buffered_mb");
}

static int can_take(void *ud)
{
    struct ingest *in = ud;
    return store_space(in->store) > STORE_HEADROOM &&
           in->ring_head - in->ring_tail + STORE_HEADROOM < in->ring_cap;
}

/* ---- lifecycle ---------------------------------------------------------- */

struct ingest *ingest_new(struct loop *l, struct store *st, const struct ingest_opts *o)
{
    struct ingest *in = calloc(1, sizeof *in);
    if (!in)
        return NULL;
    in->loop = l;
    in->store = st;
    in->o = *o;
    in->ring_cap = STORE_QUEUE_CAPACITY + STORE_HEADROOM * 4;
    in->ring = calloc(in->ring_cap, sizeof *in->ring);
    in->msg = hl7_msg_new();
    in->ackmsg = hl7_msg_new();
    buf_init(&in->ack, HL7_ACK_MAX_BYTES * 4);
    buf_init(&in->rows, 64u << 20);
    buf_init(&in->content, HB_MAX_MESSAGE_BYTES_CEILING + 64u);
    in->mres = mapping_result_new();
    /* ACK control ids: a per-start prefix so ids never repeat across restarts. */
    snprintf(in->ack_prefix, sizeof in->ack_prefix, "HB%llx",
             (unsigned long long)(clock_wall_ms() / 1000));
    in->ack_prefix_len = strlen(in->ack_prefix);
    struct mllp_handler h = {
        .on_frame = on_frame, .on_oversize = on_oversize, .on_over_budget = on_over_budget,
        .can_take = can_take, .ud = in,
    };
    in->srv = mllp_server_new(l, &h);
    if (!in->ring || !in->msg || !in->ackmsg || !in->srv || !in->mres)
        goto fail;
    if (loop_add(l, store_event_fd(st), LOOP_READ, store_cb, in) != 0)
        goto fail;
    return in;
fail:
    ingest_free(in);
    return NULL;
}

void ingest_free(struct ingest *in)
{
    if (!in)
        return;
    if (in->store)
        loop_del(in->loop, store_event_fd(in->store));
    mllp_server_free(in->srv);
    if (in->ring) {
        for (uint64_t t = in->ring_tail; t < in->ring_head; t++)
            free(in->ring[t % in->ring_cap].msh);
    }
    free(in->ring);
    hl7_msg_free(in->msg);
    hl7_msg_free(in->ackmsg);
    buf_release(&in->ack);
    buf_release(&in->rows);
    buf_release(&in->content);
    mapping_result_free(in->mres);
    free(in);
}

struct mllp_server *ingest_server(struct ingest *in) { return in->srv; }

void ingest_drain(struct ingest *in)
{
    in->draining = 1;
    mllp_server_stop_accepting(in->srv);
    mllp_server_drain(in->srv);
}

int ingest_drained(const struct ingest *in)
{
    return in->draining && in->ring_head == in->ring_tail &&
           mllp_server_conn_count(in->srv) == 0;
}

void ingest_set_backlog(struct ingest *in, uint64_t (*pending)(const void *ud), const void *ud,
                        uint64_t max_rows)
{
    in->backlog = pending;
    in->backlog_ud = ud;
    in->backlog_max = max_rows;
}

struct mapping *ingest_set_mapping(struct ingest *in, struct mapping *mp)
{
    struct mapping *old = in->o.mapping;
    in->o.mapping = mp;
    return old;
}

struct ingest_rows ingest_get_rows(const struct ingest *in)
{
    return (struct ingest_rows){ in->o.format, in->o.eol, in->o.layout };
}

struct mapping *ingest_set_rows(struct ingest *in, struct mapping *mp, enum mapping_format format,
                                const char *eol, int64_t layout)
{
    struct mapping *old = ingest_set_mapping(in, mp);
    in->o.format = format;
    in->o.eol = eol;
    in->o.layout = layout;
    return old;
}

void ingest_get_stats(const struct ingest *in, struct ingest_stats *out) { *out = in->st; }

void ingest_set_stats(struct ingest *in, struct stats *st) { in->stats = st; }
