/* A power-cut simulator for SQLite, for tests only: a VFS that wraps the
 * default one (SQLite's own crash-test approach, test6.c).
 *
 * Writes go through to the real files, but the shim also keeps, per file
 * path, a "durable image": the file's bytes as of its last xSync, plus the
 * list of ranges written since.  xSync folds those ranges into the image and
 * does not call the real fsync (the image is the disk that survives).  At a
 * power cut (armed to happen at the Nth write/sync/truncate, or forced)
 * every file's surviving content is frozen: its durable image, plus —
 * in "torn" mode — a random subset of the writes not yet synced, as a disk
 * that reorders its cache would leave them.  From then on every write, sync,
 * truncate and delete fails (the machine is off).  After the process has let
 * go of the database, powercut_restore() puts the frozen content back into
 * the real files and removes the shared-memory index, which a reboot loses.
 *
 * Registered as the default VFS, so the code under test opens its database
 * through its normal path (sqlite3_open_v2 with no VFS name).  Files opened
 * before the shim knew them are taken as durable as they are.
 *
 * Header-only (each unit test program is one file).  Thread-safe: one
 * mutex guards the table, so the store's writer and checkpointer threads
 * may both write through it. */
#ifndef TESTS_UNIT_POWERCUT_VFS_H
#define TESTS_UNIT_POWERCUT_VFS_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POWERCUT_MAX_FILES 16
#define POWERCUT_PATH_MAX  512

struct powercut_range { int64_t off, len; };

struct powercut_state {
    int used;
    char path[POWERCUT_PATH_MAX];
    uint8_t *img; size_t img_len, img_cap;     /* durable image */
    struct powercut_range *dirty; size_t ndirty, dirty_cap;
    uint8_t *snap; size_t snap_len; int has_snap; /* frozen at the cut */
};

struct powercut_file {
    sqlite3_file base;
    struct powercut_state *st; /* NULL: not tracked (a temporary file) */
    sqlite3_file *real;
};

static struct {
    pthread_mutex_t mu;
    sqlite3_vfs vfs;
    sqlite3_vfs *real;
    int registered;
    long ops_left;      /* > 0: the cut happens at the op that brings it to 0 */
    int cut;            /* the power is off */
    int torn;           /* keep a random subset of unsynced writes */
    unsigned seed;
    unsigned long syncs, writes;
    struct powercut_state files[POWERCUT_MAX_FILES];
} powercut = { .mu = PTHREAD_MUTEX_INITIALIZER };

__attribute__((noreturn)) static void powercut_fail(const char *what)
{
    fprintf(stderr, "powercut: %s\n", what);
    abort(); /* a test harness bug, never a finding about the code under test */
}

static void powercut_reserve(uint8_t **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    uint8_t *q = realloc(*p, n);
    if (!q)
        powercut_fail("out of memory");
    *p = q;
    *cap = n;
}

/* Reads [off, off+len) of the open file fd into dst (zeros past EOF). */
static void powercut_pread(int fd, uint8_t *dst, int64_t off, int64_t len)
{
    memset(dst, 0, (size_t)len);
    int64_t got = 0;
    while (fd >= 0 && got < len) {
        ssize_t r = pread(fd, dst + got, (size_t)(len - got), (off_t)(off + got));
        if (r <= 0)
            break;
        got += r;
    }
}

static int64_t powercut_path_size(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    off_t n = lseek(fd, 0, SEEK_END);
    close(fd);
    return n < 0 ? 0 : (int64_t)n;
}

/* Image of state st with the dirty ranges applied (all, or a random subset);
 * returns its length.  Caller holds the mutex. */
static size_t powercut_apply(struct powercut_state *st, uint8_t **buf, size_t *cap,
                             size_t base_len, int subset, int64_t new_size)
{
    size_t len = base_len;
    if (new_size >= 0) {
        powercut_reserve(buf, cap, (size_t)new_size);
        if ((size_t)new_size > len)
            memset(*buf + len, 0, (size_t)new_size - len);
        len = (size_t)new_size;
    }
    int fd = st->ndirty ? open(st->path, O_RDONLY | O_CLOEXEC) : -1;
    for (size_t i = 0; i < st->ndirty; i++) {
        struct powercut_range r = st->dirty[i];
        if (subset && (rand_r(&powercut.seed) & 1))
            continue;
        if (new_size >= 0 && r.off >= new_size)
            continue;
        if (new_size >= 0 && r.off + r.len > new_size)
            r.len = new_size - r.off;
        size_t end = (size_t)(r.off + r.len);
        powercut_reserve(buf, cap, end);
        if (end > len) {
            memset(*buf + len, 0, end - len);
            len = end;
        }
        powercut_pread(fd, *buf + r.off, r.off, r.len);
    }
    if (fd >= 0)
        close(fd);
    return len;
}

/* The cut: freezes what every file keeps.  Caller holds the mutex. */
static void powercut_do_cut(void)
{
    if (powercut.cut)
        return;
    powercut.cut = 1;
    for (int i = 0; i < POWERCUT_MAX_FILES; i++) {
        struct powercut_state *st = &powercut.files[i];
        if (!st->used)
            continue;
        size_t cap = st->img_len ? st->img_len : 1;
        st->snap = malloc(cap);
        if (!st->snap)
            powercut_fail("out of memory");
        if (st->img_len)
            memcpy(st->snap, st->img, st->img_len);
        st->snap_len = st->img_len;
        if (powercut.torn)
            st->snap_len = powercut_apply(st, &st->snap, &cap, st->img_len, 1, -1);
        st->has_snap = 1;
    }
}

/* Counts one write/sync/truncate; returns 1 when the power is (now) off. */
static int powercut_tick(void)
{
    if (powercut.cut)
        return 1;
    if (powercut.ops_left > 0 && --powercut.ops_left == 0) {
        powercut_do_cut();
        return 1;
    }
    return 0;
}

static struct powercut_state *powercut_find(const char *path, int create)
{
    struct powercut_state *free_slot = NULL;
    for (int i = 0; i < POWERCUT_MAX_FILES; i++) {
        struct powercut_state *st = &powercut.files[i];
        if (st->used && strcmp(st->path, path) == 0)
            return st;
        if (!st->used && !free_slot)
            free_slot = st;
    }
    if (!create)
        return NULL;
    if (!free_slot || strlen(path) >= POWERCUT_PATH_MAX)
        powercut_fail("too many files or path too long");
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->used = 1;
    memcpy(free_slot->path, path, strlen(path) + 1);
    /* What is already there was there before the shim: durable. */
    int64_t n = powercut_path_size(path);
    powercut_reserve(&free_slot->img, &free_slot->img_cap, (size_t)n + 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    powercut_pread(fd, free_slot->img, 0, n);
    if (fd >= 0)
        close(fd);
    free_slot->img_len = (size_t)n;
    return free_slot;
}

static void powercut_state_release(struct powercut_state *st)
{
    free(st->img);
    free(st->dirty);
    free(st->snap);
    memset(st, 0, sizeof *st);
}

/* ---- io methods ---------------------------------------------------------- */

static int pc_close(sqlite3_file *f)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
}

static int pc_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xRead(p->real, buf, amt, off);
}

static int pc_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
    struct powercut_file *p = (struct powercut_file *)f;
    if (!p->st)
        return p->real->pMethods->xWrite(p->real, buf, amt, off);
    pthread_mutex_lock(&powercut.mu);
    if (powercut_tick()) {
        pthread_mutex_unlock(&powercut.mu);
        return SQLITE_IOERR_WRITE;
    }
    int rc = p->real->pMethods->xWrite(p->real, buf, amt, off);
    if (rc == SQLITE_OK) {
        struct powercut_state *st = p->st;
        if (st->ndirty == st->dirty_cap) {
            size_t n = st->dirty_cap ? st->dirty_cap * 2 : 64;
            struct powercut_range *d = realloc(st->dirty, n * sizeof *d);
            if (!d)
                powercut_fail("out of memory");
            st->dirty = d;
            st->dirty_cap = n;
        }
        st->dirty[st->ndirty++] = (struct powercut_range){ off, amt };
        powercut.writes++;
    }
    pthread_mutex_unlock(&powercut.mu);
    return rc;
}

static int pc_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    struct powercut_file *p = (struct powercut_file *)f;
    if (!p->st)
        return p->real->pMethods->xTruncate(p->real, size);
    pthread_mutex_lock(&powercut.mu);
    int off = powercut_tick();
    pthread_mutex_unlock(&powercut.mu);
    if (off)
        return SQLITE_IOERR_TRUNCATE;
    /* The new size becomes durable at the next sync, like the data. */
    return p->real->pMethods->xTruncate(p->real, size);
}

static int pc_sync(sqlite3_file *f, int flags)
{
    struct powercut_file *p = (struct powercut_file *)f;
    (void)flags;
    if (!p->st)
        return SQLITE_OK;
    pthread_mutex_lock(&powercut.mu);
    if (powercut_tick()) {
        pthread_mutex_unlock(&powercut.mu);
        return SQLITE_IOERR_FSYNC;
    }
    struct powercut_state *st = p->st;
    sqlite3_int64 size = 0;
    if (p->real->pMethods->xFileSize(p->real, &size) != SQLITE_OK) {
        pthread_mutex_unlock(&powercut.mu);
        return SQLITE_IOERR_FSYNC;
    }
    st->img_len = powercut_apply(st, &st->img, &st->img_cap, st->img_len, 0, size);
    st->ndirty = 0;
    powercut.syncs++;
    pthread_mutex_unlock(&powercut.mu);
    return SQLITE_OK;
}

static int pc_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xFileSize(p->real, size);
}

static int pc_lock(sqlite3_file *f, int l)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xLock(p->real, l);
}

static int pc_unlock(sqlite3_file *f, int l)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xUnlock(p->real, l);
}

static int pc_check_reserved(sqlite3_file *f, int *out)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int pc_file_control(sqlite3_file *f, int op, void *arg)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int pc_sector_size(sqlite3_file *f)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xSectorSize(p->real);
}

static int pc_device_chars(sqlite3_file *f)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xDeviceCharacteristics(p->real);
}

static int pc_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xShmMap(p->real, pg, pgsz, extend, pp);
}

static int pc_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xShmLock(p->real, offset, n, flags);
}

static void pc_shm_barrier(sqlite3_file *f)
{
    struct powercut_file *p = (struct powercut_file *)f;
    p->real->pMethods->xShmBarrier(p->real);
}

static int pc_shm_unmap(sqlite3_file *f, int del)
{
    struct powercut_file *p = (struct powercut_file *)f;
    return p->real->pMethods->xShmUnmap(p->real, del);
}

/* No memory-mapped reads: every byte comes through xRead. */
static int pc_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
    (void)f;
    (void)off;
    (void)amt;
    *pp = NULL;
    return SQLITE_OK;
}

static int pc_unfetch(sqlite3_file *f, sqlite3_int64 off, void *pg)
{
    (void)f;
    (void)off;
    (void)pg;
    return SQLITE_OK;
}

static const sqlite3_io_methods powercut_methods = {
    3, pc_close, pc_read, pc_write, pc_truncate, pc_sync, pc_file_size, pc_lock, pc_unlock,
    pc_check_reserved, pc_file_control, pc_sector_size, pc_device_chars, pc_shm_map,
    pc_shm_lock, pc_shm_barrier, pc_shm_unmap, pc_fetch, pc_unfetch,
};

/* ---- vfs methods ----------------------------------------------------------- */

static int pc_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
    (void)vfs;
    struct powercut_file *p = (struct powercut_file *)f;
    p->real = (sqlite3_file *)(p + 1);
    p->st = NULL;
    int rc = powercut.real->xOpen(powercut.real, name, p->real, flags, out);
    if (rc != SQLITE_OK) {
        p->base.pMethods = NULL;
        return rc;
    }
    if (name) {
        pthread_mutex_lock(&powercut.mu);
        p->st = powercut_find(name, 1);
        pthread_mutex_unlock(&powercut.mu);
    }
    p->base.pMethods = &powercut_methods;
    return SQLITE_OK;
}

static int pc_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    (void)vfs;
    pthread_mutex_lock(&powercut.mu);
    if (powercut_tick()) {
        pthread_mutex_unlock(&powercut.mu);
        return SQLITE_IOERR_DELETE;
    }
    struct powercut_state *st = powercut_find(name, 0);
    if (st)
        powercut_state_release(st);
    pthread_mutex_unlock(&powercut.mu);
    return powercut.real->xDelete(powercut.real, name, sync_dir);
}

/* ---- test API ------------------------------------------------------------- */

/* Registers the shim as the default VFS (once per process). */
static inline void powercut_install(void)
{
    if (powercut.registered)
        return;
    powercut.real = sqlite3_vfs_find(NULL);
    if (!powercut.real)
        powercut_fail("no default vfs");
    powercut.vfs = *powercut.real;
    powercut.vfs.pNext = NULL;
    powercut.vfs.zName = "powercut";
    powercut.vfs.szOsFile = (int)sizeof(struct powercut_file) + powercut.real->szOsFile;
    powercut.vfs.xOpen = pc_open;
    powercut.vfs.xDelete = pc_delete;
    if (sqlite3_vfs_register(&powercut.vfs, 1) != SQLITE_OK)
        powercut_fail("register");
    powercut.registered = 1;
}

/* The power goes off at the ops-th write/sync/truncate/delete from now
 * (ops >= 1); torn: unsynced writes survive at random (seeded). */
static inline void powercut_arm(long ops, int torn, unsigned seed)
{
    pthread_mutex_lock(&powercut.mu);
    powercut.ops_left = ops;
    powercut.torn = torn;
    powercut.seed = seed;
    pthread_mutex_unlock(&powercut.mu);
}

/* Cuts the power now (if it is not off already). */
static inline void powercut_now(void)
{
    pthread_mutex_lock(&powercut.mu);
    powercut_do_cut();
    pthread_mutex_unlock(&powercut.mu);
}

static inline int powercut_is_off(void)
{
    pthread_mutex_lock(&powercut.mu);
    int c = powercut.cut;
    pthread_mutex_unlock(&powercut.mu);
    return c;
}

static inline unsigned long powercut_syncs(void)
{
    pthread_mutex_lock(&powercut.mu);
    unsigned long n = powercut.syncs;
    pthread_mutex_unlock(&powercut.mu);
    return n;
}

static int powercut_write_file(const char *path, const uint8_t *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    return close(fd);
}

/* After every connection is closed: the "reboot".  Each file gets what
 * survived the cut; the shared-memory index of each database is removed;
 * the power comes back and the shim forgets every file.  0 or -1. */
static inline int powercut_restore(void)
{
    int rc = 0;
    pthread_mutex_lock(&powercut.mu);
    for (int i = 0; i < POWERCUT_MAX_FILES; i++) {
        struct powercut_state *st = &powercut.files[i];
        if (!st->used)
            continue;
        if (st->has_snap && powercut_write_file(st->path, st->snap, st->snap_len) < 0) {
            fprintf(stderr, "powercut: cannot restore %s: %s\n", st->path, strerror(errno));
            rc = -1;
        }
        char shm[POWERCUT_PATH_MAX + 8];
        snprintf(shm, sizeof shm, "%s-shm", st->path);
        if (unlink(shm) < 0 && errno != ENOENT) {
            fprintf(stderr, "powercut: cannot remove %s: %s\n", shm, strerror(errno));
            rc = -1;
        }
        powercut_state_release(st);
    }
    powercut.cut = 0;
    powercut.ops_left = 0;
    powercut.syncs = powercut.writes = 0;
    pthread_mutex_unlock(&powercut.mu);
    return rc;
}

/* Forgets every file (their directory is about to be removed).  Call with
 * no database open. */
static inline void powercut_forget(void)
{
    pthread_mutex_lock(&powercut.mu);
    for (int i = 0; i < POWERCUT_MAX_FILES; i++)
        if (powercut.files[i].used)
            powercut_state_release(&powercut.files[i]);
    pthread_mutex_unlock(&powercut.mu);
}

#endif
