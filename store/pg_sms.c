/* pg_sms — the SMS sink's schedule on PostgreSQL, shared by every node on
 * the database (behind store/sms.c's store_sms_* calls; same meaning, see
 * store.h).
 *
 * Design: the tables are store/sms.c's (migration 5 in store/pg_db.c).
 * Facts become appointments and texts once cluster-wide: the scan runs
 * under a transaction-scoped advisory lock (PGS_LOCK), so one node at a
 * time applies them, in id order, and the others skip the step.  Row
 * claims (FOR UPDATE SKIP LOCKED) would not do here: the facts of one
 * appointment must be applied one after the other, each against the state
 * the previous one left, and two nodes taking two facts of one appointment
 * would apply them side by side.  The PHI purge takes the same lock, so it
 * never runs beside an apply either.
 *
 * Texts: a claim takes the earliest due pending text that no live lease
 * holds, with FOR UPDATE SKIP LOCKED (two nodes claiming at once take two
 * texts), and gives it to this node until lease_until (the server's
 * clock, so the nodes' clocks do not matter).  finish and retry change a
 * text only while this node still owns it.  A node that dies holding a
 * text loses it when the lease runs out and another node sends it: with
 * the same repeatability id (stored with the text when it was queued,
 * derived from facility, appointment and event key, never from a node)
 * and the same first-sent date (fixed by the first claim), so the
 * provider does not deliver it twice.  At start a node frees only what its
 * own name holds (a previous run of it was stopped mid-send).
 *
 * Threads: one handle, one thread (the SMS worker). */
#include "store/store_int.h"

#include "core/log.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Any fixed number not taken elsewhere (store/pg_db.c: 7401402
 * migrations, 7401403 housekeeping; store/pg_batch.c: 7401404). */
#define PGS_LOCK   "7401405"
#define PGS_NOW_MS "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

struct store_pg_sms {
    struct store_pg_side c;
    uint32_t lease_ms;
    struct buf arr;            /* fact ids handed over, as an array literal */
};

static const char *const appt_state_names[] = { "booked", "cancelled", "noshow" };
static const char *const text_state_names[] = { "pending", "sent", "failed", "skipped" };

/* ---- small helpers ------------------------------------------------------ */

static PGresult *run(struct store_pg_sms *p, const char *sql, int n, const char *const *v,
                     ExecStatusType want)
{
    return store_pg_side_run(&p->c, sql, n, v, want, 0);
}

static int exec_cmd(struct store_pg_sms *p, const char *sql, int n, const char *const *v)
{
    return store_pg_side_exec(&p->c, sql, n, v, NULL);
}

static int64_t num_or(const PGresult *r, int row, int col, int64_t none)
{
    return PQgetisnull(r, row, col) ? none : store_pg_num(r, row, col);
}

/* NULL for an empty string: purged / absent personal fields are NULL. */
static const char *opt(const char *s)
{
    return s && *s ? s : NULL;
}

static unsigned changed(PGresult *r)
{
    return (unsigned)strtoul(PQcmdTuples(r), NULL, 10);
}

/* Takes the cluster's SMS lock for the open transaction: 1 got it, 0
 * another node holds it, -1 error. */
static int try_lock(struct store_pg_sms *p)
{
    PGresult *r = run(p, "SELECT pg_try_advisory_xact_lock(" PGS_LOCK ")", 0, NULL,
                      PGRES_TUPLES_OK);
    if (!r)
        return -1;
    int got = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return got;
}

/* ---- open / close -------------------------------------------------------- */

/* Frees this node's unfinished claims (a previous run's at open, its own at
 * a clean stop); another node's stay theirs until their lease ends. */
int store_pg_sms_release(struct store_pg_sms *p, uint64_t *released)
{
    const char *v[1] = { p->c.node };
    return store_pg_side_exec(&p->c, "UPDATE sms_outbox SET lease_until = NULL WHERE owner = $1"
                                     " AND state = 'pending' AND lease_until IS NOT NULL",
                              1, v, released);
}

struct store_pg_sms *store_pg_sms_open(const struct store_opts *o, char *errbuf, size_t errcap)
{
    struct store_pg_sms *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    buf_init(&p->arr, (size_t)1 << 20);
    p->lease_ms = o->lease_ms ? o->lease_ms : STORE_SMS_LEASE_MS;
    if (store_pg_side_init(&p->c, o) < 0 || store_pg_side_ok(&p->c) < 0) {
        /* The message names libpq's reason, never the password. */
        snprintf(errbuf, errcap, "store: SMS tables: %s", p->c.err);
        goto fail;
    }
    PGresult *r = run(p, "SELECT to_regclass('sms_outbox') IS NOT NULL", 0, NULL, PGRES_TUPLES_OK);
    int have = r && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!have) {
        snprintf(errbuf, errcap, "store: the database has no SMS tables (%s)",
                 r ? "open it with this build first" : p->c.err);
        goto fail;
    }
    /* Texts a previous run of this node claimed and never finished: ours
     * again at once (another node's stay theirs until their lease ends). */
    uint64_t freed;
    if (store_pg_sms_release(p, &freed) < 0) {
        snprintf(errbuf, errcap, "store: SMS tables: %s", p->c.err);
        goto fail;
    }
    return p;
fail:
    store_pg_sms_close(p);
    return NULL;
}

void store_pg_sms_close(struct store_pg_sms *p)
{
    if (!p)
        return;
    store_pg_side_release(&p->c);
    buf_release(&p->arr);
    free(p);
}

const char *store_pg_sms_errmsg(const struct store_pg_sms *p)
{
    return p->c.err[0] ? p->c.err : "no error";
}

int store_pg_sms_begin(struct store_pg_sms *p) { return store_pg_side_begin(&p->c); }
int store_pg_sms_commit(struct store_pg_sms *p) { return store_pg_side_commit(&p->c); }
void store_pg_sms_rollback(struct store_pg_sms *p) { store_pg_side_rollback(&p->c); }

/* ---- facts --------------------------------------------------------------- */

int store_pg_sms_facts_waiting(struct store_pg_sms *p)
{
    PGresult *r = run(p, "SELECT EXISTS (SELECT 1 FROM appt_facts)", 0, NULL, PGRES_TUPLES_OK);
    if (!r)
        return -1;
    int any = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return any;
}

int store_pg_sms_scan(struct store_pg_sms *p, unsigned max, store_sms_fact_cb cb, void *ud,
                      unsigned *n)
{
    if (n)
        *n = 0;
    int locked = try_lock(p);
    if (locked <= 0)
        return locked; /* 0: another node is applying facts; that is its step */
    char lim[16];
    snprintf(lim, sizeof lim, "%u", max);
    const char *v[1] = { lim };
    /* Two nodes commit out of id order: a fact whose id is below one read
     * here may still come; it is read by a later step (its own DELETE
     * names only the ids handed over). */
    PGresult *r = run(p,
                      "SELECT id, msg_id, received_ms, facility, appt_id, event, event_time,"
                      " start_s, duration_min, COALESCE(location, ''), COALESCE(provider, ''),"
                      " COALESCE(first_name, ''), COALESCE(phone, ''), COALESCE(consent, ''),"
                      " COALESCE(language, ''), COALESCE(link, '')"
                      " FROM appt_facts ORDER BY id LIMIT $1",
                      1, v, PGRES_TUPLES_OK);
    if (!r)
        return -1;
    struct store_sms_fact *f = calloc(1, sizeof *f);
    if (!f) {
        PQclear(r);
        snprintf(p->c.err, sizeof p->c.err, "out of memory");
        return -1;
    }
    buf_reset(&p->arr);
    int ret = buf_append(&p->arr, "{", 1) < 0 ? -1 : 0;
    unsigned got = 0;
    for (int i = 0; ret == 0 && i < PQntuples(r); i++) {
        memset(f, 0, sizeof *f);
        f->id = store_pg_num(r, i, 0);
        f->msg_id = store_pg_num(r, i, 1);
        f->received_ms = store_pg_num(r, i, 2);
        store_pg_text(r, i, 3, f->facility, sizeof f->facility);
        store_pg_text(r, i, 4, f->appt_id, sizeof f->appt_id);
        store_pg_text(r, i, 5, f->event, sizeof f->event);
        f->event_time = num_or(r, i, 6, -1);
        f->start_s = num_or(r, i, 7, -1);
        f->duration_min = num_or(r, i, 8, -1);
        store_pg_text(r, i, 9, f->location, sizeof f->location);
        store_pg_text(r, i, 10, f->provider, sizeof f->provider);
        store_pg_text(r, i, 11, f->first_name, sizeof f->first_name);
        store_pg_text(r, i, 12, f->phone, sizeof f->phone);
        store_pg_text(r, i, 13, f->consent, sizeof f->consent);
        store_pg_text(r, i, 14, f->language, sizeof f->language);
        store_pg_text(r, i, 15, f->link, sizeof f->link);
        ret = cb(ud, f);
        if (ret != 0)
            break;
        char one[24];
        int k = snprintf(one, sizeof one, "%s%" PRId64, got ? "," : "", f->id);
        if (buf_append(&p->arr, one, (size_t)k) < 0)
            ret = -1;
        got++;
    }
    PQclear(r); /* the result held names and numbers too */
    explicit_bzero(f, sizeof *f);
    free(f);
    if (ret != 0)
        return ret;
    if (got) {
        if (buf_append(&p->arr, "}", 2) < 0)
            return -1;
        const char *v2[1] = { (const char *)buf_data(&p->arr) };
        if (exec_cmd(p, "DELETE FROM appt_facts WHERE id = ANY($1::bigint[])", 1, v2) < 0)
            return -1;
    }
    if (n)
        *n = got;
    return 0;
}

/* ---- appointments ---------------------------------------------------------- */

int store_pg_sms_appt_get(struct store_pg_sms *p, const char *facility, const char *appt_id,
                          struct store_sms_appt *out)
{
    const char *v[2] = { facility, appt_id };
    PGresult *r = run(p,
                      "SELECT state, event_time, last_msg_id, COALESCE(fingerprint, ''), start_s,"
                      " duration_min, COALESCE(location, ''), COALESCE(provider, ''),"
                      " COALESCE(first_name, ''), COALESCE(phone, ''), consent, purge_after_s,"
                      " purged, COALESCE(language, ''), COALESCE(link, '')"
                      " FROM sms_appointments WHERE facility = $1 AND appt_id = $2",
                      2, v, PGRES_TUPLES_OK);
    if (!r)
        return -1;
    int found = PQntuples(r) == 1;
    if (found) {
        memset(out, 0, sizeof *out);
        snprintf(out->facility, sizeof out->facility, "%s", facility);
        snprintf(out->appt_id, sizeof out->appt_id, "%s", appt_id);
        const char *s = PQgetvalue(r, 0, 0);
        out->state = STORE_SMS_BOOKED;
        for (int i = 0; i < 3; i++)
            if (strcmp(s, appt_state_names[i]) == 0)
                out->state = (enum store_sms_appt_state)i;
        out->event_time = store_pg_num(r, 0, 1);
        out->last_msg_id = store_pg_num(r, 0, 2);
        store_pg_text(r, 0, 3, out->fingerprint, sizeof out->fingerprint);
        out->start_s = store_pg_num(r, 0, 4);
        out->duration_min = store_pg_num(r, 0, 5);
        store_pg_text(r, 0, 6, out->location, sizeof out->location);
        store_pg_text(r, 0, 7, out->provider, sizeof out->provider);
        store_pg_text(r, 0, 8, out->first_name, sizeof out->first_name);
        store_pg_text(r, 0, 9, out->phone, sizeof out->phone);
        out->consent = (int)store_pg_num(r, 0, 10);
        out->purge_after_s = store_pg_num(r, 0, 11);
        out->purged = (int)store_pg_num(r, 0, 12);
        store_pg_text(r, 0, 13, out->language, sizeof out->language);
        store_pg_text(r, 0, 14, out->link, sizeof out->link);
    }
    PQclear(r);
    return found;
}

int store_pg_sms_appt_put(struct store_pg_sms *p, const struct store_sms_appt *a)
{
    char n[7][24];
    snprintf(n[0], sizeof n[0], "%" PRId64, a->event_time);
    snprintf(n[1], sizeof n[1], "%" PRId64, a->last_msg_id);
    snprintf(n[2], sizeof n[2], "%" PRId64, a->start_s);
    snprintf(n[3], sizeof n[3], "%" PRId64, a->duration_min);
    snprintf(n[4], sizeof n[4], "%d", a->consent);
    snprintf(n[5], sizeof n[5], "%" PRId64, a->purge_after_s);
    snprintf(n[6], sizeof n[6], "%d", a->purged);
    const char *v[17] = {
        a->facility, a->appt_id, appt_state_names[a->state <= STORE_SMS_NOSHOW ? a->state : 0],
        n[0], n[1], opt(a->fingerprint), n[2], n[3], opt(a->location), opt(a->provider),
        opt(a->first_name), opt(a->phone), n[4], n[5], n[6], opt(a->language), opt(a->link),
    };
    return exec_cmd(p,
                    "INSERT INTO sms_appointments (facility, appt_id, state, event_time,"
                    " last_msg_id, fingerprint, start_s, duration_min, location, provider,"
                    " first_name, phone, consent, purge_after_s, purged, language, link)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
                    " $16, $17) ON CONFLICT (facility, appt_id) DO UPDATE SET"
                    " state = EXCLUDED.state, event_time = EXCLUDED.event_time,"
                    " last_msg_id = EXCLUDED.last_msg_id, fingerprint = EXCLUDED.fingerprint,"
                    " start_s = EXCLUDED.start_s, duration_min = EXCLUDED.duration_min,"
                    " location = EXCLUDED.location, provider = EXCLUDED.provider,"
                    " first_name = EXCLUDED.first_name, phone = EXCLUDED.phone,"
                    " consent = EXCLUDED.consent, purge_after_s = EXCLUDED.purge_after_s,"
                    " purged = EXCLUDED.purged, language = EXCLUDED.language,"
                    " link = EXCLUDED.link",
                    17, v);
}

/* ---- texts ---------------------------------------------------------------- */

int store_pg_sms_text_add(struct store_pg_sms *p, const struct store_sms_text *t)
{
    char n[4][24];
    snprintf(n[0], sizeof n[0], "%" PRId64, t->due_s);
    snprintf(n[1], sizeof n[1], "%" PRId64, t->start_s);
    snprintf(n[2], sizeof n[2], "%u", t->segments);
    snprintf(n[3], sizeof n[3], "%" PRId64, t->due_s * 1000);
    const char *v[12] = { t->facility, t->appt_id, t->kind, t->event_key, n[0], n[1],
                          t->text, t->to, n[2], t->encoding, t->request_id, n[3] };
    PGresult *r = run(p,
                      "INSERT INTO sms_outbox (facility, appt_id, kind, event_key, due_s,"
                      " start_s, text, to_e164, segments, encoding, request_id, state, next_ms)"
                      " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12)"
                      " ON CONFLICT (facility, appt_id, event_key) DO NOTHING",
                      12, v, PGRES_COMMAND_OK);
    if (!r)
        return -1;
    int added = changed(r) > 0;
    PQclear(r);
    return added;
}

int store_pg_sms_drop_pending(struct store_pg_sms *p, const char *facility, const char *appt_id,
                              unsigned what, const char *reason, unsigned *n)
{
    /* attempts = 0: a text a node has claimed is that node's to finish. */
    static const char *const stmts[3] = {
        "DELETE FROM sms_outbox WHERE facility = $1 AND appt_id = $2 AND state = 'pending'"
        " AND kind = 'reminder' AND attempts = 0",
        "UPDATE sms_outbox SET state = 'skipped', last_error = $3, text = NULL, to_e164 = NULL"
        " WHERE facility = $1 AND appt_id = $2 AND state = 'pending' AND kind <> 'reminder'"
        " AND attempts = 0",
        "UPDATE sms_outbox SET state = 'skipped', last_error = $3, text = NULL, to_e164 = NULL,"
        " lease_until = NULL WHERE facility = $1 AND appt_id = $2 AND state = 'pending'",
    };
    unsigned total = 0;
    for (int i = 0; i < 3; i++) {
        if (!(what & (1u << i)))
            continue;
        const char *v[3] = { facility, appt_id, reason ? reason : "dropped" };
        PGresult *r = run(p, stmts[i], i ? 3 : 2, v, PGRES_COMMAND_OK);
        if (!r)
            return -1;
        total += changed(r);
        PQclear(r);
    }
    if (n)
        *n = total;
    return 0;
}

int store_pg_sms_claim(struct store_pg_sms *p, int64_t now_ms, const char *first_sent_now,
                       struct store_sms_text *out)
{
    char now[24], lease[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(lease, sizeof lease, "%" PRIu32, p->lease_ms);
    const char *v[4] = { now, first_sent_now, p->c.node, lease };
    /* The lease is checked again by the UPDATE itself: a row another
     * claim changed meanwhile is re-read there, never taken twice. */
    PGresult *r = run(p,
                      "WITH pick AS (SELECT id, owner AS was_owner, lease_until AS was_lease"
                      " FROM sms_outbox WHERE state = 'pending' AND next_ms <= $1"
                      " AND (lease_until IS NULL OR lease_until < " PGS_NOW_MS ")"
                      " ORDER BY next_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                      " UPDATE sms_outbox o SET attempts = o.attempts + 1,"
                      " first_sent = COALESCE(o.first_sent, $2), owner = $3,"
                      " lease_until = " PGS_NOW_MS " + $4::bigint"
                      " FROM pick WHERE o.id = pick.id AND o.state = 'pending'"
                      " AND (o.lease_until IS NULL OR o.lease_until < " PGS_NOW_MS ")"
                      " RETURNING o.id, o.facility, o.appt_id, o.kind, o.event_key, o.due_s,"
                      " o.start_s, COALESCE(o.text, ''), COALESCE(o.to_e164, ''), o.request_id,"
                      " o.first_sent, o.segments, o.encoding, o.attempts, o.next_ms,"
                      " COALESCE(pick.was_owner, ''), pick.was_lease IS NOT NULL",
                      4, v, PGRES_TUPLES_OK);
    if (!r)
        return -1;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return 0;
    }
    memset(out, 0, sizeof *out);
    out->id = store_pg_num(r, 0, 0);
    store_pg_text(r, 0, 1, out->facility, sizeof out->facility);
    store_pg_text(r, 0, 2, out->appt_id, sizeof out->appt_id);
    store_pg_text(r, 0, 3, out->kind, sizeof out->kind);
    store_pg_text(r, 0, 4, out->event_key, sizeof out->event_key);
    out->due_s = store_pg_num(r, 0, 5);
    out->start_s = store_pg_num(r, 0, 6);
    store_pg_text(r, 0, 7, out->text, sizeof out->text);
    store_pg_text(r, 0, 8, out->to, sizeof out->to);
    store_pg_text(r, 0, 9, out->request_id, sizeof out->request_id);
    store_pg_text(r, 0, 10, out->first_sent, sizeof out->first_sent);
    out->segments = (unsigned)store_pg_num(r, 0, 11);
    store_pg_text(r, 0, 12, out->encoding, sizeof out->encoding);
    out->attempts = (unsigned)store_pg_num(r, 0, 13);
    out->next_ms = store_pg_num(r, 0, 14);
    out->state = STORE_SMS_PENDING;
    if (PQgetvalue(r, 0, 16)[0] == 't') {
        char q[200];
        log_warn("sms_text_taken_over",
                 " id=%" PRId64 " kind=%s from=%s attempts=%u hint=\"its node's lease ran out "
                 "mid-send: sent again with the same repeatability id\"",
                 out->id, out->kind, log_quote(q, sizeof q, PQgetvalue(r, 0, 15)), out->attempts);
    }
    /* The result held the text and the number. */
    for (int c = 7; c <= 8; c++)
        explicit_bzero(PQgetvalue(r, 0, c), (size_t)PQgetlength(r, 0, c));
    PQclear(r);
    return 1;
}

/* 0 when the UPDATE in `r` (cleared here) changed text `id`, i.e. this
 * node still held it; else -1 with the reason kept. */
static int still_mine(struct store_pg_sms *p, PGresult *r, int64_t id)
{
    if (!r)
        return -1;
    int mine = changed(r) == 1;
    PQclear(r);
    if (!mine)
        snprintf(p->c.err, sizeof p->c.err, "text %" PRId64 " is no longer this node's", id);
    return mine ? 0 : -1;
}

int store_pg_sms_finish(struct store_pg_sms *p, int64_t id, enum store_sms_text_state state,
                        int status, const char *error, const char *message_id, int64_t now_ms)
{
    char a_id[24], a_st[16], a_now[24];
    snprintf(a_id, sizeof a_id, "%" PRId64, id);
    snprintf(a_st, sizeof a_st, "%d", status);
    snprintf(a_now, sizeof a_now, "%" PRId64, now_ms);
    const char *v[7] = { a_id, text_state_names[state <= STORE_SMS_SKIPPED ? state : STORE_SMS_FAILED],
                         status ? a_st : NULL, opt(error), opt(message_id), a_now, p->c.node };
    PGresult *r = run(p,
                      "UPDATE sms_outbox SET state = $2, last_status = $3, last_error = $4,"
                      " message_id = COALESCE($5, message_id), done_ms = $6, text = NULL,"
                      " to_e164 = NULL, lease_until = NULL"
                      " WHERE id = $1 AND state = 'pending' AND owner = $7",
                      7, v, PGRES_COMMAND_OK);
    return still_mine(p, r, id);
}

int store_pg_sms_retry(struct store_pg_sms *p, int64_t id, int status, const char *error,
                       int64_t next_ms)
{
    char a_id[24], a_st[16], a_next[24];
    snprintf(a_id, sizeof a_id, "%" PRId64, id);
    snprintf(a_st, sizeof a_st, "%d", status);
    snprintf(a_next, sizeof a_next, "%" PRId64, next_ms);
    const char *v[5] = { a_id, status ? a_st : NULL, opt(error), a_next, p->c.node };
    PGresult *r = run(p,
                      "UPDATE sms_outbox SET last_status = $2, last_error = $3, next_ms = $4,"
                      " lease_until = NULL WHERE id = $1 AND state = 'pending' AND owner = $5",
                      5, v, PGRES_COMMAND_OK);
    return still_mine(p, r, id);
}

/* ---- purge, counters, gauges -------------------------------------------------- */

int store_pg_sms_purge(struct store_pg_sms *p, int64_t now_s, unsigned *appts)
{
    /* A text some node is sending right now (live lease) is left to it. */
    static const char *const expire =
        "UPDATE sms_outbox SET state = 'skipped', last_error = 'expired', text = NULL,"
        " to_e164 = NULL WHERE state = 'pending'"
        " AND (lease_until IS NULL OR lease_until < " PGS_NOW_MS ")"
        " AND EXISTS (SELECT 1 FROM sms_appointments a WHERE a.facility = sms_outbox.facility"
        " AND a.appt_id = sms_outbox.appt_id AND a.purged = 0 AND a.purge_after_s <= $1)";
    /* Cancelled or no-show: kept only until the cancellation text is done. */
    static const char *const purge =
        "UPDATE sms_appointments SET phone = NULL, first_name = NULL, location = NULL,"
        " provider = NULL, link = NULL, fingerprint = NULL, purged = 1"
        " WHERE purged = 0 AND (purge_after_s <= $1 OR (state <> 'booked' AND NOT EXISTS"
        " (SELECT 1 FROM sms_outbox o WHERE o.facility = sms_appointments.facility"
        " AND o.appt_id = sms_appointments.appt_id AND o.state = 'pending')))";
    if (appts)
        *appts = 0;
    if (store_pg_sms_begin(p) < 0)
        return -1;
    int locked = try_lock(p);
    if (locked < 0)
        goto fail;
    unsigned n = 0;
    char a_now[24];
    snprintf(a_now, sizeof a_now, "%" PRId64, now_s);
    const char *v[1] = { a_now };
    for (int i = 0; locked && i < 2; i++) {
        PGresult *r = run(p, i ? purge : expire, 1, v, PGRES_COMMAND_OK);
        if (!r)
            goto fail;
        n = changed(r);
        PQclear(r);
    }
    if (store_pg_sms_commit(p) < 0)
        return -1;
    if (appts)
        *appts = n;
    return 0;
fail:
    store_pg_sms_rollback(p);
    return -1;
}

int store_pg_sms_count_add(struct store_pg_sms *p, const char *name, int64_t n)
{
    char a_n[24];
    snprintf(a_n, sizeof a_n, "%" PRId64, n);
    const char *v[3] = { p->c.node, name, a_n };
    return exec_cmd(p,
                    "INSERT INTO sms_counters (node, name, n) VALUES ($1, $2, $3)"
                    " ON CONFLICT (node, name) DO UPDATE SET n = sms_counters.n + EXCLUDED.n",
                    3, v);
}

int store_pg_sms_counters(struct store_pg_sms *p,
                          void (*cb)(void *ud, const char *name, uint64_t n), void *ud)
{
    const char *v[1] = { p->c.node };
    PGresult *r = run(p, "SELECT name, n FROM sms_counters WHERE node = $1", 1, v,
                      PGRES_TUPLES_OK);
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++)
        cb(ud, PQgetvalue(r, i, 0), (uint64_t)store_pg_num(r, i, 1));
    PQclear(r);
    return 0;
}

int store_pg_sms_pending(struct store_pg_sms *p, uint64_t *texts, uint64_t *reminders)
{
    PGresult *r = run(p,
                      "SELECT COUNT(*), COUNT(*) FILTER (WHERE kind = 'reminder') FROM sms_outbox"
                      " WHERE state = 'pending'",
                      0, NULL, PGRES_TUPLES_OK);
    if (!r)
        return -1;
    *texts = (uint64_t)store_pg_num(r, 0, 0);
    *reminders = (uint64_t)store_pg_num(r, 0, 1);
    PQclear(r);
    return 0;
}
