/* sink_glue — builds the audit sink's options from the configuration (the
 * header line comes from the compiled mapping); `hl7bridge redrive` lives
 * in redrive_cmd.c.
 *
 * Threads: main thread (start-up, CLI). */
#include "daemon/sink_glue.h"

#include "daemon/cli.h"
#include "daemon/rules.h"
#include "core/num.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Defined in run.c (shared by run, check and redrive). */
struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static enum sink_cloud cloud_of(enum config_cloud c)
{
    switch (c) {
    case CONFIG_CLOUD_GCC: return SINK_CLOUD_GCC;
    case CONFIG_CLOUD_ITAR_L4: return SINK_CLOUD_ITAR_L4;
    case CONFIG_CLOUD_ITAR_L5: return SINK_CLOUD_ITAR_L5;
    default: return SINK_CLOUD_COMMERCIAL;
    }
}

int sink_glue_opts(const struct config *c, const struct mapping *mp, struct sink_audit_opts *o,
                   struct buf *header)
{
    const __typeof__(c->sinks.audit) *a = &c->sinks.audit;
    memset(o, 0, sizeof *o);
    buf_reset(header);
    enum mapping_format fmt = rules_format(c);
    if (mapping_format_header(mp, fmt, rules_eol(c), header) != 0 ||
        buf_append(header, "", 1) != 0) /* NUL-terminated for the options */
        return -1;
    o->kind = a->type == CONFIG_AUDIT_PURVIEW ? SINK_AUDIT_PURVIEW : SINK_AUDIT_FILE;
    run_store_where(c, &o->store);
    o->store.lease_ms = a->lease_s * 1000u;
    o->header = (const char *)buf_data(header);
    o->file_ext = fmt == MAPPING_FMT_CSV ? "csv" : "txt";
    o->max_rows = a->batch.max_rows;
    o->max_bytes = a->batch.max_bytes;
    o->max_age_s = a->batch.max_age_s;
    o->max_parallel = a->max_parallel_uploads;
    o->directory = a->directory;
    o->tenant_id = a->tenant_id;
    o->app_id = a->app_id;
    o->app_secret = a->app_secret;
    o->job_id = a->job_id;
    o->token_url = a->token_url;
    o->upload_url = a->upload_url;
    o->cloud = cloud_of(a->cloud);
    o->resource = a->resource;
    o->ca_file = a->ca_file;
    o->timeout_s = a->timeout_s;
    return 0;
}

struct sink_audit *sink_glue_start(const struct config *c, const struct mapping *mp, char *err,
                                   size_t errcap)
{
    struct buf header;
    buf_init(&header, 1 << 20);
    struct sink_audit_opts o;
    struct sink_audit *s = NULL;
    if (sink_glue_opts(c, mp, &o, &header) != 0)
        snprintf(err, errcap, "audit sink: cannot format the header line");
    else
        s = sink_audit_start(&o, err, errcap); /* copies what it keeps */
    buf_release(&header);
    return s;
}

int sink_glue_layout_of(const struct store_opts *where, const struct mapping *mp,
                        enum mapping_format fmt,
                        const char *eol, int64_t *layout, char *err, size_t errcap)
{
    struct buf header;
    buf_init(&header, 1 << 20);
    int rc = -1;
    if (mapping_format_header(mp, fmt, eol, &header) != 0 || buf_append(&header, "", 1) != 0)
        snprintf(err, errcap, "audit sink: cannot format the header line");
    else
        rc = store_layout_register(where, (const char *)buf_data(&header),
                                   fmt == MAPPING_FMT_CSV ? "csv" : "txt", layout, err, errcap);
    buf_release(&header);
    return rc;
}

int sink_glue_layout(const struct config *c, const struct mapping *mp, int64_t *layout, char *err,
                     size_t errcap)
{
    struct store_opts where = {0};
    run_store_where(c, &where);
    return sink_glue_layout_of(&where, mp, rules_format(c), rules_eol(c), layout, err, errcap);
}

static int same_str(const char *a, const char *b)
{
    return (!a || !*a) ? (!b || !*b) : (b && strcmp(a, b) == 0);
}

/* The SMS sink keeps the settings it started with (endpoint, key, templates,
 * switches, reminders, time zone): a reload that changes any of them cannot
 * take effect for texts and is refused, so rules and texts never disagree.
 * Compared through the effective values config_dump prints, so a key added
 * to sinks.sms is covered without touching this function. */
static int sms_settings_differ(const struct config *cur, const struct config *next)
{
    const char *tz_a = cur->sinks.sms.time_zone && *cur->sinks.sms.time_zone
                           ? cur->sinks.sms.time_zone : cur->mapping.time_zone;
    const char *tz_b = next->sinks.sms.time_zone && *next->sinks.sms.time_zone
                           ? next->sinks.sms.time_zone : next->mapping.time_zone;
    if (!same_str(tz_a, tz_b) || !same_str(cur->sinks.sms.access_key, next->sinks.sms.access_key))
        return 1;
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    FILE *fa = open_memstream(&a, &na), *fb = open_memstream(&b, &nb);
    int differ = 1;  /* when in doubt, refuse */
    if (fa && fb && config_dump_part(cur, "sinks.sms", fa) == 0 &&
        config_dump_part(next, "sinks.sms", fb) == 0) {
        fflush(fa);
        fflush(fb);
        differ = na != nb || memcmp(a, b, na) != 0;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    free(a);
    free(b);
    return differ;
}

int sink_glue_reload_check(const struct config *cur, const struct config *next, char *why,
                           size_t cap)
{
    const __typeof__(cur->sinks.audit) *a = &cur->sinks.audit, *b = &next->sinks.audit;
    const char *what = a->type != b->type                       ? "type"
                       : !same_str(a->directory, b->directory)  ? "directory"
                       : !same_str(a->tenant_id, b->tenant_id)  ? "tenant_id"
                       : !same_str(a->app_id, b->app_id)        ? "app_id"
                       : !same_str(a->app_secret, b->app_secret) ? "app_secret"
                       : !same_str(a->job_id, b->job_id)        ? "job_id"
                       : !same_str(a->token_url, b->token_url)  ? "token_url"
                       : !same_str(a->upload_url, b->upload_url) ? "upload_url"
                       : !same_str(a->ca_file, b->ca_file)      ? "ca_file"
                       : a->cloud != b->cloud                   ? "cloud"
                       : !same_str(a->resource, b->resource)    ? "resource"
                       : a->batch.max_rows != b->batch.max_rows ? "batch.max_rows"
                       : a->batch.max_bytes != b->batch.max_bytes ? "batch.max_bytes"
                       : a->batch.max_age_s != b->batch.max_age_s ? "batch.max_age_s"
                       : a->max_parallel_uploads != b->max_parallel_uploads
                           ? "max_parallel_uploads"
                       : a->timeout_s != b->timeout_s ? "timeout_s"
                                                      : NULL;
    if (!same_str(cur->store.path, next->store.path)) {
        snprintf(why, cap, "store.path changed: the audit sink and the store need a restart");
        return -1;
    }
    if (cur->store.type != next->store.type || !same_str(cur->store.url, next->store.url) ||
        !same_str(cur->store.password, next->store.password) ||
        !same_str(cur->node.name, next->node.name)) {
        snprintf(why, cap, "store.type, store.url, store.password or node.name changed: the "
                           "store needs a restart");
        return -1;
    }
    if (what) {
        snprintf(why, cap, "sinks.audit.%s changed: the audit sink needs a restart", what);
        return -1;
    }
    if (sms_settings_differ(cur, next)) {
        snprintf(why, cap, "sinks.sms changed (or the time zone its texts use): the SMS sink "
                           "needs a restart");
        return -1;
    }
    return 0;
}
