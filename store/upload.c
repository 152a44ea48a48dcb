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
 * only duplicate window, as for the audit sink).  No row content is kept.
 *
 * Threads: one handle, one thread at a time. */
#include "store/store_int.h"

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
    " done_ms INTEGER, PRIMARY KEY (upload_id, seq));";

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

int store_upload_block_done(struct store_upload *u, int64_t id, uint64_t seq)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(u->db,
                           "SELECT state = 'done' FROM upload_blocks"
                           " WHERE upload_id = ?1 AND seq = ?2",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    int rc = sqlite3_step(st);
    int v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? v : -1;
}

int store_upload_block_set(struct store_upload *u, int64_t id, uint64_t seq, int done, int status,
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
        return -1;
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
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
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
