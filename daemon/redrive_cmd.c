/* `hl7bridge redrive`: failed blocks of both kinds, listed and sent again
 * once their cause is fixed.
 *
 * - audit blocks (`audit:N`, or plain N as before): blocks of the audit
 *   sink the connector refused, in the store's `batches`.  Redrive puts
 *   them back in the upload queue (failed → sealed); the running daemon's
 *   sink sends them at its next turn (or the next start).  On PostgreSQL
 *   the same, on the blocks every node shares (any node then claims it).
 * - upload blocks (`upload:N`): blocks of files sent by `hl7bridge upload`
 *   or inputs.files that failed for good, kept with their content in the
 *   store (store/upload.c).  No daemon sends those, so redrive sends them
 *   itself, now, through the same client as `upload` (daemon/upload.c),
 *   and records each delivered block in the file's checkpoint, so neither
 *   a later rerun of the upload nor another redrive sends it again.
 *   SQLite only (uploads do not run on PostgreSQL).
 *
 * Output is one line per block, starting with its id as the command takes
 * it, so a script can list, pick and redrive; exit status 0 when every
 * block named was re-queued or delivered, 1 when one was not (or an id is
 * unknown or not failed), 2 on a usage error.
 *
 * Works on the store file with its own connections, so it runs while the
 * daemon runs.  Threads: main thread only (a CLI). */
#include "daemon/cli.h"
#include "daemon/rules.h"
#include "daemon/upload.h"
#include "core/log.h"
#include "core/num.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Defined in run.c (shared by run, check and redrive). */
struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

enum redrive_kind { KIND_AUDIT, KIND_UPLOAD };

struct redrive_id {
    enum redrive_kind kind;
    int64_t id;
};

static void redrive_usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge redrive [-c FILE] --list | --all-failed | ID...\n"
            "\n"
            "Failed blocks wait in the store until their cause (job id, credentials,\n"
            "the file layout on the connector's mapping page) is fixed.  Two kinds:\n"
            "  audit:N    a block of the audit sink the connector refused (plain N works\n"
            "             too, as in the audit_block_failed log line): re-queued, and the\n"
            "             running daemon sends it within a second (or at its next start)\n"
            "  upload:N   a block of a file sent by `hl7bridge upload` or inputs.files that\n"
            "             the connector refused, or (upload) did not take after every retry,\n"
            "             kept with its rows until store.retention.upload_blocks: sent here\n"
            "             and now, without the file; once delivered, the file's checkpoint\n"
            "             has it, so no rerun of the upload sends it again\n"
            "  -c, --config FILE   configuration (default %s)\n"
            "  --list              one line per failed block: its id, what it is, rows,\n"
            "                      attempts, last status and error; nothing is sent\n"
            "  --all-failed        every failed block of both kinds\n"
            "Each block gets one line starting with its id, ending in \" -> re-queued\",\n"
            "\" -> delivered\", \" -> refused again: …\" or \" -> not delivered: …\".\n"
            "exit status: 0 every block re-queued or delivered (or listed, even none),\n"
            "1 a block not delivered, an id unknown or not failed, or a store error,\n"
            "2 usage\n",
            CONFIG_DEFAULT_PATH);
}

/* "N", "audit:N", "upload:N". */
static int parse_id(const char *s, struct redrive_id *out)
{
    out->kind = KIND_AUDIT;
    if (strncmp(s, "audit:", 6) == 0) {
        s += 6;
    } else if (strncmp(s, "upload:", 7) == 0) {
        out->kind = KIND_UPLOAD;
        s += 7;
    }
    return num_parse_i64((const uint8_t *)s, strlen(s), 1, INT64_MAX, &out->id);
}

static void describe_batch(const struct store_batch *b, char *out, size_t cap)
{
    snprintf(out, cap, "audit:%lld batch %lld: %llu rows, %u attempt%s, last status %d: %s",
             (long long)b->id, (long long)b->id, (unsigned long long)b->row_count, b->attempts,
             b->attempts == 1 ? "" : "s", b->last_status,
             b->last_error[0] ? b->last_error : "(no error text)");
}

static void list_batch(void *ud, const struct store_batch *b)
{
    (void)ud;
    char line[600];
    describe_batch(b, line, sizeof line);
    printf("%s\n", line);
}

static void requeue_batch(void *ud, const struct store_batch *b)
{
    (void)ud;
    char line[600];
    describe_batch(b, line, sizeof line);
    printf("%s -> re-queued\n", line);
}

static void list_kept(void *ud, const struct store_upload_kept *k)
{
    (void)ud;
    char line[1024];
    upload_kept_describe(k, line, sizeof line);
    printf("%s\n", line);
}

/* What the command works with, opened as needed. */
struct redrive {
    const struct config *cfg;
    struct store_opts where;   /* the store (path, or url on PostgreSQL) */
    const char *shown;         /* how messages name it */
    int on_pg;                 /* PostgreSQL: audit blocks only (no kept upload blocks there) */
    struct store_upload *su;   /* listing kept blocks */
    struct mapping *mp;        /* for the upload client's options */
    struct upload *up;         /* sending kept blocks */
};

static int open_kept(struct redrive *r)
{
    char err[512];
    if (!r->su && !(r->su = store_upload_open(r->cfg->store.path, err, sizeof err))) {
        fprintf(stderr, "hl7bridge redrive: %s\n", err);
        return -1;
    }
    return 0;
}

static int open_upload(struct redrive *r)
{
    if (r->up)
        return 0;
    char why[600];
    if (!r->mp && !(r->mp = rules_load(r->cfg)))
        return -1;
    if (!(r->up = upload_new(r->cfg, r->mp, stdout, stderr, why, sizeof why))) {
        fprintf(stderr, "hl7bridge redrive: %s\n", why);
        return -1;
    }
    return 0;
}

static void redrive_release(struct redrive *r)
{
    upload_free(r->up);
    mapping_free(r->mp);
    store_upload_close(r->su);
}

static int do_list(struct redrive *r)
{
    char err[512];
    uint64_t na = 0, nu = 0;
    if (store_batches_list_failed(&r->where, list_batch, NULL, &na, err, sizeof err) != 0) {
        fprintf(stderr, "hl7bridge redrive: %s\n", err);
        return 1;
    }
    if (!r->on_pg && open_kept(r) < 0)
        return 1;
    if (!r->on_pg && store_upload_kept_list(r->su, 0, list_kept, NULL, &nu) < 0) {
        fprintf(stderr, "hl7bridge redrive: store: %s\n", store_upload_errmsg(r->su));
        return 1;
    }
    if (na + nu == 0)
        printf("no failed block in %s\n", r->shown);
    return 0;
}

/* One audit block (id) or all of them (0).  *n gets how many re-queued. */
static int requeue_audit(struct redrive *r, int64_t id, uint64_t *n)
{
    char err[512];
    const char *path = r->shown;
    if (store_batches_redrive(&r->where, id, requeue_batch, NULL, n, err, sizeof err) != 0) {
        fprintf(stderr, "hl7bridge redrive: %s\n", err);
        return -1;
    }
    if (*n || !id)
        return 0;
    /* Say why: unknown id, or a block that is not failed. */
    struct store_batches *sb = store_batches_open(&r->where, err, sizeof err);
    struct store_batch b;
    int found = sb ? store_batches_get(sb, id, &b) : -1;
    if (found == 1)
        fprintf(stderr, "hl7bridge redrive: audit:%lld is %s, not failed: nothing to do\n",
                (long long)id, store_batch_state_name(b.state));
    else if (found == 0)
        fprintf(stderr, "hl7bridge redrive: no audit block %lld in %s\n", (long long)id, path);
    else
        fprintf(stderr, "hl7bridge redrive: %s\n", sb ? store_batches_errmsg(sb) : err);
    store_batches_close(sb);
    return -1;
}

/* One kept upload block (id) or all of them (0). */
static int send_kept(struct redrive *r, int64_t id, struct upload_redrive_counts *c)
{
    memset(c, 0, sizeof *c);
    if (r->on_pg) {
        fprintf(stderr, "hl7bridge redrive: upload blocks are not kept on PostgreSQL "
                        "(`hl7bridge upload` runs on SQLite only)\n");
        return -1;
    }
    if (open_upload(r) < 0)
        return -1;
    if (upload_redrive(r->up, id, c) < 0)
        return -1;
    if (id && !c->found) {
        fprintf(stderr, "hl7bridge redrive: no kept upload block %lld in %s (delivered since, "
                        "purged under store.retention.upload_blocks, or never kept)\n",
                (long long)id, r->cfg->store.path);
        return -1;
    }
    return c->failed ? -1 : 0;
}

static int do_all(struct redrive *r)
{
    char err[512];
    uint64_t na = 0, nu = 0, requeued = 0;
    int rc = 0;
    if (store_batches_list_failed(&r->where, NULL, NULL, &na, err, sizeof err) != 0) {
        fprintf(stderr, "hl7bridge redrive: %s\n", err);
        return 1;
    }
    if (na && requeue_audit(r, 0, &requeued) < 0)
        rc = 1;
    if (!r->on_pg &&
        (open_kept(r) < 0 || store_upload_kept_list(r->su, 0, NULL, NULL, &nu) < 0)) {
        if (r->su)
            fprintf(stderr, "hl7bridge redrive: store: %s\n", store_upload_errmsg(r->su));
        return 1;
    }
    struct upload_redrive_counts c = { 0 };
    if (nu && send_kept(r, 0, &c) < 0)
        rc = 1;
    if (!requeued && !c.found) {
        if (rc == 0)
            printf("no failed block in %s\n", r->shown);
        return rc;
    }
    if (requeued)
        printf("re-queued %llu block%s\n", (unsigned long long)requeued,
               requeued == 1 ? "" : "s");
    if (c.found)
        printf("delivered %llu upload block%s, %llu not delivered\n",
               (unsigned long long)c.delivered, c.delivered == 1 ? "" : "s",
               (unsigned long long)c.failed);
    return rc;
}

static int do_ids(struct redrive *r, const struct redrive_id *ids, size_t n)
{
    int rc = 0;
    uint64_t requeued = 0, delivered = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i].kind == KIND_AUDIT) {
            uint64_t k = 0;
            if (requeue_audit(r, ids[i].id, &k) < 0)
                rc = 1;
            requeued += k;
            continue;
        }
        struct upload_redrive_counts c;
        if (send_kept(r, ids[i].id, &c) < 0)
            rc = 1;
        delivered += c.delivered;
        failed += c.failed;
    }
    if (requeued)
        printf("re-queued %llu block%s\n", (unsigned long long)requeued,
               requeued == 1 ? "" : "s");
    if (delivered || failed)
        printf("delivered %llu upload block%s, %llu not delivered\n",
               (unsigned long long)delivered, delivered == 1 ? "" : "s",
               (unsigned long long)failed);
    return rc;
}

int cmd_redrive(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0, all = 0, list = 0;
    size_t nids = 0;
    struct redrive_id *ids = calloc((size_t)argc + 1, sizeof *ids);
    if (!ids)
        return 1;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            redrive_usage(stdout);
            rc = 0;
            goto out_ids;
        }
        int r = cli_config_opt(argc, argv, &i, &path);
        if (r < 0) {
            redrive_usage(stderr);
            goto out_ids;
        }
        if (r > 0) {
            explicit_path = 1;
            continue;
        }
        if (strcmp(argv[i], "--all-failed") == 0) {
            all = 1;
            continue;
        }
        if (strcmp(argv[i], "--list") == 0) {
            list = 1;
            continue;
        }
        if (parse_id(argv[i], &ids[nids]) == 0) {
            nids++;
            continue;
        }
        fprintf(stderr, "hl7bridge redrive: unexpected argument '%s'\n\n", argv[i]);
        redrive_usage(stderr);
        goto out_ids;
    }
    if ((all != 0) + (list != 0) + (nids != 0) != 1) {
        redrive_usage(stderr);
        goto out_ids;
    }
    rc = 1;
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        goto out_ids;
    /* Progress goes to stdout; the log says only what goes wrong. */
    if (cfg->log.level < LOG_WARN)
        log_set_level(LOG_WARN);
    struct redrive r = { .cfg = cfg, .shown = cfg->store.path,
                         .on_pg = cfg->store.type == CONFIG_STORE_POSTGRESQL };
    run_store_where(cfg, &r.where);
    if (r.on_pg) {
        r.shown = "the PostgreSQL store";
    } else if (access(cfg->store.path, F_OK) != 0) {
        fprintf(stderr, "hl7bridge redrive: no store at %s\n", cfg->store.path);
        config_free(cfg);
        goto out_ids;
    }
    rc = list ? do_list(&r) : all ? do_all(&r) : do_ids(&r, ids, nids);
    redrive_release(&r);
    config_free(cfg);
out_ids:
    free(ids);
    return rc;
}
