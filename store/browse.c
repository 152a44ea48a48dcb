/* browse — the message browser's view of the store: metadata searches over
 * the journal and the rejected messages, one message with its body, and the
 * journal entries that reprocess and reveal add.
 *
 * Design: a search is one SELECT per table with only bound parameters (the
 * SQL text is assembled from fixed pieces, never from input), newest first,
 * so a LIMIT stops the walk early; when both tables can match, the two
 * ordered streams are merged here.  Each filter has an index of migration 4
 * behind it (received time, control id, type/trigger; the sender through
 * the unique key), so a search costs its matches, not the store's size.
 * A message's status is derived in SQL from its columns and the delivery
 * ranges (the same expression as the view message_delivery).
 *
 * A journal entry (store_browser_add) is a messages row plus its rows in
 * one BEGIN IMMEDIATE transaction on this connection: SQLite serialises it
 * with the ingest writer, so its message id and row ids come after every
 * committed one, which is what the audit batches assume.
 *
 * On PostgreSQL the searches and reads are store/pg_browse.c's (read only;
 * reprocess and reveal, which add journal entries, do not run there yet).
 *
 * Threads: one struct store_browser per thread; any process. */
#include "store/store_int.h"

#include "core/num.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BROWSE_BUSY_MS 10000

struct store_browser {
    sqlite3 *db;
    struct store_busy busy;
    struct store_pg_browser *pg;  /* PostgreSQL instead of db */
};

static const char *const status_names[] = {
    [STORE_BROWSE_ANY] = "any",
    [STORE_BROWSE_ACCEPTED] = "accepted",
    [STORE_BROWSE_DUPLICATE] = "duplicate",
    [STORE_BROWSE_REJECTED] = "rejected",
    [STORE_BROWSE_QUARANTINED] = "quarantined",
    [STORE_BROWSE_FILTERED] = "filtered",
    [STORE_BROWSE_UNDELIVERED] = "undelivered",
};

int store_browse_status_parse(const char *s)
{
    for (size_t i = 1; i < sizeof status_names / sizeof status_names[0]; i++)
        if (strcmp(s, status_names[i]) == 0)
            return (int)i;
    return -1;
}

/* When the message's rows were delivered (NULL: not yet): the expression
 * of the view message_delivery, for one row of `messages m`. */
#define DELIVERED_SQL                                                                          \
    "COALESCE(m.delivered_ms, (SELECT CASE WHEN d.last_id >= m.id THEN d.delivered_ms END"    \
    " FROM deliveries d WHERE d.first_id <= m.id ORDER BY d.first_id DESC LIMIT 1))"

#define MSG_COLUMNS                                                                            \
    "m.id, m.received_ms, m.listener, m.peer, m.send_app, m.send_fac, m.control_id,"          \
    " m.msg_type, m.\"trigger\", m.version, m.ack_code, m.quarantined, m.filtered,"           \
    " m.reason, m.row_count, " DELIVERED_SQL ", m.dup_count, m.last_dup_ms, m.made_by,"       \
    " m.origin, m.raw IS NOT NULL,"                                                           \
    " (SELECT MAX(r.id) FROM messages r WHERE r.origin = CAST(m.id AS TEXT)"                  \
    "  AND r.made_by = 'reprocess')"

#define REJ_COLUMNS                                                                            \
    "m.id, m.received_ms, m.listener, m.peer, m.send_app, m.send_fac, m.control_id,"          \
    " m.msg_type, m.\"trigger\", m.version, m.ack_code, m.reason, m.err_code, m.err_where,"   \
    " m.raw IS NOT NULL,"                                                                     \
    " (SELECT MAX(r.id) FROM messages r WHERE r.origin = 'R' || m.id"                         \
    "  AND r.made_by = 'reprocess')"

/* Columns 1..10, the same in MSG_COLUMNS and REJ_COLUMNS. */
static void read_common(sqlite3_stmt *st, struct store_browse_entry *e)
{
    e->received_ms = sqlite3_column_int64(st, 1);
    store_sql_text(st, 2, e->listener, sizeof e->listener);
    store_sql_text(st, 3, e->peer, sizeof e->peer);
    store_sql_text(st, 4, e->send_app, sizeof e->send_app);
    store_sql_text(st, 5, e->send_fac, sizeof e->send_fac);
    store_sql_text(st, 6, e->control_id, sizeof e->control_id);
    store_sql_text(st, 7, e->msg_type, sizeof e->msg_type);
    store_sql_text(st, 8, e->trigger, sizeof e->trigger);
    store_sql_text(st, 9, e->version, sizeof e->version);
    store_sql_text(st, 10, e->ack, sizeof e->ack);
}

static void read_msg(sqlite3_stmt *st, struct store_browse_entry *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->id, sizeof e->id, "%lld", (long long)sqlite3_column_int64(st, 0));
    read_common(st, e);
    int quarantined = sqlite3_column_int(st, 11);
    int filtered = sqlite3_column_int(st, 12);
    store_sql_text(st, 13, e->reason, sizeof e->reason);
    e->rows = sqlite3_column_type(st, 14) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 14);
    e->delivered_ms = sqlite3_column_type(st, 15) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 15);
    e->dup_count = (uint64_t)sqlite3_column_int64(st, 16);
    e->last_dup_ms = sqlite3_column_int64(st, 17);
    store_sql_text(st, 18, e->made_by, sizeof e->made_by);
    store_sql_text(st, 19, e->origin, sizeof e->origin);
    e->has_raw = sqlite3_column_int(st, 20);
    if (sqlite3_column_type(st, 21) != SQLITE_NULL)
        snprintf(e->reprocessed, sizeof e->reprocessed, "%lld",
                 (long long)sqlite3_column_int64(st, 21));
    e->status = quarantined ? "quarantined"
                : filtered  ? "filtered"
                : !e->delivered_ms ? "undelivered" : "accepted";
}

static void read_rej(sqlite3_stmt *st, struct store_browse_entry *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->id, sizeof e->id, "R%lld", (long long)sqlite3_column_int64(st, 0));
    read_common(st, e);
    store_sql_text(st, 11, e->reason, sizeof e->reason);
    e->err_code = sqlite3_column_int(st, 12);
    store_sql_text(st, 13, e->err_where, sizeof e->err_where);
    e->has_raw = sqlite3_column_int(st, 14);
    if (sqlite3_column_type(st, 15) != SQLITE_NULL)
        snprintf(e->reprocessed, sizeof e->reprocessed, "%lld",
                 (long long)sqlite3_column_int64(st, 15));
    e->rows = 0;
    e->status = "rejected";
}

/* ---- open / close -------------------------------------------------------- */

struct store_browser *store_browser_open(const struct store_opts *o, int writable,
                                         char *errbuf, size_t errcap)
{
    struct store_browser *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    if (o->type == STORE_POSTGRESQL) {
        if (writable) {
            snprintf(errbuf, errcap, "store: journal entries (reprocess, reveal) are not "
                                     "written on PostgreSQL yet");
            goto fail;
        }
        b->pg = store_pg_browser_open(o, errbuf, errcap);
        if (!b->pg)
            goto fail;
        return b;
    }
    const char *path = o->path;
    int flags = (writable ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY) | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &b->db, flags, NULL) != SQLITE_OK) {
        snprintf(errbuf, errcap, "store: open %s: %s", path,
                 b->db ? sqlite3_errmsg(b->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(b->db, 1);
    store_busy_install(b->db, &b->busy, BROWSE_BUSY_MS);
    if (writable && store_sql_exec(b->db, "PRAGMA synchronous=FULL") < 0) {
        snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(b->db));
        goto fail;
    }
    /* A store of an older schema has no `rejected` table: say so clearly. */
    sqlite3_stmt *st = NULL;
    int ok = sqlite3_prepare_v2(b->db,
                                "SELECT COALESCE(MAX(version), 0) FROM schema_version", -1, &st,
                                NULL) == SQLITE_OK &&
             sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) >= 5;
    sqlite3_finalize(st);
    if (!ok) {
        snprintf(errbuf, errcap,
                 "store: %s is not a store of this version (start the daemon on it once)", path);
        goto fail;
    }
    return b;
fail:
    store_browser_close(b);
    return NULL;
}

void store_browser_close(struct store_browser *b)
{
    if (!b)
        return;
    if (b->db)
        sqlite3_close(b->db);
    store_pg_browser_close(b->pg);
    free(b);
}

/* ---- searches ------------------------------------------------------------ */

/* Appends the filter's conditions; parameters are numbered ?1.. in the
 * fixed order bind_filter uses. */
static int where_clause(struct buf *q, const struct store_browse_filter *f, int rejected,
                        const char *ids, int64_t id_lo, int64_t id_hi)
{
    int rc = 0;
    rc |= buf_append_str(q, " WHERE 1");
    if (f->control_id)
        rc |= buf_append_str(q, " AND m.control_id = ?1");
    if (!rejected && ids && ids[0])
        rc |= buf_append_str(q, " AND m.id IN (") | buf_append_str(q, ids) |
              buf_append_str(q, ")");
    if (!rejected && id_lo)
        rc |= buf_append_str(q, " AND m.id >= ?13");
    if (!rejected && id_hi)
        rc |= buf_append_str(q, " AND m.id < ?14");
    /* First component: "APP" itself or "APP^…".  The unary + keeps the
     * planner off the sender key: walking the journal backwards and
     * filtering stops at the LIMIT, where the key would find every
     * message of the sender and sort them all (seconds on millions). */
    if (f->send_app)
        rc |= buf_append_str(q, " AND (+m.send_app = ?2 OR (+m.send_app >= ?9"
                                " AND +m.send_app < ?10))");
    if (f->send_fac)
        rc |= buf_append_str(q, " AND (+m.send_fac = ?3 OR (+m.send_fac >= ?11"
                                " AND +m.send_fac < ?12))");
    if (f->msg_type)
        rc |= buf_append_str(q, " AND +m.msg_type = ?4");
    if (f->msg_type && f->trigger)
        rc |= buf_append_str(q, " AND +m.\"trigger\" = ?5");
    if (f->since_ms)
        rc |= buf_append_str(q, " AND m.received_ms >= ?6");
    if (f->until_ms)
        rc |= buf_append_str(q, " AND m.received_ms < ?7");
    if (!rejected) {
        if (f->received_only)
            rc |= buf_append_str(q, " AND m.made_by IS NULL");
        switch (f->status) {
        case STORE_BROWSE_ACCEPTED:
            rc |= buf_append_str(q, " AND m.quarantined = 0 AND m.filtered = 0 AND "
                                    DELIVERED_SQL " IS NOT NULL");
            break;
        case STORE_BROWSE_UNDELIVERED:
            rc |= buf_append_str(q, " AND m.quarantined = 0 AND m.filtered = 0 AND "
                                    DELIVERED_SQL " IS NULL");
            break;
        case STORE_BROWSE_DUPLICATE:
            rc |= buf_append_str(q, " AND m.dup_count > 0");
            break;
        case STORE_BROWSE_QUARANTINED:
            rc |= buf_append_str(q, " AND m.quarantined = 1");
            break;
        case STORE_BROWSE_FILTERED:
            rc |= buf_append_str(q, " AND m.quarantined = 0 AND m.filtered = 1");
            break;
        default:
            break;
        }
    }
    /* Journal ids follow arrival, so newest first is the rowid order (no
     * index on the hot path); the rare statuses have partial indexes in
     * received order, and `rejected` its received_ms index. */
    int by_time = rejected || f->status == STORE_BROWSE_QUARANTINED ||
                  f->status == STORE_BROWSE_FILTERED || f->status == STORE_BROWSE_DUPLICATE;
    rc |= buf_append_str(q, by_time ? " ORDER BY m.received_ms DESC, m.id DESC"
                                    : " ORDER BY m.id DESC");
    if (f->limit)
        rc |= buf_append_str(q, " LIMIT ?8");
    return rc ? -1 : 0;
}

/* Binds `s` followed by one byte: the bounds of "s^…" ('^' then '_'). */
static void bind_suffixed(sqlite3_stmt *st, int i, const char *s, char c)
{
    size_t n = strlen(s);
    char *p = sqlite3_malloc64(n + 2);
    if (!p)
        return; /* unbound is NULL: the range matches nothing, equality still works */
    memcpy(p, s, n);
    p[n] = c;
    p[n + 1] = '\0';
    sqlite3_bind_text(st, i, p, (int)(n + 1), sqlite3_free);
}

static void bind_filter(sqlite3_stmt *st, const struct store_browse_filter *f)
{
    if (f->control_id)
        sqlite3_bind_text(st, 1, f->control_id, -1, SQLITE_STATIC);
    if (f->send_app) {
        sqlite3_bind_text(st, 2, f->send_app, -1, SQLITE_STATIC);
        bind_suffixed(st, 9, f->send_app, '^');
        bind_suffixed(st, 10, f->send_app, '_');
    }
    if (f->send_fac) {
        sqlite3_bind_text(st, 3, f->send_fac, -1, SQLITE_STATIC);
        bind_suffixed(st, 11, f->send_fac, '^');
        bind_suffixed(st, 12, f->send_fac, '_');
    }
    if (f->msg_type)
        sqlite3_bind_text(st, 4, f->msg_type, -1, SQLITE_STATIC);
    if (f->trigger)
        sqlite3_bind_text(st, 5, f->trigger, -1, SQLITE_STATIC);
    if (f->since_ms)
        sqlite3_bind_int64(st, 6, f->since_ms);
    if (f->until_ms)
        sqlite3_bind_int64(st, 7, f->until_ms);
    if (f->limit)
        sqlite3_bind_int64(st, 8, f->limit > INT64_MAX ? INT64_MAX : (int64_t)f->limit);
}

static sqlite3_stmt *prepare_search(struct store_browser *b, const struct store_browse_filter *f,
                                    int rejected, const char *ids, int64_t id_lo, int64_t id_hi)
{
    struct buf q;
    buf_init(&q, 64 * 1024);
    sqlite3_stmt *st = NULL;
    if (buf_append_str(&q, rejected ? "SELECT " REJ_COLUMNS " FROM rejected m"
                                    : "SELECT " MSG_COLUMNS " FROM messages m") == 0 &&
        where_clause(&q, f, rejected, ids, id_lo, id_hi) == 0 && buf_append(&q, "", 1) == 0 &&
        sqlite3_prepare_v2(b->db, (const char *)buf_data(&q), -1, &st, NULL) == SQLITE_OK) {
        bind_filter(st, f);
        if (!rejected && id_lo)
            sqlite3_bind_int64(st, 13, id_lo);
        if (!rejected && id_hi)
            sqlite3_bind_int64(st, 14, id_hi);
    } else {
        sqlite3_finalize(st);
        st = NULL;
    }
    buf_release(&q);
    return st;
}

/* ---- searches without an index on the hot path ---------------------------
 * The journal has no index of its own for control ids or times (each would
 * cost every ingest commit): a control id is found through the sender key
 * (send_app, send_fac, control_id), one lookup per sender, the senders
 * enumerated on the same key by skipping from one to the next; a time
 * bound becomes an id bound by bisection, since ids follow arrival (the
 * exact received_ms condition stays in the query, so a wall-clock step
 * back can only cost a message at the boundary, never add a wrong one). */

#define BROWSE_MAX_SENDERS 10000
#define BROWSE_MAX_IDS     1000

/* Ids of journal messages with this control id, as "1,2,3" in `out`
 * (empty: none).  0 / -1. */
static int control_id_ids(struct store_browser *b, const char *cid, struct buf *out)
{
    sqlite3_stmt *first = NULL, *next_fac = NULL, *next_app = NULL, *look = NULL;
    int ret = -1;
    /* The next sender after (a, f): the next facility of a, else the first
     * of the next application — two seeks on the key (a row-value range
     * seeks on the application only and scans its facilities).  Every
     * statement says "control_id IS NOT NULL": the key index is partial on
     * it, and without the condition SQLite may not use it (a whole-table
     * scan and sort per sender); a message without one has no control id
     * to find anyway. */
    if (sqlite3_prepare_v2(b->db, "SELECT send_app, send_fac FROM messages"
                                  " WHERE control_id IS NOT NULL"
                                  " ORDER BY send_app, send_fac LIMIT 1", -1, &first, NULL) ||
        sqlite3_prepare_v2(b->db, "SELECT send_app, send_fac FROM messages WHERE send_app = ?1"
                                  " AND send_fac > ?2 AND control_id IS NOT NULL"
                                  " ORDER BY send_fac LIMIT 1", -1, &next_fac, NULL) ||
        sqlite3_prepare_v2(b->db, "SELECT send_app, send_fac FROM messages WHERE send_app > ?1"
                                  " AND control_id IS NOT NULL"
                                  " ORDER BY send_app, send_fac LIMIT 1", -1, &next_app, NULL) ||
        sqlite3_prepare_v2(b->db, "SELECT id FROM messages WHERE send_app = ?1"
                                  " AND send_fac = ?2 AND control_id = ?3", -1, &look, NULL))
        goto out;
    sqlite3_stmt *cur = first;
    size_t n_ids = 0;
    for (unsigned k = 0; k < BROWSE_MAX_SENDERS; k++) {
        int rc = sqlite3_step(cur);
        if (rc == SQLITE_DONE && cur == next_fac) {
            sqlite3_reset(cur);
            cur = next_app;
            rc = sqlite3_step(cur);
        }
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW)
            goto out;
        /* Copies: the next step of `cur` invalidates its columns. */
        char app[512], fac[512];
        store_sql_text(cur, 0, app, sizeof app);
        store_sql_text(cur, 1, fac, sizeof fac);
        sqlite3_reset(cur);
        sqlite3_bind_text(look, 1, app, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(look, 2, fac, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(look, 3, cid, -1, SQLITE_STATIC);
        while ((rc = sqlite3_step(look)) == SQLITE_ROW && n_ids < BROWSE_MAX_IDS) {
            char num[24];
            snprintf(num, sizeof num, "%s%lld", n_ids ? "," : "",
                     (long long)sqlite3_column_int64(look, 0));
            if (buf_append_str(out, num) != 0)
                goto out;
            n_ids++;
        }
        sqlite3_reset(look);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            goto out;
        sqlite3_bind_text(next_fac, 1, app, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(next_fac, 2, fac, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(next_app, 1, app, -1, SQLITE_TRANSIENT);
        cur = next_fac;
    }
    ret = buf_append(out, "", 1); /* terminate */
out:
    sqlite3_finalize(first);
    sqlite3_finalize(next_fac);
    sqlite3_finalize(next_app);
    sqlite3_finalize(look);
    return ret;
}

/* The smallest journal id whose received_ms is >= t (one past the last id
 * when none): bisection over ids.  -1 on error. */
static int64_t id_at_time(struct store_browser *b, int64_t t)
{
    sqlite3_stmt *st = NULL, *mx = NULL;
    int64_t lo = 1, hi = 0, ret = -1;
    if (sqlite3_prepare_v2(b->db, "SELECT COALESCE(MAX(id), 0) FROM messages", -1, &mx, NULL) ||
        sqlite3_step(mx) != SQLITE_ROW)
        goto out;
    hi = sqlite3_column_int64(mx, 0) + 1; /* answer in [lo, hi] */
    if (sqlite3_prepare_v2(b->db, "SELECT id, received_ms FROM messages WHERE id >= ?1"
                                  " ORDER BY id LIMIT 1", -1, &st, NULL))
        goto out;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        sqlite3_bind_int64(st, 1, mid);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            hi = mid;
        } else if (rc == SQLITE_ROW) {
            int64_t id = sqlite3_column_int64(st, 0);
            if (sqlite3_column_int64(st, 1) >= t)
                hi = mid;           /* the first one at or after t is at or before id */
            else
                lo = id + 1;
        } else {
            goto out;
        }
        sqlite3_reset(st);
    }
    ret = lo;
out:
    sqlite3_finalize(st);
    sqlite3_finalize(mx);
    return ret;
}

/* 1 when some journal message has the filter's sender, 0 when none, -1
 * error: through the sender key (exact MSH-3/MSH-4 first, then MSH-3
 * values with components), never a walk.  A search for a sender the store
 * has never seen then answers at once instead of walking every message. */
static int probe(struct store_browser *b, const struct store_browse_filter *f, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(b->db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    struct store_browse_filter g = *f;
    g.control_id = NULL;
    g.since_ms = g.until_ms = 0;
    g.limit = 0;
    g.trigger = NULL;
    bind_filter(st, &g);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    return s == SQLITE_ROW ? 1 : s == SQLITE_DONE ? 0 : -1;
}

static int may_match(struct store_browser *b, const struct store_browse_filter *f)
{
    if (f->send_app) {
        int r = probe(b, f, f->send_fac ? "SELECT 1 FROM messages WHERE send_app = ?2"
                                          " AND send_fac = ?3 LIMIT 1"
                                        : "SELECT 1 FROM messages WHERE send_app = ?2 LIMIT 1");
        if (r == 0)
            r = probe(b, f, f->send_fac ? "SELECT 1 FROM messages WHERE send_app >= ?9"
                                          " AND send_app < ?10 AND (+send_fac = ?3 OR"
                                          " (+send_fac >= ?11 AND +send_fac < ?12)) LIMIT 1"
                                        : "SELECT 1 FROM messages WHERE send_app >= ?9"
                                          " AND send_app < ?10 LIMIT 1");
        if (r <= 0)
            return r;
    }
    return 1;
}

/* The same merge over PostgreSQL's two results. */
static int pg_list(struct store_browser *b, const struct store_browse_filter *f,
                   int (*cb)(void *ud, const struct store_browse_entry *e), void *ud,
                   char *errbuf, size_t errcap)
{
    int want_msg = f->status != STORE_BROWSE_REJECTED;
    int want_rej = f->status == STORE_BROWSE_ANY || f->status == STORE_BROWSE_REJECTED;
    PGresult *ms = NULL, *rs = NULL;
    int ret = -1;
    if ((want_msg && !(ms = store_pg_browse_search(b->pg, f, 0, errbuf, errcap))) ||
        (want_rej && !(rs = store_pg_browse_search(b->pg, f, 1, errbuf, errcap))))
        goto out;
    int nm = ms ? PQntuples(ms) : 0, nr = rs ? PQntuples(rs) : 0, i = 0, j = 0;
    uint64_t n = 0;
    struct store_browse_entry me, re;
    ret = 0;
    while ((i < nm || j < nr) && (!f->limit || n < f->limit)) {
        if (i < nm)
            store_pg_browse_read(ms, i, 0, &me);
        if (j < nr)
            store_pg_browse_read(rs, j, 1, &re);
        int take_msg = i < nm && (j >= nr || me.received_ms >= re.received_ms);
        int stop = cb(ud, take_msg ? &me : &re);
        i += take_msg;
        j += !take_msg;
        n++;
        if (stop) {
            ret = stop;
            break;
        }
    }
out:
    PQclear(ms);
    PQclear(rs);
    return ret;
}

int store_browser_list(struct store_browser *b, const struct store_browse_filter *f,
                       int (*cb)(void *ud, const struct store_browse_entry *e), void *ud,
                       char *errbuf, size_t errcap)
{
    if (b->pg)
        return pg_list(b, f, cb, ud, errbuf, errcap);
    int want_msg = f->status != STORE_BROWSE_REJECTED;
    if (want_msg && !f->control_id) {
        int mm = may_match(b, f);
        if (mm < 0) {
            snprintf(errbuf, errcap, "store: search: %s", sqlite3_errmsg(b->db));
            return -1;
        }
        want_msg = mm;
    }
    int want_rej = f->status == STORE_BROWSE_ANY || f->status == STORE_BROWSE_REJECTED;
    sqlite3_stmt *ms = NULL, *rs = NULL;
    int ret = -1;
    struct buf ids;
    buf_init(&ids, 32 * 1024);
    int64_t id_lo = 0, id_hi = 0;
    if (want_msg && f->control_id) {
        if (control_id_ids(b, f->control_id, &ids) != 0) {
            snprintf(errbuf, errcap, "store: search: %s", sqlite3_errmsg(b->db));
            goto out;
        }
        want_msg = ids.len > 1;
    }
    if (want_msg && f->since_ms && (id_lo = id_at_time(b, f->since_ms)) < 0) {
        snprintf(errbuf, errcap, "store: search: %s", sqlite3_errmsg(b->db));
        goto out;
    }
    if (want_msg && f->until_ms && (id_hi = id_at_time(b, f->until_ms)) < 0) {
        snprintf(errbuf, errcap, "store: search: %s", sqlite3_errmsg(b->db));
        goto out;
    }
    if ((want_msg && !(ms = prepare_search(b, f, 0, ids.len ? (const char *)buf_data(&ids) : NULL,
                                           id_lo, id_hi))) ||
        (want_rej && !(rs = prepare_search(b, f, 1, NULL, 0, 0)))) {
        snprintf(errbuf, errcap, "store: search: %s", sqlite3_errmsg(b->db));
        goto out;
    }
    /* Merge the two newest-first streams. */
    struct store_browse_entry me, re;
    int mrc = ms ? sqlite3_step(ms) : SQLITE_DONE;
    int rrc = rs ? sqlite3_step(rs) : SQLITE_DONE;
    uint64_t n = 0;
    while ((mrc == SQLITE_ROW || rrc == SQLITE_ROW) && (!f->limit || n < f->limit)) {
        int take_msg = mrc == SQLITE_ROW &&
                       (rrc != SQLITE_ROW ||
                        sqlite3_column_int64(ms, 1) >= sqlite3_column_int64(rs, 1));
        int stop;
        if (take_msg) {
            read_msg(ms, &me);
            stop = cb(ud, &me);
            mrc = sqlite3_step(ms);
        } else {
            read_rej(rs, &re);
            stop = cb(ud, &re);
            rrc = sqlite3_step(rs);
        }
        n++;
        if (stop) {
            ret = stop;
            goto out;
        }
    }
    if ((mrc != SQLITE_ROW && mrc != SQLITE_DONE) || (rrc != SQLITE_ROW && rrc != SQLITE_DONE)) {
        snprintf(errbuf, errcap, "store: search: %s", sqlite3_errmsg(b->db));
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(ms);
    sqlite3_finalize(rs);
    buf_release(&ids);
    return ret;
}

/* "17" → 17 (journal), "R3" → 3 (rejected).  -1 when malformed. */
static int parse_id(const char *id, int64_t *n, int *rejected)
{
    *rejected = id[0] == 'R' || id[0] == 'r';
    const char *p = id + (*rejected ? 1 : 0);
    uint64_t v;
    if (num_parse_u64((const uint8_t *)p, strlen(p), INT64_MAX, &v) != 0 || v == 0)
        return -1;
    *n = (int64_t)v;
    return 0;
}

int store_browser_get(struct store_browser *b, const char *id, struct store_browse_entry *out,
                      struct buf *raw, char *errbuf, size_t errcap)
{
    int64_t n;
    int rejected;
    if (parse_id(id, &n, &rejected) != 0)
        return 0;
    if (b->pg)
        return store_pg_browser_get(b->pg, n, rejected, out, raw, errbuf, errcap);
    sqlite3_stmt *st = NULL;
    const char *sql = rejected ? "SELECT " REJ_COLUMNS ", m.raw FROM rejected m WHERE m.id = ?1"
                               : "SELECT " MSG_COLUMNS ", m.raw FROM messages m WHERE m.id = ?1";
    if (sqlite3_prepare_v2(b->db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(errbuf, errcap, "store: %s", sqlite3_errmsg(b->db));
        return -1;
    }
    sqlite3_bind_int64(st, 1, n);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        if (rejected)
            read_rej(st, out);
        else
            read_msg(st, out);
        int col = rejected ? 16 : 22;
        const void *p = sqlite3_column_blob(st, col);
        size_t len = (size_t)sqlite3_column_bytes(st, col);
        ret = 1;
        if (raw && p && len && buf_append(raw, p, len) != 0) {
            snprintf(errbuf, errcap, "store: message %s too large to show", id);
            ret = -1;
        }
    } else if (rc != SQLITE_DONE) {
        snprintf(errbuf, errcap, "store: %s", sqlite3_errmsg(b->db));
        ret = -1;
    }
    sqlite3_finalize(st);
    return ret;
}

int64_t store_browser_accepted_key(struct store_browser *b, const char *send_app,
                                   const char *send_fac, const char *control_id)
{
    if (!control_id || !control_id[0])
        return 0;
    if (b->pg)
        return -1; /* only a writable browser asks, and there is none on PostgreSQL */
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(b->db,
                           "SELECT id FROM messages WHERE send_app = ?1 AND send_fac = ?2"
                           " AND control_id = ?3 AND made_by IS NULL ORDER BY id LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, send_app, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, send_fac, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, control_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int64_t id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    return id;
}

/* ---- journal entries ----------------------------------------------------- */

static int insert_rows(sqlite3 *db, int64_t msg_id, const uint8_t *p, size_t len, int64_t layout)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO rows (msg_id, seq, data, layout) VALUES (?1, ?2, ?3, ?4)",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    const uint8_t *end = p + len;
    int64_t seq = 0;
    int rc = SQLITE_DONE;
    while (p < end && rc == SQLITE_DONE) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *line_end = nl ? nl : end;
        if (line_end > p) { /* as the writer: blank lines are not rows */
            sqlite3_bind_int64(st, 1, msg_id);
            sqlite3_bind_int64(st, 2, seq++);
            sqlite3_bind_blob64(st, 3, p, (sqlite3_uint64)(line_end - p), SQLITE_STATIC);
            if (layout > 0)
                sqlite3_bind_int64(st, 4, layout);
            else
                sqlite3_bind_null(st, 4);
            rc = sqlite3_step(st);
            sqlite3_reset(st);
        }
        p = nl ? nl + 1 : end;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int64_t store_browser_add(struct store_browser *b, const struct store_journal_entry *e,
                          char *errbuf, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    int64_t id = -1;
    if (b->pg) {
        snprintf(errbuf, errcap, "store: journal entries are not written on PostgreSQL yet");
        return -1;
    }
    if (store_sql_exec(b->db, "BEGIN IMMEDIATE") < 0)
        goto fail;
    if (sqlite3_prepare_v2(b->db,
                           "INSERT INTO messages (received_ms, listener, peer, send_app, send_fac,"
                           " control_id, msg_type, \"trigger\", version, ack_code, raw,"
                           " quarantined, reason, row_count, made_by, origin)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, '', NULL, 0, ?9, ?10,"
                           " ?11, ?12)",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, e->now_ms);
    sqlite3_bind_text(st, 2, e->listener ? e->listener : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, e->peer ? e->peer : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, e->send_app ? e->send_app : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, e->send_fac ? e->send_fac : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, e->msg_type ? e->msg_type : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, e->trigger ? e->trigger : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, e->version ? e->version : "", -1, SQLITE_STATIC);
    if (e->reason)
        sqlite3_bind_text(st, 9, e->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, e->row_count);
    sqlite3_bind_text(st, 11, e->made_by, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 12, e->origin, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    id = sqlite3_last_insert_rowid(b->db);
    if (e->rows_len && insert_rows(b->db, id, e->rows, e->rows_len, e->layout) < 0)
        goto fail;
    if (store_sql_exec(b->db, "COMMIT") < 0)
        goto fail;
    return id;
fail:
    snprintf(errbuf, errcap, "store: journal entry: %s", sqlite3_errmsg(b->db));
    sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(b->db))
        sqlite3_exec(b->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}
