/* The daemon's local control socket: a Unix stream socket in the store's
 * directory (hl7bridge.ctl, mode 0600, only the daemon's own user or root
 * may talk to it, checked with SO_PEERCRED), through which `hl7bridge
 * reprocess` has the running daemon reprocess messages with the rules it
 * has loaded.  A file-system socket rather than the metrics endpoint: it is
 * never on the network, needs no token to keep or leak, and its permissions
 * are the store's own.
 *
 * Protocol: the client writes one JSON request line; the daemon answers
 * with one text line per message, then one JSON line ({"ok": …}) and
 * closes.  One request at a time.
 *
 * Threads: ctl_server_start/stop from the main thread; the server runs its
 * own thread. */
#ifndef DAEMON_CTL_H
#define DAEMON_CTL_H

#include <stddef.h>

#include "config/config.h"
#include "daemon/rules.h"

#define CTL_SOCKET_NAME "hl7bridge.ctl"

/* The socket path of configuration c ("<store dir>/hl7bridge.ctl").  0, or
 * -1 when it does not fit a socket address. */
int ctl_socket_path(const struct config *c, char *out, size_t cap);

struct ctl_server;
/* Binds the socket (refusing when another daemon answers on it) and starts
 * the thread.  Borrows live and cfg until ctl_server_stop.  NULL with a
 * message in errbuf. */
struct ctl_server *ctl_server_start(const struct config *cfg, struct rules_live *live,
                                    char *errbuf, size_t errcap);
/* Stops (a request in progress stops at its next message), removes the
 * socket.  NULL is a no-op. */
void ctl_server_stop(struct ctl_server *s);

/* Client: connects to the socket.  fd, or -1 with errno (ENOENT or
 * ECONNREFUSED: no daemon). */
int ctl_connect(const char *path);

#endif
