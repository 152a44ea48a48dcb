/* pg_db — the store's writer half on PostgreSQL (libpq): connection and
 * reconnection, schema migrations, and the group write.
 *
 * Design: several nodes write into one database.  A group is one
 * transaction sent as one pipeline (one multi-row statement holding every
 * message of the group with its rows and appointment facts as array
 * parameters, Sync; the Sync commits it): one round trip and one commit
 * however many messages it holds; results are published only after the
 * Sync's answer came back, which the server sends after the COMMIT (AA
 * after COMMIT).  Duplicates across nodes rest on a unique index over
 * (send_app, send_fac, control_id, digest): the insert skips a stored
 * message with ON CONFLICT DO NOTHING, which waits for another node's
 * uncommitted insert of the same message; once the group committed, the
 * skipped ones read their originals' ids and ACK codes, so a re-send
 * answered by any node gets the original's ACK code.  The same key with
 * other content is stored as new (key_reused), as on SQLite.
 *
 * Losing the server: a group that fails because the connection broke is
 * answered AE; the connection is dropped and tried again with a doubling
 * back-off (STORE_PG_BACKOFF_*), also while no message comes (tick), so the
 * node reports itself unavailable (/readyz 503) and accepts again by
 * itself.  A group whose first statement never reached a live server is
 * retried once on a fresh connection: nothing of it can have been
 * committed.
 *
 * Threads: open/close and store_check_postgresql on the main thread (or
 * any, for check); everything else on the writer thread. */
#include "store/store_int.h"

#include "core/clock.h"
#include "core/conninfo.h"
#include "core/log.h"
#include "core/num.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reconnection back-off, and how long one pipeline may take before the
 * connection is taken for dead (a hung server must not hold senders
 * forever: they get AE and re-send). */
#define STORE_PG_BACKOFF_MIN_MS   100
#define STORE_PG_BACKOFF_MAX_MS   5000
#define STORE_PG_IO_TIMEOUT_MS    30000
#define STORE_PG_CONNECT_TIMEOUT  "5"
/* Deadlocks between two nodes' groups (each waiting for the other's insert
 * of a message both received) are broken by the server; the group is then
 * tried again. */
#define STORE_PG_TRIES            4

/* Bumped whenever a migration is appended below. */
#define STORE_PG_SCHEMA_VERSION   6

/* Any fixed number: the advisory lock two nodes starting at once take
 * around the migrations. */
#define STORE_PG_MIGRATE_LOCK     "7401402"
/* …and the one a housekeeping step takes, so that one node at a time
 * purges (the others find it taken and skip that step). */
#define STORE_PG_HOUSEKEEP_LOCK   "7401403"

/* pg_migrations[i] takes the schema from version i to i+1.  Append only; a
 * database from a newer build is refused.  Tables and columns follow the
 * SQLite schema (store_db.c) where the sinks and the browser will read
 * them; `node` says which node wrote a message. */
static const char *const pg_migrations[STORE_PG_SCHEMA_VERSION] = {
    /* 1: messages, their rows, rejected messages, appointment facts, and the
     * function that stores one message.  messages_key makes a message
     * (key and content digest) unique across every node; entries the
     * daemon journals itself (made_by) are outside it. */
    "CREATE TABLE messages ("
    " id BIGSERIAL PRIMARY KEY,"
    " node TEXT NOT NULL,"
    " received_ms BIGINT NOT NULL,"
    " listener TEXT NOT NULL,"
    " peer TEXT NOT NULL,"
    " send_app TEXT NOT NULL,"
    " send_fac TEXT NOT NULL,"
    " control_id TEXT,"
    " msg_type TEXT NOT NULL,"
    " \"trigger\" TEXT NOT NULL,"
    " version TEXT NOT NULL,"
    " ack_code TEXT NOT NULL,"
    " raw BYTEA,"
    " quarantined INTEGER NOT NULL DEFAULT 0,"
    " reason TEXT,"
    " delivered_ms BIGINT,"
    " row_count INTEGER,"
    " filtered INTEGER NOT NULL DEFAULT 0,"
    " dup_count INTEGER NOT NULL DEFAULT 0,"
    " last_dup_ms BIGINT,"
    " made_by TEXT,"
    " origin TEXT,"
    " digest BIGINT NOT NULL);"
    "CREATE UNIQUE INDEX messages_key ON messages (send_app, send_fac, control_id, digest)"
    " WHERE control_id IS NOT NULL AND made_by IS NULL;"
    "CREATE INDEX messages_quarantined ON messages (received_ms) WHERE quarantined = 1;"
    "CREATE INDEX messages_filtered ON messages (received_ms) WHERE filtered = 1;"
    "CREATE INDEX messages_duplicates ON messages (received_ms) WHERE dup_count > 0;"
    "CREATE TABLE rows ("
    " id BIGSERIAL PRIMARY KEY,"
    " msg_id BIGINT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " data BYTEA NOT NULL,"
    " batch_id BIGINT,"
    " layout BIGINT);"
    "CREATE INDEX rows_msg ON rows (msg_id);"
    "CREATE TABLE rejected ("
    " id BIGSERIAL PRIMARY KEY,"
    " node TEXT NOT NULL,"
    " received_ms BIGINT NOT NULL,"
    " listener TEXT NOT NULL,"
    " peer TEXT NOT NULL,"
    " send_app TEXT NOT NULL,"
    " send_fac TEXT NOT NULL,"
    " control_id TEXT,"
    " msg_type TEXT NOT NULL,"
    " \"trigger\" TEXT NOT NULL,"
    " version TEXT NOT NULL,"
    " ack_code TEXT NOT NULL,"
    " raw BYTEA,"
    " reason TEXT NOT NULL,"
    " err_code INTEGER NOT NULL,"
    " err_where TEXT NOT NULL);"
    "CREATE INDEX rejected_received ON rejected (received_ms);"
    "CREATE INDEX rejected_key ON rejected (send_app, send_fac, control_id);"
    "CREATE TABLE appt_facts ("
    " id BIGSERIAL PRIMARY KEY,"
    " msg_id BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL,"
    " facility TEXT NOT NULL,"
    " appt_id TEXT NOT NULL,"
    " event TEXT NOT NULL,"
    " event_time BIGINT,"
    " start_s BIGINT,"
    " duration_min BIGINT,"
    " location TEXT,"
    " provider TEXT,"
    " first_name TEXT,"
    " phone TEXT,"
    " consent TEXT,"
    " language TEXT,"
    " link TEXT);"
    /* r_status: 0 stored, 1 duplicate (r_id, r_ack: the original's),
     * 2 stored although its key was stored before with other content.
     * Each statement of a volatile function sees a fresh snapshot, so the
     * look-up after a conflict finds the row another node just committed.
     * The loop covers the rare case of that row being gone by then. */
    "CREATE FUNCTION hb_store_message("
    " p_node TEXT, p_received BIGINT, p_listener TEXT, p_peer TEXT, p_app TEXT, p_fac TEXT,"
    " p_ctl TEXT, p_type TEXT, p_trigger TEXT, p_version TEXT, p_ack TEXT, p_raw BYTEA,"
    " p_quarantined INTEGER, p_reason TEXT, p_row_count INTEGER, p_filtered INTEGER,"
    " p_digest BIGINT, p_layout BIGINT, p_rows BYTEA[], p_appt BOOLEAN,"
    " a_facility TEXT, a_id TEXT, a_event TEXT, a_location TEXT, a_provider TEXT,"
    " a_first_name TEXT, a_phone TEXT, a_consent TEXT, a_language TEXT, a_link TEXT,"
    " a_event_time BIGINT, a_start_s BIGINT, a_duration_min BIGINT,"
    " OUT r_id BIGINT, OUT r_status INTEGER, OUT r_ack TEXT)"
    " LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  FOR attempt IN 1..3 LOOP"
    "   INSERT INTO messages (node, received_ms, listener, peer, send_app, send_fac, control_id,"
    "    msg_type, \"trigger\", version, ack_code, raw, quarantined, reason, row_count, filtered,"
    "    digest)"
    "   VALUES (p_node, p_received, p_listener, p_peer, p_app, p_fac, p_ctl, p_type, p_trigger,"
    "    p_version, p_ack, p_raw, p_quarantined, p_reason, p_row_count, p_filtered, p_digest)"
    "   ON CONFLICT (send_app, send_fac, control_id, digest)"
    "    WHERE control_id IS NOT NULL AND made_by IS NULL DO NOTHING"
    "   RETURNING id INTO r_id;"
    "   IF r_id IS NOT NULL THEN"
    "    r_status := 0;"
    "    r_ack := p_ack;"
    "    IF p_ctl IS NOT NULL AND EXISTS (SELECT 1 FROM messages WHERE send_app = p_app"
    "      AND send_fac = p_fac AND control_id = p_ctl AND digest <> p_digest"
    "      AND made_by IS NULL) THEN"
    "     r_status := 2;"
    "    END IF;"
    "    IF cardinality(p_rows) > 0 THEN"
    "     INSERT INTO rows (msg_id, seq, data, layout)"
    "      SELECT r_id, t.o - 1, t.d, p_layout FROM unnest(p_rows) WITH ORDINALITY AS t(d, o);"
    "    END IF;"
    "    IF p_appt THEN"
    "     INSERT INTO appt_facts (msg_id, received_ms, facility, appt_id, event, location,"
    "      provider, first_name, phone, consent, language, link, event_time, start_s,"
    "      duration_min)"
    "     VALUES (r_id, p_received, a_facility, a_id, a_event, a_location, a_provider,"
    "      a_first_name, a_phone, a_consent, a_language, a_link, a_event_time, a_start_s,"
    "      a_duration_min);"
    "    END IF;"
    "    RETURN;"
    "   END IF;"
    "   SELECT id, ack_code INTO r_id, r_ack FROM messages WHERE send_app = p_app"
    "    AND send_fac = p_fac AND control_id = p_ctl AND digest = p_digest AND made_by IS NULL;"
    "   IF r_id IS NOT NULL THEN"
    "    UPDATE messages SET dup_count = dup_count + 1, last_dup_ms = p_received"
    "     WHERE id = r_id;"
    "    r_status := 1;"
    "    RETURN;"
    "   END IF;"
    "  END LOOP;"
    "  RAISE EXCEPTION 'message key conflict not resolved';"
    " END $$;",
    /* 2: a group is written by one multi-row statement (hb_group, prepared
     * by each node), about eight times cheaper per message on the server
     * than a function call each: the function of version 1 goes. */
    "DROP FUNCTION hb_store_message(TEXT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT,"
    " TEXT, BYTEA, INTEGER, TEXT, INTEGER, INTEGER, BIGINT, BIGINT, BYTEA[], BOOLEAN, TEXT, TEXT,"
    " TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BIGINT, BIGINT);",
    /* 3: one row per node, rewritten by its heartbeat: beat_ms is the
     * server's clock (no skew between nodes), the counts are the node's
     * since it started. */
    "CREATE TABLE nodes ("
    " name TEXT PRIMARY KEY,"
    " version TEXT NOT NULL,"
    " started_ms BIGINT NOT NULL,"
    " beat_ms BIGINT NOT NULL,"
    " interval_ms BIGINT NOT NULL,"
    " pid BIGINT NOT NULL,"
    " aa BIGINT NOT NULL,"
    " ae BIGINT NOT NULL,"
    " ar BIGINT NOT NULL,"
    " stored BIGINT NOT NULL);",
    /* 4: the audit sink's blocks (store/pg_batch.c).  A block owns the rows
     * carrying its id; owner and lease_until say which node is sending it
     * and until when (the server's clock, ms) that claim holds unless
     * renewed.  batches_todo keeps claims off the done blocks. */
    "CREATE TABLE batches ("
    " id BIGSERIAL PRIMARY KEY,"
    " state TEXT NOT NULL CHECK (state IN ('open', 'sealed', 'uploading', 'done', 'failed')),"
    " created_ms BIGINT NOT NULL,"
    " sealed_ms BIGINT,"
    " done_ms BIGINT,"
    " next_ms BIGINT NOT NULL DEFAULT 0,"
    " first_row_id BIGINT NOT NULL,"
    " last_row_id BIGINT NOT NULL,"
    " row_count BIGINT NOT NULL,"
    " bytes BIGINT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " resends INTEGER NOT NULL DEFAULT 0,"
    " redrives INTEGER NOT NULL DEFAULT 0,"
    " last_status INTEGER,"
    " last_error TEXT,"
    " response TEXT,"
    " file_name TEXT,"
    " layout BIGINT,"
    " node TEXT NOT NULL,"
    " owner TEXT,"
    " lease_until BIGINT);"
    "CREATE INDEX batches_todo ON batches (id) WHERE state <> 'done';"
    "CREATE INDEX rows_unbatched ON rows (id) WHERE batch_id IS NULL;"
    "CREATE INDEX rows_batch ON rows (batch_id) WHERE batch_id IS NOT NULL;",
    /* 5: retention of what was delivered, daily totals, row layouts.
     * messages_delivered finds delivered messages by age, messages_raw
     * the bodies still held of delivered ones; rows_purged says a done
     * block's rows are gone.  A message without rows (filtered, or no
     * rule for its type) and not quarantined has nothing left to deliver:
     * it is delivered when stored (hb_group), as on SQLite, where the next
     * block done takes it along; those stored before get it here.
     * daily_totals and row_layouts are store/daily.c's and SQLite's
     * migration 6's tables, shared by every node. */
    "ALTER TABLE batches ADD COLUMN rows_purged INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX batches_rows_purge ON batches (done_ms)"
    " WHERE state = 'done' AND rows_purged = 0;"
    "CREATE INDEX messages_delivered ON messages (delivered_ms) WHERE delivered_ms IS NOT NULL;"
    "CREATE INDEX messages_raw ON messages (delivered_ms)"
    " WHERE delivered_ms IS NOT NULL AND raw IS NOT NULL;"
    "UPDATE messages SET delivered_ms = received_ms WHERE delivered_ms IS NULL"
    " AND quarantined = 0 AND COALESCE(row_count, 0) = 0;"
    "CREATE TABLE daily_totals ("
    " day TEXT NOT NULL,"
    " listener TEXT NOT NULL,"
    " sender TEXT NOT NULL,"
    " received BIGINT NOT NULL DEFAULT 0,"
    " duplicates BIGINT NOT NULL DEFAULT 0,"
    " aa BIGINT NOT NULL DEFAULT 0, ae BIGINT NOT NULL DEFAULT 0,"
    " ar BIGINT NOT NULL DEFAULT 0, ca BIGINT NOT NULL DEFAULT 0,"
    " ce BIGINT NOT NULL DEFAULT 0, cr BIGINT NOT NULL DEFAULT 0,"
    " PRIMARY KEY (day, listener, sender));"
    "CREATE TABLE row_layouts ("
    " id BIGSERIAL PRIMARY KEY,"
    " header BYTEA NOT NULL,"
    " file_ext TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL,"
    " UNIQUE (header, file_ext));",
    /* 6: the SMS sink's schedule (store/pg_sms.c), as store/sms.c keeps it
     * on SQLite.  A text is claimed by one node at a time: owner and
     * lease_until (the server's clock, ms) say which and until when.
     * Counters are kept per node, so each node's /metrics counts its own
     * work and their sum is the cluster's. */
    "CREATE TABLE sms_counters ("
    " node TEXT NOT NULL,"
    " name TEXT NOT NULL,"
    " n BIGINT NOT NULL,"
    " PRIMARY KEY (node, name));"
    "CREATE TABLE sms_appointments ("
    " facility TEXT NOT NULL,"
    " appt_id TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('booked', 'cancelled', 'noshow')),"
    " event_time BIGINT NOT NULL,"
    " last_msg_id BIGINT NOT NULL,"
    " fingerprint TEXT,"
    " start_s BIGINT NOT NULL,"
    " duration_min BIGINT NOT NULL,"
    " location TEXT,"
    " provider TEXT,"
    " first_name TEXT,"
    " phone TEXT,"
    " consent INTEGER NOT NULL,"
    " purge_after_s BIGINT NOT NULL,"
    " purged INTEGER NOT NULL DEFAULT 0,"
    " language TEXT,"
    " link TEXT,"
    " PRIMARY KEY (facility, appt_id));"
    "CREATE INDEX sms_appointments_purge ON sms_appointments (purge_after_s) WHERE purged = 0;"
    "CREATE TABLE sms_outbox ("
    " id BIGSERIAL PRIMARY KEY,"
    " facility TEXT NOT NULL,"
    " appt_id TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('scheduled', 'updated', 'cancelled', 'reminder')),"
    " event_key TEXT NOT NULL,"
    " due_s BIGINT NOT NULL,"
    " start_s BIGINT NOT NULL,"
    " text TEXT,"
    " to_e164 TEXT,"
    " segments INTEGER NOT NULL,"
    " encoding TEXT NOT NULL,"
    " request_id TEXT NOT NULL CHECK (length(request_id) = 36),"
    " first_sent TEXT,"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed', 'skipped')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_ms BIGINT NOT NULL,"
    " last_status INTEGER,"
    " last_error TEXT,"
    " message_id TEXT,"
    " done_ms BIGINT,"
    " owner TEXT,"
    " lease_until BIGINT,"
    " UNIQUE (facility, appt_id, event_key));"
    "CREATE INDEX sms_outbox_due ON sms_outbox (next_ms) WHERE state = 'pending';"
    "CREATE INDEX sms_outbox_done ON sms_outbox (done_ms) WHERE state <> 'pending';",
};

struct store_pg {
    PGconn *conn;
    uint64_t next_beat_ms;        /* monotonic: this node's next heartbeat */
    int64_t started_ms;           /* wall clock at open */
    char *url, *password, *node, *version;  /* owned copies */
    char *shown;                  /* the url as logs show it (no password) */
    uint64_t next_try_ms, backoff_ms;
    int down_logged;
    uint64_t last_fail_log_ms, fail_log_suppressed;
    /* Writer scratch, sized at open: the statements' array parameters
     * (G_COUNT of them, kept across groups, and one for a rejected
     * message's texts), the group's messages still
     * being written, their order in hb_group, the rejected ones. */
    struct pg_arr *arr;
    size_t *idx, *ord, *rej;
};

/* ---- connection -------------------------------------------------------- */

/* The first line of libpq's message (they end in '\n' and may hold two). */
static void pg_msg(const char *m, char *out, size_t cap)
{
    if (!m || !*m)
        m = "unknown error";
    size_t n = strcspn(m, "\n");
    snprintf(out, cap, "%.*s", (int)n, m);
}

/* Notices (e.g. "relation already exists, skipping") would go to stderr. */
static void pg_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static PGconn *pg_connect(const char *url, const char *password, const char *node)
{
    char app[96];
    snprintf(app, sizeof app, "hl7bridge %s", node ? node : "");
    /* Later entries override earlier ones; dbname (the url) is expanded in
     * place, so a connect_timeout or application_name in the url wins over
     * ours, and a password given apart wins over ~/.pgpass. */
    const char *keys[6], *vals[6];
    int n = 0;
    keys[n] = "connect_timeout";  vals[n++] = STORE_PG_CONNECT_TIMEOUT;
    keys[n] = "application_name"; vals[n++] = app;
    keys[n] = "dbname";           vals[n++] = url;
    if (password) {
        keys[n] = "password";     vals[n++] = password;
    }
    keys[n] = NULL;               vals[n] = NULL;
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c)
        PQsetNoticeProcessor(c, pg_notice, NULL);
    return c;
}

PGconn *store_pg_connect(const struct store_opts *o)
{
    return pg_connect(o->url ? o->url : "", o->password, o->node);
}

void store_pg_msg(const char *m, char *out, size_t cap)
{
    pg_msg(m, out, cap);
}

/* Reads the schema version; -1 with errbuf on failure. */
static int read_version(PGconn *c, int *have, char *errbuf, size_t errcap)
{
    PGresult *r = PQexec(c, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        char m[256];
        pg_msg(PQresultErrorMessage(r), m, sizeof m);
        snprintf(errbuf, errcap, "store: reading the schema version: %s", m);
        PQclear(r);
        return -1;
    }
    const char *v = PQgetvalue(r, 0, 0);
    int x = 0;
    for (; *v >= '0' && *v <= '9' && x < 100000; v++)
        x = x * 10 + (*v - '0');
    PQclear(r);
    *have = x;
    return 0;
}

static int exec_ok(PGconn *c, const char *sql, char *errbuf, size_t errcap)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(r);
        return 0;
    }
    char m[256];
    pg_msg(PQresultErrorMessage(r), m, sizeof m);
    snprintf(errbuf, errcap, "store: %s", m);
    PQclear(r);
    return -1;
}

/* Applies the migrations this build knows under an advisory lock (two
 * nodes starting together migrate once).  A schema newer than ours is
 * refused: this node would write rows the newer ones do not expect. */
static int pg_migrate(PGconn *c, char *errbuf, size_t errcap)
{
    if (exec_ok(c, "BEGIN", errbuf, errcap) < 0)
        return -1;
    if (exec_ok(c, "SELECT pg_advisory_xact_lock(" STORE_PG_MIGRATE_LOCK ")", errbuf, errcap) <
            0 ||
        exec_ok(c, "CREATE TABLE IF NOT EXISTS schema_version ("
                   " version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL, node TEXT)",
                errbuf, errcap) < 0)
        goto fail;
    int have = 0;
    if (read_version(c, &have, errbuf, errcap) < 0)
        goto fail;
    if (have > STORE_PG_SCHEMA_VERSION) {
        snprintf(errbuf, errcap,
                 "store: database schema %d is newer than this build (%d): upgrade this node",
                 have, STORE_PG_SCHEMA_VERSION);
        goto fail;
    }
    for (int v = have; v < STORE_PG_SCHEMA_VERSION; v++) {
        if (exec_ok(c, pg_migrations[v], errbuf, errcap) < 0)
            goto fail;
        char ins[128];
        snprintf(ins, sizeof ins, "INSERT INTO schema_version VALUES (%d, %lld, NULL)", v + 1,
                 (long long)clock_wall_ms());
        if (exec_ok(c, ins, errbuf, errcap) < 0)
            goto fail;
        log_info("store_migrated", " backend=postgresql version=%d", v + 1);
    }
    return exec_ok(c, "COMMIT", errbuf, errcap);
fail:
    PQclear(PQexec(c, "ROLLBACK"));
    return -1;
}

/* Binary element types and array types of the statements' parameters. */
#define OID_BYTEA  17
#define OID_INT8   20
#define OID_INT4   23
#define OID_TEXT   25
#define OID_INT4_ARRAY  1007
#define OID_TEXT_ARRAY  1009
#define OID_BYTEA_ARRAY 1001
#define OID_INT8_ARRAY  1016

/* hb_group: the whole group's messages in one statement.  Every column is
 * an array with one element per message (rows and appointment facts: one
 * per row / fact, with the message's ordinal), unnested side by side.  Ids
 * come from the sequence in the materialized input, so rows and facts join
 * their message exactly; ON CONFLICT skips a message whose key and digest
 * are stored already (committed by any node, or earlier in this statement),
 * waiting for another node's uncommitted insert of it.  The result says per
 * message whether it was inserted, and whether its key was stored before
 * with other content.  A message without rows, not quarantined, is stored
 * delivered: nothing of it waits for the audit sink (retention ages it
 * from there).  Nothing is sorted: the result carries each message's
 * ordinal, and the order of a group's inserts only decides which of two
 * identical messages in it is the original (sorting the group, bodies and
 * all, was a measurable part of the statement). */
enum { G_NODE, G_RECEIVED, G_LISTENER, G_PEER, G_APP, G_FAC, G_CTL, G_TYPE, G_TRIGGER,
       G_VERSION, G_ACK, G_RAW, G_QUARANTINED, G_REASON, G_ROW_COUNT, G_FILTERED, G_DIGEST,
       G_LAYOUT, G_R_ORD, G_R_SEQ, G_R_DATA, G_A_ORD, G_A_TEXT,
       G_A_NUM = G_A_TEXT + STORE_APPT_NTEXT, G_COUNT = G_A_NUM + 3 };

#define SQL_GROUP_MESSAGES \
    "WITH input AS MATERIALIZED (" \
    " SELECT nextval('messages_id_seq') AS id, t.* FROM unnest($2::int8[], $3::text[]," \
    "  $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]," \
    "  $11::text[], $12::bytea[], $13::int4[], $14::text[], $15::int4[], $16::int4[]," \
    "  $17::int8[], $18::int8[]) WITH ORDINALITY AS t(received_ms, listener, peer, send_app," \
    "  send_fac, control_id, msg_type, trig, version, ack_code, raw, quarantined, reason," \
    "  row_count, filtered, digest, layout, ord))," \
    " ins AS (" \
    " INSERT INTO messages (id, node, received_ms, listener, peer, send_app, send_fac," \
    "  control_id, msg_type, \"trigger\", version, ack_code, raw, quarantined, reason, row_count," \
    "  filtered, digest, delivered_ms)" \
    " SELECT id, $1, received_ms, listener, peer, send_app, send_fac, control_id, msg_type, trig," \
    "  version, ack_code, raw, quarantined, reason, row_count, filtered, digest," \
    "  CASE WHEN quarantined = 0 AND row_count = 0 THEN received_ms END FROM input" \
    " ON CONFLICT (send_app, send_fac, control_id, digest)" \
    "  WHERE control_id IS NOT NULL AND made_by IS NULL DO NOTHING" \
    " RETURNING id)"
#define SQL_GROUP_FACTS \
    " rw AS (" \
    " INSERT INTO rows (msg_id, seq, data, layout)" \
    " SELECT i.id, r.seq, r.data, i.layout" \
    "  FROM unnest($19::int4[], $20::int4[], $21::bytea[]) AS r(ord, seq, data)" \
    "  JOIN input i ON i.ord = r.ord WHERE i.id IN (SELECT id FROM ins))," \
    " ap AS (" \
    " INSERT INTO appt_facts (msg_id, received_ms, facility, appt_id, event, location, provider," \
    "  first_name, phone, consent, language, link, event_time, start_s, duration_min)" \
    " SELECT i.id, i.received_ms, a.facility, a.appt_id, a.event, a.location, a.provider," \
    "  a.first_name, a.phone, a.consent, a.language, a.link, a.event_time, a.start_s," \
    "  a.duration_min" \
    "  FROM unnest($22::int4[], $23::text[], $24::text[], $25::text[], $26::text[], $27::text[]," \
    "   $28::text[], $29::text[], $30::text[], $31::text[], $32::text[], $33::int8[]," \
    "   $34::int8[], $35::int8[]) AS a(ord, facility, appt_id, event, location, provider," \
    "   first_name, phone, consent, language, link, event_time, start_s, duration_min)" \
    "  JOIN input i ON i.ord = a.ord WHERE i.id IN (SELECT id FROM ins))"
#define SQL_GROUP_RESULT \
    " SELECT i.ord, i.id, i.id IN (SELECT id FROM ins)," \
    "  i.control_id IS NOT NULL AND EXISTS (SELECT 1 FROM messages m WHERE" \
    "   m.send_app = i.send_app AND m.send_fac = i.send_fac AND m.control_id = i.control_id" \
    "   AND m.digest <> i.digest AND m.made_by IS NULL)" \
    " FROM input i"
static const char sql_group[] = SQL_GROUP_MESSAGES "," SQL_GROUP_FACTS SQL_GROUP_RESULT;
/* The same for a group without rows and appointment facts (only the
 * first G_R_ORD parameters): a plan a third smaller to set up, which
 * counts when groups are small. */
static const char sql_group_bare[] = SQL_GROUP_MESSAGES SQL_GROUP_RESULT;

/* hb_dups: the originals of the messages hb_group skipped, and their
 * duplicate counts (for the browser).  Run after the group's COMMIT, in a
 * transaction of its own: by then every original is committed (an insert
 * skipped by ON CONFLICT waited for the other transaction, which
 * committed), whichever node or group stored it. */
enum { D_APP, D_FAC, D_CTL, D_DIGEST, D_RECEIVED, D_COUNT };
static const char sql_dups[] =
    "WITH k AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])"
    "  WITH ORDINALITY AS k(app, fac, ctl, digest, received, ord)),"
    " o AS MATERIALIZED (SELECT k.ord, k.received, (SELECT m.id FROM messages m"
    "  WHERE m.send_app = k.app AND m.send_fac = k.fac AND m.control_id = k.ctl"
    "  AND m.digest = k.digest AND m.made_by IS NULL ORDER BY m.id LIMIT 1) AS id FROM k),"
    " u AS (UPDATE messages m SET dup_count = m.dup_count + c.n,"
    "  last_dup_ms = GREATEST(COALESCE(m.last_dup_ms, 0), c.last)"
    "  FROM (SELECT id, COUNT(*) AS n, MAX(received) AS last FROM o WHERE id IS NOT NULL"
    "   GROUP BY id) c WHERE m.id = c.id)"
    " SELECT o.ord, o.id, m.ack_code FROM o LEFT JOIN messages m ON m.id = o.id ORDER BY o.ord";

enum { R_NODE, R_RECEIVED, R_LISTENER, R_PEER, R_APP, R_FAC, R_CTL, R_TYPE, R_TRIGGER,
       R_VERSION, R_ACK, R_RAW, R_REASON, R_ERR_CODE, R_ERR_WHERE, R_COUNT };

/* The function's order of the appointment texts (the table's columns). */
static const enum store_appt_text appt_order[STORE_APPT_NTEXT] = {
    STORE_APPT_FACILITY, STORE_APPT_ID, STORE_APPT_EVENT, STORE_APPT_LOCATION,
    STORE_APPT_PROVIDER, STORE_APPT_FIRST_NAME, STORE_APPT_PHONE, STORE_APPT_CONSENT,
    STORE_APPT_LANGUAGE, STORE_APPT_LINK,
};

static int prepare_one(PGconn *c, const char *name, const char *sql, int n, const Oid *types,
                       char *errbuf, size_t errcap)
{
    PGresult *r = PQprepare(c, name, sql, n, types);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        char m[256];
        pg_msg(PQresultErrorMessage(r), m, sizeof m);
        snprintf(errbuf, errcap, "store: prepare %s: %s", name, m);
    }
    PQclear(r);
    return ok ? 0 : -1;
}

static int pg_prepare(PGconn *c, char *errbuf, size_t errcap)
{
    Oid g[G_COUNT];
    for (int i = 0; i < G_COUNT; i++)
        g[i] = OID_TEXT_ARRAY;
    g[G_NODE] = OID_TEXT;
    g[G_RECEIVED] = g[G_DIGEST] = g[G_LAYOUT] = OID_INT8_ARRAY;
    g[G_QUARANTINED] = g[G_ROW_COUNT] = g[G_FILTERED] = OID_INT4_ARRAY;
    g[G_R_ORD] = g[G_R_SEQ] = g[G_A_ORD] = OID_INT4_ARRAY;
    g[G_RAW] = g[G_R_DATA] = OID_BYTEA_ARRAY;
    for (int i = 0; i < 3; i++)
        g[G_A_NUM + i] = OID_INT8_ARRAY;
    Oid d[D_COUNT] = { OID_TEXT_ARRAY, OID_TEXT_ARRAY, OID_TEXT_ARRAY, OID_INT8_ARRAY,
                       OID_INT8_ARRAY };
    Oid tr[R_COUNT];
    for (int i = 0; i < R_COUNT; i++)
        tr[i] = OID_TEXT;
    tr[R_RECEIVED] = OID_INT8;
    tr[R_RAW] = OID_BYTEA;
    tr[R_ERR_CODE] = OID_INT4;
    if (prepare_one(c, "hb_group", sql_group, G_COUNT, g, errbuf, errcap) < 0 ||
        prepare_one(c, "hb_group_bare", sql_group_bare, G_R_ORD, g, errbuf, errcap) < 0 ||
        prepare_one(c, "hb_dups", sql_dups, D_COUNT, d, errbuf, errcap) < 0 ||
        prepare_one(c, "hb_reject",
                    "INSERT INTO rejected (node, received_ms, listener, peer, send_app, send_fac,"
                    " control_id, msg_type, \"trigger\", version, ack_code, raw, reason, err_code,"
                    " err_where) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
                    " $14, $15) RETURNING id",
                    R_COUNT, tr, errbuf, errcap) < 0)
        return -1;
    return 0;
}

static PGconn *pg_open_conn(struct store_pg *pg, char *errbuf, size_t errcap)
{
    PGconn *c = pg_connect(pg->url, pg->password, pg->node);
    if (!c) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char m[256];
        pg_msg(PQerrorMessage(c), m, sizeof m);
        snprintf(errbuf, errcap, "store: cannot connect to %s: %s", pg->shown, m);
        PQfinish(c);
        return NULL;
    }
    if (pg_migrate(c, errbuf, errcap) < 0 || pg_prepare(c, errbuf, errcap) < 0) {
        PQfinish(c);
        return NULL;
    }
    if (PQsetnonblocking(c, 1) != 0 || PQenterPipelineMode(c) != 1) {
        char m[256];
        pg_msg(PQerrorMessage(c), m, sizeof m);
        snprintf(errbuf, errcap, "store: pipeline mode: %s", m);
        PQfinish(c);
        return NULL;
    }
    return c;
}

static void set_down(struct store *s, uint64_t now_ms)
{
    struct store_pg *pg = s->pg;
    if (pg->conn) {
        PQfinish(pg->conn);
        pg->conn = NULL;
    }
    atomic_store_explicit(&s->st.unavailable, 1, memory_order_relaxed);
    if (!pg->backoff_ms)
        pg->backoff_ms = STORE_PG_BACKOFF_MIN_MS;
    pg->next_try_ms = now_ms + pg->backoff_ms;
    s->be_wake_ms = pg->next_try_ms;
}

/* Tries to connect when the back-off allows; 0 when connected. */
static int try_connect(struct store *s, uint64_t now_ms)
{
    struct store_pg *pg = s->pg;
    if (pg->conn)
        return 0;
    if (now_ms < pg->next_try_ms)
        return -1;
    char err[512];
    pg->conn = pg_open_conn(pg, err, sizeof err);
    if (!pg->conn) {
        char q[600];
        log_quote(q, sizeof q, err);
        if (!pg->down_logged)
            log_error("store_unavailable", " backend=postgresql error=\"%s\"", q);
        else
            log_debug("store_unavailable", " backend=postgresql error=\"%s\"", q);
        pg->down_logged = 1;
        pg->backoff_ms = pg->backoff_ms * 2 > STORE_PG_BACKOFF_MAX_MS ? STORE_PG_BACKOFF_MAX_MS
                                                                       : pg->backoff_ms * 2;
        set_down(s, now_ms);
        return -1;
    }
    char q[600];
    log_info("store_connected", " backend=postgresql url=\"%s\"", log_quote(q, sizeof q, pg->shown));
    pg->down_logged = 0;
    pg->backoff_ms = 0;
    s->be_wake_ms = 0;
    atomic_store_explicit(&s->st.unavailable, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.reconnects, 1, memory_order_relaxed);
    return 0;
}

/* ---- pipeline I/O ------------------------------------------------------ */

/* Waits until libpq has a whole result (flushing what it still has to
 * send), then returns it; NULL with *dead set when the connection broke or
 * the deadline passed. */
static PGresult *next_result(PGconn *c, uint64_t deadline_ms, int *dead)
{
    for (;;) {
        int fl = PQflush(c);
        if (fl < 0) {
            *dead = 1;
            return NULL;
        }
        if (!PQisBusy(c))
            return PQgetResult(c);
        uint64_t now = clock_mono_ms();
        if (now >= deadline_ms) {
            *dead = 1;
            return NULL;
        }
        struct pollfd pfd = { .fd = PQsocket(c), .events = POLLIN | (fl ? POLLOUT : 0) };
        if (pfd.fd < 0) {
            *dead = 1;
            return NULL;
        }
        int pr = poll(&pfd, 1, (int)(deadline_ms - now));
        if (pr < 0 && errno != EINTR) {
            *dead = 1;
            return NULL;
        }
        if (pr > 0 && (pfd.revents & (POLLIN | POLLERR | POLLHUP)) && PQconsumeInput(c) != 1) {
            *dead = 1;
            return NULL;
        }
    }
}

static void put_i64(uint8_t b[8], int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 7; i >= 0; i--) {
        b[i] = (uint8_t)u;
        u >>= 8;
    }
}

static void put_i32(uint8_t b[4], int32_t v)
{
    uint32_t u = htonl((uint32_t)v);
    memcpy(b, &u, 4);
}

static int64_t get_i64(const char *p)
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = (u << 8) | (uint8_t)p[i];
    return (int64_t)u;
}

static void fail_msgs(struct store *s, const size_t *idx, size_t n, const char *why)
{
    struct store_pg *pg = s->pg;
    for (size_t i = 0; i < n; i++) {
        struct store_result *r = &s->grp_res[idx[i]];
        r->status = STORE_FAILED;
        r->id = 0;
        r->key_reused = 0;
        memcpy(r->ack_code, s->grp[idx[i]]->ack_code, 3);
    }
    atomic_fetch_add_explicit(&s->st.failures, n, memory_order_relaxed);
    uint64_t now = clock_mono_ms();
    if (now - pg->last_fail_log_ms >= 1000 || pg->last_fail_log_ms == 0) {
        char q[600];
        log_error("store_write_failed", " backend=postgresql error=\"%s\" messages=%zu "
                  "suppressed=%llu", log_quote(q, sizeof q, why), n,
                  (unsigned long long)pg->fail_log_suppressed);
        pg->last_fail_log_ms = now;
        pg->fail_log_suppressed = 0;
    } else {
        pg->fail_log_suppressed += n;
    }
}

/* ---- binary arrays ----------------------------------------------------- */

/* A one-dimensional array in PostgreSQL's binary form, built element by
 * element into a buffer kept across groups. */
struct pg_arr {
    struct buf b;
    int32_t n;
    Oid elem;
    int bad;     /* out of memory (or over the buffer's ceiling) */
};

static void arr_start(struct pg_arr *a, Oid elem)
{
    buf_reset(&a->b);
    a->n = 0;
    a->elem = elem;
    a->bad = 0;
    uint8_t hdr[20];
    put_i32(hdr, 1);          /* dimensions */
    put_i32(hdr + 4, 1);      /* may hold NULLs */
    put_i32(hdr + 8, (int32_t)elem);
    put_i32(hdr + 12, 0);     /* count: arr_end */
    put_i32(hdr + 16, 1);     /* lower bound */
    a->bad = buf_append(&a->b, hdr, sizeof hdr) != 0;
}

/* len < 0: NULL. */
static void arr_add(struct pg_arr *a, const void *p, int32_t len)
{
    uint8_t l[4];
    put_i32(l, len < 0 ? -1 : len);
    if (buf_append(&a->b, l, 4) != 0 || (len > 0 && buf_append(&a->b, p, (size_t)len) != 0))
        a->bad = 1;
    a->n++;
}

static void arr_i64(struct pg_arr *a, int64_t v)
{
    uint8_t b[8];
    put_i64(b, v);
    arr_add(a, b, 8);
}

static void arr_i32(struct pg_arr *a, int32_t v)
{
    uint8_t b[4];
    put_i32(b, v);
    arr_add(a, b, 4);
}

/* 1 when p[0..n) is UTF-8 the server takes as text: well-formed, no
 * overlong forms, no surrogates, nothing above U+10FFFF, no NUL. */
static int utf8_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!k || n - i < k)
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
        uint8_t c1 = p[i + 1];
        if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) || (c == 0xf0 && c1 < 0x90) ||
            (c == 0xf4 && c1 > 0x8f))
            return 0;
        i += k;
    }
    return 1;
}

/* A text element.  Header fields come as the sender wrote them; bytes that
 * are not UTF-8 (an 8859/1 facility name) would make the server refuse the
 * whole group, so such a value is stored read as ISO 8859-1 (NUL as
 * U+FFFD) — the same bytes give the same text on every node, so duplicate
 * detection is unchanged. */
static void arr_text(struct pg_arr *a, const uint8_t *p, size_t n)
{
    if (utf8_ok(p, n)) {
        arr_add(a, p, (int32_t)n);
        return;
    }
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        out += p[i] == 0 ? 3 : p[i] < 0x80 ? 1 : 2;
    uint8_t l[4];
    put_i32(l, (int32_t)out);
    uint8_t *w = buf_append(&a->b, l, 4) == 0 ? buf_reserve(&a->b, out) : NULL;
    if (!w) {
        a->bad = 1;
        a->n++;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == 0) {
            *w++ = 0xef;
            *w++ = 0xbf;
            *w++ = 0xbd;
        } else if (p[i] < 0x80) {
            *w++ = p[i];
        } else {
            *w++ = (uint8_t)(0xc0 | (p[i] >> 6));
            *w++ = (uint8_t)(0x80 | (p[i] & 0x3f));
        }
    }
    buf_commit(&a->b, out);
    a->n++;
}

static void arr_span(struct pg_arr *a, const struct store_msg *m, enum store_field f, int null_empty)
{
    if (!m->span[f].len && null_empty)
        arr_add(a, NULL, -1);
    else if (a->elem == OID_TEXT)
        arr_text(a, store_msg_ptr(m, f), m->span[f].len);
    else
        arr_add(a, store_msg_ptr(m, f), (int32_t)m->span[f].len);
}

/* Finishes the array; an empty one is written with no dimensions, as the
 * server expects.  Returns its length, -1 when it could not be built. */
static int arr_end(struct pg_arr *a)
{
    if (a->bad || a->b.len > INT32_MAX)
        return -1;
    if (a->n == 0) {
        put_i32(buf_data(&a->b), 0);  /* no dimensions */
        put_i32(buf_data(&a->b) + 4, 0);
        return 12;
    }
    put_i32(buf_data(&a->b) + 12, a->n);
    return (int)a->b.len;
}

/* ---- the group --------------------------------------------------------- */

/* Fills the arrays of hb_group with the messages grp[idx[0..n)] that are
 * not rejected; ord[k] = grp index of the k-th (1-based ord k+1). */
static int build_group(struct store *s, const size_t *idx, size_t n, size_t *ord, size_t *nord)
{
    struct store_pg *pg = s->pg;
    struct pg_arr *a = pg->arr;
    for (int i = 1; i < G_COUNT; i++)
        arr_start(&a[i], i == G_RECEIVED || i == G_DIGEST || i == G_LAYOUT ||
                         (i >= G_A_NUM && i < G_A_NUM + 3) ? OID_INT8
                         : i == G_QUARANTINED || i == G_ROW_COUNT || i == G_FILTERED ||
                                   i == G_R_ORD || i == G_R_SEQ || i == G_A_ORD ? OID_INT4
                         : i == G_RAW || i == G_R_DATA ? OID_BYTEA : OID_TEXT);
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        const struct store_msg *m = s->grp[idx[j]];
        if (m->rejected)
            continue;
        ord[k++] = idx[j];
        int32_t o = (int32_t)k;
        arr_i64(&a[G_RECEIVED], m->received_ms);
        arr_span(&a[G_LISTENER], m, SF_LISTENER, 0);
        arr_span(&a[G_PEER], m, SF_PEER, 0);
        arr_span(&a[G_APP], m, SF_SEND_APP, 0);
        arr_span(&a[G_FAC], m, SF_SEND_FAC, 0);
        /* no MSH-10: NULL, never recognised as a re-send (as on SQLite) */
        arr_span(&a[G_CTL], m, SF_CONTROL_ID, 1);
        arr_span(&a[G_TYPE], m, SF_MSG_TYPE, 0);
        arr_span(&a[G_TRIGGER], m, SF_TRIGGER, 0);
        arr_span(&a[G_VERSION], m, SF_VERSION, 0);
        arr_add(&a[G_ACK], m->ack_code, 2);
        arr_span(&a[G_RAW], m, SF_RAW, 0);
        arr_i32(&a[G_QUARANTINED], m->quarantined);
        if (m->quarantined || m->filtered)
            arr_span(&a[G_REASON], m, SF_REASON, 0);
        else
            arr_add(&a[G_REASON], NULL, -1);
        arr_i32(&a[G_ROW_COUNT], (int32_t)m->row_count);
        arr_i32(&a[G_FILTERED], m->filtered);
        arr_i64(&a[G_DIGEST], (int64_t)m->digest);
        if (m->layout > 0)
            arr_i64(&a[G_LAYOUT], m->layout);
        else
            arr_add(&a[G_LAYOUT], NULL, -1);
        /* rows: one per non-blank line */
        const uint8_t *p = store_msg_ptr(m, SF_ROWS);
        const uint8_t *end = p + m->span[SF_ROWS].len;
        int32_t seq = 0;
        while (p < end) {
            const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
            const uint8_t *line_end = nl ? nl : end;
            if (line_end > p) {
                arr_i32(&a[G_R_ORD], o);
                arr_i32(&a[G_R_SEQ], seq++);
                arr_add(&a[G_R_DATA], p, (int32_t)(line_end - p));
            }
            p = nl ? nl + 1 : end;
        }
        if ((unsigned)seq != m->row_count)
            log_warn("store_row_count", " expected=%u found=%d", m->row_count, (int)seq);
        if (m->has_appt) {
            const char *t[STORE_APPT_NTEXT];
            const char *q = (const char *)store_msg_ptr(m, SF_APPT);
            const char *qend = q + m->span[SF_APPT].len;
            for (int i = 0; i < STORE_APPT_NTEXT; i++) {
                if (q >= qend)
                    return -1; /* store_msg_new wrote them all */
                t[i] = q;
                q += strlen(q) + 1;
            }
            arr_i32(&a[G_A_ORD], o);
            for (int i = 0; i < STORE_APPT_NTEXT; i++) {
                enum store_appt_text x = appt_order[i];
                /* facility, appointment id and event are NOT NULL ("" when
                 * absent); the rest NULL when empty */
                int keyed = x == STORE_APPT_ID || x == STORE_APPT_FACILITY ||
                            x == STORE_APPT_EVENT;
                if (t[x][0] || keyed)
                    arr_text(&a[G_A_TEXT + i], (const uint8_t *)t[x], strlen(t[x]));
                else
                    arr_add(&a[G_A_TEXT + i], NULL, -1);
            }
            const int64_t nums[3] = { m->appt_event_time, m->appt_start_s, m->appt_duration_min };
            for (int i = 0; i < 3; i++) {
                if (nums[i] >= 0)
                    arr_i64(&a[G_A_NUM + i], nums[i]);
                else
                    arr_add(&a[G_A_NUM + i], NULL, -1);
            }
        }
    }
    *nord = k;
    return 0;
}

static int send_group(struct store *s, size_t nord)
{
    struct store_pg *pg = s->pg;
    const char *v[G_COUNT];
    int len[G_COUNT], fmt[G_COUNT];
    (void)nord;
    v[G_NODE] = pg->node;
    len[G_NODE] = (int)strlen(pg->node);
    fmt[G_NODE] = 1;
    for (int i = 1; i < G_COUNT; i++) {
        len[i] = arr_end(&pg->arr[i]);
        if (len[i] < 0)
            return -1;
        v[i] = (const char *)buf_data(&pg->arr[i].b);
        fmt[i] = 1;
    }
    int bare = pg->arr[G_R_ORD].n == 0 && pg->arr[G_A_ORD].n == 0;
    return PQsendQueryPrepared(pg->conn, bare ? "hb_group_bare" : "hb_group",
                               bare ? G_R_ORD : G_COUNT, v, len, fmt, 1) == 1 ? 0 : -1;
}

/* A rejected message goes into `rejected`, one statement each (they are
 * few). */
static int send_reject(struct store *s, const struct store_msg *m)
{
    struct store_pg *pg = s->pg;
    const char *v[R_COUNT];
    int len[R_COUNT], fmt[R_COUNT];
    uint8_t received[8], errc[4];
    static const enum store_field span_of[R_COUNT] = {
        [R_LISTENER] = SF_LISTENER, [R_PEER] = SF_PEER, [R_APP] = SF_SEND_APP,
        [R_FAC] = SF_SEND_FAC, [R_CTL] = SF_CONTROL_ID, [R_TYPE] = SF_MSG_TYPE,
        [R_TRIGGER] = SF_TRIGGER, [R_VERSION] = SF_VERSION, [R_RAW] = SF_RAW,
        [R_REASON] = SF_REASON, [R_ERR_WHERE] = SF_ERR_WHERE,
    };
    /* Text fields through arr_text (see there), into the scratch array
     * after the group's: offsets first, pointers once it stops growing. */
    struct pg_arr *t = &pg->arr[G_COUNT];
    size_t off[R_COUNT];
    arr_start(t, OID_TEXT);
    for (int i = 0; i < R_COUNT; i++) {
        fmt[i] = 1;
        enum store_field f = span_of[i];
        v[i] = m->span[f].len ? (const char *)store_msg_ptr(m, f) : "";
        len[i] = (int)m->span[f].len;
        off[i] = 0;
        if (i != R_RAW && span_of[i] != SF_RAW) {
            off[i] = t->b.len + 4;
            arr_text(t, (const uint8_t *)v[i], m->span[f].len);
            len[i] = (int)(t->b.len - off[i]);
        }
    }
    if (t->bad)
        return -1;
    for (int i = 0; i < R_COUNT; i++)
        if (off[i])
            v[i] = (const char *)buf_data(&t->b) + off[i];
    v[R_NODE] = pg->node;
    len[R_NODE] = (int)strlen(pg->node);
    put_i64(received, m->received_ms);
    v[R_RECEIVED] = (const char *)received;
    len[R_RECEIVED] = 8;
    if (!m->span[SF_CONTROL_ID].len)
        v[R_CTL] = NULL;
    v[R_ACK] = m->ack_code;
    len[R_ACK] = 2;
    put_i32(errc, m->err_code);
    v[R_ERR_CODE] = (const char *)errc;
    len[R_ERR_CODE] = 4;
    return PQsendQueryPrepared(pg->conn, "hb_reject", R_COUNT, v, len, fmt, 1) == 1 ? 0 : -1;
}

/* How a pipeline ended. */
enum pg_outcome {
    PG_OK = 0,
    PG_DATA,         /* the server refused a message's data: retry one by one */
    PG_RETRY,        /* deadlock / serialization: retry the same group */
    PG_DEAD_EARLY,   /* dead before the first statement ran: nothing done */
    PG_DEAD,         /* the connection broke: outcome of the group unknown */
    PG_FAILED,       /* the server refused the group (e.g. disk full) */
};

static int sqlstate_is(const PGresult *r, const char *code)
{
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return st && strcmp(st, code) == 0;
}

static int64_t col_i64(const PGresult *r, int row, int col, int64_t null_value)
{
    if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
        return null_value;
    return get_i64(PQgetvalue(r, row, col));
}

static int col_bool(const PGresult *r, int row, int col)
{
    return !PQgetisnull(r, row, col) && PQgetlength(r, row, col) == 1 &&
           PQgetvalue(r, row, col)[0] != 0;
}

/* What a refused statement means for its pipeline. */
static enum pg_outcome refusal(const PGresult *r, char *why, size_t whycap)
{
    pg_msg(PQresultErrorMessage(r), why, whycap);
    const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (sqlstate_is(r, "40P01") || sqlstate_is(r, "40001"))
        return PG_RETRY;
    if (code && code[0] == '2' && (code[1] == '2' || code[1] == '3'))
        return PG_DATA; /* data and constraint errors belong to a message */
    return PG_FAILED;
}

/* Reads the results of `nq` statements (the first one BEGIN when `tx`, an
 * explicit transaction; else the Sync commits them) and the Sync.  cb sees each statement's successful result (q from 0).  On a
 * failed explicit transaction, rolls it back. */
typedef int (*pg_result_cb)(struct store *s, size_t q, const PGresult *r, void *ud);
static enum pg_outcome read_pipeline(struct store *s, size_t nq, int tx, pg_result_cb cb,
                                     void *ud, char *why, size_t whycap)
{
    PGconn *c = s->pg->conn;
    uint64_t deadline = clock_mono_ms() + STORE_PG_IO_TIMEOUT_MS;
    enum pg_outcome out = PG_OK;
    int dead = 0, first_ok = 0;
    why[0] = '\0';
    for (size_t q = 0; q < nq && !dead; q++) {
        PGresult *r;
        int seen = 0;
        while ((r = next_result(c, deadline, &dead)) != NULL) {
            ExecStatusType st = PQresultStatus(r);
            seen = 1;
            if (q == 0 && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK))
                first_ok = 1;
            if (st == PGRES_FATAL_ERROR && out == PG_OK) {
                out = refusal(r, why, whycap);
            } else if (out == PG_OK && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)) {
                if (st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "ROLLBACK") == 0 &&
                    q == nq - 1 && tx) {
                    /* COMMIT of a failed transaction answers ROLLBACK. */
                    snprintf(why, whycap, "transaction rolled back");
                    out = PG_FAILED;
                } else if (cb && cb(s, q, r, ud) != 0) {
                    snprintf(why, whycap, "unexpected answer from the server");
                    out = PG_FAILED;
                }
            }
            PQclear(r);
        }
        if (!seen && !dead) {
            snprintf(why, whycap, "pipeline out of step");
            dead = 1;
        }
    }
    /* The Sync's answer.  An error before it belongs to the implicit
     * transaction's COMMIT (a deferred constraint, say): nothing of the
     * pipeline was committed.  Without the answer, the outcome is unknown.
     * At most that error, the NULL ending it and the Sync come: a few reads
     * more mean the stream is out of step. */
    int synced = 0;
    for (int k = 0; k < 4 && !dead && !synced; k++) {
        PGresult *r = next_result(c, deadline, &dead);
        if (!r)
            continue;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC)
            synced = 1;
        else if (st == PGRES_FATAL_ERROR && out == PG_OK)
            out = refusal(r, why, whycap);
        else if (st != PGRES_FATAL_ERROR)
            dead = 1; /* out of step */
        PQclear(r);
    }
    if (!synced)
        dead = 1;
    if (dead || PQstatus(c) != CONNECTION_OK) {
        if (!why[0])
            pg_msg(PQerrorMessage(c), why, whycap);
        /* The server answers in order: without the first statement's answer
         * it ran nothing of this pipeline (a server stopping sends its FATAL
         * first). */
        return first_ok ? PG_DEAD : PG_DEAD_EARLY;
    }
    if (out != PG_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
        /* A failed explicit transaction stays open until rolled back. */
        int d2 = 0;
        if (PQsendQueryParams(c, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0) != 1 ||
            PQpipelineSync(c) != 1)
            return PG_DEAD;
        PGresult *r;
        while ((r = next_result(c, deadline, &d2)) != NULL)
            PQclear(r);
        r = next_result(c, deadline, &d2);
        if (d2 || !r || PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
            PQclear(r);
            return PG_DEAD;
        }
        PQclear(r);
    }
    return out;
}

struct group_read {
    const size_t *ord;        /* grp index per hb_group ordinal */
    size_t nord;
    const size_t *rej;        /* grp indexes of the rejected messages, in order */
    size_t nrej;
    int has_group;
};

/* Statement q of the group pipeline: hb_group (when any), then one
 * hb_reject per rejected message. */
static int group_result(struct store *s, size_t q, const PGresult *r, void *ud)
{
    const struct group_read *g = ud;
    if (g->has_group) {
        if (q == 0) {
            if ((size_t)PQntuples(r) != g->nord || PQnfields(r) != 4)
                return -1;
            for (int row = 0; row < PQntuples(r); row++) {
                int64_t o = col_i64(r, row, 0, 0);
                if (o < 1 || (size_t)o > g->nord)
                    return -1;
                size_t gi = g->ord[o - 1];
                struct store_result *res = &s->grp_res[gi];
                memcpy(res->ack_code, s->grp[gi]->ack_code, 3);
                res->key_reused = col_bool(r, row, 3);
                if (col_bool(r, row, 2)) {
                    res->status = STORE_STORED;
                    res->id = col_i64(r, row, 1, 0);
                } else {
                    res->status = STORE_DUPLICATE; /* original found after COMMIT */
                    res->id = 0;
                    res->key_reused = 0;
                }
            }
            return 0;
        }
        q--;
    }
    if (q < g->nrej) {
        if (PQntuples(r) != 1)
            return -1;
        struct store_result *res = &s->grp_res[g->rej[q]];
        res->status = STORE_STORED;
        res->id = col_i64(r, 0, 0, 0);
        res->key_reused = 0;
        memcpy(res->ack_code, s->grp[g->rej[q]]->ack_code, 3);
    }
    return 0;
}

/* One transaction over grp[idx[0..n)]: hb_group, rejected messages, Sync —
 * one round trip.  The statements before a Sync are one implicit
 * transaction, committed when the server reaches the Sync; its answer
 * (ReadyForQuery) comes only after that COMMIT, WAL flush included, and an
 * error of the COMMIT itself (a deferred constraint) comes before it.  So
 * results are filled only once the Sync's answer came back without error;
 * duplicates are marked for resolve_dups.  No BEGIN/COMMIT statements: two
 * fewer statements for the server to run per group, which counts when
 * groups are small. */
static enum pg_outcome write_set(struct store *s, const size_t *idx, size_t n, char *why,
                                 size_t whycap)
{
    struct store_pg *pg = s->pg;
    PGconn *c = pg->conn;
    size_t nord = 0, nrej = 0;
    for (size_t j = 0; j < n; j++)
        if (s->grp[idx[j]]->rejected)
            pg->rej[nrej++] = idx[j];
    if (build_group(s, idx, n, pg->ord, &nord) != 0) {
        snprintf(why, whycap, "out of memory");
        return PG_FAILED;
    }
    int ok = 1;
    if (nord)
        ok = send_group(s, nord) == 0;
    for (size_t j = 0; ok && j < nrej; j++)
        ok = send_reject(s, s->grp[pg->rej[j]]) == 0;
    ok = ok && PQpipelineSync(c) == 1;
    if (!ok) {
        pg_msg(PQerrorMessage(c), why, whycap);
        /* A parameter that could not be built, or a dead connection: the
         * stream may be out of step, start afresh. */
        return PQstatus(c) == CONNECTION_OK ? PG_DEAD : PG_DEAD_EARLY;
    }
    struct group_read g = { pg->ord, nord, pg->rej, nrej, nord > 0 };
    return read_pipeline(s, (nord > 0) + nrej, 0, group_result, &g, why, whycap);
}

struct dups_read {
    const size_t *gi;   /* grp index per hb_dups ordinal */
    size_t n;
};

static int dups_result(struct store *s, size_t q, const PGresult *r, void *ud)
{
    const struct dups_read *d = ud;
    if (q != 2) /* BEGIN, SET LOCAL, hb_dups, COMMIT */
        return 0;
    if ((size_t)PQntuples(r) != d->n || PQnfields(r) != 3)
        return -1;
    for (int row = 0; row < PQntuples(r); row++) {
        int64_t o = col_i64(r, row, 0, 0);
        if (o < 1 || (size_t)o > d->n)
            return -1;
        struct store_result *res = &s->grp_res[d->gi[o - 1]];
        res->id = col_i64(r, row, 1, 0);
        if (!PQgetisnull(r, row, 2) && PQgetlength(r, row, 2) == 2) {
            memcpy(res->ack_code, PQgetvalue(r, row, 2), 2);
            res->ack_code[2] = '\0';
        }
    }
    return 0;
}

/* The committed group's duplicates: their originals' ids and ACK codes,
 * and the originals' duplicate counts.  A duplicate whose original cannot
 * be read is failed (AE; the sender's next re-send finds it). */
static void resolve_dups(struct store *s, const size_t *idx, size_t n)
{
    struct store_pg *pg = s->pg;
    size_t nd = 0;
    for (size_t j = 0; j < n; j++)
        if (s->grp_res[idx[j]].status == STORE_DUPLICATE)
            pg->ord[nd++] = idx[j];
    if (!nd)
        return;
    struct pg_arr *a = pg->arr;
    arr_start(&a[D_APP], OID_TEXT);
    arr_start(&a[D_FAC], OID_TEXT);
    arr_start(&a[D_CTL], OID_TEXT);
    arr_start(&a[D_DIGEST], OID_INT8);
    arr_start(&a[D_RECEIVED], OID_INT8);
    for (size_t j = 0; j < nd; j++) {
        const struct store_msg *m = s->grp[pg->ord[j]];
        arr_span(&a[D_APP], m, SF_SEND_APP, 0);
        arr_span(&a[D_FAC], m, SF_SEND_FAC, 0);
        arr_span(&a[D_CTL], m, SF_CONTROL_ID, 1);
        arr_i64(&a[D_DIGEST], (int64_t)m->digest);
        arr_i64(&a[D_RECEIVED], m->received_ms);
    }
    const char *v[D_COUNT];
    int len[D_COUNT], fmt[D_COUNT];
    int ok = 1;
    for (int i = 0; i < D_COUNT; i++) {
        len[i] = arr_end(&a[i]);
        v[i] = (const char *)buf_data(&a[i].b);
        fmt[i] = 1;
        ok = ok && len[i] >= 0;
    }
    char why[256] = "out of memory";
    PGconn *c = pg->conn;
    /* Only the browser's counts are written here: no need to wait for the
     * WAL flush. */
    ok = ok && PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
         PQsendQueryParams(c, "SET LOCAL synchronous_commit TO off", 0, NULL, NULL, NULL, NULL,
                           0) == 1 &&
         PQsendQueryPrepared(c, "hb_dups", D_COUNT, v, len, fmt, 1) == 1 &&
         PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
         PQpipelineSync(c) == 1;
    for (size_t j = 0; j < nd; j++)
        s->grp_res[pg->ord[j]].id = 0;
    struct dups_read d = { pg->ord, nd };
    enum pg_outcome o = ok ? read_pipeline(s, 4, 1, dups_result, &d, why, sizeof why)
                           : PG_DEAD;
    if (o == PG_DEAD || o == PG_DEAD_EARLY)
        set_down(s, clock_mono_ms());
    size_t nfail = 0;
    for (size_t j = 0; j < nd; j++) {
        struct store_result *r = &s->grp_res[pg->ord[j]];
        if (o != PG_OK || r->id <= 0)
            pg->ord[nfail++] = pg->ord[j];
    }
    if (nfail)
        fail_msgs(s, pg->ord, nfail, o == PG_OK ? "original of a duplicate not found" : why);
}

static void pg_write_group(struct store *s, size_t n)
{
    struct store_pg *pg = s->pg;
    size_t *idx = pg->idx;
    size_t k = n;
    for (size_t i = 0; i < k; i++) {
        idx[i] = i;
        /* Filled by a pipeline only once its COMMIT returned. */
        s->grp_res[i].status = STORE_FAILED;
        s->grp_res[i].id = 0;
        s->grp_res[i].key_reused = 0;
    }
    char why[256] = "";
    int reconnected = 0, singly = 0;
    uint64_t t0 = clock_mono_ns();
    size_t at = 0;   /* singly: the message being written on its own */
    uint64_t commits = 0;
    for (int tries = 0;;) {
        const size_t *set = singly ? &idx[at] : idx;
        size_t nset = singly ? 1 : k;
        enum pg_outcome o = pg->conn ? write_set(s, set, nset, why, sizeof why) : PG_DEAD_EARLY;
        if (o == PG_OK) {
            commits++;
            if (!singly || ++at == k)
                break;
            continue;
        }
        if (o == PG_DATA && !singly && k > 1) {
            /* One message the server refused must not take its group-mates
             * down with it: write them one transaction each. */
            singly = 1;
            at = 0;
            continue;
        }
        if (o == PG_DATA) { /* written singly, or a group of one: set[0] it is */
            fail_msgs(s, set, 1, why);
            memmove(&idx[at], &idx[at + 1], (k - at - 1) * sizeof idx[0]);
            k--;
            if (!singly || at == k)
                break;
            continue;
        }
        if (o == PG_RETRY && ++tries < STORE_PG_TRIES) {
            char q[600];
            log_debug("store_retry", " backend=postgresql error=\"%s\"", log_quote(q, sizeof q, why));
            continue;
        }
        if (o == PG_DEAD_EARLY && !reconnected) {
            /* The server went away between groups (restart, fail-over):
             * nothing of this group reached it, so it may go again on a
             * fresh connection. */
            reconnected = 1;
            set_down(s, clock_mono_ms());
            pg->next_try_ms = 0;
            if (try_connect(s, clock_mono_ms()) == 0)
                continue;
        }
        if (o == PG_DEAD || o == PG_DEAD_EARLY) {
            if (pg->conn)
                set_down(s, clock_mono_ms());
            char q[600];
            if (!pg->down_logged)
                log_error("store_unavailable", " backend=postgresql error=\"%s\"",
                          log_quote(q, sizeof q, why));
            pg->down_logged = 1;
        }
        /* Everything not yet committed fails (written singly, the ones
         * before `at` are committed). */
        fail_msgs(s, &idx[singly ? at : 0], singly ? k - at : k, why);
        k = singly ? at : 0;
        break;
    }
    if (!k)
        return;
    if (pg->conn)
        resolve_dups(s, idx, k);
    else
        for (size_t i = 0; i < k; i++)
            if (s->grp_res[idx[i]].status == STORE_DUPLICATE)
                fail_msgs(s, &idx[i], 1, why);
    uint64_t dups = 0, rejected = 0, reused = 0, stored = 0;
    for (size_t i = 0; i < k; i++) {
        const struct store_result *r = &s->grp_res[idx[i]];
        if (r->status == STORE_FAILED)
            continue;
        stored++;
        dups += r->status == STORE_DUPLICATE;
        rejected += (uint64_t)s->grp[idx[i]]->rejected;
        reused += (uint64_t)r->key_reused;
    }
    atomic_fetch_add_explicit(&s->st.commits, commits, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.messages, stored - dups - rejected, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.rejected, rejected, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.duplicates, dups, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.control_id_reused, reused, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.commit_ns_total, clock_mono_ns() - t0,
                              memory_order_relaxed);
    if (k > atomic_load_explicit(&s->st.max_group_seen, memory_order_relaxed))
        atomic_store_explicit(&s->st.max_group_seen, k, memory_order_relaxed);
}


static int pg_unavailable(struct store *s, uint64_t now_ms)
{
    return try_connect(s, now_ms) != 0;
}

/* ---- retention ---------------------------------------------------------- */

/* One step over every kind kept in the database, as store/retention.c does
 * on SQLite (the same kinds, chunks and report), in one transaction sent as
 * one pipeline.  Each statement purges only under the housekeeping
 * advisory lock (taken at its first use, held to the COMMIT), so one node
 * at a time purges and the others, finding it taken, skip the purge and
 * only read the oldest records.  Delivered messages are aged from
 * messages.delivered_ms (set when all their blocks are done, or when
 * stored without rows), connector rows by their done block, raw bodies of
 * delivered messages from delivery, rejected and quarantined messages from
 * receipt.  A NULL cutoff keeps the kind. */
#define PG_HK_LOCKED "(SELECT pg_try_advisory_xact_lock(" STORE_PG_HOUSEKEEP_LOCK "))"

enum { HK_REJ_QUAR = 1, HK_DELIVERED, HK_ROWS, HK_RAW, HK_OLDEST, HK_N };

static const char *const sql_hk[HK_N] = {
    /* $1 rejected cutoff, $2 quarantined cutoff, $3 chunk */
    [HK_REJ_QUAR] =
    "WITH dr AS (DELETE FROM rejected WHERE id IN (SELECT id FROM rejected WHERE"
    "  $1::int8 IS NOT NULL AND received_ms < $1::int8 AND " PG_HK_LOCKED
    "  ORDER BY received_ms LIMIT $3::int4) RETURNING id),"
    " q AS MATERIALIZED (SELECT id FROM messages WHERE quarantined = 1 AND $2::int8 IS NOT NULL"
    "  AND received_ms < $2::int8 AND " PG_HK_LOCKED " ORDER BY received_ms LIMIT $3::int4),"
    " qr AS (DELETE FROM rows WHERE msg_id IN (SELECT id FROM q)),"
    " qa AS (DELETE FROM appt_facts WHERE msg_id IN (SELECT id FROM q)),"
    " dq AS (DELETE FROM messages WHERE id IN (SELECT id FROM q) RETURNING id)"
    " SELECT (SELECT COUNT(*) FROM dr), (SELECT COUNT(*) FROM dq)",
    /* $1 delivered cutoff, $2 chunk.  Their rows go by their blocks. */
    [HK_DELIVERED] =
    "WITH d AS (DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE"
    "  $1::int8 IS NOT NULL AND delivered_ms < $1::int8 AND quarantined = 0 AND " PG_HK_LOCKED
    "  ORDER BY delivered_ms LIMIT $2::int4) RETURNING id)"
    " SELECT COUNT(*), 0::int8 FROM d",
    /* $1 rows cutoff, $2 chunk: a chunk of the oldest done block of age;
     * the block is marked once none of its rows is left. */
    [HK_ROWS] =
    "WITH b AS MATERIALIZED (SELECT id FROM batches WHERE $1::int8 IS NOT NULL AND"
    "  state = 'done' AND rows_purged = 0 AND done_ms < $1::int8 AND " PG_HK_LOCKED
    "  ORDER BY done_ms LIMIT 1),"
    " d AS (DELETE FROM rows WHERE id IN (SELECT r.id FROM rows r WHERE"
    "  r.batch_id = (SELECT id FROM b) LIMIT $2::int4) RETURNING id),"
    " m AS (UPDATE batches SET rows_purged = 1 WHERE id = (SELECT id FROM b)"
    "  AND (SELECT COUNT(*) FROM d) < $2::int4 RETURNING id)"
    " SELECT (SELECT COUNT(*) FROM d), (SELECT COUNT(*) FROM b)",
    /* $1 raw cutoff (NULL when delivered messages go no later), $2 chunk */
    [HK_RAW] =
    "WITH u AS (UPDATE messages SET raw = NULL WHERE id IN (SELECT id FROM messages WHERE"
    "  $1::int8 IS NOT NULL AND delivered_ms < $1::int8 AND raw IS NOT NULL"
    "  AND quarantined = 0 AND " PG_HK_LOCKED " ORDER BY delivered_ms LIMIT $2::int4)"
    "  RETURNING id)"
    " SELECT COUNT(*), 0::int8 FROM u",
    /* The oldest record left per kind, read as store/retention.c does. */
    [HK_OLDEST] =
    "SELECT (SELECT received_ms FROM messages WHERE raw IS NOT NULL AND quarantined = 0"
    "  ORDER BY id LIMIT 1),"
    " (SELECT received_ms FROM messages WHERE quarantined = 0 ORDER BY id LIMIT 1),"
    " (SELECT m.received_ms FROM messages m WHERE m.id >= (SELECT msg_id FROM rows"
    "  ORDER BY id LIMIT 1) ORDER BY m.id LIMIT 1),"
    " (SELECT MIN(received_ms) FROM messages WHERE quarantined = 1),"
    " (SELECT MIN(received_ms) FROM rejected)",
};

struct purge_read {
    int64_t n[HK_N][2];      /* per statement: its two counts */
    int64_t oldest[5];       /* raw, delivered, rows, quarantined, rejected */
};

static int purge_result(struct store *s, size_t q, const PGresult *r, void *ud)
{
    (void)s;
    struct purge_read *p = ud;
    if (q < HK_REJ_QUAR || q >= HK_N) /* BEGIN, the statements, COMMIT */
        return 0;
    int cols = q == HK_OLDEST ? 5 : 2;
    if (PQntuples(r) != 1 || PQnfields(r) != cols)
        return -1;
    for (int i = 0; i < cols; i++) {
        int64_t v = col_i64(r, 0, i, 0);
        if (q == HK_OLDEST)
            p->oldest[i] = v;
        else
            p->n[q][i] = v;
    }
    return 0;
}

static int64_t cutoff_ms(uint64_t keep, int64_t now)
{
    if (keep == STORE_KEEP_FOREVER || keep > (uint64_t)now)
        return INT64_MIN;
    return now - (int64_t)keep;
}

/* store.retention.sms on PostgreSQL, under the same lock as sql_purge (one
 * node at a time): facts never read (the SMS sink was off), texts finished
 * and appointments over (personal fields already purged, nothing pending)
 * before the cut-off ($1, ms; NULL: kept), at most $2 of each; then the
 * oldest SMS record left.  The SMS worker's own purge (store/pg_sms.c)
 * empties the personal fields before this deletes the rows. */
static const char sql_sms_purge[] =
    "WITH l AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(" STORE_PG_HOUSEKEEP_LOCK ") AS got),"
    " df AS (DELETE FROM appt_facts WHERE id IN (SELECT id FROM appt_facts WHERE $1::int8 IS NOT"
    "  NULL AND received_ms < $1::int8 ORDER BY id LIMIT $2::int4) AND (SELECT got FROM l)"
    "  RETURNING id),"
    " dt AS (DELETE FROM sms_outbox WHERE id IN (SELECT id FROM sms_outbox WHERE $1::int8 IS NOT"
    "  NULL AND state <> 'pending' AND done_ms < $1::int8 LIMIT $2::int4) AND (SELECT got FROM l)"
    "  RETURNING id),"
    " da AS (DELETE FROM sms_appointments WHERE (facility, appt_id) IN (SELECT facility, appt_id"
    "  FROM sms_appointments a WHERE $1::int8 IS NOT NULL AND purged = 1"
    "  AND GREATEST(purge_after_s, event_time) * 1000 < $1::int8 AND NOT EXISTS (SELECT 1"
    "  FROM sms_outbox o WHERE o.facility = a.facility AND o.appt_id = a.appt_id"
    "  AND o.state = 'pending') LIMIT $2::int4) AND (SELECT got FROM l) RETURNING 1)"
    " SELECT (SELECT COUNT(*) FROM df) + (SELECT COUNT(*) FROM dt) + (SELECT COUNT(*) FROM da)";
static const char sql_sms_oldest[] =
    "SELECT LEAST((SELECT MIN(event_time) * 1000 FROM sms_appointments),"
    " (SELECT MIN(COALESCE(done_ms, due_s * 1000)) FROM sms_outbox),"
    " (SELECT MIN(received_ms) FROM appt_facts))";

struct sms_purge_read {
    int64_t n, oldest;
};

static int sms_purge_result(struct store *s, size_t q, const PGresult *r, void *ud)
{
    (void)s;
    struct sms_purge_read *p = ud;
    if (q != 1 && q != 2) /* BEGIN, the purge, the oldest, COMMIT */
        return 0;
    if (PQntuples(r) != 1 || PQnfields(r) != 1)
        return -1;
    if (q == 1)
        p->n = col_i64(r, 0, 0, 0);
    else
        p->oldest = col_i64(r, 0, 0, 0);
    return 0;
}

/* One step of SMS retention with cut-off `cut` (ms as text; NULL: kept);
 * how many records went, or -1. */
static long pg_sms_housekeep(struct store *s, const char *cut)
{
    struct store_pg *pg = s->pg;
    char chunk[16];
    const char *v[2] = { cut, chunk };
    snprintf(chunk, sizeof chunk, "%d", STORE_RETENTION_CHUNK);
    PGconn *c = pg->conn;
    struct sms_purge_read p = { 0, 0 };
    char why[256] = "";
    int ok = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
             PQsendQueryParams(c, sql_sms_purge, 2, NULL, v, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, sql_sms_oldest, 0, NULL, NULL, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
             PQpipelineSync(c) == 1;
    enum pg_outcome o = ok ? read_pipeline(s, 4, 1, sms_purge_result, &p, why, sizeof why)
                           : PG_DEAD;
    if (o != PG_OK) {
        char q[600];
        if (o == PG_DEAD || o == PG_DEAD_EARLY)
            set_down(s, clock_mono_ms());
        log_warn("store_retention_failed", " backend=postgresql kind=sms error=\"%s\"",
                 log_quote(q, sizeof q, why));
        return -1;
    }
    pthread_mutex_lock(s->rt_mu);
    s->rt_report.purged[STORE_KIND_SMS] += (uint64_t)p.n;
    s->rt_report.oldest_ms[STORE_KIND_SMS] = p.oldest;
    pthread_mutex_unlock(s->rt_mu);
    return (long)p.n;
}

static long pg_housekeep(struct store *s, int64_t now_wall_ms, int *more)
{
    struct store_pg *pg = s->pg;
    *more = 0;
    if (!pg->conn)
        return 0;
    uint64_t keep[STORE_KIND_N];
    store_rt_keep(&s->opts, keep);
    /* Bodies leave with their message when it goes no later (as on
     * SQLite): NULLing them first would rewrite each row just before its
     * delete. */
    if (keep[STORE_KIND_DELIVERED] <= keep[STORE_KIND_RAW])
        keep[STORE_KIND_RAW] = STORE_KEEP_FOREVER;
    char cut[STORE_KIND_N][24], chunk[16];
    const char *cv[STORE_KIND_N];
    for (int k = 0; k < STORE_KIND_N; k++) {
        int64_t c = cutoff_ms(keep[k], now_wall_ms);
        cv[k] = NULL; /* kept */
        if (c != INT64_MIN) {
            snprintf(cut[k], sizeof cut[k], "%lld", (long long)c);
            cv[k] = cut[k];
        }
    }
    snprintf(chunk, sizeof chunk, "%d", STORE_RETENTION_CHUNK);
    const char *p_rq[3] = { cv[STORE_KIND_REJECTED], cv[STORE_KIND_QUARANTINED], chunk };
    const char *p_del[2] = { cv[STORE_KIND_DELIVERED], chunk };
    const char *p_rows[2] = { cv[STORE_KIND_ROWS], chunk };
    const char *p_raw[2] = { cv[STORE_KIND_RAW], chunk };
    PGconn *c = pg->conn;
    struct purge_read p;
    memset(&p, 0, sizeof p);
    char why[256] = "";
    int ok = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
             PQsendQueryParams(c, sql_hk[HK_REJ_QUAR], 3, NULL, p_rq, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, sql_hk[HK_DELIVERED], 2, NULL, p_del, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, sql_hk[HK_ROWS], 2, NULL, p_rows, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, sql_hk[HK_RAW], 2, NULL, p_raw, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, sql_hk[HK_OLDEST], 0, NULL, NULL, NULL, NULL, 1) == 1 &&
             PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
             PQpipelineSync(c) == 1;
    enum pg_outcome o =
        ok ? read_pipeline(s, HK_N + 1, 1, purge_result, &p, why, sizeof why) : PG_DEAD;
    if (o != PG_OK) {
        char q[600];
        if (o == PG_DEAD || o == PG_DEAD_EARLY)
            set_down(s, clock_mono_ms());
        log_warn("store_retention_failed", " backend=postgresql error=\"%s\"",
                 log_quote(q, sizeof q, why));
        return -1;
    }
    long got[STORE_KIND_N] = {0};
    int64_t oldest[STORE_KIND_N] = {0};
    got[STORE_KIND_REJECTED] = (long)p.n[HK_REJ_QUAR][0];
    got[STORE_KIND_QUARANTINED] = (long)p.n[HK_REJ_QUAR][1];
    got[STORE_KIND_DELIVERED] = (long)p.n[HK_DELIVERED][0];
    got[STORE_KIND_ROWS] = (long)p.n[HK_ROWS][0];
    got[STORE_KIND_RAW] = (long)p.n[HK_RAW][0];
    for (int k = 0; k < STORE_KIND_N; k++)
        if (got[k] >= STORE_RETENTION_CHUNK)
            *more = 1;
    if (p.n[HK_ROWS][1] > 0)
        *more = 1; /* the rest of that block, or the next one */
    /* This node's own files (the audit file sink's output). */
    int files_failed = store_rt_files(s, now_wall_ms, got, oldest, more);
    static const enum store_kind db_kinds[5] = {
        STORE_KIND_RAW, STORE_KIND_DELIVERED, STORE_KIND_ROWS, STORE_KIND_QUARANTINED,
        STORE_KIND_REJECTED,
    };
    pthread_mutex_lock(s->rt_mu);
    struct store_retention_report *r = &s->rt_report;
    store_rt_keep(&s->opts, r->keep_ms);
    long total = 0;
    for (int k = 0; k < STORE_KIND_N; k++) {
        r->purged[k] += (uint64_t)got[k];
        total += got[k];
    }
    for (int i = 0; i < 5; i++)
        r->oldest_ms[db_kinds[i]] = p.oldest[i];
    r->oldest_ms[STORE_KIND_AUDIT_FILES] = oldest[STORE_KIND_AUDIT_FILES];
    r->oldest_ms[STORE_KIND_SMS_FILE] = oldest[STORE_KIND_SMS_FILE];
    r->checked_ms = now_wall_ms;
    pthread_mutex_unlock(s->rt_mu);
    /* SMS records: a transaction of their own (reported inside). */
    long sms = pg_sms_housekeep(s, cv[STORE_KIND_SMS]);
    if (sms >= STORE_RETENTION_CHUNK)
        *more = 1;
    if (sms > 0)
        total += sms;
    if (total > 0)
        log_info("store_retention",
                 " backend=postgresql delivered=%ld rows=%ld raw=%ld quarantined=%ld"
                 " rejected=%ld sms=%ld audit_files=%ld",
                 got[STORE_KIND_DELIVERED], got[STORE_KIND_ROWS], got[STORE_KIND_RAW],
                 got[STORE_KIND_QUARANTINED], got[STORE_KIND_REJECTED], sms > 0 ? sms : 0,
                 got[STORE_KIND_AUDIT_FILES]);
    (void)files_failed; /* logged where it failed; the database part went */
    return total;
}

/* ---- heartbeat and the cluster view ------------------------------------ */

#define PG_NOW_MS "(extract(epoch FROM clock_timestamp()) * 1000)::int8"

static const char sql_beat[] =
    "INSERT INTO nodes (name, version, started_ms, beat_ms, interval_ms, pid, aa, ae, ar, stored)"
    " VALUES ($1, $2, $3::int8, " PG_NOW_MS ", $4::int8, $5::int8, $6::int8, $7::int8, $8::int8,"
    " $9::int8) ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version,"
    " started_ms = EXCLUDED.started_ms, beat_ms = EXCLUDED.beat_ms,"
    " interval_ms = EXCLUDED.interval_ms, pid = EXCLUDED.pid, aa = EXCLUDED.aa,"
    " ae = EXCLUDED.ae, ar = EXCLUDED.ar, stored = EXCLUDED.stored";

static const char sql_nodes[] =
    "SELECT name, version, started_ms, " PG_NOW_MS " - beat_ms, interval_ms, pid, aa, ae, ar,"
    " stored, COUNT(*) OVER () FROM nodes ORDER BY name LIMIT 64";
_Static_assert(STORE_CLUSTER_MAX == 64, "sql_nodes LIMIT");

static int64_t text_i64(const PGresult *r, int row, int col)
{
    const char *v = PQgetvalue(r, row, col);
    int64_t x = 0;
    if (num_parse_i64((const uint8_t *)v, strlen(v), INT64_MIN, INT64_MAX, &x) != 0)
        return 0;
    return x;
}

/* The rows of sql_nodes (text format) into out; returns how many nodes
 * the table holds, -1 on an unexpected answer. */
static long nodes_parse(const PGresult *r, struct store_node *out, size_t cap)
{
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != 11)
        return -1;
    int n = PQntuples(r);
    long total = n ? (long)text_i64(r, 0, 10) : 0;
    for (int i = 0; i < n && (size_t)i < cap; i++) {
        struct store_node *x = &out[i];
        memset(x, 0, sizeof *x);
        snprintf(x->name, sizeof x->name, "%s", PQgetvalue(r, i, 0));
        snprintf(x->version, sizeof x->version, "%s", PQgetvalue(r, i, 1));
        x->started_ms = text_i64(r, i, 2);
        x->age_ms = text_i64(r, i, 3);
        x->interval_ms = text_i64(r, i, 4);
        x->pid = text_i64(r, i, 5);
        x->aa = (uint64_t)text_i64(r, i, 6);
        x->ae = (uint64_t)text_i64(r, i, 7);
        x->ar = (uint64_t)text_i64(r, i, 8);
        x->stored = (uint64_t)text_i64(r, i, 9);
        x->up = x->age_ms <= STORE_DOWN_BEATS * x->interval_ms;
    }
    return total;
}

static int beat_result(struct store *s, size_t q, const PGresult *r, void *ud)
{
    (void)ud;
    if (q != 1)
        return 0;
    struct store_node tmp[STORE_CLUSTER_MAX];
    long total = nodes_parse(r, tmp, STORE_CLUSTER_MAX);
    if (total < 0)
        return -1;
    size_t n = (size_t)total < STORE_CLUSTER_MAX ? (size_t)total : STORE_CLUSTER_MAX;
    pthread_mutex_lock(s->rt_mu);
    memcpy(s->cluster, tmp, n * sizeof *tmp);
    s->n_cluster = n;
    pthread_mutex_unlock(s->rt_mu);
    return 0;
}

/* Writes this node's row and reads every node's, in one pipeline (one
 * implicit transaction) on the writer's connection: a round trip every
 * heartbeat_ms, nothing per message. */
static void heartbeat(struct store *s)
{
    struct store_pg *pg = s->pg;
    char v[9][24];
    const char *p[9];
    p[0] = pg->node;
    p[1] = pg->version;
    snprintf(v[2], sizeof v[2], "%lld", (long long)pg->started_ms);
    snprintf(v[3], sizeof v[3], "%llu", (unsigned long long)s->opts.heartbeat_ms);
    snprintf(v[4], sizeof v[4], "%lld", (long long)getpid());
    for (int i = 0; i < 3; i++)
        snprintf(v[5 + i], sizeof v[5 + i], "%llu",
                 (unsigned long long)atomic_load_explicit(&s->node_acks[i], memory_order_relaxed));
    snprintf(v[8], sizeof v[8], "%llu",
             (unsigned long long)atomic_load_explicit(&s->st.messages, memory_order_relaxed));
    for (int i = 2; i < 9; i++)
        p[i] = v[i];
    PGconn *c = pg->conn;
    char why[256] = "";
    int ok = PQsendQueryParams(c, sql_beat, 9, NULL, p, NULL, NULL, 0) == 1 &&
             PQsendQueryParams(c, sql_nodes, 0, NULL, NULL, NULL, NULL, 0) == 1 &&
             PQpipelineSync(c) == 1;
    enum pg_outcome o = ok ? read_pipeline(s, 2, 0, beat_result, NULL, why, sizeof why) : PG_DEAD;
    if (o != PG_OK) {
        char q[600];
        if (o == PG_DEAD || o == PG_DEAD_EARLY)
            set_down(s, clock_mono_ms());
        log_warn("store_heartbeat_failed", " backend=postgresql error=\"%s\"",
                 log_quote(q, sizeof q, why));
    }
}

static void pg_tick(struct store *s, uint64_t now_ms)
{
    struct store_pg *pg = s->pg;
    if (!pg->conn)
        (void)try_connect(s, now_ms);
    if (!pg->conn)
        return;
    if (now_ms >= pg->next_beat_ms) {
        pg->next_beat_ms = now_ms + s->opts.heartbeat_ms;
        heartbeat(s);
    }
    if (pg->conn)
        s->be_wake_ms = pg->next_beat_ms;
}

static void pg_close(struct store *s)
{
    struct store_pg *pg = s->pg;
    if (!pg)
        return;
    if (pg->conn)
        PQfinish(pg->conn);
    if (pg->password)
        explicit_bzero(pg->password, strlen(pg->password));
    free(pg->password);
    free(pg->url);
    free(pg->node);
    free(pg->version);
    free(pg->shown);
    free(pg->idx);
    free(pg->ord);
    free(pg->rej);
    if (pg->arr)
        for (int i = 0; i <= G_COUNT; i++)
            buf_release(&pg->arr[i].b);
    free(pg->arr);
    free(pg);
    s->pg = NULL;
}

static char *shown_url(const char *url)
{
    size_t cap = strlen(url) + 64;
    char *out = malloc(cap);
    if (out && conninfo_scrub(url, out, cap) != 0)
        snprintf(out, cap, "(connection string)");
    return out;
}

/* The first connection must succeed: a node that cannot reach its store
 * at start-up (or finds a newer schema) does not start. */
static int pg_open(struct store *s, char *errbuf, size_t errcap)
{
    struct store_pg *pg = calloc(1, sizeof *pg);
    if (!pg) {
        snprintf(errbuf, errcap, "store: out of memory");
        return -1;
    }
    s->pg = pg;
    pg->arr = calloc(G_COUNT + 1, sizeof *pg->arr);
    if (pg->arr)
        for (int i = 0; i <= G_COUNT; i++)
            buf_init(&pg->arr[i].b, (size_t)1 << 30);
    pg->url = strdup(s->opts.url);
    pg->node = strdup(s->opts.node && s->opts.node[0] ? s->opts.node : "node");
    pg->password = s->opts.password ? strdup(s->opts.password) : NULL;
    pg->shown = shown_url(s->opts.url);
    pg->idx = calloc(s->opts.max_group, sizeof *pg->idx);
    pg->ord = calloc(s->opts.max_group, sizeof *pg->ord);
    pg->rej = calloc(s->opts.max_group, sizeof *pg->rej);
    if (!pg->arr || !pg->idx || !pg->ord || !pg->rej || !pg->url || !pg->node || !pg->shown || (s->opts.password && !pg->password)) {
        snprintf(errbuf, errcap, "store: out of memory");
        return -1;
    }
    s->cluster = calloc(STORE_CLUSTER_MAX, sizeof *s->cluster);
    if (!s->cluster) {
        snprintf(errbuf, errcap, "store: out of memory");
        return -1;
    }
    if (!s->opts.heartbeat_ms)
        s->opts.heartbeat_ms = STORE_HEARTBEAT_MS;
    pg->version = strdup(s->opts.version ? s->opts.version : "");
    if (!pg->version) {
        snprintf(errbuf, errcap, "store: out of memory");
        return -1;
    }
    s->opts.version = pg->version; /* the caller's copy may go */
    pg->started_ms = clock_wall_ms();
    s->opts.url = pg->url;
    s->opts.password = NULL; /* the caller's copy may go; ours is pg->password */
    pg->conn = pg_open_conn(pg, errbuf, errcap);
    if (!pg->conn)
        return -1;
    char q[600];
    log_info("store_open", " backend=postgresql url=\"%s\" node=%s queue=%zu max_group=%u",
             log_quote(q, sizeof q, pg->shown), pg->node, s->cap, s->opts.max_group);
    return 0;
}

const struct store_backend store_pg_backend = {
    .open = pg_open,
    .close = pg_close,
    .unavailable = pg_unavailable,
    .write_group = pg_write_group,
    .after_group = NULL,
    .housekeep = pg_housekeep,
    .tick = pg_tick,
};

/* ---- check ------------------------------------------------------------- */

int store_check_postgresql(const struct store_opts *o, char *info, size_t infocap, char *errbuf,
                           size_t errcap)
{
    char *shown = shown_url(o->url ? o->url : "");
    PGconn *c = pg_connect(o->url ? o->url : "", o->password, o->node);
    int ret = -1;
    if (!shown || !c) {
        snprintf(errbuf, errcap, "out of memory");
        goto out;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char m[256];
        pg_msg(PQerrorMessage(c), m, sizeof m);
        snprintf(errbuf, errcap, "cannot connect to %s: %s", shown, m);
        goto out;
    }
    int have = 0;
    PGresult *r = PQexec(c, "SELECT to_regclass('schema_version') IS NOT NULL");
    int exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                 PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (exists && read_version(c, &have, errbuf, errcap) < 0)
        goto out;
    if (have > STORE_PG_SCHEMA_VERSION) {
        snprintf(errbuf, errcap, "%s: database schema %d is newer than this build (%d): "
                 "upgrade this node", shown, have, STORE_PG_SCHEMA_VERSION);
        goto out;
    }
    snprintf(info, infocap, "%s: PostgreSQL %d, schema %d of %d%s, as %s", shown,
             PQserverVersion(c) / 10000, have, STORE_PG_SCHEMA_VERSION,
             have < STORE_PG_SCHEMA_VERSION ? " (run migrates)" : "", PQuser(c));
    ret = 0;
out:
    PQfinish(c);
    free(shown);
    return ret;
}

long store_cluster_read(const struct store_opts *o, struct store_node *out, size_t cap,
                        char *errbuf, size_t errcap)
{
    char *shown = shown_url(o->url ? o->url : "");
    PGconn *c = pg_connect(o->url ? o->url : "", o->password, o->node);
    long ret = -1;
    if (!shown || !c) {
        snprintf(errbuf, errcap, "out of memory");
        goto out;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char m[256];
        pg_msg(PQerrorMessage(c), m, sizeof m);
        snprintf(errbuf, errcap, "cannot connect to %s: %s", shown, m);
        goto out;
    }
    PGresult *r = PQexec(c, "SELECT to_regclass('nodes') IS NOT NULL");
    int exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                 PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!exists) {
        ret = 0; /* no node of this version ran yet */
        goto out;
    }
    r = PQexec(c, sql_nodes);
    ret = nodes_parse(r, out, cap);
    if (ret < 0) {
        char m[256];
        pg_msg(PQresultErrorMessage(r), m, sizeof m);
        snprintf(errbuf, errcap, "%s: reading nodes: %s", shown, m);
    }
    PQclear(r);
out:
    PQfinish(c);
    free(shown);
    return ret;
}
