/* The public face of the zone reader in tz.c, for modules outside mapping/
 * (the SMS sink): struct mapping_tz is struct mp_tz under its public name. */
#include "mapping/mapping.h"
#include "mapping/mapping_int.h"

struct mapping_tz *mapping_tz_load(const char *name, char *why, size_t cap)
{
    return (struct mapping_tz *)mp_tz_load(name, why, cap);
}

void mapping_tz_free(struct mapping_tz *tz) { mp_tz_free((struct mp_tz *)tz); }

int32_t mapping_tz_offset_at(const struct mapping_tz *tz, int64_t t)
{
    return mp_tz_offset_at((const struct mp_tz *)tz, t);
}

int64_t mapping_tz_local_to_utc(const struct mapping_tz *tz, int64_t local)
{
    return mp_tz_local_to_utc((const struct mp_tz *)tz, local);
}

size_t mapping_format_time(const struct mapping *mp, int64_t t, char *out, size_t cap)
{
    return mp_time_format(t, mp->date_format, mp->iso_default, out, cap);
}
