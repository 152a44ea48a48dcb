/* sinks/sms — appointment texts (confirmations and reminders) from SIU
 * messages, sent through Azure Communication Services SMS or written to a
 * file.
 *
 * The SMS sink is a self-contained worker: its own thread and its own SQLite
 * connection to the store file.  It reads what ingest mapped: the
 * appointment facts the rules produced for each stored SIU message
 * (appt_facts, written in the message's own transaction), never the raw
 * message, and updates its appointments and its outbox and deletes the
 * facts it read in one transaction (store/sms.c).  A second step sends due
 * texts, one HTTPS request per text, and records each answer.  The message
 * itself was acknowledged long before: the SMS is a side effect and never
 * changes an ACK.
 *
 * Policies (docs in config/hl7bridge.yaml):
 *   - state follows the latest event time (EVN-2, else MSH-7); an older event
 *     changes nothing and sends nothing, a re-sent one (same time, same
 *     facts) is a duplicate; each text has a unique (appointment, event key)
 *     so it is queued once, and a repeatability id derived from the same pair
 *     so the provider delivers it once even when it is re-sent;
 *   - a text longer than max_segments is cut at a word boundary and ends
 *     with "..." (counted as `truncated`), so the start of the template —
 *     where the time and place are — always goes out;
 *   - a reminder whose (quiet-hours adjusted) time is not after the moment
 *     the message arrived is not queued; a due text is sent until
 *     grace_period after its time (reminders only before the start);
 *   - personal fields and numbers are purged at start + duration + grace, or
 *     once a cancelled appointment has nothing left to send; a sent, failed
 *     or skipped text loses its body and number at once.
 *
 * Threads: sink_sms_start / sink_sms_stop from the main thread;
 * sink_sms_get_stats from any thread; the helpers from any thread.  Never
 * logs names, numbers, texts or the key. */
#ifndef SINKS_SMS_H
#define SINKS_SMS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

struct config;

/* Largest rendered text in bytes (2,048 characters of UTF-8 and a NUL). */
#define SINK_SMS_TEXT_MAX 8200

/* ---- the sink ------------------------------------------------------------ */

/* Why a text was not sent (also the counter names in sms_counters). */
enum sink_sms_skip {
    SINK_SMS_SKIP_NO_CONSENT = 0, /* consent required and not given */
    SINK_SMS_SKIP_NO_NUMBER,      /* no phone number in the message */
    SINK_SMS_SKIP_BAD_NUMBER,     /* not a valid E.164 / national number */
    SINK_SMS_SKIP_STALE,          /* older than the appointment's latest event */
    SINK_SMS_SKIP_DUPLICATE,      /* same event time and facts as already applied */
    SINK_SMS_SKIP_REMINDER_PAST,  /* reminder time already passed on arrival */
    SINK_SMS_SKIP_TOO_LATE,       /* due more than grace_period ago, or after the start */
    SINK_SMS_SKIP_PAST_APPT,      /* confirmation for an appointment already over */
    SINK_SMS_SKIP_NO_APPT,        /* no appointment id, facility or start time */
    SINK_SMS_SKIP_UNPARSEABLE,    /* (no longer counted: facts are mapped at ingest) */
    SINK_SMS_SKIP_OTHER_TRIGGER,  /* SIU trigger without a text (S16, S18…) */
    SINK_SMS_SKIP_KIND_OFF,       /* that kind of text is switched off (sinks.sms.send) */
    SINK_SMS_SKIP_N
};
const char *sink_sms_skip_name(enum sink_sms_skip s);

struct sink_sms;

struct store_opts;

/* Opens the sink's store connection through `store` (store_sms_open: the
 * SQLite file or the PostgreSQL database, and there the claim lease),
 * checks the templates and the access key and starts the worker.  `c` is
 * borrowed until sink_sms_stop; nothing of `store` is kept.  For `type:
 * none` a sink without a thread is returned.  NULL with a message in err. */
struct sink_sms *sink_sms_start(const struct config *c, const struct store_opts *store, char *err,
                                size_t errcap);
/* Stops the worker promptly (a request in flight is abandoned; the text
 * stays claimed and is re-sent with the same repeatability id at the next
 * start, or on PostgreSQL by another node once its lease ran out) and
 * frees the sink.  NULL is a no-op. */
void sink_sms_stop(struct sink_sms *s);

struct sink_sms_stats {
    uint64_t sent, failed, truncated, retries;
    uint64_t skipped[SINK_SMS_SKIP_N];
    uint64_t messages;           /* appointment facts (one per SIU message) looked at */
    uint64_t texts_pending;      /* queued, not yet sent */
    uint64_t reminders_pending;  /* of which reminders */
    uint64_t purged;             /* appointments whose personal fields were purged */
    int halted;                  /* 1 after a 401: nothing is sent until restart */
    int64_t last_success_ms;
    char last_error[256];        /* no PHI, no key */
};
/* Totals since the store was created (persisted counters) plus live
 * figures.  Any thread; s may be NULL (zeroes). */
void sink_sms_get_stats(const struct sink_sms *s, struct sink_sms_stats *out);

/* Problems of the SMS settings the configuration loader cannot judge (it
 * does not know the template language): every template and link template
 * (global, per language, per facility) is checked; a link may not name
 * {link}.  Each problem goes to fn as "sinks.sms.…: reason"; returns how
 * many there were.  `check` and sink_sms_start both call it.  Any thread. */
typedef void (*sink_sms_problem_fn)(void *ud, const char *problem);
unsigned sink_sms_config_check(const struct config *c, sink_sms_problem_fn fn, void *ud);

/* The sinks.sms.facilities entry whose codes hold `facility` (compared
 * exactly), or -1: the global settings apply. */
int sink_sms_facility_index(const struct config *c, const char *facility);
/* The template of a kind (0 scheduled, 1 updated, 2 cancelled, 3 reminder)
 * for facility entry `facility` (-1: none) and PID-15 `lang` (may be ""):
 * the languages list that applies (the facility's own when it wrote one,
 * even empty, else sinks.sms.languages) in the patient's language first,
 * then the facility's template, then sinks.sms.templates.  Borrowed from c. */
const char *sink_sms_pick_template(const struct config *c, int facility, const char *lang,
                                   unsigned kind);

/* ---- text helpers (exposed for tests) ------------------------------------- */

/* Number → E.164 ("+" and 8..15 digits).  Accepts "+CC…", "00CC…", national
 * numbers (a leading trunk 0 dropped) prefixed with `default_country`, and
 * for country 1 the NANP forms (10 digits, or 11 starting with 1, "011"
 * international prefix), with spaces, dots, dashes, slashes and
 * parentheses.  0 with `out`, -1 when not a valid number (empty input: -1). */
int sink_sms_e164(const char *in, const char *default_country, char *out, size_t cap)
    __attribute__((warn_unused_result));

enum sink_sms_encoding { SINK_SMS_GSM7 = 0, SINK_SMS_UCS2 };
struct sink_sms_segments {
    enum sink_sms_encoding encoding;
    size_t chars;    /* Unicode characters */
    size_t units;    /* GSM-7 septets (extension characters count 2) or UTF-16 units */
    unsigned segments; /* 1 up to 160 / 70 units, else 153 / 67 per segment */
};
/* Counts the segments of UTF-8 text; an escape pair or a surrogate pair is
 * never split across segments.  Invalid UTF-8 counts as U+FFFD (UCS-2). */
void sink_sms_count(const char *text, size_t len, struct sink_sms_segments *out);
/* Cuts `text` (in place, NUL-terminated) so it fits `max_segments`: at the
 * last space that leaves room for "...", which is appended.  Returns 1 when
 * it was cut, 0 when it already fitted. */
int sink_sms_fit(char *text, unsigned max_segments);

/* Values a template may name. */
struct sink_sms_vars {
    const char *first_name, *location, *provider, *link;
    const char *appointment_id, *facility;
    int64_t start;          /* UTC seconds */
    int32_t utc_offset;     /* seconds east of UTC in force at `start` */
};
/* Checks a template: placeholders {first_name} {location} {provider}
 * {link} {appointment_id} {facility} {start} {start:STRFTIME}, "{{" and
 * "}}" for literal braces.
 * 0, or -1 with the problem in why. */
int sink_sms_template_check(const char *tmpl, char *why, size_t cap)
    __attribute__((warn_unused_result));
/* Renders a checked template into out (NUL-terminated UTF-8, cut at cap);
 * runs of spaces are folded to one and the ends trimmed (strftime pads %e
 * and %l with a space; an empty {link} leaves one at the end).  {start}
 * alone is "%a %b %e %l:%M %p". */
void sink_sms_render(const char *tmpl, const struct sink_sms_vars *v, char *out, size_t cap);
/* Renders a checked link template (sinks.sms.link: a join URL made of the
 * appointment's fields): every substituted value percent-encoded (RFC 3986
 * unreserved characters kept), {link} empty, nothing folded or trimmed. */
void sink_sms_render_link(const char *tmpl, const struct sink_sms_vars *v, char *out, size_t cap);

/* Deterministic repeatability id: a name-based UUID (version 5, SHA-1, RFC
 * 4122 §4.3) of "facility\x1fappointment\x1fevent key" in hl7bridge's own
 * namespace (SINK_SMS_UUID_NS).  out gets 36 characters and a NUL. */
#define SINK_SMS_UUID_NS "6f1d3c1e-3b7a-5c55-9a0e-5b9d2a3c7e11"
void sink_sms_request_id(const char *facility, const char *appt_id, const char *event_key,
                         char out[37]);

/* RFC 1123 date of UTC seconds: "Sun, 06 Nov 1994 08:49:37 GMT". */
void sink_sms_rfc1123(int64_t t, char out[32]);

/* Quiet hours: when `due` falls in the local window [start_min, end_min)
 * (wrapping past midnight when start > end), the time one minute before the
 * window began; otherwise `due`.  Never after `due`, so never after the
 * appointment.  `offset_at(t)` gives the zone's UTC offset at t and
 * `local_to_utc` converts back (both from the clinic's zone). */
struct sink_sms_zone {
    int32_t (*offset_at)(const void *zone, int64_t t);
    int64_t (*local_to_utc)(const void *zone, int64_t local);
    const void *zone;
};
int64_t sink_sms_quiet_adjust(int64_t due, const struct sink_sms_zone *z, unsigned start_min,
                              unsigned end_min);

/* JSON string body (no quotes) of UTF-8 text: " \ and control characters
 * escaped, invalid UTF-8 replaced by U+FFFD.  0 / -1 when out is full. */
int sink_sms_json_escape(struct buf *out, const char *s, size_t len)
    __attribute__((warn_unused_result));

/* ---- Azure Communication Services (sinks/acs.c) --------------------------- */

#define SINK_ACS_API_VERSION "2021-03-07"
#define SINK_ACS_MAX_MESSAGE_CHARS 2048

/* The pieces of a signed request.  `host` is exactly the Host header sent
 * ("name" or "name:port" when the port is not 443), `path_query` e.g.
 * "/sms?api-version=2021-03-07". */
struct sink_acs_signed {
    char date[32];               /* x-ms-date */
    char content_hash[48];       /* x-ms-content-sha256: base64 SHA-256 of the body */
    char authorization[160];     /* "HMAC-SHA256 SignedHeaders=…&Signature=…" */
};
/* key = the base64-DECODED access key.  0 / -1. */
int sink_acs_sign(const uint8_t *key, size_t key_len, const char *method, const char *path_query,
                  const char *host, int64_t now_s, const uint8_t *body, size_t body_len,
                  struct sink_acs_signed *out) __attribute__((warn_unused_result));
/* Base64 → bytes; -1 when not valid base64 or too long for cap. */
int sink_acs_key_decode(const char *b64, uint8_t *out, size_t cap, size_t *len)
    __attribute__((warn_unused_result));

/* Splits an endpoint URL (https://host[:port][/base]) into the Host header
 * value and the request URL / path-and-query for POST …/sms.  0 / -1. */
int sink_acs_endpoint(const char *endpoint, char *host, size_t hcap, char *url, size_t ucap,
                      char *path_query, size_t pcap) __attribute__((warn_unused_result));

/* The send body for one recipient.  0 / -1 when out is full. */
int sink_acs_body(struct buf *out, const char *from, const char *to, const char *request_id,
                  const char *first_sent, const char *message, int delivery_report,
                  const char *tag) __attribute__((warn_unused_result));

/* One recipient result of a 202 answer. */
struct sink_acs_result {
    char to[24];
    char message_id[128];
    int http_status;             /* httpStatusCode */
    int successful;
    char repeatability[24];      /* repeatabilityResult: "accepted" | "rejected" | "" */
    char error[256];             /* errorMessage */
};
/* Parses {"value":[…]}: up to `max` results.  Returns how many, -1 when the
 * body is not such an answer. */
int sink_acs_parse_answer(const uint8_t *body, size_t len, struct sink_acs_result *out,
                          size_t max) __attribute__((warn_unused_result));
/* The retry hint of a 429/503 answer: retry-after-ms, then
 * x-ms-retry-after-ms (milliseconds), then Retry-After (seconds or an HTTP
 * date); each argument may be NULL.  0 with *ms, -1 when none is usable. */
int sink_acs_retry_hint(const char *retry_after_ms, const char *x_ms_retry_after_ms,
                        const char *retry_after, int64_t now_s, uint64_t *ms)
    __attribute__((warn_unused_result));
/* 1 for the statuses worth retrying (429, 5xx; 0 = no answer), else 0. */
int sink_acs_retryable(int http_status);

/* ---- the HTTPS client (one per worker; blocking, on the worker thread) ---- */

struct sink_acs_client;

/* `key` is the decoded access key (copied; wiped on free).  TLS peers are
 * verified (ca_file: a PEM bundle instead of the system store).  NULL with
 * a message in err. */
struct sink_acs_client *sink_acs_client_new(const char *endpoint, const uint8_t *key,
                                            size_t key_len, const char *ca_file,
                                            unsigned timeout_s, char *err, size_t errcap);
void sink_acs_client_free(struct sink_acs_client *c);

struct sink_acs_reply {
    int http_status;                 /* 0: no answer (see transport_error) */
    char transport_error[160];
    int n_results;                   /* 202: results parsed, -1 unreadable */
    struct sink_acs_result result;   /* the (single) recipient's result */
    char error_code[64];             /* other statuses: error.code … */
    char error_message[256];         /* … and error.message of the body */
    int has_hint;                    /* a retry hint was given … */
    uint64_t hint_ms;                /* … of this many milliseconds */
};
/* Signs and POSTs one body to {endpoint}/sms.  `cancel` (may be NULL) aborts
 * a transfer in progress when it becomes non-zero.  Returns 0 when an
 * answer was read (any status), -1 on a transport error. */
int sink_acs_send(struct sink_acs_client *c, const uint8_t *body, size_t len, int64_t now_s,
                  const atomic_int *cancel, struct sink_acs_reply *out);

#endif
