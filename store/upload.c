/* store/upload — the per-file checkpoint of `hl7bridge upload` and the
 * inputs.files watcher: which blocks of a prepared connector file the
 * connector already accepted, so a rerun after a crash sends only the rest.
 *
 * Design: its own two tables in the store database, created with CREATE
 * TABLE IF NOT EXISTS on its own connection (like the SMS tables), so the
 * journal's migrations are not involved.  A file is known by the SHA-256
 * of its content (a renamed copy resumes, a changed file starts over); its
 * block size is fixed at the first run, so a rerun cuts the same blocks
 * whatever the configuration says now.  Each block's state is written with
 * synchronous=FULL right after the connector's answer: a block recorded
 * `done` is never sent again; one in flight at a crash is sent again (the
 * only duplicate window, as for the audit sink).
 *
 * A block that failed for good is kept in a third table, upload_kept, with
 * its content as sent (header and rows: PHI), so `hl7bridge redrive` sends
 * it without the file, which may be gone by then.  The content, not the
 * file's name and offsets: a file can be moved, replaced or deleted, and a
 * kept block must still go out byte for byte as checked.  The store
 * writer's housekeeping purges kept blocks under
 * store.retention.upload_blocks (by kept_ms; nothing references them).
 * Every state change of a block and its kept copy is one transaction, so a
 * block is never both done and kept: once delivered (by a rerun or by
 * redrive) it is not sent again by either.
 *
 * The tables come from CREATE TABLE IF NOT EXISTS and are found by the
 * retention step and the offline readers only when they exist.
 *
 * Threads: one handle, one thread at a time. */
#include "store/store_int.h"

#include "core/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store_upload {
    sqlite3 *db;
    struct store_busy busy;
};

static const char *const schema =
    "CREATE TABLE IF NOT EXISTS uploads ("
    " id INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
    " bytes INTEGER NOT NULL, rows INTEGER NOT NULL, block_rows INTEGER NOT NULL,"
    " blocks INTEGER NOT NULL, created_ms INTEGER NOT NULL, done_ms INTEGER);"
    "CREATE TABLE IF NOT EXISTS upload_blocks ("
    " upload_id INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('done', 'failed')),"
    " attempts INTEGER NOT NULL DEFAULT 0, last_status INTEGER, last_error TEXT,"
    " done_ms INTEGER, PRIMARY KEY (upload_id, seq));"
    "CREATE TABLE IF NOT EXISTS upload_kept ("
    " id INTEGER PRIMARY KEY, upload_id INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " kept_ms INTEGER NOT NULL, rows INTEGER NOT NULL, first_line INTEGER NOT NULL,"
    " last_line INTEGER NOT NULL, file_name TEXT NOT NULL, content BLOB NOT NULL,"
    " UNIQUE (upload_id, seq));"
    "CREATE INDEX IF NOT EXISTS upload_kept_age ON upload_kept(kept_ms);";

static int fail(struct store_upload *u, char *err, size_t cap, const char *what)
{
    snprintf(err, cap, "store: %s: %s", what, u->db ? sqlite3_errmsg(u->db) : "out of memory");
    return -1;
}

struct store_upload *store_upload_open(const char *path, char *err, size_t errcap)
{
    struct store_upload *u = calloc(1, sizeof *u);
    if (!u) {
        snprintf(err, errcap, "store: out of memory");
        return NULL;
    }
    if (store_db_prepare_path(path, err, errcap) < 0)
        goto out;
    if (sqlite3_open_v2(path, &u->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        fail(u, err, errcap, "open");
        goto out;
    }
    sqlite3_extended_result_codes(u->db, 1);
    store_busy_install(u->db, &u->busy, 5000);
    if (store_sql_exec(u->db, "PRAGMA journal_mode=WAL") < 0 ||
        store_sql_exec(u->db, "PRAGMA synchronous=FULL") < 0 ||
        store_sql_exec(u->db, schema) < 0) {
        fail(u, err, errcap, "upload tables");
        goto out;
    }
    return u;
out:
    store_upload_close(u);
    return NULL;
}

void store_upload_close(struct store_upload *u)
{
    if (!u)
        return;
    if (u->db)
        sqlite3_close(u->db);
    free(u);
}

const char *store_upload_errmsg(const struct store_upload *u)
{
    return u && u->db ? sqlite3_errmsg(u->db) : "no database";
}

int store_upload_begin(struct store_upload *u, const char *digest, const char *name,
                       uint64_t bytes, uint64_t rows, uint64_t block_rows, int64_t now_ms,
                       struct store_upload_file *out)
{
    memset(out, 0, sizeof *out);
    uint64_t blocks = rows ? (rows + block_rows - 1) / block_rows : 0;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(u->db,
                                "INSERT INTO uploads (digest, name, bytes, rows, block_rows,"
                                " blocks, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                                " ON CONFLICT (digest) DO NOTHING",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)bytes);
    sqlite3_bind_int64(st, 4, (int64_t)rows);
    sqlite3_bind_int64(st, 5, (int64_t)block_rows);
    sqlite3_bind_int64(st, 6, (int64_t)blocks);
    sqlite3_bind_int64(st, 7, now_ms);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return -1;
    rc = sqlite3_prepare_v2(u->db,
                            "SELECT id, block_rows, blocks, COALESCE(done_ms, 0),"
                            " (SELECT COUNT(*) FROM upload_blocks b WHERE b.upload_id = uploads.id"
                            "  AND b.state = 'done') FROM uploads WHERE digest = ?1",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->id = sqlite3_column_int64(st, 0);
        out->block_rows = (uint64_t)sqlite3_column_int64(st, 1);
        out->blocks = (uint64_t)sqlite3_column_int64(st, 2);
        out->done_ms = sqlite3_column_int64(st, 3);
        out->blocks_done = (uint64_t)sqlite3_column_int64(st, 4);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

int store_upload_block_done(struct store_upload *u, int64_t id, uint64_t seq, int64_t *kept_id)
{
    if (kept_id)
        *kept_id = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db,
                           "SELECT (SELECT state = 'done' FROM upload_blocks"
                           "  WHERE upload_id = ?1 AND seq = ?2),"
                           " (SELECT id FROM upload_kept WHERE upload_id = ?1 AND seq = ?2)",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    int rc = sqlite3_step(st);
    int v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    if (rc == SQLITE_ROW && kept_id)
        *kept_id = sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? v : -1;
}

/* One statement to its end; SQLITE_OK or the error. */
static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int tx_end(struct store_upload *u, int rc)
{
    if (rc == SQLITE_OK && store_sql_exec(u->db, "COMMIT") == 0)
        return 0;
    if (!sqlite3_get_autocommit(u->db))
        (void)store_sql_exec(u->db, "ROLLBACK");
    return -1;
}

/* The block's row in upload_blocks (attempts+1). */
static int put_block(struct store_upload *u, int64_t id, uint64_t seq, int done, int status,
                     const char *error, int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db,
                           "INSERT INTO upload_blocks (upload_id, seq, state, attempts,"
                           " last_status, last_error, done_ms) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)"
                           " ON CONFLICT (upload_id, seq) DO UPDATE SET state = excluded.state,"
                           " attempts = attempts + 1, last_status = excluded.last_status,"
                           " last_error = excluded.last_error, done_ms = excluded.done_ms",
                           -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    sqlite3_bind_text(st, 3, done ? "done" : "failed", -1, SQLITE_STATIC);
    if (status)
        sqlite3_bind_int(st, 4, status);
    else
        sqlite3_bind_null(st, 4);
    if (error && *error)
        sqlite3_bind_text(st, 5, error, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 5);
    if (done)
        sqlite3_bind_int64(st, 6, now_ms);
    else
        sqlite3_bind_null(st, 6);
    return step_done(st);
}

static int drop_kept(struct store_upload *u, int64_t id, uint64_t seq)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db, "DELETE FROM upload_kept WHERE upload_id = ?1 AND seq = ?2",
                           -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    return step_done(st);
}

static int put_kept(struct store_upload *u, int64_t id, uint64_t seq,
                    const struct store_upload_keep *k, int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db,
                           "INSERT INTO upload_kept (upload_id, seq, kept_ms, rows, first_line,"
                           " last_line, file_name, content) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                           " ON CONFLICT (upload_id, seq) DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int64(st, 4, (int64_t)k->rows);
    sqlite3_bind_int64(st, 5, (int64_t)k->first_line);
    sqlite3_bind_int64(st, 6, (int64_t)k->last_line);
    sqlite3_bind_text(st, 7, k->file_name, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 8, k->content, k->len, SQLITE_STATIC);
    return step_done(st);
}

static int64_t kept_id_of(struct store_upload *u, int64_t id, uint64_t seq)
{
    int64_t k = 0;
    if (store_upload_block_done(u, id, seq, &k) < 0)
        return -1;
    return k;
}

int store_upload_block_set(struct store_upload *u, int64_t id, uint64_t seq, int done, int status,
                           const char *error, const struct store_upload_keep *keep,
                           int64_t now_ms, int64_t *kept_id)
{
    if (kept_id)
        *kept_id = 0;
    int rc = store_sql_exec(u->db, "BEGIN IMMEDIATE") == 0 ? SQLITE_OK : SQLITE_ERROR;
    if (rc == SQLITE_OK)
        rc = put_block(u, id, seq, done, status, error, now_ms);
    if (rc == SQLITE_OK && done)
        rc = drop_kept(u, id, seq);
    if (rc == SQLITE_OK && !done && keep)
        rc = put_kept(u, id, seq, keep, now_ms);
    if (tx_end(u, rc) < 0)
        return -1;
    if (kept_id && !done) {
        int64_t k = kept_id_of(u, id, seq);
        if (k < 0)
            return -1;
        *kept_id = k;
    }
    return 0;
}

int store_upload_finish(struct store_upload *u, int64_t id, int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db, "UPDATE uploads SET done_ms = ?2 WHERE id = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- kept blocks (`hl7bridge redrive`) -------------------------------------- */

static void copy_text(char *dst, size_t cap, const unsigned char *src)
{
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

int store_upload_kept_list(struct store_upload *u, int64_t id,
                           void (*cb)(void *ud, const struct store_upload_kept *k), void *ud,
                           uint64_t *n)
{
    *n = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db,
                           "SELECT k.id, k.upload_id, k.seq, f.blocks, k.rows, k.first_line,"
                           " k.last_line, COALESCE(b.attempts, 0), COALESCE(b.last_status, 0),"
                           " k.kept_ms, b.last_error, f.name, k.file_name"
                           " FROM upload_kept k JOIN uploads f ON f.id = k.upload_id"
                           " LEFT JOIN upload_blocks b ON b.upload_id = k.upload_id"
                           "  AND b.seq = k.seq"
                           " WHERE ?1 = 0 OR k.id = ?1 ORDER BY k.id",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_upload_kept k;
        memset(&k, 0, sizeof k);
        k.id = sqlite3_column_int64(st, 0);
        k.upload_id = sqlite3_column_int64(st, 1);
        k.seq = (uint64_t)sqlite3_column_int64(st, 2);
        k.blocks = (uint64_t)sqlite3_column_int64(st, 3);
        k.rows = (uint64_t)sqlite3_column_int64(st, 4);
        k.first_line = (uint64_t)sqlite3_column_int64(st, 5);
        k.last_line = (uint64_t)sqlite3_column_int64(st, 6);
        k.attempts = (unsigned)sqlite3_column_int(st, 7);
        k.last_status = sqlite3_column_int(st, 8);
        k.kept_ms = sqlite3_column_int64(st, 9);
        copy_text(k.last_error, sizeof k.last_error, sqlite3_column_text(st, 10));
        copy_text(k.name, sizeof k.name, sqlite3_column_text(st, 11));
        copy_text(k.file_name, sizeof k.file_name, sqlite3_column_text(st, 12));
        (*n)++;
        if (cb)
            cb(ud, &k);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int store_upload_kept_content(struct store_upload *u, int64_t id, struct buf *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db, "SELECT content FROM upload_kept WHERE id = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), ret = -1;
    if (rc == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(st, 0);
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        ret = !p || buf_append(out, p, len) == 0 ? 1 : -1;
    } else if (rc == SQLITE_DONE) {
        ret = 0;
    }
    sqlite3_finalize(st);
    return ret;
}

int store_upload_redriven(struct store_upload *u, const struct store_upload_kept *k, int delivered,
                          int status, const char *error, int64_t now_ms)
{
    int rc = store_sql_exec(u->db, "BEGIN IMMEDIATE") == 0 ? SQLITE_OK : SQLITE_ERROR;
    if (rc == SQLITE_OK)
        rc = put_block(u, k->upload_id, k->seq, delivered, status, error, now_ms);
    if (rc == SQLITE_OK && delivered)
        rc = drop_kept(u, k->upload_id, k->seq);
    if (rc == SQLITE_OK && delivered) {
        /* The file is done once every one of its blocks is. */
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(u->db,
                               "UPDATE uploads SET done_ms = ?2 WHERE id = ?1 AND done_ms IS NULL"
                               " AND blocks = (SELECT COUNT(*) FROM upload_blocks"
                               "  WHERE upload_id = ?1 AND state = 'done')",
                               -1, &st, NULL) != SQLITE_OK) {
            rc = SQLITE_ERROR;
        } else {
            sqlite3_bind_int64(st, 1, k->upload_id);
            sqlite3_bind_int64(st, 2, now_ms);
            rc = step_done(st);
        }
    }
    return tx_end(u, rc);
}
