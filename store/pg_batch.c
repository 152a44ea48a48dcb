/* pg_batch — the audit sink's blocks on PostgreSQL, shared by every node
 * on the database (behind store/batch.c's store_batches_* calls).
 *
 * Design: row ids come from one sequence but two nodes commit out of id
 * order, so a block cannot be an id range as on SQLite: a block owns the
 * rows that carry its id (rows.batch_id).  Building blocks runs under a
 * transaction-scoped advisory lock, so one node at a time does it and the
 * others skip the step; every row is given a block once (its batch_id is
 * set only where it is still NULL, and a block whose rows were not all
 * still free is rolled back).  The open block is simply the rows without
 * one: it is sealed, by size or by the age of its oldest message, when the
 * batcher finds it so.
 *
 * Claims: one statement picks the oldest block that is sealed and due, or
 * `uploading` with its lease run out (the node sending it died or lost the
 * database), with FOR UPDATE SKIP LOCKED so two nodes claiming at once take
 * two blocks instead of waiting for each other, and gives it to this node
 * (owner, lease_until on the server's clock, so the nodes' clocks do not
 * matter).  The sender renews the lease of what it has in flight; done,
 * retry and fail change a block only while this node still owns it.  At
 * start a node takes back only the blocks its own name holds (a previous
 * run of it was stopped mid-upload), never another live node's.  The one
 * duplicate window stays the block in flight when its node dies: it was
 * maybe received, and is sent again by whoever claims it next.
 *
 * Threads: one handle, one thread at a time (the sink thread). */
#include "store/store_int.h"

#include "core/clock.h"
#include "core/log.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Any fixed number not taken by store/pg_db.c (7401402 migrations,
 * 7401403 housekeeping). */
#define PGB_BUILD_LOCK  "7401404"
#define PGB_SCAN_CHUNK  20000
#define PGB_NOW_MS      "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

#define PGB_COLUMNS                                                                           \
    "id, state, created_ms, COALESCE(sealed_ms, 0), COALESCE(done_ms, 0), next_ms,"          \
    " first_row_id, last_row_id, row_count, bytes, attempts, resends, redrives,"             \
    " COALESCE(last_status, 0), COALESCE(last_error, ''), COALESCE(file_name, ''),"          \
    " COALESCE(layout, 0)"

struct store_pg_batches {
    struct store_pg_side c;
    uint32_t lease_ms;
    /* Scan scratch: the rows looked at in one step. */
    int64_t *ids;
    size_t cap_ids;
    struct buf arr;            /* one block's ids as an array literal */
};

/* ---- small helpers ------------------------------------------------------ */

/* Runs one statement with text parameters; returns the result when its
 * status is the expected one, else NULL (error kept). */
static PGresult *run(struct store_pg_batches *pb, const char *sql, int n, const char *const *v,
                     ExecStatusType want, int binary)
{
    return store_pg_side_run(&pb->c, sql, n, v, want, binary);
}

static void rollback(struct store_pg_batches *pb)
{
    store_pg_side_rollback(&pb->c);
}

static const char *const state_names[STORE_BATCH_NSTATES] = {
    "open", "sealed", "uploading", "done", "failed",
};

static enum store_batch_state state_of(const char *t)
{
    for (int i = 0; i < STORE_BATCH_NSTATES; i++)
        if (strcmp(t, state_names[i]) == 0)
            return (enum store_batch_state)i;
    return STORE_BATCH_FAILED; /* the CHECK constraint makes this unreachable */
}

/* Row `row` of a result whose first columns are PGB_COLUMNS. */
static void read_batch(const PGresult *r, int row, struct store_batch *b)
{
    memset(b, 0, sizeof *b);
    b->id = store_pg_num(r, row, 0);
    b->state = state_of(PQgetvalue(r, row, 1));
    b->created_ms = store_pg_num(r, row, 2);
    b->sealed_ms = store_pg_num(r, row, 3);
    b->done_ms = store_pg_num(r, row, 4);
    b->next_ms = store_pg_num(r, row, 5);
    b->first_row_id = store_pg_num(r, row, 6);
    b->last_row_id = store_pg_num(r, row, 7);
    b->row_count = (uint64_t)store_pg_num(r, row, 8);
    b->bytes = (uint64_t)store_pg_num(r, row, 9);
    b->attempts = (unsigned)store_pg_num(r, row, 10);
    b->resends = (unsigned)store_pg_num(r, row, 11);
    b->redrives = (unsigned)store_pg_num(r, row, 12);
    b->last_status = (int)store_pg_num(r, row, 13);
    store_pg_text(r, row, 14, b->last_error, sizeof b->last_error);
    store_pg_text(r, row, 15, b->file_name, sizeof b->file_name);
    b->layout = store_pg_num(r, row, 16);
}

/* ---- open / close -------------------------------------------------------- */

struct store_pg_batches *store_pg_batches_open(const struct store_opts *o, char *errbuf,
                                               size_t errcap)
{
    struct store_pg_batches *pb = calloc(1, sizeof *pb);
    if (!pb) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    buf_init(&pb->arr, (size_t)64 << 20);
    pb->lease_ms = o->lease_ms ? o->lease_ms : STORE_BATCH_LEASE_MS;
    if (store_pg_side_init(&pb->c, o) < 0 || store_pg_side_ok(&pb->c) < 0) {
        /* The message names libpq's reason, never the password. */
        snprintf(errbuf, errcap, "store: batches: %s", pb->c.err);
        goto fail;
    }
    PGresult *r = run(pb, "SELECT to_regclass('batches') IS NOT NULL", 0, NULL, PGRES_TUPLES_OK, 0);
    int have = r && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!have) {
        snprintf(errbuf, errcap, "store: the database has no batches table (%s)",
                 r ? "open it with this build first" : pb->c.err);
        goto fail;
    }
    return pb;
fail:
    store_pg_batches_close(pb);
    return NULL;
}

void store_pg_batches_close(struct store_pg_batches *pb)
{
    if (!pb)
        return;
    store_pg_side_release(&pb->c);
    free(pb->ids);
    buf_release(&pb->arr);
    free(pb);
}

const char *store_pg_batches_errmsg(const struct store_pg_batches *pb)
{
    return pb->c.err[0] ? pb->c.err : "no error";
}

uint32_t store_pg_batches_lease_ms(const struct store_pg_batches *pb)
{
    return pb->lease_ms;
}

/* ---- recovery ------------------------------------------------------------ */

int store_pg_batches_recover(struct store_pg_batches *pb, uint64_t *resent)
{
    *resent = 0;
    const char *v[1] = { pb->c.node };
    /* Only this node's name: what other nodes hold is theirs until their
     * lease runs out, and they may well be alive. */
    return store_pg_side_exec(&pb->c,
                              "UPDATE batches SET state = 'sealed', resends = resends + 1,"
                              " next_ms = 0, lease_until = NULL"
                              " WHERE state = 'uploading' AND owner = $1",
                              1, v, resent);
}

/* ---- the batcher step ------------------------------------------------------ */

/* Writes one block over ids[0..n), all of row layout `layout` (0: none
 * recorded), in the open transaction.  0 / -1. */
static int write_block(struct store_pg_batches *pb, const int64_t *ids, size_t n, uint64_t bytes,
                       int64_t layout, int64_t now_ms)
{
    char a[7][24];
    snprintf(a[0], sizeof a[0], "%" PRId64, now_ms);
    snprintf(a[1], sizeof a[1], "%" PRId64, ids[0]);
    snprintf(a[2], sizeof a[2], "%" PRId64, ids[n - 1]);
    snprintf(a[3], sizeof a[3], "%zu", n);
    snprintf(a[4], sizeof a[4], "%" PRIu64, bytes);
    snprintf(a[6], sizeof a[6], "%" PRId64, layout);
    const char *v[7] = { a[0], a[1], a[2], a[3], a[4], pb->c.node, layout > 0 ? a[6] : NULL };
    PGresult *r = run(pb,
                      "INSERT INTO batches (state, created_ms, sealed_ms, first_row_id,"
                      " last_row_id, row_count, bytes, node, layout)"
                      " VALUES ('sealed', $1, $1, $2, $3, $4, $5, $6, $7) RETURNING id",
                      7, v, PGRES_TUPLES_OK, 0);
    if (!r)
        return -1;
    store_pg_text(r, 0, 0, a[5], sizeof a[5]);
    PQclear(r);
    buf_reset(&pb->arr);
    if (buf_append(&pb->arr, "{", 1) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char one[24];
        int k = snprintf(one, sizeof one, "%s%" PRId64, i ? "," : "", ids[i]);
        if (buf_append(&pb->arr, one, (size_t)k) < 0)
            return -1;
    }
    if (buf_append(&pb->arr, "}", 2) < 0)
        return -1;
    const char *v2[2] = { a[5], (const char *)buf_data(&pb->arr) };
    /* Rows still free only: should another node have given one of them a
     * block (it cannot while the build lock is held), the counts differ
     * and the whole step is rolled back. */
    r = run(pb, "UPDATE rows SET batch_id = $1 WHERE id = ANY($2::bigint[]) AND batch_id IS NULL",
            2, v2, PGRES_COMMAND_OK, 0);
    if (!r)
        return -1;
    int ok = strtoull(PQcmdTuples(r), NULL, 10) == n;
    PQclear(r);
    if (!ok)
        snprintf(pb->c.err, sizeof pb->c.err, "rows of a new block were taken meanwhile");
    return ok ? 0 : -1;
}

int store_pg_batches_scan(struct store_pg_batches *pb, const struct store_batch_limits *l,
                          int64_t now_ms, struct store_batch_scan *out)
{
    memset(out, 0, sizeof *out);
    uint64_t max_rows = l->max_rows ? l->max_rows : 1;
    uint64_t max_bytes = l->max_bytes ? l->max_bytes : 1;
    size_t chunk = l->scan_chunk ? l->scan_chunk : PGB_SCAN_CHUNK;
    if (store_pg_side_begin(&pb->c) < 0)
        return -1;
    PGresult *r = run(pb, "SELECT pg_try_advisory_xact_lock(" PGB_BUILD_LOCK ")", 0, NULL,
                      PGRES_TUPLES_OK, 0);
    if (!r)
        goto fail;
    int locked = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!locked) {
        /* Another node is building blocks right now: that is its step. */
        out->caught_up = 1;
        return store_pg_side_commit(&pb->c);
    }
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", chunk);
    const char *v[1] = { lim };
    r = run(pb,
            "SELECT r.id, length(r.data), m.received_ms, COALESCE(r.layout, 0) FROM rows r"
            " JOIN messages m ON m.id = r.msg_id WHERE r.batch_id IS NULL ORDER BY r.id"
            " LIMIT $1",
            1, v, PGRES_TUPLES_OK, 0);
    if (!r)
        goto fail;
    size_t n = (size_t)PQntuples(r);
    if (n > pb->cap_ids) {
        int64_t *p = realloc(pb->ids, n * sizeof *p);
        if (!p) {
            PQclear(r);
            snprintf(pb->c.err, sizeof pb->c.err, "out of memory");
            goto fail;
        }
        pb->ids = p;
        pb->cap_ids = n;
    }
    size_t start = 0;
    uint64_t rows = 0, bytes = 0, sealed = 0;
    int64_t oldest = 0, layout = 0;
    for (size_t i = 0; i < n; i++) {
        pb->ids[i] = store_pg_num(r, (int)i, 0);
        uint64_t len = (uint64_t)store_pg_num(r, (int)i, 1) + 1; /* + its '\n' */
        int64_t rcv = store_pg_num(r, (int)i, 2);
        int64_t lay = store_pg_num(r, (int)i, 3);
        /* A block has one header: rows of another layout (a schema or
         * format change) start the next one.  A message's rows share one
         * layout, so this never splits a message. */
        if (rows && (rows + 1 > max_rows || bytes + len > max_bytes || lay != layout)) {
            if (write_block(pb, &pb->ids[start], rows, bytes, layout, now_ms) < 0) {
                PQclear(r);
                goto fail;
            }
            sealed++;
            out->rows_added += rows;
            start = i;
            rows = bytes = 0;
        }
        if (!rows || rcv < oldest)
            oldest = rcv;
        layout = lay;
        rows++;
        bytes += len;
    }
    PQclear(r);
    out->caught_up = n < chunk;
    /* The rest is the open block: sealed once every committed row was seen
     * and it is full or its oldest message old enough. */
    if (out->caught_up && rows &&
        (rows >= max_rows || now_ms - oldest >= (int64_t)l->max_age_ms)) {
        if (write_block(pb, &pb->ids[start], rows, bytes, layout, now_ms) < 0)
            goto fail;
        sealed++;
        out->rows_added += rows;
    }
    if (store_pg_side_commit(&pb->c) < 0)
        goto fail;
    out->sealed = sealed;
    return 0;
fail:
    rollback(pb);
    memset(out, 0, sizeof *out);
    return -1;
}

/* ---- row layouts ------------------------------------------------------------- */

int store_pg_batches_layout(struct store_pg_batches *pb, int64_t id, struct buf *out, char *ext,
                            size_t extcap)
{
    char a[24];
    snprintf(a, sizeof a, "%" PRId64, id);
    const char *v[1] = { a };
    PGresult *r = run(pb, "SELECT header, file_ext FROM row_layouts WHERE id = $1::int8", 1, v,
                      PGRES_TUPLES_OK, 1);
    if (!r)
        return -1;
    int ret = 0;
    if (PQntuples(r) == 1) {
        int n = PQgetlength(r, 0, 0), e = PQgetlength(r, 0, 1);
        snprintf(ext, extcap, "%.*s", e, PQgetvalue(r, 0, 1));
        ret = n > 0 && buf_append(out, PQgetvalue(r, 0, 0), (size_t)n) == 0 ? 1 : -1;
    }
    PQclear(r);
    return ret;
}

int store_pg_layout_register(const struct store_opts *o, const char *header,
                             const char *file_ext, int64_t *id, char *errbuf,
                             size_t errcap)
{
    PGconn *c = store_pg_connect(o);
    int ret = -1;
    char m[256];
    if (!c) {
        snprintf(errbuf, errcap, "store: out of memory");
        return -1;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        store_pg_msg(PQerrorMessage(c), m, sizeof m);
        snprintf(errbuf, errcap, "store: row layouts: %s", m);
        goto out;
    }
    char now[24];
    snprintf(now, sizeof now, "%" PRId64, clock_wall_ms());
    const Oid types[3] = { 17 /* bytea */, 25 /* text */, 20 /* int8 */ };
    const char *v[3] = { header, file_ext, now };
    const int len[3] = { (int)strlen(header), 0, 0 }, fmt[3] = { 1, 0, 0 };
    /* Every node starting with the same rules finds the same id. */
    PGresult *r = PQexecParams(c,
                               "INSERT INTO row_layouts (header, file_ext, created_ms)"
                               " VALUES ($1, $2, $3) ON CONFLICT (header, file_ext)"
                               " DO UPDATE SET file_ext = EXCLUDED.file_ext RETURNING id",
                               3, types, v, len, fmt, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        *id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        ret = 0;
    } else {
        store_pg_msg(PQresultErrorMessage(r), m, sizeof m);
        snprintf(errbuf, errcap, "store: row layouts: %s", m);
    }
    PQclear(r);
out:
    PQfinish(c);
    return ret;
}

/* ---- claims and leases ------------------------------------------------------ */

int store_pg_batches_claim(struct store_pg_batches *pb, int64_t now_ms, struct store_batch *out)
{
    char now[24], lease[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(lease, sizeof lease, "%" PRIu32, pb->lease_ms);
    const char *v[3] = { now, pb->c.node, lease };
    PGresult *r = run(pb,
                      "WITH pick AS (SELECT id, state AS was, owner AS was_owner FROM batches"
                      " WHERE state <> 'done' AND ((state = 'sealed' AND next_ms <= $1)"
                      " OR (state = 'uploading' AND lease_until < " PGB_NOW_MS "))"
                      " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                      " UPDATE batches b SET state = 'uploading', attempts = b.attempts + 1,"
                      " resends = b.resends + CASE WHEN pick.was = 'uploading' THEN 1 ELSE 0 END,"
                      " owner = $2, lease_until = " PGB_NOW_MS " + $3::bigint"
                      " FROM pick WHERE b.id = pick.id"
                      " RETURNING b.id, b.state, b.created_ms, COALESCE(b.sealed_ms, 0),"
                      " COALESCE(b.done_ms, 0), b.next_ms, b.first_row_id, b.last_row_id,"
                      " b.row_count, b.bytes, b.attempts, b.resends, b.redrives,"
                      " COALESCE(b.last_status, 0), COALESCE(b.last_error, ''),"
                      " COALESCE(b.file_name, ''), COALESCE(b.layout, 0), pick.was,"
                      " COALESCE(pick.was_owner, '')",
                      3, v, PGRES_TUPLES_OK, 0);
    if (!r)
        return -1;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return 0;
    }
    read_batch(r, 0, out);
    if (strcmp(PQgetvalue(r, 0, 17), "uploading") == 0) {
        char q[200];
        log_warn("audit_block_taken_over",
                 " batch=%" PRId64 " from=%s hint=\"its node's lease ran out mid-upload: sent "
                 "again, the connector may see it twice\"",
                 out->id, log_quote(q, sizeof q, PQgetvalue(r, 0, 18)));
    }
    PQclear(r);
    return 1;
}

int store_pg_batches_renew(struct store_pg_batches *pb, const int64_t *ids, size_t n)
{
    char arr[24 * 64 + 4];
    size_t o = 0;
    arr[o++] = '{';
    for (size_t i = 0; i < n && o + 24 < sizeof arr; i++)
        o += (size_t)snprintf(arr + o, sizeof arr - o, "%s%" PRId64, i ? "," : "", ids[i]);
    snprintf(arr + o, sizeof arr - o, "}");
    char lease[24];
    snprintf(lease, sizeof lease, "%" PRIu32, pb->lease_ms);
    const char *v[3] = { pb->c.node, lease, arr };
    PGresult *r = run(pb,
                      "UPDATE batches SET lease_until = " PGB_NOW_MS " + $2::bigint"
                      " WHERE owner = $1 AND state = 'uploading' AND id = ANY($3::bigint[])",
                      3, v, PGRES_COMMAND_OK, 0);
    PQclear(r);
    return r ? 0 : -1;
}

/* ---- reads ------------------------------------------------------------------ */

int store_pg_batches_read_rows(struct store_pg_batches *pb, const struct store_batch *b,
                               struct buf *out, uint64_t *rows)
{
    *rows = 0;
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, b->id);
    const char *v[1] = { id };
    PGresult *r = run(pb, "SELECT data FROM rows WHERE batch_id = $1 ORDER BY id", 1, v,
                      PGRES_TUPLES_OK, 1);
    if (!r)
        return -1;
    int ret = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        size_t n = (size_t)PQgetlength(r, i, 0);
        uint8_t *w = buf_reserve(out, n + 1);
        if (!w) {
            snprintf(pb->c.err, sizeof pb->c.err, "block larger than its buffer");
            ret = -1;
            break;
        }
        if (n)
            memcpy(w, PQgetvalue(r, i, 0), n);
        w[n] = '\n';
        buf_commit(out, n + 1);
        (*rows)++;
    }
    PQclear(r);
    return ret;
}

int store_pg_batches_get(struct store_pg_batches *pb, int64_t id, struct store_batch *out)
{
    char a[24];
    snprintf(a, sizeof a, "%" PRId64, id);
    const char *v[1] = { a };
    PGresult *r = run(pb, "SELECT " PGB_COLUMNS " FROM batches WHERE id = $1", 1, v,
                      PGRES_TUPLES_OK, 0);
    if (!r)
        return -1;
    int found = PQntuples(r) == 1;
    if (found)
        read_batch(r, 0, out);
    PQclear(r);
    return found;
}

int store_pg_batches_failed(struct store_pg_batches *pb, int64_t id, int requeue,
                            void (*cb)(void *ud, const struct store_batch *b), void *ud,
                            uint64_t *n)
{
    *n = 0;
    char a[24];
    snprintf(a, sizeof a, "%" PRId64, id);
    const char *v[1] = { a };
    if (requeue && store_pg_side_begin(&pb->c) < 0)
        return -1;
    /* FOR UPDATE: what is listed is what is re-queued, whichever node
     * looks at the same moment. */
    PGresult *r = run(pb,
                      requeue ? "SELECT " PGB_COLUMNS " FROM batches WHERE state = 'failed'"
                                " AND ($1::int8 = 0 OR id = $1::int8) ORDER BY id FOR UPDATE"
                              : "SELECT " PGB_COLUMNS " FROM batches WHERE state = 'failed'"
                                " AND ($1::int8 = 0 OR id = $1::int8) ORDER BY id",
                      1, v, PGRES_TUPLES_OK, 0);
    if (!r)
        goto fail;
    for (int i = 0; i < PQntuples(r); i++) {
        struct store_batch b;
        read_batch(r, i, &b);
        if (cb)
            cb(ud, &b);
    }
    *n = (uint64_t)PQntuples(r);
    PQclear(r);
    if (!requeue)
        return 0;
    if (store_pg_side_exec(&pb->c,
                           "UPDATE batches SET state = 'sealed', next_ms = 0,"
                           " redrives = redrives + 1, owner = NULL, lease_until = NULL"
                           " WHERE state = 'failed' AND ($1::int8 = 0 OR id = $1::int8)",
                           1, v, n) < 0)
        goto fail;
    if (store_pg_side_commit(&pb->c) < 0)
        goto fail;
    return 0;
fail:
    rollback(pb);
    *n = 0;
    return -1;
}

int store_pg_batches_counts(struct store_pg_batches *pb, int with_done,
                            struct store_batch_counts *out)
{
    memset(out, 0, sizeof *out);
    PGresult *r = run(pb,
                      "SELECT state, COUNT(*), COALESCE(SUM(row_count), 0) FROM batches"
                      " WHERE state <> 'done' GROUP BY state",
                      0, NULL, PGRES_TUPLES_OK, 0);
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        enum store_batch_state s = state_of(PQgetvalue(r, i, 0));
        out->batches[s] = (uint64_t)store_pg_num(r, i, 1);
        out->rows_in_batches += (uint64_t)store_pg_num(r, i, 2);
    }
    PQclear(r);
    r = run(pb,
            with_done ? "SELECT (SELECT COUNT(*) FROM rows WHERE batch_id IS NULL),"
                        " (SELECT COUNT(*) FROM batches WHERE state = 'done')"
                      : "SELECT (SELECT COUNT(*) FROM rows WHERE batch_id IS NULL), 0",
            0, NULL, PGRES_TUPLES_OK, 0);
    if (!r)
        return -1;
    out->rows_unbatched = (uint64_t)store_pg_num(r, 0, 0);
    if (with_done)
        out->batches[STORE_BATCH_DONE] = (uint64_t)store_pg_num(r, 0, 1);
    PQclear(r);
    return 0;
}

/* ---- outcomes ----------------------------------------------------------------- */

/* 1 when the UPDATE in `r` (cleared here) changed block `id`, i.e. this
 * node still held it; else 0 with the reason kept. */
static int still_mine(struct store_pg_batches *pb, PGresult *r, int64_t id)
{
    int mine = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (!mine)
        snprintf(pb->c.err, sizeof pb->c.err, "batch %" PRId64 " is no longer this node's", id);
    return mine;
}

int store_pg_batches_done(struct store_pg_batches *pb, int64_t id, int status,
                          const char *summary, const char *file_name, int64_t now_ms,
                          uint64_t *marked)
{
    *marked = 0;
    char a_now[24], a_st[16], a_id[24];
    snprintf(a_now, sizeof a_now, "%" PRId64, now_ms);
    snprintf(a_st, sizeof a_st, "%d", status);
    snprintf(a_id, sizeof a_id, "%" PRId64, id);
    if (store_pg_side_begin(&pb->c) < 0)
        return -1;
    const char *v[6] = { a_now, a_st, summary, file_name, a_id, pb->c.node };
    PGresult *r = run(pb,
                      "UPDATE batches SET state = 'done', done_ms = $1, last_status = $2,"
                      " response = $3, file_name = $4, last_error = NULL, lease_until = NULL"
                      " WHERE id = $5 AND state = 'uploading' AND owner = $6",
                      6, v, PGRES_COMMAND_OK, 0);
    if (!r || !still_mine(pb, r, id))
        goto fail;
    /* Messages of this block whose rows are now all in done blocks. */
    const char *v2[2] = { a_now, a_id };
    if (store_pg_side_exec(&pb->c,
                           "UPDATE messages m SET delivered_ms = $1 WHERE m.delivered_ms IS NULL"
                           " AND m.id IN (SELECT msg_id FROM rows WHERE batch_id = $2)"
                           " AND NOT EXISTS (SELECT 1 FROM rows r LEFT JOIN batches b"
                           "  ON b.id = r.batch_id"
                           "  WHERE r.msg_id = m.id AND b.state IS DISTINCT FROM 'done')",
                           2, v2, marked) < 0)
        goto fail;
    if (store_pg_side_commit(&pb->c) < 0)
        goto fail;
    return 0;
fail:
    rollback(pb);
    *marked = 0;
    return -1;
}

int store_pg_batches_set(struct store_pg_batches *pb, int64_t id, const char *state, int status,
                         const char *error, int64_t next_ms)
{
    char a_st[16], a_next[24], a_id[24];
    snprintf(a_st, sizeof a_st, "%d", status);
    snprintf(a_next, sizeof a_next, "%" PRId64, next_ms);
    snprintf(a_id, sizeof a_id, "%" PRId64, id);
    const char *v[6] = { state, a_st, error, a_next, a_id, pb->c.node };
    PGresult *r = run(pb,
                      "UPDATE batches SET state = $1, last_status = $2, last_error = $3,"
                      " next_ms = $4, lease_until = NULL"
                      " WHERE id = $5 AND state = 'uploading' AND owner = $6",
                      6, v, PGRES_COMMAND_OK, 0);
    return r && still_mine(pb, r, id) ? 0 : -1;
}
