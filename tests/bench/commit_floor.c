/* The floor of a durable commit on this disk, without network or HL7.
 *
 *   commit_floor [--dir DIR] [--seconds S] [--cold N] [--warmup N]
 *                [--body BYTES] [--senders N] [--rows R] [--row-bytes BYTES]
 *                [--groups 8,32,128] [--only sqlite|log]
 *
 * Single thread.  Measures, one after the other:
 *   sqlite   the store's own database: store_open creates it (real schema,
 *            page size, WAL) and closes it; it is reopened with the writer's
 *            pragmas (synchronous=FULL, journal_size_limit, cache_size,
 *            temp_store) and each group is what the writer does per message
 *            (key lookup, INSERT INTO messages with a BYTES-long body, R
 *            INSERTs INTO rows) inside BEGIN IMMEDIATE … COMMIT.  The
 *            messages come from N senders in turn (default 8, like the 8
 *            connections of `make bench`), each with its own rising MSH-10,
 *            so a group inserts at N places of the key index.  The WAL is
 *            checkpointed at STORE_WAL_CKPT_PAGES like the store does, but
 *            here on the same thread, so its cost is in the figures.
 *            Phases: cold (a new store's first N messages, groups of the
 *            first size), a warm-up (not reported), then each group size
 *            for S seconds.
 *   log      an append-only log on a file written with zeros beforehand
 *            (its blocks allocated and initialised): one pwrite of a group of
 *            records (16-byte header + body) then fdatasync, per group.
 *   log-new  the same on a file only fallocate()d (unwritten extents: the
 *            first write of each block also changes the file system's
 *            metadata, like a growing WAL).
 * One line per phase: commits/s, messages/s, CPU µs per message (getrusage,
 * user + system), commit latency p50/p99/max, and for SQLite the WAL
 * frames (pages) each commit wrote.  The files go under DIR
 * (default var/commit_floor in the current directory) and are removed. */
#include "core/log.h"
#include "store/store.h"
#include "store/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_FILE_BYTES (256ull * 1024 * 1024) /* written with zeros: "log" */
#define LOG_NEW_BYTES  (1024ull * 1024 * 1024) /* fallocate()d: "log-new" */
#define LOG_HDR        16
#define MAX_GROUPS     8

struct opts {
    const char *dir;
    double seconds;
    unsigned long cold, warmup;
    size_t body, rows, row_bytes;
    unsigned long senders;
    unsigned groups[MAX_GROUPS];
    size_t n_groups;
};

struct lat {
    uint64_t *ns;
    size_t n, cap;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(uint64_t *user, uint64_t *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (uint64_t)ru.ru_utime.tv_sec * 1000000000ull + (uint64_t)ru.ru_utime.tv_usec * 1000ull;
    *sys = (uint64_t)ru.ru_stime.tv_sec * 1000000000ull + (uint64_t)ru.ru_stime.tv_usec * 1000ull;
    return *user + *sys;
}

static int lat_add(struct lat *l, uint64_t ns)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 65536;
        uint64_t *p = realloc(l->ns, cap * sizeof *p);
        if (!p)
            return -1;
        l->ns = p;
        l->cap = cap;
    }
    l->ns[l->n++] = ns;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A phase's figures: what ran, how long, what it cost. */
struct phase {
    uint64_t t0, user0, sys0;
    const uint64_t *frames; /* WAL frames written so far (SQLite), or NULL */
    uint64_t frames0;
    unsigned long msgs;
    struct lat lat;
};

static void phase_start(struct phase *p)
{
    p->msgs = 0;
    p->lat.n = 0;
    p->frames0 = p->frames ? *p->frames : 0;
    cpu_ns(&p->user0, &p->sys0);
    p->t0 = now_ns();
}

static void phase_report(struct phase *p, const char *mode, const char *name, unsigned group)
{
    double s = (double)(now_ns() - p->t0) / 1e9;
    uint64_t user, sys;
    cpu_ns(&user, &sys);
    double m = p->msgs ? (double)p->msgs : 1.0;
    size_t n = p->lat.n;
    if (n)
        qsort(p->lat.ns, n, sizeof *p->lat.ns, cmp_u64);
    uint64_t p50 = n ? p->lat.ns[n / 2] : 0, p99 = n ? p->lat.ns[n * 99 / 100] : 0,
             mx = n ? p->lat.ns[n - 1] : 0;
    printf("mode=%s phase=%s group=%u commits=%zu messages=%lu seconds=%.2f commits_s=%.0f"
           " msg_s=%.0f cpu_us_msg=%.1f user_us_msg=%.1f sys_us_msg=%.1f"
           " commit_p50_us=%llu commit_p99_us=%llu commit_max_us=%llu",
           mode, name, group, n, p->msgs, s, (double)n / s, (double)p->msgs / s,
           (double)(user - p->user0 + sys - p->sys0) / 1e3 / m, (double)(user - p->user0) / 1e3 / m,
           (double)(sys - p->sys0) / 1e3 / m, (unsigned long long)(p50 / 1000),
           (unsigned long long)(p99 / 1000), (unsigned long long)(mx / 1000));
    if (p->frames)
        printf(" wal_frames_per_commit=%.2f", n ? (double)(*p->frames - p->frames0) / (double)n : 0.0);
    printf("\n");
    fflush(stdout);
}

/* ---- SQLite --------------------------------------------------------- */

struct sq {
    sqlite3 *db;
    sqlite3_stmt *begin, *commit, *sel, *ins, *row;
    uint8_t *body, *rowdata;
    unsigned long seq;
    uint64_t rnd;
    int wal_pages;         /* frames in the WAL after the last commit */
    uint64_t frames;       /* frames the commits wrote */
};

static int sq_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "commit_floor: %s: %s\n", sql, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int sq_prep(struct sq *q, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v3(q->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
        fprintf(stderr, "commit_floor: prepare %s: %s\n", sql, sqlite3_errmsg(q->db));
        return -1;
    }
    return 0;
}

/* Counts the frames each commit appends and checkpoints at the store's
 * threshold, on this thread (the store's hook hands that to a thread). */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct sq *q = arg;
    q->frames += (uint64_t)(pages >= q->wal_pages ? pages - q->wal_pages : pages);
    q->wal_pages = pages;
    if (pages >= STORE_WAL_CKPT_PAGES) {
        int log_frames = 0, done = 0;
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done);
    }
    return SQLITE_OK;
}

static int sq_open(struct sq *q, const char *path, const struct opts *o)
{
    /* The store makes the file: its schema, page size and WAL mode. */
    struct store_opts so = { .type = STORE_SQLITE, .path = path };
    char err[256];
    log_set_level(LOG_WARN);
    struct store *s = store_open(&so, err, sizeof err);
    if (!s) {
        fprintf(stderr, "commit_floor: %s\n", err);
        return -1;
    }
    store_close(s);
    if (sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        fprintf(stderr, "commit_floor: open %s: %s\n", path, sqlite3_errmsg(q->db));
        return -1;
    }
    char limit[64];
    snprintf(limit, sizeof limit, "PRAGMA journal_size_limit=%d", STORE_JOURNAL_LIMIT_BYTES);
    if (sq_exec(q->db, "PRAGMA journal_mode=WAL") < 0 ||
        sq_exec(q->db, "PRAGMA synchronous=FULL") < 0 || sq_exec(q->db, limit) < 0 ||
        sq_exec(q->db, "PRAGMA temp_store=MEMORY") < 0 ||
        sq_exec(q->db, "PRAGMA cache_size=-32768") < 0 ||
        sq_exec(q->db, "PRAGMA foreign_keys=OFF") < 0)
        return -1;
    sqlite3_wal_hook(q->db, wal_hook, q);
    if (sq_prep(q, "BEGIN IMMEDIATE", &q->begin) < 0 || sq_prep(q, "COMMIT", &q->commit) < 0 ||
        sq_prep(q,
                "SELECT id, ack_code, digest IS NULL OR digest = ?4 FROM messages"
                " WHERE send_app = ?1 AND send_fac = ?2 AND control_id = ?3"
                " ORDER BY 3 DESC, id LIMIT 1",
                &q->sel) < 0 ||
        sq_prep(q,
                "INSERT INTO messages (received_ms, listener, peer, send_app, send_fac,"
                " control_id, msg_type, \"trigger\", version, ack_code, raw, quarantined,"
                " reason, row_count, filtered, digest)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, NULL, ?12, 0, ?13)",
                &q->ins) < 0 ||
        sq_prep(q, "INSERT INTO rows (msg_id, seq, data, layout) VALUES (?1, ?2, ?3, NULL)",
                &q->row) < 0)
        return -1;
    q->body = malloc(o->body ? o->body : 1);
    q->rowdata = malloc(o->row_bytes ? o->row_bytes : 1);
    if (!q->body || !q->rowdata)
        return -1;
    memset(q->body, 'B', o->body);
    memset(q->rowdata, 'R', o->row_bytes);
    q->rnd = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    return 0;
}

static void sq_close(struct sq *q)
{
    sqlite3_finalize(q->begin);
    sqlite3_finalize(q->commit);
    sqlite3_finalize(q->sel);
    sqlite3_finalize(q->ins);
    sqlite3_finalize(q->row);
    if (q->db)
        sqlite3_close(q->db);
    free(q->body);
    free(q->rowdata);
}

static int sq_step(sqlite3_stmt *st, int want)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == want ? 0 : -1;
}

/* One message as the writer stores it: the key looked up, then inserted. */
static int sq_message(struct sq *q, const struct opts *o, int64_t now_ms)
{
    char ctl[32];
    /* Each sender's ids rise on their own, as MLLP senders' MSH-10s do:
     * a group from N senders inserts at N places of the key index. */
    unsigned long n = q->seq++;
    int cl = snprintf(ctl, sizeof ctl, "CF%03lu%010lu", n % o->senders, n / o->senders);
    q->rnd ^= q->rnd << 13;
    q->rnd ^= q->rnd >> 7;
    q->rnd ^= q->rnd << 17;
    sqlite3_bind_text(q->sel, 1, "LOADGEN", 7, SQLITE_STATIC);
    sqlite3_bind_text(q->sel, 2, "BENCH", 5, SQLITE_STATIC);
    sqlite3_bind_text(q->sel, 3, ctl, cl, SQLITE_STATIC);
    sqlite3_bind_int64(q->sel, 4, (sqlite3_int64)q->rnd);
    if (sq_step(q->sel, SQLITE_DONE) < 0)
        return -1;
    sqlite3_stmt *st = q->ins;
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_text(st, 2, "bench", 5, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, "127.0.0.1:40000", 15, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, "LOADGEN", 7, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, "BENCH", 5, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, ctl, cl, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, "ADT", 3, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, "A01", 3, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, "2.5", 3, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, "AA", 2, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 11, q->body, o->body, SQLITE_STATIC);
    sqlite3_bind_int64(st, 12, (sqlite3_int64)o->rows);
    sqlite3_bind_int64(st, 13, (sqlite3_int64)q->rnd);
    if (sq_step(st, SQLITE_DONE) < 0)
        return -1;
    int64_t id = sqlite3_last_insert_rowid(q->db);
    for (size_t r = 0; r < o->rows; r++) {
        sqlite3_bind_int64(q->row, 1, id);
        sqlite3_bind_int64(q->row, 2, (sqlite3_int64)r);
        sqlite3_bind_blob64(q->row, 3, q->rowdata, o->row_bytes, SQLITE_STATIC);
        if (sq_step(q->row, SQLITE_DONE) < 0)
            return -1;
    }
    return 0;
}

static int sq_group(struct sq *q, const struct opts *o, unsigned group, struct phase *p)
{
    uint64_t t = now_ns();
    int64_t now_ms = (int64_t)(t / 1000000ull);
    if (sq_step(q->begin, SQLITE_DONE) < 0)
        goto fail;
    for (unsigned i = 0; i < group; i++)
        if (sq_message(q, o, now_ms) < 0)
            goto fail;
    if (sq_step(q->commit, SQLITE_DONE) < 0)
        goto fail;
    p->msgs += group;
    return lat_add(&p->lat, now_ns() - t);
fail:
    fprintf(stderr, "commit_floor: sqlite: %s\n", sqlite3_errmsg(q->db));
    return -1;
}

static int run_sqlite(const struct opts *o, struct phase *p)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/floor.db", o->dir);
    struct sq q = { 0 };
    int rc = -1;
    if (sq_open(&q, path, o) < 0)
        goto out;
    unsigned g0 = o->groups[0];
    p->frames = &q.frames;
    phase_start(p);
    while (p->msgs < o->cold)
        if (sq_group(&q, o, g0, p) < 0)
            goto out;
    phase_report(p, "sqlite", "cold", g0);
    phase_start(p);
    while (p->msgs < o->warmup)
        if (sq_group(&q, o, 32, p) < 0)
            goto out;
    for (size_t g = 0; g < o->n_groups; g++) {
        phase_start(p);
        uint64_t end = p->t0 + (uint64_t)(o->seconds * 1e9);
        while (now_ns() < end)
            if (sq_group(&q, o, o->groups[g], p) < 0)
                goto out;
        phase_report(p, "sqlite", "steady", o->groups[g]);
    }
    rc = 0;
out:
    p->frames = NULL;
    sq_close(&q);
    static const char *const suffix[] = { "", "-wal", "-shm" };
    for (size_t i = 0; i < 3; i++) {
        char f[4200];
        snprintf(f, sizeof f, "%s%s", path, suffix[i]);
        unlink(f);
    }
    return rc;
}

/* ---- append-only log ------------------------------------------------- */

static int fill_zeros(int fd)
{
    static uint8_t zero[1 << 20];
    for (uint64_t off = 0; off < LOG_FILE_BYTES; off += sizeof zero) {
        ssize_t w = pwrite(fd, zero, sizeof zero, (off_t)off);
        if (w != (ssize_t)sizeof zero)
            return -1;
    }
    return fsync(fd);
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static int run_log(const struct opts *o, struct phase *p, int zeroed)
{
    const char *mode = zeroed ? "log" : "log-new";
    char path[4096];
    snprintf(path, sizeof path, "%s/floor.log", o->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "commit_floor: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = -1;
    unsigned gmax = 0;
    for (size_t g = 0; g < o->n_groups; g++)
        gmax = o->groups[g] > gmax ? o->groups[g] : gmax;
    size_t rec = LOG_HDR + o->body;
    uint8_t *buf = calloc(gmax, rec);
    if (!buf)
        goto out;
    if (zeroed ? fill_zeros(fd) : posix_fallocate(fd, 0, (off_t)LOG_NEW_BYTES) == 0 ? fsync(fd)
                                                                                     : -1) {
        fprintf(stderr, "commit_floor: preparing %s: %s\n", path, strerror(errno));
        goto out;
    }
    uint64_t off = 0, seq = 0;
    for (size_t g = 0; g < o->n_groups; g++) {
        unsigned group = o->groups[g];
        size_t len = (size_t)group * rec;
        phase_start(p);
        uint64_t end = p->t0 + (uint64_t)(o->seconds * 1e9);
        while (now_ns() < end) {
            uint64_t t = now_ns();
            for (unsigned i = 0; i < group; i++) {
                uint8_t *r = buf + (size_t)i * rec;
                uint64_t s = ++seq;
                uint32_t n = (uint32_t)o->body;
                memcpy(r, &s, 8);
                memcpy(r + 8, &n, 4);
                memset(r + LOG_HDR, 'B', o->body);
                uint32_t crc = fnv1a(r + LOG_HDR, o->body);
                memcpy(r + 12, &crc, 4);
            }
            if (off + len > (zeroed ? LOG_FILE_BYTES : LOG_NEW_BYTES)) {
                if (!zeroed) /* no reuse: the point is fresh blocks */
                    break;
                off = 0;
            }
            if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len || fdatasync(fd) != 0) {
                fprintf(stderr, "commit_floor: %s: %s\n", path, strerror(errno));
                goto out;
            }
            off += len;
            p->msgs += group;
            if (lat_add(&p->lat, now_ns() - t) < 0)
                goto out;
        }
        phase_report(p, mode, "steady", group);
    }
    rc = 0;
out:
    free(buf);
    close(fd);
    unlink(path);
    return rc;
}

/* ---- main ------------------------------------------------------------ */

static int parse_groups(struct opts *o, const char *s)
{
    o->n_groups = 0;
    while (*s && o->n_groups < MAX_GROUPS) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || v > 100000)
            return -1;
        o->groups[o->n_groups++] = (unsigned)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return o->n_groups ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: commit_floor [--dir DIR] [--seconds S] [--cold N] [--warmup N]"
                    " [--body BYTES] [--senders N] [--rows R] [--row-bytes BYTES] [--groups 8,32,128]"
                    " [--only sqlite|log]\n");
}

int main(int argc, char **argv)
{
    struct opts o = {
        .dir = "var/commit_floor", .seconds = 5, .cold = 60000, .warmup = 150000,
        .body = 600, .senders = 8, .rows = 0, .row_bytes = 400, .groups = { 8, 32, 128 }, .n_groups = 3,
    };
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        if (!v) {
            usage();
            return 2;
        }
        i++;
        if (strcmp(a, "--dir") == 0)
            o.dir = v;
        else if (strcmp(a, "--seconds") == 0)
            o.seconds = strtod(v, NULL);
        else if (strcmp(a, "--cold") == 0)
            o.cold = strtoul(v, NULL, 10);
        else if (strcmp(a, "--warmup") == 0)
            o.warmup = strtoul(v, NULL, 10);
        else if (strcmp(a, "--body") == 0)
            o.body = strtoul(v, NULL, 10);
        else if (strcmp(a, "--senders") == 0)
            o.senders = strtoul(v, NULL, 10);
        else if (strcmp(a, "--rows") == 0)
            o.rows = strtoul(v, NULL, 10);
        else if (strcmp(a, "--row-bytes") == 0)
            o.row_bytes = strtoul(v, NULL, 10);
        else if (strcmp(a, "--only") == 0)
            only = v;
        else if (strcmp(a, "--groups") != 0 || parse_groups(&o, v) < 0) {
            usage();
            return 2;
        }
    }
    if (o.seconds <= 0 || o.body == 0 || o.senders == 0 || o.senders > 999 || o.body > (1u << 20) || o.row_bytes > (1u << 20)) {
        usage();
        return 2;
    }
    if (mkdir(o.dir, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "commit_floor: %s: %s\n", o.dir, strerror(errno));
        return 1;
    }
    struct phase p = { 0 };
    int rc = 0;
    if (!only || strcmp(only, "sqlite") == 0)
        rc |= run_sqlite(&o, &p);
    if (!only || strcmp(only, "log") == 0) {
        rc |= run_log(&o, &p, 1);
        rc |= run_log(&o, &p, 0);
    }
    free(p.lat.ns);
    return rc ? 1 : 0;
}
