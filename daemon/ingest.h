/* The ingest pipeline: frame → parse → validate → store → ACK, on the
 * network thread.  Owns the MLLP server and the pending-ACK table; borrows
 * the loop and the store. */
#ifndef DAEMON_INGEST_H
#define DAEMON_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/loop.h"
#include "hl7/hl7.h"
#include "mapping/mapping.h"
#include "store/store.h"

struct ingest;

struct ingest_opts {
    int enhanced;            /* ack.mode: enhanced */
    const char *application; /* our MSH-3 */
    const char *facility;    /* our MSH-4 */
    struct mapping *mapping; /* borrowed; NULL: store messages without rows */
    enum mapping_format format; /* how rows are written into the store */
    const char *eol;         /* line ending of each row */
    int64_t layout;          /* the store's id of that header + format (store_layout_register) */
    int appt_facts;          /* store the rules' appointment facts (an SMS sink runs) */
};

/* Per-listener settings the pipeline needs (passed as the listener's user
 * pointer; must outlive the ingest). */
struct ingest_listener {
    const char *name;
    struct hl7_parse_opts parse;
    /* Certificate name → the MSH-3^MSH-4 it may send ('\n'-separated);
     * when set, a message from a certificate it does not name gets AR. */
    const struct config_pair *senders;
    size_t n_senders;
};

/* Rows whose user stayed unresolved, per mapping rule (by name, so the
 * counts survive a reload) and by what the rule did with them
 * (enum mapping_unresolved).  Past INGEST_MAX_RULE_STATS - 1 names, rules
 * are counted under "other". */
#define INGEST_MAX_RULE_STATS 32
struct ingest_rule_stat {
    char rule[64];
    uint64_t rows[MAPPING_UNRESOLVED_N];
};

/* ACK and message counters (network thread). */
struct ingest_stats {
    uint64_t received;          /* messages (batch members counted one by one) */
    uint64_t acks[6];           /* by enum hl7_ack_code */
    uint64_t duplicates;
    uint64_t control_id_reused; /* stored: same MSH-3/4/10 as a stored message, other content */
    uint64_t store_failures;
    uint64_t batches;
    uint64_t batch_count_mismatch; /* BTS-1/FTS-1 not matching: warned, not refused */
    uint64_t filtered;          /* accepted, no rule selected them */
    uint64_t quarantined;       /* accepted, kept aside */
    uint64_t mapping_rejected;  /* AE from the rules */
    uint64_t rows;              /* connector rows stored */
    uint64_t rows_replaced;     /* values altered to keep the file valid */
    uint64_t sender_refused;    /* AR: certificate not bound to MSH-3^MSH-4 */
    uint64_t backlog_refused;   /* AE: sink backlog over store.max_pending_rows */
    uint64_t rejected_kept;     /* AE/AR messages kept in the store for the browser */
    uint64_t rejected_not_kept; /* AE/AR messages the store could not keep (queue full, error) */
    uint64_t unresolved_users;  /* rows without a resolved user, every rule and action */
    struct ingest_rule_stat unresolved[INGEST_MAX_RULE_STATS];
    unsigned n_unresolved;      /* entries used in unresolved[] */
};

struct ingest *ingest_new(struct loop *l, struct store *st, const struct ingest_opts *o);
void ingest_free(struct ingest *in);
struct mllp_server *ingest_server(struct ingest *in);
/* Begins a graceful stop: no new connections or frames; in-flight frames
 * are still committed and answered. */
void ingest_drain(struct ingest *in);
/* 1 once a drain has answered everything and closed every connection. */
int ingest_drained(const struct ingest *in);
/* Store-and-forward bound: while `pending(ud)` (rows not yet delivered by
 * the audit sink) exceeds `max_rows`, new messages get AE "sink backlog
 * full" instead of being accepted.  `pending` must be cheap and callable
 * from the network thread.  max_rows 0 disables the check. */
void ingest_set_backlog(struct ingest *in, uint64_t (*pending)(const void *ud), const void *ud,
                        uint64_t max_rows);

/* Swaps the rule set (SIGHUP); returns the previous one for the caller to
 * free.  Network thread. */
struct mapping *ingest_set_mapping(struct ingest *in, struct mapping *mp);
/* Swaps the rule set together with the row format, line ending and layout
 * id the rows are then stored with (SIGHUP): every message mapped after
 * this call is formatted the new way and labelled with the new layout, so
 * its rows go out under the matching header.  Returns the previous rule
 * set for the caller to free.  Network thread. */
struct mapping *ingest_set_rows(struct ingest *in, struct mapping *mp, enum mapping_format format,
                                const char *eol, int64_t layout);
/* The row format, line ending and layout in use.  Network thread. */
struct ingest_rows {
    enum mapping_format format;
    const char *eol;
    int64_t layout;
};
struct ingest_rows ingest_get_rows(const struct ingest *in);
void ingest_get_stats(const struct ingest *in, struct ingest_stats *out);
/* Starts (or, with NULL, stops) per-sender counting into `st` (borrowed;
 * see daemon/stats.h).  Network thread, or while the loop is not running. */
struct stats;
void ingest_set_stats(struct ingest *in, struct stats *st);

#endif
