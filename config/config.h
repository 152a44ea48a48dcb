/* config — YAML configuration → one validated, immutable struct config.
 *
 * Keys are table-driven (name, type, offset, min, max, default); unknown keys
 * are errors; `${NAME}` in any scalar is replaced by the environment variable
 * NAME (unset → error naming it; `$$` is a literal dollar).  Every error is
 * collected as `file:line:column: message` and none of a bad configuration is
 * returned.  Runtime code never sees YAML nodes.  Any thread; no global state.
 *
 * Secrets (sinks.audit.app_secret, sinks.sms.access_key) come only from
 * `${ENV}` or from a `*_file` readable by its owner alone; they are never put
 * in an error message and config_dump() shows them as "(set)".
 *
 * A relative path written in a configuration file (store.path, rule files,
 * sink files and directories, TLS and secret files) resolves against that
 * file's directory, so the daemon reads the same files from any working
 * directory; a default that was not written, and any path in a configuration
 * given as a string (config_load_string: the built-in one), stays relative to
 * the working directory.  The written text is kept for config_dump. */
#ifndef CONFIG_CONFIG_H
#define CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/log.h"

#define CONFIG_DEFAULT_PATH "config/hl7bridge.yaml"

/* At most this many errors are collected; one more line then says so. */
#define CONFIG_MAX_ERRORS 100

enum config_tls_version { CONFIG_TLS_1_2 = 0, CONFIG_TLS_1_3 };
enum config_frame_end { CONFIG_FRAME_END_STRICT = 0, CONFIG_FRAME_END_LENIENT };

struct config_listener {
    char *name;               /* required, unique; "main" for the default listener */
    char *address;            /* "host:port" as written */
    char *host;               /* parsed host ("0.0.0.0", "::", "127.0.0.1", "edge.local") */
    unsigned port;            /* 1..65535 */
    unsigned max_connections; /* default 512 */
    uint64_t max_message_bytes; /* default 16 MiB */
    unsigned idle_timeout_s;  /* default 600 */
    char *charset;            /* NULL or "ASCII" | "8859/1" | "8859/15" | "UNICODE UTF-8" */
    struct {
        bool enabled;             /* the tls section was written */
        char *cert_file;          /* PEM chain, required with tls */
        char *key_file;           /* PEM key, required with tls */
        char *client_ca_file;     /* CA bundle for client certificates */
        bool verify_client;       /* require a certificate from client_ca_file */
        enum config_tls_version min_version; /* default 1.2 */
        char **allowed_names;     /* CN/SAN names accepted (empty: any verified) */
        size_t n_allowed_names;
    } tls;
    /* Certificate name → the MSH-3^MSH-4 senders it may speak for; the
     * value holds the names separated by '\n'. */
    struct config_pair *senders;
    size_t n_senders;
    char **allow;             /* CIDRs allowed to connect (empty: any) */
    size_t n_allow;
    unsigned max_connections_per_ip; /* default 64; 0 = no limit */
    unsigned handshake_timeout_s;    /* TLS handshake, default 10 */
    unsigned frame_timeout_s;        /* a started frame must end within, default 60 */
    enum config_frame_end frame_end; /* strict (0x1C 0x0D only, default) | lenient */
    /* TCP keep-alive on accepted connections: VPN and NAT devices drop idle
     * flows silently, and the sender then writes into a dead socket. */
    struct {
        bool enabled;                /* default true */
        unsigned idle_s;             /* idle time before the first probe, default 60 */
        unsigned interval_s;         /* between probes, default 10 */
        unsigned count;              /* unanswered probes before the connection is dropped, default 6 */
    } keepalive;
};

/* One lookup table of the mapping rules (mapping.lookups: NAME: {...}). */
struct config_lookup {
    char *name;               /* the key under mapping.lookups; rules say `table: NAME` */
    char *file;               /* CSV file with a header line */
    char *key_column;         /* header name of the column looked up */
    char *value_column;       /* header name of the column returned */
};

/* One `key: value` of a string→string map, in file order. */
struct config_pair {
    char *key;
    char *value;
};

enum config_ack_mode { CONFIG_ACK_ORIGINAL = 0, CONFIG_ACK_ENHANCED };
enum config_schema { CONFIG_SCHEMA_HEALTHCARE = 0, CONFIG_SCHEMA_EPIC };
enum config_unmatched { CONFIG_UNMATCHED_ACCEPT = 0, CONFIG_UNMATCHED_REJECT };
/* none: no audit sink runs; mapped rows stay in the store undelivered (the
 * audit sink does not run on PostgreSQL yet). */
enum config_audit_type { CONFIG_AUDIT_FILE = 0, CONFIG_AUDIT_PURVIEW, CONFIG_AUDIT_NONE };
enum config_store_type { CONFIG_STORE_SQLITE = 0, CONFIG_STORE_POSTGRESQL };
enum config_audit_format { CONFIG_FORMAT_TSV = 0, CONFIG_FORMAT_CSV, CONFIG_FORMAT_PSV };
enum config_line_ending { CONFIG_EOL_CRLF = 0, CONFIG_EOL_LF };
enum config_cloud {
    CONFIG_CLOUD_COMMERCIAL = 0, CONFIG_CLOUD_GCC, CONFIG_CLOUD_ITAR_L4, CONFIG_CLOUD_ITAR_L5
};
enum config_sms_type { CONFIG_SMS_FILE = 0, CONFIG_SMS_ACS, CONFIG_SMS_NONE };

/* A relative path as written, and the field (a char * inside the struct
 * config) that holds where it led. */
struct config_written_path {
    const void *field;
    char *written;
};

/* One watched directory of inputs.files: prepared connector files dropped
 * there are checked and sent like `hl7bridge upload`, then moved. */
struct config_input_file {
    char *directory;          /* required; watched (not recursively) */
    char *pattern;            /* file names to take (fnmatch), default "*.txt" */
    char *done_directory;     /* required; delivered files are moved here */
    unsigned min_age_s;       /* untouched this long before it is taken, default 10 */
};

/* The four SMS texts; a NULL one falls back (see sinks.sms.languages). */
struct config_sms_templates {
    char *scheduled;
    char *updated;
    char *cancelled;
    char *reminder;
};
/* Templates for the patients whose language (PID-15) is one of `codes`. */
struct config_sms_language {
    char **codes;                       /* compared without case; "es" also takes "es-MX" */
    size_t n_codes;
    struct config_sms_templates templates; /* NULL: the default template */
};
/* Settings for the appointments of some scheduling facilities (the rules'
 * `facility` fact, compared exactly).  What an entry leaves out comes from
 * sinks.sms itself. */
struct config_sms_facility {
    char **codes;                       /* facility codes; each in one entry only */
    size_t n_codes;
    char *from;                         /* E.164 sender, NULL: sinks.sms.from */
    char *time_zone;                    /* IANA name, NULL: sinks.sms.time_zone */
    char *link;                         /* link template, NULL: sinks.sms.link */
    struct config_sms_templates templates; /* a NULL kind: sinks.sms.templates */
    struct config_sms_language *languages; /* written: these replace sinks.sms.languages */
    size_t n_languages;
    bool has_languages;                 /* `languages` was written (even as []) */
};

struct config {
    char *path;                         /* the file it was read from */
    char *base_dir;                     /* absolute directory of `path` that relative
                                           paths resolved against; NULL for a string */
    struct config_written_path *written_paths;
    size_t n_written_paths;
    char *user;                         /* drop root to this user after binding, or NULL */
    struct config_listener *listeners;  /* at least one, at most HB_MAX_LISTENERS */
    size_t n_listeners;
    struct {
        enum config_ack_mode mode;      /* default original */
        char *application;              /* MSH-3 of our ACKs, default "HL7BRIDGE" */
        char *facility;                 /* MSH-4 of our ACKs, default "HL7BRIDGE" */
    } ack;
    struct {
        char *name;                     /* this node in a cluster, default: the host name */
        unsigned heartbeat_s;           /* PostgreSQL: heartbeat period, default 5 */
    } node;
    struct {
        enum config_store_type type;    /* default sqlite */
        /* PostgreSQL: a libpq connection string or URI (never holding a
         * password: config refuses one) and the password from ${NAME} or
         * an owner-only file; TLS through the URL's sslmode/sslrootcert. */
        char *url;
        char *password;                 /* the secret itself, or NULL */
        char *password_file;            /* the file it came from, or NULL */
        char *path;                     /* SQLite file, default var/hl7bridge.db */
        unsigned retention_days;        /* default 7, 0..3650; caps retention.raw */
        /* How long each kind of PHI-bearing record is kept (seconds).
         * Purged by the store writer's housekeeping, which looks every
         * minute or every tenth of the shortest of these, at least every
         * second (store_housekeep_interval_ms). */
        struct config_retention {
            unsigned raw_s;             /* raw body after delivery, default 7d */
            unsigned delivered_s;       /* delivered message + its rows, default 7d */
            unsigned quarantined_s;     /* quarantined message from receipt, default 30d */
            unsigned rejected_s;        /* rejected message kept for review, default 7d */
            unsigned sms_s;             /* SMS appointment/text rows once over, default 30d */
            unsigned sms_file_s;        /* SMS file sink lines (rotated files), default 30d */
            unsigned audit_files_s;     /* audit file sink output files, default 7d */
            unsigned upload_blocks_s;   /* uploaded files' refused blocks kept for redrive,
                                         * from when first kept, default 30d */
        } retention;
        unsigned rejected_retention_days; /* older form of retention.rejected (days); the
                                          * shorter applies, default 7 */
        uint64_t min_free_disk_mb;      /* default 64 */
        uint64_t max_pending_rows;      /* default 10000000 */
    } store;
    struct {
        /* Input held by all connections together (unfinished frames and
         * frames not yet taken), MiB; default 256. */
        uint64_t max_buffered_mb;
    } limits;
    struct {
        enum log_level level;           /* default LOG_INFO */
        enum log_format format;         /* default LOG_FMT_LOGFMT */
    } log;
    struct {
        enum config_schema schema;      /* default healthcare */
        struct config_pair *headers;    /* schema column → header name */
        size_t n_headers;
        char **rules;                   /* rule files; none: the built-in rules */
        size_t n_rules;
        char *time_zone;                /* IANA name, default "UTC" */
        enum config_unmatched unmatched; /* default accept */
        char *date_format;              /* strftime, default "%Y-%m-%dT%H:%M:%SZ" */
        struct config_lookup *lookups;  /* lookup tables the rules may use */
        size_t n_lookups;
    } mapping;
    struct {
        struct {
            enum config_audit_type type;    /* default file */
            char *tenant_id;                /* required for purview */
            char *app_id;                   /* required for purview */
            char *app_secret;               /* the secret itself (from env or file) */
            char *app_secret_file;          /* the file it came from, or NULL */
            char *job_id;                   /* required for purview */
            char *token_url;                /* NULL: derived from cloud */
            char *upload_url;               /* NULL: derived from cloud */
            char *ca_file;                  /* NULL: system store */
            enum config_audit_format format;    /* default tsv */
            enum config_line_ending line_ending; /* default crlf */
            enum config_cloud cloud;        /* default commercial */
            char *resource;                 /* token audience */
            struct {
                unsigned max_rows;          /* default 5000 */
                uint64_t max_bytes;         /* default 256 MiB */
                unsigned max_age_s;         /* default 300 */
            } batch;
            unsigned max_parallel_uploads;  /* default 2 */
            char *directory;                /* file sink output, default var/out */
            unsigned timeout_s;             /* HTTP timeout, default 400 */
            unsigned lease_s;               /* PostgreSQL: a claimed block's lease, default 60 */
        } audit;
        struct {
            enum config_sms_type type;      /* default file */
            char *endpoint;                 /* ACS resource URL, required for acs */
            char *access_key;               /* the secret itself (from env or file) */
            char *access_key_file;          /* the file it came from, or NULL */
            char *from;                     /* E.164 sender, required for acs */
            char *default_country;          /* calling code for national numbers, "1" */
            char *time_zone;                /* IANA name, default mapping.time_zone */
            char *ca_file;                  /* NULL: system store */
            struct {
                char *field;                /* HL7 field holding consent, "ZCN-2" */
                char **accept;              /* values meaning yes, default ["Y"] */
                size_t n_accept;
                bool required;              /* default true */
            } consent;
            unsigned *reminders_s;          /* offsets before start, default 24h, 2h */
            size_t n_reminders;
            struct {
                bool enabled;               /* true when start and end are given */
                unsigned start_min;         /* minutes after midnight, local time */
                unsigned end_min;
            } quiet_hours;
            struct config_sms_templates templates;
            struct {                        /* each kind of text on or off, default all on */
                bool scheduled, updated, cancelled, reminder;
            } send;
            struct config_sms_language *languages; /* templates by PID-15 code */
            size_t n_languages;
            char *link;                     /* {link} template (URL-encoded fields), default "" */
            struct config_sms_facility *facilities; /* by scheduling facility, none by default */
            size_t n_facilities;
            unsigned max_segments;          /* default 3 */
            unsigned grace_period_s;        /* default 2h */
            char *path;                     /* file sink output, default var/sms.jsonl */
            bool mask_numbers;              /* file sink writes +*******0100, default true */
            unsigned lease_s;               /* PostgreSQL: a claimed text's lease, default 60 */
        } sms;
    } sinks;
    struct {
        char *address;                  /* "host:port" as written, default 127.0.0.1:9575 */
        char *host;
        unsigned port;
        bool enabled;                   /* default true */
        /* When the daemon reports itself `degraded` (/status, /readyz, log);
         * 0 turns a check off. */
        struct {
            unsigned nack_percent;      /* NACKs (AE/AR/CE/CR) above this % … default 20 */
            unsigned nack_window_s;     /* … of the messages in this window, default 5m */
            unsigned nack_min_messages; /* … once it holds at least this many, default 20 */
            unsigned queue_depth;       /* messages waiting for the store, default 4096 */
            unsigned sink_failing_s;    /* a sink failing this long, default 10m */
        } thresholds;
    } metrics;
    struct {
        struct config_input_file *files; /* none by default */
        size_t n_files;
        unsigned poll_s;                 /* how often the directories are looked at, default 5 */
    } inputs;
};

/* Collected errors, each "file:line:column: message" (owned strings). */
struct config_errors {
    char **items;
    size_t n;
};
void config_errors_release(struct config_errors *e);

/* Loads and validates `path`.  Returns an owned config, or NULL with every
 * problem in *errs.  *errs is reset on entry (it need not be initialised) and
 * must be released by the caller whatever the result.  `errs` may be NULL. */
struct config *config_load(const char *path, struct config_errors *errs)
    __attribute__((warn_unused_result));
/* The same from a string (tests; `name` is used in messages and as ->path). */
struct config *config_load_string(const char *name, const char *text, size_t len,
                                  struct config_errors *errs)
    __attribute__((warn_unused_result));
/* config_free(NULL) is a no-op.  Secrets are wiped before release. */
void config_free(struct config *c);

/* Writes the effective configuration as YAML-like text (`hl7bridge check`),
 * secrets as "(set)".  Borrows both arguments. */
void config_dump(const struct config *c, FILE *out);
/* The effective value of one key or section named by a dotted path
 * ("sinks.sms"), in config_dump's form (secrets as "(set)").  Returns 0, or
 * -1 when no such key is reachable through single sections. */
int config_dump_part(const struct config *c, const char *dotted, FILE *out);

#endif
