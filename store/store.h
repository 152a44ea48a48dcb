/* store — the durable SQLite (WAL) journal.
 *
 * One writer thread owns the database connection for writes.  Producers (the
 * network loop) hand it messages through a bounded queue; the writer takes
 * everything queued, commits it in one transaction with synchronous=FULL
 * (group commit: one fsync for many messages), then puts the results on a
 * completion queue and wakes the producer through an eventfd.  AA/CA may be
 * sent only for a result whose status is STORE_STORED or STORE_DUPLICATE.
 *
 * Duplicates: a message whose (sending application, sending facility,
 * control id) is already stored with the same content digest is not stored
 * again; its result carries the ACK code recorded the first time.  The same
 * key with another digest is stored as a new message (key_reused).
 *
 * Threads: store_open/store_close from the main thread; store_submit,
 * store_space, store_take_results and store_event_fd from the one producer
 * thread; the store_query_* helpers from any thread (own connection). */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

struct store; /* opaque */

/* Retention: what kinds of PHI-bearing record the housekeeping purges,
 * and how each is reported (oldest record still held). */
enum store_kind {
    STORE_KIND_RAW = 0,      /* raw message bodies (messages.raw) */
    STORE_KIND_DELIVERED,    /* delivered messages: their metadata row */
    STORE_KIND_ROWS,         /* connector rows (names, addresses, MRNs) */
    STORE_KIND_QUARANTINED,  /* quarantined messages, raw body included */
    STORE_KIND_REJECTED,     /* rejected messages kept for review */
    STORE_KIND_SMS,          /* SMS appointments and texts */
    STORE_KIND_SMS_FILE,     /* the SMS file sink's output (rotated files) */
    STORE_KIND_AUDIT_FILES,  /* the audit file sink's output directory */
    STORE_KIND_UPLOAD_BLOCKS,/* uploaded files' failed blocks kept for redrive (their rows) */
    STORE_KIND_N
};
/* "raw", "delivered", … (the config key under store.retention); NULL when
 * out of range. */
const char *store_kind_name(enum store_kind k);

#define STORE_KEEP_FOREVER UINT64_MAX

/* A file the housekeeping purges: `rotate` set — one file (the SMS file
 * sink's) renamed to PATH.YYYYmmddTHHMMSSZ every rotate_ms while not empty
 * and whose rotated copies go once keep_ms past their last write; otherwise
 * a directory whose regular files named `prefix`* go once keep_ms past their
 * last write.  Strings are copied by store_open. */
struct store_file_keep {
    const char *path;
    const char *prefix;
    int rotate;
    enum store_kind kind;      /* STORE_KIND_SMS_FILE or STORE_KIND_AUDIT_FILES */
    uint64_t keep_ms;
};
#define STORE_MAX_FILE_KEEPS 4

enum store_type { STORE_SQLITE = 0, STORE_POSTGRESQL };

struct store_opts {
    enum store_type type;      /* which backend the writer runs on */
    const char *path;          /* SQLite: database file; its directory is created 0700 */
    /* PostgreSQL: a libpq connection string or URI; the password apart
     * (NULL: libpq's own sources, e.g. ~/.pgpass); the node's name, written
     * beside each message. */
    const char *url;
    const char *password;
    const char *node;
    /* PostgreSQL: this node's heartbeat (table nodes) every heartbeat_ms
     * (0: STORE_HEARTBEAT_MS), with the version string and the ACK counts
     * given to store_set_acks. */
    uint64_t heartbeat_ms;
    const char *version;
    /* PostgreSQL, audit batches: how long a block claimed by this node stays
     * its own without being renewed (0 → STORE_BATCH_LEASE_MS). */
    uint32_t lease_ms;
    unsigned retention_days;   /* raw messages kept after delivery (caps keep_ms[RAW]) */
    /* Non-zero: keep_ms[] below says how long each kind is kept (ms, or
     * STORE_KEEP_FOREVER).  Zero: only raw bodies are purged, after
     * retention_days; every other kind is kept. */
    int use_keep;
    uint64_t keep_ms[STORE_KIND_N];
    struct store_file_keep files[STORE_MAX_FILE_KEEPS];
    size_t n_files;
    size_t queue_capacity;     /* 0 → STORE_QUEUE_CAPACITY */
    unsigned max_group;        /* most messages per transaction; 0 → STORE_MAX_GROUP */
    uint64_t min_free_disk_mb; /* below it, submissions fail with STORE_FAILED ("cannot store") */
    /* WAL frames at which a checkpoint starts; 0 → STORE_WAL_CKPT_PAGES.
     * Tests lower it so that the log restarts (and is reused) often. */
    unsigned wal_ckpt_pages;
};

/* One message to store.  Created by store_msg_new (which copies every byte it
 * is given), handed to store_submit (which takes ownership), and freed by the
 * store. */
struct store_msg;

struct store_msg_fields {
    const uint8_t *raw; size_t raw_len;           /* the message as received */
    const char *listener;                         /* listener name */
    const char *peer;                             /* "ip:port" */
    const uint8_t *send_app; size_t send_app_len; /* MSH-3 raw */
    const uint8_t *send_fac; size_t send_fac_len; /* MSH-4 raw */
    const uint8_t *control_id; size_t control_id_len; /* MSH-10 raw */
    const uint8_t *msg_type; size_t msg_type_len; /* MSH-9.1 */
    const uint8_t *trigger; size_t trigger_len;   /* MSH-9.2 */
    const uint8_t *version; size_t version_len;   /* MSH-12.1 */
    const char *ack_code;                         /* "AA", "AE", "CA" … */
    int64_t received_ms;                          /* wall clock */
    /* Mapped connector rows (already formatted, one per line, no header),
     * written in the same transaction; may be NULL/0. */
    const uint8_t *rows; size_t rows_len; unsigned row_count;
    /* The rows' layout (store_layout_register); 0: none recorded. */
    int64_t layout;
    /* Non-zero: the message is kept aside (quarantined) instead of queued
     * for the sinks; `reason` says why (no PHI). */
    int quarantined; const char *reason;
    /* Non-zero: accepted, but no rule selected it (`reason` says so). */
    int filtered;
    /* Non-zero: the message was answered AE/AR (ack_code says which).  It
     * is kept in the table `rejected` for the analyst, with `reason` and
     * the ERR content (err_code, table 0357, and err_where, e.g.
     * "PID^1^5"): never a claim, never seen by the sinks, never the
     * original of a duplicate.  Its result is STORE_STORED (kept) or
     * STORE_FAILED (not kept); the answer does not wait for it. */
    int rejected; int err_code; const char *err_where;
    /* Appointment facts the rules produced (SIU), written in the same
     * transaction into appt_facts for the SMS sink; NULL: none.  Stored for
     * quarantined messages too. */
    const struct store_appt_facts *appt;
    /* Content digest for duplicate detection (ingest: 64 bits of SHA-256
     * over hl7_msg_content).  Same key and same digest: a re-send. */
    uint64_t digest;
};

/* The appointment facts of one message, as the mapping rules produced them
 * at ingest.  The SMS sink reads them (store_sms_scan); nothing downstream
 * parses the message again. */
enum store_appt_text {
    STORE_APPT_ID = 0,       /* appointment id (SCH-2, else SCH-1) */
    STORE_APPT_FACILITY,     /* scheduling facility */
    STORE_APPT_EVENT,        /* trigger: S12, S13 … */
    STORE_APPT_LOCATION,
    STORE_APPT_PROVIDER,
    STORE_APPT_FIRST_NAME,   /* patient's first name (PHI) */
    STORE_APPT_PHONE,        /* as sent (PHI); the sink normalises it */
    STORE_APPT_CONSENT,      /* consent value as sent ("" when absent) */
    STORE_APPT_LANGUAGE,     /* PID-15 code as sent */
    STORE_APPT_LINK,         /* join link of a virtual visit (may carry PHI) */
    STORE_APPT_NTEXT
};
struct store_appt_facts {
    const char *text[STORE_APPT_NTEXT]; /* NUL-terminated UTF-8; NULL means "" */
    int64_t event_time;                 /* UTC s; -1 unknown */
    int64_t start_s;                    /* UTC s; -1 unknown */
    int64_t duration_min;               /* -1 unknown */
};

/* Returns a new message (owned by the caller until submitted) or NULL. */
struct store_msg *store_msg_new(const struct store_msg_fields *f);
void store_msg_free(struct store_msg *m);

enum store_status {
    STORE_STORED = 0,  /* committed durably */
    STORE_DUPLICATE,   /* already stored; ack_code is the original one */
    STORE_FAILED,      /* not stored (disk full, I/O error): answer AE */
};

struct store_result {
    uint64_t tag;          /* the producer's cookie from store_submit */
    enum store_status status; /* for a rejected message: STORED = kept */
    char ack_code[3];      /* original ACK code for STORE_DUPLICATE, else the submitted one */
    int64_t id;            /* row id of the stored (or original) message, 0 on failure */
    int key_reused;        /* STORE_STORED although its key was stored before with
                            * other content (a control id reused, not a re-send) */
};

/* Opens (creating if needed) the database, applies the schema, starts the
 * writer thread.  Returns NULL with a message in errbuf. */
struct store *store_open(const struct store_opts *o, char *errbuf, size_t errcap);
/* Drains the queue (every submitted message gets its result), stops the
 * writer and closes the database.  store_close(NULL) is a no-op. */
void store_close(struct store *s);

/* Free places in the submission queue.  The producer stops reading from its
 * sockets while this is 0 (back-pressure). */
size_t store_space(const struct store *s);
/* Queues a message; takes ownership of `m` in every case.  Returns 0, or -1
 * when the queue is full (m is then freed and nothing is stored). */
int store_submit(struct store *s, struct store_msg *m, uint64_t tag) __attribute__((warn_unused_result));
/* Group-commit hint from the producer: how many senders are active (each
 * with one message on its way).  When the writer finds fewer than this
 * queued, it waits up to STORE_GATHER_US for the rest before committing, so
 * senders that wait for each ACK share one fsync.  0 or 1: never wait. */
void store_set_expected_group(struct store *s, unsigned n);

/* An eventfd that becomes readable when results are waiting. */
int store_event_fd(const struct store *s);
/* Moves up to `max` results into `out` (in submission order) and returns
 * how many; clears the eventfd. */
size_t store_take_results(struct store *s, struct store_result *out, size_t max);

/* Retention as the last housekeeping step found it. */
struct store_retention_report {
    int64_t checked_ms;                  /* wall clock of that step; 0: not run yet */
    uint64_t keep_ms[STORE_KIND_N];      /* configured, STORE_KEEP_FOREVER: kept */
    int64_t oldest_ms[STORE_KIND_N];     /* oldest record still held, 0: none */
    uint64_t purged[STORE_KIND_N];       /* records (files) purged since open */
};

/* Writer figures since open (any thread; approximate). */
struct store_stats {
    uint64_t commits, messages, duplicates, failures;
    uint64_t rejected;           /* AE/AR messages kept (not counted in messages) */
    uint64_t control_id_reused;  /* stored although their key was seen with other content */
    uint64_t max_group_seen;
    uint64_t commit_ns_total;
    /* PostgreSQL: 1 while the writer has no connection to the server (every
     * message is failed, nothing claimed, until it reconnects); times it
     * connected again.  Always 0 on SQLite. */
    int unavailable;
    uint64_t reconnects;
    struct store_retention_report retention;
};
void store_get_stats(const struct store *s, struct store_stats *out);

/* `hl7bridge check` for a PostgreSQL store: connects with o->url and
 * o->password, reads the schema version and says what is wrong (cannot
 * reach the server, authentication, a schema newer than this build).
 * Returns 0 with a summary in info (no password in it), or -1 with the
 * reason in errbuf.  Any thread; blocks up to libpq's connect_timeout. */
int store_check_postgresql(const struct store_opts *o, char *info, size_t infocap, char *errbuf,
                           size_t errcap) __attribute__((warn_unused_result));

/* ---- cluster (PostgreSQL) ------------------------------------------------ */

#define STORE_HEARTBEAT_MS   5000
#define STORE_CLUSTER_MAX    64     /* nodes shown; more are counted in the totals only */
#define STORE_DOWN_BEATS     3      /* a node is down after this many missed heartbeats */

/* One node's last heartbeat as the server has it.  age_ms is measured on
 * the server's clock (no skew between nodes); up = age_ms <=
 * STORE_DOWN_BEATS * interval_ms. */
struct store_node {
    char name[64];
    char version[32];
    int64_t started_ms, age_ms, interval_ms, pid;
    uint64_t aa, ae, ar, stored;
    int up;
};

/* The ACKs this node has sent (AA with CA, AE with CE, AR with CR), for its
 * next heartbeat.  Any thread; a no-op on SQLite. */
void store_set_acks(struct store *s, uint64_t aa, uint64_t ae, uint64_t ar);

/* The nodes as the last heartbeat read them (up to cap); 0 on SQLite or
 * before the first heartbeat.  Any thread. */
size_t store_cluster_nodes(const struct store *s, struct store_node *out, size_t cap);

/* `hl7bridge stats --cluster`: reads the nodes table through its own
 * connection (o->url, o->password).  Returns how many nodes there are
 * (out holds the first cap of them, by name), -1 with the reason in
 * errbuf.  Any thread. */
long store_cluster_read(const struct store_opts *o, struct store_node *out, size_t cap,
                        char *errbuf, size_t errcap) __attribute__((warn_unused_result));

/* Messages submitted whose results are not yet published (still queued or
 * being written).  A draining producer keeps taking results until this and
 * its own backlog reach 0, then calls store_close.  Producer thread. */
size_t store_pending(const struct store *s);

/* How long (ms, on clock_mono_ms) the writer has been on its current piece
 * of work — one group commit or one housekeeping step — at `now_ms`; 0 while
 * it waits for work.  A writer wedged in a commit (a lock never released, a
 * hung disk) shows a growing figure; the service watchdog stops on it.  Any
 * thread. */
uint64_t store_writer_stalled_ms(const struct store *s, uint64_t now_ms);

/* How often the writer's housekeeping looks for records past retention: a
 * tenth of the shortest retention configured, between 1 s and a minute, so
 * a record is never kept much longer than its retention (a minute's
 * retention looked at once a minute kept records up to twice as long). */
uint64_t store_housekeep_interval_ms(const struct store_opts *o);

/* Asks the writer to run its housekeeping step (retention) at its next turn
 * instead of waiting for the periodic one.  Any thread. */
void store_request_housekeeping(struct store *s);

/* An online, consistent copy of the store at `src_path` into the new file
 * `dst_path` (never overwritten; mode 0600) while the daemon keeps writing:
 * one snapshot through SQLite's backup API, made a self-contained file,
 * quick_check'd, fsync'd, then named.  Fills *out.  Returns 0, or -1 with a
 * message in errbuf (nothing is left at dst_path).  CLI, any thread. */
struct store_backup_info {
    uint64_t bytes;       /* size of the copy */
    uint64_t messages;    /* rows in its messages table */
};
int store_backup(const char *src_path, const char *dst_path, struct store_backup_info *out,
                 char *errbuf, size_t errcap) __attribute__((warn_unused_result));

/* Retention of a store read from its file through a read-only connection
 * (a stopped daemon: `hl7bridge stats`), as the housekeeping step would
 * report it: keep_ms from `o` (its path, retention and files), the oldest
 * record still held per kind, checked_ms 0 and purged 0 (not known
 * offline).  Any thread; 0, or -1 with a message in errbuf. */
int store_query_retention(const struct store_opts *o, struct store_retention_report *out,
                          char *errbuf, size_t errcap) __attribute__((warn_unused_result));

/* Figures read through a separate read-only connection (CLI, tests).  Any
 * thread; returns 0, or -1 with a message in errbuf. */
struct store_counts {
    uint64_t messages;     /* every stored message, quarantined ones included */
    uint64_t quarantined;
    uint64_t undelivered;  /* not quarantined and delivered_ms still NULL */
    uint64_t purged;       /* raw body already removed by retention */
    uint64_t rows;         /* connector rows */
};
int store_query_counts(const char *path, struct store_counts *out, char *errbuf, size_t errcap)
    __attribute__((warn_unused_result));

/* ==== the message browser (store/browse.c) ================================
 *
 * Metadata searches over the journal (`messages`) and the rejected messages
 * (`rejected`, see migration 4), one message with its body, and journal
 * entries the daemon or the CLI adds itself (reprocessed rows, reveal
 * access records).  Browser ids are text: "17" for journal message 17,
 * "R3" for rejected message 3.
 *
 * Status of a message (one of):
 *   accepted     answered AA/CA, rows delivered (or none were due)
 *   undelivered  answered AA/CA, rows not yet delivered
 *   filtered     answered AA/CA, no rule selected it
 *   quarantined  answered AA/CA, kept aside by a `quarantine` rule
 *   rejected     answered AE/AR (or CE/CR), kept with reason and ERR
 * The filter `duplicate` selects accepted messages that were re-sent and
 * answered as duplicates (dup_count > 0).
 *
 * Threads: a struct store_browser is one connection used by one thread;
 * read-only ones may run in another process beside the daemon (WAL). */
struct store_browser; /* opaque */

enum store_browse_status {
    STORE_BROWSE_ANY = 0, STORE_BROWSE_ACCEPTED, STORE_BROWSE_DUPLICATE, STORE_BROWSE_REJECTED,
    STORE_BROWSE_QUARANTINED, STORE_BROWSE_FILTERED, STORE_BROWSE_UNDELIVERED
};
/* "accepted", … → the enum; -1 for an unknown word. */
int store_browse_status_parse(const char *s);

struct store_browse_filter {
    const char *control_id;          /* MSH-10 exactly; NULL: any */
    const char *send_app, *send_fac; /* first component of MSH-3 / MSH-4; NULL: any */
    const char *msg_type, *trigger;  /* MSH-9.1 / MSH-9.2; NULL: any */
    int64_t since_ms, until_ms;      /* received in [since, until); 0: open */
    enum store_browse_status status;
    int received_only;               /* skip entries made by reprocess / reveal */
    uint64_t limit;                  /* newest first; 0: no limit */
};

#define STORE_BROWSE_ID_MAX 24

/* One message's metadata.  Never the body; `reason` and `err_where` never
 * hold message content (the ingest writes names of columns and paths). */
struct store_browse_entry {
    char id[STORE_BROWSE_ID_MAX];
    int64_t received_ms;
    char listener[64], peer[64];
    char send_app[128], send_fac[128]; /* as received (all components) */
    char control_id[200];
    char msg_type[16], trigger[16], version[16];
    char ack[3];
    const char *status;            /* static: "accepted", "rejected", … */
    char reason[256];
    int err_code;                  /* table 0357, rejected only */
    char err_where[32];            /* "PID^1^5", rejected only */
    int64_t rows;                  /* connector rows stored with it, -1 unknown */
    int64_t delivered_ms;          /* 0: not (yet) delivered */
    uint64_t dup_count;
    int64_t last_dup_ms;
    char made_by[16];              /* "" received; "reprocess" | "reveal" */
    char origin[STORE_BROWSE_ID_MAX];      /* for made_by: the message it came from */
    char reprocessed[STORE_BROWSE_ID_MAX]; /* newest reprocess entry made of it, "" none */
    int has_raw;                   /* its body is still stored */
};

/* Opens a connection (read-only unless `writable`) to the store `o` names
 * (its path, or its url on PostgreSQL, where it shows every node's
 * messages and cannot be writable yet), which store_open has created and
 * migrated.  Nothing of `o` is kept.  NULL with a message in errbuf. */
struct store_browser *store_browser_open(const struct store_opts *o, int writable,
                                         char *errbuf, size_t errcap);
void store_browser_close(struct store_browser *b); /* NULL is a no-op */

/* Calls cb for each message matching f, newest first (received time), up to
 * f->limit.  A non-zero return from cb stops and is returned.  0 / -1 with
 * errbuf. */
int store_browser_list(struct store_browser *b, const struct store_browse_filter *f,
                       int (*cb)(void *ud, const struct store_browse_entry *e), void *ud,
                       char *errbuf, size_t errcap) __attribute__((warn_unused_result));

/* One message by browser id; with `raw` non-NULL its body is appended
 * (nothing when purged).  1 found, 0 not found (or a malformed id),
 * -1 error with errbuf. */
int store_browser_get(struct store_browser *b, const char *id, struct store_browse_entry *out,
                      struct buf *raw, char *errbuf, size_t errcap)
    __attribute__((warn_unused_result));

/* The id of an accepted journal message with this sender and control id
 * (received, not made by the daemon), or 0.  -1 on error. */
int64_t store_browser_accepted_key(struct store_browser *b, const char *send_app,
                                   const char *send_fac, const char *control_id)
    __attribute__((warn_unused_result));

/* A journal entry made by the daemon or the CLI (writable connection):
 * made_by "reprocess" or "reveal", origin the browser id it comes from,
 * the given type/trigger, no body, ack "" (so it is never taken for a
 * received message, by the SMS worker either), and `rows` (formatted, one
 * per line) appended after every row already committed, in one durable
 * transaction: the audit sink delivers them like any other rows.
 * Returns the new message id, or -1 with errbuf. */
struct store_journal_entry {
    const char *made_by, *origin;
    const char *listener, *peer;   /* who made it ("reprocess", "local") */
    const char *send_app, *send_fac, *msg_type, *trigger, *version;
    const char *reason;            /* no PHI */
    const uint8_t *rows; size_t rows_len; unsigned row_count;
    int64_t layout;                /* the rows' layout (store_layout_register); 0: none */
    int64_t now_ms;
};
int64_t store_browser_add(struct store_browser *b, const struct store_journal_entry *e,
                          char *errbuf, size_t errcap) __attribute__((warn_unused_result));
/* ==== end of the message browser ========================================= */

/* The layout rows are formatted in: their header line (with its line end)
 * and the file extension of a block of them.  Returns the id of that
 * layout in the store `o` names (its path, or its url on PostgreSQL, where
 * every node with the same rules gets the same id), adding it when new;
 * rows then carry it (store_msg_fields.layout) and each block of rows is
 * written under its own layout's header.  Opens its own connection: main
 * thread, at start-up and on reload.  0 / -1 with a message in errbuf. */
int store_layout_register(const struct store_opts *o, const char *header, const char *file_ext,
                          int64_t *id, char *errbuf, size_t errcap)
    __attribute__((warn_unused_result));

/* ==== audit batches (store/batch.c) ======================================
 *
 * The audit sink groups connector rows into batches ("blocks") and moves
 * each through open → sealed → uploading → done | failed.  Every state
 * change is one durable transaction on the caller's own connection, so a
 * restart resumes where it stopped: a batch found `uploading` at open time
 * was possibly received and is sent again (counted in `resends`).
 *
 * On SQLite a batch owns the rows with ids in [first_row_id, last_row_id]
 * (rows are append-only and their ids follow commit order).  When it is
 * done, the messages whose rows all lie in done batches are delivered: the
 * batch records their ids as a range (table deliveries; the view
 * message_delivery gives each message's delivered_ms).
 *
 * On PostgreSQL (store/pg_batch.c) several nodes share the batches: ids
 * do not follow commit order across nodes, so a batch owns the rows that
 * carry its id (rows.batch_id), set once, under a cluster-wide lock, by
 * whichever node's batcher runs; only sealed batches are written (the
 * open batch is the rows without one).  A claim takes a sealed batch, or
 * one whose lease has run out (its node died mid-upload), with FOR UPDATE
 * SKIP LOCKED and gives it to this node (owner = node name) until
 * lease_until; the sender renews the lease of what it has in flight.
 * done/retry/fail apply only to a batch this node still holds.  On SQLite
 * the lease calls do nothing: one node owns the file.
 *
 * Threads: a struct store_batches is one database connection, used by one
 * thread at a time (the sink thread).  The path-based helpers (redrive,
 * list) open their own SQLite connection and may run in another process
 * while the daemon runs. */

struct store_batches; /* opaque */

enum store_batch_state {
    STORE_BATCH_OPEN = 0,
    STORE_BATCH_SEALED,
    STORE_BATCH_UPLOADING,
    STORE_BATCH_DONE,
    STORE_BATCH_FAILED,
    STORE_BATCH_NSTATES
};
/* "open", "sealed", … as stored; NULL for an unknown value. */
const char *store_batch_state_name(enum store_batch_state s);

/* When a batch is sealed (the first limit reached).  The caller clamps
 * them to the connector's limits. */
struct store_batch_limits {
    uint64_t max_rows;    /* rows per batch, >= 1 */
    uint64_t max_bytes;   /* bytes of rows (each with its '\n'), >= 1 */
    uint64_t max_age_ms;  /* since the batch's first row */
    size_t scan_chunk;    /* rows looked at per step; 0 → 20000 */
};

struct store_batch {
    int64_t id;
    enum store_batch_state state;
    int64_t created_ms, sealed_ms, done_ms, next_ms;
    int64_t first_row_id, last_row_id;
    uint64_t row_count, bytes;
    unsigned attempts, resends, redrives;
    int last_status;          /* HTTP status of the last attempt, 0 = none/no answer */
    char last_error[256];     /* "" when none; never PHI */
    char file_name[128];      /* "" until written/uploaded */
    int64_t layout;           /* row layout of every row in it; 0: none recorded */
};

/* A claimed batch's lease on PostgreSQL when store_opts.lease_ms is 0. */
#define STORE_BATCH_LEASE_MS 60000

/* Opens a connection to an existing store (store_open has applied the
 * schema) of either type: o->path on SQLite; o->url, o->password, o->node
 * and o->lease_ms on PostgreSQL.  Nothing of `o` is kept.  Returns NULL
 * with a message in errbuf. */
struct store_batches *store_batches_open(const struct store_opts *o, char *errbuf, size_t errcap);
/* store_batches_close(NULL) is a no-op. */
void store_batches_close(struct store_batches *sb);
/* The connection's last error text (for logs). */
const char *store_batches_errmsg(const struct store_batches *sb);

/* Start-up recovery: every `uploading` batch of this node (on SQLite: every
 * one; on PostgreSQL: those this node name claimed before it stopped, not
 * those other live nodes hold) goes back to `sealed` with resends+1 (it is
 * sent again).  *resent gets how many.  0 / -1. */
int store_batches_recover(struct store_batches *sb, uint64_t *resent)
    __attribute__((warn_unused_result));

/* Clean stop, after the sink abandoned its uploads: hands this node's
 * `uploading` blocks back at once.  On PostgreSQL they go back to `sealed`
 * with resends+1, so another node sends them now instead of after the
 * lease; on SQLite nothing is done (no other node waits for them; the next
 * start's recovery sends them).  *released gets how many.  0 / -1. */
int store_batches_release(struct store_batches *sb, uint64_t *released)
    __attribute__((warn_unused_result));

/* One batcher step: appends rows not yet in a batch to the open batch,
 * sealing it whenever the next row would pass max_rows or max_bytes or has
 * another layout than the batch (a block has one header), and
 * seals it by age once every committed row has been looked at.  Writes
 * what changed in one transaction.  Returns 0 / -1 (nothing changed). */
struct store_batch_scan {
    uint64_t rows_added;   /* rows that joined a batch in this step */
    uint64_t sealed;       /* batches sealed in this step */
    int caught_up;         /* 1 when no committed row is left unbatched */
};
int store_batches_scan(struct store_batches *sb, const struct store_batch_limits *l,
                       int64_t now_ms, struct store_batch_scan *out)
    __attribute__((warn_unused_result));

/* Takes the oldest sealed batch whose next_ms has come (on PostgreSQL also
 * an `uploading` one whose lease ran out: resends+1) and makes it
 * `uploading` (attempts+1) by this node, durably, before the caller sends
 * it.  Returns 1 with *out filled, 0 when there is none, -1 on error. */
int store_batches_claim(struct store_batches *sb, int64_t now_ms, struct store_batch *out)
    __attribute__((warn_unused_result));

/* Extends the lease of batches ids[0..n) this node is sending (PostgreSQL;
 * nothing on SQLite).  Call it well within the lease (a third of it).
 * 0 / -1. */
int store_batches_renew(struct store_batches *sb, const int64_t *ids, size_t n)
    __attribute__((warn_unused_result));
/* How often a sender should renew (ms): a third of the lease. */
uint32_t store_batches_renew_ms(const struct store_batches *sb);

/* Appends the batch's rows to `out`, each followed by '\n' (the rows were
 * stored split at '\n', so this rebuilds the formatted text byte for
 * byte).  *rows gets the number of rows.  0, or -1 (error or `out` full). */
int store_batches_read_rows(struct store_batches *sb, const struct store_batch *b,
                            struct buf *out, uint64_t *rows)
    __attribute__((warn_unused_result));

/* The header line and file extension of layout `id` (store_layout_register):
 * the header is appended to `out` (no NUL), the extension copied into ext.
 * 1 found, 0 unknown id, -1 error. */
int store_batches_layout(struct store_batches *sb, int64_t id, struct buf *out, char *ext,
                         size_t extcap) __attribute__((warn_unused_result));

/* uploading → done: records the status, a summary of the answer (may be
 * NULL) and the file name, and marks delivered the messages whose rows
 * are now all in done batches (*marked gets how many).  0 / -1. */
int store_batches_done(struct store_batches *sb, int64_t id, int status, const char *summary,
                       const char *file_name, int64_t now_ms, uint64_t *marked)
    __attribute__((warn_unused_result));
/* uploading → sealed, to be tried again from next_ms. */
int store_batches_retry(struct store_batches *sb, int64_t id, int status, const char *error,
                        int64_t next_ms) __attribute__((warn_unused_result));
/* uploading → failed: kept until redriven, never counted as delivered. */
int store_batches_fail(struct store_batches *sb, int64_t id, int status, const char *error)
    __attribute__((warn_unused_result));

/* Figures for stats and back-pressure.  `with_done` also counts the done
 * batches (a scan of their index entries: call it rarely). */
struct store_batch_counts {
    uint64_t batches[STORE_BATCH_NSTATES];
    uint64_t rows_in_batches;  /* rows of batches not done (open, sealed, uploading, failed) */
    uint64_t rows_unbatched;   /* committed rows not yet in any batch */
};
int store_batches_counts(struct store_batches *sb, int with_done, struct store_batch_counts *out)
    __attribute__((warn_unused_result));
/* One batch by id: 1 found, 0 not found, -1 error. */
int store_batches_get(struct store_batches *sb, int64_t id, struct store_batch *out)
    __attribute__((warn_unused_result));

/* `hl7bridge redrive`: failed → sealed (next_ms 0, redrives+1) for batch
 * `id`, or for every failed batch when id is 0.  Calls `cb` (may be NULL)
 * with each batch before the change.  *n gets how many were re-queued.
 * `o` names the store (its path, or its url on PostgreSQL).  Returns 0, or
 * -1 with a message in errbuf. */
int store_batches_redrive(const struct store_opts *o, int64_t id,
                          void (*cb)(void *ud, const struct store_batch *b), void *ud,
                          uint64_t *n, char *errbuf, size_t errcap)
    __attribute__((warn_unused_result));

/* `hl7bridge redrive --list`: every failed batch, in id order, through a
 * read-only connection (none when the store never made a batch).  *n gets
 * how many.  0, or -1 with a message in errbuf. */
int store_batches_list_failed(const struct store_opts *o,
                              void (*cb)(void *ud, const struct store_batch *b), void *ud,
                              uint64_t *n, char *errbuf, size_t errcap)
    __attribute__((warn_unused_result));

/* ==== daily totals (store/daily.c) =======================================
 * Per local day, listener and sender: messages received, duplicates and
 * ACKs by code, kept across restarts ("how many NACKs did Epic ADT get
 * yesterday").  The daemon adds what it counted every few seconds and at
 * shutdown.  These calls wait on the database through their own
 * connection: call them from a monitor or CLI thread, never from the
 * network loop.  On SQLite the table is created by store_daily_open when
 * missing; on PostgreSQL it is one table for every node, each adding what
 * it counted (the cluster's totals). */
struct store_daily; /* opaque */

struct store_daily_row {
    char day[11];             /* "YYYY-MM-DD" */
    const char *listener;     /* borrowed */
    const char *sender;       /* "APP^FACILITY" (names of systems, no PHI); borrowed */
    uint64_t received, duplicates;
    uint64_t acks[6];         /* AA AE AR CA CE CR */
};

/* Opens its own connection to an existing store (after store_open): o's
 * path, or o's url on PostgreSQL.  Nothing of `o` is kept.  Returns NULL
 * with a message in errbuf. */
struct store_daily *store_daily_open(const struct store_opts *o, char *errbuf, size_t errcap);
/* Adds the rows to the totals in one transaction (waits a few seconds at
 * most for the write lock).  Returns 0, or -1 with errbuf (nothing
 * added). */
int store_daily_add(struct store_daily *d, const struct store_daily_row *rows, size_t n,
                    char *errbuf, size_t errcap) __attribute__((warn_unused_result));
void store_daily_close(struct store_daily *d);
/* Calls cb for every row from `from_day` on (NULL: all), ordered by day,
 * listener, sender, through a read-only connection.  A store without the
 * table has no rows.  Returns 0, or -1 with errbuf. */
int store_daily_query(const struct store_opts *o, const char *from_day,
                      void (*cb)(void *ud, const struct store_daily_row *row), void *ud,
                      char *errbuf, size_t errcap) __attribute__((warn_unused_result));
/* ==== end of daily totals ================================================= */

/* ==== upload checkpoints (store/upload.c) =================================
 * Which blocks of a prepared connector file (`hl7bridge upload`, the
 * inputs.files watcher) the connector accepted: a file is known by the
 * SHA-256 of its content, its block size fixed at the first run.  Own
 * tables, own connection; one thread at a time.  A block that failed for
 * good is kept with its content (header and rows, as sent) so `hl7bridge
 * redrive` can send it without the file; the kept content holds PHI and is
 * purged under store.retention.upload_blocks (store/retention.c), counted
 * from when it was first kept.  Delivering the block (a rerun or redrive)
 * deletes the kept copy in the same transaction. */
struct store_upload; /* opaque */
struct store_upload_file {
    int64_t id;
    uint64_t block_rows, blocks; /* as fixed at the first run */
    uint64_t blocks_done;
    int64_t done_ms;             /* every block delivered; 0: not yet */
};
/* Opens (creating the file and tables if needed).  NULL with err. */
struct store_upload *store_upload_open(const char *path, char *err, size_t errcap);
void store_upload_close(struct store_upload *u); /* NULL is a no-op */
const char *store_upload_errmsg(const struct store_upload *u);
/* Finds the file's checkpoint by digest or creates it.  0 / -1. */
int store_upload_begin(struct store_upload *u, const char *digest, const char *name,
                       uint64_t bytes, uint64_t rows, uint64_t block_rows, int64_t now_ms,
                       struct store_upload_file *out) __attribute__((warn_unused_result));
/* Block `seq` (0-based): 1 delivered, 0 not, -1 error.  *kept_id (may be
 * NULL) gets the id of its kept copy, 0 when none. */
int store_upload_block_done(struct store_upload *u, int64_t id, uint64_t seq, int64_t *kept_id)
    __attribute__((warn_unused_result));
/* A block to keep for redrive: its content as sent (borrowed) and where
 * it came from (for the listing). */
struct store_upload_keep {
    const uint8_t *content;
    size_t len;
    const char *file_name;       /* the block's name on the wire */
    uint64_t rows, first_line, last_line;
};
/* Records a block's outcome durably, in one transaction: done (the kept
 * copy, if any, deleted), or failed with status/error — and kept when
 * `keep` is not NULL (a block kept before keeps its first keep time).
 * *kept_id (may be NULL) gets the kept copy's id, 0 when none.  0 / -1. */
int store_upload_block_set(struct store_upload *u, int64_t id, uint64_t seq, int done, int status,
                           const char *error, const struct store_upload_keep *keep,
                           int64_t now_ms, int64_t *kept_id) __attribute__((warn_unused_result));
/* Every block delivered. */
int store_upload_finish(struct store_upload *u, int64_t id, int64_t now_ms)
    __attribute__((warn_unused_result));

/* A kept block as listed (no content). */
struct store_upload_kept {
    int64_t id, upload_id;
    uint64_t seq, blocks, rows, first_line, last_line;
    unsigned attempts;
    int last_status;             /* 0: no answer */
    int64_t kept_ms;
    char last_error[256];        /* never PHI */
    char name[256];              /* the file as named when uploaded */
    char file_name[128];         /* the block's name on the wire */
};
/* Kept blocks in id order (`id` 0), or the one with that id.  Calls cb for
 * each; *n gets how many.  0 / -1. */
int store_upload_kept_list(struct store_upload *u, int64_t id,
                           void (*cb)(void *ud, const struct store_upload_kept *k), void *ud,
                           uint64_t *n) __attribute__((warn_unused_result));
/* The content of kept block `id` appended to `out`: 1, 0 unknown id, -1
 * error (or `out` full). */
int store_upload_kept_content(struct store_upload *u, int64_t id, struct buf *out)
    __attribute__((warn_unused_result));
/* After a redrive of kept block k: delivered → the block is done, its
 * kept copy deleted and, when it was the last one missing, the file done,
 * all in one transaction; not delivered → its attempts, status and error
 * recorded, still kept.  0 / -1. */
int store_upload_redriven(struct store_upload *u, const struct store_upload_kept *k, int delivered,
                          int status, const char *error, int64_t now_ms)
    __attribute__((warn_unused_result));
/* ==== end of upload checkpoints =========================================== */

/* ==== SMS schedule (store/sms.c) ==========================================
 *
 * The SMS sink's own tables, created with CREATE TABLE IF NOT EXISTS on its
 * own connection (schema version in sms_state, independent of the journal's
 * migrations):
 *   sms_appointments  one row per (facility, appointment id): the state the
 *                     latest event gave it and the facts texts are made of;
 *                     personal fields are purged after the appointment;
 *   sms_outbox        one row per text: due time, rendered text, E.164
 *                     number, repeatability id / first-sent date, state
 *                     pending → sent | failed | skipped; UNIQUE per
 *                     (appointment, event key) so an event is texted once;
 *   sms_state         the SMS tables' schema version;
 *   sms_counters      named counters (skip reasons, sent, failed …).
 * Its input is the journal's appt_facts table: one row per stored message
 * with appointment facts, written by the store writer in the message's own
 * transaction.  The worker applies facts to the tables above and deletes
 * them in one transaction, so a restart resumes exactly where it stopped
 * and a fact's personal fields live only until the worker has read them.
 *
 * Threads: a struct store_sms is one SQLite connection used by one thread
 * (the SMS worker).  Strings in the structs are NUL-terminated UTF-8, cut to
 * their array size. */

struct store_sms; /* opaque */

#define STORE_SMS_KEY_MAX   128   /* facility, appointment id */
#define STORE_SMS_FACT_MAX  256   /* location, provider, first name */
#define STORE_SMS_PHONE_MAX 24    /* "+" and up to 15 digits */
#define STORE_SMS_TEXT_MAX  8200  /* 2,048 characters of UTF-8 */
#define STORE_SMS_LANG_MAX  32    /* PID-15 code */
#define STORE_SMS_LINK_MAX  1024  /* join link */

enum store_sms_appt_state { STORE_SMS_BOOKED = 0, STORE_SMS_CANCELLED, STORE_SMS_NOSHOW };

struct store_sms_appt {
    char facility[STORE_SMS_KEY_MAX];
    char appt_id[STORE_SMS_KEY_MAX];
    enum store_sms_appt_state state;
    int64_t event_time;          /* latest applied event time, UTC s */
    int64_t last_msg_id;         /* journal id of the message that set it */
    char fingerprint[65];        /* digest of the applied facts; "" once purged */
    int64_t start_s;             /* UTC s, 0 when unknown */
    int64_t duration_min;
    char location[STORE_SMS_FACT_MAX];
    char provider[STORE_SMS_FACT_MAX];
    char first_name[STORE_SMS_FACT_MAX];
    char phone[STORE_SMS_PHONE_MAX]; /* E.164 or "" */
    int consent;
    char language[STORE_SMS_LANG_MAX]; /* PID-15 code as sent, "" when none */
    char link[STORE_SMS_LINK_MAX];     /* the rules' join link, "" when none */
    int64_t purge_after_s;       /* personal fields go at this time */
    int purged;
};

enum store_sms_text_state {
    STORE_SMS_PENDING = 0, STORE_SMS_SENT, STORE_SMS_FAILED, STORE_SMS_SKIPPED
};

struct store_sms_text {
    int64_t id;                  /* set by store_sms_claim */
    char facility[STORE_SMS_KEY_MAX];
    char appt_id[STORE_SMS_KEY_MAX];
    char kind[16];               /* scheduled | updated | cancelled | reminder */
    char event_key[80];          /* unique per appointment */
    int64_t due_s;
    int64_t start_s;             /* the appointment start it announces */
    char text[STORE_SMS_TEXT_MAX];
    char to[STORE_SMS_PHONE_MAX];
    char request_id[37];         /* repeatabilityRequestId */
    char first_sent[40];         /* repeatabilityFirstSent, "" until the first attempt */
    unsigned segments;
    char encoding[8];            /* "GSM-7" | "UCS-2" */
    enum store_sms_text_state state;
    unsigned attempts;
    int64_t next_ms;
};

/* A text claimed by a node on PostgreSQL stays its own this long when
 * store_opts.lease_ms is 0. */
#define STORE_SMS_LEASE_MS 60000u

/* SQLite (o->path): opens a connection to the store file (store_open has
 * created it) and creates the SMS tables if needed.  PostgreSQL (o->url,
 * o->password, o->node, o->lease_ms): connects to the database whose
 * migrations made the tables; facts are applied by one node at a time,
 * and a text claimed by this node is held for o->lease_ms (renewed by
 * nothing: it must outlast one send), after which another node may send
 * it again with the same repeatability id and first-sent date.  Nothing
 * of `o` is kept.  NULL with a message in errbuf. */
struct store_sms *store_sms_open(const struct store_opts *o, char *errbuf, size_t errcap);
void store_sms_close(struct store_sms *ss); /* NULL is a no-op */
const char *store_sms_errmsg(const struct store_sms *ss);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK on the connection. */
int store_sms_begin(struct store_sms *ss) __attribute__((warn_unused_result));
int store_sms_commit(struct store_sms *ss) __attribute__((warn_unused_result));
void store_sms_rollback(struct store_sms *ss);

/* 1 when appointment facts wait in the journal, 0 none, -1 error (a read
 * outside any transaction: lets the worker skip its write transaction when
 * nothing new was committed). */
int store_sms_facts_waiting(struct store_sms *ss) __attribute__((warn_unused_result));

/* One row of appt_facts: a message's facts as ingest stored them.  Strings
 * are cut to their array size. */
struct store_sms_fact {
    int64_t id, msg_id, received_ms;
    char facility[STORE_SMS_KEY_MAX], appt_id[STORE_SMS_KEY_MAX];
    char event[16];
    int64_t event_time, start_s, duration_min; /* -1 when unknown */
    char location[STORE_SMS_FACT_MAX], provider[STORE_SMS_FACT_MAX];
    char first_name[STORE_SMS_FACT_MAX];
    char phone[64];
    char consent[64];
    char language[STORE_SMS_LANG_MAX];
    char link[STORE_SMS_LINK_MAX];
};
/* Calls `cb` for up to `max` stored facts in id order, then deletes the
 * ones handed over (their personal fields are not kept once read).  `f` is
 * the callee's to read during the call only.  A non-zero return from cb
 * stops the scan, deletes nothing and is returned.  *n gets how many were
 * handed over.  Call inside a transaction.  Returns 0 or -1. */
typedef int (*store_sms_fact_cb)(void *ud, const struct store_sms_fact *f);
int store_sms_scan(struct store_sms *ss, unsigned max, store_sms_fact_cb cb, void *ud,
                   unsigned *n) __attribute__((warn_unused_result));

/* 1 found, 0 none, -1 error. */
int store_sms_appt_get(struct store_sms *ss, const char *facility, const char *appt_id,
                       struct store_sms_appt *out) __attribute__((warn_unused_result));
/* Inserts or replaces the row. */
int store_sms_appt_put(struct store_sms *ss, const struct store_sms_appt *a)
    __attribute__((warn_unused_result));

/* Queues a text (state pending, next_ms = due).  1 added, 0 when the
 * appointment already has a text with this event key, -1 error. */
int store_sms_text_add(struct store_sms *ss, const struct store_sms_text *t)
    __attribute__((warn_unused_result));

/* Pending texts of one appointment that are no longer wanted:
 * STORE_SMS_DROP_REMINDERS deletes pending reminders never attempted (their
 * event keys become free for a new plan); STORE_SMS_DROP_CONFIRMATIONS marks
 * never-attempted confirmations skipped; STORE_SMS_DROP_ALL marks every
 * pending text skipped.  *n (optional) gets how many. */
enum store_sms_drop { STORE_SMS_DROP_REMINDERS = 1, STORE_SMS_DROP_CONFIRMATIONS = 2,
                      STORE_SMS_DROP_ALL = 4 };
int store_sms_drop_pending(struct store_sms *ss, const char *facility, const char *appt_id,
                           unsigned what, const char *reason, unsigned *n)
    __attribute__((warn_unused_result));

/* Takes the earliest pending text whose next_ms has come: attempts+1 and
 * first_sent fixed to `first_sent_now` if it was still empty, durably, before
 * the caller sends it.  1 with *out, 0 none due, -1 error. */
int store_sms_claim(struct store_sms *ss, int64_t now_ms, const char *first_sent_now,
                    struct store_sms_text *out) __attribute__((warn_unused_result));
/* pending → sent | failed | skipped; the text and number are cleared.
 * `status` is the provider's HTTP status (0 none); strings may be NULL. */
int store_sms_finish(struct store_sms *ss, int64_t id, enum store_sms_text_state state, int status,
                     const char *error, const char *message_id, int64_t now_ms)
    __attribute__((warn_unused_result));
/* Stays pending, tried again from next_ms. */
int store_sms_retry(struct store_sms *ss, int64_t id, int status, const char *error,
                    int64_t next_ms) __attribute__((warn_unused_result));

/* Retention: pending texts of appointments past purge_after_s are skipped
 * ("expired"); appointments past purge_after_s, or cancelled / no-show with
 * nothing pending, lose their phone number and personal fields.  *appts
 * (optional) gets how many were purged. */
int store_sms_purge(struct store_sms *ss, int64_t now_s, unsigned *appts)
    __attribute__((warn_unused_result));

int store_sms_count_add(struct store_sms *ss, const char *name, int64_t n)
    __attribute__((warn_unused_result));
/* Calls cb for every counter. */
int store_sms_counters(struct store_sms *ss, void (*cb)(void *ud, const char *name, uint64_t n),
                       void *ud) __attribute__((warn_unused_result));
/* Pending texts, and how many of them are reminders. */
int store_sms_pending(struct store_sms *ss, uint64_t *texts, uint64_t *reminders)
    __attribute__((warn_unused_result));
/* Clean stop: texts this node claimed and did not finish are free for any
 * node at once (PostgreSQL; their repeatability id stays, so a text that
 * did reach the provider is not delivered twice).  Nothing on SQLite.
 * *released gets how many.  Only the SMS sink calls it: another process
 * under the same node name would free the running daemon's claims. */
int store_sms_release(struct store_sms *ss, uint64_t *released)
    __attribute__((warn_unused_result));
/* ==== end of SMS schedule ================================================= */

#endif
