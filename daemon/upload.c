/* upload — a prepared connector file (a daily export of access logs) to the
 * connector: `hl7bridge upload [-c FILE] DATAFILE...` and the daemon's
 * inputs.files watcher share upload_file().
 *
 * A file is checked whole before anything is sent: UTF-8 without a byte
 * order mark, the header naming the configured columns in order
 * (mapping.headers applied), every row with as many fields as the header
 * and its mandatory columns non-empty, at most SINK_MAX_IMPORT_ROWS rows
 * and SINK_MAX_IMPORT_BYTES bytes.  Every problem is reported as
 * `file:line: message`; a file with any problem is not sent at all.
 *
 * Then it is cut into blocks of sinks.audit.batch.max_rows rows (at most
 * 100,000), each sent with the header line and the configured line ending
 * through sinks/push.c (the audit sink's token cache, request and retries).
 * The checkpoint in the store (store/upload.c, keyed by the file's SHA-256)
 * records each block the connector accepted, so a rerun after a crash or a
 * refused block sends only what is missing.
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
#include <stdarg.h>
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
    char delim;
    const char *eol;
    size_t ncols;
    struct buf header;          /* the configured header line with its eol */
    uint64_t block_rows;
    FILE *out, *err;            /* progress, problems (NULL: log only) */
};

struct rec {
    size_t off, len;            /* the record without its line ending */
    uint64_t line;              /* first line number */
};

/* ---- problems ---------------------------------------------------------------- */

struct check {
    struct upload *u;
    const char *name;
    uint64_t problems;
};

static void problem(struct check *c, uint64_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(struct check *c, uint64_t line, const char *fmt, ...)
{
    c->problems++;
    if (c->problems > UPLOAD_MAX_ERRORS)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->u->err)
        fprintf(c->u->err, "%s:%llu: %s\n", c->name, (unsigned long long)line, msg);
    else
        log_warn("upload_invalid", " file=\"%s\" line=%llu problem=\"%s\"", c->name,
                 (unsigned long long)line, msg);
}

/* ---- records and fields ------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p, 0 when invalid. */
static size_t utf8_seq(const uint8_t *p, size_t left)
{
    uint8_t c = p[0];
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
             : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (!n || n > left || (n == 2 && c < 0xC2) || (n == 4 && c > 0xF4))
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if (n == 3 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0)))
        return 0;
    if (n == 4 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90)))
        return 0;
    return n;
}

/* Splits the file into records: at '\n' (a '\r' before it dropped), in csv
 * not inside quotes.  Checks UTF-8 on the way.  Returns the record count,
 * or -1 when out of memory. */
static long long split_records(struct check *c, const uint8_t *p, size_t n, int csv,
                               struct rec **out)
{
    size_t cap = 1024, cnt = 0;
    struct rec *r = malloc(cap * sizeof *r);
    if (!r)
        return -1;
    uint64_t line = 1, rec_line = 1;
    size_t start = 0;
    int quoted = 0, bad_line_reported = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && p[i] >= 0x80) {
            size_t k = utf8_seq(p + i, n - i);
            if (!k) {
                if (!bad_line_reported)
                    problem(c, line, "not valid UTF-8 (byte %zu of the file)", i + 1);
                bad_line_reported = 1;
                continue;
            }
            i += k - 1;
            continue;
        }
        if (i < n && csv && p[i] == '"')
            quoted = !quoted;
        if (i < n && p[i] != '\n')
            continue;
        if (i < n && quoted) {
            line++;
            continue;
        }
        size_t end = i;
        if (end > start && p[end - 1] == '\r')
            end--;
        if (end > start || i < n) {
            if (cnt == cap) {
                struct rec *nr = realloc(r, cap * 2 * sizeof *r);
                if (!nr) {
                    free(r);
                    return -1;
                }
                r = nr;
                cap *= 2;
            }
            if (end > start)
                r[cnt++] = (struct rec){ start, end - start, rec_line };
            else if (i < n)
                problem(c, line, "empty line");
        }
        line++;
        rec_line = line;
        start = i + 1;
        bad_line_reported = 0;
    }
    if (quoted)
        problem(c, rec_line, "a quoted field is not closed before the end of the file");
    *out = r;
    return (long long)cnt;
}

/* Calls fn for each field of a record (csv: quotes removed in `empty`
 * terms only — a field is empty when it has no characters or is ""). */
struct field {
    const uint8_t *p;
    size_t len;
    int empty;
};

static size_t split_fields(const uint8_t *p, size_t n, char delim, int csv, struct field *f,
                           size_t max)
{
    size_t k = 0, start = 0;
    int quoted = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && csv && p[i] == '"')
            quoted = !quoted;
        if (i < n && (p[i] != (uint8_t)delim || quoted))
            continue;
        if (k < max) {
            const uint8_t *s = p + start;
            size_t len = i - start;
            int empty = len == 0 || (csv && len == 2 && s[0] == '"' && s[1] == '"');
            f[k] = (struct field){ s, len, empty };
        }
        k++;
        start = i + 1;
    }
    return k;
}

/* The field's text without csv quotes, for messages (cut, no PHI: only
 * header lines are ever shown). */
static void field_text(const struct field *f, int csv, char *out, size_t cap)
{
    const uint8_t *s = f->p;
    size_t n = f->len;
    if (csv && n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        s++;
        n -= 2;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* ---- checking ----------------------------------------------------------------- */

static int check_header(struct check *c, const uint8_t *p, const struct rec *h, int csv)
{
    struct upload *u = c->u;
    struct field f[256];
    size_t n = split_fields(p + h->off, h->len, u->delim, csv, f, 256);
    size_t want = u->ncols;
    uint64_t before = c->problems;
    for (size_t i = 0; i < want && i < n && i < 256; i++) {
        char got[256];
        field_text(&f[i], csv, got, sizeof got);
        const char *exp = mapping_column_header(u->mp, i);
        if (strcmp(got, exp) != 0)
            problem(c, h->line, "column %zu of the header is \"%s\", expected \"%s\"", i + 1, got,
                    exp);
    }
    if (n < want)
        for (size_t i = n; i < want; i++)
            problem(c, h->line, "the header lacks column %zu \"%s\"", i + 1,
                    mapping_column_header(u->mp, i));
    if (n > want)
        problem(c, h->line, "the header has %zu columns, the configured schema %zu", n, want);
    /* Misnamed columns still let the rows be checked; a wrong count not. */
    (void)before;
    return n == want ? 0 : -1;
}

static void check_row(struct check *c, const uint8_t *p, const struct rec *r, int csv,
                      struct field *f)
{
    struct upload *u = c->u;
    size_t n = split_fields(p + r->off, r->len, u->delim, csv, f, u->ncols);
    if (n != u->ncols) {
        problem(c, r->line, "%zu fields, the header has %zu", n, u->ncols);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (f[i].empty && mapping_column_mandatory(u->mp, i))
            problem(c, r->line, "mandatory column \"%s\" is empty", mapping_column_header(u->mp, i));
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
                       const struct rec *recs, uint64_t rows)
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
    int failed = 0, gave_up = 0;
    const char *ext = u->fmt == MAPPING_FMT_CSV ? "csv" : "txt";
    size_t eol_len = strlen(u->eol);
    for (uint64_t seq = 0; seq < cf.blocks && !gave_up; seq++) {
        int done = store_upload_block_done(u->su, cf.id, seq);
        if (done < 0) {
            if (u->err)
                fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
            failed = 1;
            break;
        }
        if (done)
            continue;
        uint64_t first = seq * cf.block_rows;
        uint64_t last = first + cf.block_rows < rows ? first + cf.block_rows : rows;
        buf_reset(&block);
        int bad = buf_append(&block, buf_data(&u->header), u->header.len);
        for (uint64_t i = first; i < last && !bad; i++)
            bad = buf_append(&block, p + recs[i].off, recs[i].len) ||
                  buf_append(&block, u->eol, eol_len);
        char fname[128];
        snprintf(fname, sizeof fname, "hl7bridge-upload-%.16s-%05llu.%s", digest,
                 (unsigned long long)seq + 1, ext);
        int status = 0;
        enum push_result r = bad ? SINK_PUSH_REFUSED
                                 : sink_push_block(u->push, fname, buf_data(&block), block.len,
                                                   &status, err, sizeof err);
        if (bad)
            snprintf(err, sizeof err, "block too large");
        if (r == SINK_PUSH_DELIVERED) {
            if (store_upload_block_set(u->su, cf.id, seq, 1, status, NULL, clock_wall_ms()) < 0) {
                if (u->err)
                    fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
                failed = 1;
                break;
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
        if (store_upload_block_set(u->su, cf.id, seq, 0, status, err, clock_wall_ms()) < 0 &&
            u->err)
            fprintf(u->err, "%s: checkpoint: %s\n", name, store_upload_errmsg(u->su));
        if (u->err)
            fprintf(u->err, "%s: block %llu/%llu (lines %llu-%llu) %s: %s\n", name,
                    (unsigned long long)seq + 1, (unsigned long long)cf.blocks,
                    (unsigned long long)recs[first].line, (unsigned long long)recs[last - 1].line,
                    r == SINK_PUSH_REFUSED ? "refused" : "not delivered", err);
        log_error("upload_block_failed", " file=\"%s\" block=%llu status=%d error=\"%s\"", name,
                  (unsigned long long)seq + 1, status, err);
        failed = 1;
        if (r == SINK_PUSH_GAVE_UP)
            gave_up = 1;
    }
    buf_release(&block);
    if (failed) {
        if (u->err)
            fprintf(u->err, "%s: not every block was delivered; run the same upload again once "
                            "the cause is fixed: delivered blocks are not sent again\n", name);
        return UPLOAD_FAILED;
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
        problem(&c, 1, "%lld bytes: the connector takes at most %llu in one file",
                (long long)st.st_size, (unsigned long long)SINK_MAX_IMPORT_BYTES);
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
    int csv = u->fmt == MAPPING_FMT_CSV;
    struct rec *recs = NULL;
    struct field *f = calloc(u->ncols ? u->ncols : 1, sizeof *f);
    int rc = UPLOAD_INVALID;
    if (!f)
        goto out;
    if (size >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) {
        problem(&c, 1, "starts with a byte order mark: the connector takes UTF-8 without one");
        goto out;
    }
    long long n = size ? split_records(&c, p, size, csv, &recs) : 0;
    if (n < 0) {
        if (u->err)
            fprintf(u->err, "%s: out of memory\n", path);
        rc = UPLOAD_FAILED;
        goto out;
    }
    if (n == 0) {
        problem(&c, 1, "empty file: a header line and at least one row are needed");
        goto out;
    }
    if (check_header(&c, p, &recs[0], csv) == 0) {
        for (long long i = 1; i < n; i++)
            check_row(&c, p, &recs[i], csv, f);
    }
    uint64_t rows = (uint64_t)n - 1;
    if (rows == 0)
        problem(&c, recs[0].line, "no rows after the header");
    if (rows > SINK_MAX_IMPORT_ROWS)
        problem(&c, recs[n - 1].line, "%llu rows: the connector takes at most %u in one file",
                (unsigned long long)rows, SINK_MAX_IMPORT_ROWS);
    if (c.problems) {
        if (c.problems > UPLOAD_MAX_ERRORS && u->err)
            fprintf(u->err, "%s: … and %llu more problems\n", path,
                    (unsigned long long)(c.problems - UPLOAD_MAX_ERRORS));
        if (u->err)
            fprintf(u->err, "%s: %llu problems; nothing was sent\n", path,
                    (unsigned long long)c.problems);
        goto out;
    }
    rc = send_blocks(u, path, p, size, recs + 1, rows);
out:
    free(f);
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
    u->delim = u->fmt == MAPPING_FMT_CSV ? ',' : u->fmt == MAPPING_FMT_PSV ? '|' : '\t';
    u->eol = rules_eol(cfg);
    if (!u->eol)
        u->eol = u->fmt == MAPPING_FMT_CSV ? "\r\n" : "\n";
    u->ncols = mapping_column_count(mp);
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
            "sends only the blocks not yet delivered.\n"
            "  -c, --config FILE   configuration (default %s)\n"
            "exit status: 0 every file delivered, 1 a problem or a block not delivered\n",
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
