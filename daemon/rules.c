/* Configuration → mapping options.  mapping/ does not know config/ (modules
 * stand side by side), so the daemon translates. */
#include "daemon/rules.h"

#include <stdio.h>
#include <stdlib.h>

/* The shipped rule files compiled into the binary (scripts/embed.sh). */
extern const struct mapping_source hb_default_rules[];
extern const size_t hb_default_rules_count;

size_t rules_builtin(const struct mapping_source **out)
{
    *out = hb_default_rules;
    return hb_default_rules_count;
}

struct mapping *rules_load(const struct config *c)
{
    struct mapping_header *hs = NULL;
    if (c->mapping.n_headers) {
        hs = calloc(c->mapping.n_headers, sizeof *hs);
        if (!hs)
            return NULL;
        for (size_t i = 0; i < c->mapping.n_headers; i++) {
            hs[i].column = c->mapping.headers[i].key;
            hs[i].header = c->mapping.headers[i].value;
        }
    }
    struct mapping_opts o = {
        .schema = c->mapping.schema == CONFIG_SCHEMA_EPIC ? MAPPING_SCHEMA_EPIC
                                                          : MAPPING_SCHEMA_HEALTHCARE,
        .headers = hs,
        .n_headers = c->mapping.n_headers,
        .rules = (const char *const *)c->mapping.rules,
        .n_rules = c->mapping.n_rules,
        .sources = hb_default_rules,
        .n_sources = hb_default_rules_count,
        .time_zone = c->mapping.time_zone,
        .unmatched = c->mapping.unmatched == CONFIG_UNMATCHED_REJECT ? MAPPING_UNMATCHED_REJECT
                                                                     : MAPPING_UNMATCHED_ACCEPT,
        .date_format = c->mapping.date_format,
    };
    struct mapping_errors errs = { 0 };
    struct mapping *mp = mapping_load(&o, &errs);
    if (!mp) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.items[i]);
        if (errs.n == 0)
            fprintf(stderr, "mapping rules: cannot load\n");
    }
    mapping_errors_release(&errs);
    free(hs);
    return mp;
}

enum mapping_format rules_format(const struct config *c)
{
    switch (c->sinks.audit.format) {
    case CONFIG_FORMAT_CSV: return MAPPING_FMT_CSV;
    case CONFIG_FORMAT_PSV: return MAPPING_FMT_PSV;
    default: return MAPPING_FMT_TSV;
    }
}

const char *rules_eol(const struct config *c)
{
    return c->sinks.audit.line_ending == CONFIG_EOL_LF ? "\n" : "\r\n";
}
