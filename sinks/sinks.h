/* sinks — where stored connector rows go.
 *
 * The audit sink (sinks/audit.c) is a self-contained component: its own
 * thread and its own SQLite connection to the store file.  On that thread
 * a batcher groups committed rows into blocks and seals them (max_rows,
 * max_bytes, max_age, never past the connector's limits), and an uploader
 * sends sealed blocks — to the Purview connector push API over HTTPS
 * (libcurl multi, up to max_parallel uploads, OAuth2 client-credentials
 * token cached and renewed) or, for `type: file`, as files in a directory.
 * Every block's state lives in the store (open → sealed → uploading → done /
 * failed), so a restart resumes where it stopped; a block that was being
 * sent at a crash or stop is sent again and counted (the only duplicate
 * window).
 *
 * The pure helpers below the sink API (URLs, token answers, Retry-After,
 * backoff, multipart framing, file writing) are exposed for tests.
 *
 * Threads: sink_audit_start / sink_audit_stop from one thread (the main
 * thread); sink_audit_get_stats and sink_audit_pending_rows from any
 * thread.  Never logs row content, the token or the secret. */
#ifndef SINKS_SINKS_H
#define SINKS_SINKS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "store/store.h"

/* The connector's documented limits: rows per block, rows and bytes per
 * import (one block is one import here). */
#define SINK_MAX_BLOCK_ROWS      100000u
#define SINK_MAX_IMPORT_ROWS     5000000u
#define SINK_MAX_IMPORT_BYTES    3000000000ull
/* Name prefix of the file sink's block files (retention purges only these). */
#define SINK_AUDIT_FILE_PREFIX   "hl7bridge-audit-"
/* Blocks of uploaded files (`hl7bridge upload`, inputs.files) as the file
 * sink writes them; purged with the audit files (store.retention.audit_files). */
#define SINK_UPLOAD_FILE_PREFIX  "hl7bridge-upload-"

/* Retry policy defaults: the delay doubles from the base to the maximum;
 * a Retry-After longer than SINK_RETRY_AFTER_MAX_MS is cut to it. */
#define SINK_RETRY_BASE_MS       500u
#define SINK_RETRY_MAX_MS        30000u
#define SINK_RETRY_AFTER_MAX_MS  3600000u

/* The token resource (audience) of the current sample script. */
#define SINK_DEFAULT_RESOURCE \
    "https://microsoft.onmicrosoft.com/86dfdabb-5089-4a0c-880a-cfa5a790c5b1"

enum sink_audit_kind { SINK_AUDIT_FILE = 0, SINK_AUDIT_PURVIEW };
enum sink_cloud {
    SINK_CLOUD_COMMERCIAL = 0, SINK_CLOUD_GCC, SINK_CLOUD_ITAR_L4, SINK_CLOUD_ITAR_L5
};

/* Every pointer is borrowed for the duration of sink_audit_start only (the
 * sink copies what it keeps; the secret is wiped when the sink is freed). */
struct sink_audit_opts {
    enum sink_audit_kind kind;
    /* The store (already opened by store_open), whichever its type: the
     * sink reads and updates its blocks through store_batches_*. */
    struct store_opts store;
    const char *header;           /* header line with its line ending, as rows are formatted */
    const char *file_ext;         /* "txt" (tsv, psv) or "csv"; NULL → "txt" */
    uint64_t max_rows;            /* 0 → 5000; clamped to SINK_MAX_BLOCK_ROWS */
    uint64_t max_bytes;           /* 0 → 256 MiB; clamped below SINK_MAX_IMPORT_BYTES */
    unsigned max_age_s;           /* 0 → 300 */
    unsigned max_parallel;        /* uploads in flight, 0 → 2 */
    const char *directory;        /* file sink: output directory (created 0700) */
    /* purview */
    const char *tenant_id, *app_id, *app_secret, *job_id;
    const char *token_url;        /* NULL → the cloud's */
    const char *upload_url;       /* NULL → the cloud's */
    enum sink_cloud cloud;
    const char *resource;         /* NULL → SINK_DEFAULT_RESOURCE */
    const char *ca_file;          /* NULL → system store */
    unsigned timeout_s;           /* one request, 0 → 400 */
    /* tuning, 0 → defaults (tests use smaller values) */
    unsigned tick_ms;             /* batcher / scheduler period, default 100 */
    unsigned retry_base_ms, retry_max_ms;
};

struct sink_audit; /* opaque */

/* Opens the sink's store connection, recovers blocks left `uploading`,
 * checks the options (naming a missing tenant, app id, secret or job id,
 * never printing the secret) and starts the thread; a purview sink asks for
 * its first token at once, so bad credentials show up at start-up.
 * Returns NULL with a message in err. */
struct sink_audit *sink_audit_start(const struct sink_audit_opts *o, char *err, size_t errcap);
/* Stops promptly: uploads in flight are abandoned (their blocks stay
 * `uploading` and are sent again at the next start).  NULL is a no-op. */
void sink_audit_stop(struct sink_audit *s);

struct sink_audit_stats {
    uint64_t rows_pending;      /* committed rows not yet in a done block */
    uint64_t blocks_open, blocks_sealed, blocks_uploading, blocks_done, blocks_failed;
    uint64_t blocks_delivered;  /* done since start */
    uint64_t rows_delivered;    /* rows of those blocks */
    uint64_t retries;           /* attempts that ended in a retry */
    uint64_t failures;          /* blocks marked failed since start */
    uint64_t resends;           /* blocks sent again after a crash or stop (possible duplicates) */
    uint64_t token_renewals;    /* tokens obtained */
    uint64_t token_failures;    /* token requests that failed */
    int64_t last_success_ms;    /* wall clock of the last delivered block, 0 = none */
    char last_error[256];       /* "" when none; no PHI, no secret */
};
void sink_audit_get_stats(const struct sink_audit *s, struct sink_audit_stats *out);
/* Committed rows not yet delivered (at most one tick old); cheap, any
 * thread.  The daemon answers AE ("sink backlog full") above its limit. */
uint64_t sink_audit_pending_rows(const struct sink_audit *s);

/* ---- push: one block at a time, waiting for the answer (sinks/push.c) ----
 * `hl7bridge upload` and the inputs.files watcher send prepared connector
 * files with it: the same token, request and answer handling as the sink
 * thread, but blocking, for one caller thread. */
#define SINK_PUSH_ATTEMPTS 8   /* attempts of one block before giving up (for now) */

struct sink_push; /* opaque */
enum push_result {
    SINK_PUSH_DELIVERED = 0,   /* 2xx (or the file written) */
    SINK_PUSH_REFUSED,         /* a 4xx other than 401/408/429: failed, until fixed */
    SINK_PUSH_GAVE_UP,         /* transport errors, 5xx, 429 … still after every attempt */
};
/* Copies what it keeps of `o` (kind, directory, credentials, URLs, ca_file,
 * timeout, retry tuning).  attempts 0 → SINK_PUSH_ATTEMPTS.  NULL with err. */
struct sink_push *sink_push_new(const struct sink_audit_opts *o, unsigned attempts, char *err,
                                size_t errcap);
void sink_push_free(struct sink_push *p); /* NULL is a no-op; wipes the secret and token */
/* Sends `content` (the whole file text: header and rows) as one block
 * named file_name.  *status gets the last HTTP status (0: none); err the
 * reason when not delivered (never the secret). */
enum push_result sink_push_block(struct sink_push *p, const char *file_name,
                                 const uint8_t *content, size_t len, int *status, char *err,
                                 size_t errcap) __attribute__((warn_unused_result));
/* Tokens obtained so far (the cache at work). */
uint64_t sink_push_tokens(const struct sink_push *p);
/* A flag another thread sets to stop: the transfer in progress is aborted
 * and no retry waited for (the block is reported given up). */
void sink_push_set_stop(struct sink_push *p, const atomic_int *stop);

/* ---- helpers (exposed for tests) ---------------------------------------- */

/* What of a connector's refusal may be logged, stored and shown: its error
 * code (JSON "error" as a string, or error.code) and the answer's size,
 * never its free text or a body that is not JSON — a connector may quote
 * the rows it refused, and rows hold patient data.  Printable ASCII, no
 * quotes, `secret` (may be NULL) masked.  Used by the audit sink and push. */
void sink_refusal_summary(const char *secret, char *dst, size_t cap, const uint8_t *p,
                          size_t len);

/* The default token and upload URLs of a cloud (token URL with the tenant
 * filled in).  0, or -1 when a buffer is too small. */
int sink_cloud_urls(enum sink_cloud c, const char *tenant_id, char *token_url, size_t tcap,
                    char *upload_url, size_t ucap) __attribute__((warn_unused_result));

/* The token request body (application/x-www-form-urlencoded, every value
 * percent-encoded).  Holds the secret: the caller wipes `out`. */
int sink_token_form(struct buf *out, const char *client_id, const char *secret,
                    const char *resource, const char *tenant_id)
    __attribute__((warn_unused_result));

/* A parsed token answer.  On success access_token is an owned string (the
 * caller wipes and frees it) and expires_in_s > 0; otherwise error /
 * description say what the identity platform answered ("" if nothing). */
struct sink_token {
    char *access_token;
    int64_t expires_in_s;       /* from expires_in (number or string); 0 if absent */
    char error[64];             /* e.g. "invalid_client" */
    char description[512];      /* e.g. "AADSTS7000215: Invalid client secret ..." */
};
/* 0 with a token, -1 otherwise (error fields filled when the body said
 * why).  `now_s` (wall clock) turns a lone expires_on into a lifetime. */
int sink_token_parse(const uint8_t *body, size_t len, int64_t now_s, struct sink_token *out)
    __attribute__((warn_unused_result));
void sink_token_release(struct sink_token *t);
/* A short hint naming the setting an AADSTS code points at ("" if none). */
const char *sink_aadsts_hint(const char *description);

/* Retry-After: delta-seconds or an HTTP date.  0 with *delay_ms (a date in
 * the past gives 0), -1 when the value is neither. */
int sink_retry_after_parse(const char *value, int64_t now_s, uint64_t *delay_ms)
    __attribute__((warn_unused_result));

/* Delay before attempt number `attempt` (1 = first retry): base·2^(attempt-1)
 * capped at max, then "equal jitter": a value in [d/2, d] picked by `rnd`. */
uint64_t sink_backoff_ms(unsigned attempt, unsigned base_ms, unsigned max_ms, uint32_t rnd);

/* The connection settings every request to the identity platform and the
 * connector gets (a CURL * easy handle): https only, TLS 1.2+, full
 * verification against ca_file (NULL: the system store), no redirects, the
 * timeouts, no signals, our user agent. */
void sink_curl_connector(void *easy, const char *ca_file, unsigned timeout_s,
                         unsigned connect_timeout_s);

/* multipart/form-data framing of one part named "file":
 * begin writes the opening boundary and part headers, end the closing
 * boundary (the CRLF before it belongs to the delimiter).  The content in
 * between must not contain "--" + boundary (sink_multipart_ok checks). */
int sink_multipart_begin(struct buf *out, const char *boundary, const char *filename)
    __attribute__((warn_unused_result));
int sink_multipart_end(struct buf *out, const char *boundary) __attribute__((warn_unused_result));
int sink_multipart_ok(const uint8_t *content, size_t len, const char *boundary);

/* Writes `len` bytes as dir/name: a temporary name first, fsync, rename,
 * fsync of the directory; mode 0600.  0, or -1 with a message in err. */
int sink_file_write(const char *dir, const char *name, const uint8_t *p, size_t len, char *err,
                    size_t errcap) __attribute__((warn_unused_result));
/* Creates `dir` (and missing parents) with mode 0700.  0 / -1 with err. */
int sink_mkdirs(const char *dir, char *err, size_t errcap) __attribute__((warn_unused_result));

#endif
