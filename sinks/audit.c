/* audit — the audit sink's thread: batcher, scheduler and uploader.
 *
 * Design: one thread owns one SQLite connection (store/batch.c) and one
 * libcurl multi handle.  Each turn it (1) lets the batcher put newly
 * committed rows into blocks and seal them, (2) refreshes the backlog
 * figures, (3) for a purview sink keeps a bearer token (fetched with the
 * client-credentials grant, renewed before expiry and once after a 401)
 * and starts uploads of sealed blocks up to max_parallel, or for a file
 * sink writes sealed blocks as files, (4) drives curl and handles finished
 * transfers, then (5) sleeps in curl_multi_poll until a socket, curl's own
 * timer, the tick or sink_audit_stop's curl_multi_wakeup ends the wait.
 *
 * Every block state change is committed before it is acted on: a block is
 * `uploading` on disk before its request leaves, and `done` only after a
 * 2xx answer.  So a crash or stop can only cause a block to be sent again
 * (counted in `resends`), never one to be skipped.  Failures follow one
 * rule (classify()): network errors, timeouts, 408, 429 and 5xx are
 * retried with exponential backoff and jitter, honouring Retry-After; 401
 * renews the token once; any other answer fails the block, which stays in
 * the store until `hl7bridge redrive`.
 *
 * Threads: sink_audit_start/stop on the caller's thread (main); audit_main
 * on the sink thread; stats readers anywhere (atomics, one mutex for the
 * error text).  Never logs row content, the token or the secret. */
#include "sinks/sinks.h"

#include "core/clock.h"
#include "core/log.h"
#include "store/store.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define AUDIT_TICK_MS           100
#define AUDIT_RESP_MAX          (64 * 1024)  /* answer bytes kept; the rest is dropped */
#define AUDIT_SUMMARY_MAX       200          /* answer bytes stored and logged */
#define AUDIT_HEADER_MAX        (1u << 20)   /* one header line; the configured names are short */
#define AUDIT_CONNECT_TIMEOUT_S 15
#define AUDIT_TOKEN_TIMEOUT_S   60
#define AUDIT_TOKEN_EARLY_S     300          /* renew this long before expiry ... */
#define AUDIT_TOKEN_UNKNOWN_S   300          /* ... and this soon when no lifetime is given */
#define AUDIT_TOKEN_MARGIN_MS   10000        /* stop using a token this long before expiry */
#define AUDIT_AUTH_RING         64           /* blocks that already had their 401 renewal */
#define AUDIT_FILE_PER_TURN     8            /* blocks written per turn (file sink) */
#define AUDIT_DB_RETRY_LOG_MS   5000
#define AUDIT_DEFAULT_ROWS      5000
#define AUDIT_DEFAULT_BYTES     (256ull * 1024 * 1024)
#define AUDIT_DEFAULT_AGE_S     300
#define AUDIT_DEFAULT_PARALLEL  2
#define AUDIT_DEFAULT_TIMEOUT_S 400
#define AUDIT_MAX_PARALLEL      64

/* One HTTP request in flight: a token request or a block upload. */
struct xfer {
    CURL *easy;
    struct curl_slist *hdrs;
    int is_token;
    struct store_batch b;
    uint64_t rows;
    uint64_t token_gen;     /* the token it was sent with */
    uint64_t started_ms;
    char file_name[96];
    struct buf body;
    struct buf resp;
    char errbuf[CURL_ERROR_SIZE];
};

struct sink_audit {
    /* options, owned copies */
    enum sink_audit_kind kind;
    char *header, *file_ext, *directory;
    char *tenant, *app_id, *secret, *job_id, *resource, *ca_file;
    char *token_url, *upload_url; /* upload_url carries ?jobid= */
    size_t header_len;
    struct buf block_header;      /* sink thread: the header of the block at hand */
    char block_ext[16];           /* and its file extension */
    unsigned max_parallel, timeout_s, tick_ms, retry_base_ms, retry_max_ms;
    struct store_batch_limits lim;

    struct store_batches *sb;
    CURLM *multi;
    pthread_t thr;
    int started;
    atomic_int stop;

    /* sink thread only */
    struct xfer *up[AUDIT_MAX_PARALLEL];
    unsigned n_up;
    struct xfer *tok_req;
    char *token;
    uint64_t token_gen, token_renew_ms, token_expire_ms, token_next_try_ms;
    unsigned token_fails;
    uint64_t hold_until_ms;
    unsigned consec_fail;
    int64_t auth_retried[AUDIT_AUTH_RING];
    size_t auth_pos;
    uint64_t next_scan_ms, next_db_log_ms;
    uint64_t renew_every_ms, next_renew_ms; /* leases of blocks in flight (0: none kept) */
    uint64_t done_at_start;
    struct buf content; /* file sink scratch */

    /* figures (any thread) */
    _Atomic uint64_t pending, b_open, b_sealed, b_uploading, b_done, b_failed;
    _Atomic uint64_t delivered, rows_delivered, retries, failures, resends, tok_ok, tok_fail;
    _Atomic int64_t last_success_ms;
    pthread_mutex_t *err_mu;
    char last_error[256];
};

enum outcome { OUT_DONE = 0, OUT_RETRY, OUT_AUTH, OUT_FAIL };

/* ---- small helpers ------------------------------------------------------- */

static uint32_t rnd32(void)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (uint32_t)clock_mono_ns();
    return r;
}

/* A copy safe to log and store: printable ASCII only, no quotes, the
 * secret (should a peer ever echo it) replaced. */
static void sanitize(const struct sink_audit *s, char *dst, size_t cap, const uint8_t *src,
                     size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        uint8_t c = src[i];
        dst[n++] = (c < 0x20 || c > 0x7e || c == '"' || c == '\\') ? ' ' : (char)c;
    }
    dst[n] = '\0';
    size_t sl = s->secret ? strlen(s->secret) : 0;
    if (sl >= 4) {
        char *p;
        while ((p = memmem(dst, n, s->secret, sl)) != NULL)
            memset(p, '*', sl);
    }
}

/* What of a refusal may be logged, stored and shown (sink_refusal_summary). */
static void refusal_summary(const struct sink_audit *s, char *dst, size_t cap, const uint8_t *p,
                            size_t len)
{
    sink_refusal_summary(s->secret, dst, cap, p, len);
}

static void set_error(struct sink_audit *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(struct sink_audit *s, const char *fmt, ...)
{
    char tmp[sizeof s->last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(s->err_mu);
    sanitize(s, s->last_error, sizeof s->last_error, (const uint8_t *)tmp, strlen(tmp));
    pthread_mutex_unlock(s->err_mu);
}

static void wipe_free(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

static void db_trouble(struct sink_audit *s, const char *what)
{
    uint64_t now = clock_mono_ms();
    if (now >= s->next_db_log_ms) {
        log_warn("audit_store_busy", " op=%s error=\"%s\"", what, store_batches_errmsg(s->sb));
        s->next_db_log_ms = now + AUDIT_DB_RETRY_LOG_MS;
    }
    set_error(s, "store: %s: %s", what, store_batches_errmsg(s->sb));
}

/* ---- batcher and figures ------------------------------------------------- */

static void batch_step(struct sink_audit *s, uint64_t now)
{
    struct store_batch_scan sc;
    if (store_batches_scan(s->sb, &s->lim, clock_wall_ms(), &sc) < 0) {
        db_trouble(s, "scan");
        s->next_scan_ms = now + 1000;
        return;
    }
    if (sc.sealed)
        log_debug("audit_sealed", " blocks=%llu rows_added=%llu", (unsigned long long)sc.sealed,
                  (unsigned long long)sc.rows_added);
    /* Not caught up: come straight back (the poll does not sleep). */
    s->next_scan_ms = sc.caught_up ? now + s->tick_ms : now;
}

static void refresh_counts(struct sink_audit *s)
{
    struct store_batch_counts c;
    if (store_batches_counts(s->sb, 0, &c) < 0) {
        db_trouble(s, "counts");
        return;
    }
    atomic_store(&s->pending, c.rows_unbatched + c.rows_in_batches);
    atomic_store(&s->b_open, c.batches[STORE_BATCH_OPEN]);
    atomic_store(&s->b_sealed, c.batches[STORE_BATCH_SEALED]);
    atomic_store(&s->b_uploading, c.batches[STORE_BATCH_UPLOADING]);
    atomic_store(&s->b_failed, c.batches[STORE_BATCH_FAILED]);
    atomic_store(&s->b_done, s->done_at_start + atomic_load(&s->delivered));
}

/* ---- outcome bookkeeping (shared by both kinds) -------------------------- */

static void block_done(struct sink_audit *s, const struct store_batch *b, uint64_t rows,
                       int status, const char *summary, const char *file_name, uint64_t ms)
{
    uint64_t marked = 0;
    int64_t wall = clock_wall_ms();
    /* The block was accepted: its `done` must be written.  A busy database
     * is waited for (a few times, stop permitting); if it still fails the
     * block stays `uploading` and is sent again at the next start. */
    int ok = -1;
    for (int i = 0; i < 5 && ok < 0; i++) {
        ok = store_batches_done(s->sb, b->id, status, summary, file_name, wall, &marked);
        if (ok < 0 && !atomic_load(&s->stop))
            db_trouble(s, "done");
    }
    if (ok < 0) {
        log_error("audit_done_not_recorded", " batch=%lld hint=\"will be sent again at restart\"",
                  (long long)b->id);
        return;
    }
    atomic_fetch_add(&s->delivered, 1);
    atomic_fetch_add(&s->rows_delivered, rows);
    atomic_store(&s->last_success_ms, wall);
    s->consec_fail = 0;
    log_info("audit_block_delivered",
             " batch=%lld rows=%llu bytes=%llu status=%d attempt=%u ms=%llu messages=%llu"
             " file=%s response=\"%s\"",
             (long long)b->id, (unsigned long long)rows, (unsigned long long)b->bytes, status,
             b->attempts, (unsigned long long)ms, (unsigned long long)marked,
             file_name ? file_name : "", summary ? summary : "");
}

static void block_retry(struct sink_audit *s, const struct store_batch *b, int status,
                        const char *error, uint64_t retry_after_ms)
{
    uint64_t now = clock_mono_ms();
    s->consec_fail++;
    uint64_t d = sink_backoff_ms(s->consec_fail, s->retry_base_ms, s->retry_max_ms, rnd32());
    if (retry_after_ms > SINK_RETRY_AFTER_MAX_MS)
        retry_after_ms = SINK_RETRY_AFTER_MAX_MS;
    if (retry_after_ms > d)
        d = retry_after_ms;
    /* The endpoint is unwell, not just this block: hold every new upload
     * for the same delay rather than trying the whole backlog at once. */
    if (now + d > s->hold_until_ms)
        s->hold_until_ms = now + d;
    if (store_batches_retry(s->sb, b->id, status, error, clock_wall_ms() + (int64_t)d) < 0)
        db_trouble(s, "retry"); /* stays `uploading`: resent at the next start */
    atomic_fetch_add(&s->retries, 1);
    set_error(s, "batch %lld: %s", (long long)b->id, error);
    log_warn("audit_block_retry", " batch=%lld status=%d attempt=%u delay_ms=%llu error=\"%s\"",
             (long long)b->id, status, b->attempts, (unsigned long long)d, error);
}

static void block_fail(struct sink_audit *s, const struct store_batch *b, int status,
                       const char *error)
{
    if (store_batches_fail(s->sb, b->id, status, error) < 0)
        db_trouble(s, "fail");
    atomic_fetch_add(&s->failures, 1);
    set_error(s, "batch %lld failed: %s", (long long)b->id, error);
    log_error("audit_block_failed",
              " batch=%lld rows=%llu status=%d attempt=%u error=\"%s\""
              " hint=\"kept in the store; fix the cause, then: hl7bridge redrive %lld\"",
              (long long)b->id, (unsigned long long)b->row_count, status, b->attempts, error,
              (long long)b->id);
}

/* Puts the header line and file extension of block `b` in s->block_header
 * and s->block_ext: those of the layout its rows were formatted in (a
 * schema or format change since does not matter), or the sink's own for a
 * block of rows stored before layouts were recorded.  0 / -1. */
static int block_layout(struct sink_audit *s, const struct store_batch *b)
{
    buf_reset(&s->block_header);
    int r = b->layout > 0 ? store_batches_layout(s->sb, b->layout, &s->block_header, s->block_ext,
                                                 sizeof s->block_ext)
                          : 0;
    if (r < 0)
        return -1;
    if (r == 0) {
        if (b->layout > 0)
            log_warn("audit_layout_unknown", " batch=%lld layout=%lld using=current_header",
                     (long long)b->id, (long long)b->layout);
        buf_reset(&s->block_header);
        snprintf(s->block_ext, sizeof s->block_ext, "%s", s->file_ext);
        return buf_append(&s->block_header, s->header, s->header_len);
    }
    return 0;
}

static void file_name_of(const struct sink_audit *s, const struct store_batch *b, char *out,
                         size_t cap)
{
    snprintf(out, cap, SINK_AUDIT_FILE_PREFIX "%010lld.%s", (long long)b->id, s->block_ext);
}

/* ---- file sink ----------------------------------------------------------- */

static void file_step(struct sink_audit *s)
{
    for (int i = 0; i < AUDIT_FILE_PER_TURN && !atomic_load(&s->stop); i++) {
        struct store_batch b;
        int r = store_batches_claim(s->sb, clock_wall_ms(), &b);
        if (r < 0)
            db_trouble(s, "claim");
        if (r <= 0)
            return;
        uint64_t t0 = clock_mono_ms(), rows = 0;
        char name[96], err[512];
        if (block_layout(s, &b) < 0) {
            block_retry(s, &b, 0, "cannot read the block's header", 0);
            continue;
        }
        file_name_of(s, &b, name, sizeof name);
        buf_release(&s->content);
        buf_init(&s->content, b.bytes + s->block_header.len + 16);
        if (buf_append(&s->content, buf_data(&s->block_header), s->block_header.len) < 0 ||
            store_batches_read_rows(s->sb, &b, &s->content, &rows) < 0) {
            block_retry(s, &b, 0, "cannot read the block's rows", 0);
        } else if (sink_file_write(s->directory, name, buf_data(&s->content), s->content.len,
                                   err, sizeof err) < 0) {
            block_retry(s, &b, 0, err, 0);
        } else {
            block_done(s, &b, rows, 0, NULL, name, clock_mono_ms() - t0);
        }
        buf_release(&s->content);
    }
}

/* ---- HTTP plumbing ------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    size_t room = x->resp.max - x->resp.len;
    /* Beyond the ceiling the answer is dropped, not the transfer. */
    if (buf_append(&x->resp, p, len < room ? len : room) < 0)
        return 0;
    return len;
}

static void xfer_free(struct xfer *x)
{
    if (!x)
        return;
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    /* The token form carries the secret. */
    if (x->is_token && x->body.p)
        explicit_bzero(x->body.p, x->body.cap);
    buf_release(&x->body);
    buf_release(&x->resp);
    free(x);
}

static int xfer_setup(struct sink_audit *s, struct xfer *x, const char *url, unsigned timeout_s)
{
    CURL *e = curl_easy_init();
    if (!e)
        return -1;
    x->easy = e;
    buf_init(&x->resp, AUDIT_RESP_MAX);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)buf_data(&x->body));
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    sink_curl_connector(e, s->ca_file, timeout_s, AUDIT_CONNECT_TIMEOUT_S);
    x->started_ms = clock_mono_ms();
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK)
        return -1;
    return 0;
}

static uint64_t retry_after_of(struct xfer *x)
{
    struct curl_header *h = NULL;
    uint64_t ms = 0;
    if (curl_easy_header(x->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h &&
        sink_retry_after_parse(h->value, clock_wall_ms() / 1000, &ms) == 0)
        return ms;
    return 0;
}

/* ---- token --------------------------------------------------------------- */

static int token_usable(const struct sink_audit *s, uint64_t now)
{
    return s->token && now < s->token_expire_ms;
}

static void token_drop(struct sink_audit *s)
{
    wipe_free(s->token);
    s->token = NULL;
    s->token_expire_ms = s->token_renew_ms = 0;
}

static void token_start(struct sink_audit *s)
{
    struct xfer *x = calloc(1, sizeof *x);
    if (!x)
        return;
    x->is_token = 1;
    buf_init(&x->body, 16384);
    if (sink_token_form(&x->body, s->app_id, s->secret, s->resource, s->tenant) < 0 ||
        !(x->hdrs = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded")) ||
        !(x->hdrs = curl_slist_append(x->hdrs, "Accept: application/json")) ||
        !(x->hdrs = curl_slist_append(x->hdrs, "Expect:"))) {
        xfer_free(x);
        return;
    }
    unsigned t = s->timeout_s < AUDIT_TOKEN_TIMEOUT_S ? s->timeout_s : AUDIT_TOKEN_TIMEOUT_S;
    if (xfer_setup(s, x, s->token_url, t) < 0) {
        xfer_free(x);
        return;
    }
    s->tok_req = x;
    log_debug("audit_token_request", " url=%s", s->token_url);
}

static void token_finish(struct sink_audit *s, struct xfer *x, CURLcode res)
{
    uint64_t now = clock_mono_ms();
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    char why[1024];
    struct sink_token t;
    int ok = 0;
    if (res != CURLE_OK) {
        snprintf(why, sizeof why, "token request failed: %s",
                 x->errbuf[0] ? x->errbuf : curl_easy_strerror(res));
    } else if (sink_token_parse(buf_data(&x->resp), x->resp.len, clock_wall_ms() / 1000, &t) == 0 &&
               status / 100 == 2) {
        ok = 1;
    } else {
        if (t.error[0] || t.description[0]) {
            const char *hint = sink_aadsts_hint(t.description);
            snprintf(why, sizeof why, "token request: HTTP %ld %s: %s%s%s", status, t.error,
                     t.description, hint[0] ? " — " : "", hint);
        } else {
            char sum[AUDIT_SUMMARY_MAX];
            sanitize(s, sum, sizeof sum, buf_data(&x->resp), x->resp.len);
            snprintf(why, sizeof why, "token request: HTTP %ld, no token in the answer: %s",
                     status, sum);
        }
        sink_token_release(&t);
    }
    if (ok) {
        token_drop(s);
        s->token = t.access_token;
        t.access_token = NULL;
        uint64_t life_ms = (uint64_t)(t.expires_in_s > 0 ? t.expires_in_s : AUDIT_TOKEN_UNKNOWN_S) * 1000;
        uint64_t early = (uint64_t)AUDIT_TOKEN_EARLY_S * 1000;
        uint64_t renew_after = life_ms > 2 * early ? life_ms - early : life_ms / 2;
        uint64_t margin = life_ms / 4 < AUDIT_TOKEN_MARGIN_MS ? life_ms / 4 : AUDIT_TOKEN_MARGIN_MS;
        s->token_renew_ms = now + renew_after;
        s->token_expire_ms = now + life_ms - margin;
        s->token_gen++;
        s->token_fails = 0;
        s->token_next_try_ms = 0;
        atomic_fetch_add(&s->tok_ok, 1);
        log_info("audit_token", " expires_in_s=%lld renew_in_s=%llu", (long long)t.expires_in_s,
                 (unsigned long long)(renew_after / 1000));
        sink_token_release(&t);
        return;
    }
    s->token_fails++;
    uint64_t d = sink_backoff_ms(s->token_fails, s->retry_base_ms * 2, s->retry_max_ms, rnd32());
    uint64_t ra = (status == 429 || status == 503) ? retry_after_of(x) : 0;
    if (ra > SINK_RETRY_AFTER_MAX_MS)
        ra = SINK_RETRY_AFTER_MAX_MS;
    if (ra > d)
        d = ra;
    s->token_next_try_ms = now + d;
    atomic_fetch_add(&s->tok_fail, 1);
    char clean[1024];
    sanitize(s, clean, sizeof clean, (const uint8_t *)why, strlen(why));
    set_error(s, "%s", clean);
    log_error("audit_token_failed", " status=%ld attempt=%u retry_in_ms=%llu error=\"%s\"", status,
              s->token_fails, (unsigned long long)d, clean);
}

/* ---- uploads ------------------------------------------------------------- */

static void boundary_new(char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        for (size_t i = 0; i < sizeof r; i++)
            r[i] = (uint8_t)rnd32();
    size_t n = 0;
    const char *pre = "hl7bridge-";
    while (*pre && n + 1 < cap)
        out[n++] = *pre++;
    for (size_t i = 0; i < sizeof r && n + 2 < cap; i++) {
        out[n++] = hex[r[i] >> 4];
        out[n++] = hex[r[i] & 15];
    }
    out[n] = '\0';
}

/* Builds the request body of block `b` into x->body.  0 / -1. */
static int build_body(struct sink_audit *s, struct xfer *x)
{
    char boundary[64];
    boundary_new(boundary, sizeof boundary);
    size_t bl = strlen(boundary);
    buf_init(&x->body, x->b.bytes + s->block_header.len + 1024);
    if (sink_multipart_begin(&x->body, boundary, x->file_name) < 0)
        return -1;
    size_t start = x->body.len;
    if (buf_append(&x->body, buf_data(&s->block_header), s->block_header.len) < 0 ||
        store_batches_read_rows(s->sb, &x->b, &x->body, &x->rows) < 0)
        return -1;
    /* A random 128-bit boundary inside the rows is all but impossible;
     * should it happen, a new one of the same length is put in place. */
    for (int tries = 0; !sink_multipart_ok(buf_data(&x->body) + start, x->body.len - start,
                                           boundary); tries++) {
        if (tries == 8)
            return -1;
        boundary_new(boundary, sizeof boundary);
        memcpy(buf_data(&x->body) + 2, boundary, bl);
    }
    if (sink_multipart_end(&x->body, boundary) < 0)
        return -1;
    char ct[128], auth[16 + 8192];
    snprintf(ct, sizeof ct, "Content-Type: multipart/form-data; boundary=%s", boundary);
    int n = snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->token);
    if (n < 0 || (size_t)n >= sizeof auth)
        return -1;
    x->hdrs = curl_slist_append(NULL, auth);
    explicit_bzero(auth, sizeof auth);
    if (!x->hdrs || !(x->hdrs = curl_slist_append(x->hdrs, ct)) ||
        !(x->hdrs = curl_slist_append(x->hdrs, "Expect:")))
        return -1;
    return 0;
}

static void upload_start(struct sink_audit *s, const struct store_batch *b)
{
    struct xfer *x = calloc(1, sizeof *x);
    if (!x) {
        block_retry(s, b, 0, "out of memory", 0);
        return;
    }
    x->b = *b;
    x->token_gen = s->token_gen;
    if (block_layout(s, b) < 0) {
        block_retry(s, b, 0, "cannot read the block's header", 0);
        xfer_free(x);
        return;
    }
    file_name_of(s, b, x->file_name, sizeof x->file_name);
    if (build_body(s, x) < 0 || xfer_setup(s, x, s->upload_url, s->timeout_s) < 0) {
        block_retry(s, b, 0, "cannot build the request", 0);
        xfer_free(x);
        return;
    }
    s->up[s->n_up++] = x;
    log_debug("audit_upload_start", " batch=%lld rows=%llu bytes=%zu attempt=%u",
              (long long)b->id, (unsigned long long)x->rows, x->body.len, b->attempts);
}

static void upload_step(struct sink_audit *s, uint64_t now)
{
    while (s->n_up < s->max_parallel && token_usable(s, now) && now >= s->hold_until_ms &&
           !atomic_load(&s->stop)) {
        struct store_batch b;
        int r = store_batches_claim(s->sb, clock_wall_ms(), &b);
        if (r < 0)
            db_trouble(s, "claim");
        if (r <= 0)
            return;
        upload_start(s, &b);
    }
}

static int auth_retried(struct sink_audit *s, int64_t id, int add)
{
    for (size_t i = 0; i < AUDIT_AUTH_RING; i++)
        if (s->auth_retried[i] == id)
            return 1;
    if (add) {
        s->auth_retried[s->auth_pos] = id;
        s->auth_pos = (s->auth_pos + 1) % AUDIT_AUTH_RING;
    }
    return 0;
}

/* The one place that decides what an answer means. */
static enum outcome classify(CURLcode res, long status)
{
    if (res != CURLE_OK)
        return OUT_RETRY; /* connection refused/reset, DNS, TLS, timeout */
    if (status >= 200 && status <= 299)
        return OUT_DONE;
    if (status == 401)
        return OUT_AUTH;
    if (status == 408 || status == 429 || status >= 500)
        return OUT_RETRY;
    return OUT_FAIL;
}

static void upload_finish(struct sink_audit *s, struct xfer *x, CURLcode res)
{
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    char sum[AUDIT_SUMMARY_MAX], err[400];
    enum outcome oc = classify(res, status);
    if (oc == OUT_DONE)
        sanitize(s, sum, sizeof sum, buf_data(&x->resp), x->resp.len);
    else
        refusal_summary(s, sum, sizeof sum, buf_data(&x->resp), x->resp.len);
    uint64_t ms = clock_mono_ms() - x->started_ms;
    switch (oc) {
    case OUT_DONE:
        block_done(s, &x->b, x->rows, (int)status, sum, x->file_name, ms);
        return;
    case OUT_AUTH:
        /* One renewal per token: several blocks answered 401 with the same
         * old token fetch one new token, not one each. */
        log_warn("audit_token_rejected", " batch=%lld hint=\"%s\"", (long long)x->b.id,
                 x->token_gen == s->token_gen && s->token ? "renewing the token"
                                                          : "token already renewed");
        if (x->token_gen == s->token_gen && s->token)
            token_drop(s);
        if (auth_retried(s, x->b.id, 1)) {
            snprintf(err, sizeof err,
                     "HTTP 401 again with a new token: %s (check app_id permissions and job_id)",
                     sum);
            block_fail(s, &x->b, (int)status, err);
        } else {
            if (store_batches_retry(s->sb, x->b.id, (int)status, "HTTP 401", clock_wall_ms()) < 0)
                db_trouble(s, "retry");
            atomic_fetch_add(&s->retries, 1);
        }
        return;
    case OUT_RETRY:
        if (res != CURLE_OK) {
            const char *why = x->errbuf[0] ? x->errbuf : curl_easy_strerror(res);
            /* curl's text may quote what the peer sent: cleaned like a body */
            sanitize(s, err, sizeof err, (const uint8_t *)why, strlen(why));
        } else
            snprintf(err, sizeof err, "HTTP %ld: %s", status, sum);
        block_retry(s, &x->b, (int)status, err,
                    res == CURLE_OK && (status == 429 || status == 503 || status == 408)
                        ? retry_after_of(x) : 0);
        return;
    case OUT_FAIL:
        snprintf(err, sizeof err, "HTTP %ld: %s%s", status, sum,
                 status == 400 || status == 403 || status == 404 ? " (check job_id and the file layout)" : "");
        block_fail(s, &x->b, (int)status, err);
        return;
    }
}

static void collect(struct sink_audit *s)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct xfer *x = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        CURLcode res = m->data.result;
        curl_multi_remove_handle(s->multi, m->easy_handle);
        if (!x)
            continue;
        if (x == s->tok_req) {
            s->tok_req = NULL;
            token_finish(s, x, res);
        } else {
            for (unsigned i = 0; i < s->n_up; i++) {
                if (s->up[i] == x) {
                    s->up[i] = s->up[--s->n_up];
                    break;
                }
            }
            upload_finish(s, x, res);
        }
        xfer_free(x);
    }
}

/* ---- the thread ---------------------------------------------------------- */

/* Keeps the blocks in flight this node's: on a shared store another node
 * takes over a block whose lease ran out, so a slow upload must not let
 * it lapse.  A failed renewal is tried again on the next turn. */
static void renew_leases(struct sink_audit *s, uint64_t now)
{
    if (!s->renew_every_ms || now < s->next_renew_ms)
        return;
    int64_t ids[AUDIT_MAX_PARALLEL];
    size_t n = 0;
    for (unsigned i = 0; i < s->n_up; i++)
        ids[n++] = s->up[i]->b.id;
    if (n && store_batches_renew(s->sb, ids, n) < 0) {
        db_trouble(s, "renew");
        return;
    }
    s->next_renew_ms = now + s->renew_every_ms;
}

static void *audit_main(void *arg)
{
    struct sink_audit *s = arg;
    while (!atomic_load(&s->stop)) {
        uint64_t now = clock_mono_ms();
        if (now >= s->next_scan_ms)
            batch_step(s, now);
        refresh_counts(s);
        if (s->kind == SINK_AUDIT_FILE) {
            file_step(s);
        } else {
            if (!s->tok_req && now >= s->token_next_try_ms &&
                (!s->token || now >= s->token_renew_ms))
                token_start(s);
            upload_step(s, now);
        }
        int running = 0;
        curl_multi_perform(s->multi, &running);
        collect(s);
        now = clock_mono_ms();
        renew_leases(s, now);
        int timeout = (int)s->tick_ms;
        if (s->next_scan_ms <= now)
            timeout = 0;
        else if (s->next_scan_ms - now < (uint64_t)timeout)
            timeout = (int)(s->next_scan_ms - now);
        if (!atomic_load(&s->stop))
            curl_multi_poll(s->multi, NULL, 0, timeout, NULL);
    }
    /* Abandon what is in flight: those blocks stay `uploading` and are
     * sent again at the next start. */
    for (unsigned i = 0; i < s->n_up; i++) {
        curl_multi_remove_handle(s->multi, s->up[i]->easy);
        log_info("audit_upload_abandoned", " batch=%lld", (long long)s->up[i]->b.id);
        xfer_free(s->up[i]);
    }
    if (s->n_up) {
        /* On a shared store another node takes them over now rather than
         * after the lease: a node stopped for maintenance does not hold
         * the cluster's deliveries for lease_s. */
        uint64_t released = 0;
        if (store_batches_release(s->sb, &released) < 0)
            log_warn("audit_store_busy", " op=release error=\"%s\"",
                     store_batches_errmsg(s->sb));
        else if (released)
            log_info("audit_blocks_released", " blocks=%llu hint=\"sent by another node or at "
                     "the next start; the connector may see them twice\"",
                     (unsigned long long)released);
    }
    s->n_up = 0;
    if (s->tok_req) {
        curl_multi_remove_handle(s->multi, s->tok_req->easy);
        xfer_free(s->tok_req);
        s->tok_req = NULL;
    }
    return NULL;
}

/* ---- start / stop -------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_init_once(void)
{
    curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

static void audit_free(struct sink_audit *s)
{
    if (!s)
        return;
    token_drop(s);
    store_batches_close(s->sb);
    if (s->multi)
        curl_multi_cleanup(s->multi);
    buf_release(&s->content);
    buf_release(&s->block_header);
    free(s->header);
    free(s->file_ext);
    free(s->directory);
    free(s->tenant);
    free(s->app_id);
    wipe_free(s->secret);
    free(s->job_id);
    free(s->resource);
    free(s->ca_file);
    free(s->token_url);
    free(s->upload_url);
    if (s->err_mu) {
        pthread_mutex_destroy(s->err_mu);
        free(s->err_mu);
    }
    free(s);
}

static int dup_opt(char **dst, const char *src)
{
    if (!src) {
        *dst = NULL;
        return 0;
    }
    *dst = strdup(src);
    return *dst ? 0 : -1;
}

static int present(const char *v)
{
    return v && v[0];
}

/* Checks and completes the purview settings.  0 / -1 with err. */
static int purview_setup(struct sink_audit *s, const struct sink_audit_opts *o, char *err,
                         size_t errcap)
{
    const char *missing = !present(o->tenant_id) ? "sinks.audit.tenant_id"
                          : !present(o->app_id)  ? "sinks.audit.app_id"
                          : !present(o->app_secret) ? "sinks.audit.app_secret (or app_secret_file)"
                          : !present(o->job_id)  ? "sinks.audit.job_id"
                                                 : NULL;
    if (missing) {
        snprintf(err, errcap, "audit sink: %s is missing or empty", missing);
        return -1;
    }
    char tok[1024], up[1024];
    if (sink_cloud_urls(o->cloud, o->tenant_id, tok, sizeof tok, up, sizeof up) < 0) {
        snprintf(err, errcap, "audit sink: tenant_id too long or unknown cloud");
        return -1;
    }
    const char *tu = present(o->token_url) ? o->token_url : tok;
    const char *uu = present(o->upload_url) ? o->upload_url : up;
    if (strncmp(tu, "https://", 8) != 0) {
        snprintf(err, errcap, "audit sink: token_url must be https:// (got %s)", tu);
        return -1;
    }
    if (strncmp(uu, "https://", 8) != 0) {
        snprintf(err, errcap, "audit sink: upload_url must be https:// (got %s)", uu);
        return -1;
    }
    char *job = curl_easy_escape(NULL, o->job_id, 0);
    if (!job)
        return -1;
    size_t n = strlen(uu) + strlen(job) + 16;
    s->upload_url = malloc(n);
    if (s->upload_url)
        snprintf(s->upload_url, n, "%s%cjobid=%s", uu, strchr(uu, '?') ? '&' : '?', job);
    curl_free(job);
    if (!s->upload_url || dup_opt(&s->token_url, tu) < 0 || dup_opt(&s->tenant, o->tenant_id) < 0 ||
        dup_opt(&s->app_id, o->app_id) < 0 || dup_opt(&s->secret, o->app_secret) < 0 ||
        dup_opt(&s->job_id, o->job_id) < 0 ||
        dup_opt(&s->resource, present(o->resource) ? o->resource : SINK_DEFAULT_RESOURCE) < 0 ||
        dup_opt(&s->ca_file, present(o->ca_file) ? o->ca_file : NULL) < 0) {
        snprintf(err, errcap, "audit sink: out of memory");
        return -1;
    }
    return 0;
}

struct sink_audit *sink_audit_start(const struct sink_audit_opts *o, char *err, size_t errcap)
{
    if (errcap)
        err[0] = '\0';
    pthread_once(&curl_once, curl_init_once);
    if (!curl_ready) {
        snprintf(err, errcap, "audit sink: libcurl initialisation failed");
        return NULL;
    }
    if (!o || (o->store.type == STORE_SQLITE && !present(o->store.path)) || !o->header) {
        snprintf(err, errcap, "audit sink: store path and header are required");
        return NULL;
    }
    struct sink_audit *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errcap, "audit sink: out of memory");
        return NULL;
    }
    s->err_mu = malloc(sizeof *s->err_mu);
    if (!s->err_mu) {
        free(s);
        snprintf(err, errcap, "audit sink: out of memory");
        return NULL;
    }
    pthread_mutex_init(s->err_mu, NULL);
    s->kind = o->kind;
    s->header_len = strlen(o->header);
    buf_init(&s->block_header, AUDIT_HEADER_MAX);
    s->max_parallel = o->max_parallel ? o->max_parallel : AUDIT_DEFAULT_PARALLEL;
    if (s->max_parallel > AUDIT_MAX_PARALLEL)
        s->max_parallel = AUDIT_MAX_PARALLEL;
    s->timeout_s = o->timeout_s ? o->timeout_s : AUDIT_DEFAULT_TIMEOUT_S;
    s->tick_ms = o->tick_ms ? o->tick_ms : AUDIT_TICK_MS;
    s->retry_base_ms = o->retry_base_ms ? o->retry_base_ms : SINK_RETRY_BASE_MS;
    s->retry_max_ms = o->retry_max_ms ? o->retry_max_ms : SINK_RETRY_MAX_MS;
    if (s->retry_max_ms < s->retry_base_ms)
        s->retry_max_ms = s->retry_base_ms;
    /* The connector's limits win over the configuration: one block is one
     * import, so it never passes the import limits either. */
    s->lim.max_rows = o->max_rows ? o->max_rows : AUDIT_DEFAULT_ROWS;
    if (s->lim.max_rows > SINK_MAX_BLOCK_ROWS)
        s->lim.max_rows = SINK_MAX_BLOCK_ROWS;
    s->lim.max_bytes = o->max_bytes ? o->max_bytes : AUDIT_DEFAULT_BYTES;
    if (s->lim.max_bytes + s->header_len + 1024 > SINK_MAX_IMPORT_BYTES)
        s->lim.max_bytes = SINK_MAX_IMPORT_BYTES - s->header_len - 1024;
    s->lim.max_age_ms = (uint64_t)(o->max_age_s ? o->max_age_s : AUDIT_DEFAULT_AGE_S) * 1000;

    if (dup_opt(&s->header, o->header) < 0 ||
        dup_opt(&s->file_ext, present(o->file_ext) ? o->file_ext : "txt") < 0) {
        snprintf(err, errcap, "audit sink: out of memory");
        goto fail;
    }
    if (s->kind == SINK_AUDIT_FILE) {
        if (!present(o->directory)) {
            snprintf(err, errcap, "audit sink: sinks.audit.directory is missing");
            goto fail;
        }
        char e2[256];
        if (dup_opt(&s->directory, o->directory) < 0 || sink_mkdirs(o->directory, e2, sizeof e2) < 0) {
            snprintf(err, errcap, "audit sink: directory %s: %s", o->directory,
                     s->directory ? e2 : "out of memory");
            goto fail;
        }
    } else if (purview_setup(s, o, err, errcap) < 0) {
        goto fail;
    }

    s->sb = store_batches_open(&o->store, err, errcap);
    if (!s->sb)
        goto fail;
    uint64_t resent = 0;
    if (store_batches_recover(s->sb, &resent) < 0) {
        snprintf(err, errcap, "audit sink: recovery: %s", store_batches_errmsg(s->sb));
        goto fail;
    }
    struct store_batch_counts c;
    if (store_batches_counts(s->sb, 1, &c) < 0) {
        snprintf(err, errcap, "audit sink: reading batches: %s", store_batches_errmsg(s->sb));
        goto fail;
    }
    s->done_at_start = c.batches[STORE_BATCH_DONE];
    s->renew_every_ms = store_batches_renew_ms(s->sb);
    atomic_store(&s->resends, resent);
    if (resent)
        log_warn("audit_resend", " blocks=%llu hint=\"in flight at the last stop: sent again, "
                 "the connector may see them twice\"", (unsigned long long)resent);
    refresh_counts(s);

    s->multi = curl_multi_init();
    if (!s->multi) {
        snprintf(err, errcap, "audit sink: curl_multi_init failed");
        goto fail;
    }
    curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)s->max_parallel + 1);
    int rc = pthread_create(&s->thr, NULL, audit_main, s);
    if (rc) {
        snprintf(err, errcap, "audit sink: thread: %s", strerror(rc));
        goto fail;
    }
    s->started = 1;
    if (s->kind == SINK_AUDIT_FILE)
        log_info("audit_sink_start", " type=file directory=%s max_rows=%llu max_bytes=%llu"
                 " max_age_s=%llu pending_rows=%llu",
                 s->directory, (unsigned long long)s->lim.max_rows,
                 (unsigned long long)s->lim.max_bytes,
                 (unsigned long long)(s->lim.max_age_ms / 1000),
                 (unsigned long long)atomic_load(&s->pending));
    else
        log_info("audit_sink_start", " type=purview token_url=%s upload_url=%s max_rows=%llu"
                 " max_bytes=%llu max_age_s=%llu max_parallel=%u pending_rows=%llu",
                 s->token_url, s->upload_url, (unsigned long long)s->lim.max_rows,
                 (unsigned long long)s->lim.max_bytes,
                 (unsigned long long)(s->lim.max_age_ms / 1000), s->max_parallel,
                 (unsigned long long)atomic_load(&s->pending));
    return s;
fail:
    audit_free(s);
    return NULL;
}

void sink_audit_stop(struct sink_audit *s)
{
    if (!s)
        return;
    if (s->started) {
        atomic_store(&s->stop, 1);
        curl_multi_wakeup(s->multi);
        pthread_join(s->thr, NULL);
        s->started = 0;
    }
    /* The sink's final account, once, after its thread has ended. */
    struct sink_audit_stats st;
    sink_audit_get_stats(s, &st);
    log_info("audit_stats",
             " pending_rows=%llu delivered_blocks=%llu delivered_rows=%llu failed_blocks=%llu"
             " failures=%llu retries=%llu resends=%llu token_renewals=%llu",
             (unsigned long long)st.rows_pending, (unsigned long long)st.blocks_delivered,
             (unsigned long long)st.rows_delivered, (unsigned long long)st.blocks_failed,
             (unsigned long long)st.failures, (unsigned long long)st.retries,
             (unsigned long long)st.resends, (unsigned long long)st.token_renewals);
    audit_free(s);
}

void sink_audit_get_stats(const struct sink_audit *s, struct sink_audit_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return;
    out->rows_pending = atomic_load(&s->pending);
    out->blocks_open = atomic_load(&s->b_open);
    out->blocks_sealed = atomic_load(&s->b_sealed);
    out->blocks_uploading = atomic_load(&s->b_uploading);
    out->blocks_done = atomic_load(&s->b_done);
    out->blocks_failed = atomic_load(&s->b_failed);
    out->blocks_delivered = atomic_load(&s->delivered);
    out->rows_delivered = atomic_load(&s->rows_delivered);
    out->retries = atomic_load(&s->retries);
    out->failures = atomic_load(&s->failures);
    out->resends = atomic_load(&s->resends);
    out->token_renewals = atomic_load(&s->tok_ok);
    out->token_failures = atomic_load(&s->tok_fail);
    out->last_success_ms = atomic_load(&s->last_success_ms);
    pthread_mutex_lock(s->err_mu);
    memcpy(out->last_error, s->last_error, sizeof out->last_error);
    pthread_mutex_unlock(s->err_mu);
}

uint64_t sink_audit_pending_rows(const struct sink_audit *s)
{
    return s ? atomic_load(&s->pending) : 0;
}
