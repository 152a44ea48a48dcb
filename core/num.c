/* Bounds-checked decimal parsing (any thread). */
#include "core/num.h"

int num_parse_u64(const uint8_t *p, size_t len, uint64_t max, uint64_t *out)
{
    if (!p || len == 0 || len > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int num_parse_i64(const uint8_t *p, size_t len, int64_t min, int64_t max, int64_t *out)
{
    if (!p || len == 0)
        return -1;
    int neg = 0;
    if (p[0] == '-' || p[0] == '+') {
        neg = p[0] == '-';
        p++;
        len--;
    }
    uint64_t u;
    if (num_parse_u64(p, len, (uint64_t)INT64_MAX + (neg ? 1u : 0u), &u) != 0)
        return -1;
    int64_t v = neg ? (u == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)u) : (int64_t)u;
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

size_t num_format_u64(char *out, uint64_t v)
{
    char tmp[NUM_U64_DIGITS];
    size_t n = 0, o = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        out[o++] = tmp[--n];
    return o;
}

size_t num_format_i64(char *out, int64_t v)
{
    if (v >= 0)
        return num_format_u64(out, (uint64_t)v);
    out[0] = '-';
    return 1 + num_format_u64(out + 1, 0u - (uint64_t)v);
}

void num_format_fixed(char *out, unsigned v, unsigned width)
{
    for (unsigned i = width; i > 0; i--) {
        out[i - 1] = (char)('0' + v % 10);
        v /= 10;
    }
}
