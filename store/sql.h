/* store/busy — how every long-lived store connection waits for a lock.
 *
 * SQLite's own busy handler sleeps 1, 2, 5, 10 … ms between attempts.  The
 * ingest writer commits every few hundred microseconds and the sinks'
 * connections change batch state just as briefly, so a whole-millisecond
 * sleep made the ingest writer's senders pay for a lock held 200 µs, and
 * let a sink lose the race for the lock to the writer again and again
 * while the writer was busy (uploads stalled during heavy intake).  This
 * handler polls every STORE_BUSY_POLL_US instead, up to the same total.
 *
 * Threads: the state belongs to one connection, used by one thread. */
#ifndef STORE_BUSY_H
#define STORE_BUSY_H

#include <sqlite3.h>
#include <stdint.h>

#define STORE_BUSY_POLL_US 50

struct store_busy {
    uint64_t since_ns;     /* start of the current wait */
    unsigned timeout_ms;   /* give up (SQLITE_BUSY) after this long */
};

/* Installs the handler on db; `b` must outlive the connection. */
void store_busy_install(sqlite3 *db, struct store_busy *b, unsigned timeout_ms);

#endif
