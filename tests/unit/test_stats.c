/* Unit tests for daemon/stats.c (the monitoring counters and their
 * renderings) and store/daily.c (daily totals that survive a restart).
 *
 * daemon/ is not part of the library the unit tests link, so stats.c is
 * compiled into this test directly.  Messages are parsed with the real HL7
 * parser so the sender/type keys come out as they do in the daemon. */
#include "daemon/stats.c"
#include "daemon/chart.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/tmpdir.h"

/* ---- helpers ----------------------------------------------------------- */

static const char *const two[] = { "main", "lab" };

static struct hl7_msg *parse(const char *text)
{
    struct hl7_msg *m = hl7_msg_new();
    struct hl7_err e;
    assert_non_null(m);
    if (hl7_msg_parse(m, (const uint8_t *)text, strlen(text), NULL, &e) != 0)
        fail_msg("parse: %s", e.text);
    return m;
}

/* Records one message from `app`^`fac` of type ADT^A01. */
static void record_from(struct stats *st, const char *listener, const char *app,
                        const char *fac, enum hl7_ack_code code, int reason, int dup,
                        uint64_t lat)
{
    char text[256];
    snprintf(text, sizeof text, "MSH|^~\\&|%s|%s|HB|HB|20260101||ADT^A01|C1|P|2.5\r", app, fac);
    struct hl7_msg *m = parse(text);
    stats_record_msg(st, listener, m, code, reason, dup, lat);
    hl7_msg_free(m);
}

static long sender_index(const struct stats_snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->n_senders; i++)
        if (strcmp(s->senders[i], name) == 0)
            return (long)i;
    return -1;
}

static char *render(const struct stats_snapshot *s, int (*fn)(const struct stats_snapshot *,
                                                               struct buf *))
{
    struct buf b;
    buf_init(&b, 1u << 24);
    assert_int_equal(fn(s, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    char *out = strdup((const char *)buf_data(&b));
    buf_release(&b);
    return out;
}

static void assert_has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len == n && memcmp(p, line, n) == 0)
            return;
        p = nl ? nl + 1 : NULL;
    }
    fail_msg("line not found: %s", line);
}

/* ---- counters ---------------------------------------------------------- */

static void test_counts_per_listener_sender_type(void **state)
{
    (void)state;
    struct stats *st = stats_new(two, 2);
    assert_non_null(st);
    record_from(st, two[0], "EPIC", "HOSP", HL7_ACK_AA, 0, 0, 1000);
    record_from(st, two[0], "EPIC", "HOSP", HL7_ACK_AA, 0, 1, 1000);      /* duplicate */
    record_from(st, two[0], "EPIC", "HOSP", HL7_ACK_AE, 101, 0, 1000);
    record_from(st, "lab", "LIS", "LAB", HL7_ACK_AR, 203, 0, 1000);      /* by name */
    record_from(st, two[1], "LIS", "LAB", HL7_ACK_AA, 0, 0, 0);          /* no latency */
    stats_record_msg(st, two[1], NULL, HL7_ACK_AR, 100, 0, 5);          /* unparsable */

    struct stats_snapshot *s = stats_snapshot_new(st);
    assert_non_null(s);
    assert_int_equal(s->total.received, 6);
    assert_int_equal(s->total.duplicates, 1);
    assert_int_equal(s->total.acks[HL7_ACK_AA], 3);
    assert_int_equal(s->total.acks[HL7_ACK_AE], 1);
    assert_int_equal(s->total.acks[HL7_ACK_AR], 2);
    assert_int_equal(s->total.nacks[stats_reason_index(101)], 1);
    assert_int_equal(s->total.nacks[stats_reason_index(203)], 1);
    assert_int_equal(s->total.nacks[stats_reason_index(100)], 1);
    assert_int_equal(stats_nacks(&s->total), 3);
    assert_int_equal(stats_acks(&s->total), 6);

    assert_int_equal(s->by_listener[0].received, 3);
    assert_int_equal(s->by_listener[1].received, 3);
    long epic = sender_index(s, "EPIC^HOSP"), lis = sender_index(s, "LIS^LAB");
    long none = sender_index(s, "(none)");
    assert_true(epic > 0 && lis > 0 && none > 0);
    assert_int_equal(s->by_sender[epic].received, 3);
    assert_int_equal(s->by_sender[epic].acks[HL7_ACK_AA], 2);
    assert_int_equal(s->by_sender[epic].duplicates, 1);
    assert_int_equal(s->by_sender[lis].acks[HL7_ACK_AR], 1);
    assert_int_equal(s->by_sender[none].acks[HL7_ACK_AR], 1);
    assert_int_equal(s->overflow, 0);

    /* Latency observed only when given. */
    assert_int_equal(s->latency[0].count, 3);
    assert_int_equal(s->latency[1].count, 2);
    assert_int_equal(s->latency[0].sum_ns, 3000);

    uint64_t acks, nacks;
    stats_totals(st, &acks, &nacks);
    assert_int_equal(acks, 6);
    assert_int_equal(nacks, 3);
    stats_snapshot_free(s);
    stats_free(st);
}

static void test_sender_key_decoding(void **state)
{
    (void)state;
    struct stats *st = stats_new(two, 1);
    /* Components: the namespace id of each; escapes decoded; universal id
     * used when the namespace id is empty. */
    struct hl7_msg *m = parse("MSH|^~\\&|EPIC^1.2.3^ISO|\\T\\WEST^x|HB|HB|2026||ORU^R01^ORU_R01|C|P|2.5\r");
    stats_record_msg(st, "main", m, HL7_ACK_AA, 0, 0, 1);
    hl7_msg_free(m);
    m = parse("MSH|^~\\&|^urn:oid:9|F|HB|HB|2026||SIU^S12|C|P|2.5\r");
    stats_record_msg(st, "main", m, HL7_ACK_AA, 0, 0, 1);
    hl7_msg_free(m);
    struct stats_snapshot *s = stats_snapshot_new(st);
    assert_true(sender_index(s, "EPIC^&WEST") > 0);
    assert_true(sender_index(s, "urn:oid:9^F") > 0);
    int found = 0;
    for (size_t i = 0; i < s->n_types; i++)
        found += strcmp(s->types[i], "ORU^R01") == 0 || strcmp(s->types[i], "SIU^S12") == 0;
    assert_int_equal(found, 2);
    stats_snapshot_free(s);
    stats_free(st);
}

/* The one-entry key cache must not hand a message the previous message's
 * key when only the delimiters (hence the decoding) or the listener differ. */
static void test_key_cache(void **state)
{
    (void)state;
    struct stats *st = stats_new(two, 2);
    struct hl7_msg *a = parse("MSH|^~\\&|A\\T\\B|F|HB|HB|2026||ADT^A01|C|P|2.5\r");
    struct hl7_msg *b = parse("MSH|^~#&|A\\T\\B|F|HB|HB|2026||ADT^A01|C|P|2.5\r");
    stats_record_msg(st, "main", a, HL7_ACK_AA, 0, 0, 1);
    stats_record_msg(st, "main", a, HL7_ACK_AA, 0, 0, 1);
    stats_record_msg(st, "main", b, HL7_ACK_AA, 0, 0, 1);
    stats_record_msg(st, "lab", b, HL7_ACK_AE, 207, 0, 1);
    hl7_msg_free(a);
    hl7_msg_free(b);
    struct stats_snapshot *s = stats_snapshot_new(st);
    long amp = sender_index(s, "A&B^F"), raw = sender_index(s, "A\\T\\B^F");
    assert_true(amp > 0 && raw > 0);
    assert_int_equal(s->by_sender[amp].received, 2);
    assert_int_equal(s->by_sender[raw].received, 2);
    assert_int_equal(s->by_listener[0].received, 3);
    assert_int_equal(s->by_listener[1].acks[HL7_ACK_AE], 1);
    assert_int_equal(s->by_listener[1].nacks[stats_reason_index(207)], 1);
    assert_int_equal(s->latency[1].count, 1);
    stats_snapshot_free(s);
    stats_free(st);
}

static void test_batch_counts_members(void **state)
{
    (void)state;
    struct stats *st = stats_new(two, 1);
    const char *env = "FHS|^~\\&|BATCHAPP|BFAC\rBHS|^~\\&|BATCHAPP|BFAC|||||||B1\r";
    struct hl7_batch_iter it;
    struct hl7_err e;
    assert_int_equal(hl7_batch_begin(&it, (const uint8_t *)env, strlen(env), &e), 0);
    stats_record_batch(st, "main", &it, HL7_ACK_AE, 101, 5, 2, 2000);
    struct stats_snapshot *s = stats_snapshot_new(st);
    long b = sender_index(s, "BATCHAPP^BFAC");
    assert_true(b > 0);
    assert_int_equal(s->by_sender[b].received, 5);
    assert_int_equal(s->by_sender[b].duplicates, 2);
    assert_int_equal(s->by_sender[b].acks[HL7_ACK_AE], 1);
    assert_int_equal(s->by_sender[b].nacks[stats_reason_index(101)], 1);
    stats_snapshot_free(s);
    stats_free(st);
}

/* A peer inventing a new sender per message: bounded tables, the rest in
 * "other", nothing lost from the totals. */
static void test_other_bucket_cap(void **state)
{
    (void)state;
    struct stats *st = stats_new(two, 2);
    const unsigned n = STATS_MAX_SENDERS + 50;
    for (unsigned i = 0; i < n; i++) {
        char app[32];
        snprintf(app, sizeof app, "APP%u", i);
        record_from(st, two[i % 2], app, "F", HL7_ACK_AA, 0, 0, 1);
    }
    struct stats_snapshot *s = stats_snapshot_new(st);
    assert_int_equal(s->n_senders, STATS_MAX_SENDERS);
    assert_string_equal(s->senders[0], STATS_OTHER);
    /* STATS_MAX_SENDERS - 1 named ones fit; the rest are "other". */
    uint64_t expect_other = n - (STATS_MAX_SENDERS - 1);
    assert_int_equal(s->by_sender[0].received, expect_other);
    assert_int_equal(s->overflow, expect_other);
    assert_int_equal(s->total.received, n);
    assert_int_equal(sender_index(s, "APP0^F"), 1);
    assert_int_equal(sender_index(s, "APP500^F"), -1);
    /* Known senders still count under their own name. */
    record_from(st, two[0], "APP0", "F", HL7_ACK_AA, 0, 0, 1);
    stats_snapshot_free(s);
    s = stats_snapshot_new(st);
    assert_int_equal(s->by_sender[1].received, 2);
    stats_snapshot_free(s);

    /* Types fill the same way; series stop at STATS_MAX_SERIES and fall
     * back to (listener, other, other). */
    for (unsigned i = 0; i < STATS_MAX_TYPES + 10; i++) {
        char text[128];
        snprintf(text, sizeof text, "MSH|^~\\&|APP%u|F|HB|HB|2026||Z%02u^X|C|P|2.5\r", i % 100, i);
        struct hl7_msg *m = parse(text);
        for (unsigned l = 0; l < 2; l++)
            stats_record_msg(st, two[l], m, HL7_ACK_AA, 0, 0, 1);
        hl7_msg_free(m);
    }
    s = stats_snapshot_new(st);
    assert_int_equal(s->n_types, STATS_MAX_TYPES);
    assert_true(s->n_series <= STATS_MAX_SERIES);
    assert_int_equal(s->total.received, n + 1 + 2 * (STATS_MAX_TYPES + 10));
    stats_snapshot_free(s);
    stats_free(st);
}

static void test_clean_key(void **state)
{
    (void)state;
    char out[STATS_KEY_MAX + 1];
    assert_int_equal(stats_clean_key((const uint8_t *)"A\nB\x01", 4, out), 4);
    assert_string_equal(out, "A?B?");
    /* Invalid UTF-8 (lone continuation byte, overlong form) → '?'. */
    assert_int_equal(stats_clean_key((const uint8_t *)"x\x80y\xc0\xafz", 6, out), 6);
    assert_string_equal(out, "x?y??z");
    /* Valid UTF-8 is kept. */
    stats_clean_key((const uint8_t *)"M\xc3\xbcller", 7, out);
    assert_string_equal(out, "M\xc3\xbcller");
    /* Truncation never splits a character. */
    uint8_t big[STATS_KEY_MAX + 8];
    memset(big, 'a', sizeof big);
    big[STATS_KEY_MAX - 1] = 0xc3;
    big[STATS_KEY_MAX] = 0xa9;
    assert_int_equal(stats_clean_key(big, sizeof big, out), STATS_KEY_MAX - 1);
}

static void test_reason_index(void **state)
{
    (void)state;
    assert_int_equal(stats_reason_code(stats_reason_index(207)), 207);
    assert_int_equal(stats_reason_code(stats_reason_index(100)), 100);
    assert_int_equal(stats_reason_index(999), STATS_REASONS - 1);
    assert_int_equal(stats_reason_index(0), STATS_REASONS - 1);
    assert_int_equal(stats_reason_code(STATS_REASONS - 1), -1);
}

/* ---- histogram ---------------------------------------------------------- */

static void test_histogram_edges(void **state)
{
    (void)state;
    /* Prometheus buckets are "less than or equal": an edge value belongs to
     * the bucket it closes. */
    assert_int_equal(stats_lat_bucket(1), 0);
    assert_int_equal(stats_lat_bucket(100000), 0);
    assert_int_equal(stats_lat_bucket(100001), 1);
    assert_int_equal(stats_lat_bucket(1000000), 3);
    assert_int_equal(stats_lat_bucket(1000001), 4);
    assert_int_equal(stats_lat_bucket(10000000000ull), STATS_LAT_BUCKETS - 1);
    assert_int_equal(stats_lat_bucket(10000000001ull), STATS_LAT_BUCKETS);
    for (unsigned i = 0; i + 1 < STATS_LAT_BUCKETS; i++)
        assert_true(stats_lat_le_ns(i) < stats_lat_le_ns(i + 1));
    assert_string_equal(stats_lat_le_text(3), "0.001");
    assert_string_equal(stats_lat_le_text(STATS_LAT_BUCKETS), "+Inf");

    struct stats *st = stats_new(two, 1);
    record_from(st, "main", "A", "B", HL7_ACK_AA, 0, 0, 1000000);        /* le=0.001 */
    record_from(st, "main", "A", "B", HL7_ACK_AA, 0, 0, 1000001);        /* le=0.0025 */
    record_from(st, "main", "A", "B", HL7_ACK_AA, 0, 0, 20000000000ull); /* +Inf */
    struct stats_snapshot *s = stats_snapshot_new(st);
    char *text = render(s, stats_render_prometheus);
    assert_has_line(text, "hl7bridge_ack_latency_seconds_bucket{listener=\"main\",le=\"0.0005\"} 0");
    assert_has_line(text, "hl7bridge_ack_latency_seconds_bucket{listener=\"main\",le=\"0.001\"} 1");
    assert_has_line(text, "hl7bridge_ack_latency_seconds_bucket{listener=\"main\",le=\"0.0025\"} 2");
    assert_has_line(text, "hl7bridge_ack_latency_seconds_bucket{listener=\"main\",le=\"10\"} 2");
    assert_has_line(text, "hl7bridge_ack_latency_seconds_bucket{listener=\"main\",le=\"+Inf\"} 3");
    assert_has_line(text, "hl7bridge_ack_latency_seconds_count{listener=\"main\"} 3");
    assert_has_line(text, "hl7bridge_ack_latency_seconds_sum{listener=\"main\"} 20.002000001");
    free(text);
    stats_snapshot_free(s);
    stats_free(st);
}

/* ---- renderings ------------------------------------------------------- */

static void test_prom_escape(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1024);
    const char in[] = "a\\b\"c\nd^e";
    assert_int_equal(stats_prom_escape(in, sizeof in - 1, &b), 0);
    assert_int_equal(b.len, strlen("a\\\\b\\\"c\\nd^e"));
    assert_memory_equal(buf_data(&b), "a\\\\b\\\"c\\nd^e", b.len);
    buf_reset(&b);
    assert_int_equal(stats_json_escape("q\"\\\x01", 4, &b), 0);
    assert_memory_equal(buf_data(&b), "q\\\"\\\\\\u0001", b.len);
    buf_reset(&b);
    assert_int_equal(stats_html_escape("<a href='x'>&\"", 14, &b), 0);
    assert_memory_equal(buf_data(&b), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;", b.len);
    buf_release(&b);
}

/* Every line is a comment (HELP/TYPE) or a sample of the family last
 * announced; each family is announced once; counters end in _total. */
static void check_exposition(const char *text)
{
    char family[128] = "", type[16] = "";
    char seen[256][128];
    size_t n_seen = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl); /* every line ends with \n, the last one too */
        char line[2048];
        size_t len = (size_t)(nl - p);
        assert_true(len < sizeof line);
        memcpy(line, p, len);
        line[len] = '\0';
        p = nl + 1;
        if (strncmp(line, "# HELP ", 7) == 0) {
            char *sp = strchr(line + 7, ' ');
            assert_non_null(sp);
            snprintf(family, sizeof family, "%.*s", (int)(sp - line - 7), line + 7);
            for (size_t i = 0; i < n_seen; i++)
                if (strcmp(seen[i], family) == 0)
                    fail_msg("family announced twice: %s", family);
            assert_true(n_seen < 256);
            snprintf(seen[n_seen++], sizeof seen[0], "%s", family);
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            size_t fl = strlen(family);
            assert_memory_equal(line + 7, family, fl);
            snprintf(type, sizeof type, "%s", line + 8 + fl);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            if (strcmp(type, "counter") == 0)
                assert_string_equal(family + fl - 6, "_total");
            continue;
        }
        assert_true(line[0] != '#');
        size_t fl = strlen(family);
        assert_memory_equal(line, family, fl);
        const char *rest = line + fl;
        if (strcmp(type, "histogram") == 0 && *rest == '_') {
            assert_true(strncmp(rest, "_bucket{", 8) == 0 || strncmp(rest, "_sum{", 5) == 0 ||
                        strncmp(rest, "_count{", 7) == 0);
            rest = strchr(rest, '{');
        }
        if (*rest == '{') {
            /* Labels: name="value" pairs, values with escapes only. */
            const char *q = rest + 1;
            while (*q != '}') {
                while ((*q >= 'a' && *q <= 'z') || *q == '_')
                    q++;
                assert_true(q[0] == '=' && q[1] == '"');
                q += 2;
                while (*q != '"') {
                    assert_true(*q != '\0' && *q != '\n');
                    if (*q == '\\') {
                        assert_true(q[1] == '\\' || q[1] == '"' || q[1] == 'n');
                        q++;
                    }
                    q++;
                }
                q++;
                if (*q == ',')
                    q++;
            }
            rest = q + 1;
        }
        assert_int_equal(*rest, ' ');
        char *end;
        strtod(rest + 1, &end);
        assert_true(end != rest + 1 && *end == '\0');
    }
}

static void test_prometheus_format(void **state)
{
    (void)state;
    struct stats *st = stats_new(two, 2);
    record_from(st, "main", "EPIC", "HOSP", HL7_ACK_AA, 0, 0, 1000);
    record_from(st, "main", "EPIC", "HOSP", HL7_ACK_AA, 0, 1, 1000);
    record_from(st, "main", "EPIC", "HOSP", HL7_ACK_AE, 207, 0, 1000);
    /* A sender name that needs escaping in a label value. */
    record_from(st, "lab", "Q\\E\\\"", "LAB", HL7_ACK_AR, 101, 0, 1000);
    struct stats_gauges g;
    memset(&g, 0, sizeof g);
    g.store_queue = 7;
    g.mllp.accepted = 3;
    stats_set_gauges(st, &g);
    struct stats_health h;
    memset(&h, 0, sizeof h);
    h.ready = 1;
    h.degraded = STATS_DEG_QUEUE;
    stats_set_health(st, &h);
    struct stats_snapshot *s = stats_snapshot_new(st);
    char *text = render(s, stats_render_prometheus);
    check_exposition(text);
    const char *lbl = "listener=\"main\",sender=\"EPIC^HOSP\",type=\"ADT^A01\"";
    char line[256];
    snprintf(line, sizeof line, "hl7bridge_messages_received_total{%s} 3", lbl);
    assert_has_line(text, line);
    snprintf(line, sizeof line, "hl7bridge_acks_total{%s,code=\"AA\"} 2", lbl);
    assert_has_line(text, line);
    snprintf(line, sizeof line, "hl7bridge_acks_total{%s,code=\"AE\"} 1", lbl);
    assert_has_line(text, line);
    snprintf(line, sizeof line, "hl7bridge_nacks_total{%s,reason=\"207\"} 1", lbl);
    assert_has_line(text, line);
    snprintf(line, sizeof line, "hl7bridge_duplicates_total{%s} 1", lbl);
    assert_has_line(text, line);
    /* HL7 \E\ decodes to a backslash, which the label escapes again. */
    assert_has_line(text, "hl7bridge_acks_total{listener=\"lab\",sender=\"Q\\\\\\\"^LAB\","
                          "type=\"ADT^A01\",code=\"AR\"} 1");
    assert_has_line(text, "hl7bridge_store_queue_depth 7");
    assert_has_line(text, "hl7bridge_connections_accepted_total 3");
    assert_has_line(text, "hl7bridge_ready 1");
    assert_has_line(text, "hl7bridge_degraded 1");
    assert_has_line(text, "hl7bridge_degraded_condition{condition=\"queue_depth\"} 1");
    assert_has_line(text, "hl7bridge_degraded_condition{condition=\"nack_rate\"} 0");
    free(text);

    text = render(s, stats_render_json);
    assert_non_null(strstr(text, "{\"sender\": \"EPIC^HOSP\", \"received\": 3, \"duplicates\": 1, "
                                 "\"nacks_total\": 1, \"acks\": {\"AA\": 2, \"AE\": 1, \"AR\": 0, "
                                 "\"CA\": 0, \"CE\": 0, \"CR\": 0}, \"nacks\": {\"207\": 1}}"));
    assert_non_null(strstr(text, "\"sender\": \"Q\\\\\\\"^LAB\""));
    assert_non_null(strstr(text, "\"degraded\": true, \"degraded_reasons\": [\"queue_depth\"]"));
    free(text);

    text = render(s, stats_render_html);
    assert_non_null(strstr(text, "<td>EPIC^HOSP</td><td>3</td>"));
    assert_non_null(strstr(text, "<td>Q\\&quot;^LAB</td>"));
    assert_null(strstr(text, "<script"));
    free(text);
    stats_snapshot_free(s);
    stats_free(st);
}

/* ---- daily totals (store/daily.c) ------------------------------------- */

struct collected {
    size_t n;
    struct store_daily_row rows[8];
    char senders[8][32];
};

static void collect(void *ud, const struct store_daily_row *r)
{
    struct collected *c = ud;
    if (c->n >= 8)
        return;
    c->rows[c->n] = *r;
    snprintf(c->senders[c->n], sizeof c->senders[0], "%s", r->sender);
    c->rows[c->n].sender = c->senders[c->n];
    c->rows[c->n].listener = NULL; /* only valid during the call */
    c->n++;
}

static void test_daily_totals_survive(void **state)
{
    (void)state;
    char dir[32];
    assert_int_equal(tmpdir_make(dir, sizeof dir, "daily"), 0);
    char path[64];
    snprintf(path, sizeof path, "%s/s.db", dir);
    struct store_opts o = { .path = path, .retention_days = 7 };
    char err[256];
    struct store *s = store_open(&o, err, sizeof err);
    assert_non_null(s);

    /* A store whose daily table was never created has no rows. */
    struct collected c = { 0 };
    assert_int_equal(store_daily_query(&(struct store_opts){.path = path}, NULL, collect, &c, err, sizeof err), 0);
    assert_int_equal(c.n, 0);

    struct store_daily *d = store_daily_open(&(struct store_opts){.path = path}, err, sizeof err);
    assert_non_null(d);
    struct store_daily_row r[2];
    memset(r, 0, sizeof r);
    memcpy(r[0].day, "2026-03-01", 11);
    r[0].listener = "main";
    r[0].sender = "EPIC^HOSP";
    r[0].received = 10;
    r[0].duplicates = 1;
    r[0].acks[0] = 8;
    r[0].acks[1] = 2;
    r[1] = r[0];
    memcpy(r[1].day, "2026-03-02", 11);
    assert_int_equal(store_daily_add(d, r, 2, err, sizeof err), 0);
    assert_int_equal(store_daily_add(d, r, 1, err, sizeof err), 0); /* adds up */
    assert_int_equal(store_daily_add(d, r, 0, err, sizeof err), 0);
    store_daily_close(d);
    store_close(s);

    /* Reopened: the totals are still there. */
    s = store_open(&o, err, sizeof err);
    assert_non_null(s);
    d = store_daily_open(&(struct store_opts){.path = path}, err, sizeof err);
    assert_non_null(d);
    store_daily_close(d);
    store_close(s);
    memset(&c, 0, sizeof c);
    assert_int_equal(store_daily_query(&(struct store_opts){.path = path}, NULL, collect, &c, err, sizeof err), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.rows[0].day, "2026-03-01");
    assert_string_equal(c.rows[0].sender, "EPIC^HOSP");
    assert_int_equal(c.rows[0].received, 20);
    assert_int_equal(c.rows[0].duplicates, 2);
    assert_int_equal(c.rows[0].acks[0], 16);
    assert_int_equal(c.rows[0].acks[1], 4);
    assert_int_equal(c.rows[1].received, 10);
    memset(&c, 0, sizeof c);
    assert_int_equal(store_daily_query(&(struct store_opts){.path = path}, "2026-03-02", collect, &c, err, sizeof err), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(store_daily_query(&(struct store_opts){.path = "/nonexistent/x.db"}, NULL, collect, &c, err, sizeof err),
                     -1);
    tmpdir_remove(dir);
}

/* ---- the last hour ------------------------------------------------------ */

static void put_mark(struct stats_mark *ring, int64_t minute, uint64_t received, uint64_t acks,
                     uint64_t nacks, unsigned bucket, uint64_t observed)
{
    struct stats_mark *m = &ring[minute % (STATS_HISTORY_MIN + 1)];
    memset(m, 0, sizeof *m);
    m->minute = minute;
    m->received = received;
    m->acks = acks;
    m->nacks = nacks;
    m->lat[bucket] = observed;
}

static void test_history_minutes(void **state)
{
    (void)state;
    struct stats_mark ring[STATS_HISTORY_MIN + 1] = {0}, now;
    struct stats_minute h[STATS_HISTORY_MIN];
    int64_t cur = 29000000;
    put_mark(ring, cur - 3, 0, 0, 0, 0, 0);
    put_mark(ring, cur - 2, 10, 10, 1, 0, 10);   /* minute cur-3: 10 in, 1 NACK */
    /* no mark at cur-1 (not sampling): cur-2 and cur-1 are gaps */
    put_mark(ring, cur, 50, 50, 1, 0, 10);
    memset(&now, 0, sizeof now);                  /* the current minute so far */
    now.minute = cur;
    now.received = 80;
    now.acks = 79;
    now.nacks = 11;
    now.lat[0] = 10;
    now.lat[3] = 29;
    stats_history(ring, &now, cur, h);
    struct stats_minute *m3 = &h[STATS_HISTORY_MIN - 4], *m2 = &h[STATS_HISTORY_MIN - 3],
                        *m1 = &h[STATS_HISTORY_MIN - 2], *m0 = &h[STATS_HISTORY_MIN - 1];
    assert_true(m3->valid);
    assert_int_equal(m3->received, 10);
    assert_int_equal(m3->acks, 10);
    assert_int_equal(m3->nacks, 1);
    assert_int_equal(m3->p99_ns, stats_lat_le_ns(0));
    assert_false(m2->valid);
    assert_false(m1->valid);
    assert_true(m0->valid);
    assert_int_equal(m0->received, 30);
    assert_int_equal(m0->acks, 29);
    assert_int_equal(m0->nacks, 10);
    assert_int_equal(m0->p99_ns, stats_lat_le_ns(3)); /* 29 observations, all in bucket 3 */
    assert_false(h[0].valid);                       /* before any mark */
    /* A stale slot (an hour and one minute old) is not taken for this minute. */
    put_mark(ring, cur - 3 - (STATS_HISTORY_MIN + 1), 5, 5, 0, 0, 0);
    stats_history(ring, &now, cur, h);
    assert_false(h[STATS_HISTORY_MIN - 4].valid);
}

static void test_chart_svg(void **state)
{
    (void)state;
    double v[4] = { 3, 0, 7, 5 };
    uint8_t ok[4] = { 1, 1, 0, 1 };
    struct buf out;
    buf_init(&out, 1 << 20);
    struct chart c = { .id = "c1", .title = "Messages per minute", .unit = "", .decimals = 0,
                       .kind = CHART_BARS, .last_minute = 29000000 + 59, .v = v, .valid = ok,
                       .n = 4 };
    assert_int_equal(chart_svg(&out, &c), 0);
    assert_true(buf_append(&out, "", 1) == 0);
    const char *svg = (const char *)buf_data(&out);
    assert_non_null(strstr(svg, "<svg id=\"c1\" class=\"chart\""));
    assert_non_null(strstr(svg, "max 5")); /* the gap's 7 is not drawn */
    /* bars only for minutes with data and a value */
    size_t rects = 0;
    for (const char *p = svg; (p = strstr(p, "<rect x=\"")) != NULL; p++)
        rects++;
    assert_int_equal(rects, 1 + 2); /* background + 3 and 5 */
    assert_non_null(strstr(svg, "UTC: 3</title>"));
    assert_non_null(strstr(svg, "UTC: 5</title>"));
    assert_null(strstr(svg, "<script"));
    buf_release(&out);

    /* A line breaks at a gap: two polylines. */
    buf_init(&out, 1 << 20);
    c.kind = CHART_LINE;
    c.decimals = 1;
    c.unit = "%";
    assert_int_equal(chart_svg(&out, &c), 0);
    assert_true(buf_append(&out, "", 1) == 0);
    svg = (const char *)buf_data(&out);
    size_t lines = 0;
    for (const char *p = svg; (p = strstr(p, "<polyline")) != NULL; p++)
        lines++;
    assert_int_equal(lines, 2);
    assert_non_null(strstr(svg, "UTC: 0.0%</title>"));
    buf_release(&out);

    /* Nothing yet: said so. */
    buf_init(&out, 1 << 20);
    memset(ok, 0, sizeof ok);
    assert_int_equal(chart_svg(&out, &c), 0);
    assert_true(buf_append(&out, "", 1) == 0);
    assert_non_null(strstr((const char *)buf_data(&out), "no data yet"));
    buf_release(&out);
}

/* The page draws three charts per listener from the sampler's marks. */
static void test_page_history_section(void **state)
{
    (void)state;
    const char *names[] = { "adt", "lab" };
    struct stats *st = stats_new(names, 2);
    assert_non_null(st);
    struct stats_gauges g = { .updated_ms = clock_wall_ms() };
    stats_set_gauges(st, &g);
    struct stats_snapshot *s = stats_snapshot_new(st);
    assert_non_null(s);
    assert_true(s->history[0][STATS_HISTORY_MIN - 1].valid);
    struct buf out;
    buf_init(&out, 1 << 22);
    assert_int_equal(stats_render_html(s, &out), 0);
    assert_true(buf_append(&out, "", 1) == 0);
    const char *page = (const char *)buf_data(&out);
    static const char *const ids[] = { "chart-0-messages", "chart-0-nacks", "chart-0-p99",
                                       "chart-1-messages", "chart-1-nacks", "chart-1-p99" };
    for (size_t i = 0; i < 6; i++) {
        char want[64];
        snprintf(want, sizeof want, "<svg id=\"%s\"", ids[i]);
        assert_non_null(strstr(page, want));
    }
    assert_null(strstr(page, "<script"));
    buf_release(&out);
    stats_snapshot_free(s);
    stats_free(st);
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_per_listener_sender_type),
        cmocka_unit_test(test_sender_key_decoding),
        cmocka_unit_test(test_key_cache),
        cmocka_unit_test(test_batch_counts_members),
        cmocka_unit_test(test_other_bucket_cap),
        cmocka_unit_test(test_clean_key),
        cmocka_unit_test(test_reason_index),
        cmocka_unit_test(test_histogram_edges),
        cmocka_unit_test(test_history_minutes),
        cmocka_unit_test(test_chart_svg),
        cmocka_unit_test(test_page_history_section),
        cmocka_unit_test(test_prom_escape),
        cmocka_unit_test(test_prometheus_format),
        cmocka_unit_test(test_daily_totals_survive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
