/* pg_browse — the message browser on PostgreSQL (behind store/browse.c's
 * store_browser_* calls; same entries, ids and statuses, see store.h).
 *
 * Design: a search is one SELECT per table (messages, rejected) with only
 * bound parameters, the SQL assembled from fixed pieces; both come newest
 * first and are merged in browse.c's order (received time).  Every node's
 * messages are in the one database, so the browser shows the cluster.  A
 * message's status comes from its own columns: on PostgreSQL
 * messages.delivered_ms is set when its rows are all delivered (or when it
 * had none).  Journal entries of reprocess and reveal are not written
 * here: those commands do not run on PostgreSQL yet.
 *
 * Threads: one struct store_pg_browser per thread; any process. */
#include "store/store_int.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store_pg_browser {
    PGconn *conn;
};

#define PGBR_MSG_COLUMNS                                                                       \
    "m.id, m.received_ms, m.listener, m.peer, m.send_app, m.send_fac,"                        \
    " COALESCE(m.control_id, ''), m.msg_type, m.\"trigger\", m.version, m.ack_code,"          \
    " m.quarantined, m.filtered, COALESCE(m.reason, ''), COALESCE(m.row_count, -1),"          \
    " COALESCE(m.delivered_ms, 0), m.dup_count, COALESCE(m.last_dup_ms, 0),"                  \
    " COALESCE(m.made_by, ''), COALESCE(m.origin, ''), (m.raw IS NOT NULL)::int"

#define PGBR_REJ_COLUMNS                                                                       \
    "m.id, m.received_ms, m.listener, m.peer, m.send_app, m.send_fac,"                        \
    " COALESCE(m.control_id, ''), m.msg_type, m.\"trigger\", m.version, m.ack_code,"          \
    " m.reason, m.err_code, m.err_where, (m.raw IS NOT NULL)::int"

/* Parameters of a search, in this order ($1..$8). */
enum { P_CTL, P_APP, P_FAC, P_TYPE, P_TRIGGER, P_SINCE, P_UNTIL, P_LIMIT, P_N };

static void pgbr_err(char *errbuf, size_t errcap, const char *what, const char *m)
{
    char line[256];
    store_pg_msg(m, line, sizeof line);
    snprintf(errbuf, errcap, "store: %s: %s", what, line);
}

struct store_pg_browser *store_pg_browser_open(const struct store_opts *o, char *errbuf,
                                               size_t errcap)
{
    struct store_pg_browser *b = calloc(1, sizeof *b);
    if (!b || !(b->conn = store_pg_connect(o))) {
        free(b);
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    if (PQstatus(b->conn) != CONNECTION_OK) {
        pgbr_err(errbuf, errcap, "connect", PQerrorMessage(b->conn));
        goto fail;
    }
    /* Read only: a search must never take part in the nodes' writes. */
    PGresult *r = PQexec(b->conn, "SET default_transaction_read_only = on;"
                                  " SET statement_timeout = 30000");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    r = ok ? PQexec(b->conn, "SELECT to_regclass('rejected') IS NOT NULL") : NULL;
    ok = ok && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
         PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!ok) {
        snprintf(errbuf, errcap, "store: the database holds no store of this version (start a "
                                 "node on it once)");
        goto fail;
    }
    return b;
fail:
    store_pg_browser_close(b);
    return NULL;
}

void store_pg_browser_close(struct store_pg_browser *b)
{
    if (!b)
        return;
    PQfinish(b->conn);
    free(b);
}

/* Columns 1..10, the same in both column lists. */
static void read_common(const PGresult *r, int row, struct store_browse_entry *e)
{
    e->received_ms = store_pg_num(r, row, 1);
    store_pg_text(r, row, 2, e->listener, sizeof e->listener);
    store_pg_text(r, row, 3, e->peer, sizeof e->peer);
    store_pg_text(r, row, 4, e->send_app, sizeof e->send_app);
    store_pg_text(r, row, 5, e->send_fac, sizeof e->send_fac);
    store_pg_text(r, row, 6, e->control_id, sizeof e->control_id);
    store_pg_text(r, row, 7, e->msg_type, sizeof e->msg_type);
    store_pg_text(r, row, 8, e->trigger, sizeof e->trigger);
    store_pg_text(r, row, 9, e->version, sizeof e->version);
    store_pg_text(r, row, 10, e->ack, sizeof e->ack);
}

void store_pg_browse_read(const PGresult *r, int row, int rejected, struct store_browse_entry *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->id, sizeof e->id, "%s%s", rejected ? "R" : "", PQgetvalue(r, row, 0));
    read_common(r, row, e);
    if (rejected) {
        store_pg_text(r, row, 11, e->reason, sizeof e->reason);
        e->err_code = (int)store_pg_num(r, row, 12);
        store_pg_text(r, row, 13, e->err_where, sizeof e->err_where);
        e->has_raw = (int)store_pg_num(r, row, 14);
        e->rows = 0;
        e->status = "rejected";
        return;
    }
    int quarantined = (int)store_pg_num(r, row, 11), filtered = (int)store_pg_num(r, row, 12);
    store_pg_text(r, row, 13, e->reason, sizeof e->reason);
    e->rows = store_pg_num(r, row, 14);
    e->delivered_ms = store_pg_num(r, row, 15);
    e->dup_count = (uint64_t)store_pg_num(r, row, 16);
    e->last_dup_ms = store_pg_num(r, row, 17);
    store_pg_text(r, row, 18, e->made_by, sizeof e->made_by);
    store_pg_text(r, row, 19, e->origin, sizeof e->origin);
    e->has_raw = (int)store_pg_num(r, row, 20);
    e->status = quarantined ? "quarantined"
                : filtered  ? "filtered"
                : !e->delivered_ms ? "undelivered" : "accepted";
}

/* The search over one table: its SQL into q (NUL-terminated). */
static int search_sql(struct buf *q, const struct store_browse_filter *f, int rejected)
{
    int rc = buf_append_str(q, rejected ? "SELECT " PGBR_REJ_COLUMNS " FROM rejected m WHERE true"
                                        : "SELECT " PGBR_MSG_COLUMNS " FROM messages m WHERE true");
    if (f->control_id)
        rc |= buf_append_str(q, " AND m.control_id = $1");
    /* First component: "APP" itself or "APP^…". */
    if (f->send_app)
        rc |= buf_append_str(q, " AND (m.send_app = $2 OR starts_with(m.send_app, $2 || '^'))");
    if (f->send_fac)
        rc |= buf_append_str(q, " AND (m.send_fac = $3 OR starts_with(m.send_fac, $3 || '^'))");
    if (f->msg_type)
        rc |= buf_append_str(q, " AND m.msg_type = $4");
    if (f->msg_type && f->trigger)
        rc |= buf_append_str(q, " AND m.\"trigger\" = $5");
    if (f->since_ms)
        rc |= buf_append_str(q, " AND m.received_ms >= $6");
    if (f->until_ms)
        rc |= buf_append_str(q, " AND m.received_ms < $7");
    if (!rejected) {
        if (f->received_only)
            rc |= buf_append_str(q, " AND m.made_by IS NULL");
        static const char *const cond[] = {
            [STORE_BROWSE_ACCEPTED] = " AND m.quarantined = 0 AND m.filtered = 0"
                                      " AND m.delivered_ms IS NOT NULL",
            [STORE_BROWSE_UNDELIVERED] = " AND m.quarantined = 0 AND m.filtered = 0"
                                         " AND m.delivered_ms IS NULL",
            [STORE_BROWSE_DUPLICATE] = " AND m.dup_count > 0",
            [STORE_BROWSE_QUARANTINED] = " AND m.quarantined = 1",
            [STORE_BROWSE_FILTERED] = " AND m.quarantined = 0 AND m.filtered = 1",
        };
        if ((size_t)f->status < sizeof cond / sizeof cond[0] && cond[f->status])
            rc |= buf_append_str(q, cond[f->status]);
    }
    /* As on SQLite: ids follow arrival (the primary key, no sort), the
     * rare statuses and `rejected` have indexes in received order. */
    int by_time = rejected || f->status == STORE_BROWSE_QUARANTINED ||
                  f->status == STORE_BROWSE_FILTERED || f->status == STORE_BROWSE_DUPLICATE;
    rc |= buf_append_str(q, by_time ? " ORDER BY m.received_ms DESC, m.id DESC"
                                    : " ORDER BY m.id DESC");
    if (f->limit)
        rc |= buf_append_str(q, " LIMIT $8");
    rc |= buf_append(q, "", 1);
    return rc ? -1 : 0;
}

PGresult *store_pg_browse_search(struct store_pg_browser *b, const struct store_browse_filter *f,
                                 int rejected, char *errbuf, size_t errcap)
{
    struct buf q;
    buf_init(&q, 16 * 1024);
    char since[24], until[24], limit[24];
    snprintf(since, sizeof since, "%lld", (long long)f->since_ms);
    snprintf(until, sizeof until, "%lld", (long long)f->until_ms);
    snprintf(limit, sizeof limit, "%llu",
             (unsigned long long)(f->limit > INT64_MAX ? INT64_MAX : f->limit));
    const char *v[P_N] = {
        [P_CTL] = f->control_id, [P_APP] = f->send_app, [P_FAC] = f->send_fac,
        [P_TYPE] = f->msg_type, [P_TRIGGER] = f->trigger,
        [P_SINCE] = f->since_ms ? since : NULL, [P_UNTIL] = f->until_ms ? until : NULL,
        [P_LIMIT] = f->limit ? limit : NULL,
    };
    /* Typed, so that parameters a search does not use need no context. */
    const Oid types[P_N] = { 25, 25, 25, 25, 25, 20, 20, 20 };
    PGresult *r = NULL;
    if (search_sql(&q, f, rejected) != 0) {
        snprintf(errbuf, errcap, "store: search: out of memory");
    } else {
        r = PQexecParams(b->conn, (const char *)buf_data(&q), P_N, types, v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            pgbr_err(errbuf, errcap, "search", PQresultErrorMessage(r));
            PQclear(r);
            r = NULL;
        }
    }
    buf_release(&q);
    return r;
}

int store_pg_browser_get(struct store_pg_browser *b, int64_t n, int rejected,
                         struct store_browse_entry *out, struct buf *raw, char *errbuf,
                         size_t errcap)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)n);
    const char *v[1] = { id };
    const Oid types[1] = { 20 };
    PGresult *r = PQexecParams(b->conn,
                               rejected ? "SELECT " PGBR_REJ_COLUMNS " FROM rejected m WHERE m.id = $1"
                                        : "SELECT " PGBR_MSG_COLUMNS " FROM messages m WHERE m.id = $1",
                               1, types, v, NULL, NULL, 0);
    int ret = -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pgbr_err(errbuf, errcap, "show", PQresultErrorMessage(r));
        goto out;
    }
    ret = PQntuples(r) == 1;
    if (!ret || !raw)
        goto out;
    store_pg_browse_read(r, 0, rejected, out);
    PQclear(r);
    /* The body as bytes (binary result): it may be anything the sender sent. */
    r = PQexecParams(b->conn, rejected ? "SELECT raw FROM rejected WHERE id = $1"
                                       : "SELECT raw FROM messages WHERE id = $1",
                     1, types, v, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pgbr_err(errbuf, errcap, "show", PQresultErrorMessage(r));
        ret = -1;
    } else if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) && PQgetlength(r, 0, 0) > 0 &&
               buf_append(raw, PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0)) != 0) {
        snprintf(errbuf, errcap, "store: message %s too large to show", id);
        ret = -1;
    }
    PQclear(r);
    return ret;
out:
    if (ret == 1)
        store_pg_browse_read(r, 0, rejected, out);
    PQclear(r);
    return ret;
}
