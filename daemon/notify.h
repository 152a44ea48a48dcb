/* notify — tells the service manager how the daemon is doing.
 *
 * The systemd notification protocol (sd_notify(3)), spoken directly: each
 * state change is one datagram of `KEY=VALUE` lines to the AF_UNIX socket
 * named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace), so
 * no libsystemd is needed.  Without $NOTIFY_SOCKET every call is a no-op.
 *
 * $WATCHDOG_USEC (with $WATCHDOG_PID, when set, naming this process) asks
 * for a WATCHDOG=1 keep-alive more often than that; the daemon sends one at
 * half the interval from a timer on its event loop, and only while the store
 * writer is not stuck, so a hung loop or writer gets the service restarted.
 *
 * Main thread only (the one that runs the event loop). */
#ifndef DAEMON_NOTIFY_H
#define DAEMON_NOTIFY_H

#include <stdint.h>

struct notify; /* opaque */

/* Reads the environment.  Returns NULL when there is no (usable)
 * $NOTIFY_SOCKET; every function below accepts NULL. */
struct notify *notify_new(void);
void notify_free(struct notify *n);

/* Sends `text` ("READY=1\nSTATUS=…") as one datagram.  Returns 0, or -1
 * (logged once; the service manager being gone is not fatal). */
int notify_send(struct notify *n, const char *text);
/* printf-style notify_send. */
int notify_sendf(struct notify *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The watchdog interval the manager asked for, in microseconds; 0 when none. */
uint64_t notify_watchdog_usec(const struct notify *n);

#endif
