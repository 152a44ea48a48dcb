/* Unit tests for the SMS sink: template rendering, GSM-7 / UCS-2 segment
 * counting and cutting, E.164 numbers, the ACS request signature (checked
 * against values computed with the openssl command, shown next to them),
 * the repeatability id (checked against Python's uuid.uuid5), quiet hours,
 * the answer parser, and the appointment state machine driven end to end:
 * appointment facts submitted to a real store as ingest submits them (the
 * writer thread puts them in appt_facts), the worker running with
 * `type: file`, the outcome read back from the store and the file. */
#include "sinks/sms.h"
#include "config/config.h"
#include "core/buf.h"
#include "core/log.h"
#include "store/store.h"

#include <poll.h>
#include <setjmp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/unit/tmpdir.h"

/* ---- templates ------------------------------------------------------------ */

static void test_render(void **state)
{
    (void)state;
    /* 2026-03-09 15:30 UTC = 10:30 in Chicago (CDT, UTC-5, after 8 March). */
    struct sink_sms_vars v = { .first_name = "Ana", .location = "Cardiology Exam 3",
                               .provider = "Hannah Heart", .link = "https://x.test/a",
                               .start = 1773070200, .utc_offset = -5 * 3600 };
    char out[512];
    sink_sms_render("Hi {first_name}, {location} with {provider} on {start:%a %b %e %l:%M %p}. "
                    "{link}",
                    &v, out, sizeof out);
    assert_string_equal(out, "Hi Ana, Cardiology Exam 3 with Hannah Heart on Mon Mar 9 10:30 AM. "
                             "https://x.test/a");
    sink_sms_render("{start:%Y-%m-%d %H:%M %z} {{literal}}", &v, out, sizeof out);
    assert_string_equal(out, "2026-03-09 10:30 -0500 {literal}");
    /* empty link: no dangling space; a line break in a name becomes a space */
    v.link = "";
    v.first_name = "A\nB";
    sink_sms_render("Hi {first_name}. {link}", &v, out, sizeof out);
    assert_string_equal(out, "Hi A B.");
    /* {start} alone uses the default format */
    sink_sms_render("{start}", &v, out, sizeof out);
    assert_string_equal(out, "Mon Mar 9 10:30 AM");
    /* a small buffer never ends inside a UTF-8 character */
    v.first_name = "\xC3\xA9\xC3\xA9\xC3\xA9";
    sink_sms_render("{first_name}", &v, out, 6);
    assert_string_equal(out, "\xC3\xA9\xC3\xA9");

    char why[200];
    assert_int_equal(sink_sms_template_check("Hi {first_name} {start:%H:%M} {link}", why, sizeof why), 0);
    assert_int_equal(sink_sms_template_check("Hi {name}", why, sizeof why), -1);
    assert_non_null(strstr(why, "{name}"));
    assert_int_equal(sink_sms_template_check("Hi {first_name", why, sizeof why), -1);
    assert_int_equal(sink_sms_template_check("a } b", why, sizeof why), -1);
    assert_int_equal(sink_sms_template_check("a }} {{ b", why, sizeof why), 0);
}

/* A link template (sinks.sms.link): every substituted value is
 * percent-encoded, the template's own text is not, {link} is empty. */
static void test_render_link(void **state)
{
    (void)state;
    struct sink_sms_vars v = { .appointment_id = "A 1/2?x&y=\xC3\xA9#", .facility = "NORTH",
                               .link = "https://not-this.test/", .first_name = "Ana",
                               .start = 1773070200, .utc_offset = -5 * 3600 };
    char out[512];
    sink_sms_render_link("https://v.test/j/{appointment_id}?f={facility}&t={start:%H:%M}&l={link}",
                         &v, out, sizeof out);
    assert_string_equal(out, "https://v.test/j/A%201%2F2%3Fx%26y%3D%C3%A9%23?f=NORTH&t=10%3A30&l=");
    /* unreserved characters stay; nothing is folded or trimmed */
    v.appointment_id = "a-b.c_d~9";
    sink_sms_render_link("x  {appointment_id} ", &v, out, sizeof out);
    assert_string_equal(out, "x  a-b.c_d~9 ");
    /* a small buffer never ends inside an escape */
    v.appointment_id = "//////";
    sink_sms_render_link("{appointment_id}", &v, out, 8);
    assert_string_equal(out, "%2F%2F");
}

/* Templates and links the configuration loader cannot judge: checked by
 * sink_sms_config_check (what `check` prints) and refused by the sink. */
static void collect(void *ud, const char *problem)
{
    char *all = ud;
    size_t n = strlen(all);
    snprintf(all + n, 2048 - n, "%s\n", problem);
}

static struct config *load_yaml(const char *yaml)
{
    struct config_errors errs = { 0 };
    struct config *c = config_load_string("t", yaml, strlen(yaml), &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("%s\n", errs.items[i]);
    config_errors_release(&errs);
    assert_non_null(c);
    return c;
}

static void test_config_check(void **state)
{
    (void)state;
    static const char yaml[] =
        "sinks:\n  sms:\n    path: /nonexistent/dir/sms.jsonl\n"
        "    link: \"https://g.test/{appointment}\"\n"
        "    languages: [{codes: [es], templates: {reminder: \"R {hora}\"}}]\n"
        "    facilities:\n"
        "      - {codes: [A], link: \"https://a.test/{link}\", templates: {updated: \"U {x\"}}\n"
        "      - {codes: [B], languages: [{codes: [fr], templates: {cancelled: \"}\"}}]}\n"
        "      - {codes: [C], link: \"https://c.test/{facility}/{appointment_id}\"}\n";
    struct config *c = load_yaml(yaml);
    char all[2048] = "";
    assert_int_equal(sink_sms_config_check(c, collect, all), 5);
    assert_string_equal(all,
        "sinks.sms.languages[0].templates.reminder: unknown placeholder {hora} (known: "
        "{first_name} {location} {provider} {link} {appointment_id} {facility} {start} "
        "{start:FORMAT})\n"
        "sinks.sms.link: unknown placeholder {appointment} (known: {first_name} {location} "
        "{provider} {link} {appointment_id} {facility} {start} {start:FORMAT})\n"
        "sinks.sms.facilities[0].templates.updated: unclosed \"{\" at offset 2\n"
        "sinks.sms.facilities[0].link: {link} cannot be used inside the link itself\n"
        "sinks.sms.facilities[1].languages[0].templates.cancelled: lone \"}\" at offset 0 "
        "(write }} for a brace)\n");
    /* the sink refuses to start with the first of them */
    char err[300];
    assert_null(sink_sms_start(c, &(struct store_opts){.path = "unused"}, err, sizeof err));
    assert_non_null(strstr(err, "sinks.sms.languages[0].templates.reminder: unknown placeholder"));
    config_free(c);
}

/* Facility codes, and which template a text gets: the patient's language
 * (the facility's own list when it has one, else the global list), then
 * the facility's template, then the global one. */
static void test_pick_template(void **state)
{
    (void)state;
    static const char yaml[] =
        "sinks:\n  sms:\n"
        "    templates: {scheduled: G-S, updated: G-U, cancelled: G-C, reminder: G-R}\n"
        "    languages: [{codes: [es], templates: {scheduled: ES-S}}]\n"
        "    facilities:\n"
        "      - {codes: [A, A2], templates: {scheduled: A-S, reminder: A-R}}\n"
        "      - {codes: [B], templates: {scheduled: B-S}, languages: []}\n"
        "      - {codes: [C], languages: [{codes: [fr], templates: {updated: C-FR-U}}]}\n";
    struct config *c = load_yaml(yaml);
    assert_int_equal(sink_sms_facility_index(c, "A"), 0);
    assert_int_equal(sink_sms_facility_index(c, "A2"), 0);
    assert_int_equal(sink_sms_facility_index(c, "C"), 2);
    assert_int_equal(sink_sms_facility_index(c, "a"), -1); /* exact: HL7 codes */
    assert_int_equal(sink_sms_facility_index(c, "A "), -1);
    assert_int_equal(sink_sms_facility_index(c, ""), -1);
    assert_int_equal(sink_sms_facility_index(c, "X"), -1);
    assert_string_equal(sink_sms_pick_template(c, -1, "", 0), "G-S");
    assert_string_equal(sink_sms_pick_template(c, -1, "es-MX", 0), "ES-S");
    assert_string_equal(sink_sms_pick_template(c, 0, "", 0), "A-S");
    assert_string_equal(sink_sms_pick_template(c, 0, "", 1), "G-U");   /* left out: global */
    assert_string_equal(sink_sms_pick_template(c, 0, "", 3), "A-R");
    assert_string_equal(sink_sms_pick_template(c, 0, "es", 0), "ES-S"); /* language first */
    assert_string_equal(sink_sms_pick_template(c, 0, "es", 3), "A-R");  /* es has no reminder */
    assert_string_equal(sink_sms_pick_template(c, 1, "es", 0), "B-S");  /* own empty list */
    assert_string_equal(sink_sms_pick_template(c, 2, "fr", 1), "C-FR-U");
    assert_string_equal(sink_sms_pick_template(c, 2, "es", 0), "G-S");  /* own list replaces */
    config_free(c);
}

/* ---- segments -------------------------------------------------------------- */

static void count_of(const char *s, struct sink_sms_segments *sg)
{
    sink_sms_count(s, strlen(s), sg);
}

static char *repeat(const char *unit, size_t n)
{
    size_t ul = strlen(unit);
    char *p = malloc(ul * n + 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        memcpy(p + i * ul, unit, ul);
    p[ul * n] = '\0';
    return p;
}

static void test_segments(void **state)
{
    (void)state;
    struct sink_sms_segments sg;
    count_of("Hello @ $ _ \xC3\xA9 \xC3\xB1 \xCE\x94", &sg); /* é ñ Δ are GSM-7 basic */
    assert_int_equal(sg.encoding, SINK_SMS_GSM7);
    assert_int_equal(sg.units, sg.chars);
    assert_int_equal(sg.segments, 1);

    char *s = repeat("a", 160);
    count_of(s, &sg);
    assert_int_equal(sg.segments, 1);
    free(s);
    s = repeat("a", 161);
    count_of(s, &sg);
    assert_int_equal(sg.segments, 2);
    free(s);
    s = repeat("a", 306); /* 2 × 153 */
    count_of(s, &sg);
    assert_int_equal(sg.segments, 2);
    free(s);
    s = repeat("a", 307);
    count_of(s, &sg);
    assert_int_equal(sg.segments, 3);
    free(s);

    /* extension table: € { } [ ] ~ \ ^ | take two septets */
    count_of("\xE2\x82\xAC{}[]~\\^|", &sg);
    assert_int_equal(sg.encoding, SINK_SMS_GSM7);
    assert_int_equal(sg.chars, 9);
    assert_int_equal(sg.units, 18);
    s = repeat("{", 80); /* 160 septets: one segment */
    count_of(s, &sg);
    assert_int_equal(sg.units, 160);
    assert_int_equal(sg.segments, 1);
    free(s);
    s = repeat("\xE2\x82\xAC", 81); /* 162 septets */
    count_of(s, &sg);
    assert_int_equal(sg.segments, 2);
    free(s);
    /* 152 letters, "{", 152 letters: 306 septets, two parts by arithmetic,
     * but the escape pair does not fit in the first 153-septet part and
     * moves whole to the second, pushing the last letter into a third */
    s = malloc(400);
    memset(s, 'a', 152);
    s[152] = '{';
    memset(s + 153, 'a', 152);
    s[305] = '\0';
    count_of(s, &sg);
    assert_int_equal(sg.units, 306);
    assert_int_equal(sg.segments, 3);
    /* 305 letters + "{": 307 septets; split 153 | 152 + pair → 3 parts */
    free(s);
    s = malloc(400);
    memset(s, 'a', 305);
    memcpy(s + 305, "{", 2);
    count_of(s, &sg);
    assert_int_equal(sg.segments, 3);
    free(s);

    /* outside GSM-7: ê (U+00EA), a backtick, an emoji → UCS-2 */
    count_of("cr\xC3\xAApe", &sg);
    assert_int_equal(sg.encoding, SINK_SMS_UCS2);
    assert_int_equal(sg.units, 5);
    count_of("`", &sg);
    assert_int_equal(sg.encoding, SINK_SMS_UCS2);
    count_of("Hi \xF0\x9F\x98\x80", &sg); /* 😀 is a surrogate pair */
    assert_int_equal(sg.encoding, SINK_SMS_UCS2);
    assert_int_equal(sg.chars, 4);
    assert_int_equal(sg.units, 5);
    s = repeat("\xC3\xAA", 70);
    count_of(s, &sg);
    assert_int_equal(sg.segments, 1);
    free(s);
    s = repeat("\xC3\xAA", 71);
    count_of(s, &sg);
    assert_int_equal(sg.segments, 2);
    free(s);
    /* 66 ê + emoji: 68 units of a multipart text, the pair does not split */
    char *e = repeat("\xC3\xAA", 66);
    s = malloc(strlen(e) + 16);
    snprintf(s, strlen(e) + 16, "%s\xF0\x9F\x98\x80\xC3\xAA\xC3\xAA\xC3\xAA", e);
    count_of(s, &sg);
    assert_int_equal(sg.units, 71);
    assert_int_equal(sg.segments, 2);
    free(s);
    free(e);
    /* invalid UTF-8 forces UCS-2 (it is sent as U+FFFD) */
    count_of("ab\xFF", &sg);
    assert_int_equal(sg.encoding, SINK_SMS_UCS2);
}

static void test_fit(void **state)
{
    (void)state;
    char text[SINK_SMS_TEXT_MAX];
    snprintf(text, sizeof text, "short");
    assert_int_equal(sink_sms_fit(text, 1), 0);
    assert_string_equal(text, "short");
    /* 40 words of 4 letters + spaces = 199 characters, over one segment */
    size_t n = 0;
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%sword", i ? " " : "");
    assert_int_equal(sink_sms_fit(text, 1), 1);
    struct sink_sms_segments sg;
    count_of(text, &sg);
    assert_int_equal(sg.segments, 1);
    size_t len = strlen(text);
    assert_true(len <= 160);
    assert_string_equal(text + len - 7, "word...");
    /* UCS-2 text is cut at a character boundary */
    char *u = repeat("\xC3\xAA", 100);
    snprintf(text, sizeof text, "%s", u);
    free(u);
    assert_int_equal(sink_sms_fit(text, 1), 1);
    count_of(text, &sg);
    assert_int_equal(sg.encoding, SINK_SMS_UCS2);
    assert_int_equal(sg.units, 70);
    assert_string_equal(text + strlen(text) - 3, "...");
}

/* ---- numbers --------------------------------------------------------------- */

static void test_e164(void **state)
{
    (void)state;
    char out[24];
    struct { const char *in, *cc, *want; } ok[] = {
        { "(847) 555-0122", "1", "+18475550122" },
        { "18475550122", "1", "+18475550122" },
        { "847.555.0122", "1", "+18475550122" },
        { "+1 847 555 0122", "1", "+18475550122" },
        { "+44 20 7946 0958", "1", "+442079460958" },
        { "011 44 20 7946 0958", "1", "+442079460958" },
        { "0044 20 7946 0958", "44", "+442079460958" },
        { "020 7946 0958", "44", "+442079460958" },
        { "2079460958", "44", "+442079460958" },
        /* what the shipped SIU rule writes from XTN-5/6/7, also when the
         * sender put the "+" in XTN-5 itself */
        { "+44 2079460958", "1", "+442079460958" },
        { "++44 2079460958", "44", "+442079460958" },
        { "+1 8475550122", "44", "+18475550122" },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(sink_sms_e164(ok[i].in, ok[i].cc, out, sizeof out), 0);
        assert_string_equal(out, ok[i].want);
    }
    const char *bad[] = { "", "555-0122", "abc", "1234567890" /* area code 123 */,
                          "847 555 0122 x12", "+0123456789", "+1234567890123456",
                          "28475550122", "+44 20+79460958", "+ +" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(sink_sms_e164(bad[i], "1", out, sizeof out), -1);
    assert_int_equal(sink_sms_e164(NULL, "1", out, sizeof out), -1);
    assert_int_equal(sink_sms_e164("8475550122", "1", out, 5), -1);
}

/* ---- ACS ----------------------------------------------------------------------- */

static void test_acs_signature(void **state)
{
    (void)state;
    /* Key "hl7bridge-test-key-0123456789abcdef" (base64 below); expected values
     * from the openssl command:
     *   printf '%s' "$BODY" | openssl dgst -sha256 -binary | openssl base64 -A
     *   printf 'POST\n/sms?api-version=2021-03-07\nFri, 20 Nov 2026 10:00:00 GMT;'\
     *          'contoso.communication.azure.com;%s' "$HASH" |
     *     openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf %s "$KEY" | xxd -p -c 256) \
     *       -binary | openssl base64 -A */
    uint8_t key[64];
    size_t klen = 0;
    assert_int_equal(sink_acs_key_decode("aGw3YnJpZGdlLXRlc3Qta2V5LTAxMjM0NTY3ODlhYmNkZWY=", key,
                                         sizeof key, &klen), 0);
    assert_int_equal(klen, 35);
    assert_memory_equal(key, "hl7bridge-test-key-0123456789abcdef", 35);
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(sink_acs_body(&b, "+18005550100", "+14255550123",
                                   "3c9f7a8e-1b2d-5e4f-8a6b-0c1d2e3f4a5b",
                                   "Fri, 20 Nov 2026 10:00:00 GMT", "Hello", 0, NULL), 0);
    const char *want_body =
        "{\"from\":\"+18005550100\",\"smsRecipients\":[{\"to\":\"+14255550123\","
        "\"repeatabilityRequestId\":\"3c9f7a8e-1b2d-5e4f-8a6b-0c1d2e3f4a5b\","
        "\"repeatabilityFirstSent\":\"Fri, 20 Nov 2026 10:00:00 GMT\"}],\"message\":\"Hello\","
        "\"smsSendOptions\":{\"enableDeliveryReport\":false}}";
    assert_int_equal(b.len, strlen(want_body));
    assert_memory_equal(buf_data(&b), want_body, b.len);
    struct sink_acs_signed sg;
    assert_int_equal(sink_acs_sign(key, klen, "POST", "/sms?api-version=2021-03-07",
                                   "contoso.communication.azure.com", 1795168800, buf_data(&b),
                                   b.len, &sg), 0);
    assert_string_equal(sg.date, "Fri, 20 Nov 2026 10:00:00 GMT");
    assert_string_equal(sg.content_hash, "qB+54nzzlgtQBxfv7ld6/5IhkJ6G06O9JO5gJ11bWEs=");
    assert_string_equal(sg.authorization,
                        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
                        "QvinizIIFb769OE1/Y92NrgVVQX9IlnajBnTYlH1cqk=");
    buf_release(&b);

    assert_int_equal(sink_acs_key_decode("not base64!", key, sizeof key, &klen), -1);
    assert_int_equal(sink_acs_key_decode("YWJj=", key, sizeof key, &klen), -1);

    char host[128], url[256], pq[128];
    assert_int_equal(sink_acs_endpoint("https://contoso.communication.azure.com/", host,
                                       sizeof host, url, sizeof url, pq, sizeof pq), 0);
    assert_string_equal(host, "contoso.communication.azure.com");
    assert_string_equal(pq, "/sms?api-version=2021-03-07");
    assert_string_equal(url, "https://contoso.communication.azure.com/sms?api-version=2021-03-07");
    assert_int_equal(sink_acs_endpoint("https://127.0.0.1:8443", host, sizeof host, url,
                                       sizeof url, pq, sizeof pq), 0);
    assert_string_equal(host, "127.0.0.1:8443");
    assert_int_equal(sink_acs_endpoint("https://x.test:443/base", host, sizeof host, url,
                                       sizeof url, pq, sizeof pq), 0);
    assert_string_equal(host, "x.test");
    assert_string_equal(pq, "/base/sms?api-version=2021-03-07");
    assert_int_equal(sink_acs_endpoint("http://x.test", host, sizeof host, url, sizeof url, pq,
                                       sizeof pq), -1);
}

static void test_acs_answer(void **state)
{
    (void)state;
    const char *body =
        "{\"value\":[{\"to\":\"+14255550123\",\"messageId\":\"Outgoing_1\",\"httpStatusCode\":202,"
        "\"repeatabilityResult\":\"accepted\",\"successful\":true,\"errorMessage\":null},"
        "{\"to\":\"+1425\",\"messageId\":null,\"httpStatusCode\":400,\"successful\":false,"
        "\"errorMessage\":\"Invalid To phone number format.\"}]}";
    struct sink_acs_result r[4];
    assert_int_equal(sink_acs_parse_answer((const uint8_t *)body, strlen(body), r, 4), 2);
    assert_true(r[0].successful);
    assert_int_equal(r[0].http_status, 202);
    assert_string_equal(r[0].message_id, "Outgoing_1");
    assert_string_equal(r[0].repeatability, "accepted");
    assert_false(r[1].successful);
    assert_int_equal(r[1].http_status, 400);
    assert_string_equal(r[1].error, "Invalid To phone number format.");
    assert_int_equal(sink_acs_parse_answer((const uint8_t *)"{}", 2, r, 4), -1);
    assert_int_equal(sink_acs_parse_answer((const uint8_t *)"nope", 4, r, 4), -1);

    uint64_t ms;
    assert_int_equal(sink_acs_retry_hint("250", NULL, "5", 0, &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(sink_acs_retry_hint(NULL, "1200", NULL, 0, &ms), 0);
    assert_int_equal(ms, 1200);
    assert_int_equal(sink_acs_retry_hint(NULL, NULL, "3", 0, &ms), 0);
    assert_int_equal(ms, 3000);
    assert_int_equal(sink_acs_retry_hint(NULL, NULL, "Fri, 20 Nov 2026 10:00:07 GMT", 1795168800,
                                         &ms), 0);
    assert_int_equal(ms, 7000);
    assert_int_equal(sink_acs_retry_hint(NULL, NULL, NULL, 0, &ms), -1);
    assert_true(sink_acs_retryable(429));
    assert_true(sink_acs_retryable(503));
    assert_false(sink_acs_retryable(400));
    assert_false(sink_acs_retryable(401));
}

static void test_json_escape(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 256);
    const char in[] = "a\"b\\c\n\x01\xC3\xA9\xFF";
    assert_int_equal(sink_sms_json_escape(&b, in, sizeof in - 1), 0);
    const char want[] = "a\\\"b\\\\c\\n\\u0001\xC3\xA9\xEF\xBF\xBD";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(buf_data(&b), want, b.len);
    buf_release(&b);
}

static void test_request_id(void **state)
{
    (void)state;
    char a[37], b2[37], c[37];
    /* python3 -c "import uuid; print(uuid.uuid5(uuid.UUID(
     *   '6f1d3c1e-3b7a-5c55-9a0e-5b9d2a3c7e11'), 'CONTOSO\x1fFL456\x1fscheduled@1773000000'))" */
    sink_sms_request_id("CONTOSO", "FL456", "scheduled@1773000000", a);
    assert_string_equal(a, "7afa77df-f84d-5dbc-984c-629ab50a91f7");
    sink_sms_request_id("CONTOSO", "FL456", "scheduled@1773000000", b2);
    assert_string_equal(a, b2);
    sink_sms_request_id("CONTOSO", "FL456", "updated@1773000000", c);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(c), 36);

    char d[32];
    sink_sms_rfc1123(1795168800, d);
    assert_string_equal(d, "Fri, 20 Nov 2026 10:00:00 GMT");
}

/* ---- quiet hours ------------------------------------------------------------- */

static int32_t fixed_offset(const void *z, int64_t t)
{
    (void)t;
    return *(const int32_t *)z;
}
static int64_t fixed_to_utc(const void *z, int64_t local) { return local - *(const int32_t *)z; }

static void test_quiet_hours(void **state)
{
    (void)state;
    int32_t off = -6 * 3600; /* UTC-6 */
    struct sink_sms_zone z = { fixed_offset, fixed_to_utc, &off };
    int64_t day = 1795168800 - 10 * 3600; /* 2026-11-20 00:00 UTC */
    int64_t local_midnight = day + 6 * 3600; /* 00:00 local in UTC */
    /* window 21:00–08:00 local */
    unsigned qs = 21 * 60, qe = 8 * 60;
    /* 07:30 local → 20:59 local the evening before */
    int64_t due = local_midnight + 7 * 3600 + 30 * 60;
    assert_int_equal(sink_sms_quiet_adjust(due, &z, qs, qe),
                     local_midnight - 3 * 3600 - 60);
    /* 22:15 local → 20:59 the same evening */
    due = local_midnight + 22 * 3600 + 15 * 60;
    assert_int_equal(sink_sms_quiet_adjust(due, &z, qs, qe), local_midnight + 21 * 3600 - 60);
    /* 08:00 local is outside: unchanged */
    due = local_midnight + 8 * 3600;
    assert_int_equal(sink_sms_quiet_adjust(due, &z, qs, qe), due);
    /* a window that does not wrap: 12:00–13:30 */
    due = local_midnight + 13 * 3600;
    assert_int_equal(sink_sms_quiet_adjust(due, &z, 12 * 60, 13 * 60 + 30),
                     local_midnight + 12 * 3600 - 60);
    due = local_midnight + 13 * 3600 + 30 * 60;
    assert_int_equal(sink_sms_quiet_adjust(due, &z, 12 * 60, 13 * 60 + 30), due);
}

/* ---- the state machine, end to end ------------------------------------------ */

struct env {
    char dir[64];
    char db[128];
    char jsonl[128];
    struct config *cfg;
    struct store *st;
    struct sink_sms *sink;
    sqlite3 *con;
    int ctl;
};

static const char *extra_yaml = "";

static int env_setup(void **state)
{
    struct env *e = calloc(1, sizeof *e);
    if (!e || tmpdir_make(e->dir, sizeof e->dir, "sms") != 0)
        return -1;
    snprintf(e->db, sizeof e->db, "%s/store.db", e->dir);
    snprintf(e->jsonl, sizeof e->jsonl, "%s/sms.jsonl", e->dir);
    char err[256];
    struct store_opts so = { .path = e->db, .retention_days = 7 };
    e->st = store_open(&so, err, sizeof err);
    if (!e->st)
        return -1;
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "store:\n  path: \"%s\"\n  min_free_disk_mb: 0\n"
             "sinks:\n  sms:\n    type: file\n    path: \"%s\"\n"
             "    reminders: [24h, 2h]\n    grace_period: 1h\n%s",
             e->db, e->jsonl, extra_yaml);
    struct config_errors errs = { 0 };
    e->cfg = config_load_string("test", yaml, strlen(yaml), &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.items[i]);
    config_errors_release(&errs);
    if (!e->cfg)
        return -1;
    if (sqlite3_open(e->db, &e->con) != SQLITE_OK)
        return -1;
    sqlite3_busy_timeout(e->con, 5000);
    e->sink = sink_sms_start(e->cfg, &(struct store_opts){.path = e->cfg->store.path}, err,
                             sizeof err);
    if (!e->sink) {
        fprintf(stderr, "sink_sms_start: %s\n", err);
        return -1;
    }
    *state = e;
    return 0;
}

static int env_teardown(void **state)
{
    struct env *e = *state;
    sink_sms_stop(e->sink);
    store_close(e->st);
    sqlite3_close(e->con);
    config_free(e->cfg);
    tmpdir_remove(e->dir);
    free(e);
    return 0;
}

struct siu {
    const char *trigger;
    int64_t event_time, start;
    const char *appt;       /* appointment id */
    const char *room;       /* location */
    const char *phone;      /* as sent */
    const char *consent;    /* as sent */
};
/* Facts most tests leave empty. */
struct siu_more {
    const char *language;   /* PID-15 (NULL: none) */
    const char *link;       /* the rules' join link (NULL: none) */
    const char *facility;   /* NULL: CONTOSO */
    int quarantined;        /* the audit rules quarantined the message */
};

/* Stores one accepted SIU message with the appointment facts the rules
 * made of it, through the store writer as ingest does, and waits for the
 * commit. */
static void journal_more(struct env *e, const struct siu *m, const struct siu_more *x)
{
    static const struct siu_more none;
    if (!x)
        x = &none;
    char cid[16];
    snprintf(cid, sizeof cid, "C%d", ++e->ctl);
    struct store_appt_facts af = {
        .text = {
            [STORE_APPT_ID] = m->appt, [STORE_APPT_FACILITY] = x->facility ? x->facility : "CONTOSO",
            [STORE_APPT_EVENT] = m->trigger, [STORE_APPT_LOCATION] = m->room,
            [STORE_APPT_PROVIDER] = "Hannah Heart", [STORE_APPT_FIRST_NAME] = "Ana",
            [STORE_APPT_PHONE] = m->phone, [STORE_APPT_CONSENT] = m->consent,
            [STORE_APPT_LANGUAGE] = x->language, [STORE_APPT_LINK] = x->link,
        },
        .event_time = m->event_time, .start_s = m->start, .duration_min = 30,
    };
    static const char raw[] = "MSH|^~\\&|EPIC|CONTOSO|||20260101||SIU^S12|C|P|2.5.1\r";
    struct store_msg_fields f = {
        .raw = (const uint8_t *)raw, .raw_len = sizeof raw - 1, .listener = "it",
        .peer = "127.0.0.1:1", .send_app = (const uint8_t *)"EPIC", .send_app_len = 4,
        .send_fac = (const uint8_t *)"CONTOSO", .send_fac_len = 7,
        .control_id = (const uint8_t *)cid, .control_id_len = strlen(cid),
        .msg_type = (const uint8_t *)"SIU", .msg_type_len = 3,
        .trigger = (const uint8_t *)m->trigger, .trigger_len = strlen(m->trigger),
        .version = (const uint8_t *)"2.5.1", .version_len = 5, .ack_code = "AA",
        .received_ms = (int64_t)time(NULL) * 1000,
        .quarantined = x->quarantined, .reason = x->quarantined ? "no address" : NULL,
        .appt = &af,
    };
    struct store_msg *sm = store_msg_new(&f);
    assert_non_null(sm);
    assert_int_equal(store_submit(e->st, sm, (uint64_t)e->ctl), 0);
    struct pollfd pfd = { .fd = store_event_fd(e->st), .events = POLLIN };
    struct store_result r;
    size_t got = 0;
    for (int i = 0; i < 200 && got == 0; i++) {
        (void)poll(&pfd, 1, 50);
        got = store_take_results(e->st, &r, 1);
    }
    assert_int_equal(got, 1);
    assert_int_equal(r.status, STORE_STORED);
}

static void journal(struct env *e, const struct siu *m) { journal_more(e, m, NULL); }

static int64_t q1(struct env *e, const char *sql)
{
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(e->con, sql, -1, &q, NULL), SQLITE_OK);
    int rc = sqlite3_step(q);
    int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
    sqlite3_finalize(q);
    return v;
}

/* Waits until the worker has applied (and deleted) every stored fact and
 * sent what was due. */
static void settle(struct env *e)
{
    for (int i = 0; i < 300; i++) {
        int64_t facts = q1(e, "SELECT COUNT(*) FROM appt_facts");
        int64_t due = q1(e, "SELECT COUNT(*) FROM sms_outbox WHERE state = 'pending' AND "
                            "next_ms <= CAST(strftime('%s','now') AS INTEGER) * 1000");
        if (facts == 0 && due == 0) {
            usleep(300000); /* one more turn for the sends in flight */
            return;
        }
        usleep(50000);
    }
    fail_msg("the SMS worker did not catch up");
}

/* "kind:state kind:state …" of one appointment's texts in id order. */
static void texts_of(struct env *e, const char *appt, char *out, size_t cap)
{
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(e->con,
                                        "SELECT kind, state FROM sms_outbox WHERE appt_id = ?1"
                                        " ORDER BY id", -1, &q, NULL), SQLITE_OK);
    sqlite3_bind_text(q, 1, appt, -1, SQLITE_STATIC);
    size_t n = 0;
    out[0] = '\0';
    while (sqlite3_step(q) == SQLITE_ROW)
        n += (size_t)snprintf(out + n, cap - n, "%s%s:%s", n ? " " : "",
                              (const char *)sqlite3_column_text(q, 0),
                              (const char *)sqlite3_column_text(q, 1));
    sqlite3_finalize(q);
}

/* Polls a one-value query until it gives `want` (purges run once a second). */
static void wait_q1(struct env *e, const char *sql, int64_t want)
{
    for (int i = 0; i < 100 && q1(e, sql) != want; i++)
        usleep(50000);
    assert_int_equal(q1(e, sql), want);
}

static int64_t counter(struct env *e, const char *name)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT COALESCE((SELECT n FROM sms_counters WHERE name = '%s'), 0)",
             name);
    return q1(e, sql);
}

static void test_book_move_cancel(void **state)
{
    struct env *e = *state;
    int64_t now = time(NULL);
    int64_t s1 = now + 3 * 86400, s2 = now + 4 * 86400;
    journal(e, &(struct siu){ "S12", now - 30, s1, "A1", "Exam 3", "8475550122", "Y" });
    settle(e);
    char got[512];
    texts_of(e, "A1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent reminder:pending reminder:pending");
    /* reschedule: new reminders, old ones gone */
    journal(e, &(struct siu){ "S13", now - 20, s2, "A1", "Exam 3", "8475550122", "Y" });
    settle(e);
    texts_of(e, "A1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent updated:sent reminder:pending reminder:pending");
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM sms_outbox WHERE kind = 'reminder' AND "
                              "due_s IN (%lld, %lld)",
             (long long)(s2 - 86400), (long long)(s2 - 7200));
    assert_int_equal(q1(e, sql), 2);
    /* modification without a change of time, place or provider: no text */
    journal(e, &(struct siu){ "S14", now - 15, s2, "A1", "Exam 3", "8475550199", "Y" });
    settle(e);
    texts_of(e, "A1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent updated:sent reminder:pending reminder:pending");
    /* a change of place is worth a text */
    journal(e, &(struct siu){ "S14", now - 12, s2, "A1", "Exam 4", "8475550199", "Y" });
    settle(e);
    texts_of(e, "A1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent updated:sent updated:sent reminder:pending "
                             "reminder:pending");
    /* cancel: reminders removed, the cancellation sent, personal data purged */
    journal(e, &(struct siu){ "S15", now - 10, s2, "A1", "Exam 4", "8475550199", "Y" });
    settle(e);
    texts_of(e, "A1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent updated:sent updated:sent cancelled:sent");
    wait_q1(e, "SELECT purged FROM sms_appointments WHERE appt_id = 'A1'", 1);
    assert_int_equal(q1(e, "SELECT COUNT(*) FROM sms_appointments WHERE phone IS NOT NULL OR "
                           "first_name IS NOT NULL"), 0);
    assert_int_equal(q1(e, "SELECT COUNT(*) FROM sms_outbox WHERE to_e164 IS NOT NULL OR "
                           "text IS NOT NULL"), 0);
    /* the file got four lines, the number normalised and masked (the
     * default sinks.sms.mask_numbers: true) */
    FILE *f = fopen(e->jsonl, "r");
    assert_non_null(f);
    char line[4096];
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        assert_non_null(strstr(line, "\"to\":\"+*******"));
        assert_null(strstr(line, "+1847555"));
        assert_non_null(strstr(line, "\"repeatabilityRequestId\":\""));
    }
    fclose(f);
    assert_int_equal(lines, 4);
    struct sink_sms_stats ss;
    sink_sms_get_stats(e->sink, &ss);
    assert_int_equal(ss.sent, 4);
    assert_int_equal(ss.reminders_pending, 0);
}

static void test_duplicates_and_order(void **state)
{
    struct env *e = *state;
    int64_t now = time(NULL);
    int64_t s1 = now + 3 * 86400, s2 = now + 5 * 86400;
    /* the same booking twice (a re-sent message with a new control id) */
    journal(e, &(struct siu){ "S12", now - 30, s1, "B1", "Exam 3", "8475550122", "Y" });
    journal(e, &(struct siu){ "S12", now - 30, s1, "B1", "Exam 3", "8475550122", "Y" });
    /* out of order: the reschedule arrives before the booking */
    journal(e, &(struct siu){ "S13", now - 10, s2, "B2", "Exam 3", "8475550122", "Y" });
    journal(e, &(struct siu){ "S12", now - 30, s1, "B2", "Exam 3", "8475550122", "Y" });
    /* a cancel, then the (older) booking arrives late: stays cancelled */
    journal(e, &(struct siu){ "S15", now - 5, s1, "B3", "Exam 3", "8475550122", "Y" });
    journal(e, &(struct siu){ "S12", now - 30, s1, "B3", "Exam 3", "8475550122", "Y" });
    /* the cancellation sent twice */
    journal(e, &(struct siu){ "S15", now - 5, s1, "B3", "Exam 3", "8475550122", "Y" });
    settle(e);
    char got[512];
    texts_of(e, "B1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent reminder:pending reminder:pending");
    texts_of(e, "B2", got, sizeof got);
    assert_string_equal(got, "updated:sent reminder:pending reminder:pending");
    assert_int_equal(q1(e, "SELECT start_s FROM sms_appointments WHERE appt_id = 'B2'") , s2);
    texts_of(e, "B3", got, sizeof got);
    assert_string_equal(got, "cancelled:sent");
    assert_int_equal(q1(e, "SELECT state = 'cancelled' FROM sms_appointments WHERE appt_id = 'B3'"), 1);
    assert_int_equal(counter(e, "duplicate_event"), 2);
    assert_int_equal(counter(e, "stale_event"), 2);
    /* no-show removes the reminders, sends nothing */
    journal(e, &(struct siu){ "S26", now, s1, "B1", "Exam 3", "8475550122", "Y" });
    settle(e);
    texts_of(e, "B1", got, sizeof got);
    assert_string_equal(got, "scheduled:sent");
}

static void test_consent_and_numbers(void **state)
{
    struct env *e = *state;
    int64_t now = time(NULL);
    int64_t s1 = now + 3 * 86400;
    journal(e, &(struct siu){ "S12", now, s1, "C1", "Exam 3", "8475550122", "N" });
    journal(e, &(struct siu){ "S12", now, s1, "C2", "Exam 3", "555-0122", "Y" });
    journal(e, &(struct siu){ "S12", now, s1, "C3", "Exam 3", "", "Y" });
    /* an appointment already over: no confirmation */
    journal(e, &(struct siu){ "S12", now, now - 7200, "C4", "Exam 3", "8475550122", "Y" });
    /* reminders whose time has passed: 2h before a start 1h away */
    journal(e, &(struct siu){ "S12", now, now + 3600, "C5", "Exam 3", "8475550122", "Y" });
    settle(e);
    assert_int_equal(q1(e, "SELECT COUNT(*) FROM sms_outbox WHERE appt_id IN ('C1','C2','C3','C4')"), 0);
    assert_int_equal(counter(e, "no_consent"), 1);
    assert_int_equal(counter(e, "bad_number"), 1);
    assert_int_equal(counter(e, "no_number"), 1);
    assert_int_equal(counter(e, "past_appointment"), 1);
    assert_int_equal(counter(e, "reminder_past"), 2);
    char got[256];
    texts_of(e, "C5", got, sizeof got);
    assert_string_equal(got, "scheduled:sent");
    /* the appointment that is over was purged at once */
    wait_q1(e, "SELECT purged FROM sms_appointments WHERE appt_id = 'C4'", 1);
    struct sink_sms_stats st;
    sink_sms_get_stats(e->sink, &st);
    assert_int_equal(st.skipped[SINK_SMS_SKIP_NO_CONSENT], 1);
}

static int quiet_setup(void **state)
{
    /* quiet 21:00–08:00 in a zone fixed at UTC-6 (POSIX sign: Etc/GMT+6) */
    extra_yaml = "    time_zone: Etc/GMT+6\n    quiet_hours: {start: \"21:00\", end: \"08:00\"}\n";
    int r = env_setup(state);
    extra_yaml = "";
    return r;
}

static void test_quiet_reminders(void **state)
{
    struct env *e = *state;
    int64_t now = time(NULL);
    /* An appointment at 09:00 local time three days out: its 2h reminder
     * (07:00) falls in quiet hours and moves to 20:59 the evening before;
     * the 24h one (09:00 the day before) stays. */
    int64_t day = (now / 86400 + 3) * 86400; /* a UTC midnight */
    int64_t start = day + 15 * 3600;         /* 09:00 at UTC-6 */
    journal(e, &(struct siu){ "S12", now, start, "Q1", "Exam 3", "8475550122", "Y" });
    settle(e);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT due_s FROM sms_outbox WHERE appt_id = 'Q1' AND event_key = "
             "'reminder@7200@%lld'", (long long)start);
    int64_t due2 = q1(e, sql);
    snprintf(sql, sizeof sql,
             "SELECT due_s FROM sms_outbox WHERE appt_id = 'Q1' AND event_key = "
             "'reminder@86400@%lld'", (long long)start);
    int64_t due24 = q1(e, sql);
    assert_int_equal(due24, start - 86400);
    assert_true(due2 < start - 7200);
    /* 20:59 the evening before a 09:00 start: 12 h 01 min earlier */
    assert_int_equal(start - due2, 12 * 3600 + 60);
}

/* sinks.sms.time_zone defaults to mapping.time_zone (patients see their
 * clinic's time, not UTC); written, it wins. */
/* Lines of the file sink holding both strings. */
static int lines_with(const struct env *e, const char *a, const char *b)
{
    FILE *f = fopen(e->jsonl, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, a) && strstr(line, b);
    fclose(f);
    return n;
}

static int facilities_setup(void **state)
{
    /* quiet 21:00–08:00 everywhere; NORTH at UTC-6 (POSIX sign: Etc/GMT+6),
     * SOUTH at UTC+9, the rest at UTC */
    extra_yaml =
        "    from: \"+18005550100\"\n"
        "    quiet_hours: {start: \"21:00\", end: \"08:00\"}\n"
        "    link: \"https://g.test/j/{appointment_id}\"\n"
        "    templates: {scheduled: \"G {start:%H:%M %z} {link}\"}\n"
        "    facilities:\n"
        "      - codes: [NORTH, N2]\n"
        "        from: \"+18005550111\"\n"
        "        time_zone: Etc/GMT+6\n"
        "        link: \"https://n.test/v?id={appointment_id}&at={start:%H:%M}\"\n"
        "        templates: {scheduled: \"N {start:%H:%M %z} {link}\"}\n"
        "      - codes: [SOUTH]\n"
        "        from: \"+18005550122\"\n"
        "        time_zone: Etc/GMT-9\n"
        "        templates: {scheduled: \"S {start:%H:%M %z} {link}\"}\n";
    int r = env_setup(state);
    extra_yaml = "";
    return r;
}

/* Each facility's texts with its own number, zone, template and link;
 * others with the global settings; the rules' link wins over a template. */
static void test_facilities(void **state)
{
    struct env *e = *state;
    int64_t now = time(NULL);
    int64_t day = (now / 86400 + 3) * 86400; /* a UTC midnight */
    int64_t start = day + 15 * 3600;         /* 09:00 at UTC-6, 00:00 at UTC+9 */
    static const struct siu_more north = { .facility = "NORTH" }, n2 = { .facility = "N2" },
                                 south = { .facility = "SOUTH" },
                                 ruled = { .facility = "NORTH", .link = "https://rules.test/x?a=1" };
    journal_more(e, &(struct siu){ "S12", now, start, "N1/a b", "Exam 3", "8475550122", "Y" },
                 &north);
    journal_more(e, &(struct siu){ "S12", now, start, "N2", "Exam 3", "8475550122", "Y" }, &n2);
    journal_more(e, &(struct siu){ "S12", now, start, "S1", "Exam 3", "8475550122", "Y" }, &south);
    journal_more(e, &(struct siu){ "S12", now, start, "G1", "Exam 3", "8475550122", "Y" }, NULL);
    journal_more(e, &(struct siu){ "S12", now, start, "R1", "Exam 3", "8475550122", "Y" }, &ruled);
    settle(e);
    assert_int_equal(lines_with(e, "\"from\":\"+18005550111\"",
                                "\"message\":\"N 09:00 -0600 https://n.test/v?id=N1%2Fa%20b&at=09%3A00\""),
                     1);
    assert_int_equal(lines_with(e, "\"from\":\"+18005550111\"",
                                "\"message\":\"N 09:00 -0600 https://n.test/v?id=N2&at=09%3A00\""),
                     1);
    /* SOUTH has no link of its own: the global template */
    assert_int_equal(lines_with(e, "\"from\":\"+18005550122\"",
                                "\"message\":\"S 00:00 +0900 https://g.test/j/S1\""), 1);
    assert_int_equal(lines_with(e, "\"from\":\"+18005550100\"",
                                "\"message\":\"G 15:00 +0000 https://g.test/j/G1\""), 1);
    assert_int_equal(lines_with(e, "\"from\":\"+18005550111\"",
                                "\"message\":\"N 09:00 -0600 https://rules.test/x?a=1\""), 1);
    assert_int_equal(lines_with(e, "\"kind\":\"scheduled\"", "\"from\":\"+1800555"), 5);
    /* Quiet hours in the clinic's zone: NORTH's 2h reminder (07:00 local)
     * moves to 20:59 the evening before; at UTC (13:00) it stays. */
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT due_s FROM sms_outbox WHERE appt_id = 'N2' AND event_key = "
             "'reminder@7200@%lld'", (long long)start);
    assert_int_equal(start - q1(e, sql), 12 * 3600 + 60);
    snprintf(sql, sizeof sql,
             "SELECT due_s FROM sms_outbox WHERE appt_id = 'G1' AND event_key = "
             "'reminder@7200@%lld'", (long long)start);
    assert_int_equal(start - q1(e, sql), 7200);
    /* SOUTH starts at midnight local: its 2h reminder (22:00 local) moves
     * to 20:59 local, 3 h 01 min before the start */
    snprintf(sql, sizeof sql,
             "SELECT due_s FROM sms_outbox WHERE appt_id = 'S1' AND event_key = "
             "'reminder@7200@%lld'", (long long)start);
    assert_int_equal(start - q1(e, sql), 3 * 3600 + 60);
}

static void test_time_zone_default(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        { "mapping: {time_zone: America/Chicago}\n", "America/Chicago" },
        { "mapping: {time_zone: America/Chicago}\nsinks: {sms: {time_zone: Europe/Madrid}}\n",
          "Europe/Madrid" },
        { "", "UTC" },
    };
    for (size_t i = 0; i < 3; i++) {
        struct config_errors errs = { 0 };
        struct config *c = config_load_string("tz", cases[i][0], strlen(cases[i][0]), &errs);
        config_errors_release(&errs);
        assert_non_null(c);
        assert_string_equal(c->sinks.sms.time_zone, cases[i][1]);
        config_free(c);
    }
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_render_link),
        cmocka_unit_test(test_config_check),
        cmocka_unit_test(test_pick_template),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_fit),
        cmocka_unit_test(test_e164),
        cmocka_unit_test(test_acs_signature),
        cmocka_unit_test(test_acs_answer),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_quiet_hours),
        cmocka_unit_test(test_time_zone_default),
        cmocka_unit_test_setup_teardown(test_book_move_cancel, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_and_order, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_consent_and_numbers, env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_quiet_reminders, quiet_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_facilities, facilities_setup, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
