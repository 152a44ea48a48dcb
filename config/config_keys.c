/* config key tables: every key of hl7bridge.yaml, its type, where it lands in
 * struct config, its range and its default — plus the few rules that span
 * several keys (purview and acs requirements, secret vs secret file,
 * quiet-hours pairs, listener uniqueness).
 *
 * Adding a key means adding one table row and one struct field; the loader,
 * release and dump walk these tables and need no change.  Defaults are text
 * parsed by the same code as the file, and config/hl7bridge.yaml repeats them
 * for operators: the unit tests check the two agree. */
#include <arpa/inet.h>
#include <errno.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config_int.h"
#include "core/limits.h"
#include "core/conninfo.h"
#include "core/num.h"

#define OFF(f) offsetof(struct config, f)
#define LOFF(f) offsetof(struct config_listener, f)
#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))

/* CT_ENUM stores an int-sized value; every enum it targets must be one. */
_Static_assert(sizeof(enum config_ack_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_schema) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_unmatched) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_audit_type) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_audit_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_line_ending) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_cloud) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_sms_type) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_store_type) == sizeof(int), "enum size");

/* ---- value checks ------------------------------------------------------ */

#define ZONEINFO "/usr/share/zoneinfo/"

static int check_nonempty(const char *v, char *why, size_t len)
{
    if (*v)
        return 0;
    snprintf(why, len, "must not be empty");
    return -1;
}

/* IANA names are letters, digits and _ + - in /-separated parts; refusing
 * anything else keeps "../../etc/passwd" from being probed.  UTC is always
 * accepted: libc knows it even where tzdata is not installed. */
static int check_tz(const char *v, char *why, size_t len)
{
    if (strcmp(v, "UTC") == 0)
        return 0;
    int ok = *v && *v != '/' && !strstr(v, "..") && strlen(v) < 128 &&
             strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-/") ==
                 strlen(v);
    char file[sizeof ZONEINFO + 128];
    struct stat st;
    if (ok) {
        snprintf(file, sizeof file, ZONEINFO "%s", v);
        ok = stat(file, &st) == 0 && S_ISREG(st.st_mode);
    }
    if (!ok) {
        snprintf(why, len, "unknown time zone \"%.64s\" (no " ZONEINFO "%.64s)", v, v);
        return -1;
    }
    return 0;
}

/* The account `run` switches to after binding: it must exist here, or the
 * daemon would stop at start-up (as root) on a configuration `check`
 * passed. */
static int check_user(const char *v, char *why, size_t len)
{
    if (check_nonempty(v, why, len) != 0)
        return -1;
    errno = 0;
    if (getpwnam(v))
        return 0;
    int e = errno;
    snprintf(why, len, "no user \"%.64s\" on this machine%s%s", v, e ? ": " : "",
             e ? strerror(e) : "");
    return -1;
}

static int check_readable(const char *v, char *why, size_t len)
{
    if (access(v, R_OK) == 0)
        return 0;
    int e = errno;
    snprintf(why, len, "cannot read %.128s: %s", v, strerror(e));
    return -1;
}

/* Endpoint URLs carry the client secret, a bearer token or a signed SMS
 * body: HTTPS only, also on loopback, so no setting sends them in clear. */
static int check_url(const char *v, char *why, size_t len)
{
    int ok = strncmp(v, "https://", 8) == 0 && v[8] && v[8] != '/';
    for (const char *p = v; ok && *p; p++)
        ok = (unsigned char)*p > ' ' && *p != 0x7f;
    if (!ok) {
        snprintf(why, len, "expected an https:// URL (secrets never go out in clear), got \"%.64s\"",
                 v);
        return -1;
    }
    return 0;
}

/* E.164: "+", a non-zero country code digit, at most 15 digits in all. */
static int check_e164(const char *v, char *why, size_t len)
{
    size_t n = strlen(v);
    if (v[0] == '+' && n >= 3 && n <= 16 && v[1] != '0' && strspn(v + 1, "0123456789") == n - 1)
        return 0;
    snprintf(why, len, "expected an E.164 number: \"+\" then up to 15 digits, like +14155550100");
    return -1;
}

static int check_country(const char *v, char *why, size_t len)
{
    size_t n = strlen(v);
    if (n >= 1 && n <= 3 && v[0] != '0' && strspn(v, "0123456789") == n)
        return 0;
    snprintf(why, len, "expected a country calling code of 1 to 3 digits, like 1 or 44");
    return -1;
}

/* An HL7 field location: segment id, '-', field number, then up to two
 * .component / .subcomponent numbers ("ZCN-2", "PID-13.1"). */
static int check_hl7_field(const char *v, char *why, size_t len)
{
    int ok = strlen(v) >= 5 && v[0] >= 'A' && v[0] <= 'Z' &&
             strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") == 3 && v[3] == '-';
    const char *p = v + 4;
    for (int part = 0; ok && part < 3; part++) {
        size_t d = strspn(p, "0123456789");
        ok = d > 0 && d <= 4 && *p != '0';
        p += d;
        if (*p != '.')
            break;
        p++;
    }
    if (!ok || *p) {
        snprintf(why, len, "expected an HL7 field like ZCN-2 or PID-13.1, got \"%.64s\"", v);
        return -1;
    }
    return 0;
}

/* MSH-3/MSH-4 values: no HL7 delimiters, or our ACKs would not parse. */
static int check_hd(const char *v, char *why, size_t len)
{
    if (*v && !strpbrk(v, "|^~\\&\r\n") && strlen(v) <= 180)
        return 0;
    snprintf(why, len, "must be 1 to 180 characters without HL7 delimiters | ^ ~ \\ &");
    return -1;
}

/* Listener names appear in logs and metric labels. */
static int check_name(const char *v, char *why, size_t len)
{
    size_t n = strlen(v);
    if (n >= 1 && n <= 64 &&
        strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n)
        return 0;
    snprintf(why, len, "must be 1 to 64 letters, digits, '_', '.' or '-'");
    return -1;
}

/* ---- word lists (index = enum value) ----------------------------------- */

static const char *const w_ack_mode[] = {"original", "enhanced", NULL};
static const char *const w_frame_end[] = {"strict", "lenient", NULL};
static const char *const w_log_level[] = {"debug", "info", "warn", "error", NULL};
static const char *const w_log_format[] = {"logfmt", "json", NULL};
static const char *const w_schema[] = {"healthcare", "epic", NULL};
static const char *const w_unmatched[] = {"accept", "reject", NULL};
static const char *const w_audit_type[] = {"file", "purview", "none", NULL};
static const char *const w_store_type[] = {"sqlite", "postgresql", NULL};
static const char *const w_format[] = {"tsv", "csv", "psv", NULL};
static const char *const w_eol[] = {"crlf", "lf", NULL};
static const char *const w_cloud[] = {"commercial", "gcc", "itar-l4", "itar-l5", NULL};
static const char *const w_sms_type[] = {"file", "acs", "none", NULL};
static const char *const w_charset[] = {"ASCII", "8859/1", "8859/15", "UNICODE UTF-8", NULL};

_Static_assert(LOG_DEBUG == 0 && LOG_INFO == 1 && LOG_WARN == 2 && LOG_ERROR == 3,
               "w_log_level follows enum log_level");
_Static_assert(LOG_FMT_LOGFMT == 0 && LOG_FMT_JSON == 1, "w_log_format follows enum log_format");

/* ---- listen ------------------------------------------------------------ */

static const char *const w_tls_version[] = {"1.2", "1.3", NULL};

/* A CIDR: IPv4 a.b.c.d[/0-32] or IPv6 addr[/0-128]. */
static int check_cidr(const char *v, char *why, size_t len)
{
    char addr[64];
    const char *slash = strchr(v, '/');
    size_t al = slash ? (size_t)(slash - v) : strlen(v);
    unsigned char bin[16];
    if (al == 0 || al >= sizeof addr)
        goto bad;
    memcpy(addr, v, al);
    addr[al] = '\0';
    int v6 = strchr(addr, ':') != NULL;
    if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, bin) != 1)
        goto bad;
    if (slash) {
        uint64_t bits;
        const char *b = slash + 1;
        if (num_parse_u64((const uint8_t *)b, strlen(b), v6 ? 128 : 32, &bits) != 0)
            goto bad;
    }
    return 0;
bad:
    snprintf(why, len, "must be an address or CIDR (10.1.0.0/16, 2001:db8::/32)");
    return -1;
}

enum { TK_CERT, TK_KEY, TK_CA, TK_VERIFY, TK_MINVER, TK_NAMES };
static const struct cfg_key tls_keys[] = {
    [TK_CERT] = {.name = "cert_file", .type = CT_STR, .off = LOFF(tls.cert_file), .flags = CK_PATH,
                 .check = check_readable},
    [TK_KEY] = {.name = "key_file", .type = CT_STR, .off = LOFF(tls.key_file), .flags = CK_PATH,
                .check = check_readable},
    [TK_CA] = {.name = "client_ca_file", .type = CT_STR, .off = LOFF(tls.client_ca_file), .flags = CK_PATH,
               .check = check_readable},
    [TK_VERIFY] = {.name = "verify_client", .type = CT_BOOL, .off = LOFF(tls.verify_client),
                   .def = "false"},
    [TK_MINVER] = {.name = "min_version", .type = CT_ENUM, .off = LOFF(tls.min_version),
                   .words = w_tls_version, .def = "1.2"},
    [TK_NAMES] = {.name = "allowed_names", .type = CT_STRLIST, .off = LOFF(tls.allowed_names),
                  .off2 = LOFF(tls.n_allowed_names)},
};

/* TLS is on when the section is written; it then needs a certificate and a
 * key, and verifying clients needs the CA that signs them. */
static void validate_tls(struct cfg_walk *w, void *base, const char *path,
                         const yaml_node_t *node, const yaml_node_t *const *seen,
                         const int *given)
{
    struct config_listener *l = base;
    (void)seen;
    if (!node)
        return;
    l->tls.enabled = true;
    if (!given[TK_CERT])
        cfg_error(w, node, "%s: cert_file is required", path);
    if (!given[TK_KEY])
        cfg_error(w, node, "%s: key_file is required", path);
    if (l->tls.verify_client && !given[TK_CA])
        cfg_error(w, node, "%s: verify_client needs client_ca_file", path);
    if (l->tls.n_allowed_names && !l->tls.verify_client)
        cfg_error(w, node, "%s: allowed_names needs verify_client: true", path);
}
static int tls_present(const void *base)
{
    return ((const struct config_listener *)base)->tls.enabled;
}
static const struct cfg_section tls_sec = {
    tls_keys, NKEYS(tls_keys), 0, validate_tls, tls_present,
};

/* Linux caps TCP_KEEPIDLE/TCP_KEEPINTVL at 32767 s and TCP_KEEPCNT at 127. */
static const struct cfg_key keepalive_keys[] = {
    {.name = "enabled", .type = CT_BOOL, .off = LOFF(keepalive.enabled), .def = "true"},
    {.name = "idle_s", .type = CT_UINT, .off = LOFF(keepalive.idle_s),
     .min = 1, .max = 32767, .def = "60"},
    {.name = "interval_s", .type = CT_UINT, .off = LOFF(keepalive.interval_s),
     .min = 1, .max = 32767, .def = "10"},
    {.name = "count", .type = CT_UINT, .off = LOFF(keepalive.count),
     .min = 1, .max = 127, .def = "6"},
};
static const struct cfg_section keepalive_sec = {
    keepalive_keys, NKEYS(keepalive_keys), 0, NULL, NULL,
};

static const struct cfg_key listener_keys[] = {
    {.name = "name", .type = CT_STR, .flags = CK_REQUIRED, .off = LOFF(name),
     .def = "main", .check = check_name},
    {.name = "address", .type = CT_ADDR, .off = LOFF(address), .off2 = LOFF(host),
     .off3 = LOFF(port), .def = "0.0.0.0:2575"},
    {.name = "max_connections", .type = CT_UINT, .off = LOFF(max_connections),
     .min = 1, .max = 100000, .def = "512"},
    {.name = "max_message_bytes", .type = CT_SIZE, .off = LOFF(max_message_bytes),
     .min = 1024, .max = HB_MAX_MESSAGE_BYTES_CEILING, .def = "16MiB"},
    {.name = "idle_timeout_s", .type = CT_UINT, .off = LOFF(idle_timeout_s),
     .min = 1, .max = 86400, .def = "600"},
    {.name = "charset", .type = CT_CHOICE, .off = LOFF(charset), .words = w_charset},
    {.name = "tls", .type = CT_SECTION, .sub = &tls_sec},
    {.name = "senders", .type = CT_MAP, .flags = CK_MAP_LIST, .off = LOFF(senders),
     .off2 = LOFF(n_senders)},
    {.name = "allow", .type = CT_STRLIST, .off = LOFF(allow), .off2 = LOFF(n_allow),
     .check = check_cidr},
    {.name = "max_connections_per_ip", .type = CT_UINT, .off = LOFF(max_connections_per_ip),
     .min = 0, .max = 100000, .def = "64"},
    {.name = "handshake_timeout_s", .type = CT_UINT, .off = LOFF(handshake_timeout_s),
     .min = 1, .max = 3600, .def = "10"},
    {.name = "frame_timeout_s", .type = CT_UINT, .off = LOFF(frame_timeout_s),
     .min = 1, .max = 86400, .def = "60"},
    {.name = "frame_end", .type = CT_ENUM, .off = LOFF(frame_end), .words = w_frame_end,
     .def = "strict"},
    {.name = "keepalive", .type = CT_SECTION, .sub = &keepalive_sec},
};
static const struct cfg_section listener_sec = {
    listener_keys, NKEYS(listener_keys), sizeof(struct config_listener), NULL, NULL,
};

/* ---- ack, store, log --------------------------------------------------- */

static const struct cfg_key ack_keys[] = {
    {.name = "mode", .type = CT_ENUM, .off = OFF(ack.mode), .words = w_ack_mode, .def = "original"},
    {.name = "application", .type = CT_STR, .off = OFF(ack.application), .def = "HL7BRIDGE",
     .check = check_hd},
    {.name = "facility", .type = CT_STR, .off = OFF(ack.facility), .def = "HL7BRIDGE",
     .check = check_hd},
};
static const struct cfg_section ack_sec = {ack_keys, NKEYS(ack_keys), 0, NULL, NULL};

#define RETENTION_MAX_S 315360000u /* 3650 days */
static const struct cfg_key retention_keys[] = {
    {.name = "raw", .type = CT_DURATION, .off = OFF(store.retention.raw_s),
     .min = 0, .max = RETENTION_MAX_S, .def = "7d"},
    {.name = "delivered", .type = CT_DURATION, .off = OFF(store.retention.delivered_s),
     .min = 0, .max = RETENTION_MAX_S, .def = "7d"},
    {.name = "quarantined", .type = CT_DURATION, .off = OFF(store.retention.quarantined_s),
     .min = 0, .max = RETENTION_MAX_S, .def = "30d"},
    {.name = "rejected", .type = CT_DURATION, .off = OFF(store.retention.rejected_s),
     .min = 0, .max = RETENTION_MAX_S, .def = "7d"},
    {.name = "sms", .type = CT_DURATION, .off = OFF(store.retention.sms_s),
     .min = 0, .max = RETENTION_MAX_S, .def = "30d"},
    {.name = "sms_file", .type = CT_DURATION, .off = OFF(store.retention.sms_file_s),
     .min = 60, .max = RETENTION_MAX_S, .def = "30d"},
    {.name = "audit_files", .type = CT_DURATION, .off = OFF(store.retention.audit_files_s),
     .min = 60, .max = RETENTION_MAX_S, .def = "7d"},
    {.name = "upload_blocks", .type = CT_DURATION, .off = OFF(store.retention.upload_blocks_s),
     .min = 0, .max = RETENTION_MAX_S, .def = "30d"},
};
static const struct cfg_section retention_sec = {retention_keys, NKEYS(retention_keys), 0, NULL,
                                                 NULL};

/* A connection string libpq can read is checked by libpq itself (check,
 * run); here only what must never be in it: a password typed in clear. */
static int check_conninfo(const char *v, char *why, size_t len)
{
    if (!*v) {
        snprintf(why, len, "must not be empty");
        return -1;
    }
    if (conninfo_has_password(v)) {
        snprintf(why, len, "holds a password; put it in store.password (${NAME}) or "
                 "store.password_file");
        return -1;
    }
    return 0;
}

enum { STK_TYPE, STK_URL, STK_PASSWORD, STK_PASSWORD_FILE };
static const struct cfg_key store_keys[] = {
    [STK_TYPE] = {.name = "type", .type = CT_ENUM, .off = OFF(store.type), .words = w_store_type,
                  .def = "sqlite"},
    [STK_URL] = {.name = "url", .type = CT_STR, .off = OFF(store.url), .check = check_conninfo},
    [STK_PASSWORD] = {.name = "password", .type = CT_SECRET, .off = OFF(store.password)},
    [STK_PASSWORD_FILE] = {.name = "password_file", .type = CT_SECRET_FILE, .flags = CK_PATH,
                           .off = OFF(store.password), .off2 = OFF(store.password_file)},
    {.name = "path", .type = CT_STR, .off = OFF(store.path), .flags = CK_PATH, .def = "var/hl7bridge.db",
     .check = check_nonempty},
    {.name = "retention_days", .type = CT_UINT, .off = OFF(store.retention_days),
     .min = 0, .max = 3650, .def = "7"},
    {.name = "retention", .type = CT_SECTION, .sub = &retention_sec},
    {.name = "rejected_retention_days", .type = CT_UINT, .off = OFF(store.rejected_retention_days),
     .min = 0, .max = 3650, .def = "7"},
    {.name = "min_free_disk_mb", .type = CT_U64, .off = OFF(store.min_free_disk_mb),
     .min = 0, .max = 1ull << 30, .def = "64"},
    {.name = "max_pending_rows", .type = CT_U64, .off = OFF(store.max_pending_rows),
     .min = 1, .max = 1000000000000ull, .def = "10000000"},
};
static void one_secret_source(struct cfg_walk *w, const char *path, const yaml_node_t *const *seen,
                              const int *given, size_t k_secret, size_t k_file,
                              const struct cfg_key *keys);

static void validate_store(struct cfg_walk *w, void *base, const char *path,
                           const yaml_node_t *node, const yaml_node_t *const *seen,
                           const int *given)
{
    struct config *c = base;
    one_secret_source(w, path, seen, given, STK_PASSWORD, STK_PASSWORD_FILE, store_keys);
    if (c->store.type == CONFIG_STORE_POSTGRESQL) {
        if (!c->store.url && !given[STK_URL])
            cfg_error(w, node, "%s.url: required when type is postgresql", path);
        return;
    }
    for (size_t k = STK_URL; k <= STK_PASSWORD_FILE; k++)
        if (given[k] && seen[k])
            cfg_error(w, seen[k], "%s.%s: only read with %s.type: postgresql", path,
                      store_keys[k].name, path);
}
static const struct cfg_section store_sec = {store_keys, NKEYS(store_keys), 0, validate_store,
                                             NULL};

/* A node's name goes into the store beside what it wrote and into logs. */
static int check_node_name(const char *v, char *why, size_t len)
{
    size_t n = strlen(v);
    int ok = n > 0 && n <= 63;
    for (size_t i = 0; ok && i < n; i++)
        ok = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
             (v[i] >= '0' && v[i] <= '9') || v[i] == '-' || v[i] == '_' || v[i] == '.';
    if (ok)
        return 0;
    snprintf(why, len, "1 to 63 letters, digits, '-', '_' or '.'");
    return -1;
}
static const struct cfg_key node_keys[] = {
    {.name = "name", .type = CT_STR, .off = OFF(node.name), .check = check_node_name},
    /* not written: the host name */
    {.name = "heartbeat_s", .type = CT_UINT, .off = OFF(node.heartbeat_s),
     .min = 1, .max = 3600, .def = "5"},
};
static const struct cfg_section node_sec = {node_keys, NKEYS(node_keys), 0, NULL, NULL};

/* 256 MiB: a 2-core VM has a few GiB; per connection max_message_bytes
 * (16 MiB) times max_connections (512) would allow 8 GiB. */
static const struct cfg_key limits_keys[] = {
    {.name = "max_buffered_mb", .type = CT_U64, .off = OFF(limits.max_buffered_mb),
     .min = 1, .max = 1ull << 20, .def = "256"},
};
static const struct cfg_section limits_sec = {limits_keys, NKEYS(limits_keys), 0, NULL, NULL};

static const struct cfg_key log_keys[] = {
    {.name = "level", .type = CT_ENUM, .off = OFF(log.level), .words = w_log_level, .def = "info"},
    {.name = "format", .type = CT_ENUM, .off = OFF(log.format), .words = w_log_format,
     .def = "logfmt"},
};
static const struct cfg_section log_sec = {log_keys, NKEYS(log_keys), 0, NULL, NULL};

/* ---- mapping ----------------------------------------------------------- */

#define KOFF(f) offsetof(struct config_lookup, f)
/* The file is read (and its columns checked) by the mapping loader, which
 * reports problems as file:line: message. */
static const struct cfg_key lookup_keys[] = {
    {.name = "file", .type = CT_STR, .flags = CK_REQUIRED | CK_PATH, .off = KOFF(file),
     .check = check_nonempty},
    {.name = "key_column", .type = CT_STR, .off = KOFF(key_column), .def = "ehr_id",
     .check = check_nonempty},
    {.name = "value_column", .type = CT_STR, .off = KOFF(value_column), .def = "upn",
     .check = check_nonempty},
};
_Static_assert(offsetof(struct config_lookup, name) == 0, "CK_NAMED: name comes first");
static const struct cfg_section lookup_sec = {
    lookup_keys, NKEYS(lookup_keys), sizeof(struct config_lookup), NULL, NULL,
};

static const struct cfg_key mapping_keys[] = {
    {.name = "schema", .type = CT_ENUM, .off = OFF(mapping.schema), .words = w_schema,
     .def = "healthcare"},
    {.name = "headers", .type = CT_MAP, .off = OFF(mapping.headers), .off2 = OFF(mapping.n_headers)},
    {.name = "rules", .type = CT_STRLIST, .off = OFF(mapping.rules), .off2 = OFF(mapping.n_rules),
     .flags = CK_PATH, .min_n = 1, .max_n = 256, .check = check_readable},
     /* not written: the built-in rules */
    {.name = "time_zone", .type = CT_STR, .off = OFF(mapping.time_zone), .def = "UTC",
     .check = check_tz},
    {.name = "unmatched", .type = CT_ENUM, .off = OFF(mapping.unmatched), .words = w_unmatched,
     .def = "accept"},
    {.name = "date_format", .type = CT_STR, .off = OFF(mapping.date_format),
     .def = "%Y-%m-%dT%H:%M:%SZ", .check = check_nonempty},
    {.name = "lookups", .type = CT_SECTIONS, .flags = CK_NAMED, .off = OFF(mapping.lookups),
     .off2 = OFF(mapping.n_lookups), .max_n = HB_MAX_LOOKUP_TABLES, .sub = &lookup_sec},
};
static const struct cfg_section mapping_sec = {mapping_keys, NKEYS(mapping_keys), 0, NULL, NULL};

/* ---- sinks.audit ------------------------------------------------------- */

enum { AK_TYPE, AK_TENANT, AK_APP, AK_SECRET, AK_SECRET_FILE, AK_JOB, AK_TOKEN_URL,
       AK_UPLOAD_URL, AK_CA, AK_FORMAT, AK_EOL, AK_CLOUD, AK_RESOURCE, AK_BATCH,
       AK_PARALLEL, AK_DIR, AK_TIMEOUT, AK_LEASE };

static const struct cfg_key batch_keys[] = {
    {.name = "max_rows", .type = CT_UINT, .off = OFF(sinks.audit.batch.max_rows),
     .min = 1, .max = 100000, .def = "5000"},
    {.name = "max_bytes", .type = CT_SIZE, .off = OFF(sinks.audit.batch.max_bytes),
     .min = 1024, .max = 3000000000ull, .def = "256MiB"},
    {.name = "max_age_s", .type = CT_UINT, .off = OFF(sinks.audit.batch.max_age_s),
     .min = 1, .max = 86400, .def = "300"},
};
static const struct cfg_section batch_sec = {batch_keys, NKEYS(batch_keys), 0, NULL, NULL};

static const struct cfg_key audit_keys[] = {
    [AK_TYPE] = {.name = "type", .type = CT_ENUM, .off = OFF(sinks.audit.type),
                 .words = w_audit_type, .def = "file"},
    [AK_TENANT] = {.name = "tenant_id", .type = CT_STR, .off = OFF(sinks.audit.tenant_id),
                   .check = check_nonempty},
    [AK_APP] = {.name = "app_id", .type = CT_STR, .off = OFF(sinks.audit.app_id),
                .check = check_nonempty},
    [AK_SECRET] = {.name = "app_secret", .type = CT_SECRET, .off = OFF(sinks.audit.app_secret)},
    [AK_SECRET_FILE] = {.name = "app_secret_file", .type = CT_SECRET_FILE,
                        .flags = CK_PATH,
                        .off = OFF(sinks.audit.app_secret), .off2 = OFF(sinks.audit.app_secret_file)},
    [AK_JOB] = {.name = "job_id", .type = CT_STR, .off = OFF(sinks.audit.job_id),
                .check = check_nonempty},
    [AK_TOKEN_URL] = {.name = "token_url", .type = CT_STR, .off = OFF(sinks.audit.token_url),
                      .check = check_url},
    [AK_UPLOAD_URL] = {.name = "upload_url", .type = CT_STR, .off = OFF(sinks.audit.upload_url),
                       .check = check_url},
    [AK_CA] = {.name = "ca_file", .type = CT_STR, .off = OFF(sinks.audit.ca_file), .flags = CK_PATH,
               .check = check_readable},
    [AK_FORMAT] = {.name = "format", .type = CT_ENUM, .off = OFF(sinks.audit.format),
                   .words = w_format, .def = "tsv"},
    [AK_EOL] = {.name = "line_ending", .type = CT_ENUM, .off = OFF(sinks.audit.line_ending),
                .words = w_eol, .def = "crlf"},
    [AK_CLOUD] = {.name = "cloud", .type = CT_ENUM, .off = OFF(sinks.audit.cloud),
                  .words = w_cloud, .def = "commercial"},
    [AK_RESOURCE] = {.name = "resource", .type = CT_STR, .off = OFF(sinks.audit.resource),
                     .def = "https://microsoft.onmicrosoft.com/86dfdabb-5089-4a0c-880a-cfa5a790c5b1",
                     .check = check_nonempty},
    [AK_BATCH] = {.name = "batch", .type = CT_SECTION, .sub = &batch_sec},
    [AK_PARALLEL] = {.name = "max_parallel_uploads", .type = CT_UINT,
                     .off = OFF(sinks.audit.max_parallel_uploads), .min = 1, .max = 16, .def = "2"},
    [AK_DIR] = {.name = "directory", .type = CT_STR, .off = OFF(sinks.audit.directory), .flags = CK_PATH,
                .def = "var/out", .check = check_nonempty},
    [AK_TIMEOUT] = {.name = "timeout_s", .type = CT_UINT, .off = OFF(sinks.audit.timeout_s),
                    .min = 1, .max = 86400, .def = "400"},
    [AK_LEASE] = {.name = "lease_s", .type = CT_UINT, .off = OFF(sinks.audit.lease_s),
                  .min = 1, .max = 3600, .def = "60"},
};

/* A secret may come from the environment or from a file, not both: which
 * one wins would otherwise depend on key order. */
static void one_secret_source(struct cfg_walk *w, const char *path, const yaml_node_t *const *seen,
                              const int *given, size_t k_secret, size_t k_file,
                              const struct cfg_key *keys)
{
    /* Both keys written empty (as in the sample) is fine. */
    if (given[k_secret] == 0 || given[k_file] == 0)
        return;
    const yaml_node_t *later = seen[k_secret]->start_mark.index > seen[k_file]->start_mark.index
                             ? seen[k_secret] : seen[k_file];
    cfg_error(w, later, "%s: give %s or %s, not both", path, keys[k_secret].name, keys[k_file].name);
}

static void require_when(struct cfg_walk *w, const char *path, const yaml_node_t *node,
                         const int *given, const struct cfg_key *keys, size_t k,
                         const char *field, const char *cond)
{
    /* given[k] with the field still NULL means its own error was reported. */
    if (field || given[k])
        return;
    cfg_error(w, node, "%s.%s: required when %s", path, keys[k].name, cond);
}

static void validate_audit(struct cfg_walk *w, void *base, const char *path,
                           const yaml_node_t *node, const yaml_node_t *const *seen,
                           const int *given)
{
    struct config *c = base;
    one_secret_source(w, path, seen, given, AK_SECRET, AK_SECRET_FILE, audit_keys);
    if (c->sinks.audit.type != CONFIG_AUDIT_PURVIEW)
        return;
    const char *cond = "type is purview";
    require_when(w, path, node, given, audit_keys, AK_TENANT,
                 c->sinks.audit.tenant_id, cond);
    require_when(w, path, node, given, audit_keys, AK_APP,
                 c->sinks.audit.app_id, cond);
    if (!given[AK_SECRET_FILE])
        require_when(w, path, node, given, audit_keys, AK_SECRET,
                     c->sinks.audit.app_secret,
                     "type is purview (app_secret: ${NAME} or app_secret_file: PATH)");
    require_when(w, path, node, given, audit_keys, AK_JOB,
                 c->sinks.audit.job_id, cond);
}
static const struct cfg_section audit_sec = {audit_keys, NKEYS(audit_keys), 0, validate_audit, NULL};

/* ---- sinks.sms --------------------------------------------------------- */

static const struct cfg_key consent_keys[] = {
    {.name = "field", .type = CT_STR, .off = OFF(sinks.sms.consent.field), .def = "ZCN-2",
     .check = check_hl7_field},
    {.name = "accept", .type = CT_STRLIST, .off = OFF(sinks.sms.consent.accept),
     .off2 = OFF(sinks.sms.consent.n_accept), .min_n = 1, .max_n = 64,
     .defs = (const char *const[]){"Y", NULL}},
    {.name = "required", .type = CT_BOOL, .off = OFF(sinks.sms.consent.required), .def = "true"},
};
static const struct cfg_section consent_sec = {consent_keys, NKEYS(consent_keys), 0, NULL, NULL};

enum { QK_START, QK_END };
static const struct cfg_key quiet_keys[] = {
    [QK_START] = {.name = "start", .type = CT_HHMM, .off = OFF(sinks.sms.quiet_hours.start_min),
                  .max = 23 * 60 + 59},
    [QK_END] = {.name = "end", .type = CT_HHMM, .off = OFF(sinks.sms.quiet_hours.end_min),
                .max = 23 * 60 + 59},
};

/* Quiet hours are a window: both ends or neither.  start > end wraps past
 * midnight (22:00..07:00); start == end would be an empty or a full day,
 * both surely mistakes. */
static void validate_quiet(struct cfg_walk *w, void *base, const char *path,
                           const yaml_node_t *node, const yaml_node_t *const *seen,
                           const int *given)
{
    struct config *c = base;
    (void)seen;
    if (!given[QK_START] && !given[QK_END])
        return;
    if (!given[QK_START] || !given[QK_END]) {
        cfg_error(w, node, "%s: give both start and end", path);
        return;
    }
    if (given[QK_START] < 0 || given[QK_END] < 0)
        return;
    if (c->sinks.sms.quiet_hours.start_min == c->sinks.sms.quiet_hours.end_min) {
        cfg_error(w, node, "%s: start and end must differ", path);
        return;
    }
    c->sinks.sms.quiet_hours.enabled = true;
}
static int quiet_present(const void *base)
{
    return ((const struct config *)base)->sinks.sms.quiet_hours.enabled;
}
static const struct cfg_section quiet_sec = {
    quiet_keys, NKEYS(quiet_keys), 0, validate_quiet, quiet_present,
};

#define TIME_FMT "{start:%a %b %e %l:%M %p}"
static const struct cfg_key template_keys[] = {
    {.name = "scheduled", .type = CT_STR, .off = OFF(sinks.sms.templates.scheduled),
     .check = check_nonempty,
     .def = "Hi {first_name}, your appointment at {location} is booked for " TIME_FMT ". {link}"},
    {.name = "updated", .type = CT_STR, .off = OFF(sinks.sms.templates.updated),
     .check = check_nonempty,
     .def = "Hi {first_name}, your appointment at {location} has changed: it is now " TIME_FMT
            ". {link}"},
    {.name = "cancelled", .type = CT_STR, .off = OFF(sinks.sms.templates.cancelled),
     .check = check_nonempty,
     .def = "Hi {first_name}, your appointment at {location} on " TIME_FMT
            " has been cancelled. {link}"},
    {.name = "reminder", .type = CT_STR, .off = OFF(sinks.sms.templates.reminder),
     .check = check_nonempty,
     .def = "Reminder: {first_name}, your appointment at {location} is on " TIME_FMT ". {link}"},
};
static const struct cfg_section template_sec = {template_keys, NKEYS(template_keys), 0, NULL, NULL};

#define LOFF_SMS(f) offsetof(struct config_sms_language, f)
static const struct cfg_key lang_template_keys[] = {
    {.name = "scheduled", .type = CT_STR, .off = LOFF_SMS(templates.scheduled), .check = check_nonempty},
    {.name = "updated", .type = CT_STR, .off = LOFF_SMS(templates.updated), .check = check_nonempty},
    {.name = "cancelled", .type = CT_STR, .off = LOFF_SMS(templates.cancelled), .check = check_nonempty},
    {.name = "reminder", .type = CT_STR, .off = LOFF_SMS(templates.reminder), .check = check_nonempty},
};
static const struct cfg_section lang_template_sec = {
    lang_template_keys, NKEYS(lang_template_keys), 0, NULL, NULL,
};
static const struct cfg_key language_keys[] = {
    {.name = "codes", .type = CT_STRLIST, .flags = CK_REQUIRED, .off = LOFF_SMS(codes),
     .off2 = LOFF_SMS(n_codes), .min_n = 1, .max_n = 16, .check = check_nonempty},
    {.name = "templates", .type = CT_SECTION, .sub = &lang_template_sec},
};
static const struct cfg_section language_sec = {
    language_keys, NKEYS(language_keys), sizeof(struct config_sms_language), NULL, NULL,
};

#define FOFF_SMS(f) offsetof(struct config_sms_facility, f)
static const struct cfg_key fac_template_keys[] = {
    {.name = "scheduled", .type = CT_STR, .off = FOFF_SMS(templates.scheduled), .check = check_nonempty},
    {.name = "updated", .type = CT_STR, .off = FOFF_SMS(templates.updated), .check = check_nonempty},
    {.name = "cancelled", .type = CT_STR, .off = FOFF_SMS(templates.cancelled), .check = check_nonempty},
    {.name = "reminder", .type = CT_STR, .off = FOFF_SMS(templates.reminder), .check = check_nonempty},
};
static const struct cfg_section fac_template_sec = {
    fac_template_keys, NKEYS(fac_template_keys), 0, NULL, NULL,
};
/* A facility's languages: the same entries as sinks.sms.languages, shown
 * as "~" by the dump when not written (the global list applies). */
static int fac_languages_present(const void *base)
{
    return ((const struct config_sms_facility *)base)->has_languages;
}
static const struct cfg_section fac_language_sec = {
    language_keys, NKEYS(language_keys), sizeof(struct config_sms_language), NULL,
    fac_languages_present,
};
enum { FK_CODES, FK_FROM, FK_TZ, FK_LINK, FK_TEMPLATES, FK_LANGUAGES };
static const struct cfg_key facility_keys[] = {
    [FK_CODES] = {.name = "codes", .type = CT_STRLIST, .flags = CK_REQUIRED, .off = FOFF_SMS(codes),
                  .off2 = FOFF_SMS(n_codes), .min_n = 1, .max_n = HB_MAX_SMS_FACILITY_CODES,
                  .check = check_nonempty},
    [FK_FROM] = {.name = "from", .type = CT_STR, .off = FOFF_SMS(from), .check = check_e164},
    [FK_TZ] = {.name = "time_zone", .type = CT_STR, .off = FOFF_SMS(time_zone), .check = check_tz},
    [FK_LINK] = {.name = "link", .type = CT_STR, .off = FOFF_SMS(link)},
    [FK_TEMPLATES] = {.name = "templates", .type = CT_SECTION, .sub = &fac_template_sec},
    [FK_LANGUAGES] = {.name = "languages", .type = CT_SECTIONS, .off = FOFF_SMS(languages),
                      .off2 = FOFF_SMS(n_languages), .max_n = 64, .sub = &fac_language_sec},
};
/* A facility's own languages list, even an empty one, replaces the global
 * list for its patients; not written, the global one applies. */
static void validate_facility(struct cfg_walk *w, void *base, const char *path,
                              const yaml_node_t *node, const yaml_node_t *const *seen,
                              const int *given)
{
    (void)w;
    (void)path;
    (void)node;
    (void)seen;
    ((struct config_sms_facility *)base)->has_languages = given[FK_LANGUAGES] != 0;
}
static const struct cfg_section facility_sec = {
    facility_keys, NKEYS(facility_keys), sizeof(struct config_sms_facility), validate_facility,
    NULL,
};

/* A facility code names one entry: a second one would be dead
 * configuration that looks alive. */
static void check_facility_codes(struct cfg_walk *w, const struct config *c, const char *path,
                                 const yaml_node_t *node)
{
    const yaml_node_t *list = cfg_find(w, node, "facilities");
    size_t n_items = list && list->type == YAML_SEQUENCE_NODE
                   ? (size_t)(list->data.sequence.items.top - list->data.sequence.items.start) : 0;
    if (n_items != c->sinks.sms.n_facilities)
        return;
    for (size_t i = 0; i < n_items; i++) {
        const struct config_sms_facility *f = &c->sinks.sms.facilities[i];
        const yaml_node_t *item = yaml_document_get_node(cfg_doc(w), list->data.sequence.items.start[i]);
        const yaml_node_t *codes = cfg_find(w, item, "codes");
        for (size_t k = 0; k < f->n_codes; k++) {
            for (size_t j = 0; j <= i; j++) {
                const struct config_sms_facility *g = &c->sinks.sms.facilities[j];
                size_t upto = j == i ? k : g->n_codes;
                size_t m = 0;
                while (m < upto && strcmp(g->codes[m], f->codes[k]) != 0)
                    m++;
                if (m == upto)
                    continue;
                const yaml_node_t *at = codes ? codes : item;
                if (codes && codes->type == YAML_SEQUENCE_NODE &&
                    (size_t)(codes->data.sequence.items.top - codes->data.sequence.items.start) ==
                        f->n_codes)
                    at = yaml_document_get_node(cfg_doc(w), codes->data.sequence.items.start[k]);
                cfg_error(w, at,
                          "%s.facilities[%zu].codes[%zu]: duplicate facility code \"%.64s\" "
                          "(already in facilities[%zu])", path, i, k, f->codes[k], j);
                break;
            }
        }
    }
}

static const struct cfg_key send_keys[] = {
    {.name = "scheduled", .type = CT_BOOL, .off = OFF(sinks.sms.send.scheduled), .def = "true"},
    {.name = "updated", .type = CT_BOOL, .off = OFF(sinks.sms.send.updated), .def = "true"},
    {.name = "cancelled", .type = CT_BOOL, .off = OFF(sinks.sms.send.cancelled), .def = "true"},
    {.name = "reminder", .type = CT_BOOL, .off = OFF(sinks.sms.send.reminder), .def = "true"},
};
static const struct cfg_section send_sec = {send_keys, NKEYS(send_keys), 0, NULL, NULL};

enum { SK_TYPE, SK_ENDPOINT, SK_KEY, SK_KEY_FILE, SK_FROM, SK_COUNTRY, SK_TZ, SK_CA, SK_CONSENT,
       SK_REMINDERS, SK_QUIET, SK_TEMPLATES, SK_SEND, SK_LANGUAGES, SK_LINK, SK_SEGMENTS, SK_GRACE, SK_PATH,
       SK_MASK, SK_FACILITIES, SK_LEASE };

static const struct cfg_key sms_keys[] = {
    [SK_TYPE] = {.name = "type", .type = CT_ENUM, .off = OFF(sinks.sms.type),
                 .words = w_sms_type, .def = "file"},
    [SK_ENDPOINT] = {.name = "endpoint", .type = CT_STR, .off = OFF(sinks.sms.endpoint),
                     .check = check_url},
    [SK_KEY] = {.name = "access_key", .type = CT_SECRET, .off = OFF(sinks.sms.access_key)},
    [SK_KEY_FILE] = {.name = "access_key_file", .type = CT_SECRET_FILE,
                     .flags = CK_PATH,
                     .off = OFF(sinks.sms.access_key), .off2 = OFF(sinks.sms.access_key_file)},
    [SK_FROM] = {.name = "from", .type = CT_STR, .off = OFF(sinks.sms.from), .check = check_e164},
    [SK_COUNTRY] = {.name = "default_country", .type = CT_STR, .off = OFF(sinks.sms.default_country),
                    .def = "1", .check = check_country},
    [SK_TZ] = {.name = "time_zone", .type = CT_STR, .off = OFF(sinks.sms.time_zone),
               .check = check_tz},
    [SK_CA] = {.name = "ca_file", .type = CT_STR, .off = OFF(sinks.sms.ca_file), .flags = CK_PATH,
               .check = check_readable},
    [SK_CONSENT] = {.name = "consent", .type = CT_SECTION, .sub = &consent_sec},
    [SK_REMINDERS] = {.name = "reminders", .type = CT_DURLIST, .off = OFF(sinks.sms.reminders_s),
                      .off2 = OFF(sinks.sms.n_reminders), .min = 60, .max = 30 * 86400,
                      .max_n = 16, .defs = (const char *const[]){"24h", "2h", NULL}},
    [SK_QUIET] = {.name = "quiet_hours", .type = CT_SECTION, .sub = &quiet_sec},
    [SK_TEMPLATES] = {.name = "templates", .type = CT_SECTION, .sub = &template_sec},
    [SK_SEND] = {.name = "send", .type = CT_SECTION, .sub = &send_sec},
    [SK_LANGUAGES] = {.name = "languages", .type = CT_SECTIONS, .off = OFF(sinks.sms.languages),
                      .off2 = OFF(sinks.sms.n_languages), .max_n = 64, .sub = &language_sec},
    [SK_LINK] = {.name = "link", .type = CT_STR, .off = OFF(sinks.sms.link), .def = ""},
    [SK_SEGMENTS] = {.name = "max_segments", .type = CT_UINT, .off = OFF(sinks.sms.max_segments),
                     .min = 1, .max = 10, .def = "3"},
    [SK_GRACE] = {.name = "grace_period", .type = CT_DURATION, .off = OFF(sinks.sms.grace_period_s),
                  .min = 0, .max = 7 * 86400, .def = "2h"},
    [SK_PATH] = {.name = "path", .type = CT_STR, .off = OFF(sinks.sms.path), .flags = CK_PATH,
                 .def = "var/sms.jsonl", .check = check_nonempty},
    [SK_MASK] = {.name = "mask_numbers", .type = CT_BOOL, .off = OFF(sinks.sms.mask_numbers),
                 .def = "true"},
    [SK_FACILITIES] = {.name = "facilities", .type = CT_SECTIONS, .off = OFF(sinks.sms.facilities),
                       .off2 = OFF(sinks.sms.n_facilities), .max_n = HB_MAX_SMS_FACILITIES,
                       .sub = &facility_sec},
    [SK_LEASE] = {.name = "lease_s", .type = CT_UINT, .off = OFF(sinks.sms.lease_s),
                  .min = 1, .max = 3600, .def = "60"},
};

static void validate_sms(struct cfg_walk *w, void *base, const char *path,
                         const yaml_node_t *node, const yaml_node_t *const *seen,
                         const int *given)
{
    struct config *c = base;
    one_secret_source(w, path, seen, given, SK_KEY, SK_KEY_FILE, sms_keys);
    check_facility_codes(w, c, path, node);
    if (c->sinks.sms.type != CONFIG_SMS_ACS)
        return;
    const char *cond = "type is acs";
    require_when(w, path, node, given, sms_keys, SK_ENDPOINT,
                 c->sinks.sms.endpoint, cond);
    if (!given[SK_KEY_FILE])
        require_when(w, path, node, given, sms_keys, SK_KEY,
                     c->sinks.sms.access_key,
                     "type is acs (access_key: ${NAME} or access_key_file: PATH)");
    require_when(w, path, node, given, sms_keys, SK_FROM,
                 c->sinks.sms.from, cond);
}
static const struct cfg_section sms_sec = {sms_keys, NKEYS(sms_keys), 0, validate_sms, NULL};

static const struct cfg_key sinks_keys[] = {
    {.name = "audit", .type = CT_SECTION, .sub = &audit_sec},
    {.name = "sms", .type = CT_SECTION, .sub = &sms_sec},
};
static const struct cfg_section sinks_sec = {sinks_keys, NKEYS(sinks_keys), 0, NULL, NULL};

/* ---- metrics ----------------------------------------------------------- */

static const struct cfg_key thresholds_keys[] = {
    {.name = "nack_percent", .type = CT_UINT, .off = OFF(metrics.thresholds.nack_percent),
     .min = 0, .max = 100, .def = "20"},
    {.name = "nack_window", .type = CT_DURATION, .off = OFF(metrics.thresholds.nack_window_s),
     .min = 10, .max = 86400, .def = "5m"},
    {.name = "nack_min_messages", .type = CT_UINT,
     .off = OFF(metrics.thresholds.nack_min_messages), .min = 1, .max = 1000000, .def = "20"},
    {.name = "queue_depth", .type = CT_UINT, .off = OFF(metrics.thresholds.queue_depth),
     .min = 0, .max = 1000000, .def = "4096"},
    {.name = "sink_failing", .type = CT_DURATION, .off = OFF(metrics.thresholds.sink_failing_s),
     .min = 0, .max = 7 * 86400, .def = "10m"},
};
static const struct cfg_section thresholds_sec = {
    thresholds_keys, NKEYS(thresholds_keys), 0, NULL, NULL,
};

static const struct cfg_key metrics_keys[] = {
    {.name = "address", .type = CT_ADDR, .off = OFF(metrics.address), .off2 = OFF(metrics.host),
     .off3 = OFF(metrics.port), .def = "127.0.0.1:9575"},
    {.name = "enabled", .type = CT_BOOL, .off = OFF(metrics.enabled), .def = "true"},
    {.name = "thresholds", .type = CT_SECTION, .sub = &thresholds_sec},
};
static const struct cfg_section metrics_sec = {metrics_keys, NKEYS(metrics_keys), 0, NULL, NULL};

/* ---- root -------------------------------------------------------------- */

/* Two sockets clash when they share a port and either the host is the same
 * or one of them is the wildcard of the same address family. */
static int addr_clash(const char *h1, unsigned p1, const char *h2, unsigned p2)
{
    if (!h1 || !h2 || p1 != p2)
        return 0;
    if (strcasecmp(h1, h2) == 0)
        return 1;
    int v6a = strchr(h1, ':') != NULL, v6b = strchr(h2, ':') != NULL;
    if (v6a != v6b)
        return 0;
    const char *any = v6a ? "::" : "0.0.0.0";
    return strcmp(h1, any) == 0 || strcmp(h2, any) == 0;
}

/* What does not run on PostgreSQL yet is refused, one line each, rather
 * than left silently undone (README: "Running more than one node"). */
static void refuse_on_postgresql(struct cfg_walk *w, const struct config *c,
                                 const yaml_node_t *root)
{
    const yaml_node_t *at;
    if (c->inputs.n_files) {
        at = cfg_find(w, cfg_find(w, root, "inputs"), "files");
        cfg_error(w, at ? at : root,
                  "inputs.files: file uploads do not run on store.type postgresql yet");
    }
}

static void validate_root(struct cfg_walk *w, void *base, const char *path,
                          const yaml_node_t *node, const yaml_node_t *const *seen,
                          const int *given)
{
    struct config *c = base;
    (void)path;
    (void)seen;
    (void)given;
    /* Patients see their clinic's time: without its own zone the SMS sink
     * uses the one the rules read HL7 times in. */
    if (!c->sinks.sms.time_zone && c->mapping.time_zone &&
        !(c->sinks.sms.time_zone = strdup(c->mapping.time_zone)))
        cfg_error(w, node, "out of memory");
    /* node.name not written: the host name, cut to a valid name. */
    if (!c->node.name) {
        char host[256] = "";
        if (gethostname(host, sizeof host - 1) != 0 || !host[0])
            snprintf(host, sizeof host, "node");
        host[strcspn(host, ".")] = '\0';
        if (strlen(host) > 63)
            host[63] = '\0';
        char why[8];
        if (check_node_name(host, why, sizeof why) != 0)
            snprintf(host, sizeof host, "node");
        if (!(c->node.name = strdup(host)))
            cfg_error(w, node, "out of memory");
    }
    if (c->store.type == CONFIG_STORE_POSTGRESQL)
        refuse_on_postgresql(w, c, node);
    /* The Epic connector takes pipe- or tab-separated files only. */
    if (c->mapping.schema == CONFIG_SCHEMA_EPIC && c->sinks.audit.format == CONFIG_FORMAT_CSV) {
        const yaml_node_t *f = cfg_find(w, cfg_find(w, cfg_find(w, node, "sinks"), "audit"),
                                        "format");
        if (!f)
            f = cfg_find(w, cfg_find(w, node, "mapping"), "schema");
        cfg_error(w, f ? f : node,
                  "sinks.audit.format: csv is refused by the Epic connector (mapping.schema: "
                  "epic); use tsv or psv");
    }
    const yaml_node_t *list = cfg_find(w, node, "listen");
    size_t n_items = list && list->type == YAML_SEQUENCE_NODE
                   ? (size_t)(list->data.sequence.items.top - list->data.sequence.items.start) : 0;
    /* Locations come from the nodes; they line up with listeners[] only
     * when every item produced an element. */
    if (n_items != c->n_listeners)
        return;
    for (size_t j = 0; j < n_items; j++) {
        const struct config_listener *b = &c->listeners[j];
        const yaml_node_t *item_b = yaml_document_get_node(cfg_doc(w), list->data.sequence.items.start[j]);
        for (size_t i = 0; i < j; i++) {
            const struct config_listener *a = &c->listeners[i];
            const yaml_node_t *item_a =
                yaml_document_get_node(cfg_doc(w), list->data.sequence.items.start[i]);
            const yaml_node_t *na = cfg_find(w, item_a, "name"), *nb = cfg_find(w, item_b, "name");
            if (na && nb && a->name && b->name && strcmp(a->name, b->name) == 0) {
                cfg_error(w, nb, "listen[%zu].name: duplicate listener name \"%s\" (first at line %zu)",
                          j, b->name, (size_t)na->start_mark.line + 1);
            }
            if (addr_clash(a->host, a->port, b->host, b->port)) {
                const yaml_node_t *at = cfg_find(w, item_b, "address");
                cfg_error(w, at ? at : item_b,
                          "listen[%zu].address: %s clashes with listen[%zu] (%s)",
                          j, b->address, i, a->address);
            }
        }
        if (c->metrics.enabled && addr_clash(b->host, b->port, c->metrics.host, c->metrics.port)) {
            const yaml_node_t *m = cfg_find(w, cfg_find(w, node, "metrics"), "address");
            if (!m)     /* metrics left at its default: point at the listener */
                m = cfg_find(w, item_b, "address");
            cfg_error(w, m ? m : item_b, "metrics.address: %s clashes with listen[%zu] (%s)",
                      c->metrics.address, j, b->address);
        }
    }
}

/* ---- inputs ------------------------------------------------------------- */

#define IOFF(f) offsetof(struct config_input_file, f)
static const struct cfg_key input_file_keys[] = {
    {.name = "directory", .type = CT_STR, .off = IOFF(directory), .flags = CK_REQUIRED | CK_PATH,
     .check = check_nonempty},
    {.name = "pattern", .type = CT_STR, .off = IOFF(pattern), .def = "*.txt",
     .check = check_nonempty},
    {.name = "done_directory", .type = CT_STR, .off = IOFF(done_directory),
     .flags = CK_REQUIRED | CK_PATH, .check = check_nonempty},
    {.name = "min_age_s", .type = CT_UINT, .off = IOFF(min_age_s), .min = 0, .max = 86400,
     .def = "10"},
};
static const struct cfg_section input_file_sec = {
    input_file_keys, NKEYS(input_file_keys), sizeof(struct config_input_file), NULL, NULL,
};
static const struct cfg_key inputs_keys[] = {
    {.name = "files", .type = CT_SECTIONS, .off = OFF(inputs.files), .off2 = OFF(inputs.n_files),
     .min_n = 0, .max_n = 16, .sub = &input_file_sec},
    {.name = "poll_s", .type = CT_UINT, .off = OFF(inputs.poll_s), .min = 1, .max = 3600,
     .def = "5"},
};
static const struct cfg_section inputs_sec = {inputs_keys, NKEYS(inputs_keys), 0, NULL, NULL};

static const struct cfg_key root_keys[] = {
    {.name = "user", .type = CT_STR, .off = OFF(user), .check = check_user},
    {.name = "listen", .type = CT_SECTIONS, .off = OFF(listeners), .off2 = OFF(n_listeners),
     .min_n = 1, .max_n = HB_MAX_LISTENERS, .sub = &listener_sec},
    {.name = "ack", .type = CT_SECTION, .sub = &ack_sec},
    {.name = "node", .type = CT_SECTION, .sub = &node_sec},
    {.name = "store", .type = CT_SECTION, .sub = &store_sec},
    {.name = "limits", .type = CT_SECTION, .sub = &limits_sec},
    {.name = "log", .type = CT_SECTION, .sub = &log_sec},
    {.name = "mapping", .type = CT_SECTION, .sub = &mapping_sec},
    {.name = "sinks", .type = CT_SECTION, .sub = &sinks_sec},
    {.name = "metrics", .type = CT_SECTION, .sub = &metrics_sec},
    {.name = "inputs", .type = CT_SECTION, .sub = &inputs_sec},
};

const struct cfg_section cfg_root = {root_keys, NKEYS(root_keys), 0, validate_root, NULL};
