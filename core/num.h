/* The one bounds-checked number parser for wire and config data: explicit
 * length, no locale, no sign surprises, overflow detected. */
#ifndef CORE_NUM_H
#define CORE_NUM_H

#include <stddef.h>
#include <stdint.h>

/* Parses exactly `len` bytes of ASCII decimal digits into *out.  Returns 0, or
 * -1 on an empty input, a non-digit or a value above `max`. */
int num_parse_u64(const uint8_t *p, size_t len, uint64_t max, uint64_t *out)
    __attribute__((warn_unused_result));
/* Same for an optional leading '-' or '+'. */
int num_parse_i64(const uint8_t *p, size_t len, int64_t min, int64_t max, int64_t *out)
    __attribute__((warn_unused_result));

#endif
