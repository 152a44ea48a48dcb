/* upload — a prepared connector file (a daily export of access logs) to the
 * connector: `hl7bridge upload [-c FILE] DATAFILE...` and the daemon's
 * inputs.files watcher share upload_file().
 *
 * A file is checked whole before anything is sent (mapping_check_file:
 * encoding, header per mapping.headers, field counts, mandatory columns,
 * at most SINK_MAX_IMPORT_ROWS rows; and at most SINK_MAX_IMPORT_BYTES
 * bytes).  Every problem is reported as `file:line: message`; a file with
 * any problem is not sent at all.
 *
 * Then it is cut into blocks of sinks.audit.batch.max_rows rows (at most
 * 100,000), each sent with the header line and the configured line ending
 * through sinks/push.c (the audit sink's token cache, request and retries).
 * The checkpoint in the store (store/upload.c, keyed by the file's SHA-256)
 * records each block the connector accepted, so a rerun after a crash or a
 * refused block sends only what is missing.
 *
 * A block that fails for good — refused with a 4xx, or (for the CLI, which
 * ends after a run) still not delivered after every retry — is kept in the
 * store with its content, listed and sent by `hl7bridge redrive`
 * (upload_redrive below).  The CLI's rerun sends such a block again from
 * the file (the operator asked for it); the watcher does not: a refusal
 * stands until someone fixes its cause, and re-sending it at every look
 * would only hammer the connector.  The watcher's own given-up blocks
 * (connector unreachable) are not kept: its next look tries them again.
 *
 * The file is read through mmap: a 3 GB export is never copied whole; the
 * row index costs 16 bytes a row.
 *
 * Threads: the caller's (the CLI's main thread, or the watcher thread). */
#include "daemon/upload.h"

#include "daemon/cli.h"
#include "daemon/rules.h"
#include "daemon/sink_glue.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define UPLOAD_MAX_ERRORS 50   /* problems printed per file before "… and N more" */

struct upload {
    const struct config *cfg;
    const struct mapping *mp;
    struct sink_push *push;
    struct store_upload *su;
    enum mapping_format fmt;
    const char *eol;
    struct buf header;          /* the configured header line with its eol */
    uint64_t block_rows;
    int unattended;             /* the watcher: kept blocks wait for redrive */
    FILE *out, *err;            /* progress, problems (NULL: log only) */
};

/* ---- problems ---------------------------------------------------------------- */

struct check {
    struct upload *u;
    const char *name;
    uint64_t shown;
};

/* Prints (or logs) the first UPLOAD_MAX_ERRORS problems of a file. */
static void on_problem(void *ud, uint64_t line, const char *msg)
{
    struct check *c = ud;
    if (++c->shown > UPLOAD_MAX_ERRORS)
        return;
    if (c->u->err)
        fprintf(c->u->err, "%s:%llu: %s\n", c->name, (unsigned long long)line, msg);
    else
        log_warn("upload_invalid", " file=\"%s\" line=%llu problem=\"%s\"", c->name,
                 (unsigned long long)line, msg);
}

/* ---- the file ------------------------------------------------------------------- */

static int digest_hex(const uint8_t *p, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
    return 0;
}

static void say(struct upload *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct upload *u, const char *fmt, ...)
{
    if (!u->out)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(u->out, fmt, ap);
    va_end(ap);
    fflush(u->out);
}

static int send_blocks(struct upload *u, const char *name, const uint8_t *p, size_t size,
                       const struct mapping_file_rec *recs, uint64_t rows)
{
    char digest[65], err[600];
    if (digest_hex(p, size, digest) < 0) {
        if (u->err)
            fprintf(u->err, "%s: cannot compute its SHA-256\n", name);
        return UPLOAD_FAILED;
    }
    struct store_upload_file cf;
    if (store_upload_begin(u->su, digest, name, size, rows, u->block_rows, clock_wall_ms(), &cf) <
        0) {
        if (u->err)
            fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
        return UPLOAD_FAILED;
    }
    if (cf.done_ms) {
        say(u, "%s: already delivered (%llu blocks)\n", name, (unsigned long long)cf.blocks);
        return UPLOAD_DELIVERED;
    }
    if (cf.blocks_done)
        say(u, "%s: resuming: %llu of %llu blocks already delivered\n", name,
            (unsigned long long)cf.blocks_done, (unsigned long long)cf.blocks);
    struct buf block;
    buf_init(&block, SINK_MAX_IMPORT_BYTES);
    int gave_up = 0;
    const char *ext = u->fmt == MAPPING_FMT_CSV ? "csv" : "txt";
    size_t eol_len = strlen(u->eol);
    uint64_t missing = 0, kept = 0;
    for (uint64_t seq = 0; seq < cf.blocks; seq++) {
        int64_t kept_id = 0;
        int done = gave_up ? 0 : store_upload_block_done(u->su, cf.id, seq, &kept_id);
        if (done < 0) {
            if (u->err)
                fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
            gave_up = 1;
        }
        if (done > 0)
            continue;
        if (gave_up) {
            missing++;
            continue;
        }
        if (kept_id && u->unattended) {
            kept++;
            continue;
        }
        uint64_t first = seq * cf.block_rows;
        uint64_t last = first + cf.block_rows < rows ? first + cf.block_rows : rows;
        buf_reset(&block);
        int bad = buf_append(&block, buf_data(&u->header), u->header.len);
        for (uint64_t i = first; i < last && !bad; i++)
            bad = buf_append(&block, p + recs[i].off, recs[i].len) ||
                  buf_append(&block, u->eol, eol_len);
        char fname[128];
        snprintf(fname, sizeof fname, SINK_UPLOAD_FILE_PREFIX "%.16s-%05llu.%s", digest,
                 (unsigned long long)seq + 1, ext);
        int status = 0;
        enum push_result r = bad ? SINK_PUSH_REFUSED
                                 : sink_push_block(u->push, fname, buf_data(&block), block.len,
                                                   &status, err, sizeof err);
        if (bad)
            snprintf(err, sizeof err, "block too large");
        if (r == SINK_PUSH_DELIVERED) {
            if (store_upload_block_set(u->su, cf.id, seq, 1, status, NULL, NULL, clock_wall_ms(),
                                       NULL) < 0) {
                if (u->err)
                    fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
                missing++;
                gave_up = 1;
                continue;
            }
            say(u, "%s: block %llu/%llu (%llu rows) delivered\n", name,
                (unsigned long long)seq + 1, (unsigned long long)cf.blocks,
                (unsigned long long)(last - first));
            log_info("upload_block_done", " file=\"%s\" block=%llu blocks=%llu rows=%llu status=%d",
                     name, (unsigned long long)seq + 1, (unsigned long long)cf.blocks,
                     (unsigned long long)(last - first), status);
            continue;
        }
        /* Refused: kept as failed, the next blocks still go; given up
         * (connector unreachable): stop, a rerun resumes here. */
        struct store_upload_keep keep = {
            .content = buf_data(&block), .len = block.len, .file_name = fname,
            .rows = last - first, .first_line = recs[first].line, .last_line = recs[last - 1].line,
        };
        int keep_it = !bad && (r == SINK_PUSH_REFUSED || !u->unattended);
        kept_id = 0;
        if (store_upload_block_set(u->su, cf.id, seq, 0, status, err, keep_it ? &keep : NULL,
                                   clock_wall_ms(), &kept_id) < 0 &&
            u->err)
            fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
        if (kept_id)
            kept++;
        else
            missing++;
        if (u->err) {
            fprintf(u->err, "%s: block %llu/%llu (lines %llu-%llu) %s: %s\n", name,
                    (unsigned long long)seq + 1, (unsigned long long)cf.blocks,
                    (unsigned long long)keep.first_line, (unsigned long long)keep.last_line,
                    r == SINK_PUSH_REFUSED ? "refused" : "not delivered", err);
            if (kept_id)
                fprintf(u->err, "%s: block %llu/%llu kept for redrive as upload:%lld\n", name,
                        (unsigned long long)seq + 1, (unsigned long long)cf.blocks,
                        (long long)kept_id);
        }
        if (kept_id)
            log_error("upload_block_failed",
                      " file=\"%s\" block=%llu status=%d error=\"%s\" kept=upload:%lld"
                      " hint=\"fix the cause, then: hl7bridge redrive upload:%lld\"",
                      name, (unsigned long long)seq + 1, status, err, (long long)kept_id,
                      (long long)kept_id);
        else
            log_error("upload_block_failed", " file=\"%s\" block=%llu status=%d error=\"%s\"",
                      name, (unsigned long long)seq + 1, status, err);
        if (r == SINK_PUSH_GAVE_UP)
            gave_up = 1;
    }
    buf_release(&block);
    if (missing || kept) {
        if (u->err && kept)
            fprintf(u->err, "%s: %llu block%s kept for redrive: `hl7bridge redrive --list` shows "
                            "them, `hl7bridge redrive upload:ID` or `--all-failed` sends them "
                            "once the cause is fixed (or run this upload again)\n",
                    name, (unsigned long long)kept, kept == 1 ? "" : "s");
        if (u->err && missing)
            fprintf(u->err, "%s: %llu block%s not sent; run the same upload again once the "
                            "cause is fixed: delivered blocks are not sent again\n",
                    name, (unsigned long long)missing, missing == 1 ? "" : "s");
        return missing ? UPLOAD_FAILED : UPLOAD_KEPT;
    }
    if (store_upload_finish(u->su, cf.id, clock_wall_ms()) < 0 && u->err)
        fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
    say(u, "%s: delivered: %llu rows in %llu blocks\n", name, (unsigned long long)rows,
        (unsigned long long)cf.blocks);
    return UPLOAD_DELIVERED;
}

int upload_file(struct upload *u, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        if (u->err)
            fprintf(u->err, "%s: cannot read: %s\n", path, fd < 0 ? strerror(e) : "not a file");
        if (fd >= 0)
            close(fd);
        return UPLOAD_INVALID;
    }
    struct check c = { u, path, 0 };
    if ((uint64_t)st.st_size > SINK_MAX_IMPORT_BYTES) {
        char msg[160];
        snprintf(msg, sizeof msg, "%lld bytes: the connector takes at most %llu in one file",
                 (long long)st.st_size, (unsigned long long)SINK_MAX_IMPORT_BYTES);
        on_problem(&c, 1, msg);
        close(fd);
        return UPLOAD_INVALID;
    }
    size_t size = (size_t)st.st_size;
    const uint8_t *p = NULL;
    if (size) {
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            if (u->err)
                fprintf(u->err, "%s: cannot map: %s\n", path, strerror(e));
            close(fd);
            return UPLOAD_FAILED;
        }
        p = m;
    }
    close(fd);
    struct mapping_file_rec *recs = NULL;
    uint64_t problems = 0;
    int rc;
    long long n = mapping_check_file(u->mp, u->fmt, p, size, SINK_MAX_IMPORT_ROWS, &recs,
                                     on_problem, &c, &problems);
    if (n < 0) {
        if (u->err)
            fprintf(u->err, "%s: out of memory\n", path);
        rc = UPLOAD_FAILED;
    } else if (problems) {
        if (problems > UPLOAD_MAX_ERRORS && u->err)
            fprintf(u->err, "%s: … and %llu more problems\n", path,
                    (unsigned long long)(problems - UPLOAD_MAX_ERRORS));
        if (u->err)
            fprintf(u->err, "%s: %llu problems; nothing was sent\n", path,
                    (unsigned long long)problems);
        rc = UPLOAD_INVALID;
    } else {
        rc = send_blocks(u, path, p, size, recs + 1, (uint64_t)n - 1);
    }
    free(recs);
    if (p)
        munmap((void *)(uintptr_t)p, size);
    return rc;
}

struct upload *upload_new(const struct config *cfg, const struct mapping *mp, FILE *out, FILE *err,
                          char *why, size_t whycap)
{
    struct upload *u = calloc(1, sizeof *u);
    if (!u) {
        snprintf(why, whycap, "out of memory");
        return NULL;
    }
    u->cfg = cfg;
    u->mp = mp;
    u->out = out;
    u->err = err;
    u->fmt = rules_format(cfg);
    u->eol = rules_eol(cfg);
    if (!u->eol)
        u->eol = u->fmt == MAPPING_FMT_CSV ? "\r\n" : "\n";
    u->block_rows = cfg->sinks.audit.batch.max_rows;
    if (u->block_rows == 0 || u->block_rows > SINK_MAX_BLOCK_ROWS)
        u->block_rows = SINK_MAX_BLOCK_ROWS;
    buf_init(&u->header, 1 << 20);
    struct sink_audit_opts o;
    struct buf hdr;
    buf_init(&hdr, 1 << 20);
    if (mapping_format_header(mp, u->fmt, u->eol, &u->header) != 0 ||
        sink_glue_opts(cfg, mp, &o, &hdr) != 0) {
        snprintf(why, whycap, "cannot format the header line");
        buf_release(&hdr);
        upload_free(u);
        return NULL;
    }
    u->push = sink_push_new(&o, 0, why, whycap);
    buf_release(&hdr);
    if (!u->push) {
        upload_free(u);
        return NULL;
    }
    char e2[400];
    if (!(u->su = store_upload_open(cfg->store.path, e2, sizeof e2))) {
        snprintf(why, whycap, "%s", e2);
        upload_free(u);
        return NULL;
    }
    return u;
}

void upload_set_stop(struct upload *u, const atomic_int *stop)
{
    sink_push_set_stop(u->push, stop);
}

void upload_set_unattended(struct upload *u)
{
    u->unattended = 1;
}

/* ---- redrive of kept blocks ----------------------------------------------------- */

void upload_kept_describe(const struct store_upload_kept *k, char *out, size_t cap)
{
    snprintf(out, cap,
             "upload:%lld %s block %llu/%llu (lines %llu-%llu): %llu rows, %u attempt%s, "
             "last status %d: %s",
             (long long)k->id, k->name, (unsigned long long)k->seq + 1,
             (unsigned long long)k->blocks, (unsigned long long)k->first_line,
             (unsigned long long)k->last_line, (unsigned long long)k->rows, k->attempts,
             k->attempts == 1 ? "" : "s", k->last_status,
             k->last_error[0] ? k->last_error : "(no error text)");
}

struct kept_list {
    struct store_upload_kept *v;
    size_t n, cap;
    int oom;
};

static void collect(void *ud, const struct store_upload_kept *k)
{
    struct kept_list *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct store_upload_kept *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *k;
}

int upload_redrive(struct upload *u, int64_t id, struct upload_redrive_counts *c)
{
    memset(c, 0, sizeof *c);
    struct kept_list l = { 0 };
    uint64_t n = 0;
    if (store_upload_kept_list(u->su, id, collect, &l, &n) < 0 || l.oom) {
        if (u->err)
            fprintf(u->err, "hl7bridge redrive: store: %s\n",
                    l.oom ? "out of memory" : store_upload_errmsg(u->su));
        free(l.v);
        return -1;
    }
    struct buf content;
    buf_init(&content, SINK_MAX_IMPORT_BYTES);
    int rc = 0;
    for (size_t i = 0; i < l.n; i++) {
        const struct store_upload_kept *k = &l.v[i];
        char line[1024], err[600];
        upload_kept_describe(k, line, sizeof line);
        c->found++;
        buf_reset(&content);
        int got = store_upload_kept_content(u->su, k->id, &content);
        if (got <= 0) {
            /* Purged (or delivered by a rerun) since it was listed. */
            say(u, "%s -> %s\n", line, got == 0 ? "gone from the store" : "cannot be read");
            c->failed++;
            continue;
        }
        int status = 0;
        enum push_result r = sink_push_block(u->push, k->file_name, buf_data(&content),
                                             content.len, &status, err, sizeof err);
        int ok = r == SINK_PUSH_DELIVERED;
        if (store_upload_redriven(u->su, k, ok, status, ok ? NULL : err, clock_wall_ms()) < 0) {
            if (u->err)
                fprintf(u->err, "hl7bridge redrive: upload:%lld: checkpoint: %s\n",
                        (long long)k->id, store_upload_errmsg(u->su));
            rc = -1;
        }
        if (ok) {
            c->delivered++;
            say(u, "%s -> delivered\n", line);
            log_info("upload_block_redriven", " kept=upload:%lld file=\"%s\" block=%llu status=%d",
                     (long long)k->id, k->name, (unsigned long long)k->seq + 1, status);
        } else {
            c->failed++;
            say(u, "%s -> %s: %s\n", line,
                r == SINK_PUSH_REFUSED ? "refused again" : "not delivered", err);
            log_error("upload_block_failed",
                      " kept=upload:%lld file=\"%s\" block=%llu status=%d error=\"%s\"",
                      (long long)k->id, k->name, (unsigned long long)k->seq + 1, status, err);
        }
    }
    buf_release(&content);
    free(l.v);
    return rc;
}

void upload_free(struct upload *u)
{
    if (!u)
        return;
    sink_push_free(u->push);
    store_upload_close(u->su);
    buf_release(&u->header);
    free(u);
}

/* ---- hl7bridge upload ------------------------------------------------------------ */

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static void upload_usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge upload [-c FILE] DATAFILE...\n"
            "\n"
            "Checks prepared connector files (a daily export of access logs) against the\n"
            "configured schema and sends them to the connector in blocks, as the audit\n"
            "sink does (sinks.audit: purview pushes, file writes into its directory).\n"
            "Every problem is printed as file:line: message and a file with any problem\n"
            "is not sent.  Delivered blocks are recorded in the store: running the same\n"
            "upload again (after a crash, or once a refused block's cause is fixed)\n"
            "sends only the blocks not yet delivered.  A block refused (4xx) or not\n"
            "taken after every retry is kept in the store with its rows (until\n"
            "store.retention.upload_blocks) and can be sent without the file:\n"
            "`hl7bridge redrive --list`, `hl7bridge redrive upload:ID`.\n"
            "  -c, --config FILE   configuration (default %s)\n"
            "exit status: 0 every file delivered, 1 a problem or a block not delivered\n"
            "(kept for redrive or not)\n",
            CONFIG_DEFAULT_PATH);
}

int cmd_upload(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0;
    size_t nfiles = 0;
    const char **files = calloc((size_t)argc, sizeof *files);
    if (!files)
        return 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            upload_usage(stdout);
            free(files);
            return 0;
        }
        int r = cli_config_opt(argc, argv, &i, &path);
        if (r > 0) {
            explicit_path = 1;
            continue;
        }
        if (r < 0 || (argv[i][0] == '-' && argv[i][1])) {
            if (r == 0)
                fprintf(stderr, "hl7bridge upload: unknown option '%s'\n", argv[i]);
            upload_usage(stderr);
            free(files);
            return 2;
        }
        files[nfiles++] = argv[i];
    }
    if (!nfiles) {
        upload_usage(stderr);
        free(files);
        return 2;
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (cfg && cli_sqlite_only(cfg, "upload")) {
        config_free(cfg);
        free(files);
        return 1;
    }
    /* Progress goes to stdout, problems to stderr: the log says only what
     * goes wrong. */
    if (cfg && cfg->log.level < LOG_WARN)
        log_set_level(LOG_WARN);
    struct mapping *mp = cfg ? rules_load(cfg) : NULL;
    char why[600];
    struct upload *u = mp ? upload_new(cfg, mp, stdout, stderr, why, sizeof why) : NULL;
    int rc = 1;
    if (mp && !u)
        fprintf(stderr, "hl7bridge upload: %s\n", why);
    if (u) {
        rc = 0;
        for (size_t i = 0; i < nfiles; i++)
            if (upload_file(u, files[i]) != UPLOAD_DELIVERED)
                rc = 1;
    }
    upload_free(u);
    mapping_free(mp);
    config_free(cfg);
    free(files);
    return rc;
}
