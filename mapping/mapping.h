/* mapping — YAML rules that turn HL7 v2 messages into connector rows.
 *
 * A rule set is loaded and compiled once (mapping_load): paths are parsed,
 * templates split, regexes compiled and value maps sorted, so evaluating a
 * message never re-reads the rules.  A compiled set is immutable and may be
 * shared by threads; SIGHUP reload builds a new one and swaps the pointer,
 * the old one stays valid until mapping_free.
 *
 * Evaluation (mapping_eval) fills a reusable struct mapping_result whose
 * buffers are kept between messages, so the hot path does not allocate once
 * the buffers have grown to the working size.  A result belongs to one
 * thread at a time.
 *
 * Rows are arrays of UTF-8 values in the order of the configured schema
 * (healthcare or epic); mapping_format_header/mapping_format_rows write them
 * as tsv, csv or psv exactly as the audit sink uploads them.  The rule
 * language is documented in docs/mapping.md. */
#ifndef MAPPING_MAPPING_H
#define MAPPING_MAPPING_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "hl7/hl7.h"

/* The shipped rule files, read from the working directory when
 * mapping_opts names neither rule files nor sources (tests, benchmarks). */
#define MAPPING_DEFAULT_RULES_ADT   "config/mappings/adt.yaml"
#define MAPPING_DEFAULT_RULES_SIU   "config/mappings/siu.yaml"
#define MAPPING_DEFAULT_RULES_AUDIT "config/mappings/access-audit.yaml"

#define MAPPING_DEFAULT_DATE_FORMAT "%Y-%m-%dT%H:%M:%SZ"

enum mapping_schema { MAPPING_SCHEMA_HEALTHCARE = 0, MAPPING_SCHEMA_EPIC };
enum mapping_unmatched { MAPPING_UNMATCHED_ACCEPT = 0, MAPPING_UNMATCHED_REJECT };
enum mapping_format { MAPPING_FMT_TSV = 0, MAPPING_FMT_CSV, MAPPING_FMT_PSV };

/* One header override: `column` names a schema column (its documented name in
 * the selected schema, e.g. "Creation Time" or "ACCESS_LOG.ACCESS_TIME", or
 * its rule key, e.g. "creation_time"); `header` is written instead. */
struct mapping_header {
    const char *column;
    const char *header;
};

/* A rule file's text held in memory (the rules compiled into the binary);
 * `name` stands for the file in messages. */
struct mapping_source {
    const char *name;
    const char *text;
    size_t len;
};

/* One lookup table (mapping.lookups): a CSV file with a header line; rules
 * read `value_column` of the row whose `key_column` equals a key. */
struct mapping_lookup {
    const char *name;         /* what rules write as `table:` */
    const char *file;         /* NULL: an empty table */
    const char *key_column;
    const char *value_column;
};

/* What a rule does with a row whose user (the user_login column) is empty
 * after its value, lookups and alternatives: on_unresolved_user. */
enum mapping_unresolved {
    MAPPING_UNRESOLVED_KEEP = 0,   /* the row stays; on_missing_mandatory decides */
    MAPPING_UNRESOLVED_FILTER,     /* the row is dropped and counted */
    MAPPING_UNRESOLVED_QUARANTINE, /* the message is kept aside */
    MAPPING_UNRESOLVED_N
};
const char *mapping_unresolved_name(enum mapping_unresolved a);

/* Plain values; the daemon converts its configuration into this.  Every
 * pointer is borrowed for the duration of mapping_load only. */
struct mapping_opts {
    enum mapping_schema schema;
    const struct mapping_header *headers; /* may be NULL */
    size_t n_headers;
    const char *const *rules;             /* rule files, in order */
    size_t n_rules;
    const struct mapping_source *sources; /* used when there are no rule files */
    size_t n_sources;                     /* neither: MAPPING_DEFAULT_RULES_* */
    const char *time_zone;                /* IANA name for values without offset; NULL = UTC */
    enum mapping_unmatched unmatched;
    const char *date_format;              /* strftime format in UTC; NULL = MAPPING_DEFAULT_DATE_FORMAT */
    /* HL7 field ("ZCN-2") the appointment fact `consent` is read from,
     * whatever the rules say (sinks.sms.consent.field); NULL: the rules'. */
    const char *consent_field;
    const struct mapping_lookup *lookups; /* may be NULL */
    size_t n_lookups;
};

/* Collected load errors, each "file:line:column: message" (1-based). */
struct mapping_errors {
    char **items;
    size_t n;
};
void mapping_errors_release(struct mapping_errors *e);

struct mapping;        /* opaque, immutable after load */
struct mapping_result; /* opaque, reusable */

/* Reads and compiles every rule file.  Returns an owned rule set, or NULL with
 * every problem appended to *errs (the caller releases it; errs may be NULL).
 * Any thread; opens files. */
struct mapping *mapping_load(const struct mapping_opts *opts, struct mapping_errors *errs)
    __attribute__((warn_unused_result));
void mapping_free(struct mapping *mp);

/* Schema columns in output order: count, the header written for column i
 * (after overrides) and whether the connector requires it. */
size_t mapping_column_count(const struct mapping *mp);
const char *mapping_column_header(const struct mapping *mp, size_t i);
int mapping_column_mandatory(const struct mapping *mp, size_t i);
/* The rule key of column i ("patient_reg_id"), NULL past the end. */
const char *mapping_column_key(const struct mapping *mp, size_t i);
/* Number of rules loaded (for `hl7bridge check`). */
size_t mapping_rule_count(const struct mapping *mp);
/* Lookup tables loaded: count, and name and row count of table i. */
size_t mapping_lookup_count(const struct mapping *mp);
const char *mapping_lookup_name(const struct mapping *mp, size_t i);
size_t mapping_lookup_rows(const struct mapping *mp, size_t i);

/* ---- evaluation -------------------------------------------------------- */

enum mapping_outcome {
    MAPPING_ROWS = 0,   /* rows (and/or appointment facts) produced */
    MAPPING_FILTERED,   /* no rule selected the message (or no row): accept, count */
    MAPPING_REJECT,     /* answer AE with mapping_result_err() */
    MAPPING_QUARANTINE  /* accept, keep aside; mapping_result_reason() says why */
};

struct mapping_result *mapping_result_new(void);
void mapping_result_free(struct mapping_result *r);

/* Evaluates `msg` (a successfully parsed message, borrowed) with the rules.
 * Returns the outcome (enum mapping_outcome); the result's previous content
 * is discarded.  Values are decoded copies owned by the result: they stay
 * valid until the next evaluation into it or mapping_result_free, not tied to
 * `msg`.  Never fails on message content: an oversized output becomes
 * MAPPING_REJECT with code 207.  Any thread (one result per thread). */
int mapping_eval(const struct mapping *mp, const struct hl7_msg *msg, struct mapping_result *r);

enum mapping_outcome mapping_result_outcome(const struct mapping_result *r);
/* Name of the rule that selected the message ("" when none). */
const char *mapping_result_rule(const struct mapping_result *r);
size_t mapping_result_row_count(const struct mapping_result *r);
/* Value of (row, column), NUL-terminated UTF-8; *len (optional) gets its
 * length.  Column numbers follow mapping_column_header. */
const char *mapping_result_value(const struct mapping_result *r, size_t row, size_t col,
                                 size_t *len);
/* For MAPPING_REJECT: the ERR content (code 101 with the source field of the
 * empty mandatory column, 200/201 for an unmatched message under
 * `unmatched: reject`, 207 for oversized output). */
const struct hl7_err *mapping_result_err(const struct mapping_result *r);
/* Rows of this message whose user stayed unresolved, and what the rule did
 * with them (on_unresolved_user): 0 when every row named a user.  Under
 * `quarantine` the message is quarantined and the count is 1. */
size_t mapping_result_unresolved(const struct mapping_result *r, enum mapping_unresolved *action);
/* For MAPPING_REJECT / MAPPING_QUARANTINE / MAPPING_FILTERED: a short reason
 * naming the column and source path, never message content (no PHI). */
const char *mapping_result_reason(const struct mapping_result *r);

/* ---- appointment facts (SIU rules with an `appointment:` section) ------
 *
 * Facts are produced with MAPPING_ROWS and MAPPING_FILTERED, and also with
 * MAPPING_QUARANTINE: a message the connector rows cannot use (no patient
 * address) is still an appointment its patient should hear about. */

enum mapping_appt_field {
    MAPPING_APPT_ID = 0,         /* appointment_id */
    MAPPING_APPT_FACILITY,       /* facility */
    MAPPING_APPT_EVENT,          /* event (trigger, e.g. S12) */
    MAPPING_APPT_EVENT_TIME,     /* event_time: UTC epoch seconds, decimal */
    MAPPING_APPT_START,          /* start: UTC epoch seconds, decimal */
    MAPPING_APPT_DURATION,       /* duration_minutes: decimal */
    MAPPING_APPT_LOCATION,       /* location */
    MAPPING_APPT_PROVIDER,       /* provider */
    MAPPING_APPT_FIRST_NAME,     /* patient_first_name */
    MAPPING_APPT_LAST_NAME,      /* patient_last_name */
    MAPPING_APPT_PHONE,          /* phone (digits as sent; the SMS sink normalises) */
    MAPPING_APPT_CONSENT,        /* consent (e.g. Y/N as sent) */
    MAPPING_APPT_LANGUAGE,       /* language (PID-15 code; picks the text's templates) */
    MAPPING_APPT_LINK,           /* link (join URL of a virtual visit) */
    MAPPING_APPT_N
};

/* 1 when the selecting rule produced appointment facts. */
int mapping_result_has_appt(const struct mapping_result *r);
/* Value of one fact ("" when empty; NULL when there are no facts). */
const char *mapping_result_appt(const struct mapping_result *r, enum mapping_appt_field f);
/* The same by name ("phone", "start", ...); NULL for an unknown name. */
const char *mapping_result_appt_named(const struct mapping_result *r, const char *name);
/* A numeric fact (event_time, start, duration_minutes) as a number: 0, or -1
 * when empty or not a number. */
int mapping_result_appt_i64(const struct mapping_result *r, enum mapping_appt_field f,
                            int64_t *out);
const char *mapping_appt_field_name(enum mapping_appt_field f);

/* ---- prepared connector files (mapping/filecheck.c) -------------------- */

/* One record of a connector file: bytes [off, off+len) without the line
 * ending, starting on line `line` (1-based; a csv value may span lines). */
struct mapping_file_rec {
    size_t off, len;
    uint64_t line;
};
/* A problem at `line`: a message naming header columns only, no row content. */
typedef void (*mapping_problem_fn)(void *ud, uint64_t line, const char *msg);
/* Checks a prepared connector file (the whole text, p[0..n)) against the
 * schema of `mp` in format `fmt`: UTF-8 without a byte order mark, the
 * header naming the configured columns in order, every row with as many
 * fields and its mandatory columns non-empty, 1..max_rows rows.  Calls cb
 * for each problem; *problems gets their count.  Returns the number of
 * records (header first) in *recs (owned by the caller: free()), or -1 when
 * out of memory.  Any thread. */
long long mapping_check_file(const struct mapping *mp, enum mapping_format fmt, const uint8_t *p,
                             size_t n, uint64_t max_rows, struct mapping_file_rec **recs,
                             mapping_problem_fn cb, void *ud, uint64_t *problems)
    __attribute__((warn_unused_result));

/* ---- output ------------------------------------------------------------ */

/* Appends the header line (configured column names) ended by `eol` (NULL:
 * "\r\n" for csv, "\n" otherwise).  Returns 0, or -1 when `out` is full. */
int mapping_format_header(const struct mapping *mp, enum mapping_format fmt, const char *eol,
                          struct buf *out) __attribute__((warn_unused_result));
/* Appends every row of `r`, each ended by `eol`.  Rows never carry control
 * characters: each C0 control (NUL, tab, CR, LF …), DEL and C1 control in a
 * value becomes a space, in every format.  csv quotes (RFC 4180) a value
 * holding a comma or quote; tsv/psv replace their delimiter by a space.
 * *replaced (optional) is increased by the number of values so altered.
 * Returns 0, or -1 when `out` is full. */
int mapping_format_rows(const struct mapping *mp, const struct mapping_result *r,
                        enum mapping_format fmt, const char *eol, struct buf *out,
                        unsigned *replaced) __attribute__((warn_unused_result));
/* Appends one row made of `values` (one NUL-terminated UTF-8 string per
 * column in mapping_column_header order; NULL is empty), escaped exactly as
 * mapping_format_rows does, ended by `eol`.  For rows the daemon writes
 * itself (the access record of a reveal).  0, or -1 when `out` is full. */
int mapping_format_values(const struct mapping *mp, const char *const *values,
                          enum mapping_format fmt, const char *eol, struct buf *out,
                          unsigned *replaced) __attribute__((warn_unused_result));
/* Parses "tsv" | "csv" | "psv"; -1 for anything else. */
int mapping_format_parse(const char *s, enum mapping_format *out);

/* ---- date-times (exposed for the daemon's `check` and for tests) ------- */

/* Converts an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]) to UTC epoch
 * seconds; values without an offset are read in the rule set's time zone
 * (a time in a spring-forward gap moves forward by the gap; an ambiguous
 * fall-back time takes the earlier instant).  Returns 0 or -1 when the
 * value is not a date-time. */
int mapping_dtm_to_utc(const struct mapping *mp, const uint8_t *p, size_t len, int64_t *out);

/* Formats UTC epoch seconds `t` as the rules write date-time columns
 * (mapping.date_format).  Returns the length, 0 when `out` is too small. */
size_t mapping_format_time(const struct mapping *mp, int64_t t, char *out, size_t cap);

#endif
