/* The monitoring endpoint: /metrics, /status, /healthz, /readyz and the HTML
 * page, plus the two periodic jobs that feed them.
 *
 * Three places, three threads:
 *  - a one-second timer on the network loop copies the figures only that
 *    thread may read (MLLP server, store producer side, ingest totals) into
 *    the stats gauges — a struct copy under the stats lock;
 *  - the monitor thread (one second) turns counters and gauges into the
 *    health (NACK rate over the window, queue depth, sink failures, store
 *    writability), logs each change of the `degraded` state, and every
 *    HTTP_DAILY_FLUSH_MS — and when the local date changes, and at the end —
 *    adds the counts since the last flush to the store's daily totals; it is
 *    the only thread here that waits on SQLite;
 *  - libmicrohttpd's own thread answers requests from a snapshot.
 * The network thread therefore never renders, never blocks on the HTTP
 * clients and never touches SQLite for monitoring.
 *
 * The listening socket is bound here rather than by libmicrohttpd so that a
 * failure to bind gives the operator errno text at start-up. */
#include "daemon/http.h"
#include "daemon/browse.h"
#include "daemon/cli.h"
#include "daemon/http_guard.h"
#include "core/fsutil.h"
#include "core/net.h"
#include "sinks/sms.h"
#include "daemon/stats.h"

#include "core/clock.h"
#include "core/log.h"
#include "core/num.h"
#include "mllp/mllp.h"
#include "sinks/sinks.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define HTTP_MAX_CONNECTIONS 64
#define HTTP_MAX_PER_IP      16
#define HTTP_TIMEOUT_S       10
/* The most one request may take, headers to last byte, however its bytes
 * trickle in (HTTP_TIMEOUT_S alone restarts with each byte). */
#define HTTP_REQUEST_DEADLINE_MS 10000
#define HTTP_BODY_MAX        (32u << 20)

struct http_monitor {
    struct loop *loop;
    struct ingest *in;
    struct store *store;
    const struct config *cfg;
    struct stats *stats;
    struct store_daily *daily;
    char *store_dir;
    int timerfd;
    int listen_fd;
    struct MHD_Daemon *mhd;
    struct http_guard *guard; /* deadlines and room for new connections */

    /* Monitor thread. */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;

    const struct sink_audit *audit;
    const struct sink_sms *sms; /* guarded by mu; NULL: not reporting */

    /* Monitor-thread state. */
    struct { uint64_t acks, nacks; } *ring; /* one sample per tick */
    size_t ring_cap, ring_n, ring_pos;
    unsigned degraded;
    int store_failing;
    uint64_t last_reconnects;
    uint64_t last_commits, last_failures;
    struct stats_counts *flushed;    /* per series: what the daily totals already have */
    struct store_daily_row *rows;    /* flush scratch, one per (listener, sender) */
    int16_t (*row_of)[STATS_MAX_SENDERS];
    char day[11];
    uint64_t next_flush_ms;
    int flush_failing;
    struct {
        uint64_t retries, failures, token_failures;
        int64_t last_success_ms;
        int64_t failing_since_ms;
    } audit_seen;
    struct {
        uint64_t failed, retries;
        int64_t last_success_ms;
        int64_t failing_since_ms;
    } sms_seen;
};

/* ---- network thread: gauges --------------------------------------------- */

static void sample(struct http_monitor *m)
{
    struct stats_gauges g;
    memset(&g, 0, sizeof g);
    struct mllp_server *srv = ingest_server(m->in);
    g.updated_ms = clock_wall_ms();
    mllp_server_get_stats(srv, &g.mllp);
    g.connections = mllp_server_conn_count(srv);
    g.acks_pending = mllp_server_inflight(srv);
    g.store_queue = store_pending(m->store);
    store_get_stats(m->store, &g.store);
    ingest_get_stats(m->in, &g.ingest);
    g.n_cluster = store_cluster_nodes(m->store, g.cluster, STORE_CLUSTER_MAX);
    stats_set_gauges(m->stats, &g);
}

static void timer_cb(void *ud, int fd, unsigned ev)
{
    (void)ev;
    uint64_t n;
    ssize_t rd = read(fd, &n, sizeof n);
    (void)rd;
    sample(ud);
}

/* ---- monitor thread ----------------------------------------------------- */

/* ---- SINK STATS HOOK ------------------------------------------------------
 * One struct stats_sink per sink: name, type, state, rows_pending, blocks_*,
 * retries, token_renewals, sent/failed/skipped (SMS), last_success_ms,
 * failing_since_ms (0 while not failing) and last_error (no PHI).  The
 * sink_failing threshold, /readyz and every rendering use them.  The audit
 * sink reports through sink_audit_get_stats, the SMS sink through
 * sink_sms_get_stats (any thread).
 *
 * The audit sink has no "failing since" of its own: it is failing from the
 * first tick at which its retries, failed blocks or token failures grew
 * with no delivery since, until a block is delivered again. */
/* The "failing since" rule both sinks share: a success (a new
 * last_success_ms) clears it; trouble with no success since starts it. */
static int64_t failing_since(int64_t *since, int64_t *seen_success, int64_t last_success_ms,
                             int succeeded, int trouble, int64_t now_ms)
{
    if (succeeded && last_success_ms != *seen_success)
        *since = 0;
    else if (trouble && !*since)
        *since = now_ms;
    *seen_success = last_success_ms;
    return *since;
}

static void audit_sink(struct http_monitor *m, const struct sink_audit *a, struct stats_sink *k,
                       int64_t now_ms)
{
    struct sink_audit_stats as;
    sink_audit_get_stats(a, &as);
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "audit");
    snprintf(k->type, sizeof k->type, "%s",
             m->cfg->sinks.audit.type == CONFIG_AUDIT_PURVIEW ? "purview" : "file");
    k->rows_pending = as.rows_pending;
    k->blocks_sealed = as.blocks_sealed;
    k->blocks_uploading = as.blocks_uploading;
    k->blocks_done = as.blocks_done;
    k->blocks_failed = as.blocks_failed;
    k->retries = as.retries;
    k->token_renewals = as.token_renewals;
    k->last_success_ms = as.last_success_ms;
    snprintf(k->last_error, sizeof k->last_error, "%s", as.last_error);

    __typeof__(m->audit_seen) *seen = &m->audit_seen;
    int trouble = as.retries > seen->retries || as.failures > seen->failures ||
                  as.token_failures > seen->token_failures;
    k->failing_since_ms = failing_since(&seen->failing_since_ms, &seen->last_success_ms,
                                       as.last_success_ms, 1, trouble, now_ms);
    seen->retries = as.retries;
    seen->failures = as.failures;
    seen->token_failures = as.token_failures;
    snprintf(k->state, sizeof k->state, "%s",
             k->failing_since_ms ? "failing"
             : as.blocks_uploading ? "uploading"
             : as.rows_pending ? "pending" : "idle");
}

/* The SMS sink: failing from the first tick at which failures or retries
 * grew with no text sent since, or at once when halted by a 401. */
static void sms_sink(struct http_monitor *m, const struct sink_sms *sm, struct stats_sink *k,
                     int64_t now_ms)
{
    struct sink_sms_stats ss;
    sink_sms_get_stats(sm, &ss);
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "sms");
    snprintf(k->type, sizeof k->type, "%s",
             m->cfg->sinks.sms.type == CONFIG_SMS_ACS ? "acs" : "file");
    k->rows_pending = ss.texts_pending;
    k->retries = ss.retries;
    k->sent = ss.sent;
    k->failed = ss.failed;
    for (unsigned i = 0; i < SINK_SMS_SKIP_N; i++)
        k->skipped += ss.skipped[i];
    k->last_success_ms = ss.last_success_ms;
    snprintf(k->last_error, sizeof k->last_error, "%s", ss.last_error);
    __typeof__(m->sms_seen) *seen = &m->sms_seen;
    int trouble = ss.halted || ss.failed > seen->failed || ss.retries > seen->retries;
    k->failing_since_ms = failing_since(&seen->failing_since_ms, &seen->last_success_ms,
                                       ss.last_success_ms, !ss.halted, trouble, now_ms);
    seen->failed = ss.failed;
    seen->retries = ss.retries;
    snprintf(k->state, sizeof k->state, "%s",
             ss.halted ? "halted" : k->failing_since_ms ? "failing"
             : ss.texts_pending ? "pending" : "idle");
}

static size_t collect_sinks(struct http_monitor *m, struct stats_sink *out, size_t cap,
                            int64_t now_ms)
{
    pthread_mutex_lock(&m->mu);
    const struct sink_audit *a = m->audit;
    const struct sink_sms *sm = m->sms;
    pthread_mutex_unlock(&m->mu);
    size_t n = 0;
    if (a && n < cap)
        audit_sink(m, a, &out[n++], now_ms);
    if (sm && n < cap)
        sms_sink(m, sm, &out[n++], now_ms);
    return n;
}
/* ---- end of SINK STATS HOOK ---------------------------------------------- */

static int64_t free_disk_mb(const struct http_monitor *m)
{
    struct statvfs vf;
    if (statvfs(m->store_dir, &vf) != 0)
        return -1;
    return (int64_t)(((uint64_t)vf.f_bavail * (uint64_t)vf.f_frsize) >> 20);
}

static void local_day(int64_t wall_ms, char out[11])
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(out, 11, "%Y-%m-%d", &tm) != 10)
        snprintf(out, 11, "0000-00-00");
}

static void sub_counts(struct stats_counts *d, const struct stats_counts *a,
                       const struct stats_counts *b)
{
    d->received = a->received - b->received;
    d->duplicates = a->duplicates - b->duplicates;
    for (unsigned i = 0; i < STATS_ACK_CODES; i++)
        d->acks[i] = a->acks[i] - b->acks[i];
}

/* Adds the counts since the last successful flush to the daily totals of
 * `day`.  On failure nothing is marked flushed: the next flush retries. */
static void flush_daily(struct http_monitor *m, const char *day)
{
    struct stats_snapshot *s = stats_snapshot_new(m->stats);
    if (!s)
        return;
    size_t n_rows = 0;
    for (size_t l = 0; l < s->n_listeners; l++)
        for (size_t k = 0; k < STATS_MAX_SENDERS; k++)
            m->row_of[l][k] = -1;
    for (size_t i = 0; i < s->n_series; i++) {
        const struct stats_series *se = &s->series[i];
        struct stats_counts d;
        sub_counts(&d, &se->c, &m->flushed[i]);
        if (!d.received && !stats_acks(&d))
            continue;
        int16_t r = m->row_of[se->listener][se->sender];
        if (r < 0) {
            r = (int16_t)n_rows++;
            m->row_of[se->listener][se->sender] = r;
            struct store_daily_row *row = &m->rows[r];
            memset(row, 0, sizeof *row);
            memcpy(row->day, day, sizeof row->day);
            row->listener = s->listeners[se->listener];
            row->sender = s->senders[se->sender];
        }
        struct store_daily_row *row = &m->rows[r];
        row->received += d.received;
        row->duplicates += d.duplicates;
        for (unsigned c = 0; c < STATS_ACK_CODES; c++)
            row->acks[c] += d.acks[c];
    }
    char err[256];
    if (store_daily_add(m->daily, m->rows, n_rows, err, sizeof err) == 0) {
        for (size_t i = 0; i < s->n_series; i++)
            m->flushed[i] = s->series[i].c;
        if (m->flush_failing)
            log_info("daily_totals_ok", "rows=%zu", n_rows);
        m->flush_failing = 0;
    } else if (!m->flush_failing) {
        log_warn("daily_totals_failed", "error=\"%s\" retry_ms=%d", err, HTTP_DAILY_FLUSH_MS);
        m->flush_failing = 1;
    }
    stats_snapshot_free(s);
}

static void log_degraded(unsigned was, unsigned now, const struct stats_health *h)
{
    char list[128];
    size_t o = 0;
    list[0] = '\0';
    for (unsigned i = 0; i < STATS_DEG_COUNT; i++) {
        if (now & (1u << i)) {
            int w = snprintf(list + o, sizeof list - o, "%s%s", o ? "," : "",
                             stats_degraded_name(i));
            if (w > 0 && (size_t)w < sizeof list - o)
                o += (size_t)w;
        }
    }
    if (now && now != was)
        log_warn("degraded", "conditions=%s window_acks=%" PRIu64 " window_nacks=%" PRIu64
                 " nack_percent_max=%u queue_depth_max=%u ready=%d",
                 list, h->window_acks, h->window_nacks, h->nack_percent, h->queue_depth,
                 h->ready);
    else if (!now && was)
        log_info("degraded_cleared", "ready=%d", h->ready);
}

static void evaluate(struct http_monitor *m, int64_t now_ms)
{
    const struct config *c = m->cfg;
    struct stats_health h;
    memset(&h, 0, sizeof h);
    h.nack_percent = c->metrics.thresholds.nack_percent;
    h.queue_depth = c->metrics.thresholds.queue_depth;
    h.sink_failing_s = c->metrics.thresholds.sink_failing_s;

    /* NACK share over the window: one sample per tick in a ring. */
    uint64_t acks, nacks;
    stats_totals(m->stats, &acks, &nacks);
    m->ring[m->ring_pos].acks = acks;
    m->ring[m->ring_pos].nacks = nacks;
    if (m->ring_n < m->ring_cap)
        m->ring_n++;
    size_t oldest = (m->ring_pos + m->ring_cap - (m->ring_n - 1)) % m->ring_cap;
    m->ring_pos = (m->ring_pos + 1) % m->ring_cap;
    h.window_s = (uint64_t)(m->ring_n - 1) * HTTP_TICK_MS / 1000;
    h.window_acks = acks - m->ring[oldest].acks;
    h.window_nacks = nacks - m->ring[oldest].nacks;
    if (h.nack_percent && h.window_acks >= c->metrics.thresholds.nack_min_messages &&
        h.window_nacks * 100 > (uint64_t)h.nack_percent * h.window_acks)
        h.degraded |= STATS_DEG_NACK_RATE;

    struct stats_gauges g;
    stats_get_gauges(m->stats, &g);
    if (h.queue_depth && g.store_queue >= h.queue_depth)
        h.degraded |= STATS_DEG_QUEUE;

    /* The store: a failed commit makes it unwritable until one succeeds. */
    if (g.store.failures > m->last_failures && g.store.commits == m->last_commits)
        m->store_failing = 1;
    else if (g.store.commits > m->last_commits)
        m->store_failing = 0;
    m->last_failures = g.store.failures;
    m->last_commits = g.store.commits;
    h.free_disk_mb = free_disk_mb(m);
    int disk_low = c->store.min_free_disk_mb && h.free_disk_mb >= 0 &&
                   (uint64_t)h.free_disk_mb < c->store.min_free_disk_mb;
    /* PostgreSQL: unreachable until the writer connects again; a new
     * connection clears an earlier failed commit, so a node the load
     * balancer took out (no traffic) becomes ready again by itself. */
    if (g.store.reconnects > m->last_reconnects)
        m->store_failing = 0;
    m->last_reconnects = g.store.reconnects;
    h.store_writable = !m->store_failing && !disk_low && !g.store.unavailable;
    if (!h.store_writable)
        h.degraded |= STATS_DEG_STORE;

    struct stats_sink sinks[STATS_MAX_SINKS];
    size_t n_sinks = collect_sinks(m, sinks, STATS_MAX_SINKS, now_ms);
    int sink_bad = 0;
    for (size_t i = 0; i < n_sinks; i++) {
        int64_t since = sinks[i].failing_since_ms;
        if (since && h.sink_failing_s && now_ms - since >= (int64_t)h.sink_failing_s * 1000)
            sink_bad = 1;
    }
    stats_set_sinks(m->stats, sinks, n_sinks);
    if (sink_bad)
        h.degraded |= STATS_DEG_SINK;
    h.ready = h.store_writable && !sink_bad;

    log_degraded(m->degraded, h.degraded, &h);
    m->degraded = h.degraded;
    stats_set_health(m->stats, &h);
}

static void tick(struct http_monitor *m)
{
    int64_t now = clock_wall_ms();
    evaluate(m, now);
    char today[11];
    local_day(now, today);
    if (strcmp(today, m->day) != 0) {
        /* What was counted since the last flush belongs (but for at most a
         * tick) to the day that just ended. */
        flush_daily(m, m->day);
        memcpy(m->day, today, sizeof m->day);
        m->next_flush_ms = clock_mono_ms() + HTTP_DAILY_FLUSH_MS;
    } else if (clock_mono_ms() >= m->next_flush_ms) {
        flush_daily(m, m->day);
        m->next_flush_ms = clock_mono_ms() + HTTP_DAILY_FLUSH_MS;
    }
}

static void *monitor_main(void *arg)
{
    struct http_monitor *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += HTTP_TICK_MS / 1000;
        while (!m->stop && pthread_cond_timedwait(&m->cv, &m->mu, &ts) == 0)
            ;
        if (m->stop)
            break;
        pthread_mutex_unlock(&m->mu);
        if (m->guard)
            http_guard_sweep(m->guard, clock_mono_ms());
        tick(m);
        pthread_mutex_lock(&m->mu);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ---- HTTP thread ----------------------------------------------------------- */

__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (msg[i] == '"' || (unsigned char)msg[i] < 0x20)
            msg[i] = '\'';
    log_warn("http_error", "error=\"%s\"", msg);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             void *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (strncmp(type, "text/html", 9) == 0) {
        /* The page is self-contained: inline style, no script, no fetches. */
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'none'; style-src 'unsafe-inline'; "
                                "frame-ancestors 'none'");
        MHD_add_response_header(r, "X-Frame-Options", "DENY");
    }
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, "Allow", "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    char tmp[512];
    size_t n = strlen(text);
    if (n >= sizeof tmp)
        n = sizeof tmp - 1;
    memcpy(tmp, text, n);
    return reply(conn, status, "text/plain; charset=utf-8", tmp, n);
}

enum page { PAGE_METRICS, PAGE_STATUS, PAGE_HTML };

static enum MHD_Result reply_page(struct http_monitor *m, struct MHD_Connection *conn,
                                  enum page p)
{
    struct stats_snapshot *s = stats_snapshot_new(m->stats);
    struct buf out;
    buf_init(&out, HTTP_BODY_MAX);
    int rc = -1;
    if (s) {
        switch (p) {
        case PAGE_METRICS: rc = stats_render_prometheus(s, &out); break;
        case PAGE_STATUS: rc = stats_render_json(s, &out); break;
        case PAGE_HTML: rc = stats_render_html(s, &out); break;
        }
    }
    enum MHD_Result r;
    if (rc != 0) {
        r = reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render\n");
    } else {
        static const char *const types[] = {
            [PAGE_METRICS] = "text/plain; version=0.0.4; charset=utf-8",
            [PAGE_STATUS] = "application/json",
            [PAGE_HTML] = "text/html; charset=utf-8",
        };
        r = reply(conn, MHD_HTTP_OK, types[p], buf_data(&out), out.len);
    }
    buf_release(&out);
    stats_snapshot_free(s);
    return r;
}

static enum MHD_Result reply_ready(struct http_monitor *m, struct MHD_Connection *conn)
{
    struct stats_snapshot *s = stats_snapshot_new(m->stats);
    if (!s)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    char text[256];
    size_t o = (size_t)snprintf(text, sizeof text, "%s", s->h.ready ? "ready" : "not ready");
    for (unsigned i = 0; i < STATS_DEG_COUNT && o < sizeof text; i++)
        if (s->h.degraded & (1u << i))
            o += (size_t)snprintf(text + o, sizeof text - o, " %s", stats_degraded_name(i));
    if (o < sizeof text - 1) {
        text[o++] = '\n';
        text[o] = '\0';
    }
    unsigned status = s->h.ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
    stats_snapshot_free(s);
    return reply_text(conn, status, text);
}

/* ---- /messages: the message browser's search, metadata only ------------- */

#define HTTP_MESSAGES_MAX 1000

struct msg_page {
    struct buf *out;
    int json;
    int rc;
};

static int html_cell(struct buf *out, const char *s)
{
    return buf_append_str(out, "<td>") | stats_html_escape(s, strlen(s), out) |
           buf_append_str(out, "</td>");
}

static int page_entry(void *ud, const struct store_browse_entry *e)
{
    struct msg_page *mp = ud;
    if (mp->json) {
        json_t *o = browse_entry_json(e);
        char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
        mp->rc |= !t || buf_append_str(mp->out, t) || buf_append_str(mp->out, "\n");
        free(t);
        json_decref(o);
        return mp->rc ? -1 : 0;
    }
    char recv[32], dlv[32], sender[260], type[40], rows[24], err[64];
    browse_time(e->received_ms, recv, sizeof recv);
    browse_time(e->delivered_ms, dlv, sizeof dlv);
    browse_sender(e, sender, sizeof sender);
    browse_type(e, type, sizeof type);
    snprintf(rows, sizeof rows, e->rows >= 0 ? "%lld" : "-", (long long)e->rows);
    if (e->err_code)
        snprintf(err, sizeof err, "ERR %d %s: ", e->err_code, e->err_where);
    else
        err[0] = '\0';
    char reason[400];
    snprintf(reason, sizeof reason, "%s%s%s%s", err, e->reason,
             e->reprocessed[0] ? " (reprocessed as " : "", e->reprocessed[0] ? e->reprocessed : "");
    if (e->reprocessed[0])
        snprintf(reason + strlen(reason), sizeof reason - strlen(reason), ")");
    const char *cells[] = { e->id, recv, e->listener, e->peer, sender, type,
                            e->control_id[0] ? e->control_id : "-", e->ack[0] ? e->ack : "-",
                            e->status, rows, dlv, reason };
    int rc = buf_append_str(mp->out, "<tr>");
    for (size_t i = 0; i < sizeof cells / sizeof cells[0]; i++)
        rc |= html_cell(mp->out, cells[i]);
    rc |= buf_append_str(mp->out, "</tr>\n");
    mp->rc |= rc;
    return rc ? -1 : 0;
}

static enum MHD_Result reply_messages(struct http_monitor *m, struct MHD_Connection *conn)
{
    struct browse_filter_args fa;
    memset(&fa, 0, sizeof fa);
    fa.f.limit = 100;
    static const char *const crit[] = { "control_id", "sender", "type", "since", "until" };
    for (size_t i = 0; i < sizeof crit / sizeof crit[0]; i++) {
        const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, crit[i]);
        if (v && v[0] && browse_filter_set(&fa, crit[i], v) < 0)
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "bad search value\n");
    }
    const char *st = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "status");
    if (st && st[0]) {
        int sv = store_browse_status_parse(st);
        if (sv < 0)
            return reply_text(conn, MHD_HTTP_BAD_REQUEST, "unknown status\n");
        fa.f.status = (enum store_browse_status)sv;
    }
    const char *lim = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (lim && lim[0] &&
        (num_parse_u64((const uint8_t *)lim, strlen(lim), HTTP_MESSAGES_MAX, &fa.f.limit) != 0 ||
         fa.f.limit == 0))
        return reply_text(conn, MHD_HTTP_BAD_REQUEST, "limit is 1..1000\n");
    const char *fmt = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "format");
    int json = fmt && strcmp(fmt, "json") == 0;

    char err[512];
    struct store_opts where = {0};
    run_store_where(m->cfg, &where);
    struct store_browser *b = store_browser_open(&where, 0, err, sizeof err);
    if (!b)
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "store not readable\n");
    struct buf out;
    buf_init(&out, HTTP_BODY_MAX);
    struct msg_page mp = { &out, json, 0 };
    if (!json) {
        mp.rc |= buf_append_str(&out,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>hl7bridge messages"
            "</title><style>body{font-family:sans-serif;font-size:13px}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style>"
            "</head><body><h1>Messages</h1><p><a href=\"/\">status</a> &middot; metadata "
            "only; <code>hl7bridge show ID</code> for one message</p>"
            "<form method=\"get\" action=\"/messages\">"
            "control id <input name=\"control_id\" size=\"12\"> "
            "sender <input name=\"sender\" size=\"14\" placeholder=\"APP^FAC\"> "
            "type <input name=\"type\" size=\"8\" placeholder=\"ADT^A01\"> "
            "since <input name=\"since\" size=\"16\" placeholder=\"2h\"> "
            "until <input name=\"until\" size=\"16\"> "
            "status <select name=\"status\"><option value=\"\">any</option>"
            "<option>accepted</option><option>undelivered</option><option>filtered</option>"
            "<option>quarantined</option><option>rejected</option><option>duplicate</option>"
            "</select> <input type=\"submit\" value=\"search\"></form><table><tr><th>id</th>"
            "<th>received</th><th>listener</th><th>peer</th><th>sender</th><th>type</th>"
            "<th>control id</th><th>ack</th><th>status</th><th>rows</th><th>delivered</th>"
            "<th>reason</th></tr>\n");
    }
    int lr = store_browser_list(b, &fa.f, page_entry, &mp, err, sizeof err);
    store_browser_close(b);
    if (!json)
        mp.rc |= buf_append_str(&out, "</table></body></html>\n");
    enum MHD_Result r;
    if (lr < 0 || mp.rc)
        r = reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot search\n");
    else
        r = reply(conn, MHD_HTTP_OK, json ? "application/x-ndjson" : "text/html; charset=utf-8",
                  buf_data(&out), out.len);
    buf_release(&out);
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)version;
    (void)upload_data;
    (void)req_cls;
    struct http_monitor *m = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    if (*upload_data_size)
        return MHD_NO; /* a GET with a body: drop the connection */
    if (strcmp(url, "/metrics") == 0)
        return reply_page(m, conn, PAGE_METRICS);
    if (strcmp(url, "/status") == 0)
        return reply_page(m, conn, PAGE_STATUS);
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0)
        return reply_page(m, conn, PAGE_HTML);
    if (strcmp(url, "/messages") == 0)
        return reply_messages(m, conn);
    if (strcmp(url, "/healthz") == 0)
        return reply_text(conn, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0)
        return reply_ready(m, conn);
    return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

/* ---- lifecycle (loop thread) --------------------------------------------- */


struct http_monitor *http_monitor_new(struct loop *l, struct ingest *in, struct store *st,
                                      const struct config *cfg, char *errbuf, size_t errcap)
{
    struct http_monitor *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(errbuf, errcap, "out of memory");
        return NULL;
    }
    m->loop = l;
    m->in = in;
    m->store = st;
    m->cfg = cfg;
    m->timerfd = -1;
    m->listen_fd = -1;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);

    const char *names[STATS_MAX_LISTENERS];
    size_t n = cfg->n_listeners < STATS_MAX_LISTENERS ? cfg->n_listeners : STATS_MAX_LISTENERS;
    for (size_t i = 0; i < n; i++)
        names[i] = cfg->listeners[i].name;
    m->stats = stats_new(names, n);
    m->ring_cap = cfg->metrics.thresholds.nack_window_s * 1000 / HTTP_TICK_MS + 1;
    m->ring = calloc(m->ring_cap, sizeof *m->ring);
    m->flushed = calloc(STATS_MAX_SERIES, sizeof *m->flushed);
    m->rows = calloc(STATS_MAX_SERIES, sizeof *m->rows);
    m->row_of = calloc(STATS_MAX_LISTENERS, sizeof *m->row_of);
    m->store_dir = fs_dir_of(cfg->store.path);
    if (!m->stats || !m->ring || !m->flushed || !m->rows || !m->row_of || !m->store_dir) {
        snprintf(errbuf, errcap, "out of memory");
        goto fail;
    }
    struct store_opts where = {0};
    run_store_where(cfg, &where);
    m->daily = store_daily_open(&where, errbuf, errcap);
    if (!m->daily)
        goto fail;
    local_day(clock_wall_ms(), m->day);
    m->next_flush_ms = clock_mono_ms() + HTTP_DAILY_FLUSH_MS;

    int family = 0;
    m->listen_fd = net_listen(cfg->metrics.host, cfg->metrics.port, 0, &family, errbuf, errcap);
    if (m->listen_fd < 0)
        goto fail;
    /* The per-address and total limits are the guard's: at a limit it
     * closes the oldest connection instead of refusing the new one.
     * Made before the monitor thread, which sweeps it. */
    m->guard = http_guard_new(HTTP_MAX_CONNECTIONS, HTTP_MAX_PER_IP, HTTP_REQUEST_DEADLINE_MS);
    if (!m->guard) {
        snprintf(errbuf, errcap, "out of memory");
        goto fail;
    }

    /* Figures exist before the first request, and health before the
     * first tick. */
    sample(m);
    evaluate(m, clock_wall_ms());

    m->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec its = {
        .it_interval = { HTTP_TICK_MS / 1000, (HTTP_TICK_MS % 1000) * 1000000L },
        .it_value = { HTTP_TICK_MS / 1000, (HTTP_TICK_MS % 1000) * 1000000L },
    };
    if (m->timerfd < 0 || timerfd_settime(m->timerfd, 0, &its, NULL) != 0 ||
        loop_add(l, m->timerfd, LOOP_READ, timer_cb, m) != 0) {
        int e = errno;
        snprintf(errbuf, errcap, "timer: %s", strerror(e));
        if (m->timerfd >= 0)
            close(m->timerfd);
        m->timerfd = -1;
        goto fail;
    }
    int rc = pthread_create(&m->thread, NULL, monitor_main, m);
    if (rc != 0) {
        snprintf(errbuf, errcap, "monitor thread: %s", strerror(rc));
        goto fail;
    }
    m->thread_started = 1;

    unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    m->mhd = MHD_start_daemon(flags, 0, http_guard_accept, m->guard, on_request, m,
                              MHD_OPTION_LISTEN_SOCKET, (MHD_socket)m->listen_fd,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                              MHD_OPTION_CONNECTION_LIMIT, http_guard_table_size(m->guard),
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
                              MHD_OPTION_NOTIFY_CONNECTION, http_guard_notify, m->guard,
                              MHD_OPTION_NOTIFY_COMPLETED, http_guard_completed, m->guard,
                              MHD_OPTION_END);
    if (!m->mhd) {
        snprintf(errbuf, errcap, "cannot start the HTTP server on %s", cfg->metrics.address);
        goto fail;
    }
    m->listen_fd = -1; /* libmicrohttpd owns it now */
    ingest_set_stats(in, m->stats);
    return m;
fail:
    http_monitor_free(m);
    return NULL;
}

void http_monitor_set_audit(struct http_monitor *m, const struct sink_audit *a)
{
    pthread_mutex_lock(&m->mu);
    m->audit = a;
    pthread_mutex_unlock(&m->mu);
}

void http_monitor_set_sms(struct http_monitor *m, const struct sink_sms *sm)
{
    pthread_mutex_lock(&m->mu);
    m->sms = sm;
    pthread_mutex_unlock(&m->mu);
}

void http_monitor_free(struct http_monitor *m)
{
    if (!m)
        return;
    if (m->mhd)
        MHD_stop_daemon(m->mhd);
    if (m->listen_fd >= 0)
        close(m->listen_fd);
    if (m->thread_started) {
        pthread_mutex_lock(&m->mu);
        m->stop = 1;
        pthread_cond_signal(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->thread, NULL);
    }
    if (m->timerfd >= 0) {
        loop_del(m->loop, m->timerfd);
        close(m->timerfd);
    }
    if (m->in && m->stats)
        ingest_set_stats(m->in, NULL);
    /* Everything answered is counted by now (the loop has stopped). */
    if (m->daily && m->stats && m->thread_started)
        flush_daily(m, m->day);
    store_daily_close(m->daily);
    stats_free(m->stats);
    http_guard_free(m->guard); /* the server and the monitor thread are gone */
    free(m->ring);
    free(m->flushed);
    free(m->rows);
    free(m->row_of);
    free(m->store_dir);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
}
