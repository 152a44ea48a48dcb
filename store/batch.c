/* batch — the audit sink's batches in the store: the batcher step that
 * groups committed rows into batches and seals them, and every later state
 * change (claim, done, retry, fail, redrive).
 *
 * Design: a batch is a range of row ids (see migration 2 in store_db.c), so
 * batching never writes into the rows themselves.  The handle keeps the
 * open batch and the scan cursor in memory; they are loaded at open and
 * every change is written in one short transaction, so the memory copy and
 * the database never disagree about anything a crash could lose.  Reads
 * (the scan of new rows, a batch's rows) run outside write transactions so
 * the store writer is kept waiting only for the few updates.
 *
 * Only the sink thread's handle writes batches; another process (redrive)
 * changes failed batches to sealed and nothing else, which the scan state
 * does not depend on.
 *
 * On PostgreSQL every call goes to store/pg_batch.c instead (the handle
 * then holds only that backend's state); callers cannot tell.
 *
 * Threads: one handle, one thread at a time.  The path-based helpers open
 * their own connection. */
#include "store/store_int.h"

#include "core/clock.h"
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_SCAN_CHUNK     20000
#define BATCH_BUSY_MS        5000

/* The batch being filled, mirrored from its database row (id 0: none yet
 * in the database, rows 0: no batch open). */
struct open_batch {
    int64_t id;
    int64_t created_ms;
    int64_t first_row, last_row, first_msg, last_msg, msg_from;
    int starts_mid;
    uint64_t rows, bytes;
    int64_t layout; /* of every row in it; 0: none recorded */
};

/* A batch sealed during one scan step, waiting for the write. */
struct sealed_batch {
    struct open_batch b;
    int ends_mid;
};

struct store_batches {
    struct store_pg_batches *pg;  /* PostgreSQL: everything goes there */
    sqlite3 *db;
    char *path;
    int64_t cursor;         /* highest row id already in a batch */
    int64_t prev_last_msg;  /* last_msg_id of the newest batch */
    int open_dirty;         /* the open batch changed since it was written */
    struct open_batch open;
    struct sealed_batch *sealed;
    size_t n_sealed, cap_sealed;
    sqlite3_stmt *scan, *max_row;
    struct store_busy busy;
};

static const char *const state_names[STORE_BATCH_NSTATES] = {
    "open", "sealed", "uploading", "done", "failed",
};

const char *store_batch_state_name(enum store_batch_state s)
{
    return (unsigned)s < STORE_BATCH_NSTATES ? state_names[s] : NULL;
}

static enum store_batch_state state_of(const unsigned char *txt)
{
    for (int i = 0; i < STORE_BATCH_NSTATES; i++)
        if (txt && strcmp((const char *)txt, state_names[i]) == 0)
            return (enum store_batch_state)i;
    return STORE_BATCH_FAILED; /* the CHECK constraint makes this unreachable */
}

const char *store_batches_errmsg(const struct store_batches *sb)
{
    if (sb && sb->pg)
        return store_pg_batches_errmsg(sb->pg);
    return sb && sb->db ? sqlite3_errmsg(sb->db) : "no connection";
}

/* ---- small SQL helpers --------------------------------------------------- */

static void rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Prepares, binds int64 parameters in order, steps once.  Returns the step
 * result (SQLITE_ROW / SQLITE_DONE / error); on SQLITE_ROW *out (optional)
 * gets column 0.  For the one-shot statements of rare transitions. */
static int run_i64(sqlite3 *db, const char *sql, int64_t *out, int n, ...)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
    va_end(ap);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && out)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc;
}

#define BATCH_COLUMNS                                                                       \
    "id, state, created_ms, COALESCE(sealed_ms, 0), COALESCE(done_ms, 0), next_ms,"        \
    " first_row_id, last_row_id, row_count, bytes, attempts, resends, redrives,"           \
    " COALESCE(last_status, 0), last_error, file_name, COALESCE(layout, 0)"

static void read_batch(sqlite3_stmt *st, struct store_batch *b)
{
    memset(b, 0, sizeof *b);
    b->id = sqlite3_column_int64(st, 0);
    b->state = state_of(sqlite3_column_text(st, 1));
    b->created_ms = sqlite3_column_int64(st, 2);
    b->sealed_ms = sqlite3_column_int64(st, 3);
    b->done_ms = sqlite3_column_int64(st, 4);
    b->next_ms = sqlite3_column_int64(st, 5);
    b->first_row_id = sqlite3_column_int64(st, 6);
    b->last_row_id = sqlite3_column_int64(st, 7);
    b->row_count = (uint64_t)sqlite3_column_int64(st, 8);
    b->bytes = (uint64_t)sqlite3_column_int64(st, 9);
    b->attempts = (unsigned)sqlite3_column_int(st, 10);
    b->resends = (unsigned)sqlite3_column_int(st, 11);
    b->redrives = (unsigned)sqlite3_column_int(st, 12);
    b->last_status = sqlite3_column_int(st, 13);
    store_sql_text(st, 14, b->last_error, sizeof b->last_error);
    store_sql_text(st, 15, b->file_name, sizeof b->file_name);
    b->layout = sqlite3_column_int64(st, 16);
}

/* ---- open / close -------------------------------------------------------- */

static int has_batches_table(sqlite3 *db)
{
    int64_t n = 0;
    int rc = run_i64(db,
                     "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'batches'",
                     &n, 0);
    return rc == SQLITE_ROW && n == 1;
}

/* Loads the scan cursor and the open batch from the database. */
static int load_state(struct store_batches *sb)
{
    sqlite3_stmt *st = NULL;
    int ret = -1;
    sb->cursor = 0;
    sb->prev_last_msg = 0;
    memset(&sb->open, 0, sizeof sb->open);
    if (sqlite3_prepare_v2(sb->db,
                           "SELECT id, state, created_ms, first_row_id, last_row_id, first_msg_id,"
                           " last_msg_id, msg_from, starts_mid, row_count, bytes,"
                           " COALESCE(layout, 0) FROM batches ORDER BY id DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        sb->cursor = sqlite3_column_int64(st, 4);
        sb->prev_last_msg = sqlite3_column_int64(st, 6);
        if (state_of(sqlite3_column_text(st, 1)) == STORE_BATCH_OPEN) {
            struct open_batch *o = &sb->open;
            o->id = sqlite3_column_int64(st, 0);
            o->created_ms = sqlite3_column_int64(st, 2);
            o->first_row = sqlite3_column_int64(st, 3);
            o->last_row = sqlite3_column_int64(st, 4);
            o->first_msg = sqlite3_column_int64(st, 5);
            o->last_msg = sqlite3_column_int64(st, 6);
            o->msg_from = sqlite3_column_int64(st, 7);
            o->starts_mid = sqlite3_column_int(st, 8);
            o->rows = (uint64_t)sqlite3_column_int64(st, 9);
            o->bytes = (uint64_t)sqlite3_column_int64(st, 10);
            o->layout = sqlite3_column_int64(st, 11);
        }
    } else if (rc != SQLITE_DONE) {
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    return ret;
}

static struct store_batches *sqlite_open(const char *path, char *errbuf, size_t errcap)
{
    struct store_batches *sb = calloc(1, sizeof *sb);
    if (!sb || !(sb->path = strdup(path))) {
        snprintf(errbuf, errcap, "store: out of memory");
        free(sb);
        return NULL;
    }
    if (sqlite3_open_v2(path, &sb->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(errbuf, errcap, "store: open %s: %s", path,
                 sb->db ? sqlite3_errmsg(sb->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(sb->db, 1);
    store_busy_install(sb->db, &sb->busy, BATCH_BUSY_MS);
    /* synchronous=FULL: a state change that returned is on disk, which is
     * what lets a restart trust `done` and resend `uploading`. */
    if (store_sql_exec(sb->db, "PRAGMA synchronous=FULL") < 0 ||
        store_sql_exec(sb->db, "PRAGMA temp_store=MEMORY") < 0) {
        snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(sb->db));
        goto fail;
    }
    if (!has_batches_table(sb->db)) {
        snprintf(errbuf, errcap, "store: %s has no batches table (open it with this build first)",
                 path);
        goto fail;
    }
    if (sqlite3_prepare_v3(sb->db,
                           "SELECT id, msg_id, length(data), COALESCE(layout, 0) FROM rows"
                           " WHERE id > ?1"
                           " ORDER BY id LIMIT ?2",
                           -1, SQLITE_PREPARE_PERSISTENT, &sb->scan, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(sb->db, "SELECT COALESCE(MAX(id), 0) FROM rows", -1,
                           SQLITE_PREPARE_PERSISTENT, &sb->max_row, NULL) != SQLITE_OK) {
        snprintf(errbuf, errcap, "store: prepare: %s", sqlite3_errmsg(sb->db));
        goto fail;
    }
    if (load_state(sb) < 0) {
        snprintf(errbuf, errcap, "store: reading batches: %s", sqlite3_errmsg(sb->db));
        goto fail;
    }
    return sb;
fail:
    store_batches_close(sb);
    return NULL;
}

struct store_batches *store_batches_open(const struct store_opts *o, char *errbuf, size_t errcap)
{
    if (errcap)
        errbuf[0] = '\0';
    if (o->type != STORE_POSTGRESQL) {
        if (!o->path) {
            snprintf(errbuf, errcap, "store: no database path");
            return NULL;
        }
        return sqlite_open(o->path, errbuf, errcap);
    }
    struct store_batches *sb = calloc(1, sizeof *sb);
    if (!sb) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    sb->pg = store_pg_batches_open(o, errbuf, errcap);
    if (!sb->pg) {
        free(sb);
        return NULL;
    }
    return sb;
}

void store_batches_close(struct store_batches *sb)
{
    if (!sb)
        return;
    store_pg_batches_close(sb->pg);
    sqlite3_finalize(sb->scan);
    sqlite3_finalize(sb->max_row);
    if (sb->db)
        sqlite3_close(sb->db);
    free(sb->sealed);
    free(sb->path);
    free(sb);
}

/* ---- recovery ------------------------------------------------------------ */

int store_batches_recover(struct store_batches *sb, uint64_t *resent)
{
    *resent = 0;
    if (sb->pg)
        return store_pg_batches_recover(sb->pg, resent);
    if (store_sql_exec(sb->db, "BEGIN IMMEDIATE") < 0)
        return -1;
    int rc = run_i64(sb->db,
                     "UPDATE batches SET state = 'sealed', resends = resends + 1, next_ms = 0"
                     " WHERE state = 'uploading'",
                     NULL, 0);
    if (rc != SQLITE_DONE) {
        rollback(sb->db);
        return -1;
    }
    *resent = (uint64_t)sqlite3_changes(sb->db);
    if (store_sql_exec(sb->db, "COMMIT") < 0) {
        rollback(sb->db);
        *resent = 0;
        return -1;
    }
    return 0;
}

int store_batches_release(struct store_batches *sb, uint64_t *released)
{
    *released = 0;
    /* The same statement as a restart's recovery: only this node's name. */
    return sb->pg ? store_pg_batches_recover(sb->pg, released) : 0;
}

/* ---- the batcher step ---------------------------------------------------- */

static int push_sealed(struct store_batches *sb, const struct open_batch *o, int ends_mid)
{
    if (sb->n_sealed == sb->cap_sealed) {
        size_t ncap = sb->cap_sealed ? sb->cap_sealed * 2 : 16;
        struct sealed_batch *p = realloc(sb->sealed, ncap * sizeof *p);
        if (!p)
            return -1;
        sb->sealed = p;
        sb->cap_sealed = ncap;
    }
    sb->sealed[sb->n_sealed].b = *o;
    sb->sealed[sb->n_sealed].ends_mid = ends_mid;
    sb->n_sealed++;
    return 0;
}

static int insert_batch(sqlite3 *db, const struct open_batch *o, const char *state,
                        int64_t sealed_ms, int ends_mid, int64_t *id)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "INSERT INTO batches (state, created_ms, sealed_ms, first_row_id,"
                                " last_row_id, first_msg_id, last_msg_id, msg_from, starts_mid,"
                                " ends_mid, row_count, bytes, layout)"
                                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, o->created_ms);
    if (sealed_ms)
        sqlite3_bind_int64(st, 3, sealed_ms);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, o->first_row);
    sqlite3_bind_int64(st, 5, o->last_row);
    sqlite3_bind_int64(st, 6, o->first_msg);
    sqlite3_bind_int64(st, 7, o->last_msg);
    sqlite3_bind_int64(st, 8, o->msg_from);
    sqlite3_bind_int(st, 9, o->starts_mid);
    sqlite3_bind_int(st, 10, ends_mid);
    sqlite3_bind_int64(st, 11, (int64_t)o->rows);
    sqlite3_bind_int64(st, 12, (int64_t)o->bytes);
    if (o->layout > 0)
        sqlite3_bind_int64(st, 13, o->layout);
    else
        sqlite3_bind_null(st, 13);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return -1;
    *id = sqlite3_last_insert_rowid(db);
    return 0;
}

static int update_batch(sqlite3 *db, const struct open_batch *o, const char *state,
                        int64_t sealed_ms, int ends_mid)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "UPDATE batches SET state = ?1, sealed_ms = ?2, last_row_id = ?3,"
                                " last_msg_id = ?4, ends_mid = ?5, row_count = ?6, bytes = ?7"
                                " WHERE id = ?8 AND state = 'open'",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    if (sealed_ms)
        sqlite3_bind_int64(st, 2, sealed_ms);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_int64(st, 3, o->last_row);
    sqlite3_bind_int64(st, 4, o->last_msg);
    sqlite3_bind_int(st, 5, ends_mid);
    sqlite3_bind_int64(st, 6, (int64_t)o->rows);
    sqlite3_bind_int64(st, 7, (int64_t)o->bytes);
    sqlite3_bind_int64(st, 8, o->id);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE && sqlite3_changes(db) == 1 ? 0 : -1;
}

/* Writes the batches sealed in this step and the open batch, in one
 * transaction.  On success the memory state advances; on failure the
 * caller restores it from its snapshot. */
static int write_step(struct store_batches *sb, int64_t now_ms)
{
    if (store_sql_exec(sb->db, "BEGIN IMMEDIATE") < 0)
        return -1;
    for (size_t i = 0; i < sb->n_sealed; i++) {
        struct sealed_batch *s = &sb->sealed[i];
        int rc;
        if (s->b.id)
            rc = update_batch(sb->db, &s->b, "sealed", now_ms, s->ends_mid);
        else
            rc = insert_batch(sb->db, &s->b, "sealed", now_ms, s->ends_mid, &s->b.id);
        if (rc < 0)
            goto fail;
    }
    if (sb->open.rows && sb->open_dirty) {
        int rc = sb->open.id ? update_batch(sb->db, &sb->open, "open", 0, 0)
                             : insert_batch(sb->db, &sb->open, "open", 0, 0, &sb->open.id);
        if (rc < 0)
            goto fail;
    }
    if (store_sql_exec(sb->db, "COMMIT") < 0)
        goto fail;
    return 0;
fail:
    rollback(sb->db);
    return -1;
}

int store_batches_scan(struct store_batches *sb, const struct store_batch_limits *l,
                       int64_t now_ms, struct store_batch_scan *out)
{
    memset(out, 0, sizeof *out);
    if (sb->pg)
        return store_pg_batches_scan(sb->pg, l, now_ms, out);
    uint64_t max_rows = l->max_rows ? l->max_rows : 1;
    uint64_t max_bytes = l->max_bytes ? l->max_bytes : 1;
    size_t chunk = l->scan_chunk ? l->scan_chunk : BATCH_SCAN_CHUNK;

    /* Snapshot: a failed write leaves memory as it was, and the same rows
     * are looked at again on the next step. */
    struct open_batch saved_open = sb->open;
    int64_t saved_cursor = sb->cursor, saved_prev = sb->prev_last_msg;
    int saved_dirty = sb->open_dirty;
    sb->n_sealed = 0;

    sqlite3_stmt *st = sb->scan;
    sqlite3_bind_int64(st, 1, sb->cursor);
    sqlite3_bind_int64(st, 2, (int64_t)chunk);
    size_t seen = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t rid = sqlite3_column_int64(st, 0);
        int64_t mid = sqlite3_column_int64(st, 1);
        uint64_t len = (uint64_t)sqlite3_column_int64(st, 2) + 1; /* + its '\n' */
        int64_t layout = sqlite3_column_int64(st, 3);
        struct open_batch *o = &sb->open;
        /* A block has one header: rows of another layout (a schema or
         * format change) start a new one.  A message's rows share one
         * layout, so this never splits a message. */
        if (o->rows && (o->rows + 1 > max_rows || o->bytes + len > max_bytes ||
                        layout != o->layout)) {
            if (push_sealed(sb, o, mid == o->last_msg) < 0) {
                rc = SQLITE_NOMEM;
                break;
            }
            memset(o, 0, sizeof *o);
        }
        if (!o->rows) {
            o->id = 0;
            o->created_ms = now_ms;
            o->first_row = rid;
            o->first_msg = mid;
            o->msg_from = sb->prev_last_msg + 1;
            o->starts_mid = mid == sb->prev_last_msg;
            o->layout = layout;
        }
        o->last_row = rid;
        o->last_msg = mid;
        o->rows++;
        o->bytes += len;
        sb->cursor = rid;
        sb->prev_last_msg = mid;
        sb->open_dirty = 1;
        seen++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        goto fail;
    out->rows_added = seen;
    out->caught_up = seen < chunk;
    /* By age, or full, only once caught up: every row of a message is
     * committed in one transaction, so then the open batch's last message is
     * whole.  A full batch is not kept waiting for one more row (which may
     * be max_age away on a quiet feed) just to learn that it is full. */
    if (out->caught_up && sb->open.rows &&
        (sb->open.rows >= max_rows || now_ms - sb->open.created_ms >= (int64_t)l->max_age_ms)) {
        if (push_sealed(sb, &sb->open, 0) < 0)
            goto fail;
        memset(&sb->open, 0, sizeof sb->open);
    }
    if (!sb->n_sealed && !(sb->open.rows && sb->open_dirty))
        return 0;
    if (write_step(sb, now_ms) < 0)
        goto fail;
    out->sealed = sb->n_sealed;
    sb->open_dirty = 0;
    sb->n_sealed = 0;
    return 0;
fail:
    sb->open = saved_open;
    sb->cursor = saved_cursor;
    sb->prev_last_msg = saved_prev;
    sb->open_dirty = saved_dirty;
    sb->n_sealed = 0;
    memset(out, 0, sizeof *out);
    return -1;
}

/* ---- row layouts ---------------------------------------------------------- */

int store_layout_register(const struct store_opts *o, const char *header, const char *file_ext,
                          int64_t *id, char *errbuf, size_t errcap)
{
    *id = 0;
    if (o->type == STORE_POSTGRESQL)
        return store_pg_layout_register(o, header, file_ext, id, errbuf, errcap);
    const char *path = o->path;
    sqlite3 *db = NULL;
    int ret = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(errbuf, errcap, "store: open %s: %s", path,
                 db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(db, BATCH_BUSY_MS);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO row_layouts (header, file_ext, created_ms)"
                           " VALUES (?1, ?2, ?3) ON CONFLICT (header, file_ext)"
                           " DO UPDATE SET file_ext = excluded.file_ext RETURNING id",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(errbuf, errcap, "store: row layouts: %s", sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_bind_blob64(st, 1, header, strlen(header), SQLITE_STATIC);
    sqlite3_bind_text(st, 2, file_ext, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, clock_wall_ms());
    if (sqlite3_step(st) == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        ret = 0;
    } else {
        snprintf(errbuf, errcap, "store: row layouts: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
out:
    sqlite3_close(db);
    return ret;
}

int store_batches_layout(struct store_batches *sb, int64_t id, struct buf *out, char *ext,
                         size_t extcap)
{
    if (sb->pg)
        return store_pg_batches_layout(sb->pg, id, out, ext, extcap);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(sb->db, "SELECT header, file_ext FROM row_layouts WHERE id = ?1", -1,
                           &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), ret = rc == SQLITE_DONE ? 0 : -1;
    if (rc == SQLITE_ROW) {
        const void *h = sqlite3_column_blob(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        store_sql_text(st, 1, ext, extcap);
        ret = n > 0 && h && buf_append(out, h, (size_t)n) == 0 ? 1 : -1;
    }
    sqlite3_finalize(st);
    return ret;
}

/* ---- uploads ------------------------------------------------------------- */

int store_batches_claim(struct store_batches *sb, int64_t now_ms, struct store_batch *out)
{
    if (sb->pg)
        return store_pg_batches_claim(sb->pg, now_ms, out);
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (store_sql_exec(sb->db, "BEGIN IMMEDIATE") < 0)
        return -1;
    if (sqlite3_prepare_v2(sb->db,
                           "SELECT " BATCH_COLUMNS " FROM batches"
                           " WHERE state = 'sealed' AND next_ms <= ?1 ORDER BY id LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, now_ms);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        read_batch(st, out);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (found) {
        if (run_i64(sb->db,
                    "UPDATE batches SET state = 'uploading', attempts = attempts + 1"
                    " WHERE id = ?1 AND state = 'sealed'",
                    NULL, 1, out->id) != SQLITE_DONE)
            goto fail;
        out->state = STORE_BATCH_UPLOADING;
        out->attempts++;
    }
    if (store_sql_exec(sb->db, "COMMIT") < 0)
        goto fail;
    return found;
fail:
    sqlite3_finalize(st);
    rollback(sb->db);
    return -1;
}

int store_batches_read_rows(struct store_batches *sb, const struct store_batch *b,
                            struct buf *out, uint64_t *rows)
{
    if (sb->pg)
        return store_pg_batches_read_rows(sb->pg, b, out, rows);
    sqlite3_stmt *st = NULL;
    *rows = 0;
    if (sqlite3_prepare_v2(sb->db,
                           "SELECT data FROM rows WHERE id BETWEEN ?1 AND ?2 ORDER BY id", -1,
                           &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, b->first_row_id);
    sqlite3_bind_int64(st, 2, b->last_row_id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        uint8_t *w = buf_reserve(out, n + 1);
        if (!w) {
            rc = SQLITE_FULL;
            break;
        }
        if (n)
            memcpy(w, p, n);
        w[n] = '\n';
        buf_commit(out, n + 1);
        (*rows)++;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* Marks message `m` delivered if every batch holding rows of it is done
 * (batch `self` counts as done: it is being marked in this transaction) and
 * its last row is in one of them.  Batches overlapping one message are
 * neighbours by id, so this walks from `self` both ways. */
static int mark_boundary(sqlite3 *db, int64_t self, int64_t m, int64_t now_ms, uint64_t *marked)
{
    sqlite3_stmt *st = NULL;
    int ok = 1, whole = 0, rc;
    /* Earlier batches: they overlap m while their last message is m. */
    if (sqlite3_prepare_v2(db,
                           "SELECT state, last_msg_id, starts_mid, first_msg_id FROM batches"
                           " WHERE id < ?1 ORDER BY id DESC",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, self);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_int64(st, 1) != m)
            break;
        if (state_of(sqlite3_column_text(st, 0)) != STORE_BATCH_DONE) {
            ok = 0;
            break;
        }
        if (sqlite3_column_int64(st, 3) != m || !sqlite3_column_int(st, 2))
            break; /* m starts in this one */
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return -1;
    if (!ok)
        return 0;
    /* This batch and later ones: m ends in the first whose ends_mid is 0. */
    if (sqlite3_prepare_v2(db,
                           "SELECT id, state, first_msg_id, last_msg_id, ends_mid FROM batches"
                           " WHERE id >= ?1 ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, self);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        if (id != self) {
            if (sqlite3_column_int64(st, 2) != m)
                break;
            if (state_of(sqlite3_column_text(st, 1)) != STORE_BATCH_DONE) {
                ok = 0;
                break;
            }
        }
        if (sqlite3_column_int64(st, 3) != m || !sqlite3_column_int(st, 4)) {
            whole = 1;
            break;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return -1;
    if (!ok || !whole)
        return 0;
    if (run_i64(db,
                "INSERT INTO deliveries (first_id, last_id, delivered_ms, purged_to)"
                " VALUES (?1, ?1, ?2, ?1 - 1)",
                NULL, 2, m, now_ms) != SQLITE_DONE)
        return -1;
    *marked += 1;
    return 0;
}

int store_batches_done(struct store_batches *sb, int64_t id, int status, const char *summary,
                       const char *file_name, int64_t now_ms, uint64_t *marked)
{
    if (sb->pg)
        return store_pg_batches_done(sb->pg, id, status, summary, file_name, now_ms, marked);
    sqlite3_stmt *st = NULL;
    *marked = 0;
    if (store_sql_exec(sb->db, "BEGIN IMMEDIATE") < 0)
        return -1;
    int64_t first_msg = 0, last_msg = 0, msg_from = 0;
    int starts_mid = 0, ends_mid = 0;
    if (sqlite3_prepare_v2(sb->db,
                           "SELECT first_msg_id, last_msg_id, msg_from, starts_mid, ends_mid"
                           " FROM batches WHERE id = ?1 AND state = 'uploading'",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW)
        goto fail;
    first_msg = sqlite3_column_int64(st, 0);
    last_msg = sqlite3_column_int64(st, 1);
    msg_from = sqlite3_column_int64(st, 2);
    starts_mid = sqlite3_column_int(st, 3);
    ends_mid = sqlite3_column_int(st, 4);
    sqlite3_finalize(st);
    st = NULL;

    if (sqlite3_prepare_v2(sb->db,
                           "UPDATE batches SET state = 'done', done_ms = ?1, last_status = ?2,"
                           " response = ?3, file_name = ?4, last_error = NULL WHERE id = ?5",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int(st, 2, status);
    if (summary)
        sqlite3_bind_text(st, 3, summary, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    if (file_name)
        sqlite3_bind_text(st, 4, file_name, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 4);
    sqlite3_bind_int64(st, 5, id);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;

    /* Messages wholly inside this batch, and those without rows since the
     * previous batch: one delivery range (see schema 3 in store_db.c). */
    int64_t hi = ends_mid ? last_msg - 1 : last_msg;
    if (hi >= msg_from) {
        if (run_i64(sb->db,
                    "INSERT INTO deliveries (first_id, last_id, delivered_ms, purged_to)"
                    " VALUES (?1, ?2, ?3, ?1 - 1)",
                    NULL, 3, msg_from, hi, now_ms) != SQLITE_DONE)
            goto fail;
        *marked += (uint64_t)(hi - msg_from + 1);
    }
    if (starts_mid && mark_boundary(sb->db, id, first_msg, now_ms, marked) < 0)
        goto fail;
    if (ends_mid && last_msg != first_msg &&
        mark_boundary(sb->db, id, last_msg, now_ms, marked) < 0)
        goto fail;
    if (ends_mid && last_msg == first_msg && !starts_mid &&
        mark_boundary(sb->db, id, last_msg, now_ms, marked) < 0)
        goto fail;
    if (store_sql_exec(sb->db, "COMMIT") < 0)
        goto fail;
    return 0;
fail:
    sqlite3_finalize(st);
    rollback(sb->db);
    *marked = 0;
    return -1;
}

static int set_result(struct store_batches *sb, int64_t id, const char *state, int status,
                      const char *error, int64_t next_ms)
{
    if (sb->pg)
        return store_pg_batches_set(sb->pg, id, state, status, error, next_ms);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(sb->db,
                           "UPDATE batches SET state = ?1, last_status = ?2, last_error = ?3,"
                           " next_ms = ?4 WHERE id = ?5 AND state = 'uploading'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, status);
    if (error)
        sqlite3_bind_text(st, 3, error, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, next_ms);
    sqlite3_bind_int64(st, 5, id);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE && sqlite3_changes(sb->db) == 1 ? 0 : -1;
}

int store_batches_retry(struct store_batches *sb, int64_t id, int status, const char *error,
                        int64_t next_ms)
{
    return set_result(sb, id, "sealed", status, error, next_ms);
}

int store_batches_fail(struct store_batches *sb, int64_t id, int status, const char *error)
{
    return set_result(sb, id, "failed", status, error, 0);
}

/* ---- leases (PostgreSQL only) -------------------------------------------- */

int store_batches_renew(struct store_batches *sb, const int64_t *ids, size_t n)
{
    return sb->pg && n ? store_pg_batches_renew(sb->pg, ids, n) : 0;
}

uint32_t store_batches_renew_ms(const struct store_batches *sb)
{
    return sb->pg ? store_pg_batches_lease_ms(sb->pg) / 3 : 0;
}

/* ---- figures ------------------------------------------------------------- */

int store_batches_counts(struct store_batches *sb, int with_done, struct store_batch_counts *out)
{
    memset(out, 0, sizeof *out);
    if (sb->pg)
        return store_pg_batches_counts(sb->pg, with_done, out);
    sqlite3_stmt *st = NULL;
    int ret = -1;
    /* The IN list keeps this on the state index: done batches, the vast
     * majority over time, are not visited. */
    if (sqlite3_prepare_v2(sb->db,
                           "SELECT state, COUNT(*), COALESCE(SUM(row_count), 0) FROM batches"
                           " WHERE state IN ('open', 'sealed', 'uploading', 'failed')"
                           " GROUP BY state",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        enum store_batch_state s = state_of(sqlite3_column_text(st, 0));
        out->batches[s] = (uint64_t)sqlite3_column_int64(st, 1);
        out->rows_in_batches += (uint64_t)sqlite3_column_int64(st, 2);
    }
    if (rc != SQLITE_DONE)
        goto out;
    sqlite3_finalize(st);
    st = NULL;
    if (with_done) {
        int64_t n = 0;
        if (run_i64(sb->db, "SELECT COUNT(*) FROM batches WHERE state = 'done'", &n, 0) !=
            SQLITE_ROW)
            goto out;
        out->batches[STORE_BATCH_DONE] = (uint64_t)n;
    }
    sqlite3_stmt *mr = sb->max_row;
    rc = sqlite3_step(mr);
    int64_t max_id = rc == SQLITE_ROW ? sqlite3_column_int64(mr, 0) : 0;
    sqlite3_reset(mr);
    if (rc != SQLITE_ROW)
        goto out;
    /* Row ids are dense (rows are never deleted), so the difference is the
     * number of rows the batcher has not reached yet. */
    out->rows_unbatched = max_id > sb->cursor ? (uint64_t)(max_id - sb->cursor) : 0;
    ret = 0;
out:
    sqlite3_finalize(st);
    return ret;
}

int store_batches_get(struct store_batches *sb, int64_t id, struct store_batch *out)
{
    if (sb->pg)
        return store_pg_batches_get(sb->pg, id, out);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(sb->db, "SELECT " BATCH_COLUMNS " FROM batches WHERE id = ?1", -1,
                           &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    int ret = -1;
    if (rc == SQLITE_ROW) {
        read_batch(st, out);
        ret = 1;
    } else if (rc == SQLITE_DONE) {
        ret = 0;
    }
    sqlite3_finalize(st);
    return ret;
}

/* ---- redrive (own connection; may run beside the daemon) ----------------- */

/* Its own connection to the store at `path` (redrive, list: maybe another
 * process than the daemon).  NULL with a message in errbuf. */
static sqlite3 *open_path(const char *path, int flags, char *errbuf, size_t errcap)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(errbuf, errcap, "store: open %s: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, BATCH_BUSY_MS);
    return db;
}

/* The PostgreSQL side of redrive and its list. */
static int pg_failed(const struct store_opts *o, int64_t id, int requeue,
                     void (*cb)(void *ud, const struct store_batch *b), void *ud, uint64_t *n,
                     char *errbuf, size_t errcap)
{
    *n = 0;
    struct store_pg_batches *pb = store_pg_batches_open(o, errbuf, errcap);
    if (!pb)
        return -1;
    int rc = store_pg_batches_failed(pb, id, requeue, cb, ud, n);
    if (rc < 0)
        snprintf(errbuf, errcap, "store: %s", store_pg_batches_errmsg(pb));
    store_pg_batches_close(pb);
    return rc;
}

int store_batches_redrive(const struct store_opts *o, int64_t id,
                          void (*cb)(void *ud, const struct store_batch *b), void *ud,
                          uint64_t *n, char *errbuf, size_t errcap)
{
    if (o->type == STORE_POSTGRESQL)
        return pg_failed(o, id, 1, cb, ud, n, errbuf, errcap);
    const char *path = o->path;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    sqlite3 *db = open_path(path, SQLITE_OPEN_READWRITE, errbuf, errcap);
    if (!db)
        goto out;
    if (store_sql_exec(db, "PRAGMA synchronous=FULL") < 0) {
        snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(db));
        goto out;
    }
    if (!has_batches_table(db)) {
        snprintf(errbuf, errcap, "store: %s has no batches (no audit batch was ever made)", path);
        goto out;
    }
    if (store_sql_exec(db, "BEGIN IMMEDIATE") < 0) {
        snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(db));
        goto out;
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT " BATCH_COLUMNS " FROM batches WHERE state = 'failed'"
                           " AND (?1 = 0 OR id = ?1) ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_batch b;
        read_batch(st, &b);
        if (cb)
            cb(ud, &b);
    }
    if (rc != SQLITE_DONE)
        goto sqlfail;
    sqlite3_finalize(st);
    st = NULL;
    if (run_i64(db,
                "UPDATE batches SET state = 'sealed', next_ms = 0, redrives = redrives + 1"
                " WHERE state = 'failed' AND (?1 = 0 OR id = ?1)",
                NULL, 1, id) != SQLITE_DONE)
        goto sqlfail;
    *n = (uint64_t)sqlite3_changes(db);
    if (store_sql_exec(db, "COMMIT") < 0)
        goto sqlfail;
    ret = 0;
    goto out;
sqlfail:
    snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(db));
    rollback(db);
    *n = 0;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

int store_batches_list_failed(const struct store_opts *o,
                              void (*cb)(void *ud, const struct store_batch *b), void *ud,
                              uint64_t *n, char *errbuf, size_t errcap)
{
    if (o->type == STORE_POSTGRESQL)
        return pg_failed(o, 0, 0, cb, ud, n, errbuf, errcap);
    const char *path = o->path;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    sqlite3 *db = open_path(path, SQLITE_OPEN_READONLY, errbuf, errcap);
    if (!db)
        goto out;
    if (!has_batches_table(db)) {
        ret = 0; /* no audit batch was ever made: none failed */
        goto out;
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT " BATCH_COLUMNS " FROM batches WHERE state = 'failed'"
                           " ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_batch b;
        read_batch(st, &b);
        (*n)++;
        if (cb)
            cb(ud, &b);
    }
    if (rc == SQLITE_DONE) {
        ret = 0;
        goto out;
    }
sqlfail:
    snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(db));
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}
