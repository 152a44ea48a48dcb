/* Unit tests for core/num.c: the one number parser for wire and config
 * data, and the decimal formatters of the ACK builder and the mapping
 * engine, checked against snprintf over edge values and a sweep. */
#include "core/num.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_parse_i64),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_fixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
