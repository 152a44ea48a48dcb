/* Unit tests for store/: each test opens a store in a fresh temporary
 * directory, drives it through the public API from this (producer) thread and
 * checks what landed in the database through a separate sqlite3 connection.
 * Lock contention is staged with BEGIN EXCLUSIVE on that connection, which
 * holds the writer at its BEGIN IMMEDIATE. */
#include "store/store.h"
#include "core/clock.h"
#include "core/log.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/unit/tmpdir.h"

struct fixture {
    char dir[64];
    char path[160];
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    if (tmpdir_make(fx->dir, sizeof fx->dir, "store") != 0) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof fx->path, "%s/var/lib/store.db", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    tmpdir_remove(fx->dir);
    free(fx);
    return 0;
}

static struct store *open_store(const struct fixture *fx, size_t cap, uint64_t min_free_mb,
                                unsigned retention_days)
{
    struct store_opts o = {
        .path = fx->path, .retention_days = retention_days, .queue_capacity = cap,
        .max_group = 0, .min_free_disk_mb = min_free_mb,
    };
    char err[256];
    struct store *s = store_open(&o, err, sizeof err);
    if (!s)
        fprintf(stderr, "store_open: %s\n", err);
    assert_non_null(s);
    return s;
}

static sqlite3 *open_db(const struct fixture *fx)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(fx->path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
    sqlite3_free(msg);
    assert_int_equal(rc, SQLITE_OK);
}

static int64_t db_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

struct msg_spec {
    const char *app, *fac, *ctl, *ack;
    const char *raw;      /* NULL → a default body */
    const char *rows;     /* NULL → none */
    unsigned row_count;
    int quarantined;
    const char *reason;
    const struct store_appt_facts *appt; /* NULL → none */
    uint64_t digest;      /* content digest (0 unless a test sets it) */
};

static const char default_raw[] = "MSH|^~\\&|APP|FAC|HB|HB|20240101120000||ADT^A01|X|P|2.5\r";

static struct store_msg *make_msg(const struct msg_spec *sp)
{
    const char *raw = sp->raw ? sp->raw : default_raw;
    struct store_msg_fields f = {
        .raw = (const uint8_t *)raw, .raw_len = strlen(raw),
        .listener = "main", .peer = "10.0.0.7:40001",
        .send_app = (const uint8_t *)sp->app, .send_app_len = strlen(sp->app),
        .send_fac = (const uint8_t *)sp->fac, .send_fac_len = strlen(sp->fac),
        .control_id = (const uint8_t *)sp->ctl, .control_id_len = strlen(sp->ctl),
        .msg_type = (const uint8_t *)"ADT", .msg_type_len = 3,
        .trigger = (const uint8_t *)"A01", .trigger_len = 3,
        .version = (const uint8_t *)"2.5", .version_len = 3,
        .ack_code = sp->ack ? sp->ack : "AA",
        .received_ms = 1700000000123,
        .rows = (const uint8_t *)sp->rows, .rows_len = sp->rows ? strlen(sp->rows) : 0,
        .row_count = sp->row_count,
        .quarantined = sp->quarantined, .reason = sp->reason,
        .appt = sp->appt,
        .digest = sp->digest,
    };
    struct store_msg *m = store_msg_new(&f);
    assert_non_null(m);
    return m;
}

static void submit(struct store *s, const struct msg_spec *sp, uint64_t tag)
{
    assert_int_equal(store_submit(s, make_msg(sp), tag), 0);
}

static void submit_simple(struct store *s, const char *ctl, uint64_t tag)
{
    struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = ctl };
    submit(s, &sp, tag);
}

/* Collects exactly n results, waiting on the eventfd as the daemon would. */
static void wait_results(struct store *s, struct store_result *out, size_t n)
{
    size_t got = 0;
    uint64_t deadline = clock_mono_ms() + 20000;
    while (got < n) {
        assert_true(clock_mono_ms() < deadline);
        struct pollfd pfd = { .fd = store_event_fd(s), .events = POLLIN };
        int pr = poll(&pfd, 1, 100);
        assert_true(pr >= 0);
        if (pr == 0)
            continue;
        got += store_take_results(s, out + got, n - got);
    }
}

static struct store_result one_result(struct store *s)
{
    struct store_result r;
    wait_results(s, &r, 1);
    return r;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- tests ------------------------------------------------------------- */

static void test_store_and_read_back(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec sp = {
        .app = "EPIC", .fac = "GENHOSP", .ctl = "MSG0001", .ack = "CA",
        .rows = "r1|a\nr2|b\nr3|c\n", .row_count = 3,
    };
    submit(s, &sp, 42);
    struct store_result r = one_result(s);
    assert_int_equal(r.tag, 42);
    assert_int_equal(r.status, STORE_STORED);
    assert_string_equal(r.ack_code, "CA");
    assert_true(r.id > 0);
    assert_int_equal(store_pending(s), 0);
    assert_int_equal(store_space(s), 8192);

    sqlite3 *db = open_db(fx);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
        "SELECT id, received_ms, listener, peer, send_app, send_fac, control_id, msg_type,"
        " \"trigger\", version, ack_code, raw, quarantined, reason, delivered_ms FROM messages",
        -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), r.id);
    assert_int_equal(sqlite3_column_int64(st, 1), 1700000000123);
    assert_string_equal((const char *)sqlite3_column_text(st, 2), "main");
    assert_string_equal((const char *)sqlite3_column_text(st, 3), "10.0.0.7:40001");
    assert_string_equal((const char *)sqlite3_column_text(st, 4), "EPIC");
    assert_string_equal((const char *)sqlite3_column_text(st, 5), "GENHOSP");
    assert_string_equal((const char *)sqlite3_column_text(st, 6), "MSG0001");
    assert_string_equal((const char *)sqlite3_column_text(st, 7), "ADT");
    assert_string_equal((const char *)sqlite3_column_text(st, 8), "A01");
    assert_string_equal((const char *)sqlite3_column_text(st, 9), "2.5");
    assert_string_equal((const char *)sqlite3_column_text(st, 10), "CA");
    assert_int_equal(sqlite3_column_type(st, 11), SQLITE_BLOB);
    assert_int_equal(sqlite3_column_bytes(st, 11), (int)strlen(default_raw));
    assert_memory_equal(sqlite3_column_blob(st, 11), default_raw, strlen(default_raw));
    assert_int_equal(sqlite3_column_int(st, 12), 0);
    assert_int_equal(sqlite3_column_type(st, 13), SQLITE_NULL);
    assert_int_equal(sqlite3_column_type(st, 14), SQLITE_NULL);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);

    /* Rows: one per line, in order, tied to the message, not batched yet. */
    assert_int_equal(sqlite3_prepare_v2(db,
        "SELECT msg_id, seq, data, batch_id FROM rows ORDER BY seq", -1, &st, NULL), SQLITE_OK);
    const char *want[] = { "r1|a", "r2|b", "r3|c" };
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int64(st, 0), r.id);
        assert_int_equal(sqlite3_column_int(st, 1), i);
        assert_int_equal(sqlite3_column_bytes(st, 2), 4);
        assert_memory_equal(sqlite3_column_blob(st, 2), want[i], 4);
        assert_int_equal(sqlite3_column_type(st, 3), SQLITE_NULL);
    }
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);

    assert_int_equal(db_int(db, "SELECT MAX(version) FROM schema_version"), 8);
    sqlite3_stmt *jm = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &jm, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(jm), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(jm, 0), "wal");
    sqlite3_finalize(jm);
    sqlite3_close(db);

    struct store_stats stats;
    store_get_stats(s, &stats);
    assert_int_equal(stats.commits, 1);
    assert_int_equal(stats.messages, 1);
    assert_int_equal(stats.failures, 0);
    store_close(s);
}

static void test_duplicates(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec a = { .app = "APP", .fac = "FAC", .ctl = "C1", .ack = "AA",
                          .rows = "x\n", .row_count = 1 };
    submit(s, &a, 1);
    struct store_result r1 = one_result(s);
    assert_int_equal(r1.status, STORE_STORED);

    /* Re-sent (our ACK was lost): the original ACK code and id come back,
     * even though this copy would have been answered AE. */
    struct msg_spec again = a;
    again.ack = "AE";
    submit(s, &again, 2);
    struct store_result r2 = one_result(s);
    assert_int_equal(r2.tag, 2);
    assert_int_equal(r2.status, STORE_DUPLICATE);
    assert_string_equal(r2.ack_code, "AA");
    assert_int_equal(r2.id, r1.id);

    /* Same control id from another facility is a different message. */
    struct msg_spec other = a;
    other.fac = "FAC2";
    submit(s, &other, 3);
    struct store_result r3 = one_result(s);
    assert_int_equal(r3.status, STORE_STORED);
    assert_true(r3.id != r1.id);

    /* No control id: never a duplicate of anything. */
    struct msg_spec empty = { .app = "APP", .fac = "FAC", .ctl = "" };
    submit(s, &empty, 4);
    submit(s, &empty, 5);
    struct store_result re[2];
    wait_results(s, re, 2);
    assert_int_equal(re[0].status, STORE_STORED);
    assert_int_equal(re[1].status, STORE_STORED);
    assert_true(re[0].id != re[1].id);

    /* Empty application and facility still match themselves. */
    struct msg_spec anon = { .app = "", .fac = "", .ctl = "Z9", .ack = "AR" };
    submit(s, &anon, 6);
    submit(s, &anon, 7);
    struct store_result ra[2];
    wait_results(s, ra, 2);
    assert_int_equal(ra[0].status, STORE_STORED);
    assert_int_equal(ra[1].status, STORE_DUPLICATE);
    assert_string_equal(ra[1].ack_code, "AR");
    assert_int_equal(ra[1].id, ra[0].id);

    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages"), 5);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages WHERE control_id IS NULL"), 2);
    /* The duplicate's rows were not written a second time. */
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM rows"), 2);
    sqlite3_close(db);

    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.duplicates, 2);
    assert_int_equal(st.messages, 5);
    store_close(s);
}

/* A control id reused for other content (a sender's counter reset) is a
 * new message: stored, flagged key_reused and counted; only the same key
 * with the same digest is a re-send. */
static void test_reused_control_id(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec a = { .app = "APP", .fac = "FAC", .ctl = "R1", .digest = 0x1111 };
    struct msg_spec b = a;
    b.digest = 0x2222;
    b.ack = "CA";
    submit(s, &a, 1);
    submit(s, &b, 2);
    submit(s, &b, 3); /* b re-sent in the same group */
    submit(s, &a, 4); /* a re-sent */
    struct store_result r[4];
    wait_results(s, r, 4);
    assert_int_equal(r[0].status, STORE_STORED);
    assert_int_equal(r[0].key_reused, 0);
    assert_int_equal(r[1].status, STORE_STORED);
    assert_int_equal(r[1].key_reused, 1);
    assert_true(r[1].id != r[0].id);
    assert_int_equal(r[2].status, STORE_DUPLICATE);
    assert_int_equal(r[2].id, r[1].id);
    assert_string_equal(r[2].ack_code, "CA");
    assert_int_equal(r[3].status, STORE_DUPLICATE);
    assert_int_equal(r[3].id, r[0].id);
    assert_string_equal(r[3].ack_code, "AA");
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.control_id_reused, 1);
    assert_int_equal(st.duplicates, 2);
    assert_int_equal(st.messages, 2);
    store_close(s);
    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages WHERE control_id = 'R1'"), 2);
    assert_int_equal(db_int(db, "SELECT COUNT(DISTINCT digest) FROM messages"), 2);
    sqlite3_close(db);
}

static void test_duplicates_within_group(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    sqlite3 *db = open_db(fx);
    db_exec(db, "BEGIN EXCLUSIVE");
    /* The writer takes this one alone and then waits for the lock; what
     * follows queues up behind it and is written as one group. */
    submit_simple(s, "BLOCKER", 0);
    sleep_ms(100);
    struct msg_spec x1 = { .app = "APP", .fac = "FAC", .ctl = "X", .ack = "AA" };
    struct msg_spec x2 = { .app = "APP", .fac = "FAC", .ctl = "X", .ack = "AE" };
    struct msg_spec y = { .app = "APP", .fac = "FAC", .ctl = "Y", .ack = "CA" };
    submit(s, &x1, 1);
    submit(s, &x2, 2);
    submit(s, &y, 3);
    submit(s, &x2, 4);
    submit(s, &y, 5);
    db_exec(db, "COMMIT");

    struct store_result r[6];
    wait_results(s, r, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(r[i].tag, (uint64_t)i);
    assert_int_equal(r[0].status, STORE_STORED);
    assert_int_equal(r[1].status, STORE_STORED);
    assert_string_equal(r[1].ack_code, "AA");
    assert_int_equal(r[2].status, STORE_DUPLICATE);
    assert_string_equal(r[2].ack_code, "AA");
    assert_int_equal(r[2].id, r[1].id);
    assert_int_equal(r[3].status, STORE_STORED);
    assert_int_equal(r[4].status, STORE_DUPLICATE);
    assert_int_equal(r[4].id, r[1].id);
    assert_int_equal(r[5].status, STORE_DUPLICATE);
    assert_string_equal(r[5].ack_code, "CA");
    assert_int_equal(r[5].id, r[3].id);

    struct store_stats st;
    store_get_stats(s, &st);
    assert_true(st.commits <= 2);
    assert_true(st.max_group_seen >= 5);
    assert_int_equal(st.duplicates, 3);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages"), 3);
    sqlite3_close(db);
    store_close(s);
}

static void test_results_in_order(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    enum { N = 600 };
    char ctl[32];
    for (unsigned i = 0; i < N; i++) {
        /* Every fifth message repeats the previous control id. */
        snprintf(ctl, sizeof ctl, "ORD%u", i % 5 == 4 ? i - 1 : i);
        submit_simple(s, ctl, 1000 + (uint64_t)i * 7);
    }
    static struct store_result r[N];
    wait_results(s, r, N);
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(r[i].tag, 1000 + (uint64_t)i * 7);
        assert_int_equal(r[i].status, i % 5 == 4 ? STORE_DUPLICATE : STORE_STORED);
        if (i % 5 == 4)
            assert_int_equal(r[i].id, r[i - 1].id);
        else if (i > 0)
            assert_true(r[i].id > r[i - 1].id);
    }
    store_close(s);
}

static void test_group_commit_groups(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    enum { N = 1000 };
    char ctl[32];
    for (unsigned i = 0; i < N; i++) {
        snprintf(ctl, sizeof ctl, "G%u", i);
        submit_simple(s, ctl, i);
    }
    static struct store_result r[N];
    wait_results(s, r, N);
    for (unsigned i = 0; i < N; i++)
        assert_int_equal(r[i].status, STORE_STORED);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.messages, N);
    assert_true(st.commits < N / 4);
    assert_true(st.max_group_seen > 1);
    assert_true(st.commit_ns_total > 0);
    assert_int_equal(store_space(s), 8192);
    store_close(s);
}

static void test_back_pressure(void **state)
{
    struct fixture *fx = *state;
    enum { CAP = 16 };
    struct store *s = open_store(fx, CAP, 0, 7);
    assert_int_equal(store_space(s), CAP);
    sqlite3 *db = open_db(fx);
    db_exec(db, "BEGIN EXCLUSIVE");
    char ctl[32];
    unsigned n = 0;
    for (;;) {
        snprintf(ctl, sizeof ctl, "BP%u", n);
        struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = ctl };
        if (store_space(s) == 0) {
            /* Full: refused, and the message is freed (ASan checks). */
            assert_int_equal(store_submit(s, make_msg(&sp), 999), -1);
            break;
        }
        submit(s, &sp, n);
        n++;
        assert_true(n <= CAP);
    }
    assert_int_equal(n, CAP);
    assert_int_equal(store_space(s), 0);
    assert_int_equal(store_pending(s), CAP);
    /* Held longer than one busy timeout: the writer must retry, not fail. */
    sleep_ms(1500);
    struct pollfd pfd = { .fd = store_event_fd(s), .events = POLLIN };
    assert_int_equal(poll(&pfd, 1, 0), 0);
    db_exec(db, "COMMIT");
    sqlite3_close(db);

    struct store_result r[CAP];
    wait_results(s, r, CAP);
    for (unsigned i = 0; i < CAP; i++) {
        assert_int_equal(r[i].tag, i);
        assert_int_equal(r[i].status, STORE_STORED);
    }
    assert_int_equal(store_space(s), CAP);
    assert_int_equal(store_pending(s), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.messages, CAP);
    store_close(s);
}

static void test_disk_low_fails(void **state)
{
    struct fixture *fx = *state;
    /* An exabyte of free space is never there. */
    struct store *s = open_store(fx, 0, UINT64_C(1) << 40, 7);
    for (unsigned i = 0; i < 10; i++) {
        char ctl[16];
        snprintf(ctl, sizeof ctl, "D%u", i);
        struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = ctl, .ack = "CA" };
        submit(s, &sp, i);
    }
    struct store_result r[10];
    wait_results(s, r, 10);
    for (unsigned i = 0; i < 10; i++) {
        assert_int_equal(r[i].tag, i);
        assert_int_equal(r[i].status, STORE_FAILED);
        assert_int_equal(r[i].id, 0);
        assert_string_equal(r[i].ack_code, "CA");
    }
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.failures, 10);
    assert_int_equal(st.commits, 0);
    store_close(s);

    struct store_counts c;
    char err[128];
    assert_int_equal(store_query_counts(fx->path, &c, err, sizeof err), 0);
    assert_int_equal(c.messages, 0);
}

static off_t file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : 0;
}

/* A commit that cannot be written (here: the file-size limit, which SQLite
 * sees as a failed write exactly like a full disk) fails the whole group, is
 * rolled back, and the writer carries on once writes succeed again. */
static void test_commit_failure_recovers(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    submit_simple(s, "FIRST", 0);
    assert_int_equal(one_result(s).status, STORE_STORED);

    enum { BIG = 1 << 20 };
    char *big = malloc(BIG + 1);
    assert_non_null(big);
    memset(big, 'x', BIG);
    big[BIG] = '\0';

    char wal[200];
    snprintf(wal, sizeof wal, "%s-wal", fx->path);
    off_t biggest = file_size(wal) > file_size(fx->path) ? file_size(wal) : file_size(fx->path);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    struct sigaction ign = { .sa_handler = SIG_IGN }, prev;
    assert_int_equal(sigaction(SIGXFSZ, &ign, &prev), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)biggest + 65536;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

    struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = "BIG", .raw = big,
                           .rows = "row\n", .row_count = 1 };
    submit(s, &sp, 1);
    struct store_result r = one_result(s);
    assert_int_equal(r.status, STORE_FAILED);
    assert_int_equal(r.id, 0);

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    /* Not a duplicate: nothing of the failed transaction survived. */
    submit(s, &sp, 2);
    r = one_result(s);
    assert_int_equal(r.status, STORE_STORED);
    assert_true(r.id > 0);
    assert_int_equal(sigaction(SIGXFSZ, &prev, NULL), 0);

    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.messages, 2);
    store_close(s);
    free(big);

    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages"), 2);
    assert_int_equal(db_int(db, "SELECT length(raw) FROM messages WHERE control_id = 'BIG'"), BIG);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM rows"), 1);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM pragma_integrity_check"
                                 " WHERE integrity_check != 'ok'"), 0);
    sqlite3_close(db);
}

/* Automatic checkpoints are replaced by the helper thread plus the writer's
 * tail copy.  If that chain were broken the WAL would only ever grow: after
 * 120 MB of commits it must have restarted (the file stays well below what
 * was written) and the data must have reached the database file. */
static void test_wal_checkpointed_and_restarted(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    enum { BIG = 1 << 20, COUNT = 120 };
    char *big = malloc(BIG + 1);
    assert_non_null(big);
    memset(big, 'w', BIG);
    big[BIG] = '\0';
    char wal[200];
    snprintf(wal, sizeof wal, "%s-wal", fx->path);
    off_t wal_max = 0;
    for (unsigned i = 0; i < COUNT; i++) {
        char ctl[16];
        snprintf(ctl, sizeof ctl, "W%u", i);
        struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = ctl, .raw = big };
        submit(s, &sp, i);
        assert_int_equal(one_result(s).status, STORE_STORED);
        off_t w = file_size(wal);
        if (w > wal_max)
            wal_max = w;
    }
    free(big);
    assert_true(wal_max > 0);
    assert_true(wal_max < (off_t)100 << 20);
    assert_true(file_size(fx->path) > (off_t)60 << 20);
    store_close(s);
    /* A clean close leaves no WAL behind. */
    assert_int_equal(file_size(wal), 0);
}

static void test_reopen_keeps_data(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = "KEEP1", .ack = "AE",
                           .rows = "a\nb\n", .row_count = 2 };
    submit(s, &sp, 1);
    struct store_result r1 = one_result(s);
    assert_int_equal(r1.status, STORE_STORED);
    submit_simple(s, "KEEP2", 2);
    submit_simple(s, "KEEP3", 3);
    struct store_result rr[2];
    wait_results(s, rr, 2);
    store_close(s);

    s = open_store(fx, 0, 0, 7);
    submit(s, &sp, 4);
    struct store_result r2 = one_result(s);
    assert_int_equal(r2.status, STORE_DUPLICATE);
    assert_int_equal(r2.id, r1.id);
    assert_string_equal(r2.ack_code, "AE");
    submit_simple(s, "KEEP4", 5);
    struct store_result r3 = one_result(s);
    assert_int_equal(r3.status, STORE_STORED);
    assert_true(r3.id > rr[1].id);
    store_close(s);

    struct store_counts c;
    char err[128];
    assert_int_equal(store_query_counts(fx->path, &c, err, sizeof err), 0);
    assert_int_equal(c.messages, 4);
    assert_int_equal(c.rows, 2);
    assert_int_equal(c.undelivered, 4);
    assert_int_equal(c.quarantined, 0);

    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM schema_version"), 8);
    sqlite3_close(db);
}

/* The online copy: taken while the store is open (and has a WAL), every
 * committed message in it, a self-contained 0600 file; never over an
 * existing file; a missing store is an error that leaves nothing behind. */
static void test_backup(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    submit_simple(s, "BK1", 1);
    submit_simple(s, "BK2", 2);
    struct store_result rr[2];
    wait_results(s, rr, 2);
    char dst[256], err[256];
    snprintf(dst, sizeof dst, "%s/copy.db", fx->dir);
    struct store_backup_info info;
    assert_int_equal(store_backup(fx->path, dst, &info, err, sizeof err), 0);
    assert_int_equal(info.messages, 2);
    struct stat sb;
    assert_int_equal(stat(dst, &sb), 0);
    assert_int_equal(info.bytes, (uint64_t)sb.st_size);
    assert_int_equal(sb.st_mode & 0777, 0600);
    char side[300];
    snprintf(side, sizeof side, "%s-wal", dst);
    assert_int_equal(access(side, F_OK), -1);
    snprintf(side, sizeof side, "%s.partial", dst);
    assert_int_equal(access(side, F_OK), -1);
    /* never over an existing file */
    assert_int_equal(store_backup(fx->path, dst, &info, err, sizeof err), -1);
    assert_non_null(strstr(err, "exists"));
    store_close(s);

    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(dst, &db), SQLITE_OK);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages WHERE control_id IN ('BK1','BK2')"),
                     2);
    sqlite3_close(db);

    char none[256], dst2[256];
    snprintf(none, sizeof none, "%s/none.db", fx->dir);
    snprintf(dst2, sizeof dst2, "%s/copy2.db", fx->dir);
    assert_int_equal(store_backup(none, dst2, &info, err, sizeof err), -1);
    assert_int_equal(access(dst2, F_OK), -1);
}

static void test_file_modes(void **state)
{
    struct fixture *fx = *state;
    mode_t old = umask(0);    /* the modes must not depend on the umask */
    struct store *s = open_store(fx, 0, 0, 7);
    umask(old);
    submit_simple(s, "M1", 1);
    assert_int_equal(one_result(s).status, STORE_STORED);

    char p[200];
    struct stat st;
    snprintf(p, sizeof p, "%s/var", fx->dir);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    snprintf(p, sizeof p, "%s/var/lib", fx->dir);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    snprintf(p, sizeof p, "%s-wal", fx->path);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    store_close(s);

    /* A path that cannot be a directory is refused with a message. */
    char bad[200];
    snprintf(bad, sizeof bad, "%s/store.db/x.db", fx->dir);
    struct store_opts o = { .path = bad };
    char err[256] = "";
    snprintf(p, sizeof p, "%s/store.db", fx->dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    assert_null(store_open(&o, err, sizeof err));
    assert_true(strlen(err) > 0);
    struct store_opts none = { .path = NULL };
    assert_null(store_open(&none, err, sizeof err));
}

static void test_quarantine(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec q = { .app = "APP", .fac = "FAC", .ctl = "Q1", .ack = "AE",
                          .quarantined = 1, .reason = "unsupported message type" };
    /* A reason on a message that is not quarantined is ignored. */
    struct msg_spec ok = { .app = "APP", .fac = "FAC", .ctl = "Q2", .reason = "ignored" };
    submit(s, &q, 1);
    submit(s, &ok, 2);
    struct store_result r[2];
    wait_results(s, r, 2);
    assert_int_equal(r[0].status, STORE_STORED);
    assert_string_equal(r[0].ack_code, "AE");
    assert_int_equal(r[1].status, STORE_STORED);

    sqlite3 *db = open_db(fx);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
        "SELECT quarantined, reason FROM messages ORDER BY id", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    assert_string_equal((const char *)sqlite3_column_text(st, 1), "unsupported message type");
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    assert_int_equal(sqlite3_column_type(st, 1), SQLITE_NULL);
    sqlite3_finalize(st);
    sqlite3_close(db);
    store_close(s);

    struct store_counts c;
    char err[128];
    assert_int_equal(store_query_counts(fx->path, &c, err, sizeof err), 0);
    assert_int_equal(c.messages, 2);
    assert_int_equal(c.quarantined, 1);
    assert_int_equal(c.undelivered, 1);
}

static void test_retention(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    submit_simple(s, "OLD", 1);
    submit_simple(s, "RECENT", 2);
    submit_simple(s, "UNDELIVERED", 3);
    struct store_result r[3];
    wait_results(s, r, 3);

    sqlite3 *db = open_db(fx);
    char sql[256];
    int64_t now = clock_wall_ms();
    snprintf(sql, sizeof sql, "UPDATE messages SET delivered_ms = %lld WHERE control_id = 'OLD'",
             (long long)(now - 10LL * 86400000));
    db_exec(db, sql);
    snprintf(sql, sizeof sql,
             "UPDATE messages SET delivered_ms = %lld WHERE control_id = 'RECENT'",
             (long long)(now - 1LL * 86400000));
    db_exec(db, sql);

    store_request_housekeeping(s);
    uint64_t deadline = clock_mono_ms() + 10000;
    while (db_int(db, "SELECT raw IS NULL FROM messages WHERE control_id = 'OLD'") == 0) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(10);
    }
    assert_int_equal(db_int(db, "SELECT raw IS NULL FROM messages WHERE control_id = 'RECENT'"), 0);
    assert_int_equal(
        db_int(db, "SELECT raw IS NULL FROM messages WHERE control_id = 'UNDELIVERED'"), 0);
    /* Only the body goes: the message stays for duplicate detection. */
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages"), 3);
    sqlite3_close(db);

    /* The purged message still answers a re-send as a duplicate. */
    submit_simple(s, "OLD", 4);
    struct store_result d = one_result(s);
    assert_int_equal(d.status, STORE_DUPLICATE);
    assert_int_equal(d.id, r[0].id);
    store_close(s);

    struct store_counts c;
    char err[128];
    assert_int_equal(store_query_counts(fx->path, &c, err, sizeof err), 0);
    assert_int_equal(c.purged, 1);
    assert_int_equal(c.undelivered, 1);
}

/* Schema 3: delivery is recorded per batch as a range of message ids, and
 * retention purges old ranges a chunk at a time, leaving recent ranges,
 * undelivered and quarantined messages alone.  4,600 messages: the old
 * range needs two steps. */
static void test_retention_ranges(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    static struct store_result r[500];
    char ctl[32];
    int64_t first_id = 0;
    for (unsigned k = 0; k < 4600; k += 500) {
        unsigned n = 4600 - k < 500 ? 4600 - k : 500;
        for (unsigned i = 0; i < n; i++) {
            snprintf(ctl, sizeof ctl, "R%u", k + i);
            submit_simple(s, ctl, k + i);
        }
        wait_results(s, r, n);
        if (k == 0)
            first_id = r[0].id;
    }
    int64_t old_to = first_id + 2999, recent_to = first_id + 3999;

    sqlite3 *db = open_db(fx);
    char sql[256];
    int64_t now = clock_wall_ms();
    snprintf(sql, sizeof sql,
             "INSERT INTO deliveries (first_id, last_id, delivered_ms, purged_to) VALUES"
             " (%lld, %lld, %lld, %lld), (%lld, %lld, %lld, %lld)",
             (long long)first_id, (long long)old_to, (long long)(now - 10LL * 86400000),
             (long long)first_id - 1, (long long)old_to + 1, (long long)recent_to,
             (long long)(now - 86400000LL), (long long)old_to);
    db_exec(db, sql);
    /* One quarantined message in the old range is not delivered, so keeps
     * its body. */
    snprintf(sql, sizeof sql, "UPDATE messages SET quarantined = 1 WHERE id = %lld",
             (long long)first_id + 10);
    db_exec(db, sql);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM message_delivery"
                                " WHERE quarantined = 0 AND delivered_ms IS NULL"), 600);

    store_request_housekeeping(s);
    uint64_t deadline = clock_mono_ms() + 20000;
    while (db_int(db, "SELECT COUNT(*) FROM messages WHERE raw IS NULL") < 2999) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(20);
    }
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM messages WHERE raw IS NULL AND id > %lld",
             (long long)old_to);
    assert_int_equal(db_int(db, sql), 0);
    snprintf(sql, sizeof sql, "SELECT raw IS NULL FROM messages WHERE id = %lld",
             (long long)first_id + 10);
    assert_int_equal(db_int(db, sql), 0);
    snprintf(sql, sizeof sql, "SELECT purged_to FROM deliveries WHERE first_id = %lld",
             (long long)first_id);
    assert_int_equal(db_int(db, sql), old_to);
    snprintf(sql, sizeof sql, "SELECT purged_to FROM deliveries WHERE first_id = %lld",
             (long long)old_to + 1);
    assert_int_equal(db_int(db, sql), old_to);
    sqlite3_close(db);
    store_close(s);

    struct store_counts c;
    char err[128];
    assert_int_equal(store_query_counts(fx->path, &c, err, sizeof err), 0);
    assert_int_equal(c.messages, 4600);
    assert_int_equal(c.quarantined, 1);
    assert_int_equal(c.purged, 2999);
    assert_int_equal(c.undelivered, 600);
}

/* The housekeeping cadence follows the shortest retention: a tenth of it,
 * between a second and a minute, so that a one-minute retention (soak runs)
 * is purged during the run and not a minute late. */
static void test_housekeep_interval(void **state)
{
    (void)state;
    struct store_opts o = { .retention_days = 7 };
    assert_int_equal(store_housekeep_interval_ms(&o), 60000);      /* days: once a minute */
    o.use_keep = 1;
    for (int k = 0; k < STORE_KIND_N; k++)
        o.keep_ms[k] = STORE_KEEP_FOREVER;
    assert_int_equal(store_housekeep_interval_ms(&o), 60000);
    o.keep_ms[STORE_KIND_DELIVERED] = 60000;                       /* 1m → every 6 s */
    assert_int_equal(store_housekeep_interval_ms(&o), 6000);
    o.keep_ms[STORE_KIND_RAW] = 30000;                             /* the shortest kind wins */
    assert_int_equal(store_housekeep_interval_ms(&o), 3000);
    o.keep_ms[STORE_KIND_RAW] = 0;                                 /* never more often than 1 s */
    assert_int_equal(store_housekeep_interval_ms(&o), 1000);
    o.keep_ms[STORE_KIND_RAW] = 3600000;
    o.keep_ms[STORE_KIND_DELIVERED] = 3600000;                     /* 1h: still once a minute */
    assert_int_equal(store_housekeep_interval_ms(&o), 60000);
    o.retention_days = 0;                                          /* retention_days caps raw */
    assert_int_equal(store_housekeep_interval_ms(&o), 1000);
}

/* Retention per kind (store.retention): delivered messages and the rows of
 * done blocks past their time are deleted, a chunk per step (3,000 need
 * two steps of each), quarantined messages by their own time; undelivered
 * messages, recent ranges and recent blocks stay.  The report counts what
 * went. */
static void retention_kinds(void **state, uint64_t raw_keep_ms)
{
    struct fixture *fx = *state;
    struct store_opts o = { .path = fx->path, .retention_days = 3650, .use_keep = 1 };
    for (int k = 0; k < STORE_KIND_N; k++)
        o.keep_ms[k] = STORE_KEEP_FOREVER;
    o.keep_ms[STORE_KIND_RAW] = raw_keep_ms;
    o.keep_ms[STORE_KIND_DELIVERED] = o.keep_ms[STORE_KIND_ROWS] = 7LL * 86400000;
    o.keep_ms[STORE_KIND_QUARANTINED] = 30LL * 86400000;
    char err[256];
    struct store *s = store_open(&o, err, sizeof err);
    assert_non_null(s);
    static struct store_result r[500];
    char ctl[32];
    int64_t first_id = 0;
    for (unsigned k = 0; k < 4600; k += 500) {
        unsigned n = 4600 - k < 500 ? 4600 - k : 500;
        for (unsigned i = 0; i < n; i++) {
            snprintf(ctl, sizeof ctl, "K%u", k + i);
            submit_simple(s, ctl, k + i);
        }
        wait_results(s, r, n);
        if (k == 0)
            first_id = r[0].id;
    }
    int64_t old_to = first_id + 4499, recent_to = first_id + 4549;
    int64_t now = clock_wall_ms();
    sqlite3 *db = open_db(fx);
    char sql[512];
    /* One transaction: the first housekeeping step (seconds after open)
     * must see all of it or none. */
    db_exec(db, "BEGIN IMMEDIATE");
    db_exec(db, "INSERT INTO rows (msg_id, seq, data) SELECT id, 0, 'DOE^JANE' FROM messages"
                " ORDER BY id");
    int64_t row0 = db_int(db, "SELECT MIN(id) FROM rows");
    snprintf(sql, sizeof sql,
             "INSERT INTO deliveries (first_id, last_id, delivered_ms, purged_to) VALUES"
             " (%lld, %lld, %lld, %lld), (%lld, %lld, %lld, %lld)",
             (long long)first_id, (long long)old_to, (long long)(now - 10LL * 86400000),
             (long long)first_id - 1, (long long)old_to + 1, (long long)recent_to,
             (long long)(now - 86400000LL), (long long)old_to);
    db_exec(db, sql);
    snprintf(sql, sizeof sql,
             "INSERT INTO batches (state, created_ms, done_ms, first_row_id, last_row_id,"
             " first_msg_id, last_msg_id, msg_from, row_count, bytes) VALUES"
             " ('done', 0, %lld, %lld, %lld, 0, 0, 0, 4500, 0),"
             " ('done', 0, %lld, %lld, %lld, 0, 0, 0, 50, 0)",
             (long long)(now - 10LL * 86400000), (long long)row0, (long long)row0 + 4499,
             (long long)(now - 86400000LL), (long long)row0 + 4500, (long long)row0 + 4549);
    db_exec(db, sql);
    /* Two quarantined messages inside the old range: one received 40 days
     * ago (past its 30), one just now. */
    snprintf(sql, sizeof sql,
             "UPDATE messages SET quarantined = 1, received_ms = %lld WHERE id = %lld;"
             "UPDATE messages SET quarantined = 1, received_ms = %lld WHERE id = %lld",
             (long long)(now - 40LL * 86400000), (long long)first_id + 10, (long long)now,
             (long long)first_id + 20);
    db_exec(db, sql);
    db_exec(db, "COMMIT");

    store_request_housekeeping(s);
    uint64_t deadline = clock_mono_ms() + 20000;
    while (db_int(db, "SELECT COUNT(*) FROM messages") > 101 ||
           db_int(db, "SELECT COUNT(*) FROM rows") > 100) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(20);
    }
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages"), 101);
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM messages WHERE id <= %lld", (long long)old_to);
    assert_int_equal(db_int(db, sql), 1); /* the recent quarantined one */
    snprintf(sql, sizeof sql, "SELECT quarantined FROM messages WHERE id = %lld",
             (long long)first_id + 20);
    assert_int_equal(db_int(db, sql), 1);
    snprintf(sql, sizeof sql, "SELECT MIN(id) FROM rows");
    assert_int_equal(db_int(db, sql), row0 + 4500);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM batches WHERE rows_purged = 1"), 1);
    sqlite3_close(db);

    struct store_stats st;
    deadline = clock_mono_ms() + 20000;
    do {
        store_get_stats(s, &st);
        if (st.retention.purged[STORE_KIND_DELIVERED] == 4498)
            break;
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(20);
    } while (1);
    assert_int_equal(st.retention.purged[STORE_KIND_ROWS], 4500);
    assert_int_equal(st.retention.purged[STORE_KIND_QUARANTINED], 1);
    assert_true(st.retention.checked_ms > 0);
    assert_int_equal(st.retention.keep_ms[STORE_KIND_QUARANTINED], 30LL * 86400000);
    assert_int_equal(st.retention.keep_ms[STORE_KIND_SMS], STORE_KEEP_FOREVER);
    assert_true(st.retention.oldest_ms[STORE_KIND_DELIVERED] > 0);
    /* Bodies of messages deleted whole are never NULLed first. */
    assert_int_equal(st.retention.purged[STORE_KIND_RAW], 0);
    store_close(s);
}

static void test_retention_kinds(void **state)
{
    retention_kinds(state, STORE_KEEP_FOREVER);
}

/* raw kept as long as delivered (the shipped 7d/7d): the bodies go with
 * their messages, in the delete, not in an UPDATE just before it. */
static void test_retention_raw_with_message(void **state)
{
    retention_kinds(state, 7LL * 86400000);
}

struct kept_seen {
    struct store_upload_kept k;
    unsigned n;
};

static void list_one(void *ud, const struct store_upload_kept *k)
{
    struct kept_seen *l = ud;
    l->k = *k;
    l->n++;
}

/* Upload blocks kept for redrive (store/upload.c): a failed block is kept
 * with its content, listed, re-tried (still kept), then delivered by
 * redrive — done in the checkpoint, the kept copy gone, the file done once
 * its last block is; a block delivered by a rerun drops its kept copy; the
 * housekeeping purges kept blocks past store.retention.upload_blocks (and
 * nothing else of the checkpoint), and the offline retention reading sees
 * them until then. */
static void test_upload_kept_blocks(void **state)
{
    struct fixture *fx = *state;
    struct store_opts o = { .path = fx->path, .retention_days = 3650, .use_keep = 1 };
    for (int k = 0; k < STORE_KIND_N; k++)
        o.keep_ms[k] = STORE_KEEP_FOREVER;
    o.keep_ms[STORE_KIND_UPLOAD_BLOCKS] = 86400000;
    char err[256];
    struct store *s = store_open(&o, err, sizeof err);
    assert_non_null(s);
    struct store_upload *u = store_upload_open(fx->path, err, sizeof err);
    assert_non_null(u);
    struct store_upload_file f;
    int64_t now = clock_wall_ms();
    assert_int_equal(store_upload_begin(u, "d1", "f.txt", 100, 30, 10, now, &f), 0);
    assert_int_equal(f.blocks, 3);
    static const char body[] = "H\r\nrow\r\n";
    struct store_upload_keep keep = { (const uint8_t *)body, sizeof body - 1, "blk-2.txt",
                                      10, 12, 21 };
    int64_t kid = -1;
    assert_int_equal(store_upload_block_set(u, f.id, 0, 1, 200, NULL, NULL, now, &kid), 0);
    assert_int_equal(kid, 0);
    assert_int_equal(store_upload_block_set(u, f.id, 1, 0, 400, "HTTP 400: X", &keep, now, &kid),
                     0);
    assert_true(kid > 0);
    int64_t none = -1;
    assert_int_equal(store_upload_block_set(u, f.id, 2, 0, 0, "gone", NULL, now, &none), 0);
    assert_int_equal(none, 0); /* failed, not kept */
    int64_t seen = 0;
    assert_int_equal(store_upload_block_done(u, f.id, 1, &seen), 0);
    assert_int_equal(seen, kid);

    struct kept_seen l = { .n = 0 };
    uint64_t n = 0;
    assert_int_equal(store_upload_kept_list(u, 0, list_one, &l, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(l.k.id, kid);
    assert_int_equal(l.k.seq, 1);
    assert_int_equal(l.k.blocks, 3);
    assert_int_equal(l.k.rows, 10);
    assert_int_equal(l.k.first_line, 12);
    assert_int_equal(l.k.last_line, 21);
    assert_int_equal(l.k.attempts, 1);
    assert_int_equal(l.k.last_status, 400);
    assert_string_equal(l.k.name, "f.txt");
    assert_string_equal(l.k.file_name, "blk-2.txt");
    struct buf c;
    buf_init(&c, 1024);
    assert_int_equal(store_upload_kept_content(u, kid, &c), 1);
    assert_int_equal(c.len, sizeof body - 1);
    assert_memory_equal(buf_data(&c), body, c.len);
    assert_int_equal(store_upload_kept_content(u, kid + 100, &c), 0);

    /* Refused again: still kept, attempts counted. */
    assert_int_equal(store_upload_redriven(u, &l.k, 0, 400, "HTTP 400: X", now), 0);
    assert_int_equal(store_upload_kept_list(u, kid, list_one, &l, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(l.k.attempts, 2);
    /* Block 3 delivered by a rerun, then block 2 by redrive: the file is done. */
    assert_int_equal(store_upload_block_set(u, f.id, 2, 1, 200, NULL, NULL, now, NULL), 0);
    assert_int_equal(store_upload_redriven(u, &l.k, 1, 200, NULL, now), 0);
    assert_int_equal(store_upload_kept_list(u, 0, NULL, NULL, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_upload_block_done(u, f.id, 1, &seen), 1);
    assert_int_equal(seen, 0);
    assert_int_equal(store_upload_begin(u, "d1", "f.txt", 100, 30, 10, now, &f), 0);
    assert_int_equal(f.blocks_done, 3);
    assert_true(f.done_ms > 0);

    /* A kept block delivered by a rerun loses its kept copy. */
    struct store_upload_file g;
    assert_int_equal(store_upload_begin(u, "d2", "g.txt", 100, 20, 10, now, &g), 0);
    assert_int_equal(store_upload_block_set(u, g.id, 0, 0, 400, "e", &keep, now, &kid), 0);
    assert_int_equal(store_upload_block_set(u, g.id, 0, 1, 200, NULL, NULL, now, NULL), 0);
    assert_int_equal(store_upload_kept_list(u, 0, NULL, NULL, &n), 0);
    assert_int_equal(n, 0);

    /* Retention: one kept two days ago (past its day), one just now. */
    assert_int_equal(store_upload_block_set(u, g.id, 1, 0, 400, "e", &keep, now, &kid), 0);
    struct store_upload_file h;
    assert_int_equal(store_upload_begin(u, "d3", "h.txt", 100, 10, 10, now, &h), 0);
    int64_t recent = 0;
    assert_int_equal(store_upload_block_set(u, h.id, 0, 0, 400, "e", &keep, now, &recent), 0);
    sqlite3 *db = open_db(fx);
    char sql[200];
    snprintf(sql, sizeof sql, "UPDATE upload_kept SET kept_ms = %lld WHERE id = %lld",
             (long long)(now - 2 * 86400000LL), (long long)kid);
    db_exec(db, sql);
    struct store_retention_report rr;
    assert_int_equal(store_query_retention(&o, &rr, err, sizeof err), 0);
    assert_int_equal(rr.oldest_ms[STORE_KIND_UPLOAD_BLOCKS], now - 2 * 86400000LL);
    assert_int_equal(rr.keep_ms[STORE_KIND_UPLOAD_BLOCKS], 86400000);
    assert_int_equal(rr.oldest_ms[STORE_KIND_QUARANTINED], 0);
    store_request_housekeeping(s);
    uint64_t deadline = clock_mono_ms() + 20000;
    while (db_int(db, "SELECT COUNT(*) FROM upload_kept") > 1) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(20);
    }
    snprintf(sql, sizeof sql, "SELECT id FROM upload_kept");
    assert_int_equal(db_int(db, sql), recent);
    /* The checkpoint itself stays: the rerun still knows what is missing. */
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM upload_blocks WHERE state = 'failed'"), 2);
    sqlite3_close(db);
    assert_int_equal(store_query_retention(&o, &rr, err, sizeof err), 0);
    assert_int_equal(rr.oldest_ms[STORE_KIND_UPLOAD_BLOCKS], now);
    buf_release(&c);
    store_upload_close(u);
    store_close(s);
}

/* ---- the browser (store/browse.c) ---------------------------------------- */

struct bmsg {
    const char *app, *fac, *ctl;
    int64_t t;
    int quarantined, filtered, rejected;
};

static void submit_b(struct store *s, const struct bmsg *b, uint64_t tag)
{
    const char *raw = "MSH|^~\\&|A|F|HB|HB|20240101120000||ADT^A01|X|P|2.5\rPID|1\r";
    struct store_msg_fields f = {
        .raw = (const uint8_t *)raw, .raw_len = strlen(raw),
        .listener = "main", .peer = "10.0.0.7:40001",
        .send_app = (const uint8_t *)b->app, .send_app_len = strlen(b->app),
        .send_fac = (const uint8_t *)b->fac, .send_fac_len = strlen(b->fac),
        .control_id = (const uint8_t *)b->ctl, .control_id_len = strlen(b->ctl),
        .msg_type = (const uint8_t *)"ADT", .msg_type_len = 3,
        .trigger = (const uint8_t *)(b->filtered ? "A08" : "A01"), .trigger_len = 3,
        .version = (const uint8_t *)"2.5", .version_len = 3,
        .ack_code = b->rejected ? "AE" : "AA", .received_ms = b->t,
        .quarantined = b->quarantined, .filtered = b->filtered, .rejected = b->rejected,
        .reason = b->quarantined || b->filtered || b->rejected ? "why" : NULL,
        .err_code = b->rejected ? 101 : 0, .err_where = b->rejected ? "PID^1^5" : NULL,
        .rows = (const uint8_t *)(b->quarantined || b->filtered || b->rejected ? NULL : "r\n"),
        .rows_len = b->quarantined || b->filtered || b->rejected ? 0 : 2,
        .row_count = b->quarantined || b->filtered || b->rejected ? 0 : 1,
    };
    struct store_msg *m = store_msg_new(&f);
    assert_non_null(m);
    assert_int_equal(store_submit(s, m, tag), 0);
}

struct seen {
    char ids[16][STORE_BROWSE_ID_MAX];
    char ctl[16][256];
    size_t n;
};

static int note(void *ud, const struct store_browse_entry *e)
{
    struct seen *sn = ud;
    if (sn->n < 16) {
        snprintf(sn->ids[sn->n], sizeof sn->ids[0], "%s", e->id);
        snprintf(sn->ctl[sn->n], sizeof sn->ctl[0], "%s:%s", e->control_id, e->status);
        sn->n++;
    }
    return 0;
}

/* Lists control_id:status of a search, newest first, as one string. */
static const char *search(struct store_browser *b, const struct store_browse_filter *f)
{
    static char out[512];
    struct seen sn;
    memset(&sn, 0, sizeof sn);
    char err[256];
    assert_int_equal(store_browser_list(b, f, note, &sn, err, sizeof err), 0);
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sn.n; i++)
        o += (size_t)snprintf(out + o, sizeof out - o, "%s%s", i ? " " : "", sn.ctl[i]);
    return out;
}

/* Every filter of the browser against a known store: senders by first
 * component, control ids through the sender key (several senders, and the
 * rejected table), time bounds by bisection over ids, the statuses, the
 * merge of both tables newest first; one message by id; a journal entry
 * made by reprocess lands after everything and marks its origin. */
static void test_browser_searches(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    const int64_t t0 = 1800000000000;
    static const struct bmsg ms[] = {
        {"APP", "FAC", "C1", t0, 0, 0, 0},
        {"APP", "FAC2", "C2", t0 + 1000, 0, 0, 0},
        {"OTHER^1.2^ISO", "X", "C1", t0 + 2000, 0, 0, 0},
        {"APP", "FAC", "C1", t0 + 2500, 0, 0, 1},  /* rejected, same key as the first */
        {"APP", "FAC", "C3", t0 + 3000, 1, 0, 0},  /* quarantined */
        {"APP", "FAC", "C4", t0 + 4000, 0, 1, 0},  /* filtered */
        {"APP", "FAC", "C1", t0 + 5000, 0, 0, 0},  /* a re-send of the first */
    };
    struct store_result r[8];
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        submit_b(s, &ms[i], i);
    wait_results(s, r, sizeof ms / sizeof ms[0]);
    assert_int_equal(r[6].status, STORE_DUPLICATE);
    assert_int_equal(r[3].status, STORE_STORED);

    char err[256];
    struct store_browser *b = store_browser_open(&(struct store_opts){ .path = fx->path }, 0, err, sizeof err);
    assert_non_null(b);
    struct store_browse_filter f;
    memset(&f, 0, sizeof f);
    assert_string_equal(search(b, &f), "C4:filtered C3:quarantined C1:rejected C1:undelivered "
                                       "C2:undelivered C1:undelivered");
    f.limit = 2;
    assert_string_equal(search(b, &f), "C4:filtered C3:quarantined");
    f.limit = 0;
    f.control_id = "C1";
    assert_string_equal(search(b, &f), "C1:rejected C1:undelivered C1:undelivered");
    f.control_id = "NONE";
    assert_string_equal(search(b, &f), "");
    f.control_id = NULL;
    f.send_app = "OTHER";
    assert_string_equal(search(b, &f), "C1:undelivered");
    f.send_app = "APP";
    f.send_fac = "FAC2";
    assert_string_equal(search(b, &f), "C2:undelivered");
    f.send_fac = NULL;
    f.send_app = "AP"; /* a prefix is not a first component */
    assert_string_equal(search(b, &f), "");
    f.send_app = NULL;
    f.since_ms = t0 + 1500;
    f.until_ms = t0 + 3500;
    assert_string_equal(search(b, &f), "C3:quarantined C1:rejected C1:undelivered");
    f.since_ms = t0 + 1000; /* bounds: since inclusive, until exclusive */
    f.until_ms = t0 + 2000;
    assert_string_equal(search(b, &f), "C2:undelivered");
    f.since_ms = t0 + 9000;
    f.until_ms = 0;
    assert_string_equal(search(b, &f), "");
    f.since_ms = 0;
    f.status = STORE_BROWSE_QUARANTINED;
    assert_string_equal(search(b, &f), "C3:quarantined");
    f.status = STORE_BROWSE_FILTERED;
    assert_string_equal(search(b, &f), "C4:filtered");
    f.status = STORE_BROWSE_REJECTED;
    assert_string_equal(search(b, &f), "C1:rejected");
    f.status = STORE_BROWSE_DUPLICATE;
    assert_string_equal(search(b, &f), "C1:undelivered");
    f.status = STORE_BROWSE_ACCEPTED;
    assert_string_equal(search(b, &f), "");
    f.status = STORE_BROWSE_ANY;

    struct store_browse_entry e;
    struct buf raw;
    buf_init(&raw, 1 << 20);
    char rid[32];
    snprintf(rid, sizeof rid, "R%lld", (long long)r[3].id);
    assert_int_equal(store_browser_get(b, rid, &e, &raw, err, sizeof err), 1);
    assert_string_equal(e.status, "rejected");
    assert_int_equal(e.err_code, 101);
    assert_string_equal(e.err_where, "PID^1^5");
    assert_true(raw.len > 0);
    assert_int_equal(store_browser_get(b, "999999", &e, NULL, err, sizeof err), 0);
    assert_int_equal(store_browser_get(b, "R", &e, NULL, err, sizeof err), 0);
    assert_int_equal(store_browser_get(b, "x1", &e, NULL, err, sizeof err), 0);
    char id0[32];
    snprintf(id0, sizeof id0, "%lld", (long long)r[0].id);
    assert_int_equal(store_browser_get(b, id0, &e, NULL, err, sizeof err), 1);
    assert_int_equal(e.dup_count, 1);
    assert_int_equal(e.rows, 1);
    assert_int_equal(store_browser_accepted_key(b, "APP", "FAC", "C1"), r[0].id);
    assert_int_equal(store_browser_accepted_key(b, "APP", "FAC", "C9"), 0);
    store_browser_close(b);

    /* A journal entry: after every message and row, origin marked. */
    b = store_browser_open(&(struct store_opts){ .path = fx->path }, 1, err, sizeof err);
    assert_non_null(b);
    char qid[32];
    snprintf(qid, sizeof qid, "%lld", (long long)r[4].id);
    struct store_journal_entry je = {
        .made_by = "reprocess", .origin = qid, .listener = "reprocess", .peer = "local",
        .msg_type = "ADT", .trigger = "A01", .reason = "reprocess",
        .rows = (const uint8_t *)"a\r\nb\r\n", .rows_len = 6, .row_count = 2,
        .now_ms = t0 + 6000,
    };
    int64_t nid = store_browser_add(b, &je, err, sizeof err);
    assert_true(nid > r[5].id);
    assert_int_equal(store_browser_get(b, qid, &e, NULL, err, sizeof err), 1);
    assert_string_equal(e.status, "quarantined");
    char nids[32];
    snprintf(nids, sizeof nids, "%lld", (long long)nid);
    assert_string_equal(e.reprocessed, nids);
    f.received_only = 1;
    f.limit = 1;
    assert_string_equal(search(b, &f), "C4:filtered");
    store_browser_close(b);
    sqlite3 *db = open_db(fx);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM rows WHERE msg_id = %lld AND id >"
                              " (SELECT MAX(id) FROM rows WHERE msg_id < %lld)",
             (long long)nid, (long long)nid);
    assert_int_equal(db_int(db, sql), 2);
    sqlite3_close(db);
    buf_release(&raw);
    store_close(s);
}

/* A message answered AE/AR is kept in `rejected` with its reason and ERR,
 * never in `messages`: a corrected re-send with the same key is stored as
 * new (not a duplicate), and re-sending the rejected one is kept again.
 * Re-sends of an accepted message are counted on it.  Rejected messages
 * older than their retention (store.retention.rejected) are purged whole. */
static void test_rejected_kept_apart(void **state)
{
    struct fixture *fx = *state;
    struct store_opts o = { .path = fx->path, .retention_days = 7, .use_keep = 1 };
    for (int k = 0; k < STORE_KIND_N; k++)
        o.keep_ms[k] = STORE_KEEP_FOREVER;
    o.keep_ms[STORE_KIND_REJECTED] = 86400000;
    char err[256];
    struct store *s = store_open(&o, err, sizeof err);
    assert_non_null(s);
    const char *raw = "MSH|^~\\&|APP|FAC|HB|HB|20240101120000||ADT^A01|K1|P|2.5\r";
    struct store_msg_fields f = {
        .raw = (const uint8_t *)raw, .raw_len = strlen(raw),
        .listener = "main", .peer = "10.0.0.7:40001",
        .send_app = (const uint8_t *)"APP", .send_app_len = 3,
        .send_fac = (const uint8_t *)"FAC", .send_fac_len = 3,
        .control_id = (const uint8_t *)"K1", .control_id_len = 2,
        .msg_type = (const uint8_t *)"ADT", .msg_type_len = 3,
        .trigger = (const uint8_t *)"A01", .trigger_len = 3,
        .version = (const uint8_t *)"2.5", .version_len = 3,
        .ack_code = "AE", .received_ms = clock_wall_ms(),
        .rejected = 1, .reason = "mandatory column 'patient_last_name' is empty",
        .err_code = 101, .err_where = "PID^1^5",
    };
    struct store_msg *m = store_msg_new(&f);
    assert_non_null(m);
    assert_int_equal(store_submit(s, m, 1), 0);
    m = store_msg_new(&f); /* the same rejected message again */
    assert_non_null(m);
    assert_int_equal(store_submit(s, m, 2), 0);
    struct store_result r[4];
    wait_results(s, r, 2);
    assert_int_equal(r[0].status, STORE_STORED);
    assert_int_equal(r[1].status, STORE_STORED);
    /* The corrected re-send: stored, then re-sent once more (a duplicate). */
    submit_simple(s, "K1", 3);
    submit_simple(s, "K1", 4);
    wait_results(s, r + 2, 2);
    assert_int_equal(r[2].status, STORE_STORED);
    assert_int_equal(r[3].status, STORE_DUPLICATE);

    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM rejected WHERE control_id = 'K1'"
                                " AND ack_code = 'AE' AND err_code = 101"
                                " AND err_where = 'PID^1^5' AND raw IS NOT NULL"
                                " AND reason LIKE 'mandatory column%'"), 2);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages WHERE control_id = 'K1'"), 1);
    assert_int_equal(db_int(db, "SELECT dup_count FROM messages WHERE control_id = 'K1'"), 1);

    /* Age one of them past the retention: only that one goes. */
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE rejected SET received_ms = %lld WHERE id = %lld",
             (long long)(clock_wall_ms() - 2 * 86400000LL), (long long)r[0].id);
    db_exec(db, sql);
    store_request_housekeeping(s);
    uint64_t deadline = clock_mono_ms() + 10000;
    while (db_int(db, "SELECT COUNT(*) FROM rejected") != 1) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(10);
    }
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM rejected WHERE id = %lld", (long long)r[1].id);
    assert_int_equal(db_int(db, sql), 1);
    sqlite3_close(db);
    store_close(s);
}

/* A store written by schema 2 (per-message delivered_ms, no deliveries
 * table) is upgraded in place at open: its delivered messages stay
 * delivered, retention still purges them, and new deliveries use ranges. */
static void test_upgrade_from_schema_2(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    submit_simple(s, "V2OLD", 1);
    submit_simple(s, "V2NEW", 2);
    submit_simple(s, "V2OPEN", 3);
    struct store_result r[3];
    wait_results(s, r, 3);
    store_close(s);

    /* Turn it back into what schema 2 left on disk. */
    sqlite3 *db = open_db(fx);
    db_exec(db, "DROP INDEX messages_key; ALTER TABLE messages DROP COLUMN digest;"
                " DELETE FROM schema_version WHERE version = 8");
    db_exec(db, "DROP TABLE appt_facts; DELETE FROM schema_version WHERE version = 7");
    db_exec(db, "DROP TABLE row_layouts; ALTER TABLE rows DROP COLUMN layout;"
                " ALTER TABLE batches DROP COLUMN layout;"
                " DELETE FROM schema_version WHERE version = 6");
    db_exec(db, "DROP TABLE rejected;"
                " DROP INDEX messages_origin;"
                " DROP INDEX messages_filtered; DROP INDEX messages_duplicates;"
                " ALTER TABLE messages DROP COLUMN row_count;"
                " ALTER TABLE messages DROP COLUMN filtered;"
                " ALTER TABLE messages DROP COLUMN dup_count;"
                " ALTER TABLE messages DROP COLUMN last_dup_ms;"
                " ALTER TABLE messages DROP COLUMN made_by;"
                " ALTER TABLE messages DROP COLUMN origin;"
                " DELETE FROM schema_version WHERE version = 5");
    db_exec(db, "DROP VIEW message_delivery; DROP TABLE deliveries;"
                " DROP INDEX batches_rows_purge; ALTER TABLE batches DROP COLUMN rows_purged;"
                " DROP INDEX messages_quarantined; DROP INDEX messages_delivered;"
                " DELETE FROM schema_version WHERE version >= 3");
    char sql[256];
    int64_t now = clock_wall_ms();
    snprintf(sql, sizeof sql, "UPDATE messages SET delivered_ms = %lld WHERE control_id = 'V2OLD'",
             (long long)(now - 30LL * 86400000));
    db_exec(db, sql);
    snprintf(sql, sizeof sql, "UPDATE messages SET delivered_ms = %lld WHERE control_id = 'V2NEW'",
             (long long)(now - 86400000LL));
    db_exec(db, sql);
    sqlite3_close(db);

    s = open_store(fx, 0, 0, 7);
    store_request_housekeeping(s);
    db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT MAX(version) FROM schema_version"), 8);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM message_delivery"
                                " WHERE delivered_ms IS NOT NULL"), 2);
    uint64_t deadline = clock_mono_ms() + 10000;
    while (db_int(db, "SELECT raw IS NULL FROM messages WHERE control_id = 'V2OLD'") == 0) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(10);
    }
    assert_int_equal(db_int(db, "SELECT raw IS NULL FROM messages WHERE control_id = 'V2NEW'"), 0);
    /* A batch done after the upgrade records a range. */
    snprintf(sql, sizeof sql,
             "INSERT INTO deliveries (first_id, last_id, delivered_ms, purged_to)"
             " VALUES (%lld, %lld, %lld, %lld)",
             (long long)r[2].id, (long long)r[2].id, (long long)now, (long long)r[2].id - 1);
    db_exec(db, sql);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM message_delivery"
                                " WHERE delivered_ms IS NULL"), 0);
    sqlite3_close(db);
    store_close(s);
}

/* A store written by schema 7 (UNIQUE on the key, no digest) is rebuilt in
 * place at open: the same ids (rows and deliveries still point right), the
 * indexes back, and its messages matched by key alone, as they were then. */
static void test_upgrade_from_schema_7(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec old = { .app = "APP", .fac = "FAC", .ctl = "U4A", .rows = "r1\n",
                            .row_count = 1, .digest = 5 };
    submit(s, &old, 1);
    submit_simple(s, "U4B", 2);
    struct store_result r[2];
    wait_results(s, r, 2);
    store_close(s);

    /* Turn messages back into what schema 6 left on disk. */
    sqlite3 *db = open_db(fx);
    db_exec(db,
            "DROP VIEW message_delivery; DROP INDEX messages_key;"
            "CREATE TABLE m4 (id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL,"
            " listener TEXT NOT NULL, peer TEXT NOT NULL, send_app TEXT NOT NULL,"
            " send_fac TEXT NOT NULL, control_id TEXT, msg_type TEXT NOT NULL,"
            " \"trigger\" TEXT NOT NULL, version TEXT NOT NULL, ack_code TEXT NOT NULL, raw BLOB,"
            " quarantined INTEGER NOT NULL DEFAULT 0, reason TEXT, delivered_ms INTEGER,"
            " row_count INTEGER, filtered INTEGER NOT NULL DEFAULT 0,"
            " dup_count INTEGER NOT NULL DEFAULT 0, last_dup_ms INTEGER, made_by TEXT,"
            " origin TEXT, UNIQUE (send_app, send_fac, control_id));"
            "INSERT INTO m4 SELECT id, received_ms, listener, peer, send_app, send_fac, control_id,"
            " msg_type, \"trigger\", version, ack_code, raw, quarantined, reason, delivered_ms,"
            " row_count, filtered, dup_count, last_dup_ms, made_by, origin FROM messages;"
            "DROP TABLE messages; ALTER TABLE m4 RENAME TO messages;"
            "CREATE INDEX messages_retention ON messages(delivered_ms)"
            " WHERE delivered_ms IS NOT NULL AND raw IS NOT NULL;"
            "CREATE INDEX messages_quarantined ON messages(received_ms) WHERE quarantined = 1;"
            "CREATE INDEX messages_delivered ON messages(delivered_ms)"
            " WHERE delivered_ms IS NOT NULL;"
            "CREATE INDEX messages_filtered ON messages(received_ms) WHERE filtered = 1;"
            "CREATE INDEX messages_duplicates ON messages(received_ms) WHERE dup_count > 0;"
            "CREATE INDEX messages_origin ON messages(origin) WHERE origin IS NOT NULL;"
            "CREATE VIEW message_delivery AS SELECT id, quarantined, delivered_ms FROM messages;"
            "DELETE FROM schema_version WHERE version = 8");
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM pragma_table_info('messages')"
                                " WHERE name = 'digest'"), 0);
    sqlite3_close(db);

    s = open_store(fx, 0, 0, 7);
    db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT MAX(version) FROM schema_version"), 8);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND"
                                " name IN ('messages_key', 'messages_retention',"
                                " 'messages_quarantined', 'messages_delivered', 'messages_filtered',"
                                " 'messages_duplicates', 'messages_origin')"), 7);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT id FROM messages WHERE control_id = 'U4A'");
    assert_int_equal(db_int(db, sql), r[0].id);
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM rows WHERE msg_id = %lld", (long long)r[0].id);
    assert_int_equal(db_int(db, sql), 1);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM message_delivery"), 2);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages WHERE digest IS NULL"), 2);

    /* Stored before digests: a re-send is still recognised by its key. */
    struct msg_spec again = old;
    again.digest = 77;
    submit(s, &again, 3);
    struct store_result r3 = one_result(s);
    assert_int_equal(r3.status, STORE_DUPLICATE);
    assert_int_equal(r3.id, r[0].id);
    /* New messages follow the new rule. */
    struct msg_spec c1 = { .app = "APP", .fac = "FAC", .ctl = "U4C", .digest = 1 };
    struct msg_spec c2 = c1;
    c2.digest = 2;
    submit(s, &c1, 4);
    submit(s, &c2, 5);
    struct store_result rc[2];
    wait_results(s, rc, 2);
    assert_int_equal(rc[0].status, STORE_STORED);
    assert_int_equal(rc[1].status, STORE_STORED);
    assert_int_equal(rc[1].key_reused, 1);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM messages"), 4);
    sqlite3_close(db);
    store_close(s);
}

static void test_close_drains(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    char ctl[32];
    for (unsigned i = 0; i < 300; i++) {
        snprintf(ctl, sizeof ctl, "DR%u", i);
        submit_simple(s, ctl, i);
    }
    /* Close straight away: every queued message is still written. */
    store_close(s);
    struct store_counts c;
    char err[128];
    assert_int_equal(store_query_counts(fx->path, &c, err, sizeof err), 0);
    assert_int_equal(c.messages, 300);

    /* The drain a daemon does before close: take until nothing is pending. */
    s = open_store(fx, 0, 0, 7);
    for (unsigned i = 0; i < 50; i++) {
        snprintf(ctl, sizeof ctl, "DR2-%u", i);
        submit_simple(s, ctl, i);
    }
    struct store_result r[50];
    size_t got = 0;
    while (store_pending(s) > 0 || got < 50) {
        struct pollfd pfd = { .fd = store_event_fd(s), .events = POLLIN };
        assert_true(poll(&pfd, 1, 5000) > 0);
        got += store_take_results(s, r + got, 50 - got);
    }
    assert_int_equal(got, 50);
    assert_int_equal(store_pending(s), 0);
    store_close(s);
}

static void test_eventfd_and_partial_take(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    sqlite3 *db = open_db(fx);
    db_exec(db, "BEGIN EXCLUSIVE");
    for (unsigned i = 0; i < 5; i++) {
        char ctl[16];
        snprintf(ctl, sizeof ctl, "E%u", i);
        submit_simple(s, ctl, i);
    }
    struct pollfd pfd = { .fd = store_event_fd(s), .events = POLLIN };
    assert_int_equal(poll(&pfd, 1, 50), 0);  /* nothing before the commit */
    db_exec(db, "COMMIT");
    sqlite3_close(db);
    /* Wait for all five to be published. */
    uint64_t deadline = clock_mono_ms() + 10000;
    while (store_pending(s) > 0) {
        assert_true(clock_mono_ms() < deadline);
        sleep_ms(5);
    }
    assert_int_equal(poll(&pfd, 1, 1000), 1);
    struct store_result r[5];
    /* A small `out` leaves the eventfd readable for the rest. */
    assert_int_equal(store_take_results(s, r, 2), 2);
    assert_int_equal(poll(&pfd, 1, 0), 1);
    assert_int_equal(store_take_results(s, r + 2, 5), 3);
    assert_int_equal(poll(&pfd, 1, 0), 0);
    assert_int_equal(store_take_results(s, r, 5), 0);
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(r[i].tag, i);
    store_close(s);
}

static void test_msg_new_validation(void **state)
{
    (void)state;
    struct store_msg_fields f = { .ack_code = "AA" };
    struct store_msg *m = store_msg_new(&f);   /* everything empty is allowed */
    assert_non_null(m);
    store_msg_free(m);
    assert_null(store_msg_new(NULL));
    f.ack_code = NULL;
    assert_null(store_msg_new(&f));
    f.ack_code = "A";
    assert_null(store_msg_new(&f));
    f.ack_code = "AAA";
    assert_null(store_msg_new(&f));
    f.ack_code = "AA";
    f.raw_len = 10;                              /* length without bytes */
    assert_null(store_msg_new(&f));
    store_msg_free(NULL);
    store_close(NULL);
}

static void test_rows_blank_lines_and_no_trailing_newline(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct msg_spec sp = { .app = "APP", .fac = "FAC", .ctl = "R1",
                           .rows = "one\n\ntwo\nthree", .row_count = 3 };
    submit(s, &sp, 1);
    struct store_result r = one_result(s);
    assert_int_equal(r.status, STORE_STORED);
    store_close(s);
    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM rows"), 3);
    assert_int_equal(db_int(db, "SELECT seq FROM rows WHERE data = CAST('three' AS BLOB)"), 2);
    sqlite3_close(db);
}

/* Appointment facts go into appt_facts in the message's transaction:
 * for a quarantined message too, once for a duplicate, with empty texts
 * and unknown times as NULL. */
static void test_appt_facts(void **state)
{
    struct fixture *fx = *state;
    struct store *s = open_store(fx, 0, 0, 7);
    struct store_appt_facts af = {
        .text = { [STORE_APPT_ID] = "A77", [STORE_APPT_FACILITY] = "NORTH",
                  [STORE_APPT_EVENT] = "S12", [STORE_APPT_FIRST_NAME] = "Ana",
                  [STORE_APPT_PHONE] = "8475550122", [STORE_APPT_LANGUAGE] = "es",
                  [STORE_APPT_LINK] = "https://v.test/j/A77" },
        .event_time = 1700000000, .start_s = 1800000000, .duration_min = -1,
    };
    struct msg_spec a = { .app = "APP", .fac = "FAC", .ctl = "F1", .appt = &af };
    struct msg_spec q = { .app = "APP", .fac = "FAC", .ctl = "F2", .appt = &af,
                          .quarantined = 1, .reason = "mandatory column empty" };
    struct msg_spec none = { .app = "APP", .fac = "FAC", .ctl = "F3" };
    submit(s, &a, 1);
    submit(s, &q, 2);
    submit(s, &a, 3); /* a duplicate: no second fact */
    submit(s, &none, 4);
    struct store_result r[4];
    wait_results(s, r, 4);
    assert_int_equal(r[0].status, STORE_STORED);
    assert_int_equal(r[1].status, STORE_STORED);
    assert_int_equal(r[2].status, STORE_DUPLICATE);
    assert_int_equal(r[3].status, STORE_STORED);
    store_close(s);
    sqlite3 *db = open_db(fx);
    assert_int_equal(db_int(db, "SELECT COUNT(*) FROM appt_facts"), 2);
    char sql[640];
    snprintf(sql, sizeof sql,
             "SELECT COUNT(*) FROM appt_facts WHERE msg_id IN (%lld, %lld) AND appt_id = 'A77'"
             " AND facility = 'NORTH' AND event = 'S12' AND first_name = 'Ana'"
             " AND phone = '8475550122' AND language = 'es' AND link = 'https://v.test/j/A77'"
             " AND event_time = 1700000000 AND start_s = 1800000000 AND duration_min IS NULL"
             " AND location IS NULL AND consent IS NULL AND received_ms = 1700000000123",
             (long long)r[0].id, (long long)r[1].id);
    assert_int_equal(db_int(db, sql), 2);
    sqlite3_close(db);
}

int main(void)
{
    log_set_level(LOG_WARN); /* keep the TAP output readable */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_new_validation),
        cmocka_unit_test_setup_teardown(test_store_and_read_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_within_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_back_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_low_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_failure_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wal_checkpointed_and_restarted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quarantine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_appt_facts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        cmocka_unit_test(test_housekeep_interval),
        cmocka_unit_test_setup_teardown(test_retention_kinds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_raw_with_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_kept_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_from_schema_2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_from_schema_7, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reused_control_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejected_kept_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_browser_searches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eventfd_and_partial_take, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_blank_lines_and_no_trailing_newline, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
