/* pg_side — the connection of one of the store's other users on
 * PostgreSQL (the audit batches, the SMS schedule): its own copy of what
 * it takes to connect, made again when the server restarted or failed
 * over, but never inside a transaction (what that did is gone with the
 * old connection; the caller's step fails and is tried again whole).
 *
 * Threads: one struct store_pg_side, one thread at a time. */
#include "store/store_int.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int store_pg_side_init(struct store_pg_side *c, const struct store_opts *o)
{
    memset(c, 0, sizeof *c);
    c->url = strdup(o->url ? o->url : "");
    c->node = strdup(o->node && o->node[0] ? o->node : "node");
    c->password = o->password ? strdup(o->password) : NULL;
    c->opts.type = STORE_POSTGRESQL;
    c->opts.url = c->url;
    c->opts.password = c->password;
    c->opts.node = c->node;
    if (!c->url || !c->node || (o->password && !c->password)) {
        snprintf(c->err, sizeof c->err, "out of memory");
        return -1;
    }
    return 0;
}

void store_pg_side_release(struct store_pg_side *c)
{
    if (c->conn)
        PQfinish(c->conn);
    c->conn = NULL;
    if (c->password) {
        explicit_bzero(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->url);
    free(c->node);
    c->url = c->password = c->node = NULL;
}

void store_pg_side_error(struct store_pg_side *c, const char *m)
{
    store_pg_msg(m, c->err, sizeof c->err);
}

int store_pg_side_ok(struct store_pg_side *c)
{
    if (c->conn && PQstatus(c->conn) == CONNECTION_OK)
        return 0;
    if (c->in_tx) {
        snprintf(c->err, sizeof c->err, "connection lost inside a transaction");
        return -1;
    }
    if (c->conn)
        PQfinish(c->conn);
    c->conn = store_pg_connect(&c->opts);
    if (!c->conn) {
        snprintf(c->err, sizeof c->err, "out of memory");
        return -1;
    }
    if (PQstatus(c->conn) != CONNECTION_OK) {
        store_pg_side_error(c, PQerrorMessage(c->conn));
        return -1;
    }
    return 0;
}

PGresult *store_pg_side_run(struct store_pg_side *c, const char *sql, int n,
                            const char *const *v, int want, int binary)
{
    if (store_pg_side_ok(c) < 0)
        return NULL;
    PGresult *r = PQexecParams(c->conn, sql, n, NULL, v, NULL, NULL, binary);
    if (PQresultStatus(r) != (ExecStatusType)want) {
        store_pg_side_error(c, r ? PQresultErrorMessage(r) : PQerrorMessage(c->conn));
        PQclear(r);
        return NULL;
    }
    return r;
}

int store_pg_side_exec(struct store_pg_side *c, const char *sql, int n, const char *const *v,
                       uint64_t *changed)
{
    PGresult *r = store_pg_side_run(c, sql, n, v, PGRES_COMMAND_OK, 0);
    if (changed)
        *changed = r ? (uint64_t)strtoull(PQcmdTuples(r), NULL, 10) : 0;
    PQclear(r);
    return r ? 0 : -1;
}

int store_pg_side_begin(struct store_pg_side *c)
{
    PGresult *r = store_pg_side_run(c, "BEGIN", 0, NULL, PGRES_COMMAND_OK, 0);
    PQclear(r);
    if (r)
        c->in_tx = 1;
    return r ? 0 : -1;
}

int store_pg_side_commit(struct store_pg_side *c)
{
    PGresult *r = store_pg_side_run(c, "COMMIT", 0, NULL, PGRES_COMMAND_OK, 0);
    /* COMMIT of a failed transaction answers ROLLBACK. */
    int ok = r && strcmp(PQcmdStatus(r), "COMMIT") == 0;
    if (r && !ok)
        snprintf(c->err, sizeof c->err, "transaction rolled back");
    PQclear(r);
    if (!ok)
        store_pg_side_rollback(c);
    c->in_tx = 0;
    return ok ? 0 : -1;
}

void store_pg_side_rollback(struct store_pg_side *c)
{
    if (c->conn && PQstatus(c->conn) == CONNECTION_OK &&
        PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        PQclear(PQexec(c->conn, "ROLLBACK"));
    c->in_tx = 0;
}

int64_t store_pg_num(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

void store_pg_text(const PGresult *r, int row, int col, char *out, size_t cap)
{
    snprintf(out, cap, "%s", PQgetvalue(r, row, col));
}
