/* Time zones from the system tz database (TZDIR or /usr/share/zoneinfo),
 * read without touching TZ or libc's zone state.
 *
 * A loaded zone is immutable and may be shared by threads.  Used by the
 * mapping rules for date-times without an offset and by the SMS sink for a
 * clinic's local time. */
#ifndef CORE_TZ_H
#define CORE_TZ_H

#include <stddef.h>
#include <stdint.h>

struct tz; /* opaque: transitions + POSIX rule for later years */

/* Loads zone `name` ("America/Chicago"); NULL, "", "UTC" give UTC.  Returns
 * an owned zone, or NULL with a message in why[].  Any thread; opens a
 * file. */
struct tz *tz_load(const char *name, char *why, size_t cap);
void tz_free(struct tz *tz); /* NULL is a no-op */
/* UTC offset (seconds east) in force at UTC instant t. */
int32_t tz_offset_at(const struct tz *tz, int64_t t);
/* UTC instant of local civil time `local` (seconds since the epoch as if
 * UTC); a time in a spring-forward gap moves forward by the gap, an
 * ambiguous fall-back time takes the earlier instant. */
int64_t tz_local_to_utc(const struct tz *tz, int64_t local);

/* Proleptic Gregorian calendar helpers. */
int64_t tz_days_from_civil(int64_t y, unsigned m, unsigned d);
void tz_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);
int tz_is_leap(int64_t y);
unsigned tz_days_in_month(int64_t y, unsigned m);

#endif
