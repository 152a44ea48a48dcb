/* store_backup: an online, consistent copy of the store while the daemon
 * writes to it — SQLite's backup API, in one step, so the copy is a single
 * read snapshot (in WAL mode a reader never blocks the writer, so intake goes
 * on meanwhile).  The copy is written to a temporary name beside the target
 * (mode 0600: it holds PHI), switched to a self-contained rollback-journal
 * file, checked, fsync'd and only then given its name — never over an
 * existing file.  Runs in the CLI process, any thread. */
#include "store/store.h"
#include "store/sql.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/fsutil.h"

/* How long the copy waits for a lock in all (a checkpoint, a migration). */
#define BACKUP_BUSY_MS 30000

/* fsync of a file, or of a file's directory (its new name). */
static int fsync_path(const char *path, int directory)
{
    int fd = open(path, (directory ? O_RDONLY | O_DIRECTORY : O_WRONLY) | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static int fail(char *errbuf, size_t errcap, const char *what, const char *detail)
{
    snprintf(errbuf, errcap, "%s: %s", what, detail);
    return -1;
}

/* The single copy step, retried while the source is locked. */
static int copy_all(sqlite3 *dst, sqlite3 *src, char *errbuf, size_t errcap)
{
    sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
    if (!b)
        return fail(errbuf, errcap, "backup", sqlite3_errmsg(dst));
    int rc;
    for (unsigned waited = 0;; waited += 10) {
        rc = sqlite3_backup_step(b, -1);
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || waited >= BACKUP_BUSY_MS)
            break;
        struct timespec ts = { 0, 10 * 1000000L };
        nanosleep(&ts, NULL);
    }
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE)
        return fail(errbuf, errcap, "backup", sqlite3_errstr(rc));
    return 0;
}

/* Makes the copy one file, checks it and counts its messages. */
static int finish_copy(sqlite3 *dst, uint64_t *messages, char *errbuf, size_t errcap)
{
    if (store_sql_exec(dst, "PRAGMA journal_mode=DELETE") != 0)
        return fail(errbuf, errcap, "backup: journal mode", sqlite3_errmsg(dst));
    sqlite3_stmt *st = NULL;
    int rc = -1;
    char result[64] = "";
    if (sqlite3_prepare_v2(dst, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        fail(errbuf, errcap, "backup: check", sqlite3_errmsg(dst));
        goto out;
    }
    store_sql_text(st, 0, result, sizeof result);
    if (strcmp(result, "ok") != 0) {
        fail(errbuf, errcap, "backup: the copy does not check out", result);
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(dst, "SELECT COUNT(*) FROM messages", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        fail(errbuf, errcap, "backup: not a store (no messages table)", sqlite3_errmsg(dst));
        goto out;
    }
    *messages = (uint64_t)sqlite3_column_int64(st, 0);
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

int store_backup(const char *src_path, const char *dst_path, struct store_backup_info *out,
                 char *errbuf, size_t errcap)
{
    memset(out, 0, sizeof *out);
    struct stat sb;
    if (stat(src_path, &sb) != 0)
        return fail(errbuf, errcap, src_path, strerror(errno));
    if (lstat(dst_path, &sb) == 0)
        return fail(errbuf, errcap, dst_path, "exists; a backup never overwrites a file");

    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.partial", dst_path) >= (int)sizeof tmp)
        return fail(errbuf, errcap, dst_path, "name too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(errbuf, errcap, tmp, strerror(errno));
    close(fd);

    int rc = -1;
    sqlite3 *src = NULL, *dst = NULL;
    struct store_busy busy;
    if (sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fail(errbuf, errcap, src_path, src ? sqlite3_errmsg(src) : "cannot open");
        goto out;
    }
    store_busy_install(src, &busy, BACKUP_BUSY_MS);
    if (sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        fail(errbuf, errcap, tmp, dst ? sqlite3_errmsg(dst) : "cannot open");
        goto out;
    }
    if (copy_all(dst, src, errbuf, errcap) != 0 ||
        finish_copy(dst, &out->messages, errbuf, errcap) != 0)
        goto out;
    if (sqlite3_close(dst) != SQLITE_OK) {
        fail(errbuf, errcap, tmp, "cannot close");
        goto out;
    }
    dst = NULL;
    /* Durable before it has its name: a backup that exists is complete. */
    if (fsync_path(tmp, 0) != 0) {
        fail(errbuf, errcap, tmp, strerror(errno));
        goto out;
    }
    if (link(tmp, dst_path) != 0) {
        fail(errbuf, errcap, dst_path, strerror(errno));
        goto out;
    }
    unlink(tmp);
    tmp[0] = '\0';
    char *dir = fs_dir_of(dst_path);
    int synced = dir ? fsync_path(dir, 1) : -1;
    free(dir);
    if (synced != 0 || stat(dst_path, &sb) != 0) {
        fail(errbuf, errcap, dst_path, strerror(errno));
        goto out;
    }
    out->bytes = (uint64_t)sb.st_size;
    rc = 0;
out:
    sqlite3_close(dst);
    sqlite3_close(src);
    if (rc != 0 && tmp[0])
        unlink(tmp);
    return rc;
}
