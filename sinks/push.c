/* push — one block at a time to the connector, waiting for the answer: the
 * client behind `hl7bridge upload` and the daemon's inputs.files watcher.
 *
 * It speaks exactly as the audit sink does (sinks/audit.c) and shares its
 * helpers: the client-credentials token (cached, renewed before expiry and
 * once on a 401), multipart/form-data with the block as the `file` part to
 * upload_url?jobid=…, TLS 1.2+, and the same reading of answers: 2xx
 * delivered; transport errors, 408, 429 and 5xx retried with exponential
 * backoff and jitter (Retry-After honoured) up to SINK_PUSH_ATTEMPTS; any
 * other 4xx refused.  With kind SINK_AUDIT_FILE a block is written to the
 * sink's directory instead (temporary name, fsync, rename).
 *
 * Threads: one client, one thread at a time; blocking (never the loop). */
#include "sinks/sinks.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define PUSH_CONNECT_TIMEOUT_S 30
#define PUSH_TOKEN_EARLY_S     300   /* renew this long before expiry */
#define PUSH_RESP_MAX          65536

struct sink_push {
    enum sink_audit_kind kind;
    char *directory;
    char *token_url, *upload_url, *tenant, *app_id, *secret, *resource, *ca_file;
    unsigned timeout_s, retry_base_ms, retry_max_ms, attempts;
    char *token;
    int64_t token_renew_ms;          /* wall clock */
    const atomic_int *stop;          /* non-zero: abandon the transfer and the waits */
    uint64_t tokens;                 /* obtained */
    struct buf body, form, resp;  /* block request, token request, answer */
};

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

static void wipe_free(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

void sink_push_free(struct sink_push *p)
{
    if (!p)
        return;
    free(p->directory);
    free(p->token_url);
    free(p->upload_url);
    free(p->tenant);
    free(p->app_id);
    wipe_free(p->secret);
    free(p->resource);
    free(p->ca_file);
    wipe_free(p->token);
    buf_release(&p->body);
    buf_release(&p->form);
    buf_release(&p->resp);
    free(p);
}

struct sink_push *sink_push_new(const struct sink_audit_opts *o, unsigned attempts, char *err,
                                size_t errcap)
{
    struct sink_push *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    buf_init(&p->body, SINK_MAX_IMPORT_BYTES + 4096);
    buf_init(&p->form, 16384);
    buf_init(&p->resp, PUSH_RESP_MAX);
    p->kind = o->kind;
    p->timeout_s = o->timeout_s ? o->timeout_s : 400;
    p->retry_base_ms = o->retry_base_ms ? o->retry_base_ms : SINK_RETRY_BASE_MS;
    p->retry_max_ms = o->retry_max_ms ? o->retry_max_ms : SINK_RETRY_MAX_MS;
    p->attempts = attempts ? attempts : SINK_PUSH_ATTEMPTS;
    if (o->kind == SINK_AUDIT_FILE) {
        if (!o->directory || !(p->directory = strdup(o->directory)) ||
            sink_mkdirs(o->directory, err, errcap) < 0) {
            if (!p->directory)
                snprintf(err, errcap, "sinks.audit.directory is missing");
            goto fail;
        }
        return p;
    }
    if (!o->tenant_id || !o->app_id || !o->app_secret || !o->job_id) {
        snprintf(err, errcap, "sinks.audit: tenant_id, app_id, app_secret and job_id are required");
        goto fail;
    }
    char tok[1024], up[1024];
    if (sink_cloud_urls(o->cloud, o->tenant_id, tok, sizeof tok, up, sizeof up) < 0) {
        snprintf(err, errcap, "sinks.audit: tenant_id too long");
        goto fail;
    }
    const char *tu = o->token_url && *o->token_url ? o->token_url : tok;
    const char *uu = o->upload_url && *o->upload_url ? o->upload_url : up;
    char *job = curl_easy_escape(NULL, o->job_id, 0);
    size_t n = strlen(uu) + (job ? strlen(job) : 0) + 16;
    p->upload_url = job ? malloc(n) : NULL;
    if (p->upload_url)
        snprintf(p->upload_url, n, "%s%cjobid=%s", uu, strchr(uu, '?') ? '&' : '?', job);
    curl_free(job);
    p->token_url = strdup(tu);
    p->tenant = strdup(o->tenant_id);
    p->app_id = strdup(o->app_id);
    p->secret = strdup(o->app_secret);
    p->resource = strdup(o->resource && *o->resource ? o->resource : SINK_DEFAULT_RESOURCE);
    p->ca_file = dup_or_null(o->ca_file);
    if (!p->upload_url || !p->token_url || !p->tenant || !p->app_id || !p->secret ||
        !p->resource || (o->ca_file && *o->ca_file && !p->ca_file)) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    return p;
fail:
    sink_push_free(p);
    return NULL;
}

/* ---- HTTP ------------------------------------------------------------------ */

static size_t on_body(char *d, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;
    size_t len = size * n;
    size_t room = b->max > b->len ? b->max - b->len : 0;
    /* An oversized answer is cut, never an error: only its start is shown. */
    if (buf_append(b, d, len < room ? len : room) < 0)
        return 0;
    return len;
}

struct answer {
    CURLcode res;
    long status;
    uint64_t retry_after_ms;
    char error[CURL_ERROR_SIZE];
};

static size_t on_header(char *d, size_t size, size_t n, void *ud)
{
    struct answer *a = ud;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof name - 1 && strncasecmp(d, name, sizeof name - 1) == 0) {
        char v[64];
        size_t k = len - (sizeof name - 1);
        if (k >= sizeof v)
            k = sizeof v - 1;
        memcpy(v, d + sizeof name - 1, k);
        v[k] = '\0';
        char *s = v;
        while (*s == ' ' || *s == '\t')
            s++;
        char *e = s + strlen(s);
        while (e > s && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
            *--e = '\0';
        uint64_t ms = 0;
        if (sink_retry_after_parse(s, clock_wall_ms() / 1000, &ms) == 0)
            a->retry_after_ms = ms;
    }
    return len;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    const struct sink_push *p = ud;
    return p->stop && atomic_load(p->stop) ? 1 : 0;
}

void sink_push_set_stop(struct sink_push *p, const atomic_int *stop)
{
    p->stop = stop;
}

static void post(struct sink_push *p, const char *url, const struct buf *body,
                 struct curl_slist *hdrs, unsigned timeout_s, struct answer *a)
{
    memset(a, 0, sizeof *a);
    buf_reset(&p->resp);
    CURL *e = curl_easy_init();
    if (!e) {
        a->res = CURLE_OUT_OF_MEMORY;
        return;
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)buf_data(body));
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &p->resp);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, a->error);
    sink_curl_connector(e, p->ca_file, timeout_s, PUSH_CONNECT_TIMEOUT_S);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, p);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    a->res = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &a->status);
    curl_easy_cleanup(e);
    if (a->res != CURLE_OK && !a->error[0])
        snprintf(a->error, sizeof a->error, "%s", curl_easy_strerror(a->res));
}

/* Printable ASCII of the answer, secret never echoed. */
static void summary(const struct sink_push *p, char *out, size_t cap)
{
    size_t n = 0;
    const uint8_t *s = buf_data(&p->resp);
    for (size_t i = 0; i < p->resp.len && n + 1 < cap; i++)
        out[n++] = (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"') ? ' ' : (char)s[i];
    out[n] = '\0';
    size_t sl = p->secret ? strlen(p->secret) : 0;
    char *hit;
    while (sl >= 4 && (hit = strstr(out, p->secret)) != NULL)
        memset(hit, '*', sl);
}

static int token_get(struct sink_push *p, char *err, size_t errcap)
{
    if (p->token && clock_wall_ms() < p->token_renew_ms)
        return 0;
    wipe_free(p->token);
    p->token = NULL;
    buf_reset(&p->form);
    struct curl_slist *h = NULL;
    struct answer a;
    if (sink_token_form(&p->form, p->app_id, p->secret, p->resource, p->tenant) < 0 ||
        !(h = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded")) ||
        !(h = curl_slist_append(h, "Accept: application/json")) ||
        !(h = curl_slist_append(h, "Expect:"))) {
        curl_slist_free_all(h);
        explicit_bzero(buf_data(&p->form), p->form.len);
        snprintf(err, errcap, "token request: out of memory");
        return -1;
    }
    post(p, p->token_url, &p->form, h, p->timeout_s < 60 ? p->timeout_s : 60, &a);
    curl_slist_free_all(h);
    explicit_bzero(buf_data(&p->form), p->form.len);
    struct sink_token t;
    if (a.res != CURLE_OK) {
        snprintf(err, errcap, "token request failed: %s", a.error);
        return -1;
    }
    if (a.status / 100 != 2 ||
        sink_token_parse(buf_data(&p->resp), p->resp.len, clock_wall_ms() / 1000, &t) < 0) {
        if (a.status / 100 == 2)
            sink_token_release(&t);
        char sum[300];
        summary(p, sum, sizeof sum);
        snprintf(err, errcap, "token request: HTTP %ld: %s", a.status, sum);
        return -1;
    }
    p->token = t.access_token;
    t.access_token = NULL;
    int64_t life = t.expires_in_s > 0 ? t.expires_in_s : 3600;
    int64_t renew = life > 2 * PUSH_TOKEN_EARLY_S ? life - PUSH_TOKEN_EARLY_S : life / 2;
    p->token_renew_ms = clock_wall_ms() + renew * 1000;
    p->tokens++;
    sink_token_release(&t);
    log_info("push_token", " expires_in_s=%lld", (long long)life);
    return 0;
}

static void boundary_new(char *out, size_t cap)
{
    uint8_t r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        uint64_t t = clock_mono_ns();
        for (size_t i = 0; i < sizeof r; i++)
            r[i] = (uint8_t)(t >> (8 * (i % 8))) ^ (uint8_t)i;
    }
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    n += (size_t)snprintf(out, cap, "hl7bridge-");
    for (size_t i = 0; i < sizeof r && n + 2 < cap; i++) {
        out[n++] = hex[r[i] >> 4];
        out[n++] = hex[r[i] & 15];
    }
    out[n] = '\0';
}

enum push_result sink_push_block(struct sink_push *p, const char *file_name,
                                 const uint8_t *content, size_t len, int *status, char *err,
                                 size_t errcap)
{
    *status = 0;
    err[0] = '\0';
    if (p->kind == SINK_AUDIT_FILE)
        return sink_file_write(p->directory, file_name, content, len, err, errcap) == 0
                   ? SINK_PUSH_DELIVERED : SINK_PUSH_GAVE_UP;
    char boundary[64];
    int tries = 0;
    do {
        boundary_new(boundary, sizeof boundary);
    } while (!sink_multipart_ok(content, len, boundary) && ++tries < 8);
    buf_reset(&p->body);
    if (sink_multipart_begin(&p->body, boundary, file_name) < 0 ||
        buf_append(&p->body, content, len) < 0 || sink_multipart_end(&p->body, boundary) < 0) {
        snprintf(err, errcap, "block too large");
        return SINK_PUSH_REFUSED;
    }
    int renewed = 0;
    for (unsigned attempt = 1;; attempt++) {
        uint64_t wait_ms = 0;
        if (token_get(p, err, errcap) < 0) {
            wait_ms = sink_backoff_ms(attempt, p->retry_base_ms, p->retry_max_ms,
                                      (uint32_t)clock_mono_ns());
        } else {
            char ct[128], *auth = NULL;
            size_t an = strlen(p->token) + 32;
            struct curl_slist *h = NULL;
            snprintf(ct, sizeof ct, "Content-Type: multipart/form-data; boundary=%s", boundary);
            if ((auth = malloc(an)) != NULL)
                snprintf(auth, an, "Authorization: Bearer %s", p->token);
            if (!auth || !(h = curl_slist_append(NULL, auth)) || !(h = curl_slist_append(h, ct)) ||
                !(h = curl_slist_append(h, "Expect:"))) {
                curl_slist_free_all(h);
                wipe_free(auth);
                snprintf(err, errcap, "out of memory");
                return SINK_PUSH_GAVE_UP;
            }
            struct answer a;
            post(p, p->upload_url, &p->body, h, p->timeout_s, &a);
            curl_slist_free_all(h);
            wipe_free(auth);
            *status = (int)a.status;
            /* An upload answer may quote the rows: only its error code is
             * kept (logged, stored with the block, shown by redrive). */
            char sum[300];
            sink_refusal_summary(p->secret, sum, sizeof sum, buf_data(&p->resp), p->resp.len);
            if (a.res == CURLE_OK && a.status / 100 == 2)
                return SINK_PUSH_DELIVERED;
            if (a.res == CURLE_OK && a.status == 401 && !renewed) {
                renewed = 1;
                wipe_free(p->token);
                p->token = NULL;
                snprintf(err, errcap, "HTTP 401: %s", sum);
                continue;
            }
            if (a.res == CURLE_OK && a.status != 408 && a.status != 429 && a.status < 500) {
                snprintf(err, errcap, "HTTP %ld: %s%s", a.status, sum,
                         a.status == 400 || a.status == 403 || a.status == 404
                             ? " (check job_id and the file layout)" : "");
                return SINK_PUSH_REFUSED;
            }
            if (a.res != CURLE_OK)
                snprintf(err, errcap, "%s", a.error);
            else
                snprintf(err, errcap, "HTTP %ld: %s", a.status, sum);
            wait_ms = sink_backoff_ms(attempt, p->retry_base_ms, p->retry_max_ms,
                                      (uint32_t)clock_mono_ns());
            uint64_t ra = a.retry_after_ms > SINK_RETRY_AFTER_MAX_MS ? SINK_RETRY_AFTER_MAX_MS
                                                                     : a.retry_after_ms;
            if (ra > wait_ms)
                wait_ms = ra;
        }
        if (attempt >= p->attempts)
            return SINK_PUSH_GAVE_UP;
        log_warn("push_retry", " attempt=%u retry_in_ms=%llu error=\"%s\"", attempt,
                 (unsigned long long)wait_ms, err);
        /* In slices, so a stopping daemon does not wait out a backoff. */
        for (uint64_t left = wait_ms; left > 0;) {
            if (p->stop && atomic_load(p->stop))
                return SINK_PUSH_GAVE_UP;
            uint64_t step = left < 100 ? left : 100;
            struct timespec ts = { 0, (long)step * 1000000L };
            while (nanosleep(&ts, &ts) != 0)
                ;
            left -= step;
        }
        if (p->stop && atomic_load(p->stop))
            return SINK_PUSH_GAVE_UP;
    }
}

uint64_t sink_push_tokens(const struct sink_push *p)
{
    return p->tokens;
}
