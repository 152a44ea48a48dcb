/* http_guard — what slow clients may hold on the monitoring port.
 *
 * libmicrohttpd's connection timeout restarts with every byte, so a client
 * sending one byte every few seconds keeps its connection for ever, and
 * sixteen of them from one address filled the per-address limit: /healthz
 * went unanswered.  The guard gives every request a whole deadline (from
 * the connection's start, or from the end of its previous request) and,
 * when an address (or the server) is at its limit, makes room for a new
 * connection by closing that address's (or the server's) oldest one rather
 * than refusing the newcomer: a flood of slow clients then pushes itself
 * out, and a health check, which takes milliseconds, gets its answer.
 *
 * Closing is shutdown(2) on the connection's socket; libmicrohttpd then
 * sees the end of the stream and frees the connection in its own thread.
 *
 * Threads: the callbacks run on libmicrohttpd's thread, http_guard_sweep on
 * any other; one mutex. */
#ifndef DAEMON_HTTP_GUARD_H
#define DAEMON_HTTP_GUARD_H

#include <microhttpd.h>
#include <stdint.h>
#include <sys/socket.h>

struct http_guard; /* opaque */

/* max_conns: connections served at once; max_per_ip: from one address;
 * deadline_ms: the most one request may take, headers to last byte.
 * Returns NULL when out of memory. */
struct http_guard *http_guard_new(unsigned max_conns, unsigned max_per_ip, uint64_t deadline_ms);
/* After MHD_stop_daemon.  http_guard_free(NULL) is a no-op. */
void http_guard_free(struct http_guard *g);
/* The connection limit to give libmicrohttpd: max_conns plus room for the
 * connections closed but not yet freed. */
unsigned http_guard_table_size(const struct http_guard *g);

/* libmicrohttpd callbacks, `cls` = the guard: MHD_start_daemon's accept
 * policy, MHD_OPTION_NOTIFY_CONNECTION and MHD_OPTION_NOTIFY_COMPLETED. */
enum MHD_Result http_guard_accept(void *cls, const struct sockaddr *addr, socklen_t len);
void http_guard_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code);
void http_guard_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                          enum MHD_RequestTerminationCode toe);

/* Closes every connection whose request has passed the deadline; returns
 * how many.  Call about once a second. */
unsigned http_guard_sweep(struct http_guard *g, uint64_t now_ms);

#endif
