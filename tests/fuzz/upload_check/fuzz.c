/* libFuzzer target: the check of prepared connector files
 * (mapping_check_file, used by `hl7bridge upload` and inputs.files) on
 * arbitrary bytes, against the healthcare and the Epic schema in all three
 * formats.  Every record must lie inside the input, start on a line that
 * exists, and every problem must name such a line with a message.  Any
 * crash, leak or sanitizer report is a finding. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "mapping/mapping.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct mapping *g_rules[2];
static uint64_t g_lines;

static void setup(void)
{
    /* The shipped rules read the `users` lookup table; an empty one is
     * enough here, the file check never evaluates a rule. */
    static const struct mapping_lookup users = {"users", NULL, "ehr_id", "upn"};
    struct mapping_opts o = {.schema = MAPPING_SCHEMA_HEALTHCARE, .time_zone = "UTC",
                             .lookups = &users, .n_lookups = 1};
    g_rules[0] = mapping_load(&o, NULL);
    o.schema = MAPPING_SCHEMA_EPIC;
    g_rules[1] = mapping_load(&o, NULL);
    if (!g_rules[0] || !g_rules[1])
        abort(); /* run from the project root so config/mappings/ is found */
}

static void on_problem(void *ud, uint64_t line, const char *msg)
{
    (void)ud;
    if (line < 1 || line > g_lines + 1 || !msg || !msg[0])
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_rules[0])
        setup();
    g_lines = 1;
    for (size_t i = 0; i < size; i++)
        g_lines += data[i] == '\n';
    for (int k = 0; k < 2; k++) {
        for (int f = MAPPING_FMT_TSV; f <= MAPPING_FMT_PSV; f++) {
            struct mapping_file_rec *recs = NULL;
            uint64_t problems = 0;
            long long n = mapping_check_file(g_rules[k], (enum mapping_format)f, data, size, 1000,
                                             &recs, on_problem, NULL, &problems);
            for (long long i = 0; i < n; i++)
                if (recs[i].off + recs[i].len > size || recs[i].len == 0 || recs[i].line < 1 ||
                    recs[i].line > g_lines)
                    abort();
            free(recs);
        }
    }
    return 0;
}
