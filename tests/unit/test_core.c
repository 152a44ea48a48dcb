/* Unit tests for core/num.c: the one number parser for wire and config
 * data, and the decimal formatters of the ACK builder and the mapping
 * engine, checked against snprintf over edge values and a sweep; and for
 * core/log.c: one event is one line whatever its values hold. */
#include "core/conninfo.h"
#include "core/log.h"
#include "core/num.h"

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static const uint8_t *U(const char *s)
{
    return (const uint8_t *)s;
}

static void test_parse_u64(void **state)
{
    (void)state;
    uint64_t v = 7;
    assert_int_equal(num_parse_u64(U("0"), 1, 10, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(num_parse_u64(U("18446744073709551615"), 20, UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);
    /* One past the top, a value over the caller's maximum, empty, a sign,
     * a non-digit, and bytes past the given length ignored. */
    assert_int_equal(num_parse_u64(U("18446744073709551616"), 20, UINT64_MAX, &v), -1);
    assert_int_equal(num_parse_u64(U("11"), 2, 10, &v), -1);
    assert_int_equal(num_parse_u64(U(""), 0, 10, &v), -1);
    assert_int_equal(num_parse_u64(U("+1"), 2, 10, &v), -1);
    assert_int_equal(num_parse_u64(U("1x"), 2, 10, &v), -1);
    assert_int_equal(num_parse_u64(U("42junk"), 2, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(num_parse_u64(NULL, 0, 10, &v), -1);
}

static void test_parse_i64(void **state)
{
    (void)state;
    int64_t v = 0;
    assert_int_equal(num_parse_i64(U("-9223372036854775808"), 20, INT64_MIN, INT64_MAX, &v), 0);
    assert_true(v == INT64_MIN);
    assert_int_equal(num_parse_i64(U("+5"), 2, -10, 10, &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(num_parse_i64(U("-11"), 3, -10, 10, &v), -1);
    assert_int_equal(num_parse_i64(U("-"), 1, -10, 10, &v), -1);
}

static void check_u64(uint64_t v)
{
    char got[NUM_U64_DIGITS + 1], want[32];
    size_t n = num_format_u64(got, v);
    got[n] = '\0';
    snprintf(want, sizeof want, "%" PRIu64, v);
    assert_string_equal(got, want);
}

static void check_i64(int64_t v)
{
    char got[NUM_U64_DIGITS + 2], want[32];
    size_t n = num_format_i64(got, v);
    got[n] = '\0';
    snprintf(want, sizeof want, "%" PRId64, v);
    assert_string_equal(got, want);
}

static void test_format(void **state)
{
    (void)state;
    const uint64_t edges[] = {0, 1, 9, 10, 99, 100, 4294967295u, 4294967296u, UINT64_MAX - 1,
                              UINT64_MAX};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        check_u64(edges[i]);
    const int64_t sedges[] = {0, -1, 1, -10, INT64_MIN, INT64_MIN + 1, INT64_MAX};
    for (size_t i = 0; i < sizeof sedges / sizeof sedges[0]; i++)
        check_i64(sedges[i]);
    /* Every power of ten and its neighbours, and a multiplicative sweep. */
    for (uint64_t p = 1; p <= UINT64_MAX / 10; p *= 10) {
        check_u64(p - 1);
        check_u64(p);
        check_u64(p + 1);
        check_i64(-(int64_t)p);
    }
    for (uint64_t v = 3; v < UINT64_MAX / 7; v = v * 7 + 1)
        check_u64(v);
}

static void test_format_fixed(void **state)
{
    (void)state;
    char out[8];
    memset(out, '#', sizeof out);
    num_format_fixed(out, 7, 3);
    assert_memory_equal(out, "007#", 4);
    num_format_fixed(out, 2026, 4);
    assert_memory_equal(out, "2026", 4);
    /* Too wide for the field: the high digits go, the width holds. */
    num_format_fixed(out, 12345, 2);
    assert_memory_equal(out, "4526", 4);
    num_format_fixed(out, 0, 2);
    assert_memory_equal(out, "0026", 4);
}

/* Runs one log call with stderr sent to a temporary file; returns what
 * was written (owned). */
#define CAPTURE(out, call)                                                                  \
    do {                                                                                    \
        FILE *tf_ = tmpfile();                                                              \
        assert_non_null(tf_);                                                               \
        int saved_ = dup(2);                                                                \
        assert_true(saved_ >= 0);                                                           \
        assert_true(dup2(fileno(tf_), 2) >= 0);                                             \
        call;                                                                               \
        assert_true(dup2(saved_, 2) >= 0);                                                  \
        close(saved_);                                                                      \
        long n_ = ftell(tf_) >= 0 ? lseek(fileno(tf_), 0, SEEK_END) : 0;                    \
        (out) = calloc(1, (size_t)n_ + 1);                                                  \
        assert_non_null(out);                                                               \
        assert_int_equal(pread(fileno(tf_), (out), (size_t)n_, 0), n_);                     \
        fclose(tf_);                                                                        \
    } while (0)

static size_t count_char(const char *s, char c)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

/* A peer's text with CR/LF (a forged second event), quotes, a backslash and
 * other control bytes. */
static const char forged[] = "bad\r\nts=2026-01-01T00:00:00.000Z level=error event=forged "
                             "x=\"q\\\" \x01\x1b\x7f end";

static void test_log_one_line(void **state)
{
    (void)state;
    char *out = NULL;
    char q[512];
    log_set_format(LOG_FMT_LOGFMT);
    /* Even unquoted, through plain %s: the line is never split. */
    CAPTURE(out, log_warn("probe", " error=%s n=1", forged));
    assert_int_equal(count_char(out, '\n'), 1);
    assert_int_equal(out[strlen(out) - 1], '\n');
    assert_null(strchr(out, '\r'));
    assert_non_null(strstr(out, "bad\\r\\nts=2026"));
    for (const char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\n')
            fail_msg("control byte 0x%02x in %s", (unsigned char)*p, out);
    assert_null(strchr(out, 0x7f));
    free(out);
    /* Quoted with log_quote: the quotes inside cannot end the value. */
    CAPTURE(out, log_warn("probe", " error=\"%s\" n=1", log_quote(q, sizeof q, forged)));
    assert_int_equal(count_char(out, '\n'), 1);
    assert_non_null(strstr(out, " error=\"bad\\r\\nts=2026-01-01T00:00:00.000Z level=error "
                                "event=forged x=\\\"q\\\\\\\" \\u0001\\u001b\\u007f end\" n=1\n"));
    free(out);
    /* JSON: the same call gives one object whose value is the original. */
    log_set_format(LOG_FMT_JSON);
    CAPTURE(out, log_warn("probe", " error=\"%s\" n=1", log_quote(q, sizeof q, forged)));
    log_set_format(LOG_FMT_LOGFMT);
    assert_int_equal(count_char(out, '\n'), 1);
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    if (!o)
        fail_msg("not JSON (%s): %s", je.text, out);
    assert_string_equal(json_string_value(json_object_get(o, "error")), forged);
    assert_string_equal(json_string_value(json_object_get(o, "n")), "1");
    assert_string_equal(json_string_value(json_object_get(o, "event")), "probe");
    json_decref(o);
    free(out);
    /* log_quote bounds its output. */
    char small[8];
    assert_string_equal(log_quote(small, sizeof small, "a\"b\nc"), "a\\\"b\\nc");
    assert_string_equal(log_quote(small, sizeof small, "a\"b\ncd"), "a\\\"b\\nc");
    assert_string_equal(log_quote(small, sizeof small, "abcdef\""), "abcdef"); /* no lone \\ */
    assert_string_equal(log_quote(small, sizeof small, NULL), "");
}

/* Connection strings in logs: every password hidden, the rest kept. */
static void test_conninfo_scrub(void **state)
{
    (void)state;
    static const struct { const char *in, *out; } cases[] = {
        { "postgresql://hb:s3cret@db.example:5432/hb?sslmode=verify-full",
          "postgresql://hb:***@db.example:5432/hb?sslmode=verify-full" },
        { "postgres://hb@db/hb", "postgres://hb@db/hb" },
        { "postgresql://hb:p@ss@db/hb", "postgresql://hb:***@db/hb" },
        { "postgresql://db/hb?user=hb&password=s3cret&sslmode=require",
          "postgresql://db/hb?user=hb&password=***&sslmode=require" },
        { "postgresql://hb:x@h1:5432,h2:5433/hb?sslpassword=k",
          "postgresql://hb:***@h1:5432,h2:5433/hb?sslpassword=***" },
        { "postgresql:///hb?host=/run/pg", "postgresql:///hb?host=/run/pg" },
        { "host=db password=s3cret dbname=hb", "host=db password=*** dbname=hb" },
        { "host=db password = 's e\\'c' dbname=hb", "host=db password = *** dbname=hb" },
        { "password='unterminated", "password=***" },
        { "  host=db   sslpassword=k  ", "  host=db   sslpassword=***  " },
        { "host=db dbname=password", "host=db dbname=password" },
        { "", "" },
    };
    char out[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(conninfo_scrub(cases[i].in, out, sizeof out), 0);
        assert_string_equal(out, cases[i].out);
        assert_int_equal(conninfo_has_password(cases[i].in),
                         strcmp(cases[i].in, cases[i].out) != 0);
    }
    /* too small: -1, never a password in what was written */
    char small[20];
    assert_int_equal(conninfo_scrub("postgresql://hb:s3cret@db/hb", small, sizeof small), -1);
    assert_null(strstr(small, "s3cret"));
    assert_int_equal(conninfo_scrub(NULL, out, sizeof out), 0);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_parse_i64),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_conninfo_scrub),
        cmocka_unit_test(test_format_fixed),
        cmocka_unit_test(test_log_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
