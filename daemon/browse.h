/* The message browser's pieces shared by the commands (`messages`, `show`,
 * `reprocess`), the daemon's control socket and the status page's
 * /messages: option parsing, printing, the access record of a reveal, and
 * the reprocess engine. */
#ifndef DAEMON_BROWSE_H
#define DAEMON_BROWSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/buf.h"
#include "mapping/mapping.h"
#include "store/store.h"

/* The event name of the access record a reveal writes. */
#define BROWSE_REVEAL_EVENT "Stored HL7 message viewed through hl7bridge"

/* A search filter with room for the split option values. */
struct browse_filter_args {
    struct store_browse_filter f;
    char sender[256], type[64];
};

/* Sets one search criterion by name ("control-id", "sender", "type",
 * "since", "until"); `v` is borrowed.  1 set, 0 not a criterion, -1 a bad
 * or missing value. */
int browse_filter_set(struct browse_filter_args *fa, const char *name, const char *v);
/* Parses one search option at argv[*i] (--control-id, --sender, --type,
 * --since, --until) with its value: 1 consumed (advancing *i), 0 not a
 * search option, -1 a bad or missing value. */
int browse_filter_opt(int argc, char **argv, int *i, struct browse_filter_args *fa);
/* "2026-01-31", "2026-01-31 14:00[:05]", "…T…Z" (UTC), "90m"/"2h"/"7d"/"30s"
 * ago.  0 with epoch ms in *out, or -1. */
int browse_parse_time(const char *s, int64_t now_ms, int64_t *out);
/* Local "YYYY-MM-DD HH:MM:SS", "-" for 0. */
void browse_time(int64_t ms, char *out, size_t cap);
/* "APP^FAC" (first components of MSH-3 / MSH-4) and "TYPE^TRIGGER". */
void browse_sender(const struct store_browse_entry *e, char *out, size_t cap);
void browse_type(const struct store_browse_entry *e, char *out, size_t cap);
/* The metadata as a JSON object (new reference; NULL on no memory). */
json_t *browse_entry_json(const struct store_browse_entry *e);

/* Writes the access record of revealing message `e` (body `raw`) to `user`
 * for `reason`: one connector row, formatted with the configured rules and
 * schema, journalled on the writable browser `b` so the audit sink
 * delivers it.  Returns the journal entry id, or -1 with errbuf. */
int64_t browse_reveal_record(const struct config *cfg, struct store_browser *b,
                             const struct store_browse_entry *e, const struct buf *raw,
                             const char *user, const char *reason, char *errbuf,
                             size_t errcap);

/* ---- reprocess (daemon/reprocess.c) ------------------------------------ */

struct reprocess_req {
    const char **ids;               /* --id ID… (browser ids), or NULL */
    size_t n_ids;
    enum store_browse_status status; /* --status quarantined|rejected, or ANY */
    int64_t since_ms, until_ms;      /* --since/--until (0: open) */
    const char *msg_type, *trigger;  /* --type */
    int dry_run, redeliver;
};

/* What happened, per message and in total. */
enum reprocess_outcome {
    RP_QUEUED = 0,       /* rows queued as a new journal entry */
    RP_WOULD_QUEUE,      /* dry run: rows would be queued */
    RP_ALREADY,          /* rows were queued before (no --redeliver) */
    RP_STILL_QUARANTINED,
    RP_STILL_REJECTED,
    RP_FILTERED,         /* no rule selects it (no rows) */
    RP_NO_BODY,          /* body purged by retention */
    RP_NOT_FOUND,
    RP_ERROR,
    RP_N
};
const char *reprocess_outcome_name(enum reprocess_outcome o);

/* The status a selected message had: accepted, undelivered, filtered,
 * quarantined, rejected, or "other" (not found, not a received message). */
#define REPROCESS_NSTATUS 6
const char *reprocess_status_name(unsigned i);

struct reprocess_totals {
    uint64_t n[RP_N];
    uint64_t rows;               /* rows queued (or, dry run, that would be) */
    uint64_t by_status[REPROCESS_NSTATUS][RP_N]; /* the same, per status it had */
};

/* Runs the rules `mp` on every message the request selects and journals
 * the rows that result (see store_browser_add).  `line` (may be NULL) gets
 * one line per message ("17 quarantined: queued 1 row as 230"), no PHI;
 * a non-zero return from it stops the run.  Returns 0, or -1 with errbuf
 * (what was done before stays done). */
int reprocess_run(const char *store_path, const struct mapping *mp, enum mapping_format fmt,
                  const char *eol, const struct reprocess_req *rq,
                  int (*line)(void *ud, const char *text), void *ud,
                  struct reprocess_totals *tot, char *errbuf, size_t errcap);

#endif
