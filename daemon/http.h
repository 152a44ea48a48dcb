/* The monitoring endpoint and the machinery behind it.
 *
 *   /metrics  Prometheus text exposition format
 *   /status   JSON: per listener, per sender, queues, store, sinks, health
 *   /healthz  200 while the process serves requests
 *   /readyz   200 when the store is writable and no sink has failed longer
 *             than metrics.thresholds.sink_failing; 503 otherwise
 *   /         a small self-refreshing HTML page
 *
 * http_monitor_new creates the counters (struct stats) and hands them to the
 * ingest pipeline, registers a one-second sampler on the network loop,
 * starts a monitor thread (thresholds → `degraded`, daily totals into the
 * store every STATS flush period) and the HTTP server thread.
 *
 * Threads: new/free from the thread that runs the network loop, with the
 * loop not running (start-up, after loop_run returned). */
#ifndef DAEMON_HTTP_H
#define DAEMON_HTTP_H

#include <stddef.h>

#include "config/config.h"
#include "core/loop.h"
#include "daemon/ingest.h"
#include "store/store.h"

struct http_monitor; /* opaque */

/* Flush period of the daily totals, and the sampler / monitor period. */
#define HTTP_DAILY_FLUSH_MS 10000
#define HTTP_TICK_MS        1000

/* Borrows everything (all must outlive the monitor).  Binds
 * cfg->metrics.host:port.  Returns NULL with a message in errbuf (bind
 * failure, store, memory). */
struct http_monitor *http_monitor_new(struct loop *l, struct ingest *in, struct store *st,
                                      const struct config *cfg, char *errbuf, size_t errcap);
/* Reports the audit sink's state (borrowed: it must outlive the monitor,
 * or be unset with NULL before it stops).  Any thread. */
struct sink_audit;
void http_monitor_set_audit(struct http_monitor *m, const struct sink_audit *a);
struct sink_sms;
/* The SMS sink whose figures /status, /metrics and / show (borrowed). */
void http_monitor_set_sms(struct http_monitor *m, const struct sink_sms *sm);
/* Stops serving, writes the last daily totals, detaches the counters from
 * the ingest pipeline and frees.  NULL is a no-op. */
void http_monitor_free(struct http_monitor *m);

#endif
