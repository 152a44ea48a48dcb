/* HL7 date-times for the mapping module: DTM values to UTC (offset-less
 * values read in the rule set's zone, core/tz.c) and UTC seconds to the
 * configured output format. */
#include "mapping/mapping_int.h"

#include <string.h>
#include <time.h>

#include "core/num.h"

/* ---- DTM ------------------------------------------------------------------ */

static int dig2(const uint8_t *p, unsigned *out)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9')
        return -1;
    *out = (unsigned)(p[0] - '0') * 10 + (unsigned)(p[1] - '0');
    return 0;
}

int mp_dtm_parse(const struct tz *tz, const uint8_t *p, size_t len, int64_t *utc)
{
    /* Split off an offset: the last '+' or '-' (a DTM has no other sign). */
    size_t end = len;
    int has_off = 0;
    int32_t off = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '+' || p[i] == '-') {
            size_t n = len - i - 1;
            unsigned hh, mm = 0;
            if ((n != 4 && n != 2) || dig2(p + i + 1, &hh) != 0 ||
                (n == 4 && dig2(p + i + 3, &mm) != 0) || hh > 14 || mm > 59)
                return -1;
            off = (int32_t)(hh * 3600 + mm * 60) * (p[i] == '-' ? -1 : 1);
            has_off = 1;
            end = i;
            break;
        }
    }
    size_t n = end;
    /* fractional seconds: only after a full SS */
    for (size_t i = 0; i < end; i++) {
        if (p[i] == '.') {
            if (i != 14 || i + 1 == end || end - i - 1 > 4)
                return -1;
            for (size_t k = i + 1; k < end; k++)
                if (p[k] < '0' || p[k] > '9')
                    return -1;
            n = i;
            break;
        }
    }
    if (n < 4 || n > 14 || (n & 1))
        return -1;
    uint64_t year;
    if (num_parse_u64(p, 4, 9999, &year) != 0 || year < 1)
        return -1;
    unsigned mo = 1, da = 1, hh = 0, mi = 0, ss = 0;
    if ((n >= 6 && dig2(p + 4, &mo)) || (n >= 8 && dig2(p + 6, &da)) ||
        (n >= 10 && dig2(p + 8, &hh)) || (n >= 12 && dig2(p + 10, &mi)) ||
        (n >= 14 && dig2(p + 12, &ss)))
        return -1;
    if (mo < 1 || mo > 12 || da < 1 || da > tz_days_in_month((int64_t)year, mo) || hh > 23 ||
        mi > 59 || ss > 60)
        return -1;
    if (ss == 60) /* leap second: the last second of the minute */
        ss = 59;
    int64_t local = tz_days_from_civil((int64_t)year, mo, da) * 86400 + hh * 3600 + mi * 60 + ss;
    *utc = has_off ? local - off : tz_local_to_utc(tz, local);
    return 0;
}

static char *put2(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
    return o + 2;
}

size_t mp_time_format(int64_t t, const char *fmt, int iso_default, char *out, size_t cap)
{
    int64_t days = t / 86400 - (t % 86400 < 0);
    int64_t sod = t - days * 86400;
    int64_t y;
    unsigned mo, da;
    tz_civil_from_days(days, &y, &mo, &da);
    if (iso_default && y >= 0 && y <= 9999 && cap >= 21) {
        char *o = out;
        o = put2(o, (unsigned)(y / 100));
        o = put2(o, (unsigned)(y % 100));
        *o++ = '-';
        o = put2(o, mo);
        *o++ = '-';
        o = put2(o, da);
        *o++ = 'T';
        o = put2(o, (unsigned)(sod / 3600));
        *o++ = ':';
        o = put2(o, (unsigned)(sod / 60 % 60));
        *o++ = ':';
        o = put2(o, (unsigned)(sod % 60));
        *o++ = 'Z';
        return (size_t)(o - out);
    }
    /* gmtime_r would take glibc's time zone lock; fill struct tm ourselves. */
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = (int)(y - 1900);
    tm.tm_mon = (int)mo - 1;
    tm.tm_mday = (int)da;
    tm.tm_hour = (int)(sod / 3600);
    tm.tm_min = (int)(sod / 60 % 60);
    tm.tm_sec = (int)(sod % 60);
    tm.tm_wday = (int)(((days % 7) + 11) % 7);
    tm.tm_yday = (int)(days - tz_days_from_civil(y, 1, 1));
    tm.tm_isdst = 0;
    tm.tm_gmtoff = 0;
    tm.tm_zone = "UTC";
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    return strftime(out, cap, fmt, &tm);
#pragma GCC diagnostic pop
}

size_t mapping_format_time(const struct mapping *mp, int64_t t, char *out, size_t cap)
{
    return mp_time_format(t, mp->date_format, mp->iso_default, out, cap);
}
