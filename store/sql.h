/* store/sql — what every store connection shares: a one-shot statement,
 * a column copied into a fixed array, and how a connection waits for a lock.
 *
 * The busy handler: SQLite's own sleeps 1, 2, 5, 10 … ms between attempts.
 * The ingest writer commits every few hundred microseconds and the sinks'
 * connections change batch state just as briefly, so a whole-millisecond
 * sleep made the ingest writer's senders pay for a lock held 200 µs, and
 * let a sink lose the race for the lock to the writer again and again
 * while the writer was busy (uploads stalled during heavy intake).  This
 * handler polls every STORE_BUSY_POLL_US instead, up to the same total.
 *
 * Threads: the busy state belongs to one connection, used by one thread. */
#ifndef STORE_SQL_H
#define STORE_SQL_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* Runs SQL without results (BEGIN, PRAGMA, DDL); 0 or -1. */
int store_sql_exec(sqlite3 *db, const char *sql);
/* Copies text column i of the current row into out (cap bytes, always
 * terminated), cut at a UTF-8 character boundary; NULL gives "". */
void store_sql_text(sqlite3_stmt *st, int i, char *out, size_t cap);

#define STORE_BUSY_POLL_US 50

struct store_busy {
    uint64_t since_ns;     /* start of the current wait */
    unsigned timeout_ms;   /* give up (SQLITE_BUSY) after this long */
};

/* Installs the handler on db; `b` must outlive the connection. */
void store_busy_install(sqlite3 *db, struct store_busy *b, unsigned timeout_ms);

#endif
