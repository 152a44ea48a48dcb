/* `hl7bridge reprocess`: run the current rules again on stored messages and
 * queue the rows that result (daemon/reprocess.c does the work).
 *
 * While the daemon runs, the request goes through its control socket
 * (daemon/ctl.h), so the rules used are the ones it has loaded — fix a
 * rule, `kill -HUP`, reprocess.  When no daemon answers there, the rules of
 * the configuration are loaded here and the store is written directly.
 *
 * Threads: main thread only (a CLI). */
#include "daemon/browse.h"
#include "daemon/cli.h"
#include "daemon/ctl.h"
#include "daemon/rules.h"
#include "core/buf.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define REPROCESS_MAX_ARG_IDS 100000
#define ANSWER_LINE_MAX       4096

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static void reprocess_usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge reprocess [-c FILE] (--id ID... | --status quarantined|rejected |\n"
            "                           --since TIME [--until TIME] [--type TYPE^TRIGGER])\n"
            "                           [--dry-run] [--redeliver]\n"
            "\n"
            "Runs the current mapping rules again on stored messages and queues the\n"
            "connector rows that result for the audit sink, each message's rows as a new\n"
            "journal entry (the message itself keeps its status and shows \"reprocessed\n"
            "as N\").  While the daemon runs this goes through its control socket\n"
            "(" CTL_SOCKET_NAME " beside the store, mode 0600), so the rules it has loaded\n"
            "are used: fix a rule, `kill -HUP` the daemon, reprocess.  Otherwise the\n"
            "rules of the configuration are used.  Idempotent: a message whose rows\n"
            "were queued before (by reprocess, or when it was received) is skipped.\n"
            "Only connector rows are queued; no SMS is sent for a reprocessed message.\n"
            "  -c, --config FILE   configuration (default %s)\n"
            "  --id ID             a message id from `hl7bridge messages` (repeatable;\n"
            "                      R3 is a rejected message)\n"
            "  --status S          every quarantined or every rejected message\n"
            "  --since/--until T   messages received in that time (see `messages --help`)\n"
            "  --type TYPE^TRIG    with --since: only this message type\n"
            "  --dry-run           say what would be queued, queue nothing\n"
            "  --redeliver         queue rows again even when they were queued before\n"
            "Prints one line per message, then the totals per outcome and per status\n"
            "the messages had.\n",
            CONFIG_DEFAULT_PATH);
}

static void print_totals(const struct reprocess_totals *t, int dry_run)
{
    printf("--\n");
    int any = 0;
    for (int i = 0; i < RP_N; i++) {
        if (!t->n[i])
            continue;
        printf("%s: %llu\n", reprocess_outcome_name((enum reprocess_outcome)i),
               (unsigned long long)t->n[i]);
        any = 1;
    }
    if (!any)
        printf("no message selected\n");
    printf("rows %s: %llu\n", dry_run ? "that would be queued" : "queued",
           (unsigned long long)t->rows);
    /* Then by the status the messages had: "  quarantined: 2 queued, 1 still
     * quarantined". */
    for (unsigned st = 0; st < REPROCESS_NSTATUS; st++) {
        int first = 1;
        for (int i = 0; i < RP_N; i++) {
            if (!t->by_status[st][i])
                continue;
            if (first)
                printf("  %s: ", reprocess_status_name(st));
            printf("%s%llu %s", first ? "" : ", ", (unsigned long long)t->by_status[st][i],
                   reprocess_outcome_name((enum reprocess_outcome)i));
            first = 0;
        }
        if (!first)
            printf("\n");
    }
}

static int print_line(void *ud, const char *text)
{
    (void)ud;
    printf("%s\n", text);
    return 0;
}

/* Sends the request to the daemon and relays its answer.  Returns 0/1 as
 * exit status, or -2 when no daemon answers (then nothing was done). */
static int through_daemon(const char *sock, const struct reprocess_req *rq)
{
    int fd = ctl_connect(sock);
    if (fd < 0) {
        if (errno == ENOENT || errno == ECONNREFUSED)
            return -2;
        /* A daemon may run (EACCES: another user's socket): doing the
         * work here could use other rules than it has loaded. */
        fprintf(stderr, "hl7bridge reprocess: cannot reach the daemon on %s: %s\n", sock,
                strerror(errno));
        return 1;
    }
    json_t *o = json_object();
    json_object_set_new(o, "cmd", json_string("reprocess"));
    if (rq->n_ids) {
        json_t *a = json_array();
        for (size_t i = 0; i < rq->n_ids; i++)
            json_array_append_new(a, json_string(rq->ids[i]));
        json_object_set_new(o, "ids", a);
    }
    if (rq->status)
        json_object_set_new(o, "status", json_string(rq->status == STORE_BROWSE_REJECTED
                                                         ? "rejected" : "quarantined"));
    if (rq->since_ms)
        json_object_set_new(o, "since_ms", json_integer(rq->since_ms));
    if (rq->until_ms)
        json_object_set_new(o, "until_ms", json_integer(rq->until_ms));
    if (rq->msg_type)
        json_object_set_new(o, "type", json_string(rq->msg_type));
    if (rq->trigger)
        json_object_set_new(o, "trigger", json_string(rq->trigger));
    json_object_set_new(o, "dry_run", json_boolean(rq->dry_run));
    json_object_set_new(o, "redeliver", json_boolean(rq->redeliver));
    char *req = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    int rc = 1;
    if (!req)
        goto out;
    size_t len = strlen(req);
    req[len] = '\0';
    if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
        fprintf(stderr, "hl7bridge reprocess: %s: %s\n", sock, strerror(errno));
        goto out;
    }
    printf("using the rules loaded by the running daemon (%s)\n", sock);
    FILE *in = fdopen(fd, "r");
    if (!in)
        goto out;
    fd = -1;
    char line[ANSWER_LINE_MAX];
    int finished = 0;
    while (fgets(line, sizeof line, in)) {
        if (line[0] != '{') {
            fputs(line, stdout);
            continue;
        }
        json_error_t je;
        json_t *ans = json_loads(line, 0, &je);
        if (ans && json_is_true(json_object_get(ans, "ok"))) {
            struct reprocess_totals t;
            memset(&t, 0, sizeof t);
            json_t *tt = json_object_get(ans, "totals");
            for (int i = 0; i < RP_N; i++) {
                json_t *v = json_object_get(tt, reprocess_outcome_name((enum reprocess_outcome)i));
                t.n[i] = json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
            }
            json_t *bs = json_object_get(ans, "by_status");
            for (unsigned k = 0; k < REPROCESS_NSTATUS; k++) {
                json_t *per = json_object_get(bs, reprocess_status_name(k));
                for (int i = 0; i < RP_N; i++) {
                    json_t *v = json_object_get(per,
                                                reprocess_outcome_name((enum reprocess_outcome)i));
                    t.by_status[k][i] = json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
                }
            }
            json_t *rows = json_object_get(ans, "rows");
            t.rows = json_is_integer(rows) ? (uint64_t)json_integer_value(rows) : 0;
            print_totals(&t, rq->dry_run);
            rc = t.n[RP_ERROR] ? 1 : 0;
        } else {
            const char *e = ans ? json_string_value(json_object_get(ans, "error")) : NULL;
            fprintf(stderr, "hl7bridge reprocess: the daemon says: %s\n", e ? e : "bad answer");
        }
        json_decref(ans);
        finished = 1;
        break;
    }
    if (!finished)
        fprintf(stderr, "hl7bridge reprocess: the daemon closed the connection early\n");
    fclose(in);
out:
    free(req);
    if (fd >= 0)
        close(fd);
    return rc;
}

int cmd_reprocess(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0, rc = 1;
    struct reprocess_req rq;
    memset(&rq, 0, sizeof rq);
    struct browse_filter_args fa;
    memset(&fa, 0, sizeof fa);
    const char **ids = calloc(REPROCESS_MAX_ARG_IDS, sizeof *ids);
    if (!ids)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            reprocess_usage(stdout);
            free(ids);
            return 0;
        }
        if (strcmp(a, "--since") == 0 || strcmp(a, "--until") == 0 || strcmp(a, "--type") == 0) {
            if (browse_filter_opt(argc, argv, &i, &fa) <= 0) {
                fprintf(stderr, "hl7bridge reprocess: bad value for %s\n", a);
                goto usage;
            }
        } else if (strcmp(a, "--id") == 0 && i + 1 < argc && rq.n_ids < REPROCESS_MAX_ARG_IDS) {
            ids[rq.n_ids++] = argv[++i];
        } else if (strcmp(a, "--status") == 0 && i + 1 < argc) {
            int s = store_browse_status_parse(argv[++i]);
            if (s != STORE_BROWSE_QUARANTINED && s != STORE_BROWSE_REJECTED) {
                fprintf(stderr, "hl7bridge reprocess: --status is quarantined or rejected\n");
                goto usage;
            }
            rq.status = (enum store_browse_status)s;
        } else if (strcmp(a, "--dry-run") == 0) {
            rq.dry_run = 1;
        } else if (strcmp(a, "--redeliver") == 0) {
            rq.redeliver = 1;
        } else if (cli_config_opt(argc, argv, &i, &path) > 0) {
            explicit_path = 1;
        } else {
            goto usage;
        }
    }
    int ways = (rq.n_ids > 0) + (rq.status != STORE_BROWSE_ANY) + (fa.f.since_ms != 0);
    if (ways != 1 || (fa.f.until_ms && !fa.f.since_ms) || (fa.f.msg_type && !fa.f.since_ms)) {
        fprintf(stderr, "hl7bridge reprocess: give one of --id, --status or --since\n");
        goto usage;
    }
    rq.ids = ids;
    rq.since_ms = fa.f.since_ms;
    rq.until_ms = fa.f.until_ms;
    rq.msg_type = fa.f.msg_type;
    rq.trigger = fa.f.trigger;

    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg || cli_sqlite_only(cfg, "reprocess"))
        goto out;
    char sock[256];
    int via = -2;
    if (ctl_socket_path(cfg, sock, sizeof sock) == 0)
        via = through_daemon(sock, &rq);
    if (via != -2) {
        rc = via;
    } else {
        struct mapping *mp = rules_load(cfg);
        if (mp) {
            printf("no daemon answers on %s: using the rules of %s\n", sock, path);
            struct reprocess_totals t;
            char err[512];
            if (reprocess_run(cfg->store.path, mp, rules_format(cfg), rules_eol(cfg), &rq,
                              print_line, NULL, &t, err, sizeof err) != 0) {
                fprintf(stderr, "hl7bridge reprocess: %s\n", err);
            } else {
                print_totals(&t, rq.dry_run);
                rc = t.n[RP_ERROR] ? 1 : 0;
            }
            mapping_free(mp);
        }
    }
    config_free(cfg);
out:
    free(ids);
    return rc;
usage:
    reprocess_usage(stderr);
    free(ids);
    return 2;
}
