/* `hl7bridge run`: wires config, store, loop and the ingest pipeline, then
 * runs the network loop on the main thread until SIGTERM/SIGINT.
 *
 * Shutdown drains: listeners close, connections stop reading, every frame
 * already taken is committed and answered, then the store writer is stopped.
 * A second signal, or DRAIN_DEADLINE_MS, cuts the drain short (nothing is
 * lost: unanswered messages were not acknowledged). */
#include "daemon/cli.h"
#include "daemon/ctl.h"
#include "daemon/http.h"
#include "daemon/ingest.h"
#include "daemon/notify.h"
#include "daemon/privs.h"
#include "daemon/rules.h"
#include "daemon/sink_glue.h"
#include "daemon/watch.h"
#include "config/config.h"
#include "core/clock.h"
#include "core/limits.h"
#include "core/log.h"
#include "mllp/mllp.h"
#include "sinks/sms.h"
#include "store/store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_DEADLINE_MS 30000
/* STATUS= refresh for the service manager when it asks for no watchdog. */
#define NOTIFY_STATUS_MS 5000

struct runner {
    const char *config_path;
    int explicit_path;
    const struct config *cur; /* the configuration running now (start-up's or a reload's) */
    struct config *reloaded;  /* owned: the last applied reload's, NULL before */
    struct loop *loop;
    struct ingest *ingest;
    struct rules_live *live;  /* the loaded rules, shared with the control socket */
    struct store *store;
    size_t n_listeners;
    struct notify *notify;      /* NULL: not run by a service manager */
    int notifyfd;               /* keep-alive / STATUS= timer */
    int sigfd, timerfd;
    int stopping;
    uint64_t drain_deadline;
};

static void check_drained(struct runner *r)
{
    if (ingest_drained(r->ingest) || clock_mono_ms() > r->drain_deadline) {
        if (!ingest_drained(r->ingest))
            log_warn("shutdown_deadline", "deadline_ms=%d", DRAIN_DEADLINE_MS);
        loop_stop(r->loop);
    }
}

static void timer_cb(void *ud, int fd, unsigned ev)
{
    (void)ev;
    uint64_t n;
    ssize_t rd = read(fd, &n, sizeof n);
    (void)rd;
    check_drained(ud);
}

/* The one-line state for the service manager's STATUS=.  No PHI: counts. */
static void status_line(const struct runner *r, char *out, size_t cap)
{
    struct ingest_stats is;
    ingest_get_stats(r->ingest, &is);
    uint64_t nacks = is.acks[HL7_ACK_AE] + is.acks[HL7_ACK_AR] + is.acks[HL7_ACK_CE] +
                     is.acks[HL7_ACK_CR];
    uint64_t stalled = store_writer_stalled_ms(r->store, clock_mono_ms());
    int n = snprintf(out, cap, "%s: %zu listener%s, %llu messages, %llu NACKs, store queue %zu",
                     r->stopping ? "stopping" : "ready", r->n_listeners,
                     r->n_listeners == 1 ? "" : "s", (unsigned long long)is.received,
                     (unsigned long long)nacks, store_pending(r->store));
    if (stalled >= 1000 && n > 0 && (size_t)n < cap)
        snprintf(out + n, cap - (size_t)n, ", store writer busy for %llu s",
                 (unsigned long long)(stalled / 1000));
}

/* The keep-alive: from the event loop itself (a hung loop sends none), and
 * only while the store writer has not been on one piece of work for a whole
 * watchdog interval (a wedged commit sends none either). */
static void notify_tick(void *ud, int fd, unsigned ev)
{
    (void)ev;
    struct runner *r = ud;
    uint64_t n;
    ssize_t rd = read(fd, &n, sizeof n);
    (void)rd;
    char status[256];
    status_line(r, status, sizeof status);
    uint64_t wd_ms = notify_watchdog_usec(r->notify) / 1000;
    int alive = store_writer_stalled_ms(r->store, clock_mono_ms()) < (wd_ms ? wd_ms : 1);
    if (wd_ms && alive)
        notify_sendf(r->notify, "WATCHDOG=1\nSTATUS=%s", status);
    else
        notify_sendf(r->notify, "STATUS=%s", status);
}

/* Starts the keep-alive / STATUS= timer: half the watchdog interval, or
 * NOTIFY_STATUS_MS without one.  Returns 0, or -1. */
static int notify_start(struct runner *r)
{
    if (!r->notify)
        return 0;
    uint64_t us = notify_watchdog_usec(r->notify) / 2;
    if (us == 0)
        us = NOTIFY_STATUS_MS * 1000ull;
    struct itimerspec its = {
        .it_interval = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 },
        .it_value = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 },
    };
    r->notifyfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (r->notifyfd < 0 || timerfd_settime(r->notifyfd, 0, &its, NULL) != 0 ||
        loop_add(r->loop, r->notifyfd, LOOP_READ, notify_tick, r) != 0)
        return -1;
    return 0;
}

static void notify_ready(struct runner *r, const char *note)
{
    char status[256];
    status_line(r, status, sizeof status);
    notify_sendf(r->notify, "READY=1\nSTATUS=%s%s", status, note);
}

static void begin_shutdown(struct runner *r, const char *why)
{
    if (r->stopping) {
        log_warn("shutdown_forced", "signal=%s", why);
        loop_stop(r->loop);
        return;
    }
    r->stopping = 1;
    notify_send(r->notify, "STOPPING=1\nSTATUS=stopping: answering what is in flight");
    log_info("shutdown_begin", "signal=%s", why);
    ingest_drain(r->ingest);
    r->drain_deadline = clock_mono_ms() + DRAIN_DEADLINE_MS;
    r->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec its = { .it_interval = { 0, 20000000 }, .it_value = { 0, 20000000 } };
    if (r->timerfd < 0 || timerfd_settime(r->timerfd, 0, &its, NULL) != 0 ||
        loop_add(r->loop, r->timerfd, LOOP_READ, timer_cb, r) != 0)
        loop_stop(r->loop);
}

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static uint64_t backlog_rows(const void *ud) { return sink_audit_pending_rows(ud); }

/* SIGHUP: re-reads the configuration and recompiles the mapping rules; on
 * any error the running rules stay and the errors are printed.  The rules,
 * schema, headers and row format switch together: the new layout (header
 * line) is recorded in the store first and every row mapped from then on
 * carries it, so the audit sink writes each block under the header of the
 * rows in it.  A change the running audit sink cannot follow (its
 * destination, credentials, batching) refuses the whole reload and says
 * which setting needs a restart.  Listener and store settings need a
 * restart too. */
static void reload(struct runner *r)
{
    const char *used;
    char err[512];
    int64_t layout = 0;
    /* systemd wants the time of the request with RELOADING=1, so it can tell
     * this reload's READY=1 from an earlier one. */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    notify_sendf(r->notify, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
                 (unsigned long long)now.tv_sec * 1000000ull +
                     (unsigned long long)now.tv_nsec / 1000ull);
    struct config *c = load_config_or_report(r->config_path, r->explicit_path, &used);
    struct mapping *mp = c ? rules_load(c) : NULL;
    if (!mp) {
        log_error("reload_failed", "config=%s keeping=previous_rules", used);
        config_free(c);
        notify_ready(r, " (reload failed: previous rules kept)");
        return;
    }
    if (sink_glue_reload_check(r->cur, c, err, sizeof err) != 0 ||
        sink_glue_layout(c, mp, &layout, err, sizeof err) != 0) {
        char q[600];
        log_error("reload_refused", "config=%s reason=\"%s\" keeping=previous_configuration", used,
                  log_quote(q, sizeof q, err));
        mapping_free(mp);
        config_free(c);
        notify_ready(r, " (reload refused: previous configuration kept)");
        return;
    }
    size_t n_rules = mapping_rule_count(mp);
    /* The holder owns the sets: the old one is freed once the control
     * socket no longer uses it (at once, mostly).  Rules, row format and
     * layout switch together. */
    const struct ingest_rows was = ingest_get_rows(r->ingest);
    struct mapping *old = ingest_set_rows(r->ingest, mp, rules_format(c), rules_eol(c), layout);
    if (rules_live_set(r->live, mp, rules_format(c), rules_eol(c)) != 0) {
        (void)ingest_set_rows(r->ingest, old, was.format, was.eol, was.layout);
        mapping_free(mp);
        log_error("reload_failed", "config=%s reason=out_of_memory keeping=previous_rules", used);
        config_free(c);
        notify_ready(r, " (reload failed: previous rules kept)");
        return;
    }
    log_info("reload", "config=%s rules=%zu layout=%lld", used, n_rules, (long long)layout);
    config_free(r->reloaded);
    r->reloaded = c;
    r->cur = c;
    if (mllp_server_reload_tls(ingest_server(r->ingest), err, sizeof err) != 0)
        log_error("reload_tls_failed", "error=\"%s\" keeping=previous_certificates", err);
    else
        log_info("reload_tls", "result=ok");
    notify_ready(r, "");
}

static void signal_cb(void *ud, int fd, unsigned ev)
{
    (void)ev;
    struct runner *r = ud;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGTERM: begin_shutdown(r, "TERM"); break;
        case SIGINT: begin_shutdown(r, "INT"); break;
        case SIGHUP: reload(r); break;
        default: break;
        }
    }
}

static int charset_of(const char *name, struct hl7_parse_opts *po)
{
    memset(po, 0, sizeof *po);
    if (!name)
        return 0;
    po->override_charset = 1;
    if (strcmp(name, "ASCII") == 0)
        po->charset = HL7_CS_ASCII;
    else if (strcmp(name, "8859/1") == 0)
        po->charset = HL7_CS_LATIN1;
    else if (strcmp(name, "8859/15") == 0)
        po->charset = HL7_CS_LATIN15;
    else if (strcmp(name, "UNICODE UTF-8") == 0)
        po->charset = HL7_CS_UTF8;
    else
        return -1;
    return 0;
}

void run_tls_opts(const struct config_listener *cl, struct mllp_tls_opts *to)
{
    to->cert_file = cl->tls.cert_file;
    to->key_file = cl->tls.key_file;
    to->client_ca_file = cl->tls.client_ca_file;
    to->verify_client = cl->tls.verify_client;
    to->min_tls13 = cl->tls.min_version == CONFIG_TLS_1_3;
    to->allowed_names = (const char *const *)cl->tls.allowed_names;
    to->n_allowed_names = cl->tls.n_allowed_names;
}

static void run_usage(FILE *out)
{
    fprintf(out, "usage: hl7bridge run [-c FILE]\n"
                 "\n"
                 "Runs the daemon: MLLP listeners, durable store, ACKs.\n"
                 "  -c, --config FILE   configuration (default %s; when that file does\n"
                 "                      not exist, the built-in default configuration)\n"
                 "Signals: TERM/INT drain and exit 0 (a second one exits at once).\n",
            CONFIG_DEFAULT_PATH);
}

extern const unsigned char hb_default_config[];
extern const size_t hb_default_config_len;

/* Loads the configuration or prints every error; shared with `check`.
 * `explicit_path` is 0 when no -c was given: then a missing default file
 * means "use the configuration compiled into the binary". */
struct config *load_config_or_report(const char *path, int explicit_path, const char **used);
struct config *load_config_or_report(const char *path, int explicit_path, const char **used)
{
    struct config_errors errs = { 0 };
    struct config *c;
    if (!explicit_path && access(path, F_OK) != 0) {
        *used = "(embedded default)";
        c = config_load_string(*used, (const char *)hb_default_config, hb_default_config_len,
                               &errs);
    } else {
        *used = path;
        c = config_load(path, &errs);
    }
    if (!c) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.items[i]);
        if (errs.n == 0)
            fprintf(stderr, "%s: cannot load configuration\n", *used);
    }
    config_errors_release(&errs);
    return c;
}

void run_store_where(const struct config *cfg, struct store_opts *so)
{
    so->type = cfg->store.type == CONFIG_STORE_POSTGRESQL ? STORE_POSTGRESQL : STORE_SQLITE;
    so->path = cfg->store.path;
    so->url = cfg->store.url;
    so->password = cfg->store.password;
    so->node = cfg->node.name;
}

/* store.retention → what the store's housekeeping purges (seconds → ms).
 * The sinks' output files are purged only when that sink writes files. */
void run_retention_opts(const struct config *cfg, struct store_opts *so)
{
    const struct config_retention *r = &cfg->store.retention;
    so->use_keep = 1;
    so->keep_ms[STORE_KIND_RAW] = (uint64_t)r->raw_s * 1000u;
    so->keep_ms[STORE_KIND_DELIVERED] = (uint64_t)r->delivered_s * 1000u;
    so->keep_ms[STORE_KIND_ROWS] = (uint64_t)r->delivered_s * 1000u;
    so->keep_ms[STORE_KIND_QUARANTINED] = (uint64_t)r->quarantined_s * 1000u;
    so->keep_ms[STORE_KIND_REJECTED] = (uint64_t)r->rejected_s * 1000u;
    /* store.rejected_retention_days, the older form: the shorter applies. */
    uint64_t rej_days_ms = (uint64_t)cfg->store.rejected_retention_days * 86400000u;
    if (rej_days_ms < so->keep_ms[STORE_KIND_REJECTED])
        so->keep_ms[STORE_KIND_REJECTED] = rej_days_ms;
    so->keep_ms[STORE_KIND_SMS] = (uint64_t)r->sms_s * 1000u;
    so->keep_ms[STORE_KIND_SMS_FILE] = (uint64_t)r->sms_file_s * 1000u;
    so->keep_ms[STORE_KIND_AUDIT_FILES] = (uint64_t)r->audit_files_s * 1000u;
    so->keep_ms[STORE_KIND_UPLOAD_BLOCKS] = (uint64_t)r->upload_blocks_s * 1000u;
    so->n_files = 0;
    if (cfg->sinks.sms.type == CONFIG_SMS_FILE)
        so->files[so->n_files++] = (struct store_file_keep){
            .path = cfg->sinks.sms.path, .rotate = 1, .kind = STORE_KIND_SMS_FILE,
            .keep_ms = so->keep_ms[STORE_KIND_SMS_FILE] };
    if (cfg->sinks.audit.type == CONFIG_AUDIT_FILE)
        so->files[so->n_files++] = (struct store_file_keep){
            .path = cfg->sinks.audit.directory, .prefix = SINK_AUDIT_FILE_PREFIX,
            .kind = STORE_KIND_AUDIT_FILES, .keep_ms = so->keep_ms[STORE_KIND_AUDIT_FILES] };
    /* `hl7bridge upload` and inputs.files write their blocks there too. */
    if (cfg->sinks.audit.type == CONFIG_AUDIT_FILE)
        so->files[so->n_files++] = (struct store_file_keep){
            .path = cfg->sinks.audit.directory, .prefix = SINK_UPLOAD_FILE_PREFIX,
            .kind = STORE_KIND_AUDIT_FILES, .keep_ms = so->keep_ms[STORE_KIND_AUDIT_FILES] };
}

int cmd_run(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            run_usage(stdout);
            return 0;
        }
        int r = cli_config_opt(argc, argv, &i, &path);
        if (r <= 0) {
            run_usage(stderr);
            return 2;
        }
        explicit_path = 1;
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        return 1;
    struct mapping *mp = rules_load(cfg);
    if (!mp) {
        config_free(cfg);
        return 1;
    }
    log_set_level(cfg->log.level);
    log_set_format(cfg->log.format);

    int rc = 1;
    struct runner r = { .sigfd = -1, .timerfd = -1, .notifyfd = -1, .config_path = path,
                        .explicit_path = explicit_path, .cur = cfg,
                        .n_listeners = cfg->n_listeners, .notify = notify_new() };
    struct store *st = NULL;
    struct sink_audit *audit = NULL;
    struct sink_sms *sms = NULL;
    struct http_monitor *mon = NULL;
    struct ctl_server *ctl = NULL;
    struct mapping *mp_own = mp; /* until the live holder takes it */
    struct input_watch *inputs = NULL;
    struct ingest_listener *ils = calloc(cfg->n_listeners, sizeof *ils);
    struct mllp_tls_opts tlsopts[HB_MAX_LISTENERS];
    memset(tlsopts, 0, sizeof tlsopts);
    char err[512];

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    privs_raise_nofile();
    struct store_opts so = {
        .type = cfg->store.type == CONFIG_STORE_POSTGRESQL ? STORE_POSTGRESQL : STORE_SQLITE,
        .url = cfg->store.url,
        .password = cfg->store.password,
        .node = cfg->node.name,
        .heartbeat_ms = (uint64_t)cfg->node.heartbeat_s * 1000,
        .version = HL7BRIDGE_VERSION,
        .path = cfg->store.path,
        .retention_days = cfg->store.retention_days,
        .min_free_disk_mb = cfg->store.min_free_disk_mb,
    };
    run_retention_opts(cfg, &so);
    int on_pg = cfg->store.type == CONFIG_STORE_POSTGRESQL;
    st = store_open(&so, err, sizeof err);
    if (!st) {
        /* err names the server without its password (core/conninfo.h) */
        char q[600];
        if (on_pg)
            log_error("store_open_failed", "backend=postgresql error=\"%s\"",
                      log_quote(q, sizeof q, err));
        else
            log_error("store_open_failed", "path=%s error=\"%s\"", cfg->store.path, err);
        goto out;
    }
    /* The layout the rows are formatted in, recorded before any row is. */
    int64_t layout = 0;
    if (sink_glue_layout(cfg, mp, &layout, err, sizeof err) != 0) {
        log_error("startup_failed", "reason=\"%s\"", err); /* mp_own is freed at out */
        goto out;
    }
    r.store = st;
    r.loop = loop_new();
    struct ingest_opts io = {
        .enhanced = cfg->ack.mode == CONFIG_ACK_ENHANCED,
        .application = cfg->ack.application,
        .facility = cfg->ack.facility,
        .mapping = mp,
        .format = rules_format(cfg),
        .eol = rules_eol(cfg),
        .layout = layout,
        .appt_facts = cfg->sinks.sms.type != CONFIG_SMS_NONE,
    };
    /* Owns mp from here on (frees it on failure). */
    r.live = rules_live_new(mp, rules_format(cfg), rules_eol(cfg));
    mp_own = NULL;
    r.ingest = r.loop && ils && r.live ? ingest_new(r.loop, st, &io) : NULL;
    if (!r.ingest) {
        log_error("startup_failed", "reason=out_of_memory");
        goto out;
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct config_listener *cl = &cfg->listeners[i];
        ils[i].name = cl->name;
        if (charset_of(cl->charset, &ils[i].parse) != 0) {
            log_error("startup_failed", "listener=%s reason=unknown_charset", cl->name);
            goto out;
        }
        ils[i].senders = cl->senders;
        ils[i].n_senders = cl->n_senders;
        struct mllp_tls_opts *to = &tlsopts[i];
        if (cl->tls.enabled)
            run_tls_opts(cl, to);
        struct mllp_listener_opts lo = {
            .tls = cl->tls.enabled ? to : NULL,
            .allow = (const char *const *)cl->allow,
            .n_allow = cl->n_allow,
            .max_connections_per_ip = cl->max_connections_per_ip,
            .handshake_timeout_s = cl->handshake_timeout_s,
            .frame_timeout_s = cl->frame_timeout_s,
            .frame_end_lenient = cl->frame_end == CONFIG_FRAME_END_LENIENT,
            .name = cl->name,
            .host = cl->host,
            .port = cl->port,
            .max_connections = cl->max_connections,
            .max_message_bytes = (size_t)cl->max_message_bytes,
            .idle_timeout_s = cl->idle_timeout_s,
            .keepalive = {.enabled = cl->keepalive.enabled, .idle_s = cl->keepalive.idle_s,
                          .interval_s = cl->keepalive.interval_s, .count = cl->keepalive.count},
            .user = &ils[i],
        };
        if (mllp_server_listen(ingest_server(r.ingest), &lo, err, sizeof err) != 0) {
            log_error("listen_failed", "listener=%s address=%s error=\"%s\"", cl->name,
                      cl->address, err);
            goto out;
        }
        log_info("listening", "listener=%s address=%s port=%u tls=%s", cl->name, cl->address,
                 mllp_server_port(ingest_server(r.ingest), i), cl->tls.enabled ? "on" : "off");
    }
    /* Listeners are bound and the store is open: root is no longer needed. */
    if (privs_drop(cfg, err, sizeof err) != 0) {
        log_error("startup_failed", "reason=\"%s\"", err);
        goto out;
    }
    /* After the privilege drop, so the sink's files belong to the run user. */
    /* sinks.audit.type none: no sink; rows stay in the store. */
    audit = cfg->sinks.audit.type == CONFIG_AUDIT_NONE ? NULL
                                                       : sink_glue_start(cfg, mp, err, sizeof err);
    if (!audit && cfg->sinks.audit.type != CONFIG_AUDIT_NONE) {
        log_error("startup_failed", "reason=\"%s\"", err);
        goto out;
    }
    ingest_set_backlog(r.ingest, backlog_rows, audit, cfg->store.max_pending_rows);
    mllp_server_set_max_buffered(ingest_server(r.ingest), (size_t)(cfg->limits.max_buffered_mb << 20));
    /* The SMS sink reads the appointment facts ingest stored: one set of
     * rules, swapped as a whole by a SIGHUP reload. */
    struct store_opts sms_so = so;
    sms_so.lease_ms = cfg->sinks.sms.lease_s * 1000u;
    sms = sink_sms_start(cfg, &sms_so, err, sizeof err);
    if (!sms) {
        log_error("startup_failed", "reason=\"%s\"", err);
        goto out;
    }
    /* inputs.files: prepared connector files dropped into a directory. */
    inputs = input_watch_start(cfg, err, sizeof err);
    if (!inputs && err[0]) {
        log_error("startup_failed", "reason=\"%s\"", err);
        goto out;
    }
    /* Metrics, /status and the page; metrics.enabled false: no counting. */
    if (cfg->metrics.enabled) {
        mon = http_monitor_new(r.loop, r.ingest, st, cfg, err, sizeof err);
        if (!mon) {
            log_error("metrics_failed", "address=%s error=\"%s\"", cfg->metrics.address, err);
            goto out;
        }
        log_info("metrics_listening", "address=%s", cfg->metrics.address);
        http_monitor_set_audit(mon, audit);
        http_monitor_set_sms(mon, sms);
    }
    /* After the privilege drop, so the socket belongs to the run user. */
    /* The control socket serves reprocessing, which reads the SQLite
     * journal: not on PostgreSQL yet. */
    ctl = on_pg ? NULL : ctl_server_start(cfg, r.live, err, sizeof err);
    if (!ctl && !on_pg) {
        log_error("startup_failed", "reason=\"control socket: %s\"", err);
        goto out;
    }
    r.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (r.sigfd < 0 || loop_add(r.loop, r.sigfd, LOOP_READ, signal_cb, &r) != 0) {
        log_error("startup_failed", "reason=signalfd errno=%d", errno);
        goto out;
    }
    if (notify_start(&r) != 0) {
        log_error("startup_failed", "reason=notify_timer errno=%d", errno);
        goto out;
    }
    log_info("started", "version=%s config=%s store=%s node=%s rules=%zu pid=%d",
             HL7BRIDGE_VERSION, path, on_pg ? "postgresql" : cfg->store.path, cfg->node.name,
             mapping_rule_count(mp), (int)getpid());
    /* Listening, store open, sinks running: the service is up. */
    notify_ready(&r, "");
    if (loop_run(r.loop) != 0)
        log_error("loop_failed", "errno=%d", errno);
    else
        rc = 0;
    struct ingest_stats is;
    ingest_get_stats(r.ingest, &is);
    log_info("stopped",
             "received=%llu aa=%llu ae=%llu ar=%llu duplicates=%llu rows=%llu filtered=%llu "
             "quarantined=%llu",
             (unsigned long long)is.received, (unsigned long long)is.acks[HL7_ACK_AA],
             (unsigned long long)is.acks[HL7_ACK_AE], (unsigned long long)is.acks[HL7_ACK_AR],
             (unsigned long long)is.duplicates, (unsigned long long)is.rows,
             (unsigned long long)is.filtered, (unsigned long long)is.quarantined);
out:
    http_monitor_free(mon); /* before the ingest and store it reads */
    ctl_server_stop(ctl);   /* before the rules it borrows */
    if (r.ingest)
        (void)ingest_set_mapping(r.ingest, NULL);
    ingest_free(r.ingest);
    rules_live_free(r.live);
    mapping_free(mp_own);
    input_watch_stop(inputs);
    sink_audit_stop(audit);
    sink_sms_stop(sms);
    store_close(st);
    if (r.sigfd >= 0)
        close(r.sigfd);
    if (r.timerfd >= 0)
        close(r.timerfd);
    if (r.notifyfd >= 0)
        close(r.notifyfd);
    notify_free(r.notify);
    loop_free(r.loop);
    free(ils);
    config_free(r.reloaded);
    config_free(cfg);
    return rc;
}
