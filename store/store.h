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
 * control id) is already stored is not stored again; its result carries the
 * ACK code recorded the first time.
 *
 * Threads: store_open/store_close from the main thread; store_submit,
 * store_space, store_take_results and store_event_fd from the one producer
 * thread; the store_query_* helpers from any thread (own connection). */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

struct store; /* opaque */

struct store_opts {
    const char *path;          /* database file; its directory is created 0700 */
    unsigned retention_days;   /* raw messages kept after delivery */
    size_t queue_capacity;     /* 0 → STORE_QUEUE_CAPACITY */
    unsigned max_group;        /* most messages per transaction; 0 → STORE_MAX_GROUP */
    uint64_t min_free_disk_mb; /* below it, submissions fail with STORE_FAILED ("cannot store") */
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
    /* Non-zero: the message is kept aside (quarantined) instead of queued
     * for the sinks; `reason` says why (no PHI). */
    int quarantined; const char *reason;
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
    enum store_status status;
    char ack_code[3];      /* original ACK code for STORE_DUPLICATE, else the submitted one */
    int64_t id;            /* row id of the stored (or original) message, 0 on failure */
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
/* An eventfd that becomes readable when results are waiting. */
int store_event_fd(const struct store *s);
/* Moves up to `max` results into `out` (in submission order) and returns
 * how many; clears the eventfd. */
size_t store_take_results(struct store *s, struct store_result *out, size_t max);

/* Writer figures since open (any thread; approximate). */
struct store_stats {
    uint64_t commits, messages, duplicates, failures;
    uint64_t max_group_seen;
    uint64_t commit_ns_total;
};
void store_get_stats(const struct store *s, struct store_stats *out);

/* Messages submitted whose results are not yet published (still queued or
 * being written).  A draining producer keeps taking results until this and
 * its own backlog reach 0, then calls store_close.  Producer thread. */
size_t store_pending(const struct store *s);

/* Asks the writer to run its housekeeping step (retention) at its next turn
 * instead of waiting for the periodic one.  Any thread. */
void store_request_housekeeping(struct store *s);

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

#endif
