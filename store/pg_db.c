/* pg_db — the store's writer half on PostgreSQL (libpq): connection and
 * reconnection, schema migrations, and the group write.
 *
 * Design: several nodes write into one database.  A group is one
 * transaction sent as one pipeline (BEGIN, one call of hb_store_message()
 * per message, COMMIT, Sync) so it costs one round trip and one commit
 * however many messages it holds; results are published only after the
 * COMMIT's answer came back (AA after COMMIT).  Duplicates across nodes rest
 * on a unique index over (send_app, send_fac, control_id, digest): the
 * function inserts with ON CONFLICT DO NOTHING, which waits for another
 * node's uncommitted insert of the same message and then finds it, so a
 * re-send answered by any node gets the original's id and ACK code.  The
 * same key with other content is stored as new (key_reused), as on SQLite.
 *
 * Losing the server: a group that fails because the connection broke is
 * answered AE; the connection is dropped and tried again with a doubling
 * back-off (STORE_PG_BACKOFF_*), also while no message comes (tick), so the
 * node reports itself unavailable (/readyz 503) and accepts again by
 * itself.  A group whose BEGIN never reached a live server is retried once
 * on a fresh connection: nothing of it can have been committed.
 *
 * Threads: open/close and store_check_postgresql on the main thread (or
 * any, for check); everything else on the writer thread. */
#include "store/store_int.h"

#include "core/clock.h"
#include "core/conninfo.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
#define STORE_PG_SCHEMA_VERSION   1

/* Any fixed number: the advisory lock two nodes starting at once take
 * around the migrations. */
#define STORE_PG_MIGRATE_LOCK     "7401402"

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
};

struct store_pg {
    PGconn *conn;
    char *url, *password, *node;  /* owned copies */
    char *shown;                  /* the url as logs show it (no password) */
    uint64_t next_try_ms, backoff_ms;
    int down_logged;
    uint64_t last_fail_log_ms, fail_log_suppressed;
    /* Scratch for one message's parameters (binary), reused. */
    struct buf rows_arr;
    size_t *idx;                  /* the group's messages still being written */
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

/* Parameter types of the two prepared statements (binary format). */
#define OID_BOOL   16
#define OID_BYTEA  17
#define OID_INT8   20
#define OID_INT4   23
#define OID_TEXT   25
#define OID_BYTEA_ARRAY 1001

enum { P_NODE, P_RECEIVED, P_LISTENER, P_PEER, P_APP, P_FAC, P_CTL, P_TYPE, P_TRIGGER,
       P_VERSION, P_ACK, P_RAW, P_QUARANTINED, P_REASON, P_ROW_COUNT, P_FILTERED, P_DIGEST,
       P_LAYOUT, P_ROWS, P_APPT, P_A_TEXT, /* STORE_APPT_NTEXT texts, then 3 numbers */
       P_COUNT = P_A_TEXT + STORE_APPT_NTEXT + 3 };
/* The function's order of the appointment texts. */
static const enum store_appt_text appt_order[STORE_APPT_NTEXT] = {
    STORE_APPT_FACILITY, STORE_APPT_ID, STORE_APPT_EVENT, STORE_APPT_LOCATION,
    STORE_APPT_PROVIDER, STORE_APPT_FIRST_NAME, STORE_APPT_PHONE, STORE_APPT_CONSENT,
    STORE_APPT_LANGUAGE, STORE_APPT_LINK,
};

enum { R_NODE, R_RECEIVED, R_LISTENER, R_PEER, R_APP, R_FAC, R_CTL, R_TYPE, R_TRIGGER,
       R_VERSION, R_ACK, R_RAW, R_REASON, R_ERR_CODE, R_ERR_WHERE, R_COUNT };

static int pg_prepare(PGconn *c, char *errbuf, size_t errcap)
{
    Oid t[P_COUNT];
    for (int i = 0; i < P_COUNT; i++)
        t[i] = OID_TEXT;
    t[P_RECEIVED] = t[P_DIGEST] = t[P_LAYOUT] = OID_INT8;
    t[P_QUARANTINED] = t[P_ROW_COUNT] = t[P_FILTERED] = OID_INT4;
    t[P_RAW] = OID_BYTEA;
    t[P_ROWS] = OID_BYTEA_ARRAY;
    t[P_APPT] = OID_BOOL;
    for (int i = 0; i < 3; i++)
        t[P_A_TEXT + STORE_APPT_NTEXT + i] = OID_INT8;
    char sql[512];
    int o = snprintf(sql, sizeof sql, "SELECT r_id, r_status, r_ack FROM hb_store_message(");
    for (int i = 0; i < P_COUNT; i++)
        o += snprintf(sql + o, sizeof sql - (size_t)o, "%s$%d", i ? "," : "", i + 1);
    snprintf(sql + o, sizeof sql - (size_t)o, ")");
    PGresult *r = PQprepare(c, "hb_store", sql, P_COUNT, t);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    char m[256];
    if (!ok)
        pg_msg(PQresultErrorMessage(r), m, sizeof m);
    PQclear(r);
    if (ok) {
        Oid tr[R_COUNT];
        for (int i = 0; i < R_COUNT; i++)
            tr[i] = OID_TEXT;
        tr[R_RECEIVED] = OID_INT8;
        tr[R_RAW] = OID_BYTEA;
        tr[R_ERR_CODE] = OID_INT4;
        r = PQprepare(c, "hb_reject",
                      "INSERT INTO rejected (node, received_ms, listener, peer, send_app, send_fac,"
                      " control_id, msg_type, \"trigger\", version, ack_code, raw, reason, err_code,"
                      " err_where) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
                      " $14, $15) RETURNING id",
                      R_COUNT, tr);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            pg_msg(PQresultErrorMessage(r), m, sizeof m);
        PQclear(r);
    }
    if (!ok)
        snprintf(errbuf, errcap, "store: prepare: %s", m);
    return ok ? 0 : -1;
}

/* A connection ready for groups: migrated, statements prepared, in
 * pipeline mode and non-blocking.  NULL with errbuf. */
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

static int32_t get_i32(const char *p)
{
    uint32_t u;
    memcpy(&u, p, 4);
    return (int32_t)ntohl(u);
}

/* The binary form of a one-dimensional bytea[] holding the message's rows
 * (one per non-blank line). */
static int rows_array(struct buf *b, const struct store_msg *m)
{
    buf_reset(b);
    uint8_t hdr[20];
    put_i32(hdr, 1);          /* dimensions */
    put_i32(hdr + 4, 0);      /* no NULLs */
    put_i32(hdr + 8, OID_BYTEA);
    put_i32(hdr + 12, 0);     /* count, set below */
    put_i32(hdr + 16, 1);     /* lower bound */
    if (buf_append(b, hdr, sizeof hdr) != 0)
        return -1;
    const uint8_t *p = store_msg_ptr(m, SF_ROWS);
    const uint8_t *end = p + m->span[SF_ROWS].len;
    int32_t count = 0;
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *line_end = nl ? nl : end;
        if (line_end > p) {
            uint8_t len[4];
            put_i32(len, (int32_t)(line_end - p));
            if (buf_append(b, len, 4) != 0 || buf_append(b, p, (size_t)(line_end - p)) != 0)
                return -1;
            count++;
        }
        p = nl ? nl + 1 : end;
    }
    if ((unsigned)count != m->row_count)
        log_warn("store_row_count", " expected=%u found=%d", m->row_count, (int)count);
    put_i32(buf_data(b) + 12, count);
    return 0;
}

/* Queues one message's statement on the pipeline. */
static int send_one(struct store *s, const struct store_msg *m)
{
    struct store_pg *pg = s->pg;
    const char *v[P_COUNT];
    int len[P_COUNT], fmt[P_COUNT];
    uint8_t received[8], digest[8], layout[8], q[4], rc[4], filt[4], nums[3][8], appt[1],
        errc[4];
    for (int i = 0; i < P_COUNT; i++) {
        v[i] = NULL;
        len[i] = 0;
        fmt[i] = 1;
    }
#define SPAN(i, f) do { v[i] = (const char *)store_msg_ptr(m, f); len[i] = (int)m->span[f].len; \
                        if (!len[i]) v[i] = ""; } while (0)
    put_i64(received, m->received_ms);
    if (m->rejected) {
        v[R_NODE] = pg->node;
        len[R_NODE] = (int)strlen(pg->node);
        v[R_RECEIVED] = (const char *)received;
        len[R_RECEIVED] = 8;
        SPAN(R_LISTENER, SF_LISTENER);
        SPAN(R_PEER, SF_PEER);
        SPAN(R_APP, SF_SEND_APP);
        SPAN(R_FAC, SF_SEND_FAC);
        SPAN(R_CTL, SF_CONTROL_ID);
        if (!m->span[SF_CONTROL_ID].len)
            v[R_CTL] = NULL;
        SPAN(R_TYPE, SF_MSG_TYPE);
        SPAN(R_TRIGGER, SF_TRIGGER);
        SPAN(R_VERSION, SF_VERSION);
        v[R_ACK] = m->ack_code;
        len[R_ACK] = 2;
        SPAN(R_RAW, SF_RAW);
        SPAN(R_REASON, SF_REASON);
        put_i32(errc, m->err_code);
        v[R_ERR_CODE] = (const char *)errc;
        len[R_ERR_CODE] = 4;
        SPAN(R_ERR_WHERE, SF_ERR_WHERE);
        return PQsendQueryPrepared(pg->conn, "hb_reject", R_COUNT, v, len, fmt, 1) == 1 ? 0 : -1;
    }
    v[P_NODE] = pg->node;
    len[P_NODE] = (int)strlen(pg->node);
    v[P_RECEIVED] = (const char *)received;
    len[P_RECEIVED] = 8;
    SPAN(P_LISTENER, SF_LISTENER);
    SPAN(P_PEER, SF_PEER);
    SPAN(P_APP, SF_SEND_APP);
    SPAN(P_FAC, SF_SEND_FAC);
    SPAN(P_CTL, SF_CONTROL_ID);
    if (!m->span[SF_CONTROL_ID].len)
        v[P_CTL] = NULL; /* never recognised as a re-send (as on SQLite) */
    SPAN(P_TYPE, SF_MSG_TYPE);
    SPAN(P_TRIGGER, SF_TRIGGER);
    SPAN(P_VERSION, SF_VERSION);
    v[P_ACK] = m->ack_code;
    len[P_ACK] = 2;
    SPAN(P_RAW, SF_RAW);
    put_i32(q, m->quarantined);
    v[P_QUARANTINED] = (const char *)q;
    len[P_QUARANTINED] = 4;
    if (m->quarantined || m->filtered)
        SPAN(P_REASON, SF_REASON);
    put_i32(rc, (int32_t)m->row_count);
    v[P_ROW_COUNT] = (const char *)rc;
    len[P_ROW_COUNT] = 4;
    put_i32(filt, m->filtered);
    v[P_FILTERED] = (const char *)filt;
    len[P_FILTERED] = 4;
    put_i64(digest, (int64_t)m->digest);
    v[P_DIGEST] = (const char *)digest;
    len[P_DIGEST] = 8;
    if (m->layout > 0) {
        put_i64(layout, m->layout);
        v[P_LAYOUT] = (const char *)layout;
        len[P_LAYOUT] = 8;
    }
    if (rows_array(&pg->rows_arr, m) != 0)
        return -1;
    v[P_ROWS] = (const char *)buf_data(&pg->rows_arr);
    len[P_ROWS] = (int)pg->rows_arr.len;
    appt[0] = m->has_appt ? 1 : 0;
    v[P_APPT] = (const char *)appt;
    len[P_APPT] = 1;
    if (m->has_appt) {
        const char *t[STORE_APPT_NTEXT];
        const char *p = (const char *)store_msg_ptr(m, SF_APPT);
        const char *end = p + m->span[SF_APPT].len;
        for (int i = 0; i < STORE_APPT_NTEXT; i++) {
            if (p >= end)
                return -1; /* store_msg_new wrote them all */
            t[i] = p;
            p += strlen(p) + 1;
        }
        for (int i = 0; i < STORE_APPT_NTEXT; i++) {
            enum store_appt_text k = appt_order[i];
            int keyed = k == STORE_APPT_ID || k == STORE_APPT_FACILITY || k == STORE_APPT_EVENT;
            if (t[k][0] || keyed) {
                v[P_A_TEXT + i] = t[k];
                len[P_A_TEXT + i] = (int)strlen(t[k]);
            }
        }
        const int64_t n3[3] = { m->appt_event_time, m->appt_start_s, m->appt_duration_min };
        for (int i = 0; i < 3; i++) {
            if (n3[i] < 0)
                continue;
            put_i64(nums[i], n3[i]);
            v[P_A_TEXT + STORE_APPT_NTEXT + i] = (const char *)nums[i];
            len[P_A_TEXT + STORE_APPT_NTEXT + i] = 8;
        }
    }
#undef SPAN
    return PQsendQueryPrepared(pg->conn, "hb_store", P_COUNT, v, len, fmt, 1) == 1 ? 0 : -1;
}

/* How a pipeline ended. */
enum pg_outcome {
    PG_OK = 0,
    PG_MSG_FAILED,   /* the message at *bad was refused (data): retry without it */
    PG_RETRY,        /* deadlock / serialization: retry the same group */
    PG_DEAD_EARLY,   /* the connection was dead before BEGIN ran: nothing done */
    PG_DEAD,         /* the connection broke: outcome of the group unknown */
    PG_FAILED,       /* the server refused the group (e.g. disk full) */
};

static int sqlstate_is(const PGresult *r, const char *code)
{
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return st && strcmp(st, code) == 0;
}

/* Reads every result of a group pipeline over idx[0..n); fills grp_res. */
static enum pg_outcome read_group(struct store *s, const size_t *idx, size_t n, size_t *bad,
                                  char *why, size_t whycap)
{
    PGconn *c = s->pg->conn;
    uint64_t deadline = clock_mono_ms() + STORE_PG_IO_TIMEOUT_MS;
    enum pg_outcome out = PG_OK;
    int dead = 0, begin_ok = 0;
    why[0] = '\0';
    /* n + 2 statements (BEGIN, the messages, COMMIT), each ended by NULL,
     * then the Sync. */
    for (size_t q = 0; q < n + 2 && !dead; q++) {
        PGresult *r;
        int seen = 0;
        while ((r = next_result(c, deadline, &dead)) != NULL) {
            ExecStatusType st = PQresultStatus(r);
            seen = 1;
            if (q == 0 && st == PGRES_COMMAND_OK)
                begin_ok = 1;
            if (st == PGRES_FATAL_ERROR && out == PG_OK) {
                pg_msg(PQresultErrorMessage(r), why, whycap);
                if (sqlstate_is(r, "40P01") || sqlstate_is(r, "40001"))
                    out = PG_RETRY;
                else if (q >= 1 && q <= n) {
                    const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
                    /* Data and constraint errors belong to one message. */
                    if (code && (code[0] == '2' && (code[1] == '2' || code[1] == '3'))) {
                        out = PG_MSG_FAILED;
                        *bad = q - 1;
                    } else {
                        out = PG_FAILED;
                    }
                } else {
                    out = PG_FAILED;
                }
            } else if (q >= 1 && q <= n && st == PGRES_TUPLES_OK && out == PG_OK) {
                struct store_result *res = &s->grp_res[idx[q - 1]];
                const struct store_msg *m = s->grp[idx[q - 1]];
                res->key_reused = 0;
                memcpy(res->ack_code, m->ack_code, 3);
                if (PQntuples(r) != 1 || PQgetlength(r, 0, 0) != 8) {
                    snprintf(why, whycap, "unexpected answer from the server");
                    out = PG_FAILED;
                } else if (m->rejected) {
                    res->id = get_i64(PQgetvalue(r, 0, 0));
                    res->status = STORE_STORED;
                } else {
                    res->id = get_i64(PQgetvalue(r, 0, 0));
                    int32_t status = PQgetlength(r, 0, 1) == 4 ? get_i32(PQgetvalue(r, 0, 1)) : -1;
                    res->status = status == 1 ? STORE_DUPLICATE : STORE_STORED;
                    res->key_reused = status == 2;
                    if (status == 1 && PQgetlength(r, 0, 2) == 2) {
                        memcpy(res->ack_code, PQgetvalue(r, 0, 2), 2);
                        res->ack_code[2] = '\0';
                    }
                }
            } else if (q == n + 1 && st == PGRES_COMMAND_OK && out == PG_OK &&
                       strcmp(PQcmdStatus(r), "COMMIT") != 0) {
                /* COMMIT of a failed transaction answers ROLLBACK. */
                snprintf(why, whycap, "transaction rolled back");
                out = PG_FAILED;
            }
            PQclear(r);
        }
        if (!seen && !dead) {
            snprintf(why, whycap, "pipeline out of step");
            dead = 1;
        }
    }
    if (!dead) {
        PGresult *r = next_result(c, deadline, &dead);
        if (r && PQresultStatus(r) != PGRES_PIPELINE_SYNC)
            dead = 1;
        PQclear(r);
    }
    if (dead || PQstatus(c) != CONNECTION_OK) {
        if (!why[0])
            pg_msg(PQerrorMessage(c), why, whycap);
        /* The server answers in order: without BEGIN's answer, it ran
         * nothing of this group (a server stopping sends its FATAL first). */
        return begin_ok ? PG_DEAD : PG_DEAD_EARLY;
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

/* One transaction over grp[idx[0..n)). */
static enum pg_outcome write_set(struct store *s, const size_t *idx, size_t n, size_t *bad,
                                 char *why, size_t whycap)
{
    PGconn *c = s->pg->conn;
    int ok = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = send_one(s, s->grp[idx[i]]) == 0;
    ok = ok && PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
         PQpipelineSync(c) == 1;
    if (!ok) {
        pg_msg(PQerrorMessage(c), why, whycap);
        /* Nothing was sent, or the stream is in an unknown state. */
        return PQstatus(c) == CONNECTION_OK ? PG_DEAD : PG_DEAD_EARLY;
    }
    return read_group(s, idx, n, bad, why, whycap);
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

static void pg_write_group(struct store *s, size_t n)
{
    struct store_pg *pg = s->pg;
    size_t *idx = pg->idx;
    size_t k = n;
    for (size_t i = 0; i < k; i++)
        idx[i] = i;
    char why[256] = "";
    int reconnected = 0;
    uint64_t t0 = clock_mono_ns();
    for (int tries = 0; k;) {
        size_t bad = 0;
        enum pg_outcome o = pg->conn ? write_set(s, idx, k, &bad, why, sizeof why) : PG_DEAD_EARLY;
        if (o == PG_OK)
            break;
        if (o == PG_MSG_FAILED) {
            fail_msgs(s, &idx[bad], 1, why);
            memmove(&idx[bad], &idx[bad + 1], (k - bad - 1) * sizeof idx[0]);
            k--;
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
        fail_msgs(s, idx, k, why);
        return;
    }
    if (!k)
        return;
    uint64_t dups = 0, rejected = 0, reused = 0;
    for (size_t i = 0; i < k; i++) {
        dups += s->grp_res[idx[i]].status == STORE_DUPLICATE;
        rejected += (uint64_t)s->grp[idx[i]]->rejected;
        reused += (uint64_t)s->grp_res[idx[i]].key_reused;
    }
    atomic_fetch_add_explicit(&s->st.commits, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.messages, k - dups - rejected, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.rejected, rejected, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.duplicates, dups, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.control_id_reused, reused, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->st.commit_ns_total, clock_mono_ns() - t0,
                              memory_order_relaxed);
    if (k > atomic_load_explicit(&s->st.max_group_seen, memory_order_relaxed))
        atomic_store_explicit(&s->st.max_group_seen, k, memory_order_relaxed);
}

/* ---- the backend ------------------------------------------------------- */

static int pg_unavailable(struct store *s, uint64_t now_ms)
{
    return try_connect(s, now_ms) != 0;
}

static void pg_tick(struct store *s, uint64_t now_ms)
{
    if (!s->pg->conn)
        (void)try_connect(s, now_ms);
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
    free(pg->shown);
    free(pg->idx);
    buf_release(&pg->rows_arr);
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
    buf_init(&pg->rows_arr, (size_t)64 << 20);
    pg->url = strdup(s->opts.url);
    pg->node = strdup(s->opts.node && s->opts.node[0] ? s->opts.node : "node");
    pg->password = s->opts.password ? strdup(s->opts.password) : NULL;
    pg->shown = shown_url(s->opts.url);
    pg->idx = calloc(s->opts.max_group, sizeof *pg->idx);
    if (!pg->idx || !pg->url || !pg->node || !pg->shown || (s->opts.password && !pg->password)) {
        snprintf(errbuf, errcap, "store: out of memory");
        return -1;
    }
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
    .housekeep = NULL,
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
