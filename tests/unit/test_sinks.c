/* Unit tests for sinks/ and the batch half of store/: batch sealing by rows,
 * bytes and age; state transitions that survive a reopen; delivered marks
 * for messages whose rows span blocks; the file sink's output byte for byte
 * in tsv, csv and psv; and the pure wire helpers (multipart framing, token
 * answers, Retry-After, backoff bounds, cloud URLs, the token form).
 *
 * Each store test opens a fresh store in a temporary directory and submits
 * messages with pre-formatted rows through the public store API, exactly as
 * the ingest pipeline does. */
#include "sinks/sinks.h"
#include "store/store.h"
#include "core/clock.h"
#include "core/log.h"

#include <dirent.h>
#include <poll.h>
#include <setjmp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/unit/tmpdir.h"

struct fixture {
    char dir[64];
    char path[160];
    struct store *st;
    unsigned next_ctl;
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    if (tmpdir_make(fx->dir, sizeof fx->dir, "sinks") != 0) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof fx->path, "%s/store.db", fx->dir);
    struct store_opts o = { .path = fx->path, .retention_days = 7 };
    char err[256];
    fx->st = store_open(&o, err, sizeof err);
    if (!fx->st) {
        fprintf(stderr, "store_open: %s\n", err);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    store_close(fx->st);
    tmpdir_remove(fx->dir);
    free(fx);
    return 0;
}

/* Stores one message carrying `rows` (formatted text, one row per line) and
 * waits until it is committed; returns its message id. */
static int64_t put_layout(struct fixture *fx, const char *rows, unsigned row_count,
                         int64_t layout);
static int64_t put(struct fixture *fx, const char *rows, unsigned row_count)
{
    return put_layout(fx, rows, row_count, 0);
}

/* The same, the rows labelled with row layout `layout` (0: none). */
static int64_t put_layout(struct fixture *fx, const char *rows, unsigned row_count,
                         int64_t layout)
{
    char ctl[32];
    snprintf(ctl, sizeof ctl, "C%u", ++fx->next_ctl);
    static const char raw[] = "MSH|^~\\&|APP|FAC|HB|HB|20240101120000||ADT^A01|X|P|2.5\r";
    struct store_msg_fields f = {
        .raw = (const uint8_t *)raw, .raw_len = sizeof raw - 1,
        .listener = "t", .peer = "127.0.0.1:1",
        .send_app = (const uint8_t *)"APP", .send_app_len = 3,
        .send_fac = (const uint8_t *)"FAC", .send_fac_len = 3,
        .control_id = (const uint8_t *)ctl, .control_id_len = strlen(ctl),
        .msg_type = (const uint8_t *)"ADT", .msg_type_len = 3,
        .trigger = (const uint8_t *)"A01", .trigger_len = 3,
        .version = (const uint8_t *)"2.5", .version_len = 3,
        .ack_code = "AA", .received_ms = clock_wall_ms(),
        .rows = (const uint8_t *)rows, .rows_len = rows ? strlen(rows) : 0,
        .row_count = row_count, .layout = layout,
    };
    struct store_msg *m = store_msg_new(&f);
    assert_non_null(m);
    assert_int_equal(store_submit(fx->st, m, fx->next_ctl), 0);
    struct store_result r;
    for (int i = 0; i < 5000; i++) {
        struct pollfd p = { .fd = store_event_fd(fx->st), .events = POLLIN };
        poll(&p, 1, 10);
        if (store_take_results(fx->st, &r, 1) == 1) {
            assert_int_equal(r.status, STORE_STORED);
            return r.id;
        }
    }
    fail_msg("no store result");
    return 0;
}

static struct store_batches *open_sb(const struct fixture *fx)
{
    char err[256];
    const struct store_opts so = {.path = fx->path};
    struct store_batches *sb = store_batches_open(&so, err, sizeof err);
    if (!sb)
        fprintf(stderr, "store_batches_open: %s\n", err);
    assert_non_null(sb);
    return sb;
}

static int64_t q_int(const struct fixture *fx, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(fx->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void scan(struct store_batches *sb, uint64_t rows, uint64_t bytes, uint64_t age_ms,
                 int64_t now, struct store_batch_scan *out)
{
    struct store_batch_limits l = { .max_rows = rows, .max_bytes = bytes, .max_age_ms = age_ms };
    assert_int_equal(store_batches_scan(sb, &l, now, out), 0);
}

/* ---- batching ------------------------------------------------------------- */

static void test_seal_by_rows(void **state)
{
    struct fixture *fx = *state;
    for (int i = 0; i < 7; i++)
        put(fx, "a\tb\n", 1);
    struct store_batches *sb = open_sb(fx);
    struct store_batch_scan sc;
    scan(sb, 3, 1 << 20, 60000, 1000, &sc);
    assert_int_equal(sc.rows_added, 7);
    assert_int_equal(sc.sealed, 2);
    assert_true(sc.caught_up);
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM batches WHERE state = 'sealed'"), 2);
    assert_int_equal(q_int(fx, "SELECT row_count FROM batches WHERE state = 'open'"), 1);
    assert_int_equal(q_int(fx, "SELECT MAX(row_count) FROM batches"), 3);
    struct store_batch_counts c;
    assert_int_equal(store_batches_counts(sb, 1, &c), 0);
    assert_int_equal(c.rows_in_batches, 7);
    assert_int_equal(c.rows_unbatched, 0);
    put(fx, "c\td\n", 1);
    assert_int_equal(store_batches_counts(sb, 0, &c), 0);
    assert_int_equal(c.rows_unbatched, 1);
    store_batches_close(sb);
}

/* A batch that reached max_rows is sealed as soon as the scan has caught
 * up, not when one more row (or max_age) comes: on a quiet feed that row
 * may be minutes away. */
static void test_full_batch_sealed_when_caught_up(void **state)
{
    struct fixture *fx = *state;
    for (int i = 0; i < 6; i++)
        put(fx, "a\tb\n", 1);
    struct store_batches *sb = open_sb(fx);
    struct store_batch_scan sc;
    scan(sb, 3, 1 << 20, 600000, 1000, &sc);
    assert_true(sc.caught_up);
    assert_int_equal(sc.sealed, 2);
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM batches WHERE state = 'open'"), 0);
    assert_int_equal(q_int(fx, "SELECT MIN(row_count) FROM batches"), 3);
    assert_int_equal(q_int(fx, "SELECT SUM(ends_mid) FROM batches"), 0);
    /* Rows of one message straddling the limit: the first block ends mid
     * message, the rest (under the limit) stays open. */
    put(fx, "m1\nm2\nm3\nm4\n", 4);
    scan(sb, 3, 1 << 20, 600000, 2000, &sc);
    assert_int_equal(sc.sealed, 1);
    assert_int_equal(q_int(fx, "SELECT ends_mid FROM batches ORDER BY id DESC LIMIT 1 OFFSET 1"),
                     1);
    assert_int_equal(q_int(fx, "SELECT row_count FROM batches WHERE state = 'open'"), 1);
    store_batches_close(sb);
}

static void test_seal_by_bytes(void **state)
{
    struct fixture *fx = *state;
    /* Each row is 9 bytes with its LF: 3 fit in 30, the fourth does not. */
    for (int i = 0; i < 5; i++)
        put(fx, "12345678\n", 1);
    struct store_batches *sb = open_sb(fx);
    struct store_batch_scan sc;
    scan(sb, 1000, 30, 60000, 1000, &sc);
    assert_int_equal(sc.sealed, 1);
    assert_int_equal(q_int(fx, "SELECT bytes FROM batches WHERE state = 'sealed'"), 27);
    assert_int_equal(q_int(fx, "SELECT row_count FROM batches WHERE state = 'open'"), 2);
    store_batches_close(sb);
}

static void test_seal_by_age_and_resume_open(void **state)
{
    struct fixture *fx = *state;
    put(fx, "x\n", 1);
    struct store_batches *sb = open_sb(fx);
    struct store_batch_scan sc;
    scan(sb, 100, 1 << 20, 5000, 10000, &sc);
    assert_int_equal(sc.sealed, 0);
    assert_int_equal(q_int(fx, "SELECT created_ms FROM batches WHERE state = 'open'"), 10000);
    store_batches_close(sb);
    /* The open batch survives a reopen and keeps its age. */
    put(fx, "y\n", 1);
    sb = open_sb(fx);
    scan(sb, 100, 1 << 20, 5000, 14999, &sc);
    assert_int_equal(sc.sealed, 0);
    assert_int_equal(q_int(fx, "SELECT row_count FROM batches WHERE state = 'open'"), 2);
    scan(sb, 100, 1 << 20, 5000, 15000, &sc);
    assert_int_equal(sc.sealed, 1);
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM batches"), 1);
    assert_int_equal(q_int(fx, "SELECT row_count FROM batches WHERE state = 'sealed'"), 2);
    store_batches_close(sb);
}

static void test_states_persist_across_reopen(void **state)
{
    struct fixture *fx = *state;
    for (int i = 0; i < 4; i++)
        put(fx, "r\n", 1);
    struct store_batches *sb = open_sb(fx);
    struct store_batch_scan sc;
    scan(sb, 2, 1 << 20, 0, 1000, &sc); /* age 0: the tail is sealed once caught up */
    assert_int_equal(sc.sealed, 2);
    struct store_batch b1, b2;
    assert_int_equal(store_batches_claim(sb, 2000, &b1), 1);
    assert_int_equal(b1.state, STORE_BATCH_UPLOADING);
    assert_int_equal(b1.attempts, 1);
    assert_int_equal(store_batches_claim(sb, 2000, &b2), 1);
    assert_true(b2.id > b1.id);
    struct store_batch none;
    assert_int_equal(store_batches_claim(sb, 2000, &none), 0);
    /* A crash here: both uploading. */
    store_batches_close(sb);

    sb = open_sb(fx);
    uint64_t resent = 0;
    assert_int_equal(store_batches_recover(sb, &resent), 0);
    assert_int_equal(resent, 2);
    assert_int_equal(q_int(fx, "SELECT SUM(resends) FROM batches"), 2);
    assert_int_equal(store_batches_claim(sb, 3000, &b1), 1);
    assert_int_equal(b1.attempts, 2);
    assert_int_equal(b1.resends, 1);
    struct buf rows;
    buf_init(&rows, 1024);
    uint64_t n = 0;
    assert_int_equal(store_batches_read_rows(sb, &b1, &rows, &n), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(buf_data(&rows), "r\nr\n", 4);
    buf_release(&rows);
    uint64_t marked = 0;
    assert_int_equal(store_batches_done(sb, b1.id, 200, "ok", "f.txt", 5000, &marked), 0);
    assert_int_equal(marked, 2);
    /* The second one: retried, then failed by a 400. */
    assert_int_equal(store_batches_claim(sb, 3000, &b2), 1);
    assert_int_equal(store_batches_retry(sb, b2.id, 503, "HTTP 503", 9000), 0);
    assert_int_equal(store_batches_claim(sb, 8999, &none), 0); /* not before next_ms */
    assert_int_equal(store_batches_claim(sb, 9000, &b2), 1);
    assert_int_equal(store_batches_fail(sb, b2.id, 400, "HTTP 400: bad job"), 0);
    store_batches_close(sb);

    sb = open_sb(fx);
    assert_int_equal(store_batches_recover(sb, &resent), 0);
    assert_int_equal(resent, 0);
    struct store_batch g;
    assert_int_equal(store_batches_get(sb, b1.id, &g), 1);
    assert_int_equal(g.state, STORE_BATCH_DONE);
    assert_string_equal(g.file_name, "f.txt");
    assert_int_equal(store_batches_get(sb, b2.id, &g), 1);
    assert_int_equal(g.state, STORE_BATCH_FAILED);
    assert_int_equal(g.last_status, 400);
    assert_string_equal(g.last_error, "HTTP 400: bad job");
    assert_int_equal(g.attempts, 3);
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM message_delivery WHERE delivered_ms IS NULL"), 2);
    struct store_batch_counts c;
    assert_int_equal(store_batches_counts(sb, 1, &c), 0);
    assert_int_equal(c.batches[STORE_BATCH_FAILED], 1);
    assert_int_equal(c.batches[STORE_BATCH_DONE], 1);
    assert_int_equal(c.rows_in_batches, 2); /* the failed block is still pending */

    char err[256];
    uint64_t nre = 0;
    assert_int_equal(store_batches_redrive(&(struct store_opts){ .path = fx->path }, 0, NULL, NULL, &nre, err, sizeof err), 0);
    assert_int_equal(nre, 1);
    assert_int_equal(store_batches_claim(sb, 9000, &b2), 1);
    assert_int_equal(b2.redrives, 1);
    assert_int_equal(store_batches_done(sb, b2.id, 201, NULL, NULL, 9500, &marked), 0);
    assert_int_equal(marked, 2);
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM message_delivery WHERE delivered_ms IS NULL"), 0);
    assert_int_equal(store_batches_redrive(&(struct store_opts){ .path = fx->path }, b2.id, NULL, NULL, &nre, err, sizeof err), 0);
    assert_int_equal(nre, 0);
    store_batches_close(sb);
}

/* A message whose rows span three blocks is delivered only when all three
 * are, in whatever order they finish; messages without rows between blocks
 * are delivered with the next block. */
static void test_message_spanning_blocks(void **state)
{
    struct fixture *fx = *state;
    int64_t m1 = put(fx, "a\n", 1);
    int64_t m2 = put(fx, NULL, 0); /* no rows */
    int64_t m3 = put(fx, "b1\nb2\nb3\nb4\nb5\n", 5);
    int64_t m4 = put(fx, "c\n", 1);
    struct store_batches *sb = open_sb(fx);
    struct store_batch_scan sc;
    scan(sb, 2, 1 << 20, 0, 1000, &sc); /* age 0: the tail is sealed too */
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM batches WHERE state = 'sealed'"), 4);
    /* blocks: [a b1] [b2 b3] [b4 b5] [c] */
    struct store_batch b[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(store_batches_claim(sb, 2000, &b[i]), 1);
    char sql[128];
    uint64_t marked;
    assert_int_equal(store_batches_done(sb, b[1].id, 200, NULL, NULL, 3000, &marked), 0);
    assert_int_equal(marked, 0);
    assert_int_equal(store_batches_done(sb, b[3].id, 200, NULL, NULL, 3000, &marked), 0);
    assert_int_equal(marked, 1); /* m4 */
    snprintf(sql, sizeof sql, "SELECT delivered_ms IS NULL FROM message_delivery WHERE id = %lld",
             (long long)m4);
    assert_int_equal(q_int(fx, sql), 0);
    assert_int_equal(store_batches_done(sb, b[0].id, 200, NULL, NULL, 3000, &marked), 0);
    assert_int_equal(marked, 2); /* m1, m2 (m3 still has rows in block 3) */
    snprintf(sql, sizeof sql, "SELECT delivered_ms IS NULL FROM message_delivery WHERE id = %lld",
             (long long)m3);
    assert_int_equal(q_int(fx, sql), 1);
    assert_int_equal(store_batches_done(sb, b[2].id, 200, NULL, NULL, 3000, &marked), 0);
    assert_int_equal(marked, 1); /* m3 */
    assert_int_equal(q_int(fx, "SELECT COUNT(*) FROM message_delivery WHERE delivered_ms IS NULL"), 0);
    (void)m1;
    (void)m2;
    store_batches_close(sb);
}

/* ---- the file sink, byte for byte ----------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *p = malloc(1 << 16);
    *len = fread(p, 1, 1 << 16, f);
    fclose(f);
    return p;
}

static void run_file_sink(struct fixture *fx, const char *header, const char *ext,
                          const char *const *msgs, size_t n_msgs, uint64_t max_rows,
                          const char *const *want, size_t n_want)
{
    for (size_t i = 0; i < n_msgs; i++) {
        unsigned rows = 0;
        for (const char *p = msgs[i]; *p; p++)
            rows += *p == '\n';
        put(fx, msgs[i], rows);
    }
    char dir[200];
    snprintf(dir, sizeof dir, "%s/out/audit", fx->dir);
    struct sink_audit_opts o = {
        .kind = SINK_AUDIT_FILE, .store = {.path = fx->path}, .header = header, .file_ext = ext,
        .max_rows = max_rows, .max_age_s = 1, .directory = dir, .tick_ms = 10,
    };
    char err[256];
    struct sink_audit *s = sink_audit_start(&o, err, sizeof err);
    if (!s)
        fprintf(stderr, "sink_audit_start: %s\n", err);
    assert_non_null(s);
    struct sink_audit_stats stt;
    for (int i = 0; i < 500; i++) {
        sink_audit_get_stats(s, &stt);
        if (stt.blocks_delivered == n_want && stt.rows_pending == 0)
            break;
        usleep(10000);
    }
    sink_audit_get_stats(s, &stt);
    assert_int_equal(stt.blocks_delivered, n_want);
    assert_int_equal(stt.rows_pending, 0);
    assert_string_equal(stt.last_error, "");
    sink_audit_stop(s);

    struct stat sd;
    assert_int_equal(stat(dir, &sd), 0);
    assert_int_equal(sd.st_mode & 0777, 0700);
    for (size_t i = 0; i < n_want; i++) {
        char path[300];
        snprintf(path, sizeof path, "%s/hl7bridge-audit-%010zu.%s", dir, i + 1, ext);
        size_t len = 0;
        char *got = slurp(path, &len);
        assert_non_null(got);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(got, want[i], len);
        free(got);
        struct stat sf;
        assert_int_equal(stat(path, &sf), 0);
        assert_int_equal(sf.st_mode & 0777, 0600);
    }
    DIR *d = opendir(dir);
    size_t files = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        files += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(files, n_want); /* no temporary left behind */
}

static void test_file_sink_tsv(void **state)
{
    static const char *const msgs[] = { "1\ta b\r\n", "2\tc\r\n3\td\r\n", "4\t\r\n" };
    static const char *const want[] = {
        "Id\tName\r\n1\ta b\r\n2\tc\r\n3\td\r\n",
        "Id\tName\r\n4\t\r\n",
    };
    run_file_sink(*state, "Id\tName\r\n", "txt", msgs, 3, 3, want, 2);
}

static void test_file_sink_csv_quoted_line_breaks(void **state)
{
    /* A quoted value holding CRLF is stored as two pieces (the store splits
     * at LF); the block must still carry it exactly as formatted. */
    static const char *const msgs[] = {
        "1,\"multi\r\nline\",\"say \"\"hi\"\"\"\r\n",
        "2,\"a,b\",plain\r\n",
    };
    static const char *const want[] = {
        "Id,Note,Quote\r\n1,\"multi\r\nline\",\"say \"\"hi\"\"\"\r\n2,\"a,b\",plain\r\n",
    };
    run_file_sink(*state, "Id,Note,Quote\r\n", "csv", msgs, 2, 100, want, 1);
}

static void test_file_sink_psv_lf(void **state)
{
    static const char *const msgs[] = { "1|x\n", "2|y\n" };
    static const char *const want[] = { "Id|V\n1|x\n", "Id|V\n2|y\n" };
    run_file_sink(*state, "Id|V\n", "txt", msgs, 2, 1, want, 2);
}

/* Rows are stored formatted, so each carries the layout (header line, file
 * extension) it was made for; a schema or format change (SIGHUP, restart)
 * in the middle of a backlog must not put rows under another header.  The
 * batcher ends the open block where the layout changes, and each block is
 * written under its own layout's header; rows stored before layouts were
 * recorded keep the sink's header. */
static void test_file_sink_block_per_layout(void **state)
{
    struct fixture *fx = *state;
    char err[256];
    int64_t hc = 0, ep = 0, again = 0;
    assert_int_equal(store_layout_register(&(struct store_opts){ .path = fx->path }, "A\tB\n", "txt", &hc, err, sizeof err), 0);
    assert_int_equal(store_layout_register(&(struct store_opts){ .path = fx->path }, "X,Y,Z\r\n", "csv", &ep, err, sizeof err), 0);
    assert_int_equal(store_layout_register(&(struct store_opts){ .path = fx->path }, "A\tB\n", "txt", &again, err, sizeof err), 0);
    assert_true(hc > 0 && ep > 0 && hc != ep);
    assert_int_equal(again, hc); /* one id per layout */
    put_layout(fx, NULL, 0, 0);
    put(fx, "o1\to2\n", 1);              /* before layouts: the sink's header */
    put_layout(fx, "1\ta\n2\tb\n", 2, hc);
    put_layout(fx, "3\tc\n", 1, hc);
    put_layout(fx, "4,d,e\r\n", 1, ep);   /* SIGHUP to another schema and format */
    put_layout(fx, "5,f,g\r\n", 1, ep);
    put_layout(fx, "6\th\n", 1, hc);      /* and back */
    char dir[200];
    snprintf(dir, sizeof dir, "%s/out/audit", fx->dir);
    struct sink_audit_opts o = {
        .kind = SINK_AUDIT_FILE, .store = {.path = fx->path}, .header = "OLD\n", .file_ext = "txt",
        .max_rows = 100, .max_age_s = 1, .directory = dir, .tick_ms = 10,
    };
    struct sink_audit *s = sink_audit_start(&o, err, sizeof err);
    assert_non_null(s);
    struct sink_audit_stats stt;
    for (int i = 0; i < 500; i++) {
        sink_audit_get_stats(s, &stt);
        if (stt.blocks_delivered == 4 && stt.rows_pending == 0)
            break;
        usleep(10000);
    }
    sink_audit_get_stats(s, &stt);
    sink_audit_stop(s);
    assert_int_equal(stt.blocks_delivered, 4);
    static const struct { const char *name, *want; } files[] = {
        {"hl7bridge-audit-0000000001.txt", "OLD\no1\to2\n"},
        {"hl7bridge-audit-0000000002.txt", "A\tB\n1\ta\n2\tb\n3\tc\n"},
        {"hl7bridge-audit-0000000003.csv", "X,Y,Z\r\n4,d,e\r\n5,f,g\r\n"},
        {"hl7bridge-audit-0000000004.txt", "A\tB\n6\th\n"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[300];
        snprintf(path, sizeof path, "%s/%s", dir, files[i].name);
        size_t len = 0;
        char *got = slurp(path, &len);
        if (!got)
            fail_msg("missing %s", files[i].name);
        assert_int_equal(len, strlen(files[i].want));
        assert_memory_equal(got, files[i].want, len);
        free(got);
    }
    assert_int_equal(q_int(fx, "SELECT COUNT(DISTINCT COALESCE(layout, 0)) FROM batches"), 3);
}

static void test_start_names_missing_setting(void **state)
{
    struct fixture *fx = *state;
    struct sink_audit_opts o = {
        .kind = SINK_AUDIT_PURVIEW, .store = {.path = fx->path}, .header = "H\n",
        .tenant_id = "t", .app_id = "a", .app_secret = "TOPSECRET", .job_id = "",
    };
    char err[256];
    assert_null(sink_audit_start(&o, err, sizeof err));
    assert_non_null(strstr(err, "job_id"));
    assert_null(strstr(err, "TOPSECRET"));
    o.job_id = "j";
    o.upload_url = "http://example.org/api/signals";
    assert_null(sink_audit_start(&o, err, sizeof err));
    assert_non_null(strstr(err, "https"));
    /* Loopback is no exception: the token request carries the secret. */
    o.upload_url = "https://127.0.0.1:1/api/signals";
    o.token_url = "http://127.0.0.1:1/token";
    assert_null(sink_audit_start(&o, err, sizeof err));
    assert_non_null(strstr(err, "token_url must be https"));
    assert_null(strstr(err, "TOPSECRET"));
}

/* ---- wire helpers ----------------------------------------------------------- */

static void test_multipart_body(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(sink_multipart_begin(&b, "BND", "hl7bridge-audit-0000000007.txt"), 0);
    assert_int_equal(buf_append_str(&b, "H1\tH2\r\nv1\tv2\r\n"), 0);
    assert_int_equal(sink_multipart_end(&b, "BND"), 0);
    static const char want[] =
        "--BND\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"hl7bridge-audit-0000000007.txt\"\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "H1\tH2\r\nv1\tv2\r\n"
        "\r\n--BND--\r\n";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(buf_data(&b), want, b.len);
    buf_release(&b);
    /* a ceiling that is too small fails cleanly */
    buf_init(&b, 10);
    assert_int_equal(sink_multipart_begin(&b, "BND", "f.txt"), -1);
    buf_release(&b);

    assert_int_equal(sink_multipart_ok((const uint8_t *)"a--BNDx", 7, "BND"), 0);
    assert_int_equal(sink_multipart_ok((const uint8_t *)"--BND", 5, "BND"), 0);
    assert_int_equal(sink_multipart_ok((const uint8_t *)"a--BN", 5, "BND"), 1);
    assert_int_equal(sink_multipart_ok((const uint8_t *)"-BND--B-", 8, "BND"), 1);
    assert_int_equal(sink_multipart_ok((const uint8_t *)"", 0, "BND"), 1);
}

static int parse(const char *json, struct sink_token *t)
{
    return sink_token_parse((const uint8_t *)json, strlen(json), 1700000000, t);
}

static void test_token_parsing(void **state)
{
    (void)state;
    struct sink_token t;
    assert_int_equal(parse("{\"token_type\":\"Bearer\",\"expires_in\":\"3599\",\"expires_on\":"
                           "\"1700003599\",\"access_token\":\"eyJ0eXAi.abc\"}", &t), 0);
    assert_string_equal(t.access_token, "eyJ0eXAi.abc");
    assert_int_equal(t.expires_in_s, 3599);
    sink_token_release(&t);
    assert_null(t.access_token);

    assert_int_equal(parse("{\"expires_in\":3600,\"access_token\":\"x\"}", &t), 0);
    assert_int_equal(t.expires_in_s, 3600);
    sink_token_release(&t);

    /* only expires_on: a lifetime from the clock */
    assert_int_equal(parse("{\"expires_on\":\"1700000600\",\"access_token\":\"x\"}", &t), 0);
    assert_int_equal(t.expires_in_s, 600);
    sink_token_release(&t);

    /* neither: 0 = unknown (the sink renews early) */
    assert_int_equal(parse("{\"access_token\":\"x\"}", &t), 0);
    assert_int_equal(t.expires_in_s, 0);
    sink_token_release(&t);

    assert_int_equal(parse("{\"error\":\"invalid_client\",\"error_description\":"
                           "\"AADSTS7000215: Invalid client secret provided.\\r\\nTrace ID: 1\","
                           "\"error_codes\":[7000215]}", &t), -1);
    assert_string_equal(t.error, "invalid_client");
    assert_non_null(strstr(t.description, "AADSTS7000215"));
    assert_null(strchr(t.description, '\n'));
    assert_null(t.access_token);
    assert_non_null(strstr(sink_aadsts_hint(t.description), "app_secret"));
    sink_token_release(&t);

    assert_non_null(strstr(sink_aadsts_hint("AADSTS700016: app"), "app_id"));
    assert_non_null(strstr(sink_aadsts_hint("AADSTS90002: tenant"), "tenant_id"));
    assert_non_null(strstr(sink_aadsts_hint("AADSTS500011: resource"), "resource"));
    assert_string_equal(sink_aadsts_hint("AADSTS7000215999"), "");
    assert_string_equal(sink_aadsts_hint("nothing"), "");

    assert_int_equal(parse("{\"expires_in\":\"36x\",\"access_token\":\"x\"}", &t), -1);
    assert_string_equal(t.error, "bad_expires_in");
    assert_int_equal(parse("{\"expires_in\":0,\"access_token\":\"x\"}", &t), -1);
    assert_int_equal(parse("{\"expires_in\":10}", &t), -1);
    assert_string_equal(t.error, "no_access_token");
    assert_int_equal(parse("{\"token_type\":\"MAC\",\"access_token\":\"x\"}", &t), -1);
    assert_int_equal(parse("{\"access_token\":\"x\",\"access_token\":\"y\"}", &t), -1);
    assert_int_equal(parse("[]", &t), -1);
    assert_int_equal(parse("{\"access_token\":", &t), -1);
    assert_int_equal(parse("", &t), -1);
    assert_int_equal(sink_token_parse((const uint8_t *)"{\"access_token\":\"x\"}garbage", 20,
                                      0, &t), 0); /* length bounds the input */
    sink_token_release(&t);
}

static void test_retry_after(void **state)
{
    (void)state;
    uint64_t ms = 0;
    assert_int_equal(sink_retry_after_parse("120", 0, &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(sink_retry_after_parse(" 5 \r\n", 0, &ms), 0);
    assert_int_equal(ms, 5000);
    assert_int_equal(sink_retry_after_parse("0", 0, &ms), 0);
    assert_int_equal(ms, 0);
    /* Wed, 21 Oct 2015 07:28:00 GMT = 1445412480 */
    assert_int_equal(sink_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412450, &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(sink_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490, &ms), 0);
    assert_int_equal(ms, 0); /* in the past */
    assert_int_equal(sink_retry_after_parse("Wednesday, 21-Oct-15 07:28:00 GMT", 1445412470, &ms),
                     0);
    assert_int_equal(ms, 10000);
    assert_int_equal(sink_retry_after_parse("", 0, &ms), -1);
    assert_int_equal(sink_retry_after_parse("-5", 0, &ms), -1);
    assert_int_equal(sink_retry_after_parse("12s", 0, &ms), -1);
    assert_int_equal(sink_retry_after_parse("soon", 0, &ms), -1);
    assert_int_equal(sink_retry_after_parse("99999999999999999999999", 0, &ms), -1);
    assert_int_equal(sink_retry_after_parse(NULL, 0, &ms), -1);
}

static void test_backoff_bounds(void **state)
{
    (void)state;
    static const uint32_t rnds[] = { 0, 1, 7, 12345, 0x7fffffff, 0xffffffff };
    for (unsigned a = 0; a < 70; a++) {
        uint64_t d = 500;
        for (unsigned i = 1; i < a && d < 30000; i++)
            d *= 2;
        if (d > 30000)
            d = 30000;
        for (size_t k = 0; k < sizeof rnds / sizeof rnds[0]; k++) {
            uint64_t v = sink_backoff_ms(a, 500, 30000, rnds[k]);
            assert_true(v >= d / 2);
            assert_true(v <= d);
            assert_true(v <= 30000);
        }
    }
    assert_int_equal(sink_backoff_ms(1, 500, 30000, 0), 250);
    assert_int_equal(sink_backoff_ms(2, 500, 30000, 0), 500);
    assert_int_equal(sink_backoff_ms(1000, 500, 30000, 0), 15000);
    assert_int_equal(sink_backoff_ms(1000, 500, 30000, 15000), 30000);
    /* jitter spreads the values */
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t r = 0; r < 2000; r++) {
        uint64_t v = sink_backoff_ms(4, 500, 30000, r * 2654435761u);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    assert_true(hi - lo > 1000);
}

static void test_cloud_urls(void **state)
{
    (void)state;
    char t[256], u[256];
    static const struct {
        enum sink_cloud c;
        const char *tok, *up;
    } cases[] = {
        { SINK_CLOUD_COMMERCIAL, "https://login.windows.net/T1/oauth2/token?api-version=1.0",
          "https://webhook.ingestion.office.com/api/signals" },
        { SINK_CLOUD_GCC, "https://login.microsoftonline.com/T1/oauth2/token?api-version=1.0",
          "https://webhook-gcc.ingestion.office365.us/api/signals" },
        { SINK_CLOUD_ITAR_L4, "https://login.microsoftonline.us/T1/oauth2/token?api-version=1.0",
          "https://webhook-itarl4.ingestion.office365.us/api/signals" },
        { SINK_CLOUD_ITAR_L5, "https://login.microsoftonline.us/T1/oauth2/token?api-version=1.0",
          "https://webhook-itarl5.ingestion.apps.mil/api/signals" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(sink_cloud_urls(cases[i].c, "T1", t, sizeof t, u, sizeof u), 0);
        assert_string_equal(t, cases[i].tok);
        assert_string_equal(u, cases[i].up);
    }
    assert_int_equal(sink_cloud_urls(SINK_CLOUD_GCC, "T1", t, 10, u, sizeof u), -1);
    assert_int_equal(sink_cloud_urls((enum sink_cloud)9, "T1", t, sizeof t, u, sizeof u), -1);
}

static void test_token_form(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(sink_token_form(&b, "app-1", "a+b/c=d e&f~", SINK_DEFAULT_RESOURCE, "t-1"), 0);
    static const char want[] =
        "client_id=app-1&client_secret=a%2Bb%2Fc%3Dd%20e%26f~&grant_type=client_credentials"
        "&resource=https%3A%2F%2Fmicrosoft.onmicrosoft.com%2F86dfdabb-5089-4a0c-880a-cfa5a790c5b1"
        "&tenant_id=t-1";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(buf_data(&b), want, b.len);
    buf_release(&b);
}

static void test_file_write_replaces_atomically(void **state)
{
    struct fixture *fx = *state;
    char dir[200], err[256];
    snprintf(dir, sizeof dir, "%s/a/b", fx->dir);
    assert_int_equal(sink_mkdirs(dir, err, sizeof err), 0);
    assert_int_equal(sink_file_write(dir, "x.txt", (const uint8_t *)"first", 5, err, sizeof err), 0);
    assert_int_equal(sink_file_write(dir, "x.txt", (const uint8_t *)"2nd", 3, err, sizeof err), 0);
    char path[300];
    snprintf(path, sizeof path, "%s/x.txt", dir);
    size_t len;
    char *got = slurp(path, &len);
    assert_non_null(got);
    assert_int_equal(len, 3);
    assert_memory_equal(got, "2nd", 3);
    free(got);
    /* A directory under a regular file can never be made, whoever runs the
     * test (root included) and whatever else is on the machine. */
    char bad[320];
    snprintf(bad, sizeof bad, "%s/x.txt/dir", dir);
    assert_int_equal(sink_file_write(bad, "x", (const uint8_t *)"", 0, err, sizeof err), -1);
    assert_non_null(strstr(err, bad));
}

int main(void)
{
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seal_by_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_by_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_by_age_and_resume_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_states_persist_across_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_spanning_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_batch_sealed_when_caught_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_sink_tsv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_sink_csv_quoted_line_breaks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_sink_psv_lf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_sink_block_per_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_names_missing_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_write_replaces_atomically, setup, teardown),
        cmocka_unit_test(test_multipart_body),
        cmocka_unit_test(test_token_parsing),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_cloud_urls),
        cmocka_unit_test(test_token_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
