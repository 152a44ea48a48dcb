/* Unit tests for mapping/: the shipped rule files against our fixtures and
 * ../shared/corpus (exact rows), date-times in every HL7 precision and the
 * DST edges, repetition selection, for_each, every outcome of a missing
 * mandatory column, unmatched messages, rule-file errors with their exact
 * file:line:column, and tsv/csv/psv escaping.  Run from the project root. */
#include <dirent.h>
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

#include "hl7/hl7.h"
#include "mapping/mapping.h"

#define FIX "tests/fixtures/mapping/"
#define CORPUS "../shared/corpus"

/* ---- helpers --------------------------------------------------------------- */

static char g_tmpdir[64];

/* The `users` table the shipped rules look their users up in. */
static const struct mapping_lookup g_users = {"users", FIX "users.csv", "ehr_id", "upn"};

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *p = malloc(cap + 1);
    size_t k;
    while (p && (k = fread(p + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            char *q = realloc(p, 2 * cap + 1);
            if (!q) {
                free(p);
                p = NULL;
                break;
            }
            p = q;
            cap *= 2;
        }
    }
    fclose(f);
    if (p)
        p[n] = 0;
    if (len)
        *len = n;
    return p;
}

/* Writes `text` to a file in the test's temp dir; returns its path (static). */
static const char *write_rules(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", g_tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
    return path;
}

static struct mapping *load_text(const char *yaml, enum mapping_schema schema, const char *tz,
                                 enum mapping_unmatched um)
{
    const char *path = write_rules("rules.yaml", yaml);
    const char *files[] = {path};
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .schema = schema, .rules = files, .n_rules = 1, .time_zone = tz,
                             .unmatched = um};
    struct mapping_errors errs = {0};
    struct mapping *mp = mapping_load(&o, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("unexpected rule error: %s\n", errs.items[i]);
    mapping_errors_release(&errs);
    assert_non_null(mp);
    return mp;
}

static struct mapping *load_files(const char *const *files, size_t n, enum mapping_schema schema)
{
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .schema = schema, .rules = files, .n_rules = n,
                             .time_zone = "America/Chicago"};
    struct mapping_errors errs = {0};
    struct mapping *mp = mapping_load(&o, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("unexpected rule error: %s\n", errs.items[i]);
    mapping_errors_release(&errs);
    assert_non_null(mp);
    return mp;
}

/* A message written with \n between segments for readability. */
struct tmsg {
    char *bytes;
    size_t len;
    struct hl7_msg *m;
};

static void tmsg_parse(struct tmsg *t, const char *text)
{
    t->len = strlen(text);
    t->bytes = malloc(t->len + 1);
    assert_non_null(t->bytes);
    for (size_t i = 0; i <= t->len; i++)
        t->bytes[i] = text[i] == '\n' ? '\r' : text[i];
    t->m = hl7_msg_new();
    assert_non_null(t->m);
    struct hl7_err e;
    int rc = hl7_msg_parse(t->m, (const uint8_t *)t->bytes, t->len, NULL, &e);
    if (rc != 0)
        print_message("parse failed: %d %s\n", e.code, e.text);
    assert_int_equal(rc, 0);
}

static void tmsg_release(struct tmsg *t)
{
    hl7_msg_free(t->m);
    free(t->bytes);
}

/* Maps `text` and returns the formatted rows (no header), owned. */
static char *map_rows(const struct mapping *mp, const char *text, enum mapping_format fmt,
                      int *outcome, unsigned *replaced)
{
    struct tmsg t;
    tmsg_parse(&t, text);
    struct mapping_result *r = mapping_result_new();
    assert_non_null(r);
    int oc = mapping_eval(mp, t.m, r);
    if (outcome)
        *outcome = oc;
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(mapping_format_rows(mp, r, fmt, NULL, &out, replaced), 0);
    char *s = strndup((const char *)buf_data(&out) ? (const char *)buf_data(&out) : "", out.len);
    buf_release(&out);
    mapping_result_free(r);
    tmsg_release(&t);
    return s;
}

/* Column `col` of row 0, or the outcome's reason when there is no row. */
static char *map_col(const struct mapping *mp, const char *text, size_t col)
{
    struct tmsg t;
    tmsg_parse(&t, text);
    struct mapping_result *r = mapping_result_new();
    assert_non_null(r);
    int oc = mapping_eval(mp, t.m, r);
    char *s;
    if (oc == MAPPING_ROWS && mapping_result_row_count(r) > 0)
        s = strdup(mapping_result_value(r, 0, col, NULL));
    else
        s = strdup(mapping_result_reason(r));
    mapping_result_free(r);
    tmsg_release(&t);
    return s;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/test_mapping.XXXXXX");
    return mkdtemp(g_tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(g_tmpdir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", g_tmpdir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(g_tmpdir);
    return 0;
}

/* ---- shipped rules on our fixtures -------------------------------------------- */

struct fixture_case {
    const char *rules;
    enum mapping_schema schema;
    const char *msg;
    const char *expected; /* header + rows, tsv */
};

static const struct fixture_case fixture_cases[] = {
    {"config/mappings/adt.yaml", MAPPING_SCHEMA_HEALTHCARE, FIX "adt_a01.hl7", FIX "adt_a01.healthcare.tsv"},
    {"config/mappings/adt.yaml", MAPPING_SCHEMA_EPIC, FIX "adt_a01.hl7", FIX "adt_a01.epic.tsv"},
    {"config/mappings/siu.yaml", MAPPING_SCHEMA_HEALTHCARE, FIX "siu_s12.hl7", FIX "siu_s12.healthcare.tsv"},
    {"config/mappings/siu.yaml", MAPPING_SCHEMA_EPIC, FIX "siu_s12.hl7", FIX "siu_s12.epic.tsv"},
    {"config/mappings/access-audit.yaml", MAPPING_SCHEMA_HEALTHCARE, FIX "zau_z01.hl7", FIX "zau_z01.healthcare.tsv"},
    {"config/mappings/access-audit.yaml", MAPPING_SCHEMA_EPIC, FIX "zau_z01.hl7", FIX "zau_z01.epic.tsv"},
};

/* Problems of mapping_check_file, one "line: message" per line. */
static void collect_problem(void *ud, uint64_t line, const char *msg)
{
    char *out = ud;
    size_t n = strlen(out);
    snprintf(out + n, 4096 - n, "%llu: %s\n", (unsigned long long)line, msg);
}

/* A prepared csv file: a quoted value spanning two lines keeps the next
 * record's line number right; "" in a mandatory column, a short row, a
 * misnamed header column, a byte order mark, invalid UTF-8 and the row
 * limit are each reported with their line. */
static void test_check_file(void **state)
{
    (void)state;
    const char *files[] = {"config/mappings/adt.yaml"};
    struct mapping *mp = load_files(files, 1, MAPPING_SCHEMA_HEALTHCARE);
    size_t n = mapping_column_count(mp), mand = n;
    for (size_t i = 0; i < n && mand == n; i++)
        if (mapping_column_mandatory(mp, i))
            mand = i;
    assert_true(mand < n);
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(mapping_format_header(mp, MAPPING_FMT_CSV, "\r\n", &b), 0);
    for (int row = 0; row < 3; row++) {
        size_t fields = row == 2 ? n - 1 : n;
        for (size_t i = 0; i < fields; i++) {
            const char *v = "v";
            if (row == 0 && i == 1)
                v = "\"a, \r\nb\"";          /* spans lines 2 and 3 */
            if (row == 1 && i == mand)
                v = "\"\"";                   /* empty */
            assert_int_equal(buf_append_str(&b, i ? "," : ""), 0);
            assert_int_equal(buf_append_str(&b, v), 0);
        }
        assert_int_equal(buf_append_str(&b, "\r\n"), 0);
    }
    char got[4096] = "";
    struct mapping_file_rec *recs = NULL;
    uint64_t problems = 0;
    long long cnt = mapping_check_file(mp, MAPPING_FMT_CSV, buf_data(&b), b.len, 10, &recs,
                                       collect_problem, got, &problems);
    assert_int_equal(cnt, 4);
    assert_int_equal(recs[1].line, 2);
    assert_int_equal(recs[2].line, 4);
    assert_int_equal(recs[3].line, 5);
    char want[1024];
    snprintf(want, sizeof want, "4: mandatory column \"%s\" is empty\n5: %zu fields, the header has %zu\n",
             mapping_column_header(mp, mand), n - 1, n);
    assert_string_equal(got, want);
    assert_int_equal(problems, 2);
    free(recs);

    /* the row limit (tsv, every value filled) */
    buf_reset(&b);
    assert_int_equal(mapping_format_header(mp, MAPPING_FMT_TSV, "\n", &b), 0);
    for (int row = 0; row < 2; row++) {
        for (size_t i = 0; i < n; i++)
            assert_int_equal(buf_append_str(&b, i ? "\tv" : "v"), 0);
        assert_int_equal(buf_append_str(&b, "\n"), 0);
    }
    got[0] = '\0';
    cnt = mapping_check_file(mp, MAPPING_FMT_TSV, buf_data(&b), b.len, 1, &recs, collect_problem,
                             got, &problems);
    free(recs);
    assert_int_equal(cnt, 3);
    assert_string_equal(got, "3: 2 rows: the connector takes at most 1 in one file\n");

    static const uint8_t bom[] = "\xef\xbb\xbf" "Creation Time\r\n";
    got[0] = '\0';
    cnt = mapping_check_file(mp, MAPPING_FMT_TSV, bom, sizeof bom - 1, 10, &recs, collect_problem,
                             got, &problems);
    free(recs);
    assert_string_equal(got, "1: starts with a byte order mark: the connector takes UTF-8 without one\n");

    static const uint8_t bad[] = "x\r\ny\xff\r\n";
    got[0] = '\0';
    cnt = mapping_check_file(mp, MAPPING_FMT_TSV, bad, sizeof bad - 1, 1, &recs, collect_problem,
                             got, &problems);
    free(recs);
    assert_non_null(strstr(got, "2: not valid UTF-8 (byte 5 of the file)\n"));
    assert_non_null(strstr(got, "1: the header lacks column 2"));
    buf_release(&b);
    mapping_free(mp);
}

static void test_fixture_rows(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof fixture_cases / sizeof fixture_cases[0]; i++) {
        const struct fixture_case *c = &fixture_cases[i];
        struct mapping *mp = load_files(&c->rules, 1, c->schema);
        size_t len;
        char *msg = read_file(c->msg, &len);
        char *want = read_file(c->expected, NULL);
        assert_non_null(msg);
        assert_non_null(want);
        struct hl7_msg *m = hl7_msg_new();
        struct hl7_err e;
        assert_int_equal(hl7_msg_parse(m, (const uint8_t *)msg, len, NULL, &e), 0);
        struct mapping_result *r = mapping_result_new();
        assert_int_equal(mapping_eval(mp, m, r), MAPPING_ROWS);
        struct buf out;
        buf_init(&out, 1 << 20);
        assert_int_equal(mapping_format_header(mp, MAPPING_FMT_TSV, NULL, &out), 0);
        assert_int_equal(mapping_format_rows(mp, r, MAPPING_FMT_TSV, NULL, &out, NULL), 0);
        assert_int_equal(buf_append(&out, "", 1), 0);
        if (strcmp((const char *)buf_data(&out), want) != 0)
            print_message("case %zu (%s):\n%s", i, c->expected, (const char *)buf_data(&out));
        assert_string_equal((const char *)buf_data(&out), want);
        buf_release(&out);
        mapping_result_free(r);
        hl7_msg_free(m);
        free(msg);
        free(want);
        mapping_free(mp);
    }
}

static void test_appointment_facts(void **state)
{
    (void)state;
    const char *files[] = {"config/mappings/siu.yaml"};
    struct mapping *mp = load_files(files, 1, MAPPING_SCHEMA_HEALTHCARE);
    size_t len;
    char *msg = read_file(FIX "siu_s12.hl7", &len);
    assert_non_null(msg);
    struct hl7_msg *m = hl7_msg_new();
    struct hl7_err e;
    assert_int_equal(hl7_msg_parse(m, (const uint8_t *)msg, len, NULL, &e), 0);
    struct mapping_result *r = mapping_result_new();
    assert_int_equal(mapping_eval(mp, m, r), MAPPING_ROWS);
    assert_int_equal(mapping_result_has_appt(r), 1);
    static const char *const want[][2] = {
        {"appointment_id", "FL456"},
        {"facility", "CONTOSO"},
        {"event", "S12"},
        {"event_time", "1710511200"},  /* 2024-03-15 09:00 CDT */
        {"start", "1710513000"},       /* 2024-03-15 09:30 CDT (TQ1-7) */
        {"duration_minutes", "30"},
        {"location", "Cardiology Exam 3"},
        {"provider", "HANNAH HEART"},
        {"patient_first_name", "JOHN"},
        {"patient_last_name", "SMITH"},
        {"phone", "+1 8475550122"},    /* the CP repetition, not the PRN one */
        {"consent", "Y"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_string_equal(mapping_result_appt_named(r, want[i][0]), want[i][1]);
    int64_t v;
    assert_int_equal(mapping_result_appt_i64(r, MAPPING_APPT_START, &v), 0);
    assert_int_equal(v, 1710513000);
    assert_null(mapping_result_appt_named(r, "nope"));

    /* A number abroad keeps its country code, a number without one stays
     * national (the SMS sink applies default_country), and XTN-12, the
     * unformatted number, wins over the parts. */
    static const char *const phones[][2] = {
        {"^ORN^CP^^44^20^79460958", "+44 2079460958"},
        {"^ORN^CP^^^847^5550122", "8475550122"},
        {"^PRN^PH^^^847^5550111~^ORN^CP^^33^6^12345678", "+33 612345678"},
        {"^PRN^PH^^49^30^1234567", "+49 301234567"},
        {"^ORN^CP^^44^20^79460958^^^^^+44 7700 900123", "+44 7700 900123"},
    };
    const char *pid13 = strstr(msg, "^PRN^PH^^1^847^5550111~^ORN^CP^^1^847^5550122");
    assert_non_null(pid13);
    size_t head = (size_t)(pid13 - msg), old13 = strlen("^PRN^PH^^1^847^5550111~^ORN^CP^^1^847^5550122");
    for (size_t i = 0; i < sizeof phones / sizeof phones[0]; i++) {
        size_t n13 = strlen(phones[i][0]);
        char *alt = malloc(len - old13 + n13);
        assert_non_null(alt);
        memcpy(alt, msg, head);
        memcpy(alt + head, phones[i][0], n13);
        memcpy(alt + head + n13, msg + head + old13, len - head - old13);
        size_t alen = len - old13 + n13;
        assert_int_equal(hl7_msg_parse(m, (const uint8_t *)alt, alen, NULL, &e), 0);
        assert_int_equal(mapping_eval(mp, m, r), MAPPING_ROWS);
        assert_string_equal(mapping_result_appt_named(r, "phone"), phones[i][1]);
        free(alt);
    }
    mapping_result_free(r);
    hl7_msg_free(m);
    free(msg);
    mapping_free(mp);
}

/* The audit rules quarantine an SIU without a patient address; its
 * appointment facts are produced all the same (the texts do not depend on
 * the connector's columns), with PID-15 as the language and the consent
 * read from mapping_opts.consent_field when given. */
static void test_appointment_facts_when_quarantined(void **state)
{
    (void)state;
    const char *files[] = {"config/mappings/siu.yaml"};
    size_t len;
    char *msg = read_file(FIX "siu_s12.hl7", &len);
    assert_non_null(msg);
    /* No address (PID-11), language Spanish (PID-15), ZCN-3 = N. */
    const char *addr = "1 MAIN ST^^EVANSTON^IL^60201^USA||";
    char *at = strstr(msg, addr);
    assert_non_null(at);
    char *alt = malloc(len + 64);
    assert_non_null(alt);
    size_t head = (size_t)(at - msg);
    memcpy(alt, msg, head);
    size_t n = head;
    memcpy(alt + n, "||", 2);
    n += 2;
    size_t rest = head + strlen(addr);
    const char *pid_end = memchr(msg + rest, '\r', len - rest);
    assert_non_null(pid_end);
    size_t pl = (size_t)(pid_end - (msg + rest));
    memcpy(alt + n, msg + rest, pl);
    n += pl;
    memcpy(alt + n, "||SPA^Spanish^HL70296", 21);
    n += 21;
    size_t tail = len - (size_t)(pid_end - msg);
    memcpy(alt + n, pid_end, tail);
    n += tail;
    /* ZCN|1|Y → ZCN|1|Y|N */
    while (n > 0 && (alt[n - 1] == '\r' || alt[n - 1] == '\n'))
        n--;
    assert_true(n > 4 && memcmp(alt + n - 4, "|1|Y", 4) == 0);
    memcpy(alt + n, "|N", 2);
    n += 2;

    struct hl7_msg *m = hl7_msg_new();
    struct hl7_err e;
    assert_int_equal(hl7_msg_parse(m, (const uint8_t *)alt, n, NULL, &e), 0);
    struct mapping_result *r = mapping_result_new();
    struct mapping *mp = load_files(files, 1, MAPPING_SCHEMA_HEALTHCARE);
    assert_int_equal(mapping_eval(mp, m, r), MAPPING_QUARANTINE);
    assert_int_equal(mapping_result_row_count(r), 0);
    assert_int_equal(mapping_result_has_appt(r), 1);
    assert_string_equal(mapping_result_appt_named(r, "appointment_id"), "FL456");
    assert_string_equal(mapping_result_appt_named(r, "phone"), "+1 8475550122");
    assert_string_equal(mapping_result_appt_named(r, "language"), "SPA");
    assert_string_equal(mapping_result_appt_named(r, "consent"), "Y");
    assert_string_equal(mapping_result_appt_named(r, "link"), "");
    mapping_free(mp);

    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1,
                             .schema = MAPPING_SCHEMA_HEALTHCARE, .rules = files, .n_rules = 1,
                             .time_zone = "America/Chicago", .consent_field = "ZCN-3"};
    mp = mapping_load(&o, NULL);
    assert_non_null(mp);
    assert_int_equal(mapping_eval(mp, m, r), MAPPING_QUARANTINE);
    assert_string_equal(mapping_result_appt_named(r, "consent"), "N");
    mapping_free(mp);
    o.consent_field = "ZCN-x";
    struct mapping_errors errs = {0};
    assert_null(mapping_load(&o, &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.items[0], "sinks.sms.consent.field"));
    mapping_errors_release(&errs);

    mapping_result_free(r);
    hl7_msg_free(m);
    free(alt);
    free(msg);
}

/* ---- shipped rules on the shared corpus ------------------------------------------ */

struct corpus_case {
    const char *file;
    const char *rows; /* tsv rows, healthcare schema, America/Chicago */
};

static const struct corpus_case corpus_cases[] = {
    {"edge/zau-access-audit.hl7",
     "2026-03-01T18:45:12Z\tPatient Chart Opened\tWS-ER-12\tClinical Review\tOpen\tPAT777\tNORA\tN\t"
     "NEIGHBOR\t77 MAPLE AVE\tAPT 2\tSPRINGFIELD\t62704\tIL\tUSA\t\tEmergency access\t"
     "Covering for colleague\tjsmith@contoso.org\tJOHN SMITH\tE12345\tSMITH\tJOHN\n"
     "2026-03-01T18:46:30Z\tRestricted Note Viewed\tWS-ER-12\tRestricted\tView\tPAT777\tNORA\tN\t"
     "NEIGHBOR\t77 MAPLE AVE\tAPT 2\tSPRINGFIELD\t62704\tIL\tUSA\t\tBreak the glass\t"
     "Patient unconscious\tjsmith@contoso.org\tJOHN SMITH\tE12345\tSMITH\tJOHN\n"},
    {"fhir-converter/ADT-A01-01.hl7",
     "2029-08-01T05:51:24Z\tPatient admitted\t\tPatient administration\t"
     "Patient request\tPATID1234\tADAM\tA\tEVERYMAN\t1000\tSte. 123\tAnn Arbor\t99999\tMI\tUSA\t"
     "HUH AE OMU\tNot applicable\t\tkwoolfson@contoso.org\tKathleen Woolfson\tC08\tWoolfson\tKathleen\n"},
    {"fhir-converter/SIU-S12-01.hl7",
     "2021-09-14T09:05:00Z\tAppointment booked\t\tScheduling\tBooked\tPATID1234\tADAM\tA\t"
     "EVERYMAN\t1000\tSte. 123\tAnn Arbor\t99999\tMI\tUSA\t055\tNot applicable\t\tcdent@contoso.org\tCOREY DENT\t9\t"
     "DENT\tCOREY\n"},
};

static int corpus_present(void)
{
    struct stat st;
    return stat(CORPUS, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_corpus_rows(void **state)
{
    (void)state;
    if (!corpus_present()) {
        print_message("../shared/corpus absent: skipping\n");
        skip();
    }
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .schema = MAPPING_SCHEMA_HEALTHCARE, .time_zone = "America/Chicago"};
    struct mapping_errors errs = {0};
    struct mapping *mp = mapping_load(&o, &errs);
    assert_non_null(mp);
    for (size_t i = 0; i < sizeof corpus_cases / sizeof corpus_cases[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, CORPUS "/%s", corpus_cases[i].file);
        char *text = read_file(path, NULL);
        assert_non_null(text);
        for (char *p = text; *p; p++) /* map_rows turns \n into \r; the file has \r */
            if (*p == '\n')
                *p = '\r';
        int oc;
        char *rows = map_rows(mp, text, MAPPING_FMT_TSV, &oc, NULL);
        if (strcmp(rows, corpus_cases[i].rows) != 0)
            print_message("%s:\n%s", corpus_cases[i].file, rows);
        assert_int_equal(oc, MAPPING_ROWS);
        assert_string_equal(rows, corpus_cases[i].rows);
        free(rows);
        free(text);
    }
    mapping_free(mp);
}

struct walk {
    struct mapping *mp;
    struct mapping_result *r;
    struct hl7_msg *m;
    struct buf out;
    unsigned files, parsed, outcome[4];
};

static void eval_one(struct walk *w, const uint8_t *p, size_t len)
{
    struct hl7_err e;
    if (hl7_msg_parse(w->m, p, len, NULL, &e) != 0)
        return;
    w->parsed++;
    int oc = mapping_eval(w->mp, w->m, w->r);
    assert_true(oc >= MAPPING_ROWS && oc <= MAPPING_QUARANTINE);
    w->outcome[oc]++;
    for (int f = MAPPING_FMT_TSV; f <= MAPPING_FMT_PSV; f++) {
        buf_reset(&w->out);
        unsigned rep = 0;
        assert_int_equal(mapping_format_rows(w->mp, w->r, (enum mapping_format)f, NULL, &w->out, &rep), 0);
    }
    if (oc == MAPPING_REJECT)
        assert_true(mapping_result_err(w->r)->code != 0);
    if (oc == MAPPING_QUARANTINE)
        assert_true(strlen(mapping_result_reason(w->r)) > 0);
}

static void walk_dir(struct walk *w, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            walk_dir(w, path);
            continue;
        }
        size_t n = strlen(de->d_name);
        if (n < 4 || strcmp(de->d_name + n - 4, ".hl7") != 0)
            continue;
        size_t len;
        char *text = read_file(path, &len);
        if (!text)
            continue;
        w->files++;
        if (hl7_is_batch((const uint8_t *)text, len)) {
            struct hl7_batch_iter it;
            struct hl7_err e;
            struct hl7_slice s;
            if (hl7_batch_begin(&it, (const uint8_t *)text, len, &e) == 0)
                while (hl7_batch_next(&it, &s, &e) == 1)
                    eval_one(w, s.p, s.len);
        } else {
            eval_one(w, (const uint8_t *)text, len);
        }
        free(text);
    }
    closedir(d);
}

static void test_corpus_all_no_crash(void **state)
{
    (void)state;
    if (!corpus_present()) {
        print_message("../shared/corpus absent: skipping\n");
        skip();
    }
    for (int schema = 0; schema < 2; schema++) {
        struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .schema = (enum mapping_schema)schema,
                                 .time_zone = "America/Chicago",
                                 .unmatched = schema ? MAPPING_UNMATCHED_REJECT
                                                     : MAPPING_UNMATCHED_ACCEPT};
        struct mapping_errors errs = {0};
        struct walk w = {0};
        w.mp = mapping_load(&o, &errs);
        assert_non_null(w.mp);
        w.r = mapping_result_new();
        w.m = hl7_msg_new();
        buf_init(&w.out, 1 << 26);
        walk_dir(&w, CORPUS);
        print_message("corpus (%s): %u files, %u messages parsed: %u rows, %u filtered, "
                      "%u rejected, %u quarantined\n",
                      schema ? "epic, unmatched: reject" : "healthcare", w.files, w.parsed,
                      w.outcome[0], w.outcome[1], w.outcome[2], w.outcome[3]);
        assert_true(w.parsed > 100);
        assert_true(w.outcome[MAPPING_ROWS] > 40);
        buf_release(&w.out);
        hl7_msg_free(w.m);
        mapping_result_free(w.r);
        mapping_free(w.mp);
    }
}

/* ---- date-times --------------------------------------------------------------------- */

static const char dt_rules[] =
    "rules:\n"
    "  - name: dt\n"
    "    match: ADT\n"
    "    on_missing_mandatory: default\n"
    "    missing_value: '-'\n"
    "    columns:\n"
    "      creation_time: {field: EVN-2.1, datetime: true}\n";

struct dt_case {
    const char *tz;
    const char *in;
    const char *out; /* "-" when not a date-time */
};

static const struct dt_case dt_cases[] = {
    /* every precision, with and without an offset */
    {"America/Chicago", "20231105143000-0500", "2023-11-05T19:30:00Z"},
    {"America/Chicago", "202311051430-0500", "2023-11-05T19:30:00Z"},
    {"America/Chicago", "2023110514-0500", "2023-11-05T19:00:00Z"},
    {"America/Chicago", "20231105-0500", "2023-11-05T05:00:00Z"},
    {"America/Chicago", "20231105143000+0100", "2023-11-05T13:30:00Z"},
    {"America/Chicago", "20231105143000+01", "2023-11-05T13:30:00Z"},
    {"America/Chicago", "20231105143000.1-0500", "2023-11-05T19:30:00Z"},
    {"America/Chicago", "20231105143000.1234+0000", "2023-11-05T14:30:00Z"},
    {"America/Chicago", "20231105143000", "2023-11-05T20:30:00Z"}, /* CST after fall-back */
    {"America/Chicago", "202311051430", "2023-11-05T20:30:00Z"},
    {"America/Chicago", "2023110514", "2023-11-05T20:00:00Z"},
    {"America/Chicago", "20231105", "2023-11-05T05:00:00Z"},       /* midnight was CDT */
    {"America/Chicago", "202311", "2023-11-01T05:00:00Z"},
    {"America/Chicago", "2023", "2023-01-01T06:00:00Z"},
    {"America/Chicago", "20230715120000.5", "2023-07-15T17:00:00Z"},
    {"America/Chicago", "20241231235960", "2025-01-01T05:59:59Z"}, /* leap second */
    {"UTC", "20231105143000", "2023-11-05T14:30:00Z"},
    {NULL, "20231105143000", "2023-11-05T14:30:00Z"},
    {"Asia/Kolkata", "20240101000000", "2023-12-31T18:30:00Z"},
    /* not date-times */
    {"America/Chicago", "2023110514300", "-"},
    {"America/Chicago", "20231305", "-"},
    {"America/Chicago", "20230230", "-"},
    {"America/Chicago", "20231105246000", "-"},
    {"America/Chicago", "20231105143000Z", "-"},
    {"America/Chicago", "20231105143000.12345", "-"},
    {"America/Chicago", "20231105.5", "-"},
    {"America/Chicago", "2023110514300-0500", "-"},
    {"America/Chicago", "20231105143000-05001", "-"},
    {"America/Chicago", "2023-11-05", "-"},
    {"America/Chicago", "abcd", "-"},
    {"America/Chicago", "0000", "-"},
    /* DST: spring-forward gap moves forward; fall-back overlap takes the earlier instant */
    {"America/Chicago", "20240310015959", "2024-03-10T07:59:59Z"},
    {"America/Chicago", "20240310020000", "2024-03-10T08:00:00Z"}, /* gap → 03:00 CDT */
    {"America/Chicago", "20240310023000", "2024-03-10T08:30:00Z"}, /* gap → 03:30 CDT */
    {"America/Chicago", "20240310030000", "2024-03-10T08:00:00Z"},
    {"America/Chicago", "20231105005959", "2023-11-05T05:59:59Z"},
    {"America/Chicago", "20231105010000", "2023-11-05T06:00:00Z"}, /* ambiguous → CDT */
    {"America/Chicago", "20231105013000", "2023-11-05T06:30:00Z"}, /* ambiguous → CDT */
    {"America/Chicago", "20231105020000", "2023-11-05T08:00:00Z"},
    {"Europe/London", "20240331013000", "2024-03-31T01:30:00Z"},   /* gap → 02:30 BST */
    {"Europe/London", "20241027013000", "2024-10-27T00:30:00Z"},   /* ambiguous → BST */
    {"Europe/London", "20240101120000", "2024-01-01T12:00:00Z"},
    {"Australia/Sydney", "20240407023000", "2024-04-06T15:30:00Z"}, /* ambiguous → AEDT */
    {"Australia/Sydney", "20241006023000", "2024-10-05T16:30:00Z"}, /* gap → 03:30 AEDT */
    {"Australia/Sydney", "20240701120000", "2024-07-01T02:00:00Z"},
    /* beyond the zone file's table: the POSIX rule in its footer */
    {"America/Chicago", "20500701120000", "2050-07-01T17:00:00Z"},
    {"America/Chicago", "20501215120000", "2050-12-15T18:00:00Z"},
    {"America/Chicago", "20500313023000", "2050-03-13T08:30:00Z"}, /* gap in 2050 */
    {"America/Chicago", "20501106013000", "2050-11-06T06:30:00Z"}, /* overlap in 2050 */
    {"America/Chicago", "18800101000000", "1880-01-01T05:50:36Z"}, /* local mean time */
    {"America/Chicago", "19000101000000", "1900-01-01T06:00:00Z"}, /* CST since 1883 */
};

static void test_datetimes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof dt_cases / sizeof dt_cases[0]; i++) {
        const struct dt_case *c = &dt_cases[i];
        struct mapping *mp = load_text(dt_rules, MAPPING_SCHEMA_HEALTHCARE, c->tz, 0);
        char msg[256];
        snprintf(msg, sizeof msg, "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\nEVN|A01|%s\n",
                 c->in);
        char *got = map_col(mp, msg, 0);
        if (strcmp(got, c->out) != 0)
            print_message("case %zu: %s in %s → %s, want %s\n", i, c->in, c->tz ? c->tz : "UTC",
                          got, c->out);
        assert_string_equal(got, c->out);
        free(got);
        mapping_free(mp);
    }
}

static void test_date_format_and_epoch(void **state)
{
    (void)state;
    const char *path = write_rules("dt.yaml", dt_rules);
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .rules = &path, .n_rules = 1, .time_zone = "America/Chicago",
                             .date_format = "%d/%m/%Y %H:%M:%S UTC (%a %j)"};
    struct mapping_errors errs = {0};
    struct mapping *mp = mapping_load(&o, &errs);
    assert_non_null(mp);
    char *got = map_col(mp, "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\nEVN|A01|20240229233000\n", 0);
    assert_string_equal(got, "01/03/2024 05:30:00 UTC (Fri 061)");
    free(got);
    int64_t t;
    assert_int_equal(mapping_dtm_to_utc(mp, (const uint8_t *)"19700101", 8, &t), 0);
    assert_int_equal(t, 6 * 3600);
    assert_int_equal(mapping_dtm_to_utc(mp, (const uint8_t *)"1969123118-0600", 15, &t), 0);
    assert_int_equal(t, 0);
    mapping_free(mp);

    o.time_zone = "Mars/Olympus_Mons";
    assert_null(mapping_load(&o, &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.items[0], "mapping.time_zone: time_zone 'Mars/Olympus_Mons'"));
    mapping_errors_release(&errs);
    o.time_zone = "../../etc/passwd";
    assert_null(mapping_load(&o, &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.items[0],
                        "mapping.time_zone: time_zone '../../etc/passwd' is not a zone name");
    mapping_errors_release(&errs);
}

/* ---- values: repetitions, templates, maps, conditions ------------------------------- */

static const char value_rules[] =
    "maps:\n"
    "  sex: {F: Female, M: Male, '*': Other}\n"
    "rules:\n"
    "  - name: values\n"
    "    match: [ADT^A01, ADT^A04]\n"
    "    on_missing_mandatory: default\n"
    "    columns:\n"
    "      creation_time: {field: 'PID-3[*].1', where: {field: PID-3.5, equals: MR}}\n"
    "      event_name: {field: 'PID-3[*].1', where: [{field: PID-3.5, in: [PI, AN]}, {field: PID-3.4, regex: '^H'}]}\n"
    "      workstation_id: {field: 'PID-3[*].1', where: {field: PID-3.5, equals: XX}, default: none}\n"
    "      event_section: \"{PID-5.2} {PID-5.1}\"\n"
    "      event_category: [\"{PID-6}\", \"{PID-5.3}\", fallback]\n"
    "      patient_reg_id: {field: PID-8, map: sex}\n"
    "      patient_first_name: {field: PID-5.2, case: lower}\n"
    "      patient_middle_name: {field: PID-5.1, case: upper}\n"
    "      patient_last_name: {template: \"  <{PID-5.1}>  \"}\n"
    "      patient_address_line_1: {template: \"  <{PID-5.1}>  \", trim: false}\n"
    "      patient_address_line_2: {literal: \"{not a template}\"}\n"
    "      patient_city: \"{{braces}} and {PID-8}\"\n"
    "      patient_zip_code: \"{PID-99} {PID-98}\"\n"
    "      patient_state: {field: PID-19, map: {A: 1}}\n"
    "      patient_country: {field: PID-20, units: \"{PID-21}\"}\n"
    "      patient_department: {field: PID-22, units: \"{PID-23}\"}\n"
    "      restricted_access_reason: {first: [\"{PID-99}\", {default: dflt}]}\n"
    "      restricted_access_comment: {field: 'PID-13[*].7', where: {field: PID-13.3, equals: CP}}\n"
    "      user_login: {field: 'PID-13[*].7'}\n"
    "      employee_user_name: \"{PID-13[2].7}/{PID-13[*].7}\"\n"
    "      employee_id: {field: PID-24, units: \"{PID-25}\"}\n"
    "      employee_last_name: {field: PID-26, units: \"{PID-27}\"}\n"
    "      employee_first_name: {field: PID-28, units: \"{PID-29}\"}\n";

static void test_values(void **state)
{
    (void)state;
    struct mapping *mp = load_text(value_rules, MAPPING_SCHEMA_HEALTHCARE, "UTC", 0);
    const char *msg =
        "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\n"
        "PID|1||X1^^^HOSP^PI~M77^^^HOSP^MR~A5^^^HOSP^AN||Doe^Jane^|||F|||||"
        "^PRN^PH^^^^5550100~^WPN^CP^^^^5550199~^ORN^CP^^^^5550155||||||ZZ|90|s|1.5|h|2|days|x|y\n";
    int oc;
    char *rows = map_rows(mp, msg, MAPPING_FMT_TSV, &oc, NULL);
    assert_int_equal(oc, MAPPING_ROWS);
    /* creation_time: the MR repetition; event_name: PI or AN with an authority
     * starting with H (X1 first); workstation_id: no XX repetition → default;
     * zip: a template of empty fields is empty → the rule's missing value;
     * units: 90 s → 2 min (rounded), 1.5 h → 90, 2 days → 2880, x → empty */
    const char *want2 =
        "M77\tX1\tnone\tJane Doe\tfallback\tFemale\tjane\tDOE\t<Doe>\t  <Doe>  \t{not a template}\t"
        "{braces} and F\tUnknown\tZZ\t2\t90\tdflt\t5550199\t5550100\t5550199/5550100\t2880\t\t\n";
    if (strcmp(rows, want2) != 0)
        print_message("got: %s", rows);
    assert_string_equal(rows, want2);
    free(rows);
    /* M → Male, other → '*' fallback */
    char *v = map_col(mp, "MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\nPID|1||||X^Y|||M\n", 5);
    assert_string_equal(v, "Male");
    free(v);
    v = map_col(mp, "MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\nPID|1||||X^Y|||U\n", 5);
    assert_string_equal(v, "Other");
    free(v);
    mapping_free(mp);
}

struct cond_case {
    const char *when;
    int selected;
};

static const struct cond_case cond_cases[] = {
    {"{field: PID-8, equals: F}", 1},
    {"{field: PID-8, equals: M}", 0},
    {"{field: PID-8, in: [M, F]}", 1},
    {"{field: PID-8, in: [M, U]}", 0},
    {"{field: PID-8, present: true}", 1},
    {"{field: PID-9, present: true}", 0},
    {"{field: PID-9, absent: true}", 1},
    {"{field: PID-8, absent: true}", 0},
    {"{field: PID-8, present: false}", 0},
    {"{field: ZZZ-1, absent: true}", 1},
    {"{field: PID-5.1, regex: '^D[a-z]+$'}", 1},
    {"{field: PID-5.1, regex: '^d'}", 0},
    {"{field: 'PID-3[*].5', equals: MR}", 1},  /* any repetition */
    {"{field: 'PID-3[*].5', equals: SS}", 0},
    {"{field: PID-3.5, equals: MR}", 0},     /* the first repetition only */
    {"{field: 'PID-3[*].9', absent: true}", 1},
    {"{field: 'PID-3[*].4', absent: true}", 0},
    {"[{field: PID-8, equals: F}, {field: MSH-11, equals: P}]", 1},
    {"[{field: PID-8, equals: F}, {field: MSH-11, equals: T}]", 0},
    {"{field: PID-2, equals: \"\"}", 0}, /* HL7 null is empty */
};

static void test_conditions(void **state)
{
    (void)state;
    const char *msg = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\n"
                      "PID|1|\"\"|X1^^^H^PI~M77^^^H^MR||Doe^Jane|||F\n";
    for (size_t i = 0; i < sizeof cond_cases / sizeof cond_cases[0]; i++) {
        char yaml[1024];
        snprintf(yaml, sizeof yaml,
                 "rules:\n  - name: c\n    match: ADT^A01\n    when: %s\n"
                 "    on_missing_mandatory: default\n    columns: {event_name: picked}\n",
                 cond_cases[i].when);
        struct mapping *mp = load_text(yaml, MAPPING_SCHEMA_HEALTHCARE, NULL, 0);
        int oc;
        char *rows = map_rows(mp, msg, MAPPING_FMT_TSV, &oc, NULL);
        if (oc != (cond_cases[i].selected ? MAPPING_ROWS : MAPPING_FILTERED))
            print_message("case %zu: %s → %d\n", i, cond_cases[i].when, oc);
        assert_int_equal(oc, cond_cases[i].selected ? MAPPING_ROWS : MAPPING_FILTERED);
        free(rows);
        mapping_free(mp);
    }
}

static void test_match_and_order(void **state)
{
    (void)state;
    struct mapping *mp = load_text(
        "rules:\n"
        "  - {name: a01, match: ADT^A01, on_missing_mandatory: default, columns: {event_name: one}}\n"
        "  - {name: adt, match: 'ADT^*', on_missing_mandatory: default, columns: {event_name: two}}\n"
        "  - {name: any, match: '*', on_missing_mandatory: default, columns: {event_name: three}}\n"
        "  - {name: s12, match: [SIU^S12], on_missing_mandatory: default, columns: {event_name: four}}\n",
        MAPPING_SCHEMA_HEALTHCARE, NULL, 0);
    static const char *const cases[][2] = {
        {"ADT^A01", "one"}, {"ADT^A08", "two"}, {"ADT", "two"}, {"SIU^S12", "three"}, {"ORU^R01", "three"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[128];
        snprintf(msg, sizeof msg, "MSH|^~\\&|A|B|C|D|20240101||%s|1|P|2.5\n", cases[i][0]);
        char *v = map_col(mp, msg, 1);
        assert_string_equal(v, cases[i][1]);
        free(v);
    }
    mapping_free(mp);
}

/* ---- for_each ---------------------------------------------------------------------------- */

static void test_for_each(void **state)
{
    (void)state;
    struct mapping *mp = load_text(
        "rules:\n"
        "  - name: each\n"
        "    match: ZAU^Z01\n"
        "    for_each: ZAU\n"
        "    on_missing_mandatory: default\n"
        "    columns:\n"
        "      event_name: \"{ZAU-3}\"\n"
        "      workstation_id: \"{ZAU[2]-3}\"\n"      /* a fixed instance */
        "      event_section: \"{PID-5.1}\"\n"       /* from the message */
        "      event_category: \"{ZAU-1}/{ZAU-4[*]}\"\n",
        MAPPING_SCHEMA_HEALTHCARE, NULL, 0);
    int oc;
    char *rows = map_rows(mp,
                          "MSH|^~\\&|A|B|C|D|20240101||ZAU^Z01|1|P|2.5\n"
                          "ZAU|1||first|a~b\nPID|1||||Doe\nZAU|2||second|~c\nNTE|1\nZAU|3||third\n",
                          MAPPING_FMT_CSV, &oc, NULL);
    assert_int_equal(oc, MAPPING_ROWS);
    assert_string_equal(rows,
                        "Unknown,first,second,Doe,1/a,,Unknown,,Unknown,Unknown,,Unknown,Unknown,,,,Unknown,,Unknown,,,,\r\n"
                        "Unknown,second,second,Doe,2/c,,Unknown,,Unknown,Unknown,,Unknown,Unknown,,,,Unknown,,Unknown,,,,\r\n"
                        "Unknown,third,second,Doe,3/,,Unknown,,Unknown,Unknown,,Unknown,Unknown,,,,Unknown,,Unknown,,,,\r\n");
    free(rows);
    /* no ZAU segment: nothing to upload, accepted as filtered */
    rows = map_rows(mp, "MSH|^~\\&|A|B|C|D|20240101||ZAU^Z01|1|P|2.5\nPID|1\n", MAPPING_FMT_TSV,
                    &oc, NULL);
    assert_int_equal(oc, MAPPING_FILTERED);
    assert_string_equal(rows, "");
    free(rows);
    mapping_free(mp);
}

/* ---- missing mandatory columns ---------------------------------------------------------- */

static const char strict_rules_fmt[] =
    "rules:\n"
    "  - name: strict\n"
    "    match: [ADT^*]\n"
    "    on_missing_mandatory: %s\n"
    "    missing_value: N/A\n"
    "    columns:\n"
    "      creation_time: {field: MSH-7, datetime: true}\n"
    "      event_name: \"{MSH-9.2}\"\n"
    "      patient_first_name: \"{PID-5.2}\"\n"
    "      patient_last_name: \"{PID-5.1}\"\n"
    "      patient_address_line_1: \"{PID-11.1}\"\n"
    "      patient_city: \"{PID-11.3}\"\n"
    "      patient_zip_code: \"{PID-11.5}\"\n"
    "      restricted_access_reason: Not applicable\n"
    "      user_login: [\"{EVN-5.1}\"]\n"
    "  - name: audit\n"
    "    match: ZAU^Z01\n"
    "    for_each: ZAU\n"
    "    on_missing_mandatory: %s\n"
    "    columns:\n"
    "      creation_time: {field: ZAU-2, datetime: true}\n"
    "      event_name: \"{ZAU-3}\"\n"
    "      patient_first_name: X\n"
    "      patient_last_name: X\n"
    "      patient_address_line_1: X\n"
    "      patient_city: X\n"
    "      patient_zip_code: X\n"
    "      restricted_access_reason: X\n"
    "      user_login: X\n";

static const char no_city_msg[] =
    "MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\n"
    "EVN|A04|20240101|||OPER\n"
    "PID|1||M1^^^H^MR||Doe^Jane||||||1 Main^^^IL^60601\n";

static const char zau_bad_msg[] =
    "MSH|^~\\&|A|B|C|D|20240101||ZAU^Z01|1|P|2.5\n"
    "ZAU|1|20240101120000|Open\n"
    "ZAU|2|not-a-time|Open\n";

static struct mapping *strict_rules(const char *mode)
{
    char yaml[2048];
    snprintf(yaml, sizeof yaml, strict_rules_fmt, mode, mode);
    return load_text(yaml, MAPPING_SCHEMA_HEALTHCARE, "UTC", 0);
}

static void eval_text(const struct mapping *mp, const char *text, struct mapping_result *r,
                      int want)
{
    struct tmsg t;
    tmsg_parse(&t, text);
    assert_int_equal(mapping_eval(mp, t.m, r), want);
    tmsg_release(&t);
}

static void test_missing_reject(void **state)
{
    (void)state;
    struct mapping *mp = strict_rules("reject");
    struct mapping_result *r = mapping_result_new();
    eval_text(mp, no_city_msg, r, MAPPING_REJECT);
    const struct hl7_err *e = mapping_result_err(r);
    assert_int_equal(e->code, 101);
    assert_string_equal(e->seg, "PID");
    assert_int_equal(e->seg_seq, 1);
    assert_int_equal(e->field, 11);
    assert_int_equal(e->comp, 3);
    assert_int_equal(e->sub, 0);
    assert_string_equal(e->text, "required field missing for column 'Patient City' (PID-11.3)");
    assert_string_equal(mapping_result_reason(r),
                        "mandatory column 'Patient City' is empty (PID-11.3; rule 'strict')");
    assert_int_equal(mapping_result_row_count(r), 0);
    /* for_each: the location names the ZAU instance */
    eval_text(mp, zau_bad_msg, r, MAPPING_REJECT);
    e = mapping_result_err(r);
    assert_int_equal(e->code, 101);
    assert_string_equal(e->seg, "ZAU");
    assert_int_equal(e->seg_seq, 2);
    assert_int_equal(e->field, 2);
    assert_string_equal(mapping_result_reason(r),
                        "mandatory column 'Creation Time' is empty (ZAU-2 in ZAU #2; rule 'audit')");
    /* a first-of list reports its first source */
    eval_text(mp, "MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\n"
                  "PID|1||M1||Doe^Jane||||||1 Main^^Town^IL^60601\n",
              r, MAPPING_REJECT);
    e = mapping_result_err(r);
    assert_string_equal(e->seg, "EVN");
    assert_int_equal(e->field, 5);
    assert_int_equal(e->comp, 1);
    /* the result is reusable after a reject */
    eval_text(mp, "MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5\nEVN|A04|20240101|||OPER\n"
                  "PID|1||M1||Doe^Jane||||||1 Main^^Town^IL^60601\n",
              r, MAPPING_ROWS);
    assert_string_equal(mapping_result_value(r, 0, 11, NULL), "Town");
    mapping_result_free(r);
    mapping_free(mp);
}

static void test_missing_quarantine(void **state)
{
    (void)state;
    struct mapping *mp = strict_rules("quarantine");
    struct mapping_result *r = mapping_result_new();
    eval_text(mp, no_city_msg, r, MAPPING_QUARANTINE);
    assert_string_equal(mapping_result_reason(r),
                        "mandatory column 'Patient City' is empty (PID-11.3; rule 'strict')");
    assert_int_equal(mapping_result_row_count(r), 0);
    eval_text(mp, zau_bad_msg, r, MAPPING_QUARANTINE);
    assert_int_equal(mapping_result_row_count(r), 0);
    mapping_result_free(r);
    mapping_free(mp);

    /* the shipped ADT rules quarantine a message without an address */
    const char *files[] = {"config/mappings/adt.yaml"};
    mp = load_files(files, 1, MAPPING_SCHEMA_EPIC);
    r = mapping_result_new();
    eval_text(mp, "MSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.5\nEVN|A08|20240101|||U12345\n"
                  "PID|1||M1^^^H^MR||Doe^Jane\n", r, MAPPING_QUARANTINE);
    assert_string_equal(mapping_result_reason(r), "mandatory column 'PATIENT.ADD_LINE_1' is empty "
                                                  "(PID-11.1.1; rule 'adt')");
    mapping_result_free(r);
    mapping_free(mp);
}

static void test_missing_default(void **state)
{
    (void)state;
    struct mapping *mp = strict_rules("default");
    int oc;
    char *rows = map_rows(mp, no_city_msg, MAPPING_FMT_PSV, &oc, NULL);
    assert_int_equal(oc, MAPPING_ROWS);
    assert_string_equal(rows, "2024-01-01T00:00:00Z|A04|||||Jane||Doe|1 Main||N/A|60601||||Not "
                              "applicable||OPER||||\n");
    free(rows);
    rows = map_rows(mp, zau_bad_msg, MAPPING_FMT_TSV, &oc, NULL);
    assert_int_equal(oc, MAPPING_ROWS);
    assert_string_equal(rows,
                        "2024-01-01T12:00:00Z\tOpen\t\t\t\t\tX\t\tX\tX\t\tX\tX\t\t\t\tX\t\tX\t\t\t\t\n"
                        "Unknown\tOpen\t\t\t\t\tX\t\tX\tX\t\tX\tX\t\t\t\tX\t\tX\t\t\t\t\n");
    free(rows);
    mapping_free(mp);
}

/* ---- unmatched ---------------------------------------------------------------------------- */

static void test_unmatched(void **state)
{
    (void)state;
    const char *files[] = {"config/mappings/adt.yaml", "config/mappings/siu.yaml",
                           "config/mappings/access-audit.yaml"};
    const char *oru = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5\nPID|1\nOBX|1\n";
    struct mapping_result *r = mapping_result_new();
    struct mapping *mp = load_files(files, 3, MAPPING_SCHEMA_HEALTHCARE);
    eval_text(mp, oru, r, MAPPING_FILTERED);
    assert_string_equal(mapping_result_reason(r), "no mapping rule selects ORU^R01");
    assert_int_equal(mapping_result_err(r)->code, 0);
    mapping_free(mp);

    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .rules = files, .n_rules = 3, .unmatched = MAPPING_UNMATCHED_REJECT};
    mp = mapping_load(&o, NULL);
    assert_non_null(mp);
    eval_text(mp, oru, r, MAPPING_REJECT);
    const struct hl7_err *e = mapping_result_err(r);
    assert_int_equal(e->code, 200);
    assert_string_equal(e->seg, "MSH");
    assert_int_equal(e->field, 9);
    assert_int_equal(e->comp, 1);
    assert_string_equal(e->text, "no mapping rule selects ORU^R01");
    /* a known type with a trigger no rule takes: 201 */
    struct mapping *mp2 = load_text(
        "rules:\n  - {name: a01, match: ADT^A01, on_missing_mandatory: default, columns: {event_name: x}}\n",
        MAPPING_SCHEMA_HEALTHCARE, NULL, MAPPING_UNMATCHED_REJECT);
    eval_text(mp2, "MSH|^~\\&|A|B|C|D|20240101||ADT^A99|1|P|2.5\n", r, MAPPING_REJECT);
    assert_int_equal(mapping_result_err(r)->code, 201);
    assert_int_equal(mapping_result_err(r)->comp, 2);
    /* wire bytes in MSH-9 are never echoed raw */
    eval_text(mp2, "MSH|^~\\&|A|B|C|D|20240101||A%D T^x y|1|P|2.5\n", r, MAPPING_REJECT);
    assert_string_equal(mapping_result_reason(r), "no mapping rule selects A?D?T^x?y");
    mapping_free(mp2);
    mapping_free(mp);
    mapping_result_free(r);
}

/* ---- rule file errors ------------------------------------------------------------------------ */

struct bad_case {
    const char *yaml;
    const char *errors; /* each "line:col: message\n", the file name stripped */
};

#define RULE_HEAD "rules:\n  - name: r\n    match: ADT^A01\n    on_missing_mandatory: default\n"

static const struct bad_case bad_cases[] = {
    {"rules: [\n", "2:1: YAML: did not find expected node content while parsing a flow node\n"},
    {"", "1:1: empty rule file\n"},
    {"- a\n", "1:1: a rule file is a mapping with 'rules:' (and optional 'maps:')\n"},
    {"rule: []\n",
     "1:1: unknown key 'rule' in a rule file (expected one of: rules, maps)\n"
     "1:1: 'rules' must be a list of rules\n"},
    {RULE_HEAD "    colums: {}\n",
     "5:5: unknown key 'colums' in a rule (expected one of: name, match, when, for_each, "
     "on_missing_mandatory, on_unresolved_user, missing_value, columns, appointment)\n"
     "2:5: rule needs 'columns' (connector rows) or 'appointment' (SMS facts)\n"},
    {RULE_HEAD "    columns:\n      event_nam: x\n",
     "6:7: unknown column 'event_nam' (see docs/mapping.md for the names)\n"},
    {RULE_HEAD "    columns:\n      event_name: \"{PID-}\"\n",
     "6:25: bad field path 'PID-': expected a number\n"},
    {RULE_HEAD "    columns:\n      event_name: \"x {PID-5\"\n",
     "6:22: '{' without a closing '}' in template (write '{{' for a brace)\n"},
    {RULE_HEAD "    columns:\n      event_name: a}b\n",
     "6:20: unmatched '}' in template (write '}}' for a brace)\n"},
    {RULE_HEAD "    columns:\n      event_name: {PID-5.1}\n",
     "6:19: put templates in quotes: \"{PID-5.1}\"\n"},
    {RULE_HEAD "    columns:\n      event_name: PID-5.1\n",
     "6:19: 'PID-5.1' looks like a field path: write \"{PID-5.1}\" for the field's value, or "
     "{literal: PID-5.1} for the text\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: PID}\n",
     "6:27: field path 'PID' needs a field number (e.g. PID-5)\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: PID-5, litteral: x}\n",
     "6:34: unknown key 'litteral' in a value (expected one of: field, template, literal, first, "
     "lookup, where, trim, case, map, datetime, units, default)\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: PID-5, map: nomap}\n",
     "6:39: no value map named 'nomap' under 'maps:' in this file\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: PID-5, case: title}\n",
     "6:40: case must be upper or lower\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: 'PID-3[*].1', where: {field: PID-3.5, regex: '('}}\n",
     "6:72: bad regex: Unmatched ( or \\(\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: PID-3.1, where: {field: PID-3.5, equals: MR}}\n",
     "6:43: 'where' picks a repetition of PID-3[*], but the value reads no PID-3[*] path\n"},
    {RULE_HEAD "    columns:\n      event_name: {field: 'PID-3[*].1', where: [{field: PID-3.5, equals: MR}, {field: PID-4.5, equals: MR}]}\n",
     "6:48: all 'where' conditions must test the same field\n"},
    {RULE_HEAD "    when: {field: PID-8, equals: F, in: [M]}\n    columns: {event_name: x}\n",
     "5:11: a condition needs exactly one of equals, in, present, absent, regex\n"},
    {RULE_HEAD "    when: {field: PID-8, present: maybe}\n    columns: {event_name: x}\n",
     "5:35: present must be true or false\n"},
    {"rules:\n  - name: r\n    match: ADT^A01\n    columns: {event_name: x}\n",
     "4:14: mandatory column 'creation_time' has no value (give one, or say on_missing_mandatory: default)\n"},
    {"rules:\n  - name: r\n    match: ADT^A01\n    on_missing_mandatory: drop\n    columns: {event_name: x}\n",
     "4:27: on_missing_mandatory must be reject, quarantine or default\n"},
    {"rules:\n  - match: ADT-A01\n    for_each: Z\n    on_missing_mandatory: default\n    columns: {event_name: x}\n",
     "2:5: rule needs a 'name'\n"
     "2:15: unexpected character in match 'ADT-A01'\n"
     "3:15: for_each names a segment id, e.g. for_each: ZAU\n"},
    {"rules:\n  - name: r\n    match: 'AD*^A01'\n    on_missing_mandatory: default\n    columns: {event_name: x}\n",
     "3:12: '*' stands for a whole message type or trigger\n"},
    {RULE_HEAD "    appointment: {phone: \"{PID-13}\", when: x}\n",
     "5:38: unknown key 'when' in appointment (expected one of: appointment_id, facility, event, "
     "event_time, start, duration_minutes, location, provider, patient_first_name, "
     "patient_last_name, phone, consent, language, link)\n"},
    {"maps:\n  m: {A: 1, A: 2}\nrules:\n  - name: r\n    match: ADT\n    on_missing_mandatory: default\n    columns: {event_name: {field: MSH-9.2, map: m, datetime: soon}}\n",
     "2:13: duplicate code 'A' in value map\n"
     "7:49: no value map named 'm' under 'maps:' in this file\n"
     "7:62: datetime (true, iso or epoch) must be true or false\n"},
};

static void test_bad_rules(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const char *path = write_rules("bad.yaml", bad_cases[i].yaml);
        struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .rules = &path, .n_rules = 1};
        struct mapping_errors errs = {0};
        assert_null(mapping_load(&o, &errs));
        char got[4096] = "";
        size_t n = 0, plen = strlen(path);
        for (size_t k = 0; k < errs.n; k++) {
            const char *e = errs.items[k];
            if (strncmp(e, path, plen) == 0 && e[plen] == ':')
                e += plen + 1;
            n += (size_t)snprintf(got + n, sizeof got - n, "%s\n", e);
        }
        if (strcmp(got, bad_cases[i].errors) != 0)
            print_message("case %zu:\n%s", i, got);
        assert_string_equal(got, bad_cases[i].errors);
        mapping_errors_release(&errs);
    }
    /* errors of several files are all collected, each with its own name */
    const char *files[] = {"tests/fixtures/mapping/does-not-exist.yaml", "config/mappings/adt.yaml"};
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .rules = files, .n_rules = 2,
                             .headers = (const struct mapping_header[]){{"Nope", "x"}},
                             .n_headers = 1};
    struct mapping_errors errs = {0};
    assert_null(mapping_load(&o, &errs));
    assert_int_equal(errs.n, 2);
    assert_string_equal(errs.items[0], "mapping.headers: 'Nope' is not a column of the healthcare schema");
    assert_string_equal(errs.items[1], "tests/fixtures/mapping/does-not-exist.yaml:1:1: cannot open "
                                       "rule file: No such file or directory");
    mapping_errors_release(&errs);
}

/* ---- output -------------------------------------------------------------------------------- */

static const char esc_rules[] =
    "rules:\n"
    "  - name: esc\n"
    "    match: ADT\n"
    "    on_missing_mandatory: default\n"
    "    missing_value: ''\n"
    "    columns:\n"
    "      creation_time: {field: PID-5.1, trim: false}\n"
    "      event_name: \"{PID-5.2}\"\n";

static void test_escaping(void **state)
{
    (void)state;
    struct mapping *mp = load_text(esc_rules, MAPPING_SCHEMA_HEALTHCARE, NULL, 0);
    /* \F\ is a field separator (|), \X09\ a tab, \.br\ a line break */
    const char *msg = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\n"
                      "PID|1||||a,b \"q\"\\F\\p\\X09\\t\\.br\\n\\X0D\\r^plain\n";
    struct {
        enum mapping_format f;
        const char *want;
        unsigned replaced;
    } cases[] = {
        {MAPPING_FMT_CSV, "\"a,b \"\"q\"\"|p t n r\",plain,,,,,,,,,,,,,,,,,,,,,\r\n", 1},
        {MAPPING_FMT_TSV, "a,b \"q\"|p t n r\tplain\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", 1},
        {MAPPING_FMT_PSV, "a,b \"q\" p t n r|plain|||||||||||||||||||||\n", 1},
    };
    for (size_t i = 0; i < 3; i++) {
        unsigned rep = 0;
        int oc;
        char *rows = map_rows(mp, msg, cases[i].f, &oc, &rep);
        assert_int_equal(oc, MAPPING_ROWS);
        if (strcmp(rows, cases[i].want) != 0)
            print_message("fmt %zu: [%s]\n", i, rows);
        assert_string_equal(rows, cases[i].want);
        assert_int_equal(rep, cases[i].replaced);
        free(rows);
    }
    enum mapping_format f;
    assert_int_equal(mapping_format_parse("psv", &f), 0);
    assert_int_equal(f, MAPPING_FMT_PSV);
    assert_int_equal(mapping_format_parse("xls", &f), -1);
    mapping_free(mp);
}

/* Rows never carry control characters: NUL, other C0 controls, DEL and C1
 * controls inside a value become spaces in every format, wherever they sit
 * (the row fast path reads sixteen bytes at a time, so every offset of a
 * long value is tried). */
static void test_control_bytes(void **state)
{
    (void)state;
    struct mapping *mp = load_text(esc_rules, MAPPING_SCHEMA_HEALTHCARE, NULL, 0);
    static const char *const ctl[] = {"\\X00\\", "\\X01\\", "\\X1B\\", "\\X7F\\", "\\X85\\"};
    const char *plain = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"; /* 44 bytes */
    const enum mapping_format fmts[] = {MAPPING_FMT_TSV, MAPPING_FMT_CSV, MAPPING_FMT_PSV};
    char msg[512], want[128];
    for (size_t c = 0; c < sizeof ctl / sizeof ctl[0]; c++) {
        for (size_t at = 0; at <= strlen(plain); at++) {
            snprintf(msg, sizeof msg,
                     "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5|||||||8859/1\n"
                     "PID|1||||%.*s%s%s^%s\n", (int)at, plain, ctl[c], plain + at, plain);
            snprintf(want, sizeof want, "%.*s %s", (int)at, plain, plain + at);
            for (size_t f = 0; f < 3; f++) {
                unsigned rep = 0;
                int oc;
                char *rows = map_rows(mp, msg, fmts[f], &oc, &rep);
                assert_int_equal(oc, MAPPING_ROWS);
                size_t n = strlen(rows); /* a NUL would end the row early */
                assert_true(n > 2 * strlen(plain));
                for (size_t i = 0; i + 2 < n; i++)
                    if ((uint8_t)rows[i] < 0x20 && rows[i] != '\t')
                        fail_msg("control byte 0x%02x at %zu (%s at %zu)", (uint8_t)rows[i], i,
                                 ctl[c], at);
                if (fmts[f] != MAPPING_FMT_TSV)
                    assert_null(strchr(rows, '\t'));
                assert_memory_equal(rows, want, strlen(want));
                assert_null(strstr(rows, "\x7f"));
                assert_null(strstr(rows, "\xc2\x85"));
                assert_int_equal(rep, 1);
                free(rows);
            }
        }
    }
    mapping_free(mp);
}

static void test_headers(void **state)
{
    (void)state;
    const char *files[] = {"config/mappings/access-audit.yaml"};
    const struct mapping_header hh[] = {{"Creation Time", "When"},
                                        {"user_login", "UPN, or \"sam\""}};
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .schema = MAPPING_SCHEMA_HEALTHCARE, .rules = files, .n_rules = 1,
                             .headers = hh, .n_headers = 2};
    struct mapping *mp = mapping_load(&o, NULL);
    assert_non_null(mp);
    assert_int_equal(mapping_column_count(mp), 23);
    assert_string_equal(mapping_column_header(mp, 0), "When");
    assert_true(mapping_column_mandatory(mp, 0));
    assert_false(mapping_column_mandatory(mp, 2));
    assert_int_equal(mapping_rule_count(mp), 1);
    struct buf out;
    buf_init(&out, 4096);
    assert_int_equal(mapping_format_header(mp, MAPPING_FMT_CSV, "\n", &out), 0);
    assert_int_equal(buf_append(&out, "", 1), 0);
    assert_string_equal((const char *)buf_data(&out),
                        "When,Event Name,Workstation Id,Event Section,Event Category,Patient Reg Id,"
                        "Patient First Name,Patient Middle Name,Patient Last Name,Patient Address Line 1,"
                        "Patient Address Line 2,Patient City,Patient Zip Code,Patient State,Patient Country,"
                        "Patient Department,Restricted Access Reason,Restricted Access Comment,"
                        "\"UPN, or \"\"sam\"\"\",Employee User Name,Employee Id,Employee Last Name,"
                        "Employee First Name\n");
    mapping_free(mp);

    const struct mapping_header eh[] = {{"ACCESS_LOG.ACCESS_TIME", "AT"}, {"employee_first_name", "FN"}};
    o.schema = MAPPING_SCHEMA_EPIC;
    o.headers = eh;
    mp = mapping_load(&o, NULL);
    assert_non_null(mp);
    assert_int_equal(mapping_column_count(mp), 22);
    buf_reset(&out);
    assert_int_equal(mapping_format_header(mp, MAPPING_FMT_PSV, NULL, &out), 0);
    assert_int_equal(buf_append(&out, "", 1), 0);
    assert_string_equal((const char *)buf_data(&out),
                        "AT|ACCESS_LOG_METRIC.METRIC_NAME|ACCESS_LOG.WORKSTATION_ID|ZC_METRIC_GROUP.NAME|"
                        "ZC_ACCESS_ACTION.NAME|PATIENT.PAT_MRN_ID|PATIENT.PAT_FIRST_NAME|"
                        "PATIENT.PAT_MIDDLE_NAME|PATIENT.PAT_LAST_NAME|PATIENT.ADD_LINE_1|"
                        "PATIENT.ADD_LINE_2|PATIENT.CITY|PATIENT.ZIP|ZC_STATE.NAME|ZC_COUNTRY.NAME|"
                        "CLARITY_DEP.DEPARTMENT_NAME|ZC_BTG_REASON.NAME|PAT_BTG_AUDIT.BTG_EXPLANATION|"
                        "EMP.SYSTEM_LOGIN|CLARITY_EMP.USER_ID|employee_last_name|FN\n");
    mapping_free(mp);
    /* a healthcare-only column is not a column of the epic schema */
    const struct mapping_header bad[] = {{"Employee User Name", "x"}};
    o.headers = bad;
    o.n_headers = 1;
    struct mapping_errors errs = {0};
    assert_null(mapping_load(&o, &errs));
    assert_string_equal(errs.items[0],
                        "mapping.headers: 'Employee User Name' is not a column of the epic schema");
    mapping_errors_release(&errs);
    buf_release(&out);
}

/* ---- lookup tables and unresolved users ------------------------------------------------ */

/* Loads rules `yaml` with one lookup table `users` from `csv` (key ehr_id,
 * value upn).  Returns the set, or NULL with the errors (file names
 * stripped, one per line) in got. */
static struct mapping *load_lookup(const char *yaml, const char *csv, char *got, size_t cap)
{
    char csv_path[128];
    snprintf(csv_path, sizeof csv_path, "%s/users.csv", g_tmpdir);
    FILE *f = fopen(csv_path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(csv, 1, strlen(csv), f), strlen(csv));
    fclose(f);
    const char *path = write_rules("lk.yaml", yaml);
    struct mapping_lookup lk = {.name = "users", .file = csv_path, .key_column = "ehr_id",
                                .value_column = "upn"};
    struct mapping_opts o = {.rules = &path, .n_rules = 1, .lookups = &lk, .n_lookups = 1};
    struct mapping_errors errs = {0};
    struct mapping *mp = mapping_load(&o, &errs);
    size_t n = 0;
    got[0] = 0;
    for (size_t k = 0; k < errs.n && n < cap; k++) {
        const char *e = errs.items[k];
        const char *slash = strrchr(e, '/');
        const char *colon = strchr(e, ':');
        if (slash && colon && slash < colon)
            e = slash + 1;
        n += (size_t)snprintf(got + n, cap - n, "%s\n", e);
    }
    mapping_errors_release(&errs);
    return mp;
}

#define LK_RULES(policy, user)                                                               \
    "rules:\n  - name: r\n    match: ADT\n    on_missing_mandatory: default\n" policy      \
    "    columns:\n      user_login: " user "\n      employee_id: \"{EVN-5.1}\"\n"

#define LK_MSG(user) "MSH|^~\\&|EPIC|HOSP|X|Y|20240101||ADT^A04|1|P|2.5\nEVN|A04|20240101|||" user "\n"

static void test_lookups(void **state)
{
    (void)state;
    char got[2048];
    /* RFC 4180: a quoted key, a quoted comma and doubled quotes, CRLF and
     * LF, a BOM, padded unquoted fields, a row without a key, more columns */
    static const char csv[] =
        "\xEF\xBB\xBFname,ehr_id,upn,dept\r\n"
        "\"Clerk, Carl\",C08,carl@contoso.org,ADM\r\n"
        "Nine,\"9\", nine@contoso.org ,X\n"
        "\"Quo\"\"te\",Q\"\"1,\"q@contoso.org\",Y\n"
        "No id,,nobody@contoso.org,Z\n"
        "\n"
        "\"Multi\nline\",ML,ml@contoso.org,Z\n";
    struct mapping *mp = load_lookup(LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}}"),
                                     csv, got, sizeof got);
    assert_string_equal(got, "users.csv:4: a quote inside an unquoted field (quote the whole field)\n");
    assert_null(mp);
    static const char csv_ok[] =
        "\xEF\xBB\xBFname,ehr_id,upn,dept\r\n"
        "\"Clerk, Carl\",C08,carl@contoso.org,ADM\r\n"
        "Nine,\"9\", nine@contoso.org ,X\n"
        "\"Quo\"\"te\",\"Q\"\"1\",\"q@contoso.org\",Y\n"
        "No id,,nobody@contoso.org,Z\n"
        "\n"
        "\"Multi\nline\",ML,ml@contoso.org,Z\n";
    mp = load_lookup(LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}}"), csv_ok, got,
                     sizeof got);
    assert_string_equal(got, "");
    assert_non_null(mp);
    assert_int_equal(mapping_lookup_count(mp), 1);
    assert_string_equal(mapping_lookup_name(mp, 0), "users");
    assert_int_equal(mapping_lookup_rows(mp, 0), 4); /* the row without a key is skipped */
    size_t ucol = 18;                                /* healthcare: user_login */
    static const char *const cases[][2] = {
        {"C08^CLERK^CARL", "carl@contoso.org"},
        {"9", "nine@contoso.org"},          /* quoted key; padded value trimmed */
        {"Q\"1", "q@contoso.org"},
        {"ML", "ml@contoso.org"},
        {"C0", "Unknown"},                  /* a prefix is not a key */
        {"C08X", "Unknown"},
        {"", "Unknown"},                    /* no key: no lookup */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[256];
        snprintf(msg, sizeof msg, LK_MSG("%s"), cases[i][0]);
        char *v = map_col(mp, msg, ucol);
        if (strcmp(v, cases[i][1]) != 0)
            print_message("case %zu: %s\n", i, v);
        assert_string_equal(v, cases[i][1]);
        free(v);
    }
    mapping_free(mp);

    /* a lookup inside first, its key built by a template with a case
     * modifier, a default after the lookup */
    mp = load_lookup(LK_RULES("", "{first: [{lookup: {table: users, key: {field: EVN-5.1, case: upper}}}, "
                                  "{literal: fallback}]}"),
                     "ehr_id,upn\nC08,carl@contoso.org\n", got, sizeof got);
    assert_non_null(mp);
    char *v = map_col(mp, LK_MSG("c08"), ucol);
    assert_string_equal(v, "carl@contoso.org");
    free(v);
    v = map_col(mp, LK_MSG("c09"), ucol);
    assert_string_equal(v, "fallback");
    free(v);
    mapping_free(mp);

    /* errors: duplicate key (both lines), a column missing, a short
     * record, an open quote, an unknown table, a user read from MSH */
    mp = load_lookup(LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}}"),
                     "ehr_id,upn\nA,a@x\nB,b@x\nA,c@x\nC\n\"D,d@x\n", got, sizeof got);
    assert_null(mp);
    assert_string_equal(got, "users.csv:5: the record has 1 fields, the columns need 2\n"
                             "users.csv:6: a quoted field is not closed\n"
                             "users.csv:4: duplicate key 'A' (first on line 2)\n");
    /* a NUL byte: not a text export (the string below stops at it, so the
     * file is written by hand) */
    {
        char p[128];
        snprintf(p, sizeof p, "%s/nul.csv", g_tmpdir);
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite("ehr_id,upn\nA,a@x\nB,b\0x\n", 1, 24, f), 24);
        fclose(f);
        struct mapping_lookup nl = {.name = "users", .file = p, .key_column = "ehr_id",
                                    .value_column = "upn"};
        struct mapping_errors ne = {0};
        const char *rp = write_rules("lk.yaml", LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}}"));
        struct mapping_opts no = {.rules = &rp, .n_rules = 1, .lookups = &nl, .n_lookups = 1};
        assert_null(mapping_load(&no, &ne));
        assert_int_equal(ne.n, 1);
        assert_non_null(strstr(ne.items[0], "nul.csv:3: a NUL byte: the file is not a text (CSV) export"));
        mapping_errors_release(&ne);
    }
    mp = load_lookup(LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}}"),
                     "id,mail\nA,a@x\n", got, sizeof got);
    assert_null(mp);
    assert_string_equal(got, "users.csv:1: no column 'ehr_id' (key_column) in the header; it has: id, mail\n"
                             "users.csv:1: no column 'upn' (value_column) in the header; it has: id, mail\n");
    mp = load_lookup(LK_RULES("", "{lookup: {table: people, key: \"{EVN-5.1}\"}}"),
                     "ehr_id,upn\n", got, sizeof got);
    assert_null(mp);
    assert_string_equal(got, "lk.yaml:6:36: no lookup table named 'people' under mapping.lookups (users)\n");
    mp = load_lookup(LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}, where: {}}"),
                     "ehr_id,upn\n", got, sizeof got);
    assert_null(mp);
    mp = load_lookup(LK_RULES("", "{lookup: {table: users}}"), "ehr_id,upn\n", got, sizeof got);
    assert_null(mp);
    assert_string_equal(got, "lk.yaml:6:28: 'lookup' needs 'table' and 'key'\n");
    /* MSH names systems: never a user, also through a lookup or first */
    mp = load_lookup(LK_RULES("", "{first: [\"{EVN-5.1}\", {lookup: {table: users, key: \"{MSH-3}\"}}]}"),
                     "ehr_id,upn\n", got, sizeof got);
    assert_null(mp);
    assert_string_equal(got, "lk.yaml:6:7: column 'user_login' reads MSH-3: MSH names systems, never "
                             "the person acting (use EVN-5, SCH-20 or the feed's user field, with a "
                             "lookup)\n");
    /* a table that cannot be read is one error, not one per use */
    struct mapping_lookup lk = {.name = "users", .file = "/nonexistent/users.csv",
                                .key_column = "ehr_id", .value_column = "upn"};
    const char *path = write_rules("lk.yaml", LK_RULES("", "{lookup: {table: users, key: \"{EVN-5.1}\"}}"));
    struct mapping_opts o = {.rules = &path, .n_rules = 1, .lookups = &lk, .n_lookups = 1};
    struct mapping_errors errs = {0};
    assert_null(mapping_load(&o, &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.items[0], "/nonexistent/users.csv:1: cannot open lookup table file: "
                                       "No such file or directory");
    mapping_errors_release(&errs);
}

static void test_unresolved_users(void **state)
{
    (void)state;
    char got[1024];
    static const char csv[] = "ehr_id,upn\nC08,carl@contoso.org\nE1,\n";
    const char *user = "{lookup: {table: users, key: \"{EVN-5.1}\"}}";
    struct mapping_result *r = mapping_result_new();
    assert_non_null(r);
    struct tmsg t;
    enum mapping_unresolved act;

    /* filter: no row, counted; a resolved user gives the row */
    struct mapping *mp = load_lookup(LK_RULES("    on_unresolved_user: filter\n", "%s"), csv, got,
                                     sizeof got);
    assert_null(mp); /* "%s" is a literal template, not a lookup: refused below */
    char rules[512];
    snprintf(rules, sizeof rules, LK_RULES("    on_unresolved_user: filter\n", "%s"), user);
    mp = load_lookup(rules, csv, got, sizeof got);
    assert_non_null(mp);
    tmsg_parse(&t, LK_MSG("ZZ9"));
    assert_int_equal(mapping_eval(mp, t.m, r), MAPPING_FILTERED);
    assert_int_equal(mapping_result_row_count(r), 0);
    assert_int_equal(mapping_result_unresolved(r, &act), 1);
    assert_int_equal(act, MAPPING_UNRESOLVED_FILTER);
    assert_string_equal(mapping_result_reason(r), "no resolved user (EVN-5.1; rule 'r')");
    tmsg_release(&t);
    tmsg_parse(&t, LK_MSG("E1")); /* known id, empty UPN: unresolved too */
    assert_int_equal(mapping_eval(mp, t.m, r), MAPPING_FILTERED);
    tmsg_release(&t);
    tmsg_parse(&t, LK_MSG("C08"));
    assert_int_equal(mapping_eval(mp, t.m, r), MAPPING_ROWS);
    assert_int_equal(mapping_result_row_count(r), 1);
    assert_int_equal(mapping_result_unresolved(r, NULL), 0);
    assert_string_equal(mapping_result_value(r, 0, 18, NULL), "carl@contoso.org");
    assert_string_equal(mapping_result_value(r, 0, 20, NULL), "C08");
    tmsg_release(&t);
    mapping_free(mp);

    /* quarantine */
    snprintf(rules, sizeof rules, LK_RULES("    on_unresolved_user: quarantine\n", "%s"), user);
    mp = load_lookup(rules, csv, got, sizeof got);
    assert_non_null(mp);
    tmsg_parse(&t, LK_MSG("ZZ9"));
    assert_int_equal(mapping_eval(mp, t.m, r), MAPPING_QUARANTINE);
    assert_int_equal(mapping_result_unresolved(r, &act), 1);
    assert_int_equal(act, MAPPING_UNRESOLVED_QUARANTINE);
    assert_string_equal(mapping_result_reason(r),
                        "no resolved user for column 'user_login' (EVN-5.1; rule 'r')");
    tmsg_release(&t);
    mapping_free(mp);

    /* keep (the default): the row stays, on_missing_mandatory fills it */
    snprintf(rules, sizeof rules, LK_RULES("", "%s"), user);
    mp = load_lookup(rules, csv, got, sizeof got);
    assert_non_null(mp);
    tmsg_parse(&t, LK_MSG("ZZ9"));
    assert_int_equal(mapping_eval(mp, t.m, r), MAPPING_ROWS);
    assert_int_equal(mapping_result_unresolved(r, &act), 1);
    assert_int_equal(act, MAPPING_UNRESOLVED_KEEP);
    assert_string_equal(mapping_result_value(r, 0, 18, NULL), "Unknown");
    tmsg_release(&t);
    mapping_free(mp);

    /* for_each: only the rows without a user go */
    snprintf(rules, sizeof rules,
             "rules:\n  - name: z\n    match: ZAU\n    for_each: ZAU\n"
             "    on_missing_mandatory: default\n    on_unresolved_user: filter\n"
             "    columns:\n      user_login: {lookup: {table: users, key: \"{ZAU-7}\"}}\n"
             "      employee_id: \"{ZAU-7}\"\n");
    mp = load_lookup(rules, csv, got, sizeof got);
    assert_non_null(mp);
    tmsg_parse(&t, "MSH|^~\\&|A|B|C|D|20240101||ZAU^Z01|1|P|2.5\nZAU|1||||||X1\nZAU|2||||||C08\n"
                   "ZAU|3||||||X3\n");
    assert_int_equal(mapping_eval(mp, t.m, r), MAPPING_ROWS);
    assert_int_equal(mapping_result_row_count(r), 1);
    assert_int_equal(mapping_result_unresolved(r, NULL), 2);
    assert_string_equal(mapping_result_value(r, 0, 18, NULL), "carl@contoso.org");
    tmsg_release(&t);
    mapping_free(mp);

    /* bad policy; a policy without a user column */
    snprintf(rules, sizeof rules, LK_RULES("    on_unresolved_user: drop\n", "%s"), user);
    assert_null(load_lookup(rules, csv, got, sizeof got));
    assert_string_equal(got, "lk.yaml:5:25: on_unresolved_user must be filter, quarantine or keep\n");
    assert_null(load_lookup("rules:\n  - name: r\n    match: ADT\n    on_missing_mandatory: default\n"
                            "    on_unresolved_user: filter\n    columns: {employee_id: x}\n",
                            csv, got, sizeof got));
    assert_string_equal(got, "lk.yaml:5:25: on_unresolved_user needs a user_login column\n");
    mapping_result_free(r);
}

/* The default rule set loads from the project root and reloading gives an
 * independent set (SIGHUP swaps them). */
static void test_defaults_and_reload(void **state)
{
    (void)state;
    struct mapping_opts o = {.lookups = &g_users, .n_lookups = 1, .schema = MAPPING_SCHEMA_EPIC, .time_zone = "America/Chicago"};
    struct mapping *a = mapping_load(&o, NULL);
    struct mapping *b = mapping_load(&o, NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(mapping_rule_count(a), 3);
    mapping_free(a);
    char *v = map_col(b, "MSH|^~\\&|A|B|C|D|20240101||ADT^A03|1|P|2.5\nEVN|A03|20240101|||U12345\n", 1);
    assert_string_equal(v, "mandatory column 'PATIENT.PAT_FIRST_NAME' is empty (PID-5.2; rule 'adt')");
    free(v);
    /* no operator, or one the users table does not know: no row, and
     * never the sending application (MSH-3) in its place */
    v = map_col(b, "MSH|^~\\&|A|B|C|D|20240101||ADT^A03|1|P|2.5\nPID|1||M1||Doe^Jane\n", 1);
    assert_string_equal(v, "no resolved user (EVN-5.1; rule 'adt')");
    free(v);
    v = map_col(b, "MSH|^~\\&|A|B|C|D|20240101||ADT^A03|1|P|2.5\nEVN|A03|20240101|||NOBODY\n"
                   "PID|1||M1||Doe^Jane\n", 1);
    assert_string_equal(v, "no resolved user (EVN-5.1; rule 'adt')");
    free(v);
    /* tracking and bed-status triggers are not a person acting on a record */
    v = map_col(b, "MSH|^~\\&|A|B|C|D|20240101||ADT^A20|1|P|2.5\nEVN|A20|20240101|||U12345\n", 1);
    assert_string_equal(v, "no mapping rule selects ADT^A20");
    free(v);
    mapping_free(b);
    mapping_free(NULL);
    mapping_result_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_rows),
        cmocka_unit_test(test_check_file),
        cmocka_unit_test(test_appointment_facts),
        cmocka_unit_test(test_appointment_facts_when_quarantined),
        cmocka_unit_test(test_corpus_rows),
        cmocka_unit_test(test_corpus_all_no_crash),
        cmocka_unit_test(test_datetimes),
        cmocka_unit_test(test_date_format_and_epoch),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_conditions),
        cmocka_unit_test(test_match_and_order),
        cmocka_unit_test(test_for_each),
        cmocka_unit_test(test_missing_reject),
        cmocka_unit_test(test_missing_quarantine),
        cmocka_unit_test(test_missing_default),
        cmocka_unit_test(test_unmatched),
        cmocka_unit_test(test_bad_rules),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_control_bytes),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_defaults_and_reload),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_unresolved_users),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
