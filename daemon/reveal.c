/* The access record of a reveal (`hl7bridge show ID --reveal`).
 *
 * Showing a stored message's PHI to a person is itself an access event, so
 * it goes into the same feed as the hospital's other access records: one
 * connector row, in the configured schema and format, journalled in the
 * store so the audit sink delivers it like every other row.  The patient
 * columns come from the message itself through the current rules (the
 * patient's MRN from the rules' patient_reg_id column, and the name and
 * address columns the connector requires); who, when, what and why are
 * ours: the user (OS user or --user), now, the event name
 * BROWSE_REVEAL_EVENT, the reason in the restricted-access comment.
 *
 * Threads: the CLI's main thread. */
#include "daemon/sink_glue.h"
#include "daemon/browse.h"
#include "daemon/rules.h"
#include "core/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Columns this record fills itself rather than from the message. */
static const char *own_value(const char *key, const char *now, const char *host,
                             const char *user, const char *reason)
{
    static const struct { const char *key, *value; } fixed[] = {
        {"event_name", BROWSE_REVEAL_EVENT},
        {"event_section", "hl7bridge show --reveal"},
        {"event_category", "Stored message viewed"},
        {"restricted_access_reason", "Not applicable"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (strcmp(key, fixed[i].key) == 0)
            return fixed[i].value;
    if (strcmp(key, "creation_time") == 0)
        return now;
    if (strcmp(key, "workstation_id") == 0)
        return host;
    if (strcmp(key, "restricted_access_comment") == 0)
        return reason;
    if (strcmp(key, "user_login") == 0 || strcmp(key, "employee_user_name") == 0)
        return user;
    return NULL;
}

int64_t browse_reveal_record(const struct config *cfg, struct store_browser *b,
                             const struct store_browse_entry *e, const struct buf *raw,
                             const char *user, const char *reason, char *errbuf, size_t errcap)
{
    int64_t id = -1;
    struct mapping *mp = rules_load(cfg);
    struct hl7_msg *m = hl7_msg_new();
    struct mapping_result *res = mapping_result_new();
    struct buf row;
    buf_init(&row, 1u << 20);
    if (!mp || !m || !res) {
        snprintf(errbuf, errcap, "%s", mp ? "out of memory" : "the mapping rules do not load");
        goto out;
    }
    /* The patient, as the rules see this message (nothing when it cannot
     * be parsed or no rule gives a row). */
    struct hl7_err herr;
    int have_row = hl7_msg_parse(m, buf_data(raw), raw->len, NULL, &herr) == 0 &&
                   mapping_eval(mp, m, res) == MAPPING_ROWS &&
                   mapping_result_row_count(res) > 0;

    char now[128], host[256];
    size_t nl = mapping_format_time(mp, clock_wall_ms() / 1000, now, sizeof now - 1);
    now[nl] = '\0';
    if (gethostname(host, sizeof host) != 0)
        host[0] = '\0';
    host[sizeof host - 1] = '\0';

    size_t n = mapping_column_count(mp);
    const char *values[64];
    if (n > sizeof values / sizeof values[0]) {
        snprintf(errbuf, errcap, "too many columns");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *key = mapping_column_key(mp, i);
        const char *v = own_value(key, now, host, user, reason);
        if (!v && have_row && strncmp(key, "patient_", 8) == 0)
            v = mapping_result_value(res, 0, i, NULL);
        values[i] = v ? v : "";
    }
    if (mapping_format_values(mp, values, rules_format(cfg), rules_eol(cfg), &row, NULL) != 0) {
        snprintf(errbuf, errcap, "access record too large");
        goto out;
    }
    int64_t layout = 0;
    if (sink_glue_layout(cfg, mp, &layout, errbuf, errcap) != 0)
        goto out;
    char why[300];
    snprintf(why, sizeof why, "access record: %s revealed %s", user, e->id);
    struct store_journal_entry je = {
        .made_by = "reveal", .origin = e->id,
        .listener = "reveal", .peer = "local",
        .msg_type = e->msg_type, .trigger = e->trigger, .version = e->version,
        .reason = why,
        .rows = buf_data(&row), .rows_len = row.len, .row_count = 1,
        .layout = layout, .now_ms = clock_wall_ms(),
    };
    id = store_browser_add(b, &je, errbuf, errcap);
out:
    buf_release(&row);
    mapping_result_free(res);
    hl7_msg_free(m);
    mapping_free(mp);
    return id;
}
