/* Private to store/: the message layout, the store object shared by the
 * producer-facing half (store.c) and the SQLite half (store_db.c), and the
 * tuning constants of the writer. */
#ifndef STORE_STORE_INT_H
#define STORE_STORE_INT_H

#include "store/sql.h"
#include "store/store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>

/* Bumped whenever a migration is appended to store_db.c. */
#define STORE_SCHEMA_VERSION      8

/* How long one BEGIN/COMMIT attempt waits for a lock held by another
 * connection (a CLI, a sink reader) and how long in total before the group
 * is failed.  A short lock never fails messages; a lock held for half a
 * minute means the operator has a problem and the senders get AE. */
#define STORE_BUSY_TIMEOUT_MS     1000
#define STORE_BUSY_GIVE_UP_MS     30000

/* Free-disk probe: statvfs at most this often. */
#define STORE_DISK_CHECK_MS       100

/* Housekeeping (retention) cadence — at most STORE_HOUSEKEEP_MS, shorter
 * for short retentions (store_housekeep_interval_ms) — and how many bodies
 * one step purges so that a large backlog never holds the write lock for
 * long. */
#define STORE_HOUSEKEEP_MS        60000
#define STORE_HOUSEKEEP_MIN_MS    1000
#define STORE_HOUSEKEEP_FIRST_MS  5000
#define STORE_RETENTION_CHUNK     2000

/* Checkpoint policy.  Above STORE_WAL_CKPT_PAGES the checkpointer thread
 * copies the WAL into the database without blocking the writer; when it is
 * done the writer copies the few frames committed meanwhile itself, so that
 * its next transaction restarts the WAL from the beginning.  Under steady
 * load the helper alone never quite catches up, the WAL would only grow,
 * and appending to a file costs about twice as much per fsync as
 * overwriting it. */
#define STORE_WAL_CKPT_PAGES      4096
#define STORE_JOURNAL_LIMIT_BYTES (64 * 1024 * 1024)

enum store_ckpt_state {
    STORE_CKPT_IDLE = 0,   /* WAL below the threshold */
    STORE_CKPT_RUNNING,    /* the checkpointer thread is copying */
    STORE_CKPT_TAIL,       /* it finished: the writer copies the rest */
};

/* Indexes into store_msg.span; each names a byte range of store_msg.data. */
enum store_field {
    SF_RAW = 0, SF_LISTENER, SF_PEER, SF_SEND_APP, SF_SEND_FAC, SF_CONTROL_ID,
    SF_MSG_TYPE, SF_TRIGGER, SF_VERSION, SF_ROWS, SF_REASON, SF_ERR_WHERE,
    SF_APPT,   /* appointment facts: STORE_APPT_NTEXT NUL-terminated strings in order */
    SF_COUNT
};

/* One allocation per message: the header followed by every byte it carries,
 * so the hot path costs one malloc (producer) and one free (writer). */
struct store_msg {
    uint64_t tag;
    int64_t received_ms;
    int64_t layout;
    unsigned row_count;
    int quarantined;
    int filtered;
    int rejected;
    int err_code;
    int has_appt;
    int64_t appt_event_time, appt_start_s, appt_duration_min;
    uint64_t digest;
    char ack_code[3];
    struct { size_t off, len; } span[SF_COUNT];
    uint8_t data[];
};

static inline const uint8_t *store_msg_ptr(const struct store_msg *m, enum store_field f)
{
    return m->data + m->span[f].off;
}

/* The writer half of one backend.  store.c (queue, results, event fd,
 * stats, the writer loop) is shared; these run the database.  open and
 * close on the main thread, the rest on the writer thread. */
struct store_backend {
    int (*open)(struct store *s, char *errbuf, size_t errcap);
    void (*close)(struct store *s);
    /* 1: fail the next group without trying (disk low, no connection). */
    int (*unavailable)(struct store *s, uint64_t now_ms);
    /* Writes one group; fills s->grp_res[0..n) (tag excluded), updates stats. */
    void (*write_group)(struct store *s, size_t n);
    /* After a group's results went out (e.g. a checkpoint); may be NULL. */
    void (*after_group)(struct store *s);
    /* One retention step (see store_db_housekeep); may be NULL. */
    long (*housekeep)(struct store *s, int64_t now_wall_ms, int *more);
    /* Called on every writer turn, also when idle (e.g. reconnecting);
     * may set s->be_wake_ms to be called again then.  May be NULL. */
    void (*tick)(struct store *s, uint64_t now_ms);
};
extern const struct store_backend store_sqlite_backend;
extern const struct store_backend store_pg_backend;
struct store_pg; /* store/pg_db.c */

/* The writer's prepared statements and SQLite state (writer thread only once
 * the thread runs). */
struct store_db {
    sqlite3 *db;
    sqlite3_stmt *ins_msg, *sel_dup, *ins_row, *ins_appt, *begin, *commit, *rollback, *purge;
    sqlite3_stmt *ins_rej, *upd_dup; /* rejected messages, duplicate counts */
    sqlite3_stmt *purge_pick, *purge_range, *purge_mark; /* retention over deliveries */
    struct store_busy busy;  /* its lock waits (store/sql.h) */
    sqlite3_stmt *rt[16];    /* store/retention.c's statements, prepared at first use */
};

/* Writer-thread state of the file retention (store/retention.c). */
struct store_file_state {
    struct store_file_keep k;    /* path and prefix point into the copies below */
    char *path_own, *prefix_own;
    int64_t last_rotate_ms;      /* wall clock: the last rotation, or the open */
    int rotate_first;            /* non-empty at open: a previous run's lines, age unknown */
};

struct store {
    struct store_opts opts;      /* path copied into path_buf */
    const struct store_backend *be;
    struct store_pg *pg;         /* PostgreSQL writer state, NULL on SQLite */
    uint64_t be_wake_ms;         /* writer-only: the backend's next tick, 0 none */
    char *path_buf;
    char *dir_buf;               /* directory probed by statvfs */

    /* Producer-only: messages submitted whose results were not yet taken.
     * Bounds both rings, so neither can overflow. */
    size_t inflight;
    uint64_t submitted;          /* producer-only running total */
    _Atomic uint64_t published;  /* results published so far (writer) */
    size_t cap;
    int efd;

    pthread_mutex_t mu;          /* guards everything down to `results` */
    pthread_cond_t cv;           /* writer waits here for work */
    struct store_msg **q;        /* submission ring */
    size_t q_head, q_count;
    struct store_result *res;    /* completion ring */
    size_t r_head, r_count;
    int writer_waiting;
    /* Monotonic ms at which the writer took up its current piece of work
     * (a group, housekeeping); 0 while it waits for work.  For
     * store_writer_stalled_ms (the service watchdog). */
    _Atomic uint64_t busy_since_ms;
    int writer_gathering;        /* in the short wait for a fuller group */
    _Atomic unsigned expected_group; /* producer's hint, see store.h */
    int stopping;
    int housekeep_asked;

    pthread_t writer;
    int writer_started;
    struct store_db wdb;

    /* Writer-thread scratch, sized max_group at open. */
    struct store_msg **grp;
    struct store_result *grp_res;
    uint64_t next_disk_check_ms;
    int disk_low;
    uint64_t next_housekeep_ms;
    struct store_file_state files[STORE_MAX_FILE_KEEPS];
    size_t n_files;
    pthread_mutex_t *rt_mu;      /* → rt_mu_storage: lockable through a const store */
    pthread_mutex_t rt_mu_storage; /* guards rt_report (writer writes, any thread reads) */
    struct store_retention_report rt_report;
    uint64_t last_fail_log_ms;
    uint64_t gather_waits;       /* times the writer waited for a fuller group */
    uint64_t fail_log_suppressed;

    /* Checkpointer thread: own connection, woken by the wal hook. */
    pthread_t ckpt;
    int ckpt_started;
    sqlite3 *ckpt_db;
    pthread_mutex_t ckpt_mu;
    pthread_cond_t ckpt_cv;
    int ckpt_asked, ckpt_stop;
    _Atomic int ckpt_state;      /* enum store_ckpt_state */

    struct {
        _Atomic uint64_t commits, messages, duplicates, failures;
        _Atomic uint64_t max_group_seen, commit_ns_total;
        _Atomic uint64_t rejected, control_id_reused;
        _Atomic uint64_t reconnects;
        _Atomic int unavailable;
    } st;

    /* PostgreSQL cluster view: ACK counts for the heartbeat (any thread
     * writes) and the nodes the last heartbeat read (guarded by rt_mu). */
    _Atomic uint64_t node_acks[3];
    struct store_node *cluster;  /* STORE_CLUSTER_MAX, allocated by the backend */
    size_t n_cluster;
};

/* store_db.c — all SQLite access.  db_open runs on the main thread before the
 * writer starts; the rest on the writer thread (ckpt_* on the checkpointer). */
int store_db_prepare_path(const char *path, char *errbuf, size_t errcap);
int store_db_open(struct store *s, char *errbuf, size_t errcap);
void store_db_close(struct store *s);
/* Writes one group; fills s->grp_res[0..n) (tag excluded) and updates stats. */
void store_db_write_group(struct store *s, size_t n);
/* Finishes a checkpoint the helper thread started (writer thread, between
 * groups). */
void store_db_checkpoint_tail(struct store *s);
/* One retention step; returns how many bodies were purged, -1 on error.
 * *more is set when work of age was left for the next step. */
long store_db_housekeep(struct store *s, int64_t now_wall_ms, int *more);
/* store/retention.c (writer thread): one retention step over every kind —
 * at most one chunk of each, each chunk its own short transaction — then
 * the oldest record per kind for the report.  Returns how many records
 * were purged (-1 when every kind failed); *more when a kind had a full
 * chunk.  store_rt_release finalizes its statements. */
long store_rt_step(struct store *s, int64_t now_wall_ms, int *more);
void store_rt_release(struct store *s);
/* How long each kind is kept (retention_days caps raw), for the report. */
void store_rt_keep(const struct store_opts *o, uint64_t *keep);
/* The files part of a step (this node's own sink output, on either
 * backend): adds to got[kind], notes oldest[kind]; returns how many of the
 * s->n_files failed. */
int store_rt_files(struct store *s, int64_t now, long *got, int64_t *oldest, int *more);
/* The SMS tables' part (store/sms.c): texts finished and appointments over
 * (personal fields already purged) before cutoff_s are deleted, at most
 * `chunk` rows of each; *n gets how many; *oldest_ms the oldest SMS record
 * left (0 none).  Tables that do not exist yet hold nothing.  0 / -1. */
int store_sms_retention(sqlite3 *db, int64_t cutoff_s, int chunk, long *n, int64_t *oldest_ms);
/* 1 when free space on the database's filesystem is below the minimum. */
int store_db_disk_low(struct store *s, uint64_t now_ms);
int store_db_ckpt_open(struct store *s, char *errbuf, size_t errcap);
void store_db_ckpt_run(struct store *s);

/* store/pg_side.c — the connection of one of the store's other users on
 * PostgreSQL (pg_batch.c, pg_sms.c): made from its own copies of url,
 * password and node, and made again after a break outside a transaction
 * only.  err holds the last error (never the password). */
struct store_pg_side {
    struct pg_conn *conn;
    struct store_opts opts;    /* type, url, password, node: the copies below */
    char *url, *password, *node;
    int in_tx;                 /* between begin and commit / rollback */
    char err[256];
};
/* Copies what `o` says about the server; 0, or -1 (out of memory: release
 * it all the same). */
int store_pg_side_init(struct store_pg_side *c, const struct store_opts *o);
void store_pg_side_release(struct store_pg_side *c);
/* 0 with a usable connection, -1 with err. */
int store_pg_side_ok(struct store_pg_side *c);
void store_pg_side_error(struct store_pg_side *c, const char *libpq_message);
/* One statement with text parameters (NULL: SQL NULL); the result when its
 * status is `want` (an ExecStatusType), else NULL with err kept. */
struct pg_result *store_pg_side_run(struct store_pg_side *c, const char *sql, int n,
                                    const char *const *v, int want, int binary);
/* One command (UPDATE, DELETE …): 0 with the rows it changed in *changed
 * (may be NULL), or -1 with err kept (*changed 0). */
int store_pg_side_exec(struct store_pg_side *c, const char *sql, int n, const char *const *v,
                       uint64_t *changed);
int store_pg_side_begin(struct store_pg_side *c);
/* -1 when the COMMIT failed or the transaction had (it is rolled back). */
int store_pg_side_commit(struct store_pg_side *c);
void store_pg_side_rollback(struct store_pg_side *c);
/* A column of a text-format result row: as a number (0 when it is none),
 * or as text cut to `cap`. */
int64_t store_pg_num(const struct pg_result *r, int row, int col);
void store_pg_text(const struct pg_result *r, int row, int col, char *out, size_t cap);

/* store/pg_batch.c — the audit batches on PostgreSQL, behind the
 * store_batches_* calls of store/batch.c (same meaning, see store.h). */
struct store_pg_batches;
struct store_pg_batches *store_pg_batches_open(const struct store_opts *o, char *errbuf,
                                               size_t errcap);
void store_pg_batches_close(struct store_pg_batches *pb);
const char *store_pg_batches_errmsg(const struct store_pg_batches *pb);
uint32_t store_pg_batches_lease_ms(const struct store_pg_batches *pb);
int store_pg_batches_recover(struct store_pg_batches *pb, uint64_t *resent);
int store_pg_batches_scan(struct store_pg_batches *pb, const struct store_batch_limits *l,
                          int64_t now_ms, struct store_batch_scan *out);
int store_pg_batches_claim(struct store_pg_batches *pb, int64_t now_ms, struct store_batch *out);
int store_pg_batches_renew(struct store_pg_batches *pb, const int64_t *ids, size_t n);
int store_pg_batches_read_rows(struct store_pg_batches *pb, const struct store_batch *b,
                               struct buf *out, uint64_t *rows);
int store_pg_batches_done(struct store_pg_batches *pb, int64_t id, int status,
                          const char *summary, const char *file_name, int64_t now_ms,
                          uint64_t *marked);
/* uploading → `state` ("sealed" or "failed"). */
int store_pg_batches_set(struct store_pg_batches *pb, int64_t id, const char *state, int status,
                         const char *error, int64_t next_ms);
int store_pg_batches_counts(struct store_pg_batches *pb, int with_done,
                            struct store_batch_counts *out);
int store_pg_batches_get(struct store_pg_batches *pb, int64_t id, struct store_batch *out);
/* Failed blocks (id, or all for 0) to cb; with requeue, failed → sealed
 * as store_batches_redrive, *n how many. */
int store_pg_batches_failed(struct store_pg_batches *pb, int64_t id, int requeue,
                            void (*cb)(void *ud, const struct store_batch *b), void *ud,
                            uint64_t *n);
int store_pg_batches_layout(struct store_pg_batches *pb, int64_t id, struct buf *out, char *ext,
                            size_t extcap);
int store_pg_layout_register(const struct store_opts *o, const char *header,
                             const char *file_ext, int64_t *id, char *errbuf,
                             size_t errcap);
/* store/pg_sms.c — the SMS schedule on PostgreSQL, behind the store_sms_*
 * calls of store/sms.c (same meaning, see store.h). */
struct store_pg_sms;
struct store_pg_sms *store_pg_sms_open(const struct store_opts *o, char *errbuf, size_t errcap);
void store_pg_sms_close(struct store_pg_sms *p);
int store_pg_sms_release(struct store_pg_sms *p, uint64_t *released);
const char *store_pg_sms_errmsg(const struct store_pg_sms *p);
int store_pg_sms_begin(struct store_pg_sms *p);
int store_pg_sms_commit(struct store_pg_sms *p);
void store_pg_sms_rollback(struct store_pg_sms *p);
int store_pg_sms_facts_waiting(struct store_pg_sms *p);
int store_pg_sms_scan(struct store_pg_sms *p, unsigned max, store_sms_fact_cb cb, void *ud,
                      unsigned *n);
int store_pg_sms_appt_get(struct store_pg_sms *p, const char *facility, const char *appt_id,
                          struct store_sms_appt *out);
int store_pg_sms_appt_put(struct store_pg_sms *p, const struct store_sms_appt *a);
int store_pg_sms_text_add(struct store_pg_sms *p, const struct store_sms_text *t);
int store_pg_sms_drop_pending(struct store_pg_sms *p, const char *facility, const char *appt_id,
                              unsigned what, const char *reason, unsigned *n);
int store_pg_sms_claim(struct store_pg_sms *p, int64_t now_ms, const char *first_sent_now,
                       struct store_sms_text *out);
int store_pg_sms_finish(struct store_pg_sms *p, int64_t id, enum store_sms_text_state state,
                        int status, const char *error, const char *message_id, int64_t now_ms);
int store_pg_sms_retry(struct store_pg_sms *p, int64_t id, int status, const char *error,
                       int64_t next_ms);
int store_pg_sms_purge(struct store_pg_sms *p, int64_t now_s, unsigned *appts);
int store_pg_sms_count_add(struct store_pg_sms *p, const char *name, int64_t n);
int store_pg_sms_counters(struct store_pg_sms *p,
                          void (*cb)(void *ud, const char *name, uint64_t n), void *ud);
int store_pg_sms_pending(struct store_pg_sms *p, uint64_t *texts, uint64_t *reminders);
/* store/pg_browse.c — the message browser on PostgreSQL (read only),
 * behind store/browse.c's store_browser_* calls. */
struct store_pg_browser;
struct pg_result;
struct store_pg_browser *store_pg_browser_open(const struct store_opts *o, char *errbuf,
                                               size_t errcap);
void store_pg_browser_close(struct store_pg_browser *b);
/* One table's matches of f (rejected or messages), newest first; read each
 * row with store_pg_browse_read.  NULL with errbuf; PQclear the result. */
struct pg_result *store_pg_browse_search(struct store_pg_browser *b,
                                         const struct store_browse_filter *f, int rejected,
                                         char *errbuf, size_t errcap);
void store_pg_browse_read(const struct pg_result *r, int row, int rejected,
                          struct store_browse_entry *e);
/* As store_browser_get for journal (or rejected) message n. */
int store_pg_browser_get(struct store_pg_browser *b, int64_t n, int rejected,
                         struct store_browse_entry *out, struct buf *raw, char *errbuf,
                         size_t errcap);
/* store/pg_db.c: a connection (libpq's PGconn) for one of the store's
 * other users, made as the writer's is (timeout, application name, the
 * password apart).  Check PQstatus; NULL only when out of memory. */
struct pg_conn;
struct pg_conn *store_pg_connect(const struct store_opts *o);
/* The first line of a libpq message, for logs. */
void store_pg_msg(const char *m, char *out, size_t cap);
#endif
