/* Unit tests for config/: the shipped sample, defaults, every value type good
 * and bad, error locations and collection, ${ENV} expansion, the secret
 * rules, cross-key rules and the dump.  Run from the project root (fixtures
 * are read from tests/fixtures/config).  Error strings are compared exactly:
 * they are the operator's interface. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "core/limits.h"

#define FIX "tests/fixtures/config/"

/* ---- helpers ----------------------------------------------------------- */

static struct config *load(const char *text, struct config_errors *e)
{
    return config_load_string("t.yaml", text, strlen(text), e);
}

/* Loads text that must be valid. */
static struct config *load_ok(const char *text)
{
    struct config_errors e;
    struct config *c = load(text, &e);
    for (size_t i = 0; i < e.n; i++)
        print_message("unexpected: %s\n", e.items[i]);
    assert_non_null(c);
    assert_int_equal(e.n, 0);
    config_errors_release(&e);
    return c;
}

/* Loads text that must fail with exactly the given errors (NULL-terminated),
 * in order. */
static void expect_errors(const char *text, ...)
{
    struct config_errors e;
    struct config *c = load(text, &e);
    assert_null(c);
    va_list ap;
    va_start(ap, text);
    size_t i = 0;
    for (const char *want; (want = va_arg(ap, const char *)) != NULL; i++) {
        if (i >= e.n)
            fail_msg("missing error %zu: %s", i, want);
        assert_string_equal(e.items[i], want);
    }
    va_end(ap);
    for (size_t j = i; j < e.n; j++)
        print_message("extra: %s\n", e.items[j]);
    assert_int_equal(e.n, i);
    config_errors_release(&e);
}

static void assert_no_error_contains(const struct config_errors *e, const char *secret)
{
    for (size_t i = 0; i < e->n; i++)
        if (strstr(e->items[i], secret))
            fail_msg("secret leaked in: %s", e->items[i]);
}

/* A temporary file with `content` and `mode`; the path is written to out. */
static void temp_file(char *out, size_t len, const char *content, mode_t mode)
{
    snprintf(out, len, "/tmp/hb-test-config-XXXXXX");
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* ---- the sample and defaults ------------------------------------------- */

/* A whole file, NUL terminated (owned). */
static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && strcmp(s + n - t, tail) == 0;
}

static void check_defaults(const struct config *c)
{
    assert_int_equal(c->n_listeners, 1);
    const struct config_listener *l = &c->listeners[0];
    assert_string_equal(l->name, "main");
    assert_string_equal(l->address, "0.0.0.0:2575");
    assert_string_equal(l->host, "0.0.0.0");
    assert_int_equal(l->port, HB_DEFAULT_PORT);
    assert_int_equal(l->max_connections, HB_DEFAULT_MAX_CONNECTIONS);
    assert_int_equal(l->max_message_bytes, HB_DEFAULT_MAX_MESSAGE_BYTES);
    assert_int_equal(l->idle_timeout_s, HB_DEFAULT_IDLE_TIMEOUT_S);
    assert_null(l->charset);

    assert_int_equal(c->ack.mode, CONFIG_ACK_ORIGINAL);
    assert_string_equal(c->ack.application, "HL7BRIDGE");
    assert_string_equal(c->ack.facility, "HL7BRIDGE");

    assert_true(ends_with(c->store.path, "var/hl7bridge.db"));
    assert_int_equal(c->store.retention_days, 7);
    assert_int_equal(c->store.min_free_disk_mb, 64);
    assert_int_equal(c->store.max_pending_rows, 10000000);

    assert_int_equal(c->log.level, LOG_INFO);
    assert_int_equal(c->log.format, LOG_FMT_LOGFMT);

    assert_int_equal(c->mapping.schema, CONFIG_SCHEMA_HEALTHCARE);
    assert_int_equal(c->mapping.n_headers, 0);
    assert_int_equal(c->mapping.n_rules, 0); /* the built-in rules */
    assert_string_equal(c->mapping.time_zone, "UTC");
    assert_int_equal(c->mapping.unmatched, CONFIG_UNMATCHED_ACCEPT);
    assert_string_equal(c->mapping.date_format, "%Y-%m-%dT%H:%M:%SZ");

    const __typeof__(c->sinks.audit) *a = &c->sinks.audit;
    assert_int_equal(a->type, CONFIG_AUDIT_FILE);
    assert_null(a->tenant_id);
    assert_null(a->app_id);
    assert_null(a->app_secret);
    assert_null(a->app_secret_file);
    assert_null(a->job_id);
    assert_null(a->token_url);
    assert_null(a->upload_url);
    assert_null(a->ca_file);
    assert_int_equal(a->format, CONFIG_FORMAT_TSV);
    assert_int_equal(a->line_ending, CONFIG_EOL_CRLF);
    assert_int_equal(a->cloud, CONFIG_CLOUD_COMMERCIAL);
    assert_string_equal(a->resource,
                        "https://microsoft.onmicrosoft.com/86dfdabb-5089-4a0c-880a-cfa5a790c5b1");
    assert_int_equal(a->batch.max_rows, 5000);
    assert_int_equal(a->batch.max_bytes, 268435456);
    assert_int_equal(a->batch.max_age_s, 300);
    assert_int_equal(a->max_parallel_uploads, 2);
    assert_true(ends_with(a->directory, "var/out"));
    assert_int_equal(a->timeout_s, 400);
    assert_int_equal(a->lease_s, 60);

    const __typeof__(c->sinks.sms) *s = &c->sinks.sms;
    assert_int_equal(s->type, CONFIG_SMS_FILE);
    assert_int_equal(s->lease_s, 60);
    assert_null(s->endpoint);
    assert_null(s->access_key);
    assert_null(s->access_key_file);
    assert_null(s->from);
    assert_string_equal(s->default_country, "1");
    assert_string_equal(s->time_zone, "UTC");
    assert_null(s->ca_file);
    assert_string_equal(s->consent.field, "ZCN-2");
    assert_int_equal(s->consent.n_accept, 1);
    assert_string_equal(s->consent.accept[0], "Y");
    assert_true(s->consent.required);
    assert_int_equal(s->n_reminders, 2);
    assert_int_equal(s->reminders_s[0], 86400);
    assert_int_equal(s->reminders_s[1], 7200);
    assert_false(s->quiet_hours.enabled);
    assert_string_equal(s->templates.scheduled,
                        "Hi {first_name}, your appointment at {location} is booked for "
                        "{start:%a %b %e %l:%M %p}. {link}");
    assert_non_null(s->templates.updated);
    assert_non_null(s->templates.cancelled);
    assert_non_null(s->templates.reminder);
    assert_string_equal(s->link, "");
    assert_int_equal(s->max_segments, 3);
    assert_int_equal(s->grace_period_s, 7200);
    assert_true(ends_with(s->path, "var/sms.jsonl"));

    assert_string_equal(c->metrics.address, "127.0.0.1:9575");
    assert_string_equal(c->metrics.host, "127.0.0.1");
    assert_int_equal(c->metrics.port, 9575);
    assert_true(c->metrics.enabled);
}

static void test_sample_file_loads(void **state)
{
    (void)state;
    struct config_errors e;
    struct config *c = config_load(CONFIG_DEFAULT_PATH, &e);
    for (size_t i = 0; i < e.n; i++)
        print_message("%s\n", e.items[i]);
    assert_non_null(c);
    assert_int_equal(e.n, 0);
    assert_string_equal(c->path, CONFIG_DEFAULT_PATH);
    check_defaults(c);
    config_free(c);
    config_errors_release(&e);
}

static void test_defaults_when_absent(void **state)
{
    (void)state;
    struct config *c = load_ok("");
    check_defaults(c);
    config_free(c);
    c = load_ok("# only a comment\n");
    check_defaults(c);
    config_free(c);
    c = load_ok("store:\nsinks: {audit: ~}\nlisten:\n");
    check_defaults(c);
    config_free(c);
}

/* config_dump's output (owned). */
static char *dump_raw(const struct config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_dump(c, f);
    fclose(f);
    return buf;
}

/* The sample documents the defaults: its effective values are the same. */
static char *dump_text(const struct config *c)
{
    char *buf = dump_raw(c);
    /* Without comments: the "# from PATH" lines and the notes on paths. */
    char *out = buf;
    for (const char *line = buf; *line;) {
        const char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) + 1 : strlen(line);
        if (line[0] != '#') {
            const char *note = strstr(line, "  # ");
            size_t keep = note && note < line + ll ? (size_t)(note - line) : ll;
            memmove(out, line, keep);
            out += keep;
            if (keep < ll)
                *out++ = '\n';
        }
        line += ll;
    }
    *out = '\0';
    return buf;
}

static void test_sample_matches_defaults(void **state)
{
    (void)state;
    /* As compiled into the binary (the Makefile's sed): its state paths in
     * the working directory, as the defaults are. */
    size_t len;
    char *text = read_text(CONFIG_DEFAULT_PATH, &len);
    for (char *p = text; (p = strstr(p, "../var/")) != NULL;)
        memmove(p, p + 3, strlen(p + 3) + 1);
    struct config *sample = load_ok(text);
    free(text);
    struct config *empty = load_ok("");
    char *a = dump_text(sample), *b = dump_text(empty);
    assert_string_equal(a, b);
    free(a);
    free(b);
    config_free(sample);
    config_free(empty);
}

/* The dump is YAML that loads back to the same effective configuration. */
static void test_dump_round_trip(void **state)
{
    (void)state;
    setenv("HB_TEST_ACS_KEY", "acs-key-value", 1);
    struct config_errors e;
    struct config *c = config_load(FIX "full.yaml", &e);
    assert_non_null(c);
    config_errors_release(&e);
    char *first = dump_text(c);
    config_free(c);
    /* The secret shows as "(set)", which is (rightly) refused as clear
     * text: put the reference back before loading the dump. */
    char *at = strstr(first, "access_key: (set)");
    assert_non_null(at);
    size_t cut = (size_t)(at - first) + strlen("access_key: ");
    char text[8192];
    snprintf(text, sizeof text, "%.*s${HB_TEST_ACS_KEY}%s", (int)cut, first,
             at + strlen("access_key: (set)"));
    c = load_ok(text);
    char *second = dump_text(c);
    assert_string_equal(first, second);
    assert_non_null(strstr(first, "  headers:\n    \"PatientName\": \"Patient Name\"\n"));
    assert_non_null(strstr(first, "    quiet_hours:\n      start: \"21:30\"\n"));
    assert_non_null(strstr(first, "    reminders: [2d, 90m]\n"));
    free(first);
    free(second);
    config_free(c);
    unsetenv("HB_TEST_ACS_KEY");
}

/* A relative path written in a file leads into the file's directory,
 * whatever the working directory; absolute ones and defaults stay as they
 * are; the dump shows both forms. */
static void test_relative_paths_resolve_against_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/hb-test-paths-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char real[4096];
    assert_non_null(realpath(dir, real));
    char path[4200], secret[4200];
    snprintf(secret, sizeof secret, "%s/key.txt", dir);
    FILE *f = fopen(secret, "w");
    assert_non_null(f);
    fputs("k3y\n", f);
    fclose(f);
    assert_int_equal(chmod(secret, 0600), 0);
    snprintf(path, sizeof path, "%s/rules", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/rules/a.yaml", dir);
    f = fopen(path, "w"); /* rule files must be readable; the content is not read here */
    assert_non_null(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/h.yaml", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("store: {path: state/h.db}\n"
          "mapping: {rules: [rules/a.yaml, /dev/null]}\n"
          "sinks:\n"
          "  audit: {directory: out}\n"
          "  sms: {type: acs, endpoint: \"https://x.example\", from: \"+15550100\",\n"
          "        access_key_file: key.txt}\n", f);
    fclose(f);
    struct config_errors e;
    struct config *c = config_load(path, &e);
    for (size_t i = 0; i < e.n; i++)
        print_message("%s\n", e.items[i]);
    assert_non_null(c);
    config_errors_release(&e);
    char want[4300];
    snprintf(want, sizeof want, "%s/state/h.db", real);
    assert_string_equal(c->store.path, want);
    snprintf(want, sizeof want, "%s/rules/a.yaml", real);
    assert_string_equal(c->mapping.rules[0], want);
    assert_string_equal(c->mapping.rules[1], "/dev/null");
    snprintf(want, sizeof want, "%s/out", real);
    assert_string_equal(c->sinks.audit.directory, want);
    snprintf(want, sizeof want, "%s/key.txt", real);
    assert_string_equal(c->sinks.sms.access_key_file, want);
    assert_string_equal(c->sinks.sms.access_key, "k3y");
    assert_string_equal(c->sinks.sms.path, "var/sms.jsonl"); /* a default */
    assert_string_equal(c->base_dir, real);

    char *buf = dump_raw(c);
    assert_non_null(strstr(buf, "h.db\"  # written: \"state/h.db\"\n"));
    assert_non_null(strstr(buf, "  # written: \"rules/a.yaml\"\n"));
    assert_non_null(strstr(buf, "\"var/sms.jsonl\"  # relative to the working directory\n"));
    free(buf);
    config_free(c);

    /* A configuration given as a string has no directory: kept as written. */
    c = load_ok("store: {path: state/h.db}\n");
    assert_string_equal(c->store.path, "state/h.db");
    assert_null(c->base_dir);
    config_free(c);
    unlink(secret);
    unlink(path);
    snprintf(path, sizeof path, "%s/rules/a.yaml", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/rules", dir);
    rmdir(path);
    rmdir(dir);
}

static void test_full_fixture(void **state)
{
    (void)state;
    setenv("HB_TEST_ACS_KEY", "acs-key-value", 1);
    struct config_errors e;
    struct config *c = config_load(FIX "full.yaml", &e);
    for (size_t i = 0; i < e.n; i++)
        print_message("%s\n", e.items[i]);
    assert_non_null(c);
    assert_int_equal(c->n_listeners, 3);
    assert_string_equal(c->listeners[0].name, "adt");
    assert_string_equal(c->listeners[0].host, "127.0.0.1");
    assert_int_equal(c->listeners[0].max_message_bytes, 1048576);
    assert_string_equal(c->listeners[0].charset, "8859/1");
    assert_string_equal(c->listeners[1].host, "::1");
    assert_int_equal(c->listeners[1].port, 2576);
    assert_int_equal(c->listeners[1].max_connections, 512);
    assert_string_equal(c->listeners[2].host, "edge.example.org");
    assert_int_equal(c->ack.mode, CONFIG_ACK_ENHANCED);
    assert_string_equal(c->ack.facility, "LAB");
    assert_int_equal(c->store.retention_days, 0);
    assert_int_equal(c->store.max_pending_rows, 5);
    assert_int_equal(c->log.level, LOG_DEBUG);
    assert_int_equal(c->log.format, LOG_FMT_JSON);
    assert_int_equal(c->mapping.schema, CONFIG_SCHEMA_EPIC);
    assert_int_equal(c->mapping.n_headers, 2);
    assert_string_equal(c->mapping.headers[1].key, "MRN");
    assert_string_equal(c->mapping.headers[1].value, "Medical Record Number");
    assert_int_equal(c->mapping.n_rules, 2);
    assert_string_equal(c->mapping.time_zone, "America/New_York");
    assert_int_equal(c->mapping.unmatched, CONFIG_UNMATCHED_REJECT);
    assert_int_equal(c->sinks.sms.type, CONFIG_SMS_ACS);
    assert_string_equal(c->sinks.sms.access_key, "acs-key-value");
    assert_null(c->sinks.sms.access_key_file);
    assert_string_equal(c->sinks.sms.from, "+18005550100");
    assert_false(c->sinks.sms.consent.required);
    assert_int_equal(c->sinks.sms.consent.n_accept, 2);
    assert_int_equal(c->sinks.sms.n_reminders, 2);
    assert_int_equal(c->sinks.sms.reminders_s[0], 2 * 86400);
    assert_int_equal(c->sinks.sms.reminders_s[1], 5400);
    assert_true(c->sinks.sms.quiet_hours.enabled);
    assert_int_equal(c->sinks.sms.quiet_hours.start_min, 21 * 60 + 30);
    assert_int_equal(c->sinks.sms.quiet_hours.end_min, 7 * 60);
    assert_string_equal(c->sinks.sms.templates.reminder, "See you {start:%H:%M}");
    assert_string_equal(c->sinks.sms.templates.cancelled,
                        "Hi {first_name}, your appointment at {location} on "
                        "{start:%a %b %e %l:%M %p} has been cancelled. {link}");
    assert_int_equal(c->sinks.sms.grace_period_s, 0);
    assert_string_equal(c->metrics.host, "::");
    assert_false(c->metrics.enabled);
    config_free(c);
    config_errors_release(&e);
    unsetenv("HB_TEST_ACS_KEY");
}

/* ---- value types ------------------------------------------------------- */

static void test_uint(void **state)
{
    (void)state;
    struct config *c = load_ok("store: {retention_days: 3650}\n");
    assert_int_equal(c->store.retention_days, 3650);
    config_free(c);
    c = load_ok("store: {retention_days: \"0\"}\n");
    assert_int_equal(c->store.retention_days, 0);
    config_free(c);
    expect_errors("store:\n  retention_days: 3651\n",
                  "t.yaml:2:19: store.retention_days: 3651 is out of range (0..3650)", NULL);
    expect_errors("store: {retention_days: -1}\n",
                  "t.yaml:1:25: store.retention_days: expected an unsigned integer, got \"-1\"",
                  NULL);
    expect_errors("store: {retention_days: 99999999999999999999999}\n",
                  "t.yaml:1:25: store.retention_days: expected an unsigned integer, got "
                  "\"99999999999999999999999\"", NULL);
    expect_errors("store: {retention_days: [1]}\n",
                  "t.yaml:1:25: store.retention_days: expected a single value", NULL);
    expect_errors("listen: [{name: a, max_connections: 0}]\n",
                  "t.yaml:1:37: listen[0].max_connections: 0 is out of range (1..100000)", NULL);
}

static void test_bool(void **state)
{
    (void)state;
    struct config *c = load_ok("metrics: {enabled: false}\n");
    assert_false(c->metrics.enabled);
    config_free(c);
    expect_errors("metrics: {enabled: yes}\n",
                  "t.yaml:1:20: metrics.enabled: expected true or false, got \"yes\"", NULL);
}

static void test_enum(void **state)
{
    (void)state;
    struct config *c = load_ok("log: {level: error}\nsinks: {audit: {cloud: itar-l5, format: psv}}\n");
    assert_int_equal(c->log.level, LOG_ERROR);
    assert_int_equal(c->sinks.audit.cloud, CONFIG_CLOUD_ITAR_L5);
    assert_int_equal(c->sinks.audit.format, CONFIG_FORMAT_PSV);
    config_free(c);
    c = load_ok("listen: [{name: a, charset: UNICODE UTF-8}]\nsinks: {sms: {type: none}}\n");
    assert_string_equal(c->listeners[0].charset, "UNICODE UTF-8");
    assert_int_equal(c->sinks.sms.type, CONFIG_SMS_NONE);
    config_free(c);
    expect_errors("ack:\n  mode: Enhanced\n",
                  "t.yaml:2:9: ack.mode: \"Enhanced\" is not one of: original, enhanced", NULL);
    expect_errors("listen: [{name: a, charset: latin1}]\n",
                  "t.yaml:1:29: listen[0].charset: \"latin1\" is not one of: ASCII, 8859/1, "
                  "8859/15, UNICODE UTF-8", NULL);
}

static void test_duration(void **state)
{
    (void)state;
    struct config *c = load_ok("sinks: {sms: {reminders: [1d, 90m, 60s, 1h30m], grace_period: 45s}}\n");
    assert_int_equal(c->sinks.sms.n_reminders, 4);
    assert_int_equal(c->sinks.sms.reminders_s[0], 86400);
    assert_int_equal(c->sinks.sms.reminders_s[1], 5400);
    assert_int_equal(c->sinks.sms.reminders_s[2], 60);
    assert_int_equal(c->sinks.sms.reminders_s[3], 5400);
    assert_int_equal(c->sinks.sms.grace_period_s, 45);
    config_free(c);
    c = load_ok("sinks: {sms: {reminders: []}}\n");
    assert_int_equal(c->sinks.sms.n_reminders, 0);
    config_free(c);
    expect_errors("sinks: {sms: {grace_period: 2 hours}}\n",
                  "t.yaml:1:29: sinks.sms.grace_period: expected a duration like 30s, 90m, 2h "
                  "or 1d, got \"2 hours\"", NULL);
    expect_errors("sinks: {sms: {grace_period: 120}}\n",
                  "t.yaml:1:29: sinks.sms.grace_period: expected a duration like 30s, 90m, 2h "
                  "or 1d, got \"120\"", NULL);
    expect_errors("sinks: {sms: {grace_period: 8d}}\n",
                  "t.yaml:1:29: sinks.sms.grace_period: 8d is out of range (0..604800)", NULL);
    expect_errors("sinks: {sms: {reminders: [2h, h, 10s]}}\n",
                  "t.yaml:1:31: sinks.sms.reminders[1]: expected a duration like 30s, 90m, 2h "
                  "or 1d, got \"h\"",
                  "t.yaml:1:34: sinks.sms.reminders[2]: 10s is out of range (60..2592000)", NULL);
    expect_errors("sinks: {sms: {reminders: 2h}}\n",
                  "t.yaml:1:26: sinks.sms.reminders: expected a list", NULL);
}

static void test_size(void **state)
{
    (void)state;
    struct config *c = load_ok("listen: [{name: a, max_message_bytes: 1024}]\n"
                               "sinks: {audit: {batch: {max_bytes: 1 GB}}}\n");
    assert_int_equal(c->listeners[0].max_message_bytes, 1024);
    assert_int_equal(c->sinks.audit.batch.max_bytes, 1000000000);
    config_free(c);
    c = load_ok("listen: [{name: a, max_message_bytes: 256MiB}]\n"
                "sinks: {audit: {batch: {max_bytes: 3000000000}}}\n");
    assert_int_equal(c->listeners[0].max_message_bytes, 268435456);
    assert_int_equal(c->sinks.audit.batch.max_bytes, 3000000000ull);
    config_free(c);
    expect_errors("listen: [{name: a, max_message_bytes: 257MiB}]\n",
                  "t.yaml:1:39: listen[0].max_message_bytes: 257MiB is out of range "
                  "(1024..268435456)", NULL);
    expect_errors("listen: [{name: a, max_message_bytes: 16 MB!}]\n",
                  "t.yaml:1:39: listen[0].max_message_bytes: expected a size like 16MiB or "
                  "1048576, got \"16 MB!\"", NULL);
    expect_errors("listen: [{name: a, max_message_bytes: 99999999999TiB}]\n",
                  "t.yaml:1:39: listen[0].max_message_bytes: expected a size like 16MiB or "
                  "1048576, got \"99999999999TiB\"", NULL);
}

static void test_address(void **state)
{
    (void)state;
    struct config *c = load_ok("metrics: {address: \"[2001:db8::1]:80\"}\n"
                               "listen: [{name: a, address: \"lb-1.Example.org:65535\"}]\n");
    assert_string_equal(c->metrics.host, "2001:db8::1");
    assert_int_equal(c->metrics.port, 80);
    assert_string_equal(c->metrics.address, "[2001:db8::1]:80");
    assert_string_equal(c->listeners[0].host, "lb-1.Example.org");
    assert_int_equal(c->listeners[0].port, 65535);
    config_free(c);
    expect_errors("metrics: {address: \"127.0.0.1:0\"}\n",
                  "t.yaml:1:20: metrics.address: port must be a number from 1 to 65535 in "
                  "\"127.0.0.1:0\"", NULL);
    expect_errors("metrics: {address: \"127.0.0.1:65536\"}\n",
                  "t.yaml:1:20: metrics.address: port must be a number from 1 to 65535 in "
                  "\"127.0.0.1:65536\"", NULL);
    expect_errors("metrics: {address: localhost}\n",
                  "t.yaml:1:20: metrics.address: expected host:port in \"localhost\"", NULL);
    expect_errors("metrics: {address: \"300.1.2.3:80\"}\n",
                  "t.yaml:1:20: metrics.address: invalid IPv4 address in \"300.1.2.3:80\"", NULL);
    expect_errors("metrics: {address: \"::1:80\"}\n",
                  "t.yaml:1:20: metrics.address: write an IPv6 address in brackets, like "
                  "[::1]:2575 in \"::1:80\"", NULL);
    expect_errors("metrics: {address: \"[::g]:80\"}\n",
                  "t.yaml:1:20: metrics.address: invalid IPv6 address in \"[::g]:80\"", NULL);
    expect_errors("metrics: {address: \"bad_host:80\"}\n",
                  "t.yaml:1:20: metrics.address: invalid host name in \"bad_host:80\"", NULL);
    expect_errors("metrics: {address: \":80\"}\n",
                  "t.yaml:1:20: metrics.address: missing host before the port in \":80\"", NULL);
}

static void test_lists_and_maps(void **state)
{
    (void)state;
    struct config *c = load_ok("mapping:\n  rules: [config/mappings/adt.yaml]\n  headers: {A: B, C: \"\"}\n");
    assert_int_equal(c->mapping.n_rules, 1);
    assert_string_equal(c->mapping.rules[0], "config/mappings/adt.yaml");
    assert_int_equal(c->mapping.n_headers, 2);
    assert_string_equal(c->mapping.headers[0].key, "A");
    assert_string_equal(c->mapping.headers[1].value, "");
    config_free(c);
    expect_errors("mapping: {rules: []}\n",
                  "t.yaml:1:18: mapping.rules: needs at least 1 item", NULL);
    expect_errors("mapping: {rules: [config/mappings/adt.yaml, {b: c}]}\n",
                  "t.yaml:1:45: mapping.rules[1]: expected a string", NULL);
    /* A rule file that cannot be read is an error of the configuration,
     * reported with every other one (not only once the rest is right). */
    expect_errors("mapping: {rules: [config/mappings/adt.yaml, /nonexistent/x.yaml]}\nack: {mode: x}\n",
                  "t.yaml:1:45: mapping.rules[1]: \"/nonexistent/x.yaml\" cannot read "
                  "/nonexistent/x.yaml: No such file or directory",
                  "t.yaml:2:13: ack.mode: \"x\" is not one of: original, enhanced", NULL);
    expect_errors("mapping:\n  headers: [a]\n",
                  "t.yaml:2:12: mapping.headers: expected a mapping of names to values", NULL);
    expect_errors("mapping:\n  headers:\n    A: x\n    A: y\n",
                  "t.yaml:4:5: mapping.headers.A: duplicate key (first at line 3)", NULL);
}

/* `user:` names an account of this machine: `run` (as root) would stop on
 * one that does not exist, so the configuration is refused up front. */
static void test_user_must_exist(void **state)
{
    (void)state;
    struct config *c = load_ok("user: root\n");
    assert_string_equal(c->user, "root");
    config_free(c);
    expect_errors("user: nosuchuser-hb\n",
                  "t.yaml:1:7: user: no user \"nosuchuser-hb\" on this machine", NULL);
}

/* The token request carries the client secret, the upload a bearer token,
 * the SMS request a signed body: plain http:// is refused for every
 * endpoint, loopback included. */
static void test_endpoints_https_only(void **state)
{
    (void)state;
    expect_errors("sinks:\n"
                  "  audit: {token_url: \"http://login.example/t\", upload_url: \"http://127.0.0.1:1/u\"}\n"
                  "  sms: {endpoint: \"http://localhost:8443\"}\n",
                  "t.yaml:2:22: sinks.audit.token_url: expected an https:// URL (secrets never go "
                  "out in clear), got \"http://login.example/t\"",
                  "t.yaml:2:60: sinks.audit.upload_url: expected an https:// URL (secrets never go "
                  "out in clear), got \"http://127.0.0.1:1/u\"",
                  "t.yaml:3:19: sinks.sms.endpoint: expected an https:// URL (secrets never go "
                  "out in clear), got \"http://localhost:8443\"", NULL);
    struct config *c = load_ok("sinks:\n  audit: {token_url: \"https://127.0.0.1:1/t\"}\n"
                               "  sms: {endpoint: \"https://x.test\"}\n");
    assert_string_equal(c->sinks.audit.token_url, "https://127.0.0.1:1/t");
    config_free(c);
}

static void test_string_checks(void **state)
{
    (void)state;
    struct config *c = load_ok("sinks:\n  sms:\n    quiet_hours: {start: \"00:00\", end: \"23:59\"}\n");
    assert_int_equal(c->sinks.sms.quiet_hours.start_min, 0);
    assert_int_equal(c->sinks.sms.quiet_hours.end_min, 23 * 60 + 59);
    assert_true(c->sinks.sms.quiet_hours.enabled);
    config_free(c);
    expect_errors("sinks: {sms: {quiet_hours: {start: \"24:00\", end: \"7:00\"}}}\n",
                  "t.yaml:1:36: sinks.sms.quiet_hours.start: expected a time of day HH:MM "
                  "(00:00..23:59), got \"24:00\"",
                  "t.yaml:1:50: sinks.sms.quiet_hours.end: expected a time of day HH:MM "
                  "(00:00..23:59), got \"7:00\"", NULL);
    expect_errors("sinks:\n  sms:\n    quiet_hours: {start: \"22:00\"}\n",
                  "t.yaml:3:18: sinks.sms.quiet_hours: give both start and end", NULL);
    expect_errors("sinks: {sms: {from: \"18005550100\", endpoint: ftp://x, default_country: \"01\"}}\n",
                  "t.yaml:1:21: sinks.sms.from: expected an E.164 number: \"+\" then up to 15 "
                  "digits, like +14155550100",
                  "t.yaml:1:46: sinks.sms.endpoint: expected an https:// URL (secrets never go "
                  "out in clear), got \"ftp://x\"",
                  "t.yaml:1:72: sinks.sms.default_country: expected a country calling code of 1 "
                  "to 3 digits, like 1 or 44", NULL);
    expect_errors("sinks: {sms: {consent: {field: ZCN2}}}\n",
                  "t.yaml:1:32: sinks.sms.consent.field: expected an HL7 field like ZCN-2 or "
                  "PID-13.1, got \"ZCN2\"", NULL);
    expect_errors("ack: {application: \"A|B\"}\n",
                  "t.yaml:1:20: ack.application: must be 1 to 180 characters without HL7 "
                  "delimiters | ^ ~ \\ &", NULL);
    expect_errors("sinks: {audit: {ca_file: /nonexistent/ca.pem}}\n",
                  "t.yaml:1:26: sinks.audit.ca_file: cannot read /nonexistent/ca.pem: No such "
                  "file or directory", NULL);
    expect_errors("store: {path: \"\"}\n",
                  "t.yaml:1:15: store.path: must not be empty", NULL);
}

/* sinks.sms.facilities: settings by scheduling facility; codes unique
 * across entries, zones and numbers checked like the global ones. */
static void test_sms_facilities(void **state)
{
    (void)state;
    struct config *c = load_ok("sinks:\n  sms:\n    facilities:\n"
                               "      - {codes: [NORTH, N2], from: \"+18005550111\", "
                               "time_zone: America/Chicago, link: \"https://n/{appointment_id}\", "
                               "templates: {reminder: \"R {start}\"}, languages: []}\n"
                               "      - {codes: [SOUTH]}\n");
    assert_int_equal(c->sinks.sms.n_facilities, 2);
    const struct config_sms_facility *f = &c->sinks.sms.facilities[0];
    assert_int_equal(f->n_codes, 2);
    assert_string_equal(f->codes[1], "N2");
    assert_string_equal(f->from, "+18005550111");
    assert_string_equal(f->time_zone, "America/Chicago");
    assert_string_equal(f->link, "https://n/{appointment_id}");
    assert_string_equal(f->templates.reminder, "R {start}");
    assert_null(f->templates.scheduled);
    assert_true(f->has_languages);
    f = &c->sinks.sms.facilities[1];
    assert_null(f->from);
    assert_null(f->time_zone);
    assert_null(f->link);
    assert_false(f->has_languages);
    config_free(c);
    c = load_ok("");
    assert_int_equal(c->sinks.sms.n_facilities, 0);
    config_free(c);
    expect_errors("sinks:\n  sms:\n    facilities:\n      - {codes: [A, B, A]}\n"
                  "      - {codes: [C, B]}\n",
                  "t.yaml:4:24: sinks.sms.facilities[0].codes[2]: duplicate facility code \"A\" "
                  "(already in facilities[0])",
                  "t.yaml:5:21: sinks.sms.facilities[1].codes[1]: duplicate facility code \"B\" "
                  "(already in facilities[0])", NULL);
    expect_errors("sinks: {sms: {facilities: [{codes: [A], from: \"8005550100\", "
                  "time_zone: Mars/Olympus}]}}\n",
                  "t.yaml:1:47: sinks.sms.facilities[0].from: expected an E.164 number: \"+\" "
                  "then up to 15 digits, like +14155550100",
                  "t.yaml:1:72: sinks.sms.facilities[0].time_zone: unknown time zone "
                  "\"Mars/Olympus\" (no /usr/share/zoneinfo/Mars/Olympus)", NULL);
    expect_errors("sinks: {sms: {facilities: [{from: \"+18005550100\"}]}}\n",
                  "t.yaml:1:28: sinks.sms.facilities[0].codes: required key is missing", NULL);
    expect_errors("sinks: {sms: {facilities: [{codes: []}]}}\n",
                  "t.yaml:1:36: sinks.sms.facilities[0].codes: needs at least 1 item",
                  NULL);
}

static void test_time_zone(void **state)
{
    (void)state;
    struct config *c = load_ok("mapping: {time_zone: Europe/Paris}\nsinks: {sms: {time_zone: Etc/UTC}}\n");
    assert_string_equal(c->mapping.time_zone, "Europe/Paris");
    assert_string_equal(c->sinks.sms.time_zone, "Etc/UTC");
    config_free(c);
    expect_errors("mapping:\n  time_zone: Mars/Olympus_Mons\n",
                  "t.yaml:2:14: mapping.time_zone: unknown time zone \"Mars/Olympus_Mons\" "
                  "(no /usr/share/zoneinfo/Mars/Olympus_Mons)", NULL);
    expect_errors("sinks: {sms: {time_zone: ../../etc/passwd}}\n",
                  "t.yaml:1:26: sinks.sms.time_zone: unknown time zone \"../../etc/passwd\" "
                  "(no /usr/share/zoneinfo/../../etc/passwd)", NULL);
    /* A directory of zones is not a zone. */
    expect_errors("mapping: {time_zone: America}\n",
                  "t.yaml:1:22: mapping.time_zone: unknown time zone \"America\" "
                  "(no /usr/share/zoneinfo/America)", NULL);
}

/* ---- errors: location, collection, structure --------------------------- */

static void test_unknown_key_location(void **state)
{
    (void)state;
    struct config_errors e;
    struct config *c = config_load(FIX "unknown_key.yaml", &e);
    assert_null(c);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.items[0], FIX "unknown_key.yaml:4:3: store.retension_days: unknown key");
    config_errors_release(&e);
    expect_errors("colour: blue\n", "t.yaml:1:1: colour: unknown key", NULL);
}

static void test_many_errors_all_reported(void **state)
{
    (void)state;
    struct config_errors e;
    struct config *c = config_load(FIX "many_errors.yaml", &e);
    assert_null(c);
    static const char *const want[] = {
        FIX "many_errors.yaml:3:14: listen[0].address: port must be a number from 1 to 65535 "
            "in \"0.0.0.0:70000\"",
        FIX "many_errors.yaml:4:22: listen[0].max_connections: expected an unsigned integer, "
            "got \"lots\"",
        FIX "many_errors.yaml:6:9: ack.mode: \"fancy\" is not one of: original, enhanced",
        FIX "many_errors.yaml:8:10: log.level: \"verbose\" is not one of: debug, info, warn, error",
        FIX "many_errors.yaml:9:3: log.colour: unknown key",
        FIX "many_errors.yaml:11:12: metrics.enabled: expected true or false, got \"yes\"",
    };
    if (e.n != sizeof want / sizeof want[0])
        for (size_t i = 0; i < e.n; i++)
            print_message("%s\n", e.items[i]);
    assert_int_equal(e.n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < e.n; i++)
        assert_string_equal(e.items[i], want[i]);
    config_errors_release(&e);
}

static void test_error_cap(void **state)
{
    (void)state;
    char text[8192] = "";
    size_t used = 0;
    for (int i = 0; i < 150; i++)
        used += (size_t)snprintf(text + used, sizeof text - used, "k%d: 1\n", i);
    struct config_errors e;
    assert_null(load(text, &e));
    assert_int_equal(e.n, CONFIG_MAX_ERRORS + 1);
    assert_string_equal(e.items[CONFIG_MAX_ERRORS - 1], "t.yaml:100:1: k99: unknown key");
    assert_string_equal(e.items[CONFIG_MAX_ERRORS],
                        "t.yaml:101:1: too many errors; only the first 100 are shown");
    config_errors_release(&e);
}

static void test_syntax_error(void **state)
{
    (void)state;
    struct config_errors e;
    assert_null(config_load(FIX "syntax_error.yaml", &e));
    assert_int_equal(e.n, 1);
    assert_string_equal(e.items[0], FIX "syntax_error.yaml:3:2: YAML syntax error: did not find "
                        "expected key (while parsing a block mapping at line 1)");
    config_errors_release(&e);
    expect_errors("store: {path: x\n",
                  "t.yaml:2:1: YAML syntax error: did not find expected ',' or '}' "
                  "(while parsing a flow mapping at line 1)", NULL);
    expect_errors("a: \"\\q\"\n",
                  "t.yaml:1:5: YAML syntax error: found unknown escape character "
                  "(while parsing a quoted scalar at line 1)", NULL);
}

static void test_structure_errors(void **state)
{
    (void)state;
    expect_errors("- a\n", "t.yaml:1:1: the configuration must be a mapping of keys", NULL);
    expect_errors("store: [a]\n", "t.yaml:1:8: store: expected a mapping of keys", NULL);
    expect_errors("store: {}\n---\nlog: {}\n", "t.yaml:3:1: only one YAML document is allowed",
                  NULL);
    expect_errors("? [a]\n: b\n", "t.yaml:1:3: expected a key name", NULL);
    expect_errors("store: {path: \"a\\0b\"}\n",
                  "t.yaml:1:15: store.path: value contains a NUL byte", NULL);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_errors("store:\n  path: a\n  path: b\nstore: {}\n",
                  "t.yaml:3:3: store.path: duplicate key (first at line 2)",
                  "t.yaml:4:1: store: duplicate key (first at line 1)", NULL);
}

static void test_listeners(void **state)
{
    (void)state;
    expect_errors("listen: []\n", "t.yaml:1:9: listen: needs at least 1 item", NULL);
    expect_errors("listen:\n  - address: 1.2.3.4:1\n",
                  "t.yaml:2:5: listen[0].name: required key is missing", NULL);
    expect_errors("listen:\n"
                  "  - name: a\n"
                  "    address: 0.0.0.0:2575\n"
                  "  - name: a\n"
                  "    address: 10.0.0.1:2575\n"
                  "  - name: c\n"
                  "    address: 0.0.0.0:2576\n"
                  "  - name: d\n"
                  "    address: 0.0.0.0:2576\n",
                  "t.yaml:4:11: listen[1].name: duplicate listener name \"a\" (first at line 2)",
                  "t.yaml:5:14: listen[1].address: 10.0.0.1:2575 clashes with listen[0] "
                  "(0.0.0.0:2575)",
                  "t.yaml:9:14: listen[3].address: 0.0.0.0:2576 clashes with listen[2] "
                  "(0.0.0.0:2576)", NULL);
    expect_errors("listen: [{name: a, address: \"127.0.0.1:9575\"}]\n",
                  "t.yaml:1:29: metrics.address: 127.0.0.1:9575 clashes with listen[0] "
                  "(127.0.0.1:9575)", NULL);
    expect_errors("listen: [{name: \"a b\"}]\n",
                  "t.yaml:1:17: listen[0].name: must be 1 to 64 letters, digits, '_', '.' or '-'",
                  NULL);
    /* IPv4 and IPv6 wildcards on one port do not clash (V6ONLY sockets). */
    struct config *c = load_ok("listen: [{name: a, address: \"[::]:1\"}, {name: b, address: \"0.0.0.0:1\"}]\n");
    assert_int_equal(c->n_listeners, 2);
    config_free(c);
}

/* ---- ${ENV} ------------------------------------------------------------ */

static void test_env_substitution(void **state)
{
    (void)state;
    setenv("HB_TEST_DIR", "/srv/hb", 1);
    setenv("HB_TEST_PORT", "3000", 1);
    struct config *c = load_ok("store: {path: \"${HB_TEST_DIR}/db-$$1.sqlite\"}\n"
                               "listen: [{name: a, address: \"127.0.0.1:${HB_TEST_PORT}\"}]\n"
                               "sinks: {sms: {link: \"costs $5\"}}\n");
    assert_string_equal(c->store.path, "/srv/hb/db-$1.sqlite");
    assert_int_equal(c->listeners[0].port, 3000);
    assert_string_equal(c->sinks.sms.link, "costs $5");
    config_free(c);
    unsetenv("HB_TEST_UNSET");
    expect_errors("store:\n  path: ${HB_TEST_UNSET}/x\n",
                  "t.yaml:2:9: store.path: environment variable HB_TEST_UNSET is not set", NULL);
    expect_errors("store:\n  path: ${HB TEST}\n",
                  "t.yaml:2:9: store.path: bad variable reference; write ${NAME} (letters, "
                  "digits, _) or $$ for a literal $", NULL);
    unsetenv("HB_TEST_DIR");
    unsetenv("HB_TEST_PORT");
}

/* ---- secrets ----------------------------------------------------------- */

#define SECRET "s3cr3t-Value~42"

/* ---- store.type postgresql ----------------------------------------------- */

#define PG_OK_SINKS "sinks: {audit: {type: none}, sms: {type: none}}\n"

static void test_store_postgresql(void **state)
{
    (void)state;
    setenv("HB_TEST_PG_PW", SECRET, 1);
    struct config *c = load_ok("node: {name: node-a.1}\n"
                               "store: {type: postgresql, url: \"host=db dbname=hb sslmode=verify-full\","
                               " password: \"${HB_TEST_PG_PW}\"}\n" PG_OK_SINKS);
    assert_int_equal(c->store.type, CONFIG_STORE_POSTGRESQL);
    assert_string_equal(c->store.url, "host=db dbname=hb sslmode=verify-full");
    assert_string_equal(c->store.password, SECRET);
    assert_string_equal(c->node.name, "node-a.1");
    char *buf = dump_raw(c);
    assert_null(strstr(buf, SECRET));
    assert_non_null(strstr(buf, "  password: (set)\n"));
    free(buf);
    config_free(c);

    /* the host name when not written */
    c = load_ok("");
    char host[256] = "";
    assert_int_equal(gethostname(host, sizeof host - 1), 0);
    host[strcspn(host, ".")] = '\0';
    assert_string_equal(c->node.name, host);
    assert_int_equal(c->store.type, CONFIG_STORE_SQLITE);
    assert_int_equal(c->node.heartbeat_s, 5);
    config_free(c);
    c = load_ok("node: {heartbeat_s: 1}\n");
    assert_int_equal(c->node.heartbeat_s, 1);
    config_free(c);
    expect_errors("node: {heartbeat_s: 0}\n", "t.yaml:1:21: node.heartbeat_s: 0 is out of range (1..3600)", NULL);

    /* the password file, owner-only */
    char path[64], text[512];
    temp_file(path, sizeof path, SECRET "\n", 0600);
    snprintf(text, sizeof text, "store:\n  type: postgresql\n  url: postgresql://hb@db/hb\n"
             "  password_file: %s\n" PG_OK_SINKS, path);
    c = load_ok(text);
    assert_string_equal(c->store.password, SECRET);
    config_free(c);
    assert_int_equal(chmod(path, 0604), 0);
    struct config_errors e;
    assert_null(load(text, &e));
    assert_int_equal(e.n, 1);
    assert_non_null(strstr(e.items[0], "store.password_file: "));
    assert_non_null(strstr(e.items[0], "has mode 0604;"));
    assert_no_error_contains(&e, SECRET);
    config_errors_release(&e);
    unlink(path);
}

static void test_store_postgresql_refusals(void **state)
{
    (void)state;
    setenv("HB_TEST_PG_PW", SECRET, 1);
    expect_errors("store: {type: postgresql}\n" PG_OK_SINKS,
                  "t.yaml:1:8: store.url: required when type is postgresql", NULL);
    /* a password in the url, as a URI or a keyword; the value never quoted */
    expect_errors("store: {type: postgresql, url: \"postgresql://hb:" SECRET "@db/hb\"}\n"
                  PG_OK_SINKS,
                  "t.yaml:1:32: store.url: holds a password; put it in store.password (${NAME}) "
                  "or store.password_file", NULL);
    expect_errors("store: {type: postgresql, url: \"host=db password=${HB_TEST_PG_PW}\"}\n"
                  PG_OK_SINKS,
                  "t.yaml:1:32: store.url: holds a password; put it in store.password (${NAME}) "
                  "or store.password_file", NULL);
    expect_errors("store: {type: postgresql, url: \"host=db\", password: " SECRET "}\n"
                  PG_OK_SINKS,
                  "t.yaml:1:53: store.password: secret written in clear; put it in an "
                  "environment variable (password: ${NAME}) or a file (password_file: PATH)",
                  NULL);
    /* PostgreSQL settings on a SQLite store are a mistake */
    expect_errors("store: {url: \"host=db\"}\n",
                  "t.yaml:1:9: store.url: only read with store.type: postgresql", NULL);
    /* what does not run on PostgreSQL yet: one line each (the audit and
     * SMS sinks do run there) */
    expect_errors("store: {type: postgresql, url: \"host=db\"}\n"
                  "sinks: {audit: {type: file}, sms: {type: acs, endpoint: \"https://x.example\","
                  " from: \"+15550100\", access_key: \"${HB_TEST_PG_PW}\", lease_s: 5}}\n"
                  "inputs: {files: [{directory: /tmp/in, done_directory: /tmp/done}]}\n",
                  "t.yaml:3:17: inputs.files: file uploads do not run on store.type postgresql yet",
                  NULL);
    struct config *c = load_ok("store: {type: postgresql, url: \"host=db\"}\n"
                               "sinks: {sms: {lease_s: 5}}\n");
    assert_int_equal(c->sinks.sms.type, CONFIG_SMS_FILE);
    assert_int_equal(c->sinks.sms.lease_s, 5);
    config_free(c);
    expect_errors("sinks: {sms: {lease_s: 0}}\n",
                  "t.yaml:1:24: sinks.sms.lease_s: 0 is out of range (1..3600)", NULL);
    expect_errors("node: {name: \"a b\"}\n",
                  "t.yaml:1:14: node.name: 1 to 63 letters, digits, '-', '_' or '.'", NULL);
}

static void test_secret_clear_text_refused(void **state)
{
    (void)state;
    const char *text = "sinks:\n  audit:\n    app_secret: " SECRET "\n"
                       "  sms:\n    access_key: \"pre${HB_X}\"\n";
    struct config_errors e;
    assert_null(load(text, &e));
    assert_int_equal(e.n, 2);
    assert_string_equal(e.items[0],
                        "t.yaml:3:17: sinks.audit.app_secret: secret written in clear; put it in "
                        "an environment variable (app_secret: ${NAME}) or a file "
                        "(app_secret_file: PATH)");
    assert_string_equal(e.items[1],
                        "t.yaml:5:17: sinks.sms.access_key: secret written in clear; put it in "
                        "an environment variable (access_key: ${NAME}) or a file "
                        "(access_key_file: PATH)");
    assert_no_error_contains(&e, SECRET);
    config_errors_release(&e);
}

static void test_secret_from_env(void **state)
{
    (void)state;
    setenv("HB_TEST_APP_SECRET", SECRET, 1);
    struct config_errors e;
    struct config *c = config_load(FIX "purview.yaml", &e);
    assert_non_null(c);
    assert_int_equal(c->sinks.audit.type, CONFIG_AUDIT_PURVIEW);
    assert_string_equal(c->sinks.audit.app_secret, SECRET);
    assert_null(c->sinks.audit.app_secret_file);
    assert_string_equal(c->sinks.audit.upload_url, "https://127.0.0.1:18443/upload");
    assert_int_equal(c->sinks.audit.cloud, CONFIG_CLOUD_GCC);
    assert_int_equal(c->sinks.audit.line_ending, CONFIG_EOL_LF);
    assert_int_equal(c->sinks.audit.batch.max_rows, 100);
    assert_int_equal(c->sinks.audit.batch.max_bytes, 1048576);

    /* The dump says the secret is set without showing it. */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_dump(c, f);
    fclose(f);
    assert_null(strstr(buf, SECRET));
    assert_non_null(strstr(buf, "    app_secret: (set)\n"));
    assert_non_null(strstr(buf, "    access_key: ~\n"));
    assert_non_null(strstr(buf, "    type: purview\n"));
    free(buf);
    config_free(c);
    config_errors_release(&e);

    setenv("HB_TEST_APP_SECRET", "", 1);
    assert_null(config_load(FIX "purview.yaml", &e));
    assert_int_equal(e.n, 1);
    assert_string_equal(e.items[0], FIX "purview.yaml:7:17: sinks.audit.app_secret: environment "
                        "variable HB_TEST_APP_SECRET is empty");
    config_errors_release(&e);
    unsetenv("HB_TEST_APP_SECRET");
    assert_null(config_load(FIX "purview.yaml", &e));
    assert_int_equal(e.n, 1);
    assert_string_equal(e.items[0], FIX "purview.yaml:7:17: sinks.audit.app_secret: environment "
                        "variable HB_TEST_APP_SECRET is not set");
    config_errors_release(&e);
}

static void test_secret_file(void **state)
{
    (void)state;
    char path[64], text[256];
    struct config_errors e;

    temp_file(path, sizeof path, SECRET "\n", 0600);
    snprintf(text, sizeof text, "sinks:\n  sms:\n    access_key_file: %s\n", path);
    struct config *c = load_ok(text);
    assert_string_equal(c->sinks.sms.access_key, SECRET);
    assert_string_equal(c->sinks.sms.access_key_file, path);
    config_free(c);

    assert_int_equal(chmod(path, 0644), 0);
    assert_null(load(text, &e));
    assert_int_equal(e.n, 1);
    char want[512];
    snprintf(want, sizeof want, "t.yaml:3:22: sinks.sms.access_key_file: %s has mode 0644; a "
             "secret file must not be readable or writable by group or others (chmod 600 %s)",
             path, path);
    assert_string_equal(e.items[0], want);
    assert_no_error_contains(&e, SECRET);
    config_errors_release(&e);

    assert_int_equal(chmod(path, 0640), 0);
    assert_null(load(text, &e));
    assert_int_equal(e.n, 1);
    assert_non_null(strstr(e.items[0], "has mode 0640;"));
    config_errors_release(&e);
    unlink(path);

    /* Both sources at once, and an empty file. */
    temp_file(path, sizeof path, "\r\n", 0600);
    setenv("HB_TEST_KEY", SECRET, 1);
    snprintf(text, sizeof text, "sinks:\n  sms:\n    access_key_file: %s\n"
             "    access_key: ${HB_TEST_KEY}\n", path);
    assert_null(load(text, &e));
    assert_int_equal(e.n, 2);
    snprintf(want, sizeof want, "t.yaml:3:22: sinks.sms.access_key_file: %s is empty", path);
    assert_string_equal(e.items[0], want);
    assert_string_equal(e.items[1], "t.yaml:4:5: sinks.sms: give access_key or access_key_file, "
                        "not both");
    assert_no_error_contains(&e, SECRET);
    config_errors_release(&e);
    unlink(path);
    unsetenv("HB_TEST_KEY");

    expect_errors("sinks: {audit: {app_secret_file: /nonexistent/secret}}\n",
                  "t.yaml:1:34: sinks.audit.app_secret_file: cannot open /nonexistent/secret: "
                  "No such file or directory", NULL);
    expect_errors("sinks: {audit: {app_secret_file: /tmp}}\n",
                  "t.yaml:1:34: sinks.audit.app_secret_file: /tmp is not a regular file", NULL);
}

static void test_purview_requires_keys(void **state)
{
    (void)state;
    expect_errors("sinks:\n  audit:\n    type: purview\n",
                  "t.yaml:3:5: sinks.audit.tenant_id: required when type is purview",
                  "t.yaml:3:5: sinks.audit.app_id: required when type is purview",
                  "t.yaml:3:5: sinks.audit.app_secret: required when type is purview "
                  "(app_secret: ${NAME} or app_secret_file: PATH)",
                  "t.yaml:3:5: sinks.audit.job_id: required when type is purview", NULL);
    /* A key given but bad is reported once, for what is wrong with it. */
    expect_errors("sinks:\n  audit:\n    type: purview\n    tenant_id: t\n    app_id: \"\"\n"
                  "    app_secret: " SECRET "\n    job_id: j\n",
                  "t.yaml:5:13: sinks.audit.app_id: must not be empty",
                  "t.yaml:6:17: sinks.audit.app_secret: secret written in clear; put it in an "
                  "environment variable (app_secret: ${NAME}) or a file (app_secret_file: PATH)",
                  NULL);
    expect_errors("sinks:\n  sms: {type: acs}\n",
                  "t.yaml:2:8: sinks.sms.endpoint: required when type is acs",
                  "t.yaml:2:8: sinks.sms.access_key: required when type is acs "
                  "(access_key: ${NAME} or access_key_file: PATH)",
                  "t.yaml:2:8: sinks.sms.from: required when type is acs", NULL);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct config_errors e;
    assert_null(config_load(FIX "does-not-exist.yaml", &e));
    assert_int_equal(e.n, 1);
    assert_string_equal(e.items[0], FIX "does-not-exist.yaml:1:1: cannot open: No such file or "
                        "directory");
    config_errors_release(&e);
    /* errs may be NULL; config_free(NULL) is a no-op. */
    assert_null(config_load(FIX "does-not-exist.yaml", NULL));
    config_free(NULL);
    config_errors_release(NULL);
}

static void test_aliases_bounded(void **state)
{
    (void)state;
    /* A self-referencing alias under an unknown key is never walked. */
    expect_errors("x: &a [*a]\n", "t.yaml:1:1: x: unknown key", NULL);
    struct config *c = load_ok("listen:\n  - &l {name: a, max_connections: 7}\nsinks: {sms: {consent: {accept: [&y Y, *y]}}}\n");
    assert_int_equal(c->listeners[0].max_connections, 7);
    assert_int_equal(c->sinks.sms.consent.n_accept, 2);
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sample_file_loads),
        cmocka_unit_test(test_store_postgresql),
        cmocka_unit_test(test_store_postgresql_refusals),
        cmocka_unit_test(test_defaults_when_absent),
        cmocka_unit_test(test_sample_matches_defaults),
        cmocka_unit_test(test_full_fixture),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_relative_paths_resolve_against_file),
        cmocka_unit_test(test_uint),
        cmocka_unit_test(test_bool),
        cmocka_unit_test(test_enum),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_address),
        cmocka_unit_test(test_lists_and_maps),
        cmocka_unit_test(test_string_checks),
        cmocka_unit_test(test_sms_facilities),
        cmocka_unit_test(test_endpoints_https_only),
        cmocka_unit_test(test_user_must_exist),
        cmocka_unit_test(test_time_zone),
        cmocka_unit_test(test_unknown_key_location),
        cmocka_unit_test(test_many_errors_all_reported),
        cmocka_unit_test(test_error_cap),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_structure_errors),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_listeners),
        cmocka_unit_test(test_env_substitution),
        cmocka_unit_test(test_secret_clear_text_refused),
        cmocka_unit_test(test_secret_from_env),
        cmocka_unit_test(test_secret_file),
        cmocka_unit_test(test_purview_requires_keys),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_aliases_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
