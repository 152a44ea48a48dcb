/* stats — ACK-centred counters of the daemon and their renderings.
 *
 * Counted per (listener, sender, message type^trigger): messages received,
 * ACKs by code, NACKs by HL7 table 0357 reason, duplicates; ACK latency as a
 * histogram per listener.  The sender is MSH-3^MSH-4 (first component of
 * each, decoded); distinct senders, types and combinations are capped, and
 * what does not fit is counted under "other", so a peer inventing a new
 * sender per message cannot grow memory.
 *
 * Threads: one recording thread (the network loop) calls stats_record_*,
 * stats_set_gauges; any thread may take a snapshot; the monitor thread sets
 * the health.  Everything shares one mutex, held for a few dozen
 * instructions per message, so it is uncontended in practice.  Nothing is
 * allocated while recording: every table is sized at stats_new.
 *
 * No PHI: sender application/facility names and message types only, never
 * message content. */
#ifndef DAEMON_STATS_H
#define DAEMON_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "daemon/ingest.h"
#include "hl7/hl7.h"
#include "mllp/mllp.h"
#include "store/store.h"

#define STATS_MAX_LISTENERS 32     /* = HB_MAX_LISTENERS */
#define STATS_MAX_SENDERS   128    /* distinct senders, "other" included */
#define STATS_MAX_TYPES     64     /* distinct type^trigger, "other" included */
#define STATS_MAX_SERIES    2048   /* distinct (listener, sender, type) */
#define STATS_KEY_MAX       96     /* bytes of a sender or type key */
#define STATS_ACK_CODES     6      /* enum hl7_ack_code */
#define STATS_REASONS       13     /* stats_reason_code(0 .. STATS_REASONS-1) */
#define STATS_LAT_BUCKETS   16     /* finite histogram buckets (+Inf is extra) */
#define STATS_MAX_SINKS     4
#define STATS_OTHER         "other" /* the overflow bucket's name */
#define STATS_HISTORY_MIN   60     /* minutes of per-listener history (the page's charts) */

struct stats; /* opaque */

/* Counts of one aggregate (a series, a listener, a sender …). */
struct stats_counts {
    uint64_t received;                /* messages (batch members one by one) */
    uint64_t duplicates;              /* re-sent messages answered with the original ACK */
    uint64_t acks[STATS_ACK_CODES];   /* ACKs sent, by code (a batch gets one) */
    uint64_t nacks[STATS_REASONS];    /* AE/AR/CE/CR by table 0357 reason */
};

/* ACK latency: frame received → ACK handed to the connection.  bucket[i]
 * counts observations <= stats_lat_le_ns(i) and > the previous edge
 * (not cumulative); bucket[STATS_LAT_BUCKETS] is the rest (+Inf). */
struct stats_hist {
    uint64_t bucket[STATS_LAT_BUCKETS + 1];
    uint64_t count;
    uint64_t sum_ns;
};

/* What the network thread publishes once a second (figures of modules
 * whose counters only that thread may read). */
struct stats_gauges {
    int64_t updated_ms;           /* wall clock; 0 before the first sample */
    struct mllp_stats mllp;
    uint64_t connections;         /* open now */
    uint64_t acks_pending;        /* frames taken, not yet answered */
    uint64_t store_queue;         /* messages submitted, not yet committed */
    struct store_stats store;
    struct ingest_stats ingest;
    /* PostgreSQL: every node as this node's last heartbeat read them. */
    struct store_node cluster[STORE_CLUSTER_MAX];
    size_t n_cluster;
};

/* One sink's state, as the sinks report it (no PHI in last_error). */
struct stats_sink {
    char name[16];                /* "audit", "sms" */
    char type[16];                /* "file", "purview", "acs" */
    char state[16];               /* "ok", "idle", "failing", … */
    uint64_t rows_pending, blocks_sealed, blocks_uploading, blocks_done, blocks_failed;
    uint64_t retries, token_renewals;
    uint64_t sent, failed, skipped; /* SMS */
    int64_t last_success_ms;      /* 0: never */
    int64_t failing_since_ms;     /* 0: not failing */
    char last_error[256];
};

enum stats_degraded {
    STATS_DEG_NACK_RATE = 1u << 0,   /* NACK share over the window above the threshold */
    STATS_DEG_QUEUE = 1u << 1,       /* store queue deeper than the threshold */
    STATS_DEG_SINK = 1u << 2,        /* a sink failing longer than the threshold */
    STATS_DEG_STORE = 1u << 3,       /* last commit failed or free disk below the floor */
};
#define STATS_DEG_COUNT 4
/* "nack_rate", "queue_depth", "sink_failing", "store_unwritable" for bit i. */
const char *stats_degraded_name(unsigned bit_index);

/* Set by the monitor thread once a second. */
struct stats_health {
    unsigned degraded;            /* enum stats_degraded bits */
    int ready;                    /* store writable and no sink failing too long */
    int store_writable;
    int64_t free_disk_mb;         /* -1 unknown */
    uint64_t window_s;            /* NACK window actually covered so far */
    uint64_t window_acks, window_nacks;
    unsigned nack_percent, queue_depth, sink_failing_s; /* the thresholds */
};

/* A listener's cumulative figures at the first sample (stats_set_gauges)
 * of a wall-clock minute; minute 0 means no sample. */
struct stats_mark {
    int64_t minute;                       /* minutes since the epoch */
    uint64_t received, acks, nacks;
    uint64_t lat[STATS_LAT_BUCKETS + 1];  /* latency buckets, as in stats_hist */
};

/* One minute of a listener, from the marks around it. */
struct stats_minute {
    int valid;          /* 0: no sample at one of its ends (not running, or too new) */
    uint64_t received;  /* messages */
    uint64_t acks;      /* ACKs sent (a batch gets one) */
    uint64_t nacks;     /* of which AE AR CE CR */
    uint64_t p99_ns;    /* ACK latency p99 (a bucket edge); 0 without ACKs, UINT64_MAX
                           above the last edge */
};

struct stats_series {
    uint16_t listener, sender, type;
    struct stats_counts c;
};

/* A consistent copy of everything, for one rendering.  Owned by the taker. */
struct stats_snapshot {
    int64_t now_ms, started_ms;
    size_t n_listeners;
    char listeners[STATS_MAX_LISTENERS][65];
    struct stats_counts by_listener[STATS_MAX_LISTENERS];
    struct stats_hist latency[STATS_MAX_LISTENERS];
    size_t n_senders, n_types, n_series;
    char senders[STATS_MAX_SENDERS][STATS_KEY_MAX + 1]; /* [0] is "other" */
    char types[STATS_MAX_TYPES][STATS_KEY_MAX + 1];     /* [0] is "other" */
    struct stats_counts by_sender[STATS_MAX_SENDERS];
    struct stats_counts by_type[STATS_MAX_TYPES];
    struct stats_series series[STATS_MAX_SERIES];
    struct stats_counts total;
    uint64_t overflow;            /* messages counted under "other" for lack of room */
    struct stats_gauges g;
    struct stats_health h;
    size_t n_sinks;
    struct stats_sink sinks[STATS_MAX_SINKS];
    /* The last STATS_HISTORY_MIN minutes per listener, oldest first; the
     * last one is the current (partial) minute, history_minute. */
    int64_t history_minute;
    struct stats_minute history[STATS_MAX_LISTENERS][STATS_HISTORY_MIN];
};

/* `listeners`: the listener names (copied; the pointers are also kept to
 * recognise them fast, so pass the same ones to stats_record_*).  Returns
 * NULL when out of memory or n is 0 or above STATS_MAX_LISTENERS. */
struct stats *stats_new(const char *const *listeners, size_t n);
void stats_free(struct stats *st);

/* Records one acknowledgement of a single message (network thread).
 * `m` is its (possibly partly) parsed MSH, or NULL; `reason` is the table
 * 0357 code of a NACK (ignored for AA/CA); `latency_ns` 0 is not observed. */
void stats_record_msg(struct stats *st, const char *listener, const struct hl7_msg *m,
                      enum hl7_ack_code code, int reason, int duplicate, uint64_t latency_ns);
/* Records a batch acknowledgement: `messages` members, `duplicates` of
 * them re-sent; sender from BHS-3/BHS-4 of `it` (may be NULL), type "BATCH". */
void stats_record_batch(struct stats *st, const char *listener, const struct hl7_batch_iter *it,
                        enum hl7_ack_code code, int reason, unsigned messages,
                        unsigned duplicates, uint64_t latency_ns);

/* Also takes, at the first call in each wall-clock minute (g->updated_ms),
 * the per-listener marks the history is made of. */
void stats_set_gauges(struct stats *st, const struct stats_gauges *g);
void stats_get_gauges(struct stats *st, struct stats_gauges *out);
void stats_set_health(struct stats *st, const struct stats_health *h);
/* Replaces the sink list (sinks report through the monitor). */
void stats_set_sinks(struct stats *st, const struct stats_sink *s, size_t n);
/* Totals for the NACK window (cheap; any thread). */
void stats_totals(struct stats *st, uint64_t *acks, uint64_t *nacks);

/* Returns an owned snapshot (free with stats_snapshot_free) or NULL. */
struct stats_snapshot *stats_snapshot_new(struct stats *st);
void stats_snapshot_free(struct stats_snapshot *s);

/* Renderings appended to `out`; 0, or -1 when `out` hits its ceiling. */
int stats_render_prometheus(const struct stats_snapshot *s, struct buf *out);
int stats_render_json(const struct stats_snapshot *s, struct buf *out);
int stats_render_html(const struct stats_snapshot *s, struct buf *out);
/* The history from marks (a ring indexed by minute % (STATS_HISTORY_MIN + 1))
 * and the current cumulative figures of one listener; exposed for the tests. */
void stats_history(const struct stats_mark *ring, const struct stats_mark *now, int64_t minute,
                   struct stats_minute *out);

/* ---- small pieces, exposed for the tests ------------------------------ */

/* Index 0 .. STATS_REASONS-1 of a table 0357 code (unknown codes share the
 * last index), and back. */
unsigned stats_reason_index(int code);
int stats_reason_code(unsigned index);
/* Upper edge of finite bucket i, in nanoseconds, and as Prometheus text. */
uint64_t stats_lat_le_ns(unsigned i);
const char *stats_lat_le_text(unsigned i);
/* The bucket an observation falls in (STATS_LAT_BUCKETS for +Inf). */
unsigned stats_lat_bucket(uint64_t ns);
/* Escapes a label value (\ " and newline) / JSON string body / HTML text. */
int stats_prom_escape(const char *p, size_t len, struct buf *out);
int stats_json_escape(const char *p, size_t len, struct buf *out);
int stats_html_escape(const char *p, size_t len, struct buf *out);
/* Writes a printable, valid-UTF-8 key of at most STATS_KEY_MAX bytes
 * (control characters and invalid bytes become '?'); returns its length. */
size_t stats_clean_key(const uint8_t *p, size_t len, char *out);
/* NACKs of a count set (AE AR CE CR) and all ACKs. */
uint64_t stats_nacks(const struct stats_counts *c);
uint64_t stats_acks(const struct stats_counts *c);

#endif
