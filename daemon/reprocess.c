/* The reprocess engine: the current rules run again on stored messages, and
 * the rows that result are queued for the audit sink.
 *
 * Rows are never added to an old message: each message that gives rows gets
 * a new journal entry (made_by "reprocess", origin its id) holding them, so
 * message ids keep growing with row ids as the audit batches need, and the
 * original keeps its status (a quarantined message stays quarantined; the
 * browser shows "reprocessed as N").  That entry is also what makes a second
 * run idempotent: a message that has one, or whose own rows were queued at
 * ingest, is skipped unless the request says redeliver.  A rejected message
 * whose sender has since had a message with the same control id accepted is
 * skipped too (the corrected re-send already carries its rows).
 *
 * Used by `hl7bridge reprocess` directly when no daemon runs, and by the
 * daemon's control socket (with the rules it has loaded) when one does.
 *
 * Threads: any; one run per thread (own store connection). */
#include "daemon/sink_glue.h"
#include "daemon/browse.h"
#include "core/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPROCESS_MAX_IDS 10000000u

static const char *const outcome_names[RP_N] = {
    [RP_QUEUED] = "queued",
    [RP_WOULD_QUEUE] = "would queue",
    [RP_ALREADY] = "already queued",
    [RP_STILL_QUARANTINED] = "still quarantined",
    [RP_STILL_REJECTED] = "still rejected",
    [RP_FILTERED] = "filtered",
    [RP_NO_BODY] = "body purged",
    [RP_NOT_FOUND] = "not found",
    [RP_ERROR] = "error",
};

static const char *const status_names[REPROCESS_NSTATUS] = {
    "accepted", "undelivered", "filtered", "quarantined", "rejected", "other",
};

const char *reprocess_status_name(unsigned i)
{
    return i < REPROCESS_NSTATUS ? status_names[i] : NULL;
}

static unsigned status_index(const char *st)
{
    for (unsigned i = 0; i + 1 < REPROCESS_NSTATUS; i++)
        if (strcmp(st, status_names[i]) == 0)
            return i;
    return REPROCESS_NSTATUS - 1;
}

const char *reprocess_outcome_name(enum reprocess_outcome o)
{
    return (unsigned)o < RP_N ? outcome_names[o] : "?";
}

struct idlist {
    char (*v)[STORE_BROWSE_ID_MAX];
    size_t n, cap;
};

static int collect(void *ud, const struct store_browse_entry *e)
{
    struct idlist *l = ud;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 256;
        if (ncap > REPROCESS_MAX_IDS)
            return -1;
        void *p = realloc(l->v, ncap * sizeof *l->v);
        if (!p)
            return -1;
        l->v = p;
        l->cap = ncap;
    }
    memcpy(l->v[l->n++], e->id, STORE_BROWSE_ID_MAX);
    return 0;
}

struct run {
    struct store_browser *b;
    const struct mapping *mp;
    enum mapping_format fmt;
    const char *eol;
    int64_t layout; /* of the rows it writes: they go out under their own header */
    const struct reprocess_req *rq;
    struct hl7_msg *m;
    struct mapping_result *res;
    struct buf raw, rows;
    char why[256];
    char entry[STORE_BROWSE_ID_MAX];
    unsigned rows_n;
};

static enum reprocess_outcome one(struct run *r, const char *id, struct store_browse_entry *e)
{
    char err[256];
    r->why[0] = r->entry[0] = '\0';
    r->rows_n = 0;
    buf_reset(&r->raw);
    int got = store_browser_get(r->b, id, e, &r->raw, err, sizeof err);
    if (got <= 0) {
        snprintf(r->why, sizeof r->why, "%s", got < 0 ? err : "no such message");
        return got < 0 ? RP_ERROR : RP_NOT_FOUND;
    }
    if (e->made_by[0]) {
        snprintf(r->why, sizeof r->why, "an entry made by %s, not a received message",
                 e->made_by);
        return RP_ERROR;
    }
    int rejected = strcmp(e->status, "rejected") == 0;
    if (!r->rq->redeliver) {
        if (e->reprocessed[0]) {
            snprintf(r->why, sizeof r->why, "reprocessed before as %s", e->reprocessed);
            return RP_ALREADY;
        }
        if (!rejected && strcmp(e->status, "quarantined") != 0 &&
            strcmp(e->status, "filtered") != 0 && e->rows != 0) {
            snprintf(r->why, sizeof r->why, "its rows were queued when it was received");
            return RP_ALREADY;
        }
        if (rejected) {
            int64_t acc = store_browser_accepted_key(r->b, e->send_app, e->send_fac,
                                                     e->control_id);
            if (acc > 0) {
                snprintf(r->why, sizeof r->why, "the same control id was accepted since as %lld",
                         (long long)acc);
                return RP_ALREADY;
            }
        }
    }
    if (r->raw.len == 0)
        return RP_NO_BODY;
    struct hl7_err herr;
    if (hl7_msg_parse(r->m, buf_data(&r->raw), r->raw.len, NULL, &herr) != 0 ||
        hl7_msg_validate(r->m, &herr) != 0) {
        snprintf(r->why, sizeof r->why, "error %d: %s", herr.code, herr.text);
        return RP_STILL_REJECTED;
    }
    switch (mapping_eval(r->mp, r->m, r->res)) {
    case MAPPING_ROWS:
        break;
    case MAPPING_QUARANTINE:
        snprintf(r->why, sizeof r->why, "%s", mapping_result_reason(r->res));
        return RP_STILL_QUARANTINED;
    case MAPPING_FILTERED:
        snprintf(r->why, sizeof r->why, "%s", mapping_result_reason(r->res));
        return RP_FILTERED;
    default:
        snprintf(r->why, sizeof r->why, "%s", mapping_result_reason(r->res));
        return RP_STILL_REJECTED;
    }
    buf_reset(&r->rows);
    if (mapping_format_rows(r->mp, r->res, r->fmt, r->eol, &r->rows, NULL) != 0) {
        snprintf(r->why, sizeof r->why, "rows too large");
        return RP_ERROR;
    }
    r->rows_n = (unsigned)mapping_result_row_count(r->res);
    if (r->rows_n == 0)
        return RP_FILTERED;
    if (r->rq->dry_run)
        return RP_WOULD_QUEUE;
    char reason[64];
    snprintf(reason, sizeof reason, "reprocess of %s", e->id);
    struct store_journal_entry je = {
        .made_by = "reprocess", .origin = e->id,
        .listener = "reprocess", .peer = "local",
        .send_app = e->send_app, .send_fac = e->send_fac,
        .msg_type = e->msg_type, .trigger = e->trigger, .version = e->version,
        .reason = reason,
        .rows = buf_data(&r->rows), .rows_len = r->rows.len, .row_count = r->rows_n,
        .layout = r->layout, .now_ms = clock_wall_ms(),
    };
    int64_t nid = store_browser_add(r->b, &je, err, sizeof err);
    if (nid < 0) {
        snprintf(r->why, sizeof r->why, "%s", err);
        return RP_ERROR;
    }
    snprintf(r->entry, sizeof r->entry, "%lld", (long long)nid);
    return RP_QUEUED;
}

int reprocess_run(const char *store_path, const struct mapping *mp, enum mapping_format fmt,
                  const char *eol, const struct reprocess_req *rq,
                  int (*line)(void *ud, const char *text), void *ud,
                  struct reprocess_totals *tot, char *errbuf, size_t errcap)
{
    memset(tot, 0, sizeof *tot);
    struct run r = { .mp = mp, .fmt = fmt, .eol = eol, .rq = rq };
    struct idlist ids = { 0 };
    int ret = -1;
    buf_init(&r.raw, 256u << 20);
    buf_init(&r.rows, 64u << 20);
    r.m = hl7_msg_new();
    r.res = mapping_result_new();
    if (!r.m || !r.res) {
        snprintf(errbuf, errcap, "out of memory");
        goto out;
    }
    if (!rq->dry_run &&
        sink_glue_layout_of(&(struct store_opts){ .path = store_path }, mp, fmt, eol, &r.layout,
                            errbuf, errcap) != 0)
        goto out;
    r.b = store_browser_open(&(struct store_opts){ .path = store_path }, !rq->dry_run, errbuf,
                             errcap);
    if (!r.b)
        goto out;
    if (rq->n_ids) {
        for (size_t i = 0; i < rq->n_ids; i++) {
            struct store_browse_entry tmp;
            memset(&tmp, 0, sizeof tmp);
            snprintf(tmp.id, sizeof tmp.id, "%s", rq->ids[i]);
            if (collect(&ids, &tmp) != 0) {
                snprintf(errbuf, errcap, "out of memory");
                goto out;
            }
        }
    } else {
        struct store_browse_filter f = {
            .status = rq->status, .since_ms = rq->since_ms, .until_ms = rq->until_ms,
            .msg_type = rq->msg_type, .trigger = rq->trigger, .received_only = 1,
        };
        int lr = store_browser_list(r.b, &f, collect, &ids, errbuf, errcap);
        if (lr < 0)
            goto out;
        if (lr > 0) {
            snprintf(errbuf, errcap, "too many messages selected (more than %u)",
                     REPROCESS_MAX_IDS);
            goto out;
        }
    }
    /* Oldest first: rows reach the sink in the order the messages came. */
    for (size_t k = ids.n; k-- > 0;) {
        const char *id = ids.v[k];
        struct store_browse_entry e;
        memset(&e, 0, sizeof e);
        e.status = "?";
        enum reprocess_outcome o = one(&r, id, &e);
        tot->n[o]++;
        tot->by_status[status_index(e.status)][o]++;
        if (o == RP_QUEUED || o == RP_WOULD_QUEUE)
            tot->rows += r.rows_n;
        if (line) {
            char text[512];
            if (o == RP_QUEUED)
                snprintf(text, sizeof text, "%s %s: queued %u row%s as %s", id, e.status,
                         r.rows_n, r.rows_n == 1 ? "" : "s", r.entry);
            else if (o == RP_WOULD_QUEUE)
                snprintf(text, sizeof text, "%s %s: would queue %u row%s (dry run)", id,
                         e.status, r.rows_n, r.rows_n == 1 ? "" : "s");
            else
                snprintf(text, sizeof text, "%s %s: %s%s%s", id, e.status,
                         reprocess_outcome_name(o), r.why[0] ? ": " : "", r.why);
            if (line(ud, text) != 0) {
                snprintf(errbuf, errcap, "interrupted after %zu of %zu messages", ids.n - k,
                         ids.n);
                goto out;
            }
        }
    }
    ret = 0;
out:
    free(ids.v);
    store_browser_close(r.b);
    mapping_result_free(r.res);
    hl7_msg_free(r.m);
    buf_release(&r.raw);
    buf_release(&r.rows);
    return ret;
}
