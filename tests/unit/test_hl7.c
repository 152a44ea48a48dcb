/* Unit tests for hl7/: the index, paths, escapes, charsets, batches, ACKs,
 * a sweep over the shared corpus and guard-page placement of every input.
 * Run from the project root (fixtures and ../shared/corpus are relative). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/limits.h"
#include "hl7/hl7.h"

#define CORPUS "../shared/corpus"
#define FIX "tests/fixtures/hl7/"

/* ---- helpers ----------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return NULL;
    }
    uint8_t *b = malloc((size_t)st.st_size + 1);
    assert_non_null(b);
    *len = fread(b, 1, (size_t)st.st_size, f);
    fclose(f);
    return b;
}

static const uint8_t *U(const char *s) { return (const uint8_t *)s; }

static void parse_ok(struct hl7_msg *m, const char *s)
{
    struct hl7_err e;
    int rc = hl7_msg_parse(m, U(s), strlen(s), NULL, &e);
    if (rc != 0)
        fail_msg("parse failed: %d %s", e.code, e.text);
}

/* Raw value at a path as a NUL-terminated string (static buffer). */
static const char *raw(const struct hl7_msg *m, const char *path)
{
    static char out[4096];
    struct hl7_path p;
    const char *why = NULL;
    size_t at = 0;
    if (hl7_path_parse(path, strlen(path), &p, &why, &at) != 0)
        fail_msg("bad path %s: %s at %zu", path, why, at);
    struct hl7_slice s;
    hl7_get(m, &p, -1, &s);
    assert_true(s.len < sizeof out);
    if (s.len)
        memcpy(out, s.p, s.len);
    out[s.len] = '\0';
    return out;
}

static const char *decoded(const struct hl7_msg *m, struct hl7_slice s)
{
    static char out[8192];
    struct buf b;
    buf_init(&b, sizeof out - 1);
    assert_int_equal(hl7_decode(m, s, &b), 0);
    if (b.len)
        memcpy(out, buf_data(&b), b.len);
    out[b.len] = '\0';
    buf_release(&b);
    return out;
}

static const char *dec(const struct hl7_msg *m, const char *path)
{
    struct hl7_path p;
    const char *why;
    size_t at;
    assert_int_equal(hl7_path_parse(path, strlen(path), &p, &why, &at), 0);
    struct hl7_slice s;
    hl7_get(m, &p, -1, &s);
    return decoded(m, s);
}

static int slice_is(struct hl7_slice s, const char *lit) { return hl7_slice_eq(s, lit); }

static const struct hl7_ack_ctx ctx = {"HL7BRIDGE", "CONTOSO", "ACK0001", 1772368800123LL};

static char *build_ack(const struct hl7_msg *m, enum hl7_ack_code c, const char *text,
                       const struct hl7_err *err)
{
    static char out[HL7_ACK_MAX_BYTES + 1];
    struct buf b;
    buf_init(&b, HL7_ACK_MAX_BYTES);
    assert_int_equal(hl7_ack_build(m, c, text, err, &ctx, &b), 0);
    memcpy(out, buf_data(&b), b.len);
    out[b.len] = '\0';
    buf_release(&b);
    return out;
}

static const char ADT_V251[] =
    "MSH|^~\\&|REG|HOSP|HL7BRIDGE|CONTOSO|20260301120000||ADT^A01^ADT_A01|MSG0002|P|2.5.1|||AL|NE\r"
    "EVN|A01|20260301120000\r"
    "PID|1||100^^^HOSP^MR~200^^^STATE^SS~~300^^^X^PI||DOE^JOHN^Q^^DR||19800101|M|||"
    "1 Main St^Apt 2&Floor 3^Springfield^IL^62701\r"
    "OBX|1|NM|HR^Heart rate||72|/min\r"
    "OBX|2|NM|RR^Resp rate||16|/min\r"
    "OBX|3|ST|NOTE||\"\"\r";

/* ---- index, fields, repetitions, components ---------------------------- */

static void test_fields(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    parse_ok(m, ADT_V251);
    assert_int_equal(hl7_seg_count(m), 6);
    assert_true(slice_is(hl7_seg_id(m, 2), "PID"));
    assert_string_equal(raw(m, "MSH-1"), "|");
    assert_string_equal(raw(m, "MSH-2"), "^~\\&");
    assert_string_equal(raw(m, "MSH-3"), "REG");
    assert_string_equal(raw(m, "MSH-9"), "ADT^A01^ADT_A01");
    assert_string_equal(raw(m, "MSH-9.2"), "A01");
    assert_string_equal(raw(m, "MSH-10"), "MSG0002");
    assert_string_equal(raw(m, "MSH-12"), "2.5.1");
    assert_string_equal(raw(m, "EVN-2"), "20260301120000");
    assert_string_equal(raw(m, "PID-5.1"), "DOE");
    assert_string_equal(raw(m, "PID-5.4"), "");
    assert_string_equal(raw(m, "PID-5.5"), "DR");
    assert_string_equal(raw(m, "PID-5.6"), "");
    assert_string_equal(raw(m, "PID-99"), "");
    assert_string_equal(raw(m, "ZZZ-1"), "");
    assert_string_equal(raw(m, "OBX[2]-3.1"), "RR");
    assert_string_equal(raw(m, "OBX[3]-5"), "\"\"");
    assert_string_equal(raw(m, "OBX[4]-5"), "");
    assert_string_equal(raw(m, "PID"), "PID|1||100^^^HOSP^MR~200^^^STATE^SS~~300^^^X^PI||DOE^JOHN^Q^^DR||"
                                         "19800101|M|||1 Main St^Apt 2&Floor 3^Springfield^IL^62701");

    const struct hl7_header *h = hl7_msg_header(m);
    assert_true(slice_is(h->send_app, "REG"));
    assert_true(slice_is(h->send_fac, "HOSP"));
    assert_true(slice_is(h->recv_app, "HL7BRIDGE"));
    assert_true(slice_is(h->msg_type, "ADT"));
    assert_true(slice_is(h->trigger, "A01"));
    assert_true(slice_is(h->structure, "ADT_A01"));
    assert_true(slice_is(h->control_id, "MSG0002"));
    assert_true(slice_is(h->processing_id, "P"));
    assert_true(slice_is(h->version_id, "2.5.1"));
    assert_true(slice_is(h->accept_ack, "AL"));
    assert_true(slice_is(h->app_ack, "NE"));
    assert_int_equal(h->charset.len, 0);

    assert_int_equal(hl7_seg_find(m, "OBX", 1), 3);
    assert_int_equal(hl7_seg_find(m, "OBX", 3), 5);
    assert_int_equal(hl7_seg_find(m, "OBX", 4), -1);
    assert_int_equal(hl7_seg_find(m, "NK1", 1), -1);
    assert_int_equal(hl7_seg_field_count(m, 0), 16);
    assert_int_equal(hl7_seg_field_count(m, 1), 2);
    assert_true(slice_is(hl7_seg_field(m, 0, 1), "|"));
    assert_true(slice_is(hl7_seg_field(m, 0, 16), "NE"));
    assert_int_equal(hl7_seg_field(m, 0, 17).len, 0);
    assert_true(slice_is(hl7_seg_text(m, 1), "EVN|A01|20260301120000"));

    struct hl7_err e;
    assert_int_equal(hl7_msg_validate(m, &e), 0);
    assert_int_equal(e.code, 0);
    hl7_msg_free(m);
}

static void test_repetitions_components(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    parse_ok(m, ADT_V251);
    assert_string_equal(raw(m, "PID-3"), "100^^^HOSP^MR"); /* rep 0 = first */
    assert_true(slice_is(hl7_seg_field(m, 2, 3), "100^^^HOSP^MR~200^^^STATE^SS~~300^^^X^PI"));
    assert_string_equal(raw(m, "PID-3.1"), "100");
    assert_string_equal(raw(m, "PID-3[1].1"), "100");
    assert_string_equal(raw(m, "PID-3[2].1"), "200");
    assert_string_equal(raw(m, "PID-3[2].5"), "SS");
    assert_string_equal(raw(m, "PID-3[3]"), "");
    assert_string_equal(raw(m, "PID-3[4].4"), "X");
    assert_string_equal(raw(m, "PID-3[5]"), "");
    assert_string_equal(raw(m, "PID-3[*].1"), "100");
    assert_string_equal(raw(m, "PID-11.2"), "Apt 2&Floor 3");
    assert_string_equal(raw(m, "PID-11.2.1"), "Apt 2");
    assert_string_equal(raw(m, "PID-11.2.2"), "Floor 3");
    assert_string_equal(raw(m, "PID-11.2.3"), "");
    assert_string_equal(raw(m, "PID-11.3.1"), "Springfield");

    struct hl7_path p;
    const char *why;
    size_t at;
    assert_int_equal(hl7_path_parse("PID-3[*].1", 10, &p, &why, &at), 0);
    assert_int_equal(p.rep, HL7_REP_ALL);
    assert_int_equal(hl7_rep_count(m, &p, -1), 4);
    const char *want[] = {"100", "200", "", "300"};
    for (unsigned r = 1; r <= 4; r++) {
        struct hl7_slice s;
        int got = hl7_get_rep(m, &p, -1, r, &s);
        assert_int_equal(got, want[r - 1][0] != 0);
        assert_true(slice_is(s, want[r - 1]));
    }
    /* MSH-2 holds the repetition character but is never split. */
    assert_int_equal(hl7_path_parse("MSH-2", 5, &p, &why, &at), 0);
    assert_int_equal(hl7_rep_count(m, &p, -1), 1);
    assert_int_equal(hl7_path_parse("PID-4", 5, &p, &why, &at), 0);
    assert_int_equal(hl7_rep_count(m, &p, -1), 0);

    /* A forced segment index (rules iterating OBX) must still match the id. */
    assert_int_equal(hl7_path_parse("OBX-3.1", 7, &p, &why, &at), 0);
    struct hl7_slice s;
    assert_int_equal(hl7_get(m, &p, 4, &s), 1);
    assert_true(slice_is(s, "RR"));
    assert_int_equal(hl7_get(m, &p, 2, &s), 0);
    assert_int_equal(hl7_get(m, &p, 99, &s), 0);

    /* Slice helpers. */
    struct hl7_slice v = {U("a^b^^d"), 6};
    assert_int_equal(hl7_slice_count(v, '^'), 4);
    assert_true(slice_is(hl7_slice_piece(v, '^', 2), "b"));
    assert_int_equal(hl7_slice_piece(v, '^', 3).len, 0);
    assert_true(slice_is(hl7_slice_piece(v, '^', 4), "d"));
    assert_int_equal(hl7_slice_piece(v, '^', 5).len, 0);
    assert_int_equal(hl7_slice_piece(v, '^', 0).len, 0);
    struct hl7_slice empty = {U(""), 0};
    assert_int_equal(hl7_slice_count(empty, '^'), 1);
    struct hl7_slice null = {U("\"\""), 2};
    assert_true(hl7_slice_is_null(null));
    assert_false(hl7_slice_is_null(v));
    hl7_msg_free(m);
}

static void test_custom_delimiters(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    parse_ok(m, "MSH#$*@!#APP#FAC#REC#RFAC#20260301120000##ADT$A08#CD0001#P#2.4\r"
                "PID#1##555$$$HOSP$MR*666$$$X$PI##ROE$JANE!ANN$B#tag@F@x@S@y@T@z@R@w@E@\r");
    const struct hl7_delims *d = hl7_msg_delims(m);
    assert_int_equal(d->field, '#');
    assert_int_equal(d->comp, '$');
    assert_int_equal(d->rep, '*');
    assert_int_equal(d->esc, '@');
    assert_int_equal(d->sub, '!');
    assert_int_equal(d->trunc, 0);
    assert_string_equal(raw(m, "MSH-1"), "#");
    assert_string_equal(raw(m, "MSH-2"), "$*@!");
    assert_string_equal(raw(m, "MSH-9.2"), "A08");
    assert_string_equal(raw(m, "PID-3[2].1"), "666");
    assert_string_equal(raw(m, "PID-5.2.2"), "ANN");
    assert_string_equal(dec(m, "PID-6"), "tag#x$y!z*w@");
    struct hl7_err e;
    assert_int_equal(hl7_msg_validate(m, &e), 0);

    /* v2.7 truncation character as a fifth encoding character. */
    parse_ok(m, "MSH|^~\\&#|A|B|C|D|20260301120000||ADT^A01^ADT_A01|T1|P|2.7\rNTE|1||cut\\P\\here#\r");
    assert_int_equal(hl7_msg_delims(m)->trunc, '#');
    assert_string_equal(raw(m, "MSH-2"), "^~\\&#");
    assert_string_equal(dec(m, "NTE-3"), "cut#here#");
    assert_int_equal(hl7_msg_validate(m, &e), 0);
    hl7_msg_free(m);
}

/* ---- escapes and charsets ---------------------------------------------- */

static void test_escapes(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    parse_ok(m, "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|E1|P|2.5\r"
                "NTE|1|\\F\\|\\S\\|\\T\\|\\R\\|\\E\\|\\X41\\|\\X0D0a\\|a\\.br\\b|\\H\\bold\\N\\|"
                "x\\.sp\\y\\.sp2\\z|\\.in+4\\\\.ti-2\\\\.sk3\\\\.ce\\\\.fi\\\\.nf\\t|\\Zlocal\\k|"
                "lone\\x|end\\|\\a\\|\\X4\\|\\XZZ\\|\"\"|\\P\\|\\C2842\\c|\\Xc3a9\\\r");
    const char *want[] = {
        "|", "^", "&", "~", "\\", "A", "\r\n", "a\nb", "bold", "xyz", "t", "k", "lone\\x",
        "end\\", "\\a\\", "\\X4\\", "\\XZZ\\", "", "\\P\\", "c", "\xc3\xa9",
    };
    for (unsigned i = 0; i < sizeof want / sizeof want[0]; i++) {
        char path[16];
        snprintf(path, sizeof path, "NTE-%u", i + 2);
        assert_string_equal(dec(m, path), want[i]);
    }
    /* The strict check points at the first lone escape character. */
    struct hl7_err e;
    assert_int_equal(hl7_msg_check_escapes(m, &e), -1);
    assert_int_equal(e.code, HL7_E_DATA_TYPE);
    assert_string_equal(e.seg, "NTE");
    assert_int_equal(e.field, 14);

    /* Escaping is the inverse for the structural characters. */
    struct buf b;
    buf_init(&b, 256);
    const char *text = "a|b^c&d~e\\f\rg\nh";
    assert_int_equal(hl7_escape(hl7_msg_delims(m), U(text), strlen(text), &b), 0);
    assert_int_equal(b.len, strlen("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\.br\\h"));
    assert_memory_equal(buf_data(&b), "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\.br\\h", b.len);
    struct hl7_slice s = {buf_data(&b), b.len};
    assert_string_equal(decoded(m, s), text);
    buf_release(&b);

    /* A full output buffer is the only failure. */
    buf_init(&b, 3);
    struct hl7_slice big = {U("abcdef"), 6};
    assert_int_equal(hl7_decode(m, big, &b), -1);
    buf_release(&b);
    hl7_msg_free(m);
}

static void test_charsets(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    struct hl7_err e;
    size_t n;
    uint8_t *latin = slurp(FIX "latin1-v23.hl7", &n);
    assert_non_null(latin);
    assert_int_equal(hl7_msg_parse(m, latin, n, NULL, &e), 0);
    assert_int_equal(hl7_msg_charset(m), HL7_CS_LATIN1);
    assert_string_equal(dec(m, "PID-5.1"), "J\xc3\xa9r\xc3\xb4me");
    assert_string_equal(dec(m, "PID-5.2"), "Fran\xc3\xa7ois");
    assert_int_equal(hl7_msg_validate(m, &e), 0);

    /* The listener override wins over MSH-18. */
    struct hl7_parse_opts o = {1, HL7_CS_UTF8};
    assert_int_equal(hl7_msg_parse(m, latin, n, &o, &e), 0);
    assert_int_equal(hl7_msg_charset(m), HL7_CS_UTF8);
    assert_string_equal(dec(m, "PID-5.1"), "J\xef\xbf\xbdr\xef\xbf\xbdme");
    free(latin);

    const char *utf8 = "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|U1|P|2.5||||||UNICODE UTF-8\r"
                       "PID|1||1||M\xc3\xbcller^\xe2\x82\xac\xf0\x9f\x98\x80|bad\xff\xc3(\xe0\x80\xaf|"
                       "\\XC3BC\\\r";
    parse_ok(m, utf8);
    assert_int_equal(hl7_msg_charset(m), HL7_CS_UTF8);
    assert_string_equal(dec(m, "PID-5"), "M\xc3\xbcller^\xe2\x82\xac\xf0\x9f\x98\x80");
    assert_string_equal(dec(m, "PID-6"), "bad\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    assert_string_equal(dec(m, "PID-7"), "\xc3\xbc");

    /* Override to Latin-1 on a UTF-8 message. */
    o.charset = HL7_CS_LATIN1;
    assert_int_equal(hl7_msg_parse(m, U(utf8), strlen(utf8), &o, &e), 0);
    assert_string_equal(dec(m, "PID-5.1"), "M\xc3\x83\xc2\xbcller");

    /* 8859/15 differs from 8859/1 in eight places, the euro among them. */
    parse_ok(m, "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|L1|P|2.5||||||8859/15\rPID|1|\xa4\xbd\xe9\r");
    assert_int_equal(hl7_msg_charset(m), HL7_CS_LATIN15);
    assert_string_equal(dec(m, "PID-2"), "\xe2\x82\xac\xc5\x93\xc3\xa9");

    /* Undeclared: valid UTF-8 passes, other high bytes read as Latin-1. */
    parse_ok(m, "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|A1|P|2.5\rPID|1|M\xc3\xbcller|M\xfcller\r");
    assert_int_equal(hl7_msg_charset(m), HL7_CS_ASCII);
    assert_string_equal(dec(m, "PID-2"), "M\xc3\xbcller");
    assert_string_equal(dec(m, "PID-3"), "M\xc3\xbcller");

    /* A named but unconverted set passes bytes through; a made-up name is a
     * table error unless the listener overrides it. */
    parse_ok(m, "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|A1|P|2.5||||||ISO IR87\rPID|1|\x1b$B\r");
    assert_int_equal(hl7_msg_charset(m), HL7_CS_UNSUPPORTED);
    assert_string_equal(dec(m, "PID-2"), "\x1b$B");
    assert_int_equal(hl7_msg_validate(m, &e), 0);
    const char *wrong = "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|A1|P|2.5||||||wrong\r";
    parse_ok(m, wrong);
    assert_int_equal(hl7_msg_validate(m, &e), -1);
    assert_int_equal(e.code, HL7_E_TABLE_VALUE);
    assert_int_equal(e.field, 18);
    assert_int_equal(hl7_msg_parse(m, U(wrong), strlen(wrong), &o, &e), 0);
    assert_int_equal(hl7_msg_validate(m, &e), 0);
    hl7_msg_free(m);
}

/* ---- separators, BOM, reuse ------------------------------------------- */

static void test_separators_and_bom(void **state)
{
    (void)state;
    const char *variants[] = {
        "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|S1|P|2.4\rEVN|A01\rPID|1||9^^^H^MR||X^Y\r",
        "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|S1|P|2.4\nEVN|A01\nPID|1||9^^^H^MR||X^Y\n",
        "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|S1|P|2.4\r\nEVN|A01\r\nPID|1||9^^^H^MR||X^Y\r\n",
        "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|S1|P|2.4\r\nEVN|A01\nPID|1||9^^^H^MR||X^Y",
        "\xef\xbb\xbfMSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|S1|P|2.4\rEVN|A01\rPID|1||9^^^H^MR||X^Y\r",
        "\r\nMSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|S1|P|2.4\r\r\rEVN|A01\r  \r\n\t\rPID|1||9^^^H^MR||X^Y\r\r\n",
    };
    struct hl7_msg *m = hl7_msg_new();
    for (unsigned i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        struct hl7_err e;
        assert_int_equal(hl7_msg_parse(m, U(variants[i]), strlen(variants[i]), NULL, &e), 0);
        assert_int_equal(hl7_seg_count(m), 3);
        assert_string_equal(raw(m, "MSH-12"), "2.4");
        assert_string_equal(raw(m, "EVN-1"), "A01");
        assert_string_equal(raw(m, "PID-5.2"), "Y");
        assert_true(slice_is(hl7_seg_text(m, 2), "PID|1||9^^^H^MR||X^Y"));
        assert_int_equal(hl7_msg_bytes(m).p[0], 'M');
        assert_int_equal(hl7_msg_validate(m, &e), 0);
    }
    /* Reuse: a small message after a large one leaves nothing stale. */
    parse_ok(m, ADT_V251);
    parse_ok(m, "MSH|^~\\&|A\r");
    assert_int_equal(hl7_seg_count(m), 1);
    assert_int_equal(hl7_msg_header(m)->control_id.len, 0);
    assert_string_equal(raw(m, "PID-3"), "");
    hl7_msg_free(m);
    hl7_msg_free(NULL);
}

/* ---- malformed input --------------------------------------------------- */

struct bad_case {
    const char *text;
    int parse_code;    /* 0: parse succeeds */
    int validate_code; /* checked when parse succeeds */
    unsigned field;
};

static void test_malformed_inline(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {"", 100, 0, 0},
        {"MS", 100, 0, 0},
        {"MSH", 101, 0, 0},
        {"MSH|", 101, 0, 2},
        {"MSH|^~", 101, 0, 2},
        {"MSH||A|B", 101, 0, 2},
        {"MSH|^~\\|A", 102, 0, 2},
        {"MSH|^^\\&|A", 102, 0, 2},
        {"MSH|^~\\&|||||||\r", 0, 101, 9},
        {"MSH|^~\\&|||||||ADT^A01|1|P\r", 0, 101, 12},
        {"MSH|^~\\&|||||||ADT^A01|1|P|3.0\r", 0, 203, 12},
        {"MSH|^~\\&|||||||ADT^A01|1|P|1.9\r", 0, 203, 12},
        {"MSH|^~\\&|||||||ADT^A01|1|P|2.0\r", 0, 203, 12},
        {"MSH|^~\\&|||||||ADT^A01|1|P|2.\r", 0, 203, 12},
        {"MSH|^~\\&|||||||ADT^A01|1|P|garbage\r", 0, 203, 12},
        {"MSH|^~\\&|||||||ADT^A01|1|P|2.5.1.1\r", 0, 203, 12},
        {"MSH|^~\\&|A|B|C|D|11111||ADT^A01|1|P|2.5\r", 0, 102, 7},
        {"MSH|^~\\&|A|B|C|D|20261301||ADT^A01|1|P|2.5\r", 0, 102, 7},
        {"MSH|^~\\&|A|B|C|D|20260101^000||ADT^A01|1|P|2.5\r", 0, 102, 7},
        {"MSH|^~\\&|A|B|C|D|2026010112.5||ADT^A01|1|P|2.5\r", 0, 102, 7},
        {"MSHX^~\\&|", 100, 0, 0},
        {"MSH ^~\\&|", 102, 0, 1},
        {"XYZ|1\r", 100, 0, 0},
        {"MSH|^~\\&|A\revn|1\r", 100, 0, 0},
        {"MSH|^~\\&|A\rPID1\r", 100, 0, 0},
        {"MSH|^~\\&|A\rPI\r", 100, 0, 0},
        {"MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\r", 100, 0, 0},
        {"MSH|^~\\&|A\rBTS|1\r", 100, 0, 0},
    };
    struct hl7_msg *m = hl7_msg_new();
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct bad_case *c = &cases[i];
        struct hl7_err e;
        int rc = hl7_msg_parse(m, U(c->text), strlen(c->text), NULL, &e);
        if (c->parse_code) {
            if (rc != -1 || e.code != c->parse_code)
                fail_msg("case %u: parse rc %d code %d, want %d", i, rc, e.code, c->parse_code);
            if (c->field)
                assert_int_equal(e.field, c->field);
            assert_true(e.text[0] != '\0');
            continue;
        }
        assert_int_equal(rc, 0);
        rc = hl7_msg_validate(m, &e);
        if (rc != -1 || e.code != c->validate_code || e.field != c->field)
            fail_msg("case %u: validate rc %d code %d field %u", i, rc, e.code, e.field);
        assert_string_equal(e.seg, "MSH");
        assert_int_equal(e.seg_seq, 1);
    }
    /* NULL input, and a failed parse validates as failed. */
    struct hl7_err e;
    assert_int_equal(hl7_msg_parse(m, NULL, 10, NULL, &e), -1);
    assert_int_equal(e.code, 100);
    assert_int_equal(hl7_msg_validate(m, &e), -1);

    /* After a failure past MSH the header can still be echoed. */
    const char *two = "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|KEEP1|P|2.5\rPID|1\rMSH|^~\\&|B\r";
    assert_int_equal(hl7_msg_parse(m, U(two), strlen(two), NULL, &e), -1);
    assert_int_equal(e.code, 100);
    assert_string_equal(e.seg, "MSH");
    assert_int_equal(e.seg_seq, 2);
    assert_int_equal(e.offset, strlen("MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|KEEP1|P|2.5\rPID|1\r"));
    assert_true(slice_is(hl7_msg_header(m)->control_id, "KEEP1"));

    /* Too many fields in one segment is refused, not indexed partially. */
    size_t cap = 64 + 2 * (HL7_MAX_FIELDS_PER_SEGMENT + 2);
    char *wide = malloc(cap);
    assert_non_null(wide);
    size_t len = (size_t)snprintf(wide, cap, "MSH|^~\\&|A\rNTE");
    for (unsigned i = 0; i <= HL7_MAX_FIELDS_PER_SEGMENT; i++) {
        wide[len++] = '|';
        wide[len++] = 'x';
    }
    assert_int_equal(hl7_msg_parse(m, U(wide), len, NULL, &e), -1);
    assert_int_equal(e.code, HL7_E_INTERNAL);
    assert_int_equal(hl7_msg_parse(m, U(wide), len - 2, NULL, &e), 0);
    assert_int_equal(hl7_seg_field_count(m, 1), HL7_MAX_FIELDS_PER_SEGMENT);
    free(wide);
    hl7_msg_free(m);
}

static void test_validate_rules(void **state)
{
    (void)state;
    static const char *ok[] = {
        "MSH|^~\\&|||||||ADT^A01|1|P|2.1", "MSH|^~\\&|||||||ADT^A01|1|P|2.2",
        "MSH|^~\\&|||||||ADT^A01|1|P|2.3", "MSH|^~\\&|||||||ADT^A01|1|P|2.3.1",
        "MSH|^~\\&|||||||ADT^A01|1|P|2.4", "MSH|^~\\&|||||||ADT^A01|1|P|2.5",
        "MSH|^~\\&|||||||ADT^A01|1|P|2.5.1", "MSH|^~\\&|||||||ADT^A01|1|P|2.6",
        "MSH|^~\\&|||||||ADT^A01|1|P|2.7.1", "MSH|^~\\&|||||||ADT^A01|1|P|2.8",
        "MSH|^~\\&|||||||ADT^A01|1|P|2.8.2", "MSH|^~\\&|||||||ADT^A01|1|P|2.2^x^x",
        /* v2.1 had no trigger in MSH-9; plain ACK is common everywhere */
        "MSH|^~\\&|||||||ADT|1|P|2.1", "MSH|^~\\&|||||||ACK|1|P|2.6.1",
        "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5",
        "MSH|^~\\&|A|B|C|D|20260301120000.1234-0500||ADT^A01|1|P|2.5",
        "MSH|^~\\&|A|B|C|D|20110613122406637||ADT^A01|1|P|2.3",
        "MSH|^~\\&|A|B|C|D|20260301120000^S||ADT^A01|1|P|2.4",
        "MSH|^~\\&|A|B|C|D|202603011200+0100||ADT^A01|1|P|2.5||||||8859",
    };
    struct hl7_msg *m = hl7_msg_new();
    for (unsigned i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct hl7_err e;
        parse_ok(m, ok[i]);
        if (hl7_msg_validate(m, &e) != 0)
            fail_msg("case %u: %d %s", i, e.code, e.text);
    }
    struct hl7_err e;
    /* MSH-9 without a trigger, at every version (older feeds send "ORU"). */
    static const char *const no_trigger[] = {"2.2", "2.3", "2.4", "2.5", "2.8"};
    for (unsigned i = 0; i < 5; i++) {
        char msh[96];
        snprintf(msh, sizeof msh, "MSH|^~\\&|||||||ORU|1|P|%s", no_trigger[i]);
        parse_ok(m, msh);
        if (hl7_msg_validate(m, &e) != 0)
            fail_msg("no trigger at %s: %d %s", no_trigger[i], e.code, e.text);
        assert_int_equal(hl7_msg_header(m)->trigger.len, 0);
    }
    parse_ok(m, "MSH|^~\\&|||||||^A01|1|P|2.5");
    assert_int_equal(hl7_msg_validate(m, &e), -1);
    assert_int_equal(e.code, 101);
    assert_int_equal(e.field, 9);
    assert_int_equal(e.comp, 1);
    assert_int_equal(e.offset, strlen("MSH|^~\\&|||||||"));
    /* A NUL anywhere: 102 naming segment, sequence and field. */
    static const char nul[] = "MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1||M1\rNTE|1\rNTE|1|x\0y\r";
    assert_int_equal(hl7_msg_parse(m, U(nul), sizeof nul - 1, NULL, &e), 0);
    assert_int_equal(hl7_msg_validate(m, &e), -1);
    assert_int_equal(e.code, 102);
    assert_string_equal(e.seg, "NTE");
    assert_int_equal(e.seg_seq, 2);
    assert_int_equal(e.field, 2);
    /* Letters and digits as component, repetition, escape or subcomponent
     * separator are legal. */
    parse_ok(m, "MSH|QRE&|A|B|C|D|20260301120000||ADTQA01|L1|P|2.5\rPID|1||M1RM2\r");
    assert_int_equal(hl7_msg_validate(m, &e), 0);
    assert_true(slice_is(hl7_msg_header(m)->msg_type, "ADT"));
    assert_true(slice_is(hl7_msg_header(m)->trigger, "A01"));
    assert_int_equal(hl7_msg_delims(m)->rep, 'R');
    hl7_msg_free(m);
}

/* Every file in a malformed/ folder must be refused somewhere with a
 * meaningful table 0357 code. */
struct walk {
    char **paths;
    size_t n, cap;
};

static void walk_dir(struct walk *w, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
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
        size_t l = strlen(path);
        if (l < 4 || memcmp(path + l - 4, ".hl7", 4) != 0)
            continue;
        if (w->n == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 256;
            w->paths = realloc(w->paths, w->cap * sizeof *w->paths);
            assert_non_null(w->paths);
        }
        w->paths[w->n] = malloc(l + 1);
        assert_non_null(w->paths[w->n]);
        memcpy(w->paths[w->n], path, l + 1);
        w->n++;
    }
    closedir(d);
}

static void walk_free(struct walk *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->paths[i]);
    free(w->paths);
}

static int corpus_present(void)
{
    struct stat st;
    return stat(CORPUS, &st) == 0 && S_ISDIR(st.st_mode);
}

static int meaningful(int code)
{
    return code == 100 || code == 101 || code == 102 || code == 103 || code == 203 || code == 207;
}

/* Returns the code with which the bytes are refused, or 0 when accepted.
 * Batches and bare streams of several messages are split first. */
static int refusal(struct hl7_msg *m, const uint8_t *p, size_t n, int strict, struct buf *ack)
{
    struct hl7_err e;
    int multi = 0;
    const struct hl7_msg *about = NULL; /* the index holds these bytes */
    if (!hl7_is_batch(p, n)) {
        int rc = hl7_msg_parse(m, p, n, NULL, &e);
        about = m;
        if (rc == 0) {
            if (hl7_msg_validate(m, &e) != 0 || (strict && hl7_msg_check_escapes(m, &e) != 0))
                goto refused;
            buf_reset(ack);
            assert_int_equal(hl7_ack_build(m, HL7_ACK_AA, NULL, NULL, &ctx, ack), 0);
            return 0;
        }
        if (!(e.code == 100 && strcmp(e.seg, "MSH") == 0 && e.seg_seq == 2))
            goto refused;
        multi = 1; /* several messages back to back: split them */
        about = NULL;
    }
    struct hl7_batch_iter it;
    if (hl7_batch_begin(&it, p, n, &e) != 0)
        goto refused;
    struct hl7_slice s;
    int r, k = 0;
    while ((r = hl7_batch_next(&it, &s, &e)) == 1) {
        k++;
        about = m;
        int bad = hl7_msg_parse(m, s.p, s.len, NULL, &e) != 0 || hl7_msg_validate(m, &e) != 0 ||
                  (strict && hl7_msg_check_escapes(m, &e) != 0);
        buf_reset(ack);
        assert_int_equal(hl7_ack_build(m, bad ? HL7_ACK_AR : HL7_ACK_AA, NULL, bad ? &e : NULL,
                                       &ctx, ack), 0);
        if (bad)
            goto refused;
    }
    if (r < 0) {
        buf_reset(ack);
        assert_int_equal(hl7_ack_build_batch(&it, HL7_ACK_AE, NULL, &e, &ctx, ack), 0);
        return e.code ? e.code : -1;
    }
    assert_true(k >= (multi ? 2 : 1));
    buf_reset(ack);
    assert_int_equal(hl7_ack_build_batch(&it, HL7_ACK_AA, NULL, NULL, &ctx, ack), 0);
    return 0;
refused:
    buf_reset(ack);
    assert_int_equal(hl7_ack_build(about, HL7_ACK_AR, "rejected", &e, &ctx, ack), 0);
    return e.code ? e.code : -1;
}

static void test_malformed_corpus(void **state)
{
    (void)state;
    if (!corpus_present()) {
        print_message("../shared/corpus absent: skipping\n");
        skip();
    }
    /* Accepted on purpose: a Z-segment glued onto EVN is syntactically a
     * valid message; segment structure per trigger is the mapping layer's
     * business, not the parser's. */
    static const char *const accepted[] = {
        "hapi-hl7v2/malformed/adt-a01-v26-zza-glued-crlf.hl7",
        /* trailing empty fields are legal HL7; only a linter flags them */
        "rethinkhealth-hl7v2/malformed/trailing-empty-fields.hl7",
    };
    struct walk w = {0};
    walk_dir(&w, CORPUS);
    struct hl7_msg *m = hl7_msg_new();
    struct buf ack;
    buf_init(&ack, HL7_ACK_MAX_BYTES);
    size_t checked = 0;
    for (size_t i = 0; i < w.n; i++) {
        if (!strstr(w.paths[i], "/malformed/"))
            continue;
        size_t n;
        uint8_t *b = slurp(w.paths[i], &n);
        assert_non_null(b);
        int code = refusal(m, b, n, 1, &ack);
        int exempt = 0;
        for (size_t k = 0; k < sizeof accepted / sizeof accepted[0]; k++)
            exempt |= strstr(w.paths[i], accepted[k]) != NULL;
        if (exempt) {
            if (code != 0)
                fail_msg("%s: documented as accepted but refused with %d", w.paths[i], code);
        } else if (!meaningful(code)) {
            fail_msg("%s: not refused with a table 0357 code (got %d)", w.paths[i], code);
        }
        /* Whatever happened, an ACK came out and it starts with MSH. */
        assert_true(ack.len > 20);
        assert_memory_equal(buf_data(&ack), "MSH", 3);
        free(b);
        checked++;
    }
    assert_true(checked >= 60);
    buf_release(&ack);
    hl7_msg_free(m);
    walk_free(&w);
}

static void test_corpus_sweep(void **state)
{
    (void)state;
    if (!corpus_present()) {
        print_message("../shared/corpus absent: skipping\n");
        skip();
    }
    /* Every well-formed sample is accepted, including those without MSH-10
     * and with an unknown 2.x version (see hl7_msg_validate).  The table
     * is for samples hl7bridge refuses on purpose: none today. */
    static const struct {
        const char *file;
        int code;
    } refused[] = {
        {"(none)", 0},
    };
    struct walk w = {0};
    walk_dir(&w, CORPUS);
    struct hl7_msg *m = hl7_msg_new();
    struct buf ack;
    buf_init(&ack, HL7_ACK_MAX_BYTES);
    size_t checked = 0;
    for (size_t i = 0; i < w.n; i++) {
        if (strstr(w.paths[i], "/malformed/"))
            continue;
        size_t n;
        uint8_t *b = slurp(w.paths[i], &n);
        assert_non_null(b);
        int code = refusal(m, b, n, 0, &ack);
        int want = 0;
        for (size_t k = 0; k < sizeof refused / sizeof refused[0]; k++)
            if (strstr(w.paths[i], refused[k].file))
                want = refused[k].code;
        if (code != want)
            fail_msg("%s: got %d, want %d", w.paths[i], code, want);
        assert_true(ack.len > 20);
        free(b);
        checked++;
    }
    assert_true(checked >= 250);
    buf_release(&ack);
    hl7_msg_free(m);
    walk_free(&w);
}

/* ---- guard page: no read outside [p, p+len) ---------------------------- */

struct guard {
    uint8_t *base;
    size_t maplen, cap;
};

static void guard_init(struct guard *g, size_t cap)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    g->cap = (cap + pg - 1) / pg * pg;
    g->maplen = g->cap + pg;
    g->base = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g->base != MAP_FAILED);
    assert_int_equal(mprotect(g->base + g->cap, pg, PROT_NONE), 0);
}

static void guard_release(struct guard *g) { munmap(g->base, g->maplen); }

/* Copies the input to end exactly at the protected page. */
static const uint8_t *guard_place(struct guard *g, const uint8_t *p, size_t n)
{
    assert_true(n <= g->cap);
    uint8_t *dst = g->base + g->cap - n;
    if (n)
        memcpy(dst, p, n);
    return dst;
}

/* Touches everything reachable: each field, each repetition, component and
 * subcomponent, decoded; paths; the strict check; batches; an ACK. */
static void exercise(struct hl7_msg *m, const uint8_t *p, size_t n, struct buf *scratch)
{
    struct hl7_err e;
    if (hl7_is_batch(p, n) || n > 0) {
        struct hl7_batch_iter it;
        if (hl7_batch_begin(&it, p, n, &e) == 0) {
            struct hl7_slice s;
            while (hl7_batch_next(&it, &s, &e) == 1) {
                assert_true(s.p >= p && s.p + s.len <= p + n);
            }
            buf_reset(scratch);
            assert_int_equal(hl7_ack_build_batch(&it, HL7_ACK_AA, "ok", NULL, &ctx, scratch), 0);
        }
    }
    int parsed = hl7_msg_parse(m, p, n, NULL, &e) == 0;
    if (parsed) {
        int vr = hl7_msg_validate(m, &e);
        int x = hl7_msg_check_escapes(m, &e);
        assert_true(vr == 0 || vr == -1);
        assert_true(x == 0 || x == -1);
        const struct hl7_delims *d = hl7_msg_delims(m);
        for (size_t s = 0; s < hl7_seg_count(m); s++) {
            unsigned nf = hl7_seg_field_count(m, s);
            for (unsigned f = 1; f <= nf + 1; f++) {
                struct hl7_slice v = hl7_seg_field(m, s, f);
                buf_reset(scratch);
                assert_int_equal(hl7_decode(m, v, scratch), 0);
                unsigned nr = hl7_slice_count(v, d->rep);
                for (unsigned r = 1; r <= nr && r < 64; r++) {
                    struct hl7_slice rv = hl7_slice_piece(v, d->rep, r);
                    unsigned nc = hl7_slice_count(rv, d->comp);
                    for (unsigned c = 1; c <= nc && c < 64; c++) {
                        struct hl7_slice cv = hl7_slice_piece(rv, d->comp, c);
                        unsigned ns = hl7_slice_count(cv, d->sub);
                        for (unsigned k = 1; k <= ns && k < 64; k++) {
                            buf_reset(scratch);
                            assert_int_equal(hl7_decode(m, hl7_slice_piece(cv, d->sub, k), scratch), 0);
                        }
                    }
                }
            }
        }
    }
    buf_reset(scratch);
    assert_int_equal(hl7_ack_build(m, HL7_ACK_AE, "x", &e, &ctx, scratch), 0);
}

static void test_guard_page_fixtures(void **state)
{
    (void)state;
    static const char *const files[] = {FIX "adt-a01-v251.hl7", FIX "batch-fhs-bhs.hl7",
                                        FIX "latin1-v23.hl7"};
    struct hl7_msg *m = hl7_msg_new();
    struct buf scratch;
    buf_init(&scratch, 1u << 20);
    struct guard g;
    guard_init(&g, 4096);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t n;
        uint8_t *b = slurp(files[i], &n);
        assert_non_null(b);
        /* Every prefix, so truncation at any byte is covered. */
        for (size_t cut = 0; cut <= n; cut++)
            exercise(m, guard_place(&g, b, cut), cut, &scratch);
        free(b);
    }
    /* Inputs ending on an escape character, inside a sequence, in MSH-2. */
    static const char *const tails[] = {
        "MSH|^~\\&|A|B\rNTE|1|x\\", "MSH|^~\\&|A|B\rNTE|1|\\X4", "MSH|^~\\&|A|B\rNTE|1|\\.b",
        "MSH|^~\\&|A|B\rNTE|1|\xc3", "MSH|^~\\&|A|B\rNTE|1|\xf0\x9f\x98", "MSH|^~\\&",
        "\xef\xbb", "FHS|^~\\&|A\rBHS|^~\\&\rMSH|^~\\&|\rBTS|", "BHS|", "MSH|^~\\&|A\rP",
    };
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++)
        exercise(m, guard_place(&g, U(tails[i]), strlen(tails[i])), strlen(tails[i]), &scratch);
    guard_release(&g);
    buf_release(&scratch);
    hl7_msg_free(m);
}

static void test_guard_page_corpus(void **state)
{
    (void)state;
    if (!corpus_present()) {
        print_message("../shared/corpus absent: skipping\n");
        skip();
    }
    struct walk w = {0};
    walk_dir(&w, CORPUS);
    struct hl7_msg *m = hl7_msg_new();
    struct buf scratch;
    buf_init(&scratch, 1u << 22);
    for (size_t i = 0; i < w.n; i++) {
        size_t n;
        uint8_t *b = slurp(w.paths[i], &n);
        assert_non_null(b);
        struct guard g;
        guard_init(&g, n ? n : 1);
        exercise(m, guard_place(&g, b, n), n, &scratch);
        guard_release(&g);
        free(b);
    }
    assert_true(w.n > 300);
    buf_release(&scratch);
    hl7_msg_free(m);
    walk_free(&w);
}

/* ---- paths ------------------------------------------------------------- */

static void test_path_valid(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *seg;
        unsigned nth, field;
        int rep;
        unsigned comp, sub;
    } cases[] = {
        {"PID-3[2].1", "PID", 0, 3, 2, 1, 0}, {"OBX[3]-5.1", "OBX", 3, 5, 0, 1, 0},
        {"MSH-9.2", "MSH", 0, 9, 0, 2, 0},    {"PID-3[*].1", "PID", 0, 3, HL7_REP_ALL, 1, 0},
        {"PID", "PID", 0, 0, 0, 0, 0},        {"ZAU[12]", "ZAU", 12, 0, 0, 0, 0},
        {"PID-11.2.1", "PID", 0, 11, 0, 2, 1}, {"IN1-49[3]", "IN1", 0, 49, 3, 0, 0},
        {"Z01-1", "Z01", 0, 1, 0, 0, 0},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hl7_path p;
        const char *why = NULL;
        size_t at = 0;
        assert_int_equal(hl7_path_parse(cases[i].text, strlen(cases[i].text), &p, &why, &at), 0);
        assert_string_equal(p.seg, cases[i].seg);
        assert_int_equal(p.seg_nth, cases[i].nth);
        assert_int_equal(p.field, cases[i].field);
        assert_int_equal(p.rep, cases[i].rep);
        assert_int_equal(p.comp, cases[i].comp);
        assert_int_equal(p.sub, cases[i].sub);
        char out[64];
        hl7_path_format(&p, out, sizeof out);
        assert_string_equal(out, cases[i].text);
    }
    struct hl7_path p;
    const char *why;
    size_t at;
    assert_int_equal(hl7_path_parse("PID-3.1xyz", 7, &p, &why, &at), 0); /* explicit length */
    assert_int_equal(p.comp, 1);
    char small[5];
    hl7_path_format(&p, small, sizeof small);
    assert_string_equal(small, "PID-");
}

static void test_path_invalid(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t at;
    } cases[] = {
        {"", 0},         {"PI", 2},        {"pid-3", 0},     {"1ID-3", 0},     {"PID-", 4},
        {"PID-0", 4},    {"PID-3[0]", 6},  {"PID-3[", 6},    {"PID-3[2", 7},   {"PID-3[x]", 6},
        {"PID.3", 3},    {"PID-3.", 6},    {"PID-3.1.", 8},  {"PID-3.1.1.1", 9}, {"PID-3 ", 5},
        {"PID[0]-3", 4}, {"PID[*]-3", 4},  {"PID-99999", 4}, {"PID-3[1][2]", 8}, {"PIDX", 3},
        {"PID-3.-1", 6}, {"PID--3", 4},   {"PID-3.1.0", 8}, {"PID-3[99999999999999999999]", 6},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct hl7_path p;
        const char *why = NULL;
        size_t at = 999;
        if (hl7_path_parse(cases[i].text, strlen(cases[i].text), &p, &why, &at) != -1)
            fail_msg("case %u (%s) parsed", i, cases[i].text);
        assert_non_null(why);
        if (at != cases[i].at)
            fail_msg("case %u (%s): at %zu, want %zu (%s)", i, cases[i].text, at, cases[i].at, why);
    }
    struct hl7_path p;
    assert_int_equal(hl7_path_parse(NULL, 3, &p, NULL, NULL), -1);
}

/* ---- batches ----------------------------------------------------------- */

static int split(const char *text, const char **ids, size_t max, struct hl7_batch_iter *it,
                 struct hl7_err *e, int *count)
{
    static struct hl7_msg *m;
    if (!m)
        m = hl7_msg_new();
    *count = 0;
    if (hl7_batch_begin(it, U(text), strlen(text), e) != 0)
        return -2;
    struct hl7_slice s;
    int r;
    while ((r = hl7_batch_next(it, &s, e)) == 1) {
        struct hl7_err pe;
        assert_int_equal(hl7_msg_parse(m, s.p, s.len, NULL, &pe), 0);
        assert_int_equal(hl7_msg_validate(m, &pe), 0);
        if ((size_t)*count < max)
            assert_true(hl7_slice_eq(hl7_msg_header(m)->control_id, ids[*count]));
        (*count)++;
    }
    return r;
}

#define M1 "MSH|^~\\&|REG|HOSP|RCV|RFAC|20260301124000||ADT^A08|BM0001|P|2.5\rEVN|A08\rPID|1||13\r"
#define M2 "MSH|^~\\&|REG|HOSP|RCV|RFAC|20260301124001||ADT^A08|BM0002|P|2.5\rEVN|A08\rPID|1||14\r"
#define M3 "MSH|^~\\&|REG|HOSP|RCV|RFAC|20260301124002||ADT^A08|BM0003|P|2.5\rEVN|A08\rPID|1||15\r"

static void test_batches(void **state)
{
    (void)state;
    const char *ids[] = {"BM0001", "BM0002", "BM0003"};
    struct hl7_batch_iter it;
    struct hl7_err e;
    int n;

    size_t flen;
    uint8_t *f = slurp(FIX "batch-fhs-bhs.hl7", &flen);
    assert_non_null(f);
    assert_int_equal(hl7_is_batch(f, flen), 1);
    f[flen] = '\0';
    assert_int_equal(split((const char *)f, ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(it.seen, 2);
    assert_int_equal(it.declared_count, 2);
    assert_true(slice_is(it.batch_control_id, "BATCH0001"));
    assert_true(slice_is(it.send_app, "REG"));
    assert_true(slice_is(it.send_fac, "HOSP"));
    assert_true(slice_is(it.version, "2.5"));
    free(f);

    /* BHS only, with and without trailer. */
    assert_int_equal(split("BHS|^~\\&|REG|HOSP|||||||B1\r" M1 M2 M3 "BTS|3\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 3);
    assert_true(slice_is(it.batch_control_id, "B1"));
    assert_int_equal(split("BHS|^~\\&|REG|HOSP|||||||B1\n" M1 M2, ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(it.declared_count, 0);
    /* FHS only, FTS without FHS, a bare stream, BOM and blank lines. */
    assert_int_equal(split("FHS|^~\\&|REG|HOSP|||||||F1\r" M1 "BTS|1\rFTS|1\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 1);
    assert_true(slice_is(it.batch_control_id, "F1"));
    assert_int_equal(split("BHS|^~\\&\r" M1 "BTS|1\rFTS|1\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(split(M1 M2 M3, ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 3);
    assert_true(slice_is(it.batch_control_id, "BM0001")); /* no header: the first MSH-10 */
    assert_int_equal(hl7_is_batch(U(M1), strlen(M1)), 0);
    assert_int_equal(split("\xef\xbb\xbf\r\nBHS|^~\\&|A|B|||||||B2\r\n\r\n" M1 "\r\n" M2 "BTS|2\r\n", ids,
                           3, &it, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(hl7_is_batch(U("\xef\xbb\xbf\r\nBHS|^~\\&"), 10), 1);
    assert_int_equal(hl7_is_batch(U("BHSX"), 4), 0);
    /* A blank line before the header, a header cut short by its line end,
     * and one cut by the buffer's end: the first-four-bytes shortcut and the
     * full scan must agree. */
    assert_int_equal(hl7_is_batch(U("\r \t\rFHS|^~\\&"), 12), 1);
    assert_int_equal(hl7_is_batch(U(" BHS|^~\\&"), 10), 0);
    assert_int_equal(hl7_is_batch(U("BHS\rMSH|^~\\&"), 12), 0);
    assert_int_equal(hl7_is_batch(U("BHS|"), 3), 0);
    assert_int_equal(hl7_is_batch(U("\n\nBHS|"), 6), 1);
    assert_int_equal(hl7_is_batch(NULL, 0), 0);

    /* Two batches in one file; BTS and FTS counts each checked. */
    const char *ids2[] = {"BM0001", "BM0002", "BM0003"};
    assert_int_equal(split("FHS|^~\\&|R|H|||||||F9\rBHS|^~\\&|R|H|||||||B1\r" M1 M2 "BTS|2\r"
                           "BHS|^~\\&|R|H|||||||B2\r" M3 "BTS|1\rFTS|2\r", ids2, 3, &it, &e, &n), 0);
    assert_int_equal(n, 3);
    assert_true(slice_is(it.batch_control_id, "B2"));

    /* Count mismatches are noted (for a warning), never an error: every
     * message is still handed out. */
    assert_int_equal(split("BHS|^~\\&|R|H|||||||B1\r" M1 M2 "BTS|3\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(it.count_mismatches, 1);
    assert_string_equal(it.count_err.seg, "BTS");
    assert_int_equal(it.count_err.field, 1);
    assert_int_equal(split("FHS|^~\\&\rBHS|^~\\&\r" M1 "BTS|1\rFTS|2\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(it.count_mismatches, 1);
    assert_string_equal(it.count_err.seg, "FTS");
    assert_int_equal(split("BHS|^~\\&\r" M1 "BTS|x\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(it.count_err.code, 102);
    /* FHS/FTS without BHS: one implicit batch, so FTS-1 = 1 matches. */
    assert_int_equal(split("FHS|^~\\&|R|H|||||||F1\r" M1 M2 "FTS|1\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(it.count_mismatches, 0);
    assert_true(slice_is(it.batch_control_id, "F1"));
    /* A trailer without a header: MSA-2 will be the first MSH-10. */
    assert_int_equal(split(M1 M2 "BTS|2\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(it.count_mismatches, 0);
    assert_int_equal(it.has_header, 0);
    assert_true(slice_is(it.batch_control_id, "BM0001"));
    assert_true(slice_is(it.send_app, "REG"));
    assert_true(slice_is(it.version, "2.5"));
    assert_int_equal(split(M1 "BTS|1\r", ids, 3, &it, &e, &n), 0);
    assert_int_equal(it.count_mismatches, 0);
    /* Messages whose delimiters differ from the header's are refused. */
    assert_int_equal(split("BHS|^~\\&|R|H\r" "MSH|^~\\#|A|B|C|D|20260301||ADT^A01|X|P|2.5\r",
                           ids, 0, &it, &e, &n), -2);
    assert_int_equal(e.code, 102);
    assert_string_equal(e.seg, "MSH");
    assert_int_equal(split("FHS|^~\\&\rBHS#^~\\&\r" M1, ids, 0, &it, &e, &n), -2);
    assert_int_equal(e.code, 102);

    /* Broken envelopes are refused before any message is handed out. */
    static const char *const broken[] = {
        "BHS|^~\\&\rEVN|A04\r" M1 "BTS|1\r",
        "BHS|^~\\&\rMSH|^~\\&|A\rBHS|^~\\&\rPID|1\rBTS|1\r",
        "FHS|^~\\&\rBHS|^~\\&\r" M1 "FHS|^~\\&\rBTS|1\rFTS|1\r",
        "FHS|^~\\&\r" M1 "FTS|1\r" M2,
        "BHS|^~\\&\r" M1 "BTS|1\rBTS|1\r",
        "BHS|^~\r" M1,
        "BHS\r" M1,
        "EVN|1\r",
        "",
    };
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        if (split(broken[i], ids, 0, &it, &e, &n) != -2)
            fail_msg("broken case %zu accepted", i);
        assert_true(meaningful(e.code));
        assert_int_equal(n, 0);
    }
    /* A bad segment inside a message is the message's parse error. */
    const char *inner = "BHS|^~\\&\r" M1 "bad|1\r";
    assert_int_equal(hl7_batch_begin(&it, U(inner), strlen(inner), &e), 0);
    struct hl7_slice s;
    assert_int_equal(hl7_batch_next(&it, &s, &e), 1);
    struct hl7_msg *m = hl7_msg_new();
    assert_int_equal(hl7_msg_parse(m, s.p, s.len, NULL, &e), -1);
    assert_int_equal(e.code, 100);
    assert_true(slice_is(hl7_msg_header(m)->control_id, "BM0001"));
    assert_int_equal(hl7_batch_next(&it, &s, &e), 0);
    hl7_msg_free(m);
}

/* ---- ACKs -------------------------------------------------------------- */

#define ADT23 "MSH|^~\\&|REG|HOSP|HL7BRIDGE|CONTOSO|20260301120000||ADT^A01|MSG0001|P|2.3\r" \
              "EVN|A01|20260301120000\rPID|1||123^^^HOSP^MR||DOE^JOHN\r"

static void test_ack_golden(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    struct hl7_err e;

    parse_ok(m, ADT23);
    assert_string_equal(build_ack(m, HL7_ACK_AA, NULL, NULL),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|REG|HOSP|20260301124000.123+0000||ACK^A01|ACK0001|P|2.3\r"
                        "MSA|AA|MSG0001\r");

    parse_ok(m, "MSH|^~\\&|REG|HOSP|HL7BRIDGE|CONTOSO|20260301120000||ADT^A04^ADT_A01|MSG0002|T|2.5.1\r"
                "EVN|A04\r");
    assert_string_equal(build_ack(m, HL7_ACK_AA, NULL, NULL),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|REG|HOSP|20260301124000.123+0000||ACK^A04^ACK|ACK0001|T|2.5.1\r"
                        "MSA|AA|MSG0002\r");

    /* AR for a v2.5 message without MSH-9. */
    parse_ok(m, "MSH|^~\\&|REG|HOSP|HL7BRIDGE|CONTOSO|20260301130100|||MISS0001|P|2.5\r"
                "PID|1||17^^^HOSP^MR||NO^TYPE\r");
    assert_int_equal(hl7_msg_validate(m, &e), -1);
    assert_string_equal(build_ack(m, HL7_ACK_AR, "Message rejected", &e),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|REG|HOSP|20260301124000.123+0000||ACK^^ACK|ACK0001|P|2.5\r"
                        "MSA|AR|MISS0001|Message rejected\r"
                        "ERR||MSH^1^9|101^Required field missing^HL70357|E||||MSH-9 message type missing\r");

    /* AE on v2.3: the ERR-1 (CM_ELD) form. */
    parse_ok(m, ADT23);
    hl7_err_set(&e, HL7_E_INTERNAL, "PID", 1, 3, "store unavailable");
    assert_string_equal(build_ack(m, HL7_ACK_AE, "Try again", &e),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|REG|HOSP|20260301124000.123+0000||ACK^A01|ACK0001|P|2.3\r"
                        "MSA|AE|MSG0001|Try again\r"
                        "ERR|PID^1^3^207&Application internal error&HL70357\r");

    /* Text is escaped; custom delimiters are reused; location parts. */
    parse_ok(m, "MSH#$*@!#APP#FAC###20260301120000##ADT$A08#CD0001#P#2.6\r");
    hl7_err_set(&e, HL7_E_DATA_TYPE, "PID", 2, 7, "bad date");
    e.rep = 1;
    e.comp = 2;
    assert_string_equal(build_ack(m, HL7_ACK_AE, "a#b$c", &e),
                        "MSH#$*@!#HL7BRIDGE#CONTOSO#APP#FAC#20260301124000.123+0000##ACK$A08$ACK#ACK0001#P#2.6\r"
                        "MSA#AE#CD0001#a@F@b@S@c\r"
                        "ERR##PID$2$7$1$2#102$Data type error$HL70357#E####bad date\r");

    /* Nothing readable: MSA-2 empty, standard delimiters, v2.5 form. */
    hl7_err_set(&e, HL7_E_SEGMENT_SEQUENCE, NULL, 0, 0, "no MSH");
    assert_string_equal(build_ack(NULL, HL7_ACK_AR, NULL, &e),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|||20260301124000.123+0000||ACK^^ACK|ACK0001|P|2.5\r"
                        "MSA|AR|\r"
                        "ERR|||100^Segment sequence error^HL70357|E||||no MSH\r");
    /* Broken MSH-2: MSH-3/4/9.2/10/11/12 recovered by best effort, so the
     * sender can match the rejection by MSA-2. */
    const char *junk = "MSH|^^\\&|A|B|C|D|||ADT^A01|X1|T|2.5\r";
    assert_int_equal(hl7_msg_parse(m, U(junk), strlen(junk), NULL, &e), -1);
    assert_string_equal(build_ack(m, HL7_ACK_AR, NULL, &e),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|A|B|20260301124000.123+0000||ACK^A01^ACK|ACK0001|T|2.5\r"
                        "MSA|AR|X1\r"
                        "ERR||MSH^1^2|102^Data type error^HL70357|E||||invalid MSH-2 encoding characters\r");
    const char *dbl = "MSH|^~\\\\&|A|B|C|D|||ADT^A01|X2|P|2.5\r"; /* escape character doubled */
    assert_int_equal(hl7_msg_parse(m, U(dbl), strlen(dbl), NULL, &e), -1);
    assert_non_null(strstr(build_ack(m, HL7_ACK_AR, NULL, &e), "\rMSA|AR|X2\r"));
    const char *nomsh2 = "MSH||A|B|C|D|||ADT^A01|X3|P|2.5\r";
    assert_int_equal(hl7_msg_parse(m, U(nomsh2), strlen(nomsh2), NULL, &e), -1);
    assert_non_null(strstr(build_ack(m, HL7_ACK_AR, NULL, &e), "\rMSA|AR|X3\r"));

    /* Control bytes are never echoed; empty MSH-11 is echoed empty. */
    static const char ctl[] = "MSH|^~\\&|A\0B|F|C|D|20260301120000||ADT^A01|N\0\x01|||2.5\r";
    assert_int_equal(hl7_msg_parse(m, U(ctl), sizeof ctl - 1, NULL, &e), 0);
    assert_string_equal(build_ack(m, HL7_ACK_AR, NULL, NULL),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|A\\X00\\B|F|20260301124000.123+0000||ACK^A01^ACK|ACK0001||2.5\r"
                        "MSA|AR|N\\X00\\\\X01\\\r");

    /* Unusual but legal delimiters: a letter cannot be used in the ACK (its
     * fixed text holds letters), so the ACK uses |^~\& and re-escapes. */
    parse_ok(m, "MSH|QRE&|A^1|B|C|D|20260301120000||ADTQA01|L~1|P|2.5\r");
    assert_string_equal(build_ack(m, HL7_ACK_AA, NULL, NULL),
                        "MSH|^~\\&|HL7BRIDGE|CONTOSO|A\\S\\1|B|20260301124000.123+0000||ACK^A01^ACK|ACK0001|P|2.5\r"
                        "MSA|AA|L\\R\\1\r");
    /* Unusual punctuation is echoed as the sender wrote it. */
    parse_ok(m, "MSH#*@!%#A|B#C#D#E#20260301120000##ADT*A01#P1#P#2.5\r");
    assert_string_equal(build_ack(m, HL7_ACK_AA, NULL, NULL),
                        "MSH#*@!%#HL7BRIDGE#CONTOSO#A|B#C#20260301124000.123+0000##ACK*A01*ACK#ACK0001#P#2.5\r"
                        "MSA#AA#P1\r");

    /* v2.7 truncation character is kept in the ACK's MSH-2. */
    parse_ok(m, "MSH|^~\\&#|A|B|C|D|20260301120000||ADT^A01^ADT_A01|T1|P|2.7\r");
    assert_string_equal(build_ack(m, HL7_ACK_CA, NULL, NULL),
                        "MSH|^~\\&#|HL7BRIDGE|CONTOSO|A|B|20260301124000.123+0000||ACK^A01^ACK|ACK0001|P|2.7\r"
                        "MSA|CA|T1\r");

    /* The ceiling on the output buffer is honoured. */
    struct buf b;
    buf_init(&b, 40);
    parse_ok(m, ADT23);
    assert_int_equal(hl7_ack_build(m, HL7_ACK_AA, NULL, NULL, &ctx, &b), -1);
    buf_release(&b);
    hl7_msg_free(m);
}

static void test_ack_choose(void **state)
{
    (void)state;
    struct hl7_msg *m = hl7_msg_new();
    int send = -1;
    parse_ok(m, ADT23);
    assert_int_equal(hl7_ack_choose(m, 0, HL7_ACCEPT, &send), HL7_ACK_AA);
    assert_int_equal(send, 1);
    assert_int_equal(hl7_ack_choose(m, 0, HL7_ERROR, &send), HL7_ACK_AE);
    assert_int_equal(hl7_ack_choose(m, 0, HL7_REJECT, &send), HL7_ACK_AR);
    assert_int_equal(hl7_ack_choose(m, 1, HL7_ACCEPT, &send), HL7_ACK_CA);
    assert_int_equal(send, 1); /* MSH-15 empty: always */
    assert_int_equal(hl7_ack_choose(NULL, 1, HL7_REJECT, &send), HL7_ACK_CR);
    assert_int_equal(send, 1);

    static const struct {
        const char *msh15;
        int accept, error, reject;
    } modes[] = {{"AL", 1, 1, 1}, {"NE", 0, 0, 0}, {"ER", 0, 1, 1}, {"SU", 1, 0, 0}, {"XX", 1, 1, 1}};
    for (unsigned i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        char msg[128];
        snprintf(msg, sizeof msg, "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|1|P|2.5|||%s|AL\r",
                 modes[i].msh15);
        parse_ok(m, msg);
        assert_int_equal(hl7_ack_choose(m, 1, HL7_ACCEPT, &send), HL7_ACK_CA);
        assert_int_equal(send, modes[i].accept);
        assert_int_equal(hl7_ack_choose(m, 1, HL7_ERROR, &send), HL7_ACK_CE);
        assert_int_equal(send, modes[i].error);
        assert_int_equal(hl7_ack_choose(m, 1, HL7_REJECT, &send), HL7_ACK_CR);
        assert_int_equal(send, modes[i].reject);
        /* Original mode ignores MSH-15. */
        assert_int_equal(hl7_ack_choose(m, 0, HL7_ACCEPT, &send), HL7_ACK_AA);
        assert_int_equal(send, 1);
    }
    for (int c = HL7_ACK_AA; c <= HL7_ACK_CR; c++) {
        enum hl7_ack_code back;
        const char *name = hl7_ack_code_name((enum hl7_ack_code)c);
        assert_int_equal(hl7_ack_code_parse(U(name), 2, &back), 0);
        assert_int_equal(back, c);
    }
    enum hl7_ack_code back;
    assert_int_equal(hl7_ack_code_parse(U("AX"), 2, &back), -1);
    assert_int_equal(hl7_ack_code_parse(U("AAA"), 3, &back), -1);
    assert_int_equal(hl7_ack_code_parse(NULL, 0, &back), -1);
    hl7_msg_free(m);
}

static void test_ack_batch(void **state)
{
    (void)state;
    size_t n;
    uint8_t *f = slurp(FIX "batch-fhs-bhs.hl7", &n);
    assert_non_null(f);
    struct hl7_batch_iter it;
    struct hl7_err e;
    assert_int_equal(hl7_batch_begin(&it, f, n, &e), 0);
    struct buf b;
    buf_init(&b, HL7_ACK_MAX_BYTES);
    assert_int_equal(hl7_ack_build_batch(&it, HL7_ACK_AA, NULL, NULL, &ctx, &b), 0);
    const char *want = "MSH|^~\\&|HL7BRIDGE|CONTOSO|REG|HOSP|20260301124000.123+0000||ACK^^ACK|ACK0001|P|2.5\r"
                       "MSA|AA|BATCH0001\r";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(buf_data(&b), want, b.len);

    /* A trailer without a header: MSA-2 is the first message's MSH-10. */
    const char *tail = M1 M2 "BTS|2\r";
    assert_int_equal(hl7_batch_begin(&it, U(tail), strlen(tail), &e), 0);
    buf_reset(&b);
    assert_int_equal(hl7_ack_build_batch(&it, HL7_ACK_AA, NULL, NULL, &ctx, &b), 0);
    want = "MSH|^~\\&|HL7BRIDGE|CONTOSO|REG|HOSP|20260301124000.123+0000||ACK^^ACK|ACK0001|P|2.5\r"
           "MSA|AA|BM0001\r";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(buf_data(&b), want, b.len);
    buf_release(&b);
    free(f);
}

/* What duplicate detection compares: MSH-7 and line endings do not count,
 * everything else does. */
static char *content_of(const char *msg)
{
    struct hl7_msg *m = hl7_msg_new();
    parse_ok(m, msg);
    struct buf b;
    buf_init(&b, 1 << 16);
    assert_int_equal(hl7_msg_content(m, &b), 0);
    char *out = calloc(1, b.len + 1);
    memcpy(out, buf_data(&b), b.len);
    buf_release(&b);
    hl7_msg_free(m);
    return out;
}

static void test_content_for_duplicates(void **state)
{
    (void)state;
    char *a = content_of("MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|C1|P|2.5\rPID|1||M1\r");
    char *b = content_of("\xEF\xBB\xBFMSH|^~\\&|A|B|C|D|20260302083000+0100||ADT^A01|C1|P|2.5\r\n"
                         "PID|1||M1\r\n\r\n");
    char *c = content_of("MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|C1|P|2.5\rPID|1||M2\r");
    char *d = content_of("MSH|^~\\&|A|B|C|D|20260301120000||ADT^A08|C1|P|2.5\rPID|1||M1\r");
    char *e = content_of("MSH|^~\\&|A|B|C|D\r");
    assert_string_equal(a, "MSH|^~\\&|A|B|C|D|||ADT^A01|C1|P|2.5\rPID|1||M1\r");
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d);
    assert_string_equal(e, "MSH|^~\\&|A|B|C|D\r");
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_repetitions_components),
        cmocka_unit_test(test_custom_delimiters),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_charsets),
        cmocka_unit_test(test_separators_and_bom),
        cmocka_unit_test(test_malformed_inline),
        cmocka_unit_test(test_validate_rules),
        cmocka_unit_test(test_malformed_corpus),
        cmocka_unit_test(test_corpus_sweep),
        cmocka_unit_test(test_guard_page_fixtures),
        cmocka_unit_test(test_guard_page_corpus),
        cmocka_unit_test(test_path_valid),
        cmocka_unit_test(test_path_invalid),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_ack_golden),
        cmocka_unit_test(test_ack_choose),
        cmocka_unit_test(test_ack_batch),
        cmocka_unit_test(test_content_for_duplicates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
