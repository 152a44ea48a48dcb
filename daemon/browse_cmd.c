/* `hl7bridge messages` and `hl7bridge show`: the message browser on the
 * command line.
 *
 * `messages` prints metadata only (never a body, a name or a number): it
 * reads the store through a read-only connection, so it works beside the
 * running daemon.  `show ID` adds the segment names; `show ID --reveal
 * --reason TEXT` prints the whole message, and only after the access has
 * been journalled as a row of the audit feed (see reveal_record): no
 * record, no reveal.
 *
 * Threads: main thread only (a CLI). */
#include "daemon/browse.h"
#include "daemon/cli.h"
#include "daemon/rules.h"
#include "config/config.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/num.h"
#include "store/store.h"

#include <jansson.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SHOW_RAW_MAX (256u << 20)

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

/* ---- shared helpers (daemon/browse.h) ------------------------------------ */

/* Splits "A^B" at its first '^' into two NUL-terminated halves stored in
 * `tmp` (cap bytes); B is NULL when there is no '^' or it is empty. */
static int split_caret(const char *s, char *tmp, size_t cap, const char **a, const char **b)
{
    size_t n = strlen(s);
    if (n == 0 || n >= cap)
        return -1;
    memcpy(tmp, s, n + 1);
    char *c = strchr(tmp, '^');
    *a = tmp;
    *b = NULL;
    if (c) {
        *c = '\0';
        if (c[1])
            *b = c + 1;
    }
    return tmp[0] ? 0 : -1;
}

int browse_parse_time(const char *s, int64_t now_ms, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0)
        return -1;
    /* "90m", "2h", "7d", "30s": that long ago. */
    char unit = s[n - 1];
    if (n >= 2 && (unit == 's' || unit == 'm' || unit == 'h' || unit == 'd')) {
        uint64_t v;
        if (num_parse_u64((const uint8_t *)s, n - 1, 36500ull * 86400, &v) == 0) {
            uint64_t mul = unit == 's' ? 1000 : unit == 'm' ? 60000 : unit == 'h' ? 3600000
                                                                            : 86400000;
            *out = now_ms - (int64_t)(v * mul);
            return 0;
        }
    }
    /* YYYY-MM-DD[(T| )HH:MM[:SS]][Z]: local time unless Z. */
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int utc = s[n - 1] == 'Z';
    size_t len = utc ? n - 1 : n;
    uint64_t y, mo, d, h = 0, mi = 0, se = 0;
    const uint8_t *p = (const uint8_t *)s;
    if (len < 10 || p[4] != '-' || p[7] != '-' || num_parse_u64(p, 4, 9999, &y) != 0 ||
        num_parse_u64(p + 5, 2, 12, &mo) != 0 || num_parse_u64(p + 8, 2, 31, &d) != 0 ||
        y < 1970 || mo == 0 || d == 0)
        return -1;
    if (len > 10) {
        if ((p[10] != 'T' && p[10] != ' ') || len < 16 || p[13] != ':' ||
            num_parse_u64(p + 11, 2, 23, &h) != 0 || num_parse_u64(p + 14, 2, 59, &mi) != 0)
            return -1;
        if (len > 16 && (len != 19 || p[16] != ':' || num_parse_u64(p + 17, 2, 60, &se) != 0))
            return -1;
    }
    tm.tm_year = (int)y - 1900;
    tm.tm_mon = (int)mo - 1;
    tm.tm_mday = (int)d;
    tm.tm_hour = (int)h;
    tm.tm_min = (int)mi;
    tm.tm_sec = (int)se;
    tm.tm_isdst = -1;
    time_t t = utc ? timegm(&tm) : mktime(&tm);
    if (t == (time_t)-1)
        return -1;
    *out = (int64_t)t * 1000;
    return 0;
}

int browse_filter_set(struct browse_filter_args *fa, const char *name, const char *v)
{
    struct store_browse_filter *f = &fa->f;
    int64_t now = clock_wall_ms();
    if (strcmp(name, "control-id") == 0 || strcmp(name, "control_id") == 0) {
        if (!v || !v[0])
            return -1;
        f->control_id = v;
    } else if (strcmp(name, "sender") == 0) {
        if (!v || split_caret(v, fa->sender, sizeof fa->sender, &f->send_app, &f->send_fac) != 0)
            return -1;
    } else if (strcmp(name, "type") == 0) {
        if (!v || split_caret(v, fa->type, sizeof fa->type, &f->msg_type, &f->trigger) != 0)
            return -1;
    } else if (strcmp(name, "since") == 0) {
        if (!v || browse_parse_time(v, now, &f->since_ms) != 0)
            return -1;
    } else if (strcmp(name, "until") == 0) {
        if (!v || browse_parse_time(v, now, &f->until_ms) != 0)
            return -1;
    } else {
        return 0;
    }
    return 1;
}

int browse_filter_opt(int argc, char **argv, int *i, struct browse_filter_args *fa)
{
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) != 0 || strcmp(a, "--control_id") == 0)
        return 0;
    int r = browse_filter_set(fa, a + 2, *i + 1 < argc ? argv[*i + 1] : NULL);
    if (r > 0)
        (*i)++;
    return r;
}

void browse_time(int64_t ms, char *out, size_t cap)
{
    if (ms <= 0) {
        snprintf(out, cap, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(out, cap, "%lld", (long long)ms);
}

static void iso_utc(int64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        out[0] = '\0';
    else
        snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* "APP^FAC" of the stored MSH-3/MSH-4: their first components, as stats. */
void browse_sender(const struct store_browse_entry *e, char *out, size_t cap)
{
    size_t a = strcspn(e->send_app, "^"), f = strcspn(e->send_fac, "^");
    if (a == 0 && f == 0)
        snprintf(out, cap, "-");
    else
        snprintf(out, cap, "%.*s^%.*s", (int)a, e->send_app, (int)f, e->send_fac);
}

void browse_type(const struct store_browse_entry *e, char *out, size_t cap)
{
    if (e->trigger[0])
        snprintf(out, cap, "%s^%s", e->msg_type, e->trigger);
    else
        snprintf(out, cap, "%s", e->msg_type[0] ? e->msg_type : "-");
}

json_t *browse_entry_json(const struct store_browse_entry *e)
{
    char sender[260], type[40], t[64];
    browse_sender(e, sender, sizeof sender);
    browse_type(e, type, sizeof type);
    iso_utc(e->received_ms, t, sizeof t);
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "received", json_string(t));
    json_object_set_new(o, "received_ms", json_integer(e->received_ms));
    json_object_set_new(o, "listener", json_string(e->listener));
    json_object_set_new(o, "peer", json_string(e->peer));
    json_object_set_new(o, "sender", json_string(sender));
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "control_id", e->control_id[0] ? json_string(e->control_id)
                                                          : json_null());
    json_object_set_new(o, "version", json_string(e->version));
    json_object_set_new(o, "ack", json_string(e->ack));
    json_object_set_new(o, "status", json_string(e->status));
    json_object_set_new(o, "reason", e->reason[0] ? json_string(e->reason) : json_null());
    if (e->err_code)
        json_object_set_new(o, "err_code", json_integer(e->err_code));
    if (e->err_where[0])
        json_object_set_new(o, "err_location", json_string(e->err_where));
    json_object_set_new(o, "rows", e->rows >= 0 ? json_integer(e->rows) : json_null());
    if (e->delivered_ms) {
        iso_utc(e->delivered_ms, t, sizeof t);
        json_object_set_new(o, "delivered", json_string(t));
    } else {
        json_object_set_new(o, "delivered", json_null());
    }
    json_object_set_new(o, "duplicates", json_integer((json_int_t)e->dup_count));
    if (e->made_by[0]) {
        json_object_set_new(o, "made_by", json_string(e->made_by));
        json_object_set_new(o, "origin", json_string(e->origin));
    }
    if (e->reprocessed[0])
        json_object_set_new(o, "reprocessed_as", json_string(e->reprocessed));
    json_object_set_new(o, "body_kept", json_boolean(e->has_raw));
    return o;
}

/* ---- messages ------------------------------------------------------------ */

static void messages_usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge messages [-c FILE] [--control-id ID] [--sender APP^FAC]\n"
            "                          [--type TYPE^TRIGGER] [--since TIME] [--until TIME]\n"
            "                          [--status STATUS] [--limit N] [--json]\n"
            "\n"
            "Lists stored messages, newest first: metadata only (id, received, listener,\n"
            "peer, sender, type, control id, ACK code, status, reason, rows, delivered at),\n"
            "never a message body.  Reads the store; works while the daemon runs.\n"
            "  -c, --config FILE      configuration (default %s)\n"
            "  --control-id ID        MSH-10 exactly\n"
            "  --sender APP^FAC       MSH-3 / MSH-4 (first components; FAC may be left out)\n"
            "  --type ADT^A01         MSH-9 (the trigger may be left out: --type ADT)\n"
            "  --since/--until TIME   received from / before TIME: 2026-01-31, \"2026-01-31\n"
            "                         14:00\", 2026-01-31T14:00:00Z (UTC), or 30m, 2h, 7d ago\n"
            "  --status STATUS        accepted (delivered), undelivered, filtered (no rule\n"
            "                         selected it), quarantined, rejected (answered AE/AR,\n"
            "                         kept store.rejected_retention_days), duplicate (re-sent\n"
            "                         and answered as a duplicate)\n"
            "  --limit N              at most N messages (default 100, 0: all)\n"
            "  --json                 one JSON object per line\n"
            "Ids: 17 is a stored message, R3 a rejected one; `hl7bridge show ID`.\n",
            CONFIG_DEFAULT_PATH);
}

struct list_out {
    int json;
    uint64_t n;
};

static int print_entry(void *ud, const struct store_browse_entry *e)
{
    struct list_out *lo = ud;
    if (lo->json) {
        json_t *o = browse_entry_json(e);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(o);
        lo->n++;
        return 0;
    }
    if (lo->n++ == 0)
        printf("%-8s %-19s %-10s %-21s %-20s %-9s %-20s %-3s %-11s %5s %-19s %s\n", "ID",
               "RECEIVED", "LISTENER", "PEER", "SENDER", "TYPE", "CONTROL-ID", "ACK", "STATUS",
               "ROWS", "DELIVERED", "REASON");
    char recv[32], dlv[32], sender[260], type[40], rows[24];
    browse_time(e->received_ms, recv, sizeof recv);
    browse_time(e->delivered_ms, dlv, sizeof dlv);
    browse_sender(e, sender, sizeof sender);
    browse_type(e, type, sizeof type);
    if (e->rows >= 0)
        snprintf(rows, sizeof rows, "%lld", (long long)e->rows);
    else
        snprintf(rows, sizeof rows, "-");
    char reason[400];
    if (e->err_code)
        snprintf(reason, sizeof reason, "ERR %d%s%s: %s", e->err_code, e->err_where[0] ? " " : "",
                 e->err_where, e->reason);
    else if (e->made_by[0])
        snprintf(reason, sizeof reason, "%s of %s", e->made_by, e->origin);
    else
        snprintf(reason, sizeof reason, "%s", e->reason);
    if (e->reprocessed[0]) {
        size_t l = strlen(reason);
        snprintf(reason + l, sizeof reason - l, "%sreprocessed as %s", l ? "; " : "",
                 e->reprocessed);
    }
    if (e->dup_count) {
        size_t l = strlen(reason);
        snprintf(reason + l, sizeof reason - l, "%sre-sent %llu time%s", l ? "; " : "",
                 (unsigned long long)e->dup_count, e->dup_count == 1 ? "" : "s");
    }
    printf("%-8s %-19s %-10s %-21s %-20s %-9s %-20s %-3s %-11s %5s %-19s %s\n", e->id, recv,
           e->listener, e->peer, sender, type, e->control_id[0] ? e->control_id : "-",
           e->ack[0] ? e->ack : "-", e->status, rows, dlv, reason);
    return 0;
}

int cmd_messages(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0, json = 0;
    struct browse_filter_args fa;
    memset(&fa, 0, sizeof fa);
    fa.f.limit = 100;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            messages_usage(stdout);
            return 0;
        }
        int r = browse_filter_opt(argc, argv, &i, &fa);
        if (r < 0) {
            fprintf(stderr, "hl7bridge messages: bad value for %s\n", argv[i]);
            return 2;
        }
        if (r > 0)
            continue;
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--status") == 0 && i + 1 < argc) {
            int s = store_browse_status_parse(argv[++i]);
            if (s < 0) {
                fprintf(stderr, "hl7bridge messages: unknown status '%s'\n", argv[i]);
                return 2;
            }
            fa.f.status = (enum store_browse_status)s;
        } else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
            if (num_parse_u64((const uint8_t *)argv[i + 1], strlen(argv[i + 1]), 1000000000,
                              &fa.f.limit) != 0) {
                fprintf(stderr, "hl7bridge messages: bad --limit\n");
                return 2;
            }
            i++;
        } else if (cli_config_opt(argc, argv, &i, &path) > 0) {
            explicit_path = 1;
        } else {
            messages_usage(stderr);
            return 2;
        }
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        return 1;
    char err[512];
    int rc = 1;
    struct store_opts where = {0};
    run_store_where(cfg, &where);
    struct store_browser *b = store_browser_open(&where, 0, err, sizeof err);
    if (!b) {
        fprintf(stderr, "hl7bridge messages: %s\n", err);
        goto out;
    }
    struct list_out lo = { json, 0 };
    if (store_browser_list(b, &fa.f, print_entry, &lo, err, sizeof err) != 0) {
        fprintf(stderr, "hl7bridge messages: %s\n", err);
        goto out;
    }
    if (!json && lo.n == 0)
        printf("(no messages)\n");
    rc = 0;
out:
    store_browser_close(b);
    config_free(cfg);
    return rc;
}

/* ---- show ---------------------------------------------------------------- */

static void show_usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge show [-c FILE] ID [--reveal --reason TEXT [--user NAME]]\n"
            "\n"
            "Prints a stored message's metadata and the names of its segments.\n"
            "With --reveal it prints the whole message (patient data): the access is\n"
            "first written as a row of the audit feed (who: the OS user or --user;\n"
            "which patient; when; event \"%s\";\n"
            "the reason in the comment column), delivered by the audit sink like any\n"
            "other row.  When that record cannot be written, nothing is shown.\n"
            "  -c, --config FILE   configuration (default %s)\n"
            "  --reveal            print the message itself\n"
            "  --reason TEXT       why (required with --reveal)\n"
            "  --user NAME         the person viewing, when not the OS user\n",
            BROWSE_REVEAL_EVENT, CONFIG_DEFAULT_PATH);
}

/* Segment ids of a stored body, "MSH EVN PID …": three letters or digits
 * each, never content ("?" for anything else). */
static void print_segments(const struct buf *raw)
{
    const uint8_t *p = buf_data(raw), *end = p + raw->len;
    size_t n = 0;
    printf("segments:    ");
    while (p && p < end) {
        const uint8_t *e = p;
        while (e < end && *e != '\r' && *e != '\n')
            e++;
        if (e > p) {
            int ok = e - p >= 3;
            for (int k = 0; ok && k < 3; k++)
                ok = (p[k] >= 'A' && p[k] <= 'Z') || (p[k] >= '0' && p[k] <= '9');
            printf("%s%.*s", n++ ? " " : "", ok ? 3 : 1, ok ? (const char *)p : "?");
        }
        p = e + 1;
    }
    printf("%s\n", n ? "" : "(body not kept)");
}

static void print_meta(const struct store_browse_entry *e)
{
    char t[32], sender[260], type[40];
    browse_time(e->received_ms, t, sizeof t);
    browse_sender(e, sender, sizeof sender);
    browse_type(e, type, sizeof type);
    printf("id:          %s\n", e->id);
    printf("received:    %s\n", t);
    printf("listener:    %s\n", e->listener);
    printf("peer:        %s\n", e->peer);
    printf("sender:      %s\n", sender);
    printf("type:        %s\n", type);
    printf("control id:  %s\n", e->control_id[0] ? e->control_id : "-");
    printf("version:     %s\n", e->version[0] ? e->version : "-");
    printf("ack:         %s\n", e->ack[0] ? e->ack : "-");
    printf("status:      %s\n", e->status);
    if (e->reason[0])
        printf("reason:      %s\n", e->reason);
    if (e->err_code)
        printf("err:         %d%s%s\n", e->err_code, e->err_where[0] ? " at " : "", e->err_where);
    if (e->rows >= 0)
        printf("rows:        %lld\n", (long long)e->rows);
    browse_time(e->delivered_ms, t, sizeof t);
    printf("delivered:   %s\n", t);
    if (e->dup_count) {
        browse_time(e->last_dup_ms, t, sizeof t);
        printf("re-sent:     %llu time%s, last %s\n", (unsigned long long)e->dup_count,
               e->dup_count == 1 ? "" : "s", t);
    }
    if (e->made_by[0])
        printf("made by:     %s of %s\n", e->made_by, e->origin);
    if (e->reprocessed[0])
        printf("reprocessed: as %s\n", e->reprocessed);
}

static const char *os_user(char *buf, size_t cap)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(geteuid(), &pw, tmp, sizeof tmp, &res) == 0 && res) {
        snprintf(buf, cap, "%s", res->pw_name);
        return buf;
    }
    snprintf(buf, cap, "uid-%u", (unsigned)geteuid());
    return buf;
}

int cmd_show(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH, *id = NULL, *reason = NULL, *user = NULL;
    int explicit_path = 0, reveal = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            show_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--reveal") == 0) {
            reveal = 1;
        } else if (strcmp(argv[i], "--reason") == 0 && i + 1 < argc) {
            reason = argv[++i];
        } else if (strcmp(argv[i], "--user") == 0 && i + 1 < argc) {
            user = argv[++i];
        } else if (cli_config_opt(argc, argv, &i, &path) > 0) {
            explicit_path = 1;
        } else if (argv[i][0] != '-' && !id) {
            id = argv[i];
        } else {
            show_usage(stderr);
            return 2;
        }
    }
    if (!id) {
        show_usage(stderr);
        return 2;
    }
    if (reveal && (!reason || !reason[0])) {
        fprintf(stderr, "hl7bridge show: --reveal needs --reason TEXT (it goes into the audit "
                        "record of this access)\n");
        return 2;
    }
    if (user && !user[0]) {
        fprintf(stderr, "hl7bridge show: --user needs a name\n");
        return 2;
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        return 1;
    /* A reveal writes its access into the journal: not on PostgreSQL yet. */
    if (reveal && cli_sqlite_only(cfg, "show --reveal")) {
        config_free(cfg);
        return 1;
    }
    int rc = 1;
    char err[512], ubuf[256];
    struct buf raw;
    buf_init(&raw, SHOW_RAW_MAX);
    struct store_browse_entry e;
    struct store_opts where = {0};
    run_store_where(cfg, &where);
    struct store_browser *b = store_browser_open(&where, reveal, err, sizeof err);
    if (!b) {
        fprintf(stderr, "hl7bridge show: %s\n", err);
        goto out;
    }
    int got = store_browser_get(b, id, &e, &raw, err, sizeof err);
    if (got < 0) {
        fprintf(stderr, "hl7bridge show: %s\n", err);
        goto out;
    }
    if (got == 0) {
        fprintf(stderr, "hl7bridge show: no message %s\n", id);
        goto out;
    }
    print_meta(&e);
    print_segments(&raw);
    if (reveal) {
        if (raw.len == 0) {
            fprintf(stderr, "hl7bridge show: the body of %s is no longer kept (retention)\n", id);
            goto out;
        }
        if (!user)
            user = os_user(ubuf, sizeof ubuf);
        int64_t entry = browse_reveal_record(cfg, b, &e, &raw, user, reason, err, sizeof err);
        if (entry < 0) {
            fprintf(stderr, "hl7bridge show: not revealed, the access cannot be recorded: %s\n",
                    err);
            goto out;
        }
        fprintf(stderr, "hl7bridge show: access by %s recorded as journal entry %lld\n", user,
                (long long)entry);
        printf("----\n");
        const uint8_t *p = buf_data(&raw);
        for (size_t k = 0; k < raw.len; k++)
            putchar(p[k] == '\r' ? '\n' : p[k]);
        if (p[raw.len - 1] != '\r' && p[raw.len - 1] != '\n')
            putchar('\n');
    }
    rc = 0;
out:
    fflush(stdout);
    store_browser_close(b);
    buf_release(&raw);
    config_free(cfg);
    return rc;
}
