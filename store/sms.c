/* store/sms — the SMS sink's schedule: appointments, the outbox of texts,
 * the checkpoint into the journal and named counters.
 *
 * Design: its own connection and its own tables, created with CREATE TABLE
 * IF NOT EXISTS and versioned by a row in sms_state, so the journal's
 * migration list (store_db.c) stays untouched.  Every call is one statement
 * or a short transaction; the caller groups the scan of new messages, the
 * appointment changes, the queued texts and the checkpoint into one
 * transaction so a crash resumes exactly where it stopped.  A text is
 * claimed (attempts+1, first-sent date fixed) durably before it is sent,
 * which is what makes a resend after a crash carry the same repeatability
 * id and date.
 *
 * On PostgreSQL every call goes to store/pg_sms.c (shared by the nodes).
 *
 * Threads: one struct store_sms belongs to the SMS worker thread. */
#include "store/sql.h"
#include "store/store.h"
#include "store/store_int.h"

#include "core/log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMS_SCHEMA_VERSION 2
/* How long one statement waits for the journal writer's lock.  The writer
 * commits in milliseconds; our transactions are short too. */
#define SMS_BUSY_MS 5000

enum {
    Q_SCAN, Q_SCAN_DEL, Q_WAITING, Q_APPT_GET, Q_APPT_PUT, Q_TEXT_ADD, Q_CLAIM_SEL, Q_CLAIM_UPD, Q_FINISH,
    Q_RETRY, Q_COUNT_ADD, Q_NQ
};

struct store_sms {
    struct store_pg_sms *pg;   /* PostgreSQL: everything goes there */
    sqlite3 *db;
    sqlite3_stmt *q[Q_NQ];
    struct store_busy busy;
};

static const char *const schema =
    "CREATE TABLE IF NOT EXISTS sms_state ("
    " k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS sms_counters ("
    " name TEXT PRIMARY KEY, n INTEGER NOT NULL);"
    /* state follows the latest event; fingerprint tells a re-sent message
     * (same event time, same facts) from a new one. */
    "CREATE TABLE IF NOT EXISTS sms_appointments ("
    " facility TEXT NOT NULL, appt_id TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('booked', 'cancelled', 'noshow')),"
    " event_time INTEGER NOT NULL, last_msg_id INTEGER NOT NULL, fingerprint TEXT,"
    " start_s INTEGER NOT NULL, duration_min INTEGER NOT NULL,"
    " location TEXT, provider TEXT, first_name TEXT, phone TEXT, consent INTEGER NOT NULL,"
    " purge_after_s INTEGER NOT NULL, purged INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (facility, appt_id));"
    "CREATE INDEX IF NOT EXISTS sms_appointments_purge ON sms_appointments(purge_after_s)"
    " WHERE purged = 0;"
    "CREATE TABLE IF NOT EXISTS sms_outbox ("
    " id INTEGER PRIMARY KEY,"
    " facility TEXT NOT NULL, appt_id TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('scheduled', 'updated', 'cancelled', 'reminder')),"
    " event_key TEXT NOT NULL,"
    " due_s INTEGER NOT NULL, start_s INTEGER NOT NULL,"
    " text TEXT, to_e164 TEXT, segments INTEGER NOT NULL, encoding TEXT NOT NULL,"
    " request_id TEXT NOT NULL CHECK (length(request_id) = 36),"
    " first_sent TEXT,"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed', 'skipped')),"
    " attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL,"
    " last_status INTEGER, last_error TEXT, message_id TEXT, done_ms INTEGER,"
    " UNIQUE (facility, appt_id, event_key));"
    "CREATE INDEX IF NOT EXISTS sms_outbox_due ON sms_outbox(next_ms) WHERE state = 'pending';";

static const char *const sql[Q_NQ] = {
    [Q_SCAN] = "SELECT id, msg_id, received_ms, facility, appt_id, event, event_time, start_s,"
               " duration_min, location, provider, first_name, phone, consent, language, link"
               " FROM appt_facts ORDER BY id LIMIT ?1",
    [Q_SCAN_DEL] = "DELETE FROM appt_facts WHERE id <= ?1",
    [Q_WAITING] = "SELECT EXISTS (SELECT 1 FROM appt_facts)",
    [Q_APPT_GET] = "SELECT state, event_time, last_msg_id, fingerprint, start_s, duration_min,"
                   " location, provider, first_name, phone, consent, purge_after_s, purged,"
                   " language, link FROM sms_appointments WHERE facility = ?1 AND appt_id = ?2",
    [Q_APPT_PUT] = "INSERT OR REPLACE INTO sms_appointments (facility, appt_id, state, event_time,"
                   " last_msg_id, fingerprint, start_s, duration_min, location, provider,"
                   " first_name, phone, consent, purge_after_s, purged, language, link)"
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,"
                   " ?16, ?17)",
    [Q_TEXT_ADD] = "INSERT OR IGNORE INTO sms_outbox (facility, appt_id, kind, event_key, due_s,"
                   " start_s, text, to_e164, segments, encoding, request_id, state, next_ms)"
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', ?12)",
    [Q_CLAIM_SEL] = "SELECT id, facility, appt_id, kind, event_key, due_s, start_s, text, to_e164,"
                    " request_id, first_sent, segments, encoding, attempts, next_ms"
                    " FROM sms_outbox WHERE state = 'pending' AND next_ms <= ?1"
                    " ORDER BY next_ms, id LIMIT 1",
    [Q_CLAIM_UPD] = "UPDATE sms_outbox SET attempts = attempts + 1,"
                    " first_sent = COALESCE(first_sent, ?2) WHERE id = ?1",
    [Q_FINISH] = "UPDATE sms_outbox SET state = ?2, last_status = ?3, last_error = ?4,"
                 " message_id = COALESCE(?5, message_id), done_ms = ?6, text = NULL,"
                 " to_e164 = NULL WHERE id = ?1 AND state = 'pending'",
    [Q_RETRY] = "UPDATE sms_outbox SET last_status = ?2, last_error = ?3, next_ms = ?4"
                " WHERE id = ?1 AND state = 'pending'",
    [Q_COUNT_ADD] = "INSERT INTO sms_counters (name, n) VALUES (?1, ?2)"
                    " ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
};

static const char *const appt_state_names[] = { "booked", "cancelled", "noshow" };
static const char *const text_state_names[] = { "pending", "sent", "failed", "skipped" };

static void bind_str(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
}

/* NULL for an empty string: purged / absent personal fields are NULL. */
static void bind_opt(sqlite3_stmt *st, int i, const char *s)
{
    if (s && *s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int apply_schema(sqlite3 *db)
{
    if (store_sql_exec(db, "BEGIN IMMEDIATE") < 0)
        return -1;
    if (store_sql_exec(db, schema) < 0)
        goto fail;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT v FROM sms_state WHERE k = 'schema_version'", -1, &st,
                           NULL) != SQLITE_OK)
        goto fail;
    int64_t have = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        have = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto fail;
    if (have > SMS_SCHEMA_VERSION)
        goto fail; /* written by a newer build: do not guess */
    /* 2: the language and join link of an appointment (its later texts use
     * them); input is appt_facts, so the journal checkpoint goes. */
    if (have < 2 &&
        store_sql_exec(db, "ALTER TABLE sms_appointments ADD COLUMN language TEXT;"
                           "ALTER TABLE sms_appointments ADD COLUMN link TEXT;"
                           "DELETE FROM sms_state WHERE k = 'checkpoint';"
                           "INSERT OR REPLACE INTO sms_state (k, v) VALUES ('schema_version', 2)") < 0)
        goto fail;
    return store_sql_exec(db, "COMMIT");
fail:
    store_sql_exec(db, "ROLLBACK");
    return -1;
}

struct store_sms *store_sms_open(const struct store_opts *o, char *errbuf, size_t errcap)
{
    if (errcap)
        errbuf[0] = '\0';
    struct store_sms *ss = calloc(1, sizeof *ss);
    if (!ss) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    if (o->type == STORE_POSTGRESQL) {
        if (!(ss->pg = store_pg_sms_open(o, errbuf, errcap))) {
            free(ss);
            return NULL;
        }
        return ss;
    }
    const char *path = o->path;
    if (sqlite3_open_v2(path, &ss->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(errbuf, errcap, "store: open %s: %s", path,
                 ss->db ? sqlite3_errmsg(ss->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(ss->db, 1);
    store_busy_install(ss->db, &ss->busy, SMS_BUSY_MS);
    /* FULL: a text marked sent or claimed is on disk before the next step. */
    if (store_sql_exec(ss->db, "PRAGMA synchronous=FULL") < 0 || apply_schema(ss->db) < 0) {
        snprintf(errbuf, errcap, "store: %s: SMS tables: %s", path, sqlite3_errmsg(ss->db));
        goto fail;
    }
    for (int i = 0; i < Q_NQ; i++) {
        if (sqlite3_prepare_v3(ss->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &ss->q[i], NULL) !=
            SQLITE_OK) {
            snprintf(errbuf, errcap, "store: %s: %s", path, sqlite3_errmsg(ss->db));
            goto fail;
        }
    }
    return ss;
fail:
    store_sms_close(ss);
    return NULL;
}

void store_sms_close(struct store_sms *ss)
{
    if (!ss)
        return;
    store_pg_sms_close(ss->pg);
    for (int i = 0; i < Q_NQ; i++)
        sqlite3_finalize(ss->q[i]);
    sqlite3_close(ss->db);
    free(ss);
}

const char *store_sms_errmsg(const struct store_sms *ss)
{
    if (ss && ss->pg)
        return store_pg_sms_errmsg(ss->pg);
    return ss && ss->db ? sqlite3_errmsg(ss->db) : "no connection";
}

int store_sms_begin(struct store_sms *ss)
{
    if (ss->pg)
        return store_pg_sms_begin(ss->pg);
    return store_sql_exec(ss->db, "BEGIN IMMEDIATE");
}
int store_sms_commit(struct store_sms *ss)
{
    if (ss->pg)
        return store_pg_sms_commit(ss->pg);
    if (store_sql_exec(ss->db, "COMMIT") == 0)
        return 0;
    store_sql_exec(ss->db, "ROLLBACK");
    return -1;
}
void store_sms_rollback(struct store_sms *ss)
{
    if (ss->pg) {
        store_pg_sms_rollback(ss->pg);
        return;
    }
    if (!sqlite3_get_autocommit(ss->db))
        store_sql_exec(ss->db, "ROLLBACK");
}

int store_sms_facts_waiting(struct store_sms *ss)
{
    if (ss->pg)
        return store_pg_sms_facts_waiting(ss->pg);
    sqlite3_stmt *st = ss->q[Q_WAITING];
    int rc = sqlite3_step(st);
    int any = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? any != 0 : -1;
}

static int64_t col_i64_or(sqlite3_stmt *st, int i, int64_t none)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? none : sqlite3_column_int64(st, i);
}

int store_sms_scan(struct store_sms *ss, unsigned max, store_sms_fact_cb cb, void *ud,
                   unsigned *n)
{
    if (ss->pg)
        return store_pg_sms_scan(ss->pg, max, cb, ud, n);
    sqlite3_stmt *st = ss->q[Q_SCAN];
    sqlite3_bind_int64(st, 1, max);
    struct store_sms_fact *f = calloc(1, sizeof *f);
    if (!f) {
        sqlite3_reset(st);
        return -1;
    }
    unsigned got = 0;
    int64_t last = 0;
    int rc, ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(f, 0, sizeof *f);
        f->id = sqlite3_column_int64(st, 0);
        f->msg_id = sqlite3_column_int64(st, 1);
        f->received_ms = sqlite3_column_int64(st, 2);
        store_sql_text(st, 3, f->facility, sizeof f->facility);
        store_sql_text(st, 4, f->appt_id, sizeof f->appt_id);
        store_sql_text(st, 5, f->event, sizeof f->event);
        f->event_time = col_i64_or(st, 6, -1);
        f->start_s = col_i64_or(st, 7, -1);
        f->duration_min = col_i64_or(st, 8, -1);
        store_sql_text(st, 9, f->location, sizeof f->location);
        store_sql_text(st, 10, f->provider, sizeof f->provider);
        store_sql_text(st, 11, f->first_name, sizeof f->first_name);
        store_sql_text(st, 12, f->phone, sizeof f->phone);
        store_sql_text(st, 13, f->consent, sizeof f->consent);
        store_sql_text(st, 14, f->language, sizeof f->language);
        store_sql_text(st, 15, f->link, sizeof f->link);
        ret = cb(ud, f);
        if (ret != 0)
            break;
        last = f->id;
        got++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    explicit_bzero(f, sizeof *f); /* names and numbers */
    free(f);
    if (ret != 0)
        return ret;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return -1;
    if (got) {
        sqlite3_stmt *del = ss->q[Q_SCAN_DEL];
        sqlite3_bind_int64(del, 1, last);
        if (step_done(del) < 0)
            return -1;
    }
    if (n)
        *n = got;
    return 0;
}

int store_sms_appt_get(struct store_sms *ss, const char *facility, const char *appt_id,
                       struct store_sms_appt *out)
{
    if (ss->pg)
        return store_pg_sms_appt_get(ss->pg, facility, appt_id, out);
    sqlite3_stmt *st = ss->q[Q_APPT_GET];
    bind_str(st, 1, facility);
    bind_str(st, 2, appt_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        snprintf(out->facility, sizeof out->facility, "%s", facility);
        snprintf(out->appt_id, sizeof out->appt_id, "%s", appt_id);
        const char *s = (const char *)sqlite3_column_text(st, 0);
        out->state = STORE_SMS_BOOKED;
        for (int i = 0; s && i < 3; i++)
            if (strcmp(s, appt_state_names[i]) == 0)
                out->state = (enum store_sms_appt_state)i;
        out->event_time = sqlite3_column_int64(st, 1);
        out->last_msg_id = sqlite3_column_int64(st, 2);
        store_sql_text(st, 3, out->fingerprint, sizeof out->fingerprint);
        out->start_s = sqlite3_column_int64(st, 4);
        out->duration_min = sqlite3_column_int64(st, 5);
        store_sql_text(st, 6, out->location, sizeof out->location);
        store_sql_text(st, 7, out->provider, sizeof out->provider);
        store_sql_text(st, 8, out->first_name, sizeof out->first_name);
        store_sql_text(st, 9, out->phone, sizeof out->phone);
        out->consent = sqlite3_column_int(st, 10);
        out->purge_after_s = sqlite3_column_int64(st, 11);
        out->purged = sqlite3_column_int(st, 12);
        store_sql_text(st, 13, out->language, sizeof out->language);
        store_sql_text(st, 14, out->link, sizeof out->link);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

int store_sms_appt_put(struct store_sms *ss, const struct store_sms_appt *a)
{
    if (ss->pg)
        return store_pg_sms_appt_put(ss->pg, a);
    sqlite3_stmt *st = ss->q[Q_APPT_PUT];
    bind_str(st, 1, a->facility);
    bind_str(st, 2, a->appt_id);
    bind_str(st, 3, appt_state_names[a->state <= STORE_SMS_NOSHOW ? a->state : 0]);
    sqlite3_bind_int64(st, 4, a->event_time);
    sqlite3_bind_int64(st, 5, a->last_msg_id);
    bind_opt(st, 6, a->fingerprint);
    sqlite3_bind_int64(st, 7, a->start_s);
    sqlite3_bind_int64(st, 8, a->duration_min);
    bind_opt(st, 9, a->location);
    bind_opt(st, 10, a->provider);
    bind_opt(st, 11, a->first_name);
    bind_opt(st, 12, a->phone);
    sqlite3_bind_int(st, 13, a->consent);
    sqlite3_bind_int64(st, 14, a->purge_after_s);
    sqlite3_bind_int(st, 15, a->purged);
    bind_opt(st, 16, a->language);
    bind_opt(st, 17, a->link);
    return step_done(st);
}

int store_sms_text_add(struct store_sms *ss, const struct store_sms_text *t)
{
    if (ss->pg)
        return store_pg_sms_text_add(ss->pg, t);
    sqlite3_stmt *st = ss->q[Q_TEXT_ADD];
    bind_str(st, 1, t->facility);
    bind_str(st, 2, t->appt_id);
    bind_str(st, 3, t->kind);
    bind_str(st, 4, t->event_key);
    sqlite3_bind_int64(st, 5, t->due_s);
    sqlite3_bind_int64(st, 6, t->start_s);
    bind_str(st, 7, t->text);
    bind_str(st, 8, t->to);
    sqlite3_bind_int(st, 9, (int)t->segments);
    bind_str(st, 10, t->encoding);
    bind_str(st, 11, t->request_id);
    sqlite3_bind_int64(st, 12, t->due_s * 1000);
    if (step_done(st) < 0)
        return -1;
    return sqlite3_changes(ss->db) > 0 ? 1 : 0;
}

int store_sms_drop_pending(struct store_sms *ss, const char *facility, const char *appt_id,
                           unsigned what, const char *reason, unsigned *n)
{
    if (ss->pg)
        return store_pg_sms_drop_pending(ss->pg, facility, appt_id, what, reason, n);
    static const char *const del_rem =
        "DELETE FROM sms_outbox WHERE facility = ?1 AND appt_id = ?2 AND state = 'pending'"
        " AND kind = 'reminder' AND attempts = 0";
    static const char *const skip_conf =
        "UPDATE sms_outbox SET state = 'skipped', last_error = ?3, text = NULL, to_e164 = NULL"
        " WHERE facility = ?1 AND appt_id = ?2 AND state = 'pending' AND kind != 'reminder'"
        " AND attempts = 0";
    static const char *const skip_all =
        "UPDATE sms_outbox SET state = 'skipped', last_error = ?3, text = NULL, to_e164 = NULL"
        " WHERE facility = ?1 AND appt_id = ?2 AND state = 'pending'";
    const char *const stmts[3] = { del_rem, skip_conf, skip_all };
    unsigned total = 0;
    for (int i = 0; i < 3; i++) {
        if (!(what & (1u << i)))
            continue;
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(ss->db, stmts[i], -1, &st, NULL) != SQLITE_OK)
            return -1;
        bind_str(st, 1, facility);
        bind_str(st, 2, appt_id);
        if (i > 0)
            bind_str(st, 3, reason ? reason : "dropped");
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE)
            return -1;
        total += (unsigned)sqlite3_changes(ss->db);
    }
    if (n)
        *n = total;
    return 0;
}

int store_sms_claim(struct store_sms *ss, int64_t now_ms, const char *first_sent_now,
                    struct store_sms_text *out)
{
    if (ss->pg)
        return store_pg_sms_claim(ss->pg, now_ms, first_sent_now, out);
    if (store_sms_begin(ss) < 0)
        return -1;
    sqlite3_stmt *st = ss->q[Q_CLAIM_SEL];
    sqlite3_bind_int64(st, 1, now_ms);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        out->id = sqlite3_column_int64(st, 0);
        store_sql_text(st, 1, out->facility, sizeof out->facility);
        store_sql_text(st, 2, out->appt_id, sizeof out->appt_id);
        store_sql_text(st, 3, out->kind, sizeof out->kind);
        store_sql_text(st, 4, out->event_key, sizeof out->event_key);
        out->due_s = sqlite3_column_int64(st, 5);
        out->start_s = sqlite3_column_int64(st, 6);
        store_sql_text(st, 7, out->text, sizeof out->text);
        store_sql_text(st, 8, out->to, sizeof out->to);
        store_sql_text(st, 9, out->request_id, sizeof out->request_id);
        store_sql_text(st, 10, out->first_sent, sizeof out->first_sent);
        out->segments = (unsigned)sqlite3_column_int(st, 11);
        store_sql_text(st, 12, out->encoding, sizeof out->encoding);
        out->attempts = (unsigned)sqlite3_column_int(st, 13) + 1;
        out->next_ms = sqlite3_column_int64(st, 14);
        out->state = STORE_SMS_PENDING;
        if (!out->first_sent[0])
            snprintf(out->first_sent, sizeof out->first_sent, "%s", first_sent_now);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_DONE) {
        store_sms_rollback(ss);
        return 0;
    }
    if (rc != SQLITE_ROW)
        goto fail;
    st = ss->q[Q_CLAIM_UPD];
    sqlite3_bind_int64(st, 1, out->id);
    bind_str(st, 2, first_sent_now);
    if (step_done(st) < 0 || store_sms_commit(ss) < 0)
        goto fail;
    return 1;
fail:
    store_sms_rollback(ss);
    return -1;
}

int store_sms_finish(struct store_sms *ss, int64_t id, enum store_sms_text_state state, int status,
                     const char *error, const char *message_id, int64_t now_ms)
{
    if (ss->pg)
        return store_pg_sms_finish(ss->pg, id, state, status, error, message_id, now_ms);
    sqlite3_stmt *st = ss->q[Q_FINISH];
    sqlite3_bind_int64(st, 1, id);
    bind_str(st, 2, text_state_names[state <= STORE_SMS_SKIPPED ? state : STORE_SMS_FAILED]);
    if (status)
        sqlite3_bind_int(st, 3, status);
    else
        sqlite3_bind_null(st, 3);
    bind_opt(st, 4, error);
    bind_opt(st, 5, message_id);
    sqlite3_bind_int64(st, 6, now_ms);
    return step_done(st);
}

int store_sms_retry(struct store_sms *ss, int64_t id, int status, const char *error,
                    int64_t next_ms)
{
    if (ss->pg)
        return store_pg_sms_retry(ss->pg, id, status, error, next_ms);
    sqlite3_stmt *st = ss->q[Q_RETRY];
    sqlite3_bind_int64(st, 1, id);
    if (status)
        sqlite3_bind_int(st, 2, status);
    else
        sqlite3_bind_null(st, 2);
    bind_opt(st, 3, error);
    sqlite3_bind_int64(st, 4, next_ms);
    return step_done(st);
}

int store_sms_purge(struct store_sms *ss, int64_t now_s, unsigned *appts)
{
    if (ss->pg)
        return store_pg_sms_purge(ss->pg, now_s, appts);
    static const char *const expire =
        "UPDATE sms_outbox SET state = 'skipped', last_error = 'expired', text = NULL,"
        " to_e164 = NULL WHERE state = 'pending' AND EXISTS (SELECT 1 FROM sms_appointments a"
        " WHERE a.facility = sms_outbox.facility AND a.appt_id = sms_outbox.appt_id"
        " AND a.purged = 0 AND a.purge_after_s <= ?1)";
    /* Cancelled or no-show: kept only until the cancellation text is done. */
    static const char *const purge =
        "UPDATE sms_appointments SET phone = NULL, first_name = NULL, location = NULL,"
        " provider = NULL, link = NULL, fingerprint = NULL, purged = 1"
        " WHERE purged = 0 AND (purge_after_s <= ?1 OR (state != 'booked' AND NOT EXISTS"
        " (SELECT 1 FROM sms_outbox o WHERE o.facility = sms_appointments.facility"
        " AND o.appt_id = sms_appointments.appt_id AND o.state = 'pending')))";
    if (store_sms_begin(ss) < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < 2; i++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(ss->db, i ? purge : expire, -1, &st, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_int64(st, 1, now_s);
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE)
            goto fail;
        n = sqlite3_changes(ss->db);
    }
    if (store_sms_commit(ss) < 0)
        return -1;
    if (appts)
        *appts = (unsigned)n;
    return 0;
fail:
    store_sms_rollback(ss);
    return -1;
}

int store_sms_count_add(struct store_sms *ss, const char *name, int64_t n)
{
    if (ss->pg)
        return store_pg_sms_count_add(ss->pg, name, n);
    sqlite3_stmt *st = ss->q[Q_COUNT_ADD];
    bind_str(st, 1, name);
    sqlite3_bind_int64(st, 2, n);
    return step_done(st);
}

int store_sms_counters(struct store_sms *ss, void (*cb)(void *ud, const char *name, uint64_t n),
                       void *ud)
{
    if (ss->pg)
        return store_pg_sms_counters(ss->pg, cb, ud);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(ss->db, "SELECT name, n FROM sms_counters", -1, &st, NULL) != SQLITE_OK)
        return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        cb(ud, (const char *)sqlite3_column_text(st, 0), (uint64_t)sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int store_sms_release(struct store_sms *ss, uint64_t *released)
{
    *released = 0;
    return ss->pg ? store_pg_sms_release(ss->pg, released) : 0;
}

int store_sms_pending(struct store_sms *ss, uint64_t *texts, uint64_t *reminders)
{
    if (ss->pg)
        return store_pg_sms_pending(ss->pg, texts, reminders);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(ss->db,
                           "SELECT COUNT(*), COALESCE(SUM(kind = 'reminder'), 0) FROM sms_outbox"
                           " WHERE state = 'pending'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *texts = (uint64_t)sqlite3_column_int64(st, 0);
        *reminders = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* ---- retention (writer thread, store/retention.c) ------------------------ */

/* Runs with the store writer's connection: texts that are finished, and
 * appointments that are over with their personal fields already purged
 * and nothing pending, go once their time (done_ms; the later of the purge
 * time and the last event) is before cutoff_s.  Each DELETE is one short
 * autocommit transaction of at most `chunk` rows. */
int store_sms_retention(sqlite3 *db, int64_t cutoff_s, int chunk, long *n, int64_t *oldest_ms)
{
    /* appt_facts rows are deleted by the SMS worker as it reads them; one
     * older than the cut-off was never read (the sink was stopped). */
    static const char *const del[3] = {
        "DELETE FROM appt_facts WHERE id IN (SELECT id FROM appt_facts"
        " WHERE received_ms < ?1 * 1000 LIMIT ?2)",
        "DELETE FROM sms_outbox WHERE id IN (SELECT id FROM sms_outbox"
        " WHERE state != 'pending' AND done_ms < ?1 * 1000 LIMIT ?2)",
        "DELETE FROM sms_appointments WHERE rowid IN (SELECT rowid FROM sms_appointments a"
        " WHERE purged = 1 AND MAX(purge_after_s, event_time) < ?1 AND NOT EXISTS"
        " (SELECT 1 FROM sms_outbox o WHERE o.facility = a.facility AND o.appt_id = a.appt_id"
        " AND o.state = 'pending') LIMIT ?2)",
    };
    static const char *const oldest =
        "SELECT MIN(t) FROM (SELECT MIN(event_time) * 1000 AS t FROM sms_appointments"
        " UNION ALL SELECT MIN(COALESCE(done_ms, due_s * 1000)) FROM sms_outbox"
        " UNION ALL SELECT MIN(received_ms) FROM appt_facts)";
    *n = 0;
    *oldest_ms = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, oldest, -1, &st, NULL) != SQLITE_OK)
        return 0; /* no SMS tables: the SMS sink never ran */
    for (int i = 0; cutoff_s != INT64_MIN && i < 3; i++) {
        sqlite3_stmt *d = NULL;
        if (sqlite3_prepare_v2(db, del[i], -1, &d, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_int64(d, 1, cutoff_s);
        sqlite3_bind_int(d, 2, chunk);
        int rc = sqlite3_step(d);
        sqlite3_finalize(d);
        if (rc != SQLITE_DONE)
            goto fail;
        *n += sqlite3_changes(db);
    }
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        *oldest_ms = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return 0;
fail:
    log_warn("store_retention_failed", " kind=sms error=\"%s\"", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return -1;
}
