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

/* Decimal text of v, no terminator, into `out` (room for NUM_U64_DIGITS
 * bytes, or one more for the '-' of the signed form); returns its length.
 * What snprintf("%llu") writes, at a small fraction of its cost: the ACK
 * builder and the mapping engine format numbers for every message. */
#define NUM_U64_DIGITS 20
size_t num_format_u64(char *out, uint64_t v);
size_t num_format_i64(char *out, int64_t v);
/* v as exactly `width` digits, zero-padded (the high digits of a value that
 * does not fit are dropped): the fixed-width fields of HL7 timestamps. */
void num_format_fixed(char *out, unsigned v, unsigned width);

#endif
