/* Configuration → mapping options.  mapping/ does not know config/ (modules
 * stand side by side), so the daemon translates. */
#include "daemon/rules.h"

#include <pthread.h>
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
    /* Without mapping.lookups the shipped rules get an empty `users`
     * table: they load, and every row stays unresolved (and is dropped)
     * until the operator names the directory export. */
    static const struct mapping_lookup builtin_users = {"users", NULL, "ehr_id", "upn"};
    struct mapping_lookup *lk = NULL;
    if (c->mapping.n_lookups) {
        lk = calloc(c->mapping.n_lookups, sizeof *lk);
        if (!lk) {
            free(hs);
            return NULL;
        }
        for (size_t i = 0; i < c->mapping.n_lookups; i++) {
            lk[i].name = c->mapping.lookups[i].name;
            lk[i].file = c->mapping.lookups[i].file;
            lk[i].key_column = c->mapping.lookups[i].key_column;
            lk[i].value_column = c->mapping.lookups[i].value_column;
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
        .consent_field = c->sinks.sms.consent.field,
        .lookups = lk ? lk : &builtin_users,
        .n_lookups = lk ? c->mapping.n_lookups : 1,
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
    free(lk);
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

/* ---- the live rule set --------------------------------------------------- */

struct rules_ref {
    struct mapping *mp;
    enum mapping_format fmt; /* rows written with it: format and line end */
    const char *eol;
    unsigned refs;          /* under rules_live.mu */
};

struct rules_live {
    pthread_mutex_t mu;
    struct rules_ref *cur;  /* the holder's own reference counts in refs */
};

static struct rules_ref *ref_new(struct mapping *mp, enum mapping_format fmt, const char *eol)
{
    struct rules_ref *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->mp = mp;
    r->fmt = fmt;
    r->eol = eol;
    r->refs = 1;
    return r;
}

struct rules_live *rules_live_new(struct mapping *mp, enum mapping_format fmt, const char *eol)
{
    struct rules_live *l = calloc(1, sizeof *l);
    if (!l || !(l->cur = ref_new(mp, fmt, eol))) {
        mapping_free(mp);
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

struct rules_ref *rules_live_get(struct rules_live *l)
{
    pthread_mutex_lock(&l->mu);
    struct rules_ref *r = l->cur;
    if (r)
        r->refs++;
    pthread_mutex_unlock(&l->mu);
    return r;
}

const struct mapping *rules_ref_mapping(const struct rules_ref *r) { return r ? r->mp : NULL; }

enum mapping_format rules_ref_format(const struct rules_ref *r) { return r->fmt; }

const char *rules_ref_eol(const struct rules_ref *r) { return r->eol; }

void rules_ref_put(struct rules_live *l, struct rules_ref *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&l->mu);
    int last = --r->refs == 0;
    pthread_mutex_unlock(&l->mu);
    if (last) {
        mapping_free(r->mp);
        free(r);
    }
}

int rules_live_set(struct rules_live *l, struct mapping *mp, enum mapping_format fmt,
                   const char *eol)
{
    struct rules_ref *n = ref_new(mp, fmt, eol);
    if (!n)
        return -1;
    pthread_mutex_lock(&l->mu);
    struct rules_ref *old = l->cur;
    l->cur = n;
    pthread_mutex_unlock(&l->mu);
    rules_ref_put(l, old);
    return 0;
}

void rules_live_free(struct rules_live *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    struct rules_ref *r = l->cur;
    l->cur = NULL;
    pthread_mutex_unlock(&l->mu);
    rules_ref_put(l, r);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
