/* Power loss, not process death: "AA means on disk" checked against a disk
 * that forgets everything not fsync'd.
 *
 * The store is opened through its normal path with the power-cut VFS
 * (powercut_vfs.h) registered as SQLite's default.  This thread keeps the
 * writer's queue full (group commits of many messages), the power goes off
 * at a random write/sync, every result is collected, the store is closed,
 * the disk keeps only what was synced (in half of the rounds also a random
 * subset of what was not), and the store is opened again as after a reboot.
 * Every message whose result was STORE_STORED must be there, once, and the
 * database must pass integrity_check.  A store that commits without fsync
 * (synchronous=OFF or NORMAL) loses acknowledged messages here, which a
 * kill -9 cannot show: the page cache outlives the process. */
#include "store/store.h"
#include "core/clock.h"

#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "tests/unit/powercut_vfs.h"
#include "tests/unit/tmpdir.h"

#define ROUNDS       40
#define MAX_OPS      600   /* cut at a random write/sync among the first MAX_OPS */
#define MAX_MSGS     4000  /* per round; the cut is forced if not reached by then */
#define QUEUE_CAP    256

/* WAL frames per checkpoint for the stores opened here; 0: the daemon's. */
static unsigned ckpt_pages;

static struct store *open_store(const char *path, char *err, size_t errcap)
{
    struct store_opts o = { .path = path, .retention_days = 7, .queue_capacity = QUEUE_CAP,
                            .wal_ckpt_pages = ckpt_pages };
    return store_open(&o, err, errcap);
}

static struct store_msg *make_msg(unsigned round, unsigned n)
{
    char ctl[32], raw[700];
    snprintf(ctl, sizeof ctl, "PL%u-%u", round, n);
    int rl = snprintf(raw, sizeof raw,
                      "MSH|^~\\&|EPIC|GENHOSP|HL7BRIDGE|HL7BRIDGE|20260101120000||ADT^A01|%s|P|2.5\r"
                      "EVN|A01|20260101120000\rPID|1||%u^^^HOSP^MR||POWER^LOSS||19700101|F\r"
                      "PV1|1|I|WARD^%u^1\r%*s",
                      ctl, n, round, (int)(n % 400), "");
    struct store_msg_fields f = {
        .raw = (const uint8_t *)raw, .raw_len = (size_t)rl,
        .listener = "main", .peer = "127.0.0.1:1",
        .send_app = (const uint8_t *)"EPIC", .send_app_len = 4,
        .send_fac = (const uint8_t *)"GENHOSP", .send_fac_len = 7,
        .control_id = (const uint8_t *)ctl, .control_id_len = strlen(ctl),
        .msg_type = (const uint8_t *)"ADT", .msg_type_len = 3,
        .trigger = (const uint8_t *)"A01", .trigger_len = 3,
        .version = (const uint8_t *)"2.5", .version_len = 3,
        .ack_code = "AA", .received_ms = 1700000000000,
        .rows = (const uint8_t *)"row|a\n", .rows_len = 6, .row_count = 1,
    };
    return store_msg_new(&f);
}

struct round_result {
    unsigned submitted, stored, failed;
    unsigned wal_restarts; /* the WAL header's checkpoint sequence after the cut */
    unsigned char *stored_flag; /* per message number */
};

/* Takes whatever results are ready (waiting up to 50 ms for some). */
static void take(struct store *s, struct round_result *rr)
{
    struct pollfd pfd = { .fd = store_event_fd(s), .events = POLLIN };
    int pr = poll(&pfd, 1, 50);
    assert_true(pr >= 0);
    struct store_result res[QUEUE_CAP];
    size_t n = store_take_results(s, res, QUEUE_CAP);
    for (size_t i = 0; i < n; i++) {
        assert_true(res[i].tag < MAX_MSGS);
        if (res[i].status == STORE_STORED) {
            rr->stored_flag[res[i].tag] = 1;
            rr->stored++;
        } else {
            assert_int_equal(res[i].status, STORE_FAILED); /* no duplicates were sent */
            rr->failed++;
        }
    }
}

/* Bytes 12..15 of the WAL header count how often the log was restarted
 * from its beginning; from 1 on, stale frames of an earlier generation lie
 * after the live ones.  0 when there is no WAL header. */
static unsigned wal_restarts(const char *db_path)
{
    char p[200];
    snprintf(p, sizeof p, "%s-wal", db_path);
    unsigned char h[16];
    FILE *f = fopen(p, "rb");
    if (!f)
        return 0;
    size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    if (n != sizeof h || h[0] != 0x37 || h[1] != 0x7f || h[2] != 0x06)
        return 0;
    return (unsigned)h[12] << 24 | (unsigned)h[13] << 16 | (unsigned)h[14] << 8 | h[15];
}

static void run_round(const char *path, unsigned round, unsigned seed, struct round_result *rr)
{
    char err[256];
    struct store *s = open_store(path, err, sizeof err);
    if (!s)
        fprintf(stderr, "store_open: %s\n", err);
    assert_non_null(s);

    unsigned rs = seed;
    long ops = 1 + (long)(rand_r(&rs) % MAX_OPS);
    powercut_arm(ops, (int)(round & 1), seed);

    /* Keep the queue full until the power goes off. */
    uint64_t deadline = clock_mono_ms() + 60000; /* hang guard only */
    while (!powercut_is_off()) {
        assert_true(clock_mono_ms() < deadline);
        if (rr->submitted == MAX_MSGS) {
            powercut_now();
            break;
        }
        size_t space = store_space(s);
        while (space-- && rr->submitted < MAX_MSGS) {
            struct store_msg *m = make_msg(round, rr->submitted);
            assert_non_null(m);
            assert_int_equal(store_submit(s, m, rr->submitted), 0);
            rr->submitted++;
        }
        take(s, rr);
    }
    /* Every submitted message still gets its result (failed, now). */
    while (store_pending(s) > 0) {
        assert_true(clock_mono_ms() < deadline);
        take(s, rr);
    }
    take(s, rr);
    assert_int_equal(rr->stored + rr->failed, rr->submitted);
    store_close(s);

    /* The reboot: the disk keeps what it keeps, then the normal open. */
    assert_int_equal(powercut_restore(), 0);
    rr->wal_restarts = wal_restarts(path);
    s = open_store(path, err, sizeof err);
    if (!s)
        fprintf(stderr, "store_open after the cut (round %u): %s\n", round, err);
    assert_non_null(s);
    store_close(s);
}

static void check_round(const char *path, unsigned round, const struct round_result *rr)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);

    /* How many times each message number is in the store, and with how
     * many rows (one query: rows has no index on msg_id). */
    unsigned char *seen = calloc(MAX_MSGS, 1), *rows = calloc(MAX_MSGS, 1);
    assert_non_null(seen);
    assert_non_null(rows);
    char prefix[32];
    int plen = snprintf(prefix, sizeof prefix, "PL%u-", round);
    assert_int_equal(sqlite3_prepare_v2(db,
        "SELECT m.control_id, count(r.msg_id) FROM messages m LEFT JOIN rows r ON r.msg_id = m.id"
        " WHERE m.send_app = 'EPIC' AND m.send_fac = 'GENHOSP' GROUP BY m.id",
        -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *ctl = (const char *)sqlite3_column_text(st, 0);
        assert_non_null(ctl);
        assert_memory_equal(ctl, prefix, (size_t)plen);
        unsigned long n = strtoul(ctl + plen, NULL, 10);
        assert_true(n < rr->submitted);
        seen[n]++;
        rows[n] = (unsigned char)sqlite3_column_int(st, 1);
    }
    unsigned lost = 0;
    for (unsigned n = 0; n < rr->submitted; n++) {
        assert_true(seen[n] <= 1);
        if (!rr->stored_flag[n] || (seen[n] == 1 && rows[n] == 1))
            continue;
        if (!lost)
            fprintf(stderr, "round %u: %s%u acknowledged as stored but %s after the cut\n",
                    round, prefix, n, seen[n] ? "without its row" : "missing");
        lost++;
    }
    free(seen);
    free(rows);
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (lost)
        fprintf(stderr, "round %u: %u of %u stored messages lost\n", round, lost, rr->stored);
    assert_int_equal(lost, 0);
}

static void power_cut_rounds(unsigned rounds, unsigned *reused)
{
    powercut_install();
    unsigned seed0 = (unsigned)clock_wall_ms();
    const char *env = getenv("HB_POWERLOSS_SEED");
    if (env)
        seed0 = (unsigned)strtoul(env, NULL, 10);
    fprintf(stderr, "# power-loss seed %u (HB_POWERLOSS_SEED to repeat)\n", seed0);

    unsigned total_stored = 0, rounds_with_stored = 0, total_failed = 0;
    *reused = 0;
    for (unsigned round = 0; round < rounds; round++) {
        char dir[64], path[160];
        assert_int_equal(tmpdir_make(dir, sizeof dir, "powerloss"), 0);
        snprintf(path, sizeof path, "%s/var/store.db", dir);
        struct round_result rr = { 0 };
        rr.stored_flag = calloc(MAX_MSGS, 1);
        assert_non_null(rr.stored_flag);

        run_round(path, round, seed0 + round * 7919u, &rr);
        check_round(path, round, &rr);

        total_stored += rr.stored;
        total_failed += rr.failed;
        rounds_with_stored += rr.stored > 0;
        *reused += rr.wal_restarts > 0;
        free(rr.stored_flag);
        powercut_forget();
        tmpdir_remove(dir);
    }
    fprintf(stderr, "# %u rounds: %u messages stored before the cut (all found), %u failed, "
            "%u with a reused WAL\n", rounds, total_stored, total_failed, *reused);
    /* Not vacuous: most rounds cut after some commits, and some cut with
     * messages still queued. */
    assert_true(rounds_with_stored >= rounds / 2);
    assert_true(total_failed > 0);
}

static void test_power_cut_keeps_every_stored_message(void **state)
{
    (void)state;
    unsigned reused = 0;
    ckpt_pages = 0;
    power_cut_rounds(ROUNDS, &reused);
}

/* After each checkpoint the log restarts from its beginning and overwrites
 * the file, so the WAL a reboot finds holds the live frames, then stale
 * frames of earlier generations.  Recovery must take exactly the live ones.
 * A tiny checkpoint size makes the log restart many times in each round. */
static void test_power_cut_with_a_reused_wal(void **state)
{
    (void)state;
    unsigned reused = 0;
    ckpt_pages = 8;
    power_cut_rounds(ROUNDS / 2, &reused);
    ckpt_pages = 0;
    assert_true(reused >= ROUNDS / 8); /* the cut found a restarted log */
}

/* The last close checkpoints the WAL into the database file and removes
 * the WAL: a cut at any write, sync or delete of that must lose nothing
 * that was stored before. */
static void test_power_cut_during_the_closing_checkpoint(void **state)
{
    (void)state;
    powercut_install();
    unsigned seed = (unsigned)clock_wall_ms() ^ 0x5bd1e995u;
    const char *env = getenv("HB_POWERLOSS_SEED");
    if (env)
        seed = (unsigned)strtoul(env, NULL, 10);
    unsigned cut_inside = 0;
    for (unsigned round = 0; round < 20; round++) {
        char dir[64], path[160], err[256];
        assert_int_equal(tmpdir_make(dir, sizeof dir, "powerloss"), 0);
        snprintf(path, sizeof path, "%s/var/store.db", dir);
        struct round_result rr = { 0 };
        rr.stored_flag = calloc(MAX_MSGS, 1);
        assert_non_null(rr.stored_flag);
        struct store *s = open_store(path, err, sizeof err);
        assert_non_null(s);
        unsigned n = 200 + (unsigned)(rand_r(&seed) % 800);
        uint64_t deadline = clock_mono_ms() + 60000;
        while (rr.submitted < n || store_pending(s) > 0) {
            assert_true(clock_mono_ms() < deadline);
            size_t space = store_space(s);
            while (space-- && rr.submitted < n) {
                assert_int_equal(store_submit(s, make_msg(round + 1000, rr.submitted), rr.submitted), 0);
                rr.submitted++;
            }
            take(s, &rr);
        }
        take(s, &rr);
        assert_int_equal(rr.stored, rr.submitted);
        powercut_arm(1 + (long)(rand_r(&seed) % 120), (int)(round & 1), seed + round);
        store_close(s);
        cut_inside += powercut_is_off();
        powercut_now();
        assert_int_equal(powercut_restore(), 0);
        s = open_store(path, err, sizeof err);
        if (!s)
            fprintf(stderr, "store_open after the cut (round %u): %s\n", round, err);
        assert_non_null(s);
        store_close(s);
        check_round(path, round + 1000, &rr);
        free(rr.stored_flag);
        powercut_forget();
        tmpdir_remove(dir);
    }
    fprintf(stderr, "# closing checkpoint: %u of 20 cuts fell inside it\n", cut_inside);
    assert_true(cut_inside >= 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_power_cut_keeps_every_stored_message),
        cmocka_unit_test(test_power_cut_with_a_reused_wal),
        cmocka_unit_test(test_power_cut_during_the_closing_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
