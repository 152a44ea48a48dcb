/* store/retention — PHI kept no longer than configured: one housekeeping
 * step of the writer purges every kind of record that holds patient data
 * (delivered messages and their connector rows, quarantined and rejected
 * messages, the SMS tables, the SMS file sink's rotated files and the audit
 * file sink's output) and then notes the oldest record still held per kind
 * for `hl7bridge stats` and /status.
 *
 * Design: each kind deletes at most STORE_RETENTION_CHUNK records per step,
 * each chunk in its own short transaction, so the write lock is never held
 * for long and ingest (same thread, same connection) waits at most one
 * chunk; a full chunk sets *more and the writer comes back between groups.
 * Delivered messages are found through the delivery ranges (deliveries,
 * progress in deleted_to), connector rows through their done batch
 * (rows_purged), so no step scans the big tables.  Undelivered messages and
 * rows of blocks not done (failed blocks wait for `redrive`) are never
 * purged: retention must not lose what was acknowledged.  Raw bodies are
 * purged separately (store_db.c), as before, after `raw`.
 *
 * Threads: the writer thread only; the report is published under rt_mu. */
#include "store/store_int.h"

#include "core/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    RT_DEL_PICK = 0, RT_DEL_MSGS, RT_DEL_MARK, RT_DEL_LEGACY,
    RT_ROWS_PICK, RT_ROWS_MIN, RT_ROWS_DEL, RT_ROWS_MARK,
    RT_QUAR_DEL,
    RT_N
};
_Static_assert(RT_N <= sizeof(((struct store_db *)0)->rt) / sizeof(sqlite3_stmt *), "rt slots");

static const char *const rt_sql[RT_N] = {
    [RT_DEL_PICK] = "SELECT id, first_id, last_id, deleted_to FROM deliveries"
                    " WHERE deleted_to < last_id AND delivered_ms < ?1"
                    " ORDER BY delivered_ms LIMIT 1",
    [RT_DEL_MSGS] = "DELETE FROM messages WHERE id BETWEEN ?1 AND ?2 AND quarantined = 0",
    [RT_DEL_MARK] = "UPDATE deliveries SET deleted_to = ?1 WHERE id = ?2",
    /* Messages delivered before schema 3 carry delivered_ms themselves. */
    [RT_DEL_LEGACY] = "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                      " WHERE delivered_ms IS NOT NULL AND delivered_ms < ?1 LIMIT ?2)",
    [RT_ROWS_PICK] = "SELECT id, first_row_id, last_row_id FROM batches"
                     " WHERE state = 'done' AND rows_purged = 0 AND done_ms < ?1"
                     " ORDER BY done_ms LIMIT 1",
    [RT_ROWS_MIN] = "SELECT MIN(id) FROM rows WHERE id BETWEEN ?1 AND ?2",
    [RT_ROWS_DEL] = "DELETE FROM rows WHERE id BETWEEN ?1 AND ?2",
    [RT_ROWS_MARK] = "UPDATE batches SET rows_purged = 1 WHERE id = ?1",
    [RT_QUAR_DEL] = "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                    " WHERE quarantined = 1 AND received_ms < ?1 ORDER BY received_ms LIMIT ?2)",
};

static const char *const kind_names[STORE_KIND_N] = {
    [STORE_KIND_RAW] = "raw",
    [STORE_KIND_DELIVERED] = "delivered",
    [STORE_KIND_ROWS] = "rows",
    [STORE_KIND_QUARANTINED] = "quarantined",
    [STORE_KIND_REJECTED] = "rejected",
    [STORE_KIND_SMS] = "sms",
    [STORE_KIND_SMS_FILE] = "sms_file",
    [STORE_KIND_AUDIT_FILES] = "audit_files",
    [STORE_KIND_UPLOAD_BLOCKS] = "upload_blocks",
};

const char *store_kind_name(enum store_kind k)
{
    return (unsigned)k < STORE_KIND_N ? kind_names[k] : NULL;
}

static sqlite3_stmt *stmt(struct store *s, int i)
{
    struct store_db *d = &s->wdb;
    if (!d->rt[i] &&
        sqlite3_prepare_v3(d->db, rt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &d->rt[i], NULL) !=
            SQLITE_OK) {
        log_warn("store_retention_failed", " step=prepare error=\"%s\"", sqlite3_errmsg(d->db));
        return NULL;
    }
    return d->rt[i];
}

void store_rt_release(struct store *s)
{
    for (size_t i = 0; i < sizeof s->wdb.rt / sizeof s->wdb.rt[0]; i++) {
        sqlite3_finalize(s->wdb.rt[i]);
        s->wdb.rt[i] = NULL;
    }
}

static int64_t cutoff_of(uint64_t keep_ms, int64_t now)
{
    if (keep_ms == STORE_KEEP_FOREVER || keep_ms > (uint64_t)now)
        return INT64_MIN;
    return now - (int64_t)keep_ms;
}

/* Steps a statement to its end (DML); returns SQLITE_OK or the error. */
static int run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int begin(struct store *s)
{
    int rc = sqlite3_step(s->wdb.begin);
    sqlite3_reset(s->wdb.begin);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int finish(struct store *s, int rc)
{
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s->wdb.commit);
        sqlite3_reset(s->wdb.commit);
        if (rc == SQLITE_DONE)
            return SQLITE_OK;
    }
    if (!sqlite3_get_autocommit(s->wdb.db)) {
        sqlite3_step(s->wdb.rollback);
        sqlite3_reset(s->wdb.rollback);
    }
    return rc;
}

static void warn(const char *kind, int rc)
{
    log_warn("store_retention_failed", " kind=%s rc=%d error=\"%s\"", kind, rc, sqlite3_errstr(rc));
}

/* Delivered messages: one chunk of the oldest delivery range of age. */
static long purge_delivered(struct store *s, int64_t cutoff, int *more)
{
    sqlite3_stmt *leg = stmt(s, RT_DEL_LEGACY);
    if (leg) {
        sqlite3_bind_int64(leg, 1, cutoff);
        sqlite3_bind_int(leg, 2, STORE_RETENTION_CHUNK);
        int rc = run(leg);
        if (rc != SQLITE_OK) {
            warn("delivered", rc);
        } else {
            long n = (long)sqlite3_changes(s->wdb.db);
            if (n >= STORE_RETENTION_CHUNK) {
                *more = 1;
                return n;
            }
        }
    }
    sqlite3_stmt *pick = stmt(s, RT_DEL_PICK), *del = stmt(s, RT_DEL_MSGS),
                 *mark = stmt(s, RT_DEL_MARK);
    if (!pick || !del || !mark)
        return -1;
    sqlite3_bind_int64(pick, 1, cutoff);
    int rc = sqlite3_step(pick);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(pick);
        if (rc != SQLITE_DONE) {
            warn("delivered", rc);
            return -1;
        }
        return 0;
    }
    int64_t id = sqlite3_column_int64(pick, 0), first = sqlite3_column_int64(pick, 1);
    int64_t last = sqlite3_column_int64(pick, 2), done = sqlite3_column_int64(pick, 3);
    sqlite3_reset(pick);
    int64_t a = done >= first ? done + 1 : first;
    int64_t b = last - a >= STORE_RETENTION_CHUNK ? a + STORE_RETENTION_CHUNK - 1 : last;
    *more = 1; /* the rest of this range, or the next one */
    long n = 0;
    rc = begin(s);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(del, 1, a);
        sqlite3_bind_int64(del, 2, b);
        rc = run(del);
        n = (long)sqlite3_changes(s->wdb.db);
    }
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(mark, 1, b);
        sqlite3_bind_int64(mark, 2, id);
        rc = run(mark);
    }
    rc = finish(s, rc);
    if (rc != SQLITE_OK) {
        warn("delivered", rc);
        *more = 0;
        return -1;
    }
    return n;
}

/* Connector rows of done blocks: one chunk of the oldest block of age. */
static long purge_rows(struct store *s, int64_t cutoff, int *more)
{
    sqlite3_stmt *pick = stmt(s, RT_ROWS_PICK), *mn = stmt(s, RT_ROWS_MIN),
                 *del = stmt(s, RT_ROWS_DEL), *mark = stmt(s, RT_ROWS_MARK);
    if (!pick || !mn || !del || !mark)
        return -1;
    sqlite3_bind_int64(pick, 1, cutoff);
    int rc = sqlite3_step(pick);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(pick);
        if (rc != SQLITE_DONE) {
            warn("rows", rc);
            return -1;
        }
        return 0;
    }
    int64_t id = sqlite3_column_int64(pick, 0), first = sqlite3_column_int64(pick, 1);
    int64_t last = sqlite3_column_int64(pick, 2);
    sqlite3_reset(pick);
    *more = 1;
    long n = 0;
    rc = begin(s);
    int64_t lo = 0;
    int have = 0;
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(mn, 1, first);
        sqlite3_bind_int64(mn, 2, last);
        rc = sqlite3_step(mn);
        if (rc == SQLITE_ROW) {
            have = sqlite3_column_type(mn, 0) != SQLITE_NULL;
            lo = sqlite3_column_int64(mn, 0);
            rc = SQLITE_OK;
        }
        sqlite3_reset(mn);
    }
    if (rc == SQLITE_OK && have) {
        int64_t hi = last - lo >= STORE_RETENTION_CHUNK ? lo + STORE_RETENTION_CHUNK - 1 : last;
        sqlite3_bind_int64(del, 1, lo);
        sqlite3_bind_int64(del, 2, hi);
        rc = run(del);
        n = (long)sqlite3_changes(s->wdb.db);
        have = hi < last;
    }
    if (rc == SQLITE_OK && !have) {
        sqlite3_bind_int64(mark, 1, id);
        rc = run(mark);
    }
    rc = finish(s, rc);
    if (rc != SQLITE_OK) {
        warn("rows", rc);
        *more = 0;
        return -1;
    }
    return n;
}

/* A chunk of one "DELETE … LIMIT ?2" statement with cutoff ?1, autocommit
 * (one short transaction).  SQL is prepared each time: it may name a table
 * another part of the store creates later (a missing one holds nothing). */
static long purge_simple(struct store *s, sqlite3_stmt *st, const char *sql, int64_t cutoff,
                         const char *kind, int *more)
{
    sqlite3_stmt *own = NULL;
    if (!st) {
        if (sqlite3_prepare_v2(s->wdb.db, sql, -1, &own, NULL) != SQLITE_OK)
            return 0; /* the table does not exist (yet) */
        st = own;
    }
    sqlite3_bind_int64(st, 1, cutoff);
    sqlite3_bind_int(st, 2, STORE_RETENTION_CHUNK);
    int rc = run(st);
    sqlite3_finalize(own);
    if (rc != SQLITE_OK) {
        warn(kind, rc);
        return -1;
    }
    long n = (long)sqlite3_changes(s->wdb.db);
    if (n >= STORE_RETENTION_CHUNK)
        *more = 1;
    return n;
}

/* ---- files --------------------------------------------------------------- */

static int64_t mtime_ms(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* Splits path into its directory and base name (in caller buffers). */
static int split(const char *path, char *dir, size_t dcap, const char **base)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, dcap, ".");
        *base = path;
        return 0;
    }
    size_t n = (size_t)(slash - path);
    if (n == 0)
        n = 1; /* "/file" */
    if (n >= dcap)
        return -1;
    memcpy(dir, path, n);
    dir[n] = '\0';
    *base = slash + 1;
    return 0;
}

/* Deletes regular files of `dir` named prefix* whose last write is before
 * cutoff (at most STORE_RETENTION_CHUNK); *oldest gets the oldest last
 * write of those left (0 none). */
static long purge_dir(const char *dir, const char *prefix, int64_t cutoff, int64_t *oldest,
                      int *more)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return errno == ENOENT ? 0 : -1;
    size_t plen = strlen(prefix);
    long n = 0;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.' || strncmp(de->d_name, prefix, plen) != 0)
            continue;
        char p[PATH_MAX];
        struct stat st;
        int w = snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (w < 0 || (size_t)w >= sizeof p || lstat(p, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        int64_t m = mtime_ms(&st);
        if (m < cutoff && n < STORE_RETENTION_CHUNK) {
            if (unlink(p) == 0) {
                n++;
                continue;
            }
            int e = errno;
            log_warn("store_retention_failed", " step=unlink errno=%d", e);
        } else if (m < cutoff) {
            *more = 1;
        }
        if (!*oldest || m < *oldest)
            *oldest = m;
    }
    closedir(dp);
    return n;
}

/* Rotation interval: a line is gone at most keep + interval after it was
 * written.  A day, or a quarter of keep when that is shorter, never under
 * a minute. */
static int64_t rotate_every(uint64_t keep_ms)
{
    uint64_t r = keep_ms / 4;
    if (r > 86400000u)
        r = 86400000u;
    if (r < 60000u)
        r = 60000u;
    return (int64_t)r;
}

static long purge_file(struct store_file_state *f, int64_t now, int64_t *oldest, int *more)
{
    const struct store_file_keep *k = &f->k;
    char dir[PATH_MAX];
    const char *base = NULL;
    if (split(k->path, dir, sizeof dir, &base) < 0)
        return -1;
    int64_t cutoff = cutoff_of(k->keep_ms, now);
    if (!k->rotate)
        return purge_dir(k->path, k->prefix ? k->prefix : "", cutoff, oldest, more);

    struct stat st;
    int have = stat(k->path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
    /* The first look after start rotates what a previous run left: the age
     * of its lines is unknown, so their time starts now. */
    if (have && (f->rotate_first || now - f->last_rotate_ms >= rotate_every(k->keep_ms))) {
        char to[PATH_MAX], stamp[32];
        time_t t = (time_t)(now / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
        int w = snprintf(to, sizeof to, "%s.%s", k->path, stamp);
        if (w > 0 && (size_t)w < sizeof to && access(to, F_OK) != 0) {
            if (rename(k->path, to) == 0) {
                log_info("store_file_rotated", " kind=%s", store_kind_name(k->kind));
                have = 0;
            } else {
                int e = errno;
                log_warn("store_retention_failed", " step=rotate errno=%d", e);
            }
        }
        f->last_rotate_ms = now;
    }
    f->rotate_first = 0;
    char prefix[NAME_MAX + 2];
    snprintf(prefix, sizeof prefix, "%s.", base);
    long n = purge_dir(dir, prefix, cutoff, oldest, more);
    if (have) {
        int64_t cur = f->last_rotate_ms < mtime_ms(&st) ? f->last_rotate_ms : mtime_ms(&st);
        if (!*oldest || cur < *oldest)
            *oldest = cur;
    }
    return n;
}

/* ---- the report ---------------------------------------------------------- */

/* One integer from a one-shot query (bound ?1 when arg_set); 0 when the
 * table is missing, the query fails or the answer is NULL.  Runs once a
 * minute (and in `stats`), so preparing each time costs nothing that
 * matters. */
static int64_t db_min(sqlite3 *db, const char *sql, int arg_set, int64_t arg)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return 0;
    if (arg_set)
        sqlite3_bind_int64(st, 1, arg);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* The oldest record still held of each kind kept in the database itself
 * (not the SMS tables nor files): the same reading for the writer's step
 * and for a stopped daemon's store. */
static void oldest_in_db(sqlite3 *db, int64_t *oldest)
{
    oldest[STORE_KIND_RAW] = db_min(db,
        "SELECT received_ms FROM messages WHERE raw IS NOT NULL AND quarantined = 0"
        " ORDER BY id LIMIT 1", 0, 0);
    oldest[STORE_KIND_DELIVERED] = db_min(db,
        "SELECT received_ms FROM messages WHERE quarantined = 0 ORDER BY id LIMIT 1", 0, 0);
    /* Rows are aged by their message's receipt; the oldest row's message
     * may be gone already: the next one still there stands for it. */
    int64_t first_row_msg = db_min(db, "SELECT msg_id FROM rows ORDER BY id LIMIT 1", 0, 0);
    oldest[STORE_KIND_ROWS] = first_row_msg
        ? db_min(db, "SELECT received_ms FROM messages WHERE id >= ?1 ORDER BY id LIMIT 1", 1,
                 first_row_msg)
        : 0;
    oldest[STORE_KIND_QUARANTINED] =
        db_min(db, "SELECT MIN(received_ms) FROM messages WHERE quarantined = 1", 0, 0);
    oldest[STORE_KIND_REJECTED] = db_min(db, "SELECT MIN(received_ms) FROM rejected", 0, 0);
    oldest[STORE_KIND_UPLOAD_BLOCKS] = db_min(db, "SELECT MIN(kept_ms) FROM upload_kept", 0, 0);
}

/* How long each kind is kept, as the options say (retention_days caps raw). */
void store_rt_keep(const struct store_opts *o, uint64_t *keep)
{
    for (int k = 0; k < STORE_KIND_N; k++)
        keep[k] = o->use_keep ? o->keep_ms[k] : STORE_KEEP_FOREVER;
    uint64_t days = (uint64_t)o->retention_days * 86400000u;
    if (!o->use_keep || days < keep[STORE_KIND_RAW])
        keep[STORE_KIND_RAW] = days;
}

/* ---- the step ------------------------------------------------------------ */

int store_rt_files(struct store *s, int64_t now, long *got, int64_t *oldest, int *more)
{
    int failed = 0;
    for (size_t i = 0; i < s->n_files; i++) {
        enum store_kind k = s->files[i].k.kind;
        long n = purge_file(&s->files[i], now, &oldest[k], more);
        if (n < 0)
            failed++;
        else
            got[k] += n;
    }
    return failed;
}

long store_rt_step(struct store *s, int64_t now, int *more)
{
    const uint64_t *keep = s->opts.keep_ms;
    long got[STORE_KIND_N] = {0};
    int failed = 0, tried = 0;
    int64_t sms_oldest = 0, file_oldest[STORE_KIND_N] = {0};
    if (s->opts.use_keep) {
        int64_t c;
        if ((c = cutoff_of(keep[STORE_KIND_DELIVERED], now)) != INT64_MIN) {
            tried++;
            failed += (got[STORE_KIND_DELIVERED] = purge_delivered(s, c, more)) < 0;
        }
        if ((c = cutoff_of(keep[STORE_KIND_ROWS], now)) != INT64_MIN) {
            tried++;
            failed += (got[STORE_KIND_ROWS] = purge_rows(s, c, more)) < 0;
        }
        if ((c = cutoff_of(keep[STORE_KIND_QUARANTINED], now)) != INT64_MIN) {
            tried++;
            got[STORE_KIND_QUARANTINED] =
                purge_simple(s, stmt(s, RT_QUAR_DEL), NULL, c, "quarantined", more);
            failed += got[STORE_KIND_QUARANTINED] < 0;
        }
        /* Tables other parts of the store create (a missing one holds
         * nothing), aged by one time column, nothing referencing them. */
        static const struct { enum store_kind kind; const char *sql; } simple[] = {
            { STORE_KIND_REJECTED,
              "DELETE FROM rejected WHERE rowid IN (SELECT rowid FROM rejected"
              " WHERE received_ms < ?1 ORDER BY received_ms LIMIT ?2)" },
            { STORE_KIND_UPLOAD_BLOCKS,
              "DELETE FROM upload_kept WHERE id IN (SELECT id FROM upload_kept"
              " WHERE kept_ms < ?1 ORDER BY kept_ms LIMIT ?2)" },
        };
        for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++) {
            enum store_kind k = simple[i].kind;
            if ((c = cutoff_of(keep[k], now)) == INT64_MIN)
                continue;
            tried++;
            got[k] = purge_simple(s, NULL, simple[i].sql, c, store_kind_name(k), more);
            failed += got[k] < 0;
        }
        c = cutoff_of(keep[STORE_KIND_SMS], now);
        tried++;
        if (store_sms_retention(s->wdb.db, c == INT64_MIN ? INT64_MIN : c / 1000,
                                STORE_RETENTION_CHUNK, &got[STORE_KIND_SMS], &sms_oldest) < 0) {
            failed++;
            got[STORE_KIND_SMS] = -1;
        } else if (got[STORE_KIND_SMS] >= STORE_RETENTION_CHUNK) {
            *more = 1;
        }
    }
    tried += (int)s->n_files;
    failed += store_rt_files(s, now, got, file_oldest, more);

    struct store_retention_report r;
    pthread_mutex_lock(s->rt_mu);
    r = s->rt_report;
    pthread_mutex_unlock(s->rt_mu);
    long total = 0;
    for (int k = 0; k < STORE_KIND_N; k++) {
        if (got[k] > 0) {
            r.purged[k] += (uint64_t)got[k];
            total += got[k];
        }
    }
    store_rt_keep(&s->opts, r.keep_ms);
    oldest_in_db(s->wdb.db, r.oldest_ms);
    r.oldest_ms[STORE_KIND_SMS] = sms_oldest;
    r.oldest_ms[STORE_KIND_SMS_FILE] = file_oldest[STORE_KIND_SMS_FILE];
    r.oldest_ms[STORE_KIND_AUDIT_FILES] = file_oldest[STORE_KIND_AUDIT_FILES];
    r.checked_ms = now;
    pthread_mutex_lock(s->rt_mu);
    s->rt_report = r;
    pthread_mutex_unlock(s->rt_mu);
    if (total > 0) {
        log_info("store_retention",
                 " delivered=%ld rows=%ld quarantined=%ld rejected=%ld sms=%ld sms_files=%ld"
                 " audit_files=%ld upload_blocks=%ld",
                 got[STORE_KIND_DELIVERED] > 0 ? got[STORE_KIND_DELIVERED] : 0,
                 got[STORE_KIND_ROWS] > 0 ? got[STORE_KIND_ROWS] : 0,
                 got[STORE_KIND_QUARANTINED] > 0 ? got[STORE_KIND_QUARANTINED] : 0,
                 got[STORE_KIND_REJECTED] > 0 ? got[STORE_KIND_REJECTED] : 0,
                 got[STORE_KIND_SMS] > 0 ? got[STORE_KIND_SMS] : 0,
                 got[STORE_KIND_SMS_FILE], got[STORE_KIND_AUDIT_FILES],
                 got[STORE_KIND_UPLOAD_BLOCKS] > 0 ? got[STORE_KIND_UPLOAD_BLOCKS] : 0);
    }
    return tried && failed == tried ? -1 : total;
}

/* ---- a stopped daemon's store (`hl7bridge stats`) ---------------------------- */

/* When the current SMS file was begun: its birth time where the file system
 * keeps one, else its last write (then the age shown is a lower bound). */
static int64_t started_ms(const char *path, const struct stat *st)
{
    struct statx sx;
    if (statx(AT_FDCWD, path, 0, STATX_BTIME, &sx) == 0 && (sx.stx_mask & STATX_BTIME))
        return (int64_t)sx.stx_btime.tv_sec * 1000 + sx.stx_btime.tv_nsec / 1000000;
    return mtime_ms(st);
}

int store_query_retention(const struct store_opts *o, struct store_retention_report *out,
                          char *errbuf, size_t errcap)
{
    memset(out, 0, sizeof *out);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(o->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(errbuf, errcap, "store: open %s: %s", o->path,
                 db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
    /* A file that is not a database answers no query: say so, not "none".
     * A missing table is fine (a store only `upload` has used). */
    if (store_sql_exec(db, "SELECT COUNT(*) FROM sqlite_master") < 0) {
        snprintf(errbuf, errcap, "store: %s: %s", o->path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    store_rt_keep(o, out->keep_ms);
    oldest_in_db(db, out->oldest_ms);
    long n = 0;
    if (store_sms_retention(db, INT64_MIN, 0, &n, &out->oldest_ms[STORE_KIND_SMS]) < 0)
        out->oldest_ms[STORE_KIND_SMS] = 0;
    sqlite3_close(db);
    for (size_t i = 0; i < o->n_files; i++) {
        const struct store_file_keep *k = &o->files[i];
        int64_t *oldest = &out->oldest_ms[k->kind];
        int more = 0;
        if (!k->rotate) {
            (void)purge_dir(k->path, k->prefix ? k->prefix : "", INT64_MIN, oldest, &more);
            continue;
        }
        char dir[PATH_MAX], prefix[NAME_MAX + 2];
        const char *base = NULL;
        if (split(k->path, dir, sizeof dir, &base) < 0)
            continue;
        snprintf(prefix, sizeof prefix, "%s.", base);
        (void)purge_dir(dir, prefix, INT64_MIN, oldest, &more);
        struct stat fst;
        if (stat(k->path, &fst) == 0 && S_ISREG(fst.st_mode) && fst.st_size > 0) {
            int64_t t = started_ms(k->path, &fst);
            if (!*oldest || t < *oldest)
                *oldest = t;
        }
    }
    return 0;
}
