/* `hl7bridge map [-c FILE] MESSAGE-FILE...`: shows what the mapping rules make
 * of messages.  Standard output is exactly what the audit sink would write
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
                 "give no row are noted on standard error with the reason.\n"
                 "Exit status 1 if any message would be rejected.\n");
}

static void write_out(const struct buf *b)
{
    if (b->len)
        fwrite(buf_data(b), 1, b->len, stdout);
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
            struct hl7_err e;
            if (hl7_msg_parse(m, mm->p, mm->len, NULL, &e) != 0 || hl7_msg_validate(m, &e) != 0) {
                fprintf(stderr, "%s#%u: rejected (AR): error %d: %s\n", mm->file, mm->index,
                        e.code, e.text);
                rc = 1;
                continue;
            }
            int oc = mapping_eval(mp, m, res);
            switch (oc) {
            case MAPPING_ROWS:
                buf_reset(&out);
                if (mapping_format_rows(mp, res, fmt, eol, &out, NULL) != 0) {
                    fprintf(stderr, "%s#%u: rows too large\n", mm->file, mm->index);
                    rc = 1;
                } else {
                    write_out(&out);
                }
                break;
            case MAPPING_FILTERED:
                fprintf(stderr, "%s#%u: filtered (accepted, no row): %s\n", mm->file, mm->index,
                        mapping_result_reason(res));
                break;
            case MAPPING_QUARANTINE:
                fprintf(stderr, "%s#%u: quarantined (accepted, kept aside): %s\n", mm->file,
                        mm->index, mapping_result_reason(res));
                break;
            default: {
                const struct hl7_err *me = mapping_result_err(res);
                fprintf(stderr, "%s#%u: rejected (AE): error %d: %s\n", mm->file, mm->index,
                        me ? me->code : 0, mapping_result_reason(res));
                rc = 1;
                break;
            }
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
