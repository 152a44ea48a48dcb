/* daily — per-day totals of messages and ACK codes per listener and sender,
 * so that counts survive a restart and "how many NACKs did this sender get
 * yesterday" has an answer after the process that counted them is gone.
 *
 * Design: one wide row per (day, listener, sender), upserted by adding
 * deltas, on a connection of its own so the message writer's prepared
 * statements and transaction pacing are untouched; the rows are few (one per
 * active sender per day) and a flush is one short transaction every few
 * seconds, so it contends with the group commits only briefly.  The table
 * is created here (IF NOT EXISTS) rather than by a numbered migration in
 * store_db.c, so this feature does not take a schema version number.
 *
 * On PostgreSQL every node adds what it counted itself into one table
 * (PostgreSQL migration 5 in pg_db.c): each message is counted by the one
 * node that answered it, so the table holds the cluster's totals, summed
 * by the database, never computed twice.  A node whose connection broke
 * reconnects at its next flush (the counts wait in the monitor until one
 * succeeds).
 *
 * Threads: a struct store_daily belongs to one thread (the daemon's monitor
 * thread); store_daily_query runs on any thread with its own read-only
 * connection. */
#include "store/store_int.h"

#include "core/conninfo.h"

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest a flush waits for the message writer's lock: a flush is
 * retried at the next period, so waiting long buys nothing. */
#define STORE_DAILY_BUSY_MS 5000

struct store_daily {
    sqlite3 *db;
    sqlite3_stmt *upsert, *begin, *commit, *rollback;
    struct store_busy busy;
    PGconn *pg;               /* PostgreSQL instead of db */
};

/* The same upsert on PostgreSQL (every node's counts add up). */
#define DAILY_PG_UPSERT                                                                     \
    "INSERT INTO daily_totals (day, listener, sender, received, duplicates,"                \
    " aa, ae, ar, ca, ce, cr)"                                                               \
    " VALUES ($1, $2, $3, $4::int8, $5::int8, $6::int8, $7::int8, $8::int8, $9::int8,"      \
    " $10::int8, $11::int8)"                                                                 \
    " ON CONFLICT (day, listener, sender) DO UPDATE SET"                                    \
    " received = daily_totals.received + EXCLUDED.received,"                                \
    " duplicates = daily_totals.duplicates + EXCLUDED.duplicates,"                          \
    " aa = daily_totals.aa + EXCLUDED.aa, ae = daily_totals.ae + EXCLUDED.ae,"              \
    " ar = daily_totals.ar + EXCLUDED.ar, ca = daily_totals.ca + EXCLUDED.ca,"              \
    " ce = daily_totals.ce + EXCLUDED.ce, cr = daily_totals.cr + EXCLUDED.cr"

#define DAILY_QUERY_COLUMNS                                                                 \
    "SELECT day, listener, sender, received, duplicates, aa, ae, ar, ca, ce, cr"            \
    " FROM daily_totals"

static const char daily_schema[] =
    "CREATE TABLE IF NOT EXISTS daily_totals ("
    " day TEXT NOT NULL,"
    " listener TEXT NOT NULL,"
    " sender TEXT NOT NULL,"
    " received INTEGER NOT NULL DEFAULT 0,"
    " duplicates INTEGER NOT NULL DEFAULT 0,"
    " aa INTEGER NOT NULL DEFAULT 0, ae INTEGER NOT NULL DEFAULT 0,"
    " ar INTEGER NOT NULL DEFAULT 0, ca INTEGER NOT NULL DEFAULT 0,"
    " ce INTEGER NOT NULL DEFAULT 0, cr INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (day, listener, sender)) WITHOUT ROWID";

static void daily_err(char *errbuf, size_t errcap, const char *what, sqlite3 *db)
{
    snprintf(errbuf, errcap, "store: daily totals: %s: %s", what,
             db ? sqlite3_errmsg(db) : "out of memory");
}

/* ---- PostgreSQL -------------------------------------------------------------- */

static void daily_pg_err(char *errbuf, size_t errcap, const char *what, const char *m)
{
    char line[256];
    store_pg_msg(m, line, sizeof line);
    snprintf(errbuf, errcap, "store: daily totals: %s: %s", what, line);
}

/* A connection to o's server; NULL with errbuf.  A server that does not
 * answer within the connect timeout, or a statement within a few seconds,
 * fails the flush instead of holding the monitor thread. */
static PGconn *daily_pg_connect(const struct store_opts *o, char *errbuf, size_t errcap)
{
    PGconn *c = store_pg_connect(o);
    if (!c) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    PGresult *r = NULL;
    if (PQstatus(c) == CONNECTION_OK) {
        r = PQexec(c, "SET statement_timeout = 5000");
        if (PQresultStatus(r) == PGRES_COMMAND_OK) {
            PQclear(r);
            return c;
        }
    }
    daily_pg_err(errbuf, errcap, "connect", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return NULL;
}

static int daily_pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}

static int daily_pg_add(struct store_daily *d, const struct store_daily_row *rows, size_t n,
                        char *errbuf, size_t errcap)
{
    if (PQstatus(d->pg) != CONNECTION_OK) {
        PQreset(d->pg);
        if (PQstatus(d->pg) != CONNECTION_OK ||
            daily_pg_exec(d->pg, "SET statement_timeout = 5000") < 0) {
            daily_pg_err(errbuf, errcap, "connect", PQerrorMessage(d->pg));
            return -1;
        }
    }
    if (daily_pg_exec(d->pg, "BEGIN") < 0) {
        daily_pg_err(errbuf, errcap, "begin", PQerrorMessage(d->pg));
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const struct store_daily_row *r = &rows[i];
        char num[8][24];
        const char *v[11] = { r->day, r->listener, r->sender };
        snprintf(num[0], sizeof num[0], "%llu", (unsigned long long)r->received);
        snprintf(num[1], sizeof num[1], "%llu", (unsigned long long)r->duplicates);
        for (int c = 0; c < 6; c++)
            snprintf(num[2 + c], sizeof num[2 + c], "%llu", (unsigned long long)r->acks[c]);
        for (int k = 0; k < 8; k++)
            v[3 + k] = num[k];
        PGresult *res = PQexecParams(d->pg, DAILY_PG_UPSERT, 11, NULL, v, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            daily_pg_err(errbuf, errcap, "update", PQresultErrorMessage(res));
        PQclear(res);
        if (!ok)
            goto fail;
    }
    PGresult *res = PQexec(d->pg, "COMMIT");
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
    if (!ok)
        daily_pg_err(errbuf, errcap, "commit", PQresultErrorMessage(res));
    PQclear(res);
    return ok ? 0 : -1;
fail:
    (void)daily_pg_exec(d->pg, "ROLLBACK");
    return -1;
}

static int daily_pg_query(const struct store_opts *o, const char *from_day,
                          void (*cb)(void *ud, const struct store_daily_row *row), void *ud,
                          char *errbuf, size_t errcap)
{
    PGconn *c = daily_pg_connect(o, errbuf, errcap);
    if (!c)
        return -1;
    const char *v[1] = { from_day };
    PGresult *r = PQexecParams(c,
                               DAILY_QUERY_COLUMNS " WHERE $1::text IS NULL OR day >= $1::text"
                               " ORDER BY day, listener, sender",
                               1, NULL, v, NULL, NULL, 0);
    int ret = -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (st && strcmp(st, "42P01") == 0)
            ret = 0; /* undefined table: a database no node of this version ran on yet */
        else
            daily_pg_err(errbuf, errcap, "query", PQresultErrorMessage(r));
        goto out;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        struct store_daily_row row;
        memset(&row, 0, sizeof row);
        snprintf(row.day, sizeof row.day, "%s", PQgetvalue(r, i, 0));
        row.listener = PQgetvalue(r, i, 1);
        row.sender = PQgetvalue(r, i, 2);
        row.received = strtoull(PQgetvalue(r, i, 3), NULL, 10);
        row.duplicates = strtoull(PQgetvalue(r, i, 4), NULL, 10);
        for (int k = 0; k < 6; k++)
            row.acks[k] = strtoull(PQgetvalue(r, i, 5 + k), NULL, 10);
        cb(ud, &row);
    }
    ret = 0;
out:
    PQclear(r);
    PQfinish(c);
    return ret;
}

/* ---- the calls ----------------------------------------------------------------- */

struct store_daily *store_daily_open(const struct store_opts *o, char *errbuf, size_t errcap)
{
    struct store_daily *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    if (o->type == STORE_POSTGRESQL) {
        d->pg = daily_pg_connect(o, errbuf, errcap);
        if (!d->pg)
            goto fail;
        return d;
    }
    const char *path = o->path;
    if (sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        daily_err(errbuf, errcap, "open", d->db);
        goto fail;
    }
    store_busy_install(d->db, &d->busy, STORE_DAILY_BUSY_MS);
    if (sqlite3_exec(d->db, "PRAGMA synchronous=FULL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(d->db, daily_schema, NULL, NULL, NULL) != SQLITE_OK) {
        daily_err(errbuf, errcap, "create table", d->db);
        goto fail;
    }
    /* The message writer does the checkpoints (see store_db.c). */
    sqlite3_wal_autocheckpoint(d->db, 0);
    if (sqlite3_prepare_v2(d->db,
                           "INSERT INTO daily_totals (day, listener, sender, received, duplicates,"
                           " aa, ae, ar, ca, ce, cr)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                           " ON CONFLICT (day, listener, sender) DO UPDATE SET"
                           " received = received + excluded.received,"
                           " duplicates = duplicates + excluded.duplicates,"
                           " aa = aa + excluded.aa, ae = ae + excluded.ae,"
                           " ar = ar + excluded.ar, ca = ca + excluded.ca,"
                           " ce = ce + excluded.ce, cr = cr + excluded.cr",
                           -1, &d->upsert, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(d->db, "BEGIN IMMEDIATE", -1, &d->begin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(d->db, "COMMIT", -1, &d->commit, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(d->db, "ROLLBACK", -1, &d->rollback, NULL) != SQLITE_OK) {
        daily_err(errbuf, errcap, "prepare", d->db);
        goto fail;
    }
    return d;
fail:
    store_daily_close(d);
    return NULL;
}

void store_daily_close(struct store_daily *d)
{
    if (!d)
        return;
    sqlite3_finalize(d->upsert);
    sqlite3_finalize(d->begin);
    sqlite3_finalize(d->commit);
    sqlite3_finalize(d->rollback);
    sqlite3_close(d->db);
    if (d->pg)
        PQfinish(d->pg);
    free(d);
}

static int step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int store_daily_add(struct store_daily *d, const struct store_daily_row *rows, size_t n,
                    char *errbuf, size_t errcap)
{
    if (n == 0)
        return 0;
    if (d->pg)
        return daily_pg_add(d, rows, n, errbuf, errcap);
    if (step_once(d->begin) != 0) {
        daily_err(errbuf, errcap, "begin", d->db);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const struct store_daily_row *r = &rows[i];
        sqlite3_stmt *st = d->upsert;
        sqlite3_bind_text(st, 1, r->day, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->listener, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, r->sender, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)r->received);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)r->duplicates);
        for (int c = 0; c < 6; c++)
            sqlite3_bind_int64(st, 6 + c, (sqlite3_int64)r->acks[c]);
        if (step_once(st) != 0) {
            daily_err(errbuf, errcap, "update", d->db);
            goto fail;
        }
    }
    if (step_once(d->commit) != 0) {
        daily_err(errbuf, errcap, "commit", d->db);
        goto fail;
    }
    return 0;
fail:
    if (!sqlite3_get_autocommit(d->db) && step_once(d->rollback) != 0)
        daily_err(errbuf, errcap, "rollback", d->db);
    return -1;
}

int store_daily_query(const struct store_opts *o, const char *from_day,
                      void (*cb)(void *ud, const struct store_daily_row *row), void *ud,
                      char *errbuf, size_t errcap)
{
    if (o->type == STORE_POSTGRESQL)
        return daily_pg_query(o, from_day, cb, ud, errbuf, errcap);
    const char *path = o->path;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        daily_err(errbuf, errcap, "open", db);
        goto out;
    }
    sqlite3_busy_timeout(db, STORE_DAILY_BUSY_MS);
    int rc = sqlite3_prepare_v2(db,
                                DAILY_QUERY_COLUMNS
                                " WHERE ?1 IS NULL OR day >= ?1 ORDER BY day, listener, sender",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        /* A store written before daily totals existed: no rows. */
        if (strstr(sqlite3_errmsg(db), "no such table")) {
            ret = 0;
            goto out;
        }
        daily_err(errbuf, errcap, "query", db);
        goto out;
    }
    if (from_day)
        sqlite3_bind_text(st, 1, from_day, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_daily_row r;
        memset(&r, 0, sizeof r);
        const unsigned char *day = sqlite3_column_text(st, 0);
        snprintf(r.day, sizeof r.day, "%s", day ? (const char *)day : "");
        r.listener = (const char *)sqlite3_column_text(st, 1);
        r.sender = (const char *)sqlite3_column_text(st, 2);
        r.listener = r.listener ? r.listener : "";
        r.sender = r.sender ? r.sender : "";
        r.received = (uint64_t)sqlite3_column_int64(st, 3);
        r.duplicates = (uint64_t)sqlite3_column_int64(st, 4);
        for (int c = 0; c < 6; c++)
            r.acks[c] = (uint64_t)sqlite3_column_int64(st, 5 + c);
        cb(ud, &r);
    }
    if (rc != SQLITE_DONE) {
        daily_err(errbuf, errcap, "query", db);
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}
