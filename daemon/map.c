/* `hl7bridge map [-c FILE] MESSAGE-FILE...`: shows what the mapping rules make
 * of messages, batches (FHS/BHS … BTS/FTS) member by member as the daemon
 * takes them.  Standard output is exactly what the audit sink would write
 * (header line, then the rows, in the configured format); one note per
 * message that gives no row (filtered, quarantined, rejected, unparseable)
 * goes to standard error.  Exit status 1 if any message would be rejected. */
#include "daemon/cli.h"
#include "daemon/msgfile.h"
#include "daemon/rules.h"
#include "core/buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static void map_usage(FILE *out)
{
    fprintf(out, "usage: hl7bridge map [-c FILE] MESSAGE-FILE...\n"
                 "\n"
                 "Maps each message with the configured rules and prints the rows exactly as\n"
                 "the audit sink writes them (header first) on standard output; messages that\n"
                 "give no row are noted on standard error with the reason.  A batch\n"
                 "(FHS/BHS ... BTS/FTS) is mapped member by member, as the daemon does.\n"
                 "Exit status 1 if any message would be rejected.\n");
}

static void write_out(const struct buf *b)
{
    if (b->len)
        fwrite(buf_data(b), 1, b->len, stdout);
}

struct map_ctx {
    const struct mapping *mp;
    struct hl7_msg *m;
    struct mapping_result *res;
    enum mapping_format fmt;
    const char *eol;
    struct buf *out;
};

/* Maps one message and writes its rows, or why it gives none.  Returns 1
 * when the daemon would reject it, else 0. */
static int map_one(struct map_ctx *mc, const uint8_t *p, size_t len, const char *label)
{
    struct hl7_err e;
    if (hl7_msg_parse(mc->m, p, len, NULL, &e) != 0 || hl7_msg_validate(mc->m, &e) != 0) {
        fprintf(stderr, "%s: rejected (AR): error %d: %s\n", label, e.code, e.text);
        return 1;
    }
    switch (mapping_eval(mc->mp, mc->m, mc->res)) {
    case MAPPING_ROWS:
        buf_reset(mc->out);
        if (mapping_format_rows(mc->mp, mc->res, mc->fmt, mc->eol, mc->out, NULL) != 0) {
            fprintf(stderr, "%s: rows too large\n", label);
            return 1;
        }
        write_out(mc->out);
        if (mapping_result_row_count(mc->res) == 0 && mapping_result_unresolved(mc->res, NULL))
            fprintf(stderr, "%s: no row (no resolved user; appointment facts only): %s\n", label,
                    mapping_result_reason(mc->res));
        return 0;
    case MAPPING_FILTERED:
        fprintf(stderr, "%s: filtered (accepted, no row): %s\n", label,
                mapping_result_reason(mc->res));
        return 0;
    case MAPPING_QUARANTINE:
        fprintf(stderr, "%s: quarantined (accepted, kept aside): %s\n", label,
                mapping_result_reason(mc->res));
        return 0;
    default: {
        const struct hl7_err *me = mapping_result_err(mc->res);
        fprintf(stderr, "%s: rejected (AE): error %d: %s\n", label, me ? me->code : 0,
                mapping_result_reason(mc->res));
        return 1;
    }
    }
}

int cmd_map(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            map_usage(stdout);
            return 0;
        }
        if (cli_config_opt(argc, argv, &i, &path) <= 0) {
            map_usage(stderr);
            return 2;
        }
        explicit_path = 1;
    }
    if (i >= argc) {
        map_usage(stderr);
        return 2;
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        return 1;
    struct mapping *mp = rules_load(cfg);
    if (!mp) {
        config_free(cfg);
        return 1;
    }
    enum mapping_format fmt = rules_format(cfg);
    const char *eol = rules_eol(cfg);
    struct hl7_msg *m = hl7_msg_new();
    struct mapping_result *res = mapping_result_new();
    struct buf out;
    buf_init(&out, 256u << 20);
    int rc = 0;
    if (!m || !res || mapping_format_header(mp, fmt, eol, &out) != 0) {
        rc = 1;
        goto done;
    }
    write_out(&out);
    struct map_ctx mc = {.mp = mp, .m = m, .res = res, .fmt = fmt, .eol = eol, .out = &out};
    for (; i < argc; i++) {
        size_t len;
        uint8_t *data = msgfile_read(argv[i], &len);
        if (!data) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            rc = 1;
            continue;
        }
        struct msgfile_list l = { 0 };
        if (msgfile_split(data, len, argv[i], &l) != 0) {
            free(data);
            rc = 1;
            continue;
        }
        for (size_t k = 0; k < l.n; k++) {
            const struct msgfile_msg *mm = &l.v[k];
            char label[600];
            snprintf(label, sizeof label, "%s#%u", mm->file, mm->index);
            if (!hl7_is_batch(mm->p, mm->len)) {
                rc |= map_one(&mc, mm->p, mm->len, label);
                continue;
            }
            /* a batch: each member as the daemon takes it (FHS/BHS … BTS/FTS) */
            struct hl7_batch_iter it;
            struct hl7_err e;
            struct hl7_slice msg;
            int r;
            unsigned member = 0;
            if (hl7_batch_begin(&it, mm->p, mm->len, &e) != 0) {
                fprintf(stderr, "%s: rejected (AR): batch envelope: error %d: %s\n", label, e.code,
                        e.text);
                rc = 1;
                continue;
            }
            while ((r = hl7_batch_next(&it, &msg, &e)) == 1) {
                char ml[640];
                snprintf(ml, sizeof ml, "%s.%u", label, ++member);
                rc |= map_one(&mc, msg.p, msg.len, ml);
            }
            if (r < 0) {
                fprintf(stderr, "%s: rejected (AR): batch: error %d: %s\n", label, e.code, e.text);
                rc = 1;
            }
        }
        free(l.v);
        free(data);
    }
done:
    fflush(stdout);
    buf_release(&out);
    mapping_result_free(res);
    hl7_msg_free(m);
    mapping_free(mp);
    config_free(cfg);
    return rc;
}
