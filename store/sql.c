/* store/sql — helpers shared by the store's connections (see sql.h). */
#include "store/sql.h"

#include "core/clock.h"

#include <string.h>
#include <time.h>

int store_sql_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

void store_sql_text(sqlite3_stmt *st, int i, char *out, size_t cap)
{
    if (cap == 0)
        return;
    const unsigned char *p = sqlite3_column_text(st, i);
    if (!p) {
        out[0] = '\0';
        return;
    }
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && (p[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(out, p, n);
    out[n] = '\0';
}

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
