/* `hl7bridge stats [-c FILE] [--daily] [--days N] [--cluster]`: the
 * monitoring figures as tables on the terminal.
 *
 * With the daemon running, it fetches /status from metrics.address (libcurl)
 * and prints the same numbers as the status page: health, queues, and ACKs
 * by code per listener, per sender and per message type.  When the daemon
 * does not answer it prints the retention (the oldest PHI-bearing record per
 * kind, store_query_retention) and the daily totals kept in the store
 * instead, read through read-only connections; --daily prints only the
 * daily totals.  --cluster reads every node's heartbeat from the PostgreSQL
 * store (store.url) instead.
 *
 * /status is JSON written with ", " and ": " separators, which makes it
 * valid YAML as well; it is read back with libyaml (already linked for the
 * configuration) rather than with a JSON parser of our own.
 *
 * Threads: main thread only (a CLI). */
#include "daemon/cli.h"
#include "config/config.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/conninfo.h"
#include "core/num.h"
#include "store/store.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yaml.h>

#define STATUS_MAX_BYTES (32u << 20)
#define FETCH_TIMEOUT_MS 5000
#define NAME_WIDTH_MAX   40

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static const char *const codes[6] = { "AA", "AE", "AR", "CA", "CE", "CR" };

static void stats_usage(FILE *out)
{
    fprintf(out, "usage: hl7bridge stats [-c FILE] [--daily] [--days N] [--cluster]\n"
                 "\n"
                 "Prints ACK statistics of the running daemon (from /status on\n"
                 "metrics.address).  When the daemon is not running it reads the store\n"
                 "instead: the retention of each PHI-bearing kind (how long it is kept,\n"
                 "the age of the oldest record still held) and the daily totals; with\n"
                 "--daily only the daily totals.\n"
                 "  -c, --config FILE   configuration (default %s)\n"
                 "  --daily             print the store's daily totals\n"
                 "  --days N            how many days of daily totals, 1..3660 (default 7)\n"
                 "  --cluster           every node on the PostgreSQL store (store.type\n"
                 "                      postgresql): last heartbeat, version, its ACK counts,\n"
                 "                      up or down (down: no heartbeat for 3 of its\n"
                 "                      node.heartbeat_s), and the totals; exits 3 when a\n"
                 "                      node is down, 1 when the store cannot be read\n",
            CONFIG_DEFAULT_PATH);
}

/* ---- fetching ------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;
    return buf_append(b, p, size * n) == 0 ? size * n : 0;
}

/* GETs /status into `body`.  Returns 0; 1 when nothing listens there (the
 * daemon is not running); -1 on any other failure (message printed). */
static int fetch_status(const struct config *c, struct buf *body)
{
    const char *host = c->metrics.host;
    /* A wildcard bind is reached through loopback. */
    if (strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    char url[320];
    snprintf(url, sizeof url, strchr(host, ':') ? "http://[%s]:%u/status" : "http://%s:%u/status",
             host, c->metrics.port);
    CURL *h = curl_easy_init();
    if (!h) {
        fprintf(stderr, "hl7bridge stats: cannot initialise libcurl\n");
        return -1;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)FETCH_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)FETCH_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    if (rc == CURLE_COULDNT_CONNECT)
        return 1;
    if (rc != CURLE_OK) {
        fprintf(stderr, "hl7bridge stats: %s: %s\n", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return -1;
    }
    if (status != 200) {
        fprintf(stderr, "hl7bridge stats: %s: HTTP status %ld\n", url, status);
        return -1;
    }
    return 0;
}

/* ---- reading the document ----------------------------------------------- */

static yaml_node_t *get(yaml_document_t *d, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    size_t kl = strlen(key);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(d, p->key);
        if (k && k->type == YAML_SCALAR_NODE && k->data.scalar.length == kl &&
            memcmp(k->data.scalar.value, key, kl) == 0)
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

static uint64_t num(yaml_node_t *n)
{
    uint64_t v = 0;
    if (!n || n->type != YAML_SCALAR_NODE ||
        num_parse_u64(n->data.scalar.value, n->data.scalar.length, UINT64_MAX, &v) != 0)
        return 0;
    return v;
}

static int64_t snum(yaml_node_t *n)
{
    int64_t v = 0;
    if (!n || n->type != YAML_SCALAR_NODE ||
        num_parse_i64(n->data.scalar.value, n->data.scalar.length, INT64_MIN, INT64_MAX, &v) != 0)
        return 0;
    return v;
}

static const char *str(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : "";
}

static int truth(yaml_node_t *n) { return strcmp(str(n), "true") == 0; }

static size_t seq_len(yaml_node_t *n)
{
    return n && n->type == YAML_SEQUENCE_NODE
               ? (size_t)(n->data.sequence.items.top - n->data.sequence.items.start)
               : 0;
}

static yaml_node_t *seq_at(yaml_document_t *d, yaml_node_t *n, size_t i)
{
    return yaml_document_get_node(d, n->data.sequence.items.start[i]);
}

/* ---- printing --------------------------------------------------------------- */

static void print_pct(uint64_t part, uint64_t whole)
{
    uint64_t p10 = whole ? part * 1000 / whole : 0;
    printf(" %5" PRIu64 ".%" PRIu64 "%%", p10 / 10, p10 % 10);
}

static void print_head(const char *what, int width)
{
    printf("%-*s %9s", width, what, "RECEIVED");
    for (int c = 0; c < 6; c++)
        printf(" %8s", codes[c]);
    printf(" %8s %7s\n", "DUP", "NACK%");
}

static void print_counts(yaml_document_t *d, const char *name, int width, yaml_node_t *o)
{
    yaml_node_t *acks = get(d, o, "acks");
    uint64_t all = 0, bad = 0;
    printf("%-*.*s %9" PRIu64, width, NAME_WIDTH_MAX, name, num(get(d, o, "received")));
    for (int c = 0; c < 6; c++) {
        uint64_t v = num(get(d, acks, codes[c]));
        all += v;
        if (c == 1 || c == 2 || c == 4 || c == 5)
            bad += v;
        printf(" %8" PRIu64, v);
    }
    printf(" %8" PRIu64, num(get(d, o, "duplicates")));
    print_pct(bad, all);
    printf("\n");
}

/* Prints one table of a /status list (`listeners`, `senders`, `types`). */
static void print_table(yaml_document_t *d, yaml_node_t *root, const char *list,
                        const char *key, const char *title)
{
    yaml_node_t *n = get(d, root, list);
    size_t len = seq_len(n);
    int width = (int)strlen(title);
    for (size_t i = 0; i < len; i++) {
        int w = (int)strlen(str(get(d, seq_at(d, n, i), key)));
        if (w > width)
            width = w < NAME_WIDTH_MAX ? w : NAME_WIDTH_MAX;
    }
    printf("\n");
    print_head(title, width);
    if (len == 0)
        printf("(none)\n");
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *o = seq_at(d, n, i);
        print_counts(d, str(get(d, o, key)), width, o);
    }
}

/* "7d", "3h05m", "12m", "40s". */
static void fmt_age(int64_t s, char *out, size_t cap)
{
    if (s >= 86400)
        snprintf(out, cap, "%" PRId64 "d%02" PRId64 "h", s / 86400, s / 3600 % 24);
    else if (s >= 3600)
        snprintf(out, cap, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(out, cap, "%" PRId64 "m", s / 60);
    else
        snprintf(out, cap, "%" PRId64 "s", s);
}

/* One line of the retention table.  keep_s -1: kept; purged -1: not known
 * (read from a stopped daemon's store). */
struct rt_line {
    const char *kind;
    int64_t keep_s, oldest_ms, age_s, purged;
};

static void print_rt_head(void)
{
    printf("\n%-13s %10s %10s %10s\n", "RETENTION", "KEEP", "OLDEST", "PURGED");
}

static void print_rt_line(const struct rt_line *l)
{
    char keep[32], age[32], purged[32];
    if (l->keep_s < 0)
        snprintf(keep, sizeof keep, "kept");
    else
        fmt_age(l->keep_s, keep, sizeof keep);
    if (l->oldest_ms == 0)
        snprintf(age, sizeof age, "none");
    else
        fmt_age(l->age_s, age, sizeof age);
    if (l->purged < 0)
        snprintf(purged, sizeof purged, "-");
    else
        snprintf(purged, sizeof purged, "%" PRId64, l->purged);
    printf("%-13s %10s %10s %10s\n", l->kind, keep, age, purged);
}

/* Per PHI-bearing kind: how long it is kept and the oldest record held
 * (the daemon's /status). */
static void print_retention(yaml_document_t *d, yaml_node_t *r)
{
    yaml_node_t *kinds = get(d, r, "kinds");
    if (!seq_len(kinds))
        return;
    print_rt_head();
    for (size_t i = 0; i < seq_len(kinds); i++) {
        yaml_node_t *k = seq_at(d, kinds, i);
        struct rt_line l = { str(get(d, k, "kind")), snum(get(d, k, "keep_s")),
                             snum(get(d, k, "oldest_ms")), snum(get(d, k, "oldest_age_s")),
                             (int64_t)num(get(d, k, "purged")) };
        print_rt_line(&l);
    }
    if (snum(get(d, r, "checked_ms")) == 0)
        printf("(retention not checked yet: the first housekeeping runs seconds after start)\n");
}

/* The same table read from the store itself, for a daemon that is not
 * running: what is held and how old, with the configured times (what was
 * purged is the daemon's count, unknown here). */
static int print_store_retention(const struct config *c)
{
    struct store_opts so;
    memset(&so, 0, sizeof so);
    so.path = c->store.path;
    so.retention_days = c->store.retention_days;
    run_retention_opts(c, &so);
    struct store_retention_report r;
    char err[512];
    if (store_query_retention(&so, &r, err, sizeof err) != 0) {
        fprintf(stderr, "hl7bridge stats: retention: %s\n", err);
        return -1;
    }
    int64_t now = clock_wall_ms();
    printf("retention read from the store %s:\n", c->store.path);
    print_rt_head();
    for (int k = 0; k < STORE_KIND_N; k++) {
        struct rt_line l = {
            store_kind_name((enum store_kind)k),
            r.keep_ms[k] == STORE_KEEP_FOREVER ? -1 : (int64_t)(r.keep_ms[k] / 1000),
            r.oldest_ms[k],
            r.oldest_ms[k] && now > r.oldest_ms[k] ? (now - r.oldest_ms[k]) / 1000 : 0,
            -1,
        };
        print_rt_line(&l);
    }
    printf("\n");
    return 0;
}

static int print_status(const struct config *c, const struct buf *body)
{
    yaml_parser_t p;
    yaml_document_t d;
    if (!yaml_parser_initialize(&p))
        return -1;
    yaml_parser_set_input_string(&p, buf_data(body), body->len);
    if (!yaml_parser_load(&p, &d)) {
        fprintf(stderr, "hl7bridge stats: /status is not readable: %s\n",
                p.problem ? p.problem : "parse error");
        yaml_parser_delete(&p);
        return -1;
    }
    yaml_node_t *root = yaml_document_get_root_node(&d);
    int64_t up = snum(get(&d, root, "uptime_s"));
    yaml_node_t *reasons = get(&d, root, "degraded_reasons");
    printf("hl7bridge %s at %s: up %" PRId64 "h %02" PRId64 "m, %s, ",
           str(get(&d, root, "version")), c->metrics.address, up / 3600, up / 60 % 60,
           truth(get(&d, root, "ready")) ? "ready" : "NOT READY");
    if (!truth(get(&d, root, "degraded"))) {
        printf("not degraded\n");
    } else {
        printf("DEGRADED:");
        for (size_t i = 0; i < seq_len(reasons); i++)
            printf(" %s", str(seq_at(&d, reasons, i)));
        printf("\n");
    }
    yaml_node_t *s = get(&d, root, "store");
    printf("store: queue %" PRIu64 ", acks pending %" PRIu64 ", commits %" PRIu64
           ", messages %" PRIu64 ", duplicates %" PRIu64 ", failures %" PRIu64
           ", control ids reused %" PRIu64
           ", writable %s, free disk %" PRId64 " MiB\n",
           num(get(&d, s, "queue_depth")), num(get(&d, s, "acks_pending")),
           num(get(&d, s, "commits")), num(get(&d, s, "messages")),
           num(get(&d, s, "duplicates")), num(get(&d, s, "failures")),
           num(get(&d, s, "control_id_reused")),
           truth(get(&d, s, "writable")) ? "yes" : "NO", snum(get(&d, s, "free_disk_mb")));
    yaml_node_t *cn = get(&d, root, "connections");
    yaml_node_t *fr = get(&d, root, "frames");
    printf("connections: open %" PRIu64 ", accepted %" PRIu64 ", refused %" PRIu64
           "; frames %" PRIu64 ", oversize %" PRIu64 "\n",
           num(get(&d, cn, "current")), num(get(&d, cn, "accepted")),
           num(get(&d, cn, "refused_limit")), num(get(&d, fr, "received")),
           num(get(&d, fr, "oversize")));
    yaml_node_t *w = get(&d, root, "nack_window");
    printf("NACK rate: %s%% of %" PRIu64 " ACKs in the last %" PRIu64 " s (threshold %" PRIu64
           "%%)\n",
           str(get(&d, w, "percent")), num(get(&d, w, "acks")), num(get(&d, w, "seconds")),
           num(get(&d, get(&d, root, "thresholds"), "nack_percent")));

    yaml_node_t *un = get(&d, root, "unresolved_users");
    yaml_node_t *ur = get(&d, un, "rules");
    printf("rows without a resolved user: %" PRIu64 "%s", num(get(&d, un, "rows")),
           seq_len(ur) ? " (" : "\n");
    for (size_t i = 0; i < seq_len(ur); i++) {
        yaml_node_t *o = seq_at(&d, ur, i);
        printf("%srule %s: %" PRIu64 " filtered, %" PRIu64 " quarantined, %" PRIu64 " kept%s",
               i ? "; " : "", str(get(&d, o, "rule")), num(get(&d, o, "filter")),
               num(get(&d, o, "quarantine")), num(get(&d, o, "keep")),
               i + 1 == seq_len(ur) ? ")\n" : "");
    }

    print_table(&d, root, "listeners", "name", "LISTENER");
    print_table(&d, root, "senders", "sender", "SENDER");
    print_table(&d, root, "types", "type", "TYPE");

    print_retention(&d, get(&d, root, "retention"));

    yaml_node_t *sinks = get(&d, root, "sinks");
    printf("\n");
    if (seq_len(sinks) == 0)
        printf("sinks: no reports\n");
    for (size_t i = 0; i < seq_len(sinks); i++) {
        yaml_node_t *k = seq_at(&d, sinks, i);
        printf("sink %s (%s): %s, rows pending %" PRIu64 ", blocks failed %" PRIu64
               ", retries %" PRIu64 "%s%s\n",
               str(get(&d, k, "name")), str(get(&d, k, "type")), str(get(&d, k, "state")),
               num(get(&d, k, "rows_pending")), num(get(&d, k, "blocks_failed")),
               num(get(&d, k, "retries")), *str(get(&d, k, "last_error")) ? ", last error: " : "",
               str(get(&d, k, "last_error")));
    }
    yaml_document_delete(&d);
    yaml_parser_delete(&p);
    return 0;
}

/* ---- daily totals -------------------------------------------------------- */

struct daily_print {
    size_t rows;
    char last_day[11];
};

static void daily_row(void *ud, const struct store_daily_row *r)
{
    struct daily_print *dp = ud;
    if (dp->rows == 0) {
        printf("%-10s %-12s %-24s %9s", "DAY", "LISTENER", "SENDER", "RECEIVED");
        for (int c = 0; c < 6; c++)
            printf(" %8s", codes[c]);
        printf(" %8s %7s\n", "DUP", "NACK%");
    }
    dp->rows++;
    uint64_t all = 0, bad = 0;
    printf("%-10s %-12s %-24s %9" PRIu64, strcmp(r->day, dp->last_day) ? r->day : "",
           r->listener, r->sender, r->received);
    for (int c = 0; c < 6; c++) {
        all += r->acks[c];
        if (c == 1 || c == 2 || c == 4 || c == 5)
            bad += r->acks[c];
        printf(" %8" PRIu64, r->acks[c]);
    }
    printf(" %8" PRIu64, r->duplicates);
    print_pct(bad, all);
    printf("\n");
    memcpy(dp->last_day, r->day, sizeof dp->last_day);
}

static int print_daily(const struct config *c, unsigned days)
{
    char from[11];
    time_t t = (time_t)(clock_wall_ms() / 1000) - (time_t)(days - 1) * 86400;
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(from, sizeof from, "%Y-%m-%d", &tm) != 10)
        return -1;
    struct store_opts where = {0};
    run_store_where(c, &where);
    char shown[512];
    if (where.type == STORE_POSTGRESQL &&
        conninfo_scrub(where.url ? where.url : "", shown, sizeof shown) != 0)
        snprintf(shown, sizeof shown, "(connection string)");
    printf("daily totals since %s (local time) from %s%s\n", from,
           where.type == STORE_POSTGRESQL ? "PostgreSQL, every node: " : "",
           where.type == STORE_POSTGRESQL ? shown : c->store.path);
    struct daily_print dp = { 0, "" };
    char err[512];
    if (store_daily_query(&where, from, daily_row, &dp, err, sizeof err) != 0) {
        fprintf(stderr, "hl7bridge stats: %s\n", err);
        return -1;
    }
    if (dp.rows == 0)
        printf("(no messages counted)\n");
    return 0;
}

/* ---- cluster (PostgreSQL) ---------------------------------------------- */

/* 3 as systemctl's "not active": 1 is taken by "cannot read", 2 by usage. */
enum { STATS_NODE_DOWN = 3 };

/* Every node's last heartbeat and the totals; 0 when every node is up,
 * STATS_NODE_DOWN when one is down (a check script or cron job can alert on
 * the status without parsing the table), 1 when the store cannot be read. */
static int print_cluster(const struct config *cfg)
{
    if (cfg->store.type != CONFIG_STORE_POSTGRESQL) {
        fprintf(stderr, "hl7bridge stats --cluster: needs store.type postgresql (this "
                        "configuration runs one node on SQLite)\n");
        return 1;
    }
    struct store_opts o = { .type = STORE_POSTGRESQL, .url = cfg->store.url,
                            .password = cfg->store.password, .node = cfg->node.name };
    static struct store_node nodes[STORE_CLUSTER_MAX];
    char err[512];
    long total = store_cluster_read(&o, nodes, STORE_CLUSTER_MAX, err, sizeof err);
    if (total < 0) {
        fprintf(stderr, "hl7bridge stats --cluster: %s\n", err);
        return 1;
    }
    size_t n = (size_t)total < STORE_CLUSTER_MAX ? (size_t)total : STORE_CLUSTER_MAX;
    size_t up = 0;
    uint64_t aa = 0, ae = 0, ar = 0, stored = 0;
    for (size_t i = 0; i < n; i++) {
        up += nodes[i].up != 0;
        aa += nodes[i].aa;
        ae += nodes[i].ae;
        ar += nodes[i].ar;
        stored += nodes[i].stored;
    }
    printf("cluster: %ld node%s, %zu up, %zu down\n", total, total == 1 ? "" : "s", up, n - up);
    printf("%-24s %-5s %12s %-12s %8s %10s %10s %10s %10s\n", "node", "state", "heartbeat",
           "version", "pid", "AA", "AE", "AR", "stored");
    for (size_t i = 0; i < n; i++) {
        const struct store_node *x = &nodes[i];
        char age[32];
        snprintf(age, sizeof age, "%.1f s ago", (double)x->age_ms / 1000.0);
        printf("%-24s %-5s %12s %-12s %8lld %10llu %10llu %10llu %10llu\n", x->name,
               x->up ? "up" : "down", age, x->version, (long long)x->pid,
               (unsigned long long)x->aa, (unsigned long long)x->ae, (unsigned long long)x->ar,
               (unsigned long long)x->stored);
    }
    printf("%-24s %-5s %12s %-12s %8s %10llu %10llu %10llu %10llu\n", "total", "", "", "", "",
           (unsigned long long)aa, (unsigned long long)ae, (unsigned long long)ar,
           (unsigned long long)stored);
    if ((size_t)total > n)
        printf("(%ld more nodes not shown nor counted)\n", total - (long)n);
    return up == n ? 0 : STATS_NODE_DOWN;
}

int cmd_stats(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0, daily = 0, cluster = 0;
    uint64_t days = 7;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            stats_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--daily") == 0) {
            daily = 1;
            continue;
        }
        if (strcmp(argv[i], "--cluster") == 0) {
            cluster = 1;
            continue;
        }
        if (strcmp(argv[i], "--days") == 0) {
            if (i + 1 >= argc ||
                num_parse_u64((const uint8_t *)argv[i + 1], strlen(argv[i + 1]), 3660, &days) !=
                    0 ||
                days == 0) {
                stats_usage(stderr);
                return 2;
            }
            i++;
            continue;
        }
        int r = cli_config_opt(argc, argv, &i, &path);
        if (r <= 0) {
            stats_usage(stderr);
            return 2;
        }
        explicit_path = 1;
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        return 1;
    int rc = 1;
    if (cluster) {
        rc = print_cluster(cfg);
        goto out;
    }
    if (!daily && cfg->metrics.enabled) {
        struct buf body;
        buf_init(&body, STATUS_MAX_BYTES);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int f = fetch_status(cfg, &body);
        if (f == 0)
            rc = print_status(cfg, &body) == 0 ? 0 : 1;
        else if (f > 0)
            printf("no daemon answers on %s\n", cfg->metrics.address);
        curl_global_cleanup();
        buf_release(&body);
        if (f == 0 || f < 0)
            goto out;
    } else if (!daily) {
        printf("metrics are disabled in %s\n", path);
    }
    /* The retention of a stopped node is read from the SQLite file; the
     * daily totals from either store. */
    if (!daily && cli_sqlite_only(cfg, "stats (without a running daemon)"))
        goto out;
    int bad = !daily && print_store_retention(cfg) != 0;
    rc = print_daily(cfg, (unsigned)days) == 0 && !bad ? 0 : 1;
out:
    config_free(cfg);
    return rc;
}
