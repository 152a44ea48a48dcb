/* libFuzzer target: rule evaluation on arbitrary messages.  The shipped rule
 * files are loaded once (run from the project root) with the fixtures'
 * users table; each input is parsed as a message and, when it parses,
 * evaluated and formatted in all three formats.  A second rule set with
 * unmatched: reject and the Epic schema exercises the other outcome paths.
 * An input that starts with "CSV\n" is a lookup table instead: parsed as
 * the users export (key ehr_id, value upn) and probed.  Any crash, leak or
 * sanitizer report is a finding. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hl7/hl7.h"
#include "mapping/mapping.h"
#include "mapping/mapping_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct mapping *g_rules[2];
static struct mapping_result *g_res;
static struct hl7_msg *g_msg;

static void setup(void)
{
    static const struct mapping_lookup users = {"users", "tests/fixtures/mapping/users.csv",
                                                "ehr_id", "upn"};
    struct mapping_opts o = {.schema = MAPPING_SCHEMA_HEALTHCARE, .time_zone = "America/Chicago",
                             .lookups = &users, .n_lookups = 1};
    g_rules[0] = mapping_load(&o, NULL);
    o.schema = MAPPING_SCHEMA_EPIC;
    o.unmatched = MAPPING_UNMATCHED_REJECT;
    o.time_zone = "Australia/Sydney";
    o.date_format = "%d.%m.%Y %H:%M:%S";
    g_rules[1] = mapping_load(&o, NULL);
    g_res = mapping_result_new();
    g_msg = hl7_msg_new();
    if (!g_rules[0] || !g_rules[1] || !g_res || !g_msg)
        abort(); /* run from the project root so config/mappings/ is found */
}

/* Rows never carry control characters: the only bytes below 0x20 are the
 * line ends (CRLF in csv, LF otherwise) and the tsv delimiter. */
static void no_control_bytes(const uint8_t *p, size_t len, enum mapping_format f)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (c == 0x7f || (c == 0xc2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f))
            abort();
        if (c >= 0x20 || c == '\n' || (c == '\t' && f == MAPPING_FMT_TSV))
            continue;
        if (c == '\r' && f == MAPPING_FMT_CSV && i + 1 < len && p[i + 1] == '\n')
            continue;
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_res)
        setup();
    if (size >= 4 && memcmp(data, "CSV\n", 4) == 0) {
        static const struct mapping_lookup lk = {"users", "fuzz.csv", "ehr_id", "upn"};
        struct mapping_errors errs = {0};
        struct mp_table *t;
        int rc = mp_table_parse(&lk, (const char *)data + 4, size - 4, &errs, &t);
        if (rc == 0 && (!t || errs.n))
            abort(); /* success means no problem reported */
        if (rc == 0) {
            static const char *const keys[] = {"", "C08", "9", "a", "\"", "ehr_id"};
            for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
                const char *v;
                size_t vl;
                if (mp_table_get(t, (const uint8_t *)keys[i], strlen(keys[i]), &v, &vl) == 0 &&
                    strlen(v) != vl)
                    abort();
            }
        }
        mp_table_free(t);
        mapping_errors_release(&errs);
        return 0;
    }
    struct hl7_err err;
    if (hl7_msg_parse(g_msg, data, size, NULL, &err) != 0)
        return 0;
    for (int k = 0; k < 2; k++) {
        int oc = mapping_eval(g_rules[k], g_msg, g_res);
        struct buf out;
        buf_init(&out, 64u << 20);
        for (int f = MAPPING_FMT_TSV; f <= MAPPING_FMT_PSV; f++) {
            unsigned rep = 0;
            size_t from = out.len;
            if (mapping_format_rows(g_rules[k], g_res, (enum mapping_format)f, NULL, &out, &rep) != 0)
                abort();
            if (out.len > from)
                no_control_bytes(buf_data(&out) + from, out.len - from, (enum mapping_format)f);
        }
        if (oc == MAPPING_REJECT && mapping_result_err(g_res)->code == 0)
            abort();
        if (mapping_result_has_appt(g_res))
            for (int a = 0; a < MAPPING_APPT_N; a++)
                if (!mapping_result_appt(g_res, (enum mapping_appt_field)a))
                    abort();
        buf_release(&out);
    }
    return 0;
}
