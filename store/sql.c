/* store/busy — a short-poll busy handler (see busy.h for why). */
#include "store/busy.h"

#include "core/clock.h"

#include <time.h>

static int busy_poll(void *arg, int count)
{
    struct store_busy *b = arg;
    uint64_t now = clock_mono_ns();
    if (count == 0)
        b->since_ns = now;
    else if (now - b->since_ns >= (uint64_t)b->timeout_ms * 1000000u)
        return 0;
    struct timespec ts = {0, STORE_BUSY_POLL_US * 1000L};
    nanosleep(&ts, NULL);
    return 1;
}

void store_busy_install(sqlite3 *db, struct store_busy *b, unsigned timeout_ms)
{
    b->since_ns = 0;
    b->timeout_ms = timeout_ms;
    sqlite3_busy_handler(db, busy_poll, b);
}
