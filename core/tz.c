/* Time zones: the system tz database read without touching TZ.
 *
 * A zone is read once, at load, from the system tz database's TZif file
 * (RFC 8536): the 64-bit transition table plus the POSIX TZ footer that
 * governs instants after the last transition (slim TZif files stop early).
 * Conversions are then pure functions of that table: no setenv("TZ"), no
 * process-wide state, no lock, safe from any thread — which matters because
 * glibc's localtime/mktime take a global lock and honour only one zone.
 * The mapping rules read offset-less date-times with it, and the SMS sink
 * shows patients their clinic's local time with it.
 *
 * Local → UTC: a civil time can fall in a spring-forward gap (no instant) or
 * a fall-back overlap (two instants).  Gaps are read with the offset in force
 * before the change (02:30 in a 02:00→03:00 gap becomes 03:30 daylight
 * time); overlaps take the earlier instant (the daylight reading).  Both are
 * documented in docs/mapping.md. */
#include "core/tz.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A POSIX TZ rule date: Jn (1..365, no Feb 29), n (0..365), or Mm.w.d. */
struct tz_date {
    char kind; /* 'J', 'D' or 'M' */
    int n, m, w, d;
    int32_t secs; /* local time of day of the change (may be <0 or >24h) */
};

struct tz_posix {
    int32_t std_off, dst_off; /* seconds east of UTC */
    int has_dst;
    struct tz_date start, end;
};

struct tz {
    int64_t *times;    /* transition instants, ascending */
    int32_t *offs;     /* offset in force from times[i] */
    size_t n;
    int32_t first_off; /* before the first transition */
    int has_rule;
    struct tz_posix rule;
    uint64_t id;       /* unique per load: keys the per-thread window cache */
};

/* The last transition window looked up by this thread: most date-times in a
 * message stream fall in the same window (months between transitions), so
 * this turns four binary searches per conversion into four compares.  Keyed
 * by the zone's load id, not its address, so a zone freed on reload and
 * another allocated at the same place never share an entry. */
static _Atomic uint64_t tz_next_id = 1;
static _Thread_local struct {
    uint64_t id;
    int64_t from, to; /* [from, to) in UTC */
    int32_t off;
} tz_cache;

/* ---- civil calendar (proleptic Gregorian; H. Hinnant's algorithms) ---- */

int64_t tz_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void tz_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

int tz_is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned tz_days_in_month(int64_t y, unsigned m)
{
    static const unsigned dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && tz_is_leap(y) ? 29 : dm[m - 1];
}

/* ---- POSIX TZ footer ----------------------------------------------------- */

static const char *tzp_name(const char *s)
{
    if (*s == '<') {
        while (*s && *s != '>')
            s++;
        return *s ? s + 1 : NULL;
    }
    const char *b = s;
    while ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z'))
        s++;
    return s - b >= 3 ? s : NULL;
}

/* [+-]hh[:mm[:ss]] → seconds; hours up to 167 for rule times. */
static const char *tzp_hms(const char *s, int32_t *out)
{
    int sign = 1;
    if (*s == '+' || *s == '-') {
        sign = *s == '-' ? -1 : 1;
        s++;
    }
    int32_t v = 0, part = 0;
    int digits = 0;
    for (int field = 0; field < 3; field++) {
        part = 0;
        digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 3) {
            part = part * 10 + (*s - '0');
            s++;
            digits++;
        }
        if (!digits)
            return NULL;
        v += part * (field == 0 ? 3600 : field == 1 ? 60 : 1);
        if (*s != ':' || field == 2)
            break;
        s++;
    }
    *out = sign * v;
    return s;
}

static const char *tzp_num(const char *s, int *out)
{
    int v = 0, digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 4) {
        v = v * 10 + (*s - '0');
        s++;
        digits++;
    }
    if (!digits)
        return NULL;
    *out = v;
    return s;
}

static const char *tzp_date(const char *s, struct tz_date *d)
{
    if (*s == 'M') {
        d->kind = 'M';
        if (!(s = tzp_num(s + 1, &d->m)) || *s != '.' || !(s = tzp_num(s + 1, &d->w)) ||
            *s != '.' || !(s = tzp_num(s + 1, &d->d)))
            return NULL;
        if (d->m < 1 || d->m > 12 || d->w < 1 || d->w > 5 || d->d > 6)
            return NULL;
    } else if (*s == 'J') {
        d->kind = 'J';
        if (!(s = tzp_num(s + 1, &d->n)) || d->n < 1 || d->n > 365)
            return NULL;
    } else {
        d->kind = 'D';
        if (!(s = tzp_num(s, &d->n)) || d->n > 365)
            return NULL;
    }
    d->secs = 7200;
    if (*s == '/' && !(s = tzp_hms(s + 1, &d->secs)))
        return NULL;
    return s;
}

static int tzp_parse(const char *s, struct tz_posix *r)
{
    int32_t v;
    memset(r, 0, sizeof *r);
    if (!(s = tzp_name(s)) || !(s = tzp_hms(s, &v)))
        return -1;
    r->std_off = -v; /* POSIX offsets are west-positive */
    if (!*s)
        return 0;
    if (!(s = tzp_name(s)))
        return -1;
    r->has_dst = 1;
    r->dst_off = r->std_off + 3600;
    if (*s && *s != ',') {
        if (!(s = tzp_hms(s, &v)))
            return -1;
        r->dst_off = -v;
    }
    if (*s != ',') /* no rule: US rules are implied by POSIX, unsupported */
        return -1;
    if (!(s = tzp_date(s + 1, &r->start)) || *s != ',' || !(s = tzp_date(s + 1, &r->end)))
        return -1;
    return *s ? -1 : 0;
}

/* Local seconds (as if UTC) at which a rule date happens in `year`. */
static int64_t tzp_when(const struct tz_date *d, int64_t year)
{
    int64_t day;
    if (d->kind == 'J') {
        int n = d->n; /* 1..365, Feb 29 never counted */
        day = tz_days_from_civil(year, 1, 1) + n - 1;
        if (tz_is_leap(year) && n >= 60)
            day++;
    } else if (d->kind == 'D') {
        day = tz_days_from_civil(year, 1, 1) + d->n;
    } else {
        int64_t first = tz_days_from_civil(year, (unsigned)d->m, 1);
        int wd1 = (int)(((first % 7) + 11) % 7); /* 1970-01-01 was a Thursday (4) */
        int delta = (d->d - wd1 + 7) % 7;
        int64_t dom = 1 + delta + (int64_t)(d->w - 1) * 7;
        unsigned dim = tz_days_in_month(year, (unsigned)d->m);
        while (dom > dim)
            dom -= 7;
        day = first + dom - 1;
    }
    return day * 86400 + d->secs;
}

static int32_t tzp_offset_at(const struct tz_posix *r, int64_t t)
{
    if (!r->has_dst)
        return r->std_off;
    int64_t y;
    unsigned mo, da;
    int64_t days = (t + r->std_off) / 86400 - ((t + r->std_off) % 86400 < 0);
    tz_civil_from_days(days, &y, &mo, &da);
    int64_t start = tzp_when(&r->start, y) - r->std_off; /* local std time → UTC */
    int64_t end = tzp_when(&r->end, y) - r->dst_off;     /* local dst time → UTC */
    if (start < end)
        return t >= start && t < end ? r->dst_off : r->std_off;
    return t >= end && t < start ? r->std_off : r->dst_off;
}

/* ---- TZif ---------------------------------------------------------------- */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const uint8_t *p) { return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4)); }

struct tzif_hdr {
    uint32_t isut, isstd, leap, time, type, chr;
};

static int tzif_hdr(const uint8_t *p, size_t len, struct tzif_hdr *h)
{
    if (len < 44 || memcmp(p, "TZif", 4) != 0)
        return -1;
    h->isut = be32(p + 20);
    h->isstd = be32(p + 24);
    h->leap = be32(p + 28);
    h->time = be32(p + 32);
    h->type = be32(p + 36);
    h->chr = be32(p + 40);
    if (h->type == 0 || h->type > 256 || h->time > 100000 || h->leap > 10000 ||
        h->chr > 100000 || h->isut > 256 || h->isstd > 256)
        return -1;
    return 0;
}

static size_t tzif_block(const struct tzif_hdr *h, size_t tsz)
{
    return h->time * tsz + h->time + h->type * 6 + h->chr + h->leap * (tsz + 4) + h->isstd +
           h->isut;
}

static int tzif_parse(const uint8_t *p, size_t len, struct tz *tz)
{
    struct tzif_hdr h;
    if (tzif_hdr(p, len, &h) != 0)
        return -1;
    size_t tsz = 4;
    const uint8_t *body = p + 44;
    size_t left = len - 44;
    if (p[4] >= '2') { /* skip the 32-bit block, use the 64-bit one */
        size_t b1 = tzif_block(&h, 4);
        if (b1 > left)
            return -1;
        body += b1;
        left -= b1;
        if (tzif_hdr(body, left, &h) != 0)
            return -1;
        body += 44;
        left -= 44;
        tsz = 8;
    }
    size_t blk = tzif_block(&h, tsz);
    if (blk > left)
        return -1;
    const uint8_t *times = body;
    const uint8_t *idx = times + h.time * tsz;
    const uint8_t *types = idx + h.time;
    tz->times = calloc(h.time ? h.time : 1, sizeof *tz->times);
    tz->offs = calloc(h.time ? h.time : 1, sizeof *tz->offs);
    if (!tz->times || !tz->offs)
        return -1;
    for (uint32_t i = 0; i < h.time; i++) {
        tz->times[i] = tsz == 8 ? be64(times + i * 8) : (int32_t)be32(times + i * 4);
        if (idx[i] >= h.type)
            return -1;
        tz->offs[i] = (int32_t)be32(types + idx[i] * 6);
    }
    tz->n = h.time;
    tz->first_off = (int32_t)be32(types);
    if (tsz == 8) {
        const uint8_t *foot = body + blk;
        size_t flen = left - blk;
        if (flen >= 2 && foot[0] == '\n') {
            const uint8_t *e = memchr(foot + 1, '\n', flen - 1);
            if (e && e > foot + 1) {
                char s[128];
                size_t n = (size_t)(e - foot - 1);
                if (n < sizeof s) {
                    memcpy(s, foot + 1, n);
                    s[n] = 0;
                    if (tzp_parse(s, &tz->rule) == 0)
                        tz->has_rule = 1;
                }
            }
        }
    }
    return 0;
}

struct tz *tz_load(const char *name, char *why, size_t cap)
{
    struct tz *tz = calloc(1, sizeof *tz);
    if (!tz) {
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    tz->id = atomic_fetch_add(&tz_next_id, 1);
    if (!name || !*name || strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0)
        return tz;
    if (name[0] == '/' || strstr(name, "..") || strlen(name) > 200) {
        snprintf(why, cap, "time_zone '%.200s' is not a zone name", name);
        goto fail;
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, cap, "time_zone '%s': %s (%s)", name, strerror(errno), path);
        goto fail;
    }
    uint8_t *data = malloc(1 << 20);
    size_t len = data ? fread(data, 1, 1 << 20, f) : 0;
    fclose(f);
    int rc = data ? tzif_parse(data, len, tz) : -1;
    free(data);
    if (rc != 0) {
        snprintf(why, cap, "time_zone '%s': not a valid TZif file (%s)", name, path);
        goto fail;
    }
    return tz;
fail:
    tz_free(tz);
    return NULL;
}

void tz_free(struct tz *tz)
{
    if (!tz)
        return;
    free(tz->times);
    free(tz->offs);
    free(tz);
}

int32_t tz_offset_at(const struct tz *tz, int64_t t)
{
    if (tz->n == 0)
        return tz->has_rule ? tzp_offset_at(&tz->rule, t) : tz->first_off;
    if (t < tz->times[0])
        return tz->first_off;
    if (t >= tz->times[tz->n - 1] && tz->has_rule)
        return tzp_offset_at(&tz->rule, t);
    if (tz_cache.id == tz->id && t >= tz_cache.from && t < tz_cache.to)
        return tz_cache.off;
    size_t lo = 0, hi = tz->n; /* last i with times[i] <= t */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (tz->times[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    tz_cache.id = tz->id;
    tz_cache.from = tz->times[lo];
    /* Past the last transition the POSIX rule (handled above) or the last
     * offset applies; the window ends where the table ends either way. */
    tz_cache.to = lo + 1 < tz->n ? tz->times[lo + 1] : tz->times[lo];
    tz_cache.off = tz->offs[lo];
    return tz->offs[lo];
}

int64_t tz_local_to_utc(const struct tz *tz, int64_t local)
{
    if (tz->n == 0 && !tz->has_rule)
        return local - tz->first_off;
    /* Offsets a day either side bracket any single change (zones never
     * change twice within two days). */
    int32_t before = tz_offset_at(tz, local - 86400 - 50400);
    int32_t after = tz_offset_at(tz, local + 86400);
    int64_t ub = local - before, ua = local - after;
    int okb = tz_offset_at(tz, ub) == before;
    int oka = tz_offset_at(tz, ua) == after;
    if (okb && oka)
        return ub < ua ? ub : ua; /* overlap: earlier instant */
    if (okb)
        return ub;
    if (oka)
        return ua;
    return ub; /* gap: read with the offset before the change */
}

