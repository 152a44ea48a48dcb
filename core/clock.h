/* Time helpers: a monotonic clock for timeouts and latencies, the wall clock
 * for timestamps. */
#ifndef CORE_CLOCK_H
#define CORE_CLOCK_H

#include <stdint.h>

uint64_t clock_mono_ns(void);
static inline uint64_t clock_mono_ms(void) { return clock_mono_ns() / 1000000u; }
/* Wall-clock milliseconds since the Unix epoch. */
int64_t clock_wall_ms(void);

#endif
