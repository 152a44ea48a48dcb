/* sinks/acs — Azure Communication Services SMS over HTTPS: request signing
 * (HMAC-SHA256 with the resource's access key), the send body, the 202
 * answer with one result per recipient, retry hints, and a small blocking
 * libcurl client.
 *
 * Design: the signature covers "POST\n<path and query>\n<x-ms-date>;<host>;
 * <x-ms-content-sha256>" and `host` must be byte for byte the Host header
 * the server sees, so the client sets the Host header itself from the same
 * string it signs.  The body is written by hand with a careful escaper; the
 * answer is read with jansson and only the documented fields are looked at.
 * TLS peers are always verified.
 *
 * Threads: the helpers from any thread; a client belongs to the SMS worker
 * thread.  Never logs or returns the key; answers are summarised (status,
 * code) without the recipient's number. */
#include "sinks/sms.h"
#include "sinks/sinks.h"

#include "core/num.h"

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ACS_MAX_ANSWER (1024 * 1024)   /* an answer larger than this is refused */
#define ACS_MAX_HINT_MS 3600000u        /* retry hints are capped at an hour */
#define ACS_MAX_KEY 256

/* ---- signing ------------------------------------------------------------- */

static void b64(const unsigned char *in, size_t n, char *out, size_t cap)
{
    /* EVP_EncodeBlock writes 4·ceil(n/3) characters and a NUL. */
    if (cap < 4 * ((n + 2) / 3) + 1) {
        out[0] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

int sink_acs_key_decode(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        n--;
    if (n == 0 || n % 4 != 0)
        return -1;
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '+' || c == '/';
        if (c == '=' && i >= n - 2) {
            pad++;
            continue;
        }
        if (!ok || pad)
            return -1;
    }
    size_t want = n / 4 * 3;
    if (want > cap)
        return -1;
    unsigned char tmp[ACS_MAX_KEY / 3 * 4 + 4];
    if (want > sizeof tmp)
        return -1;
    int r = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)n);
    if (r < 0 || (size_t)r != want) {
        OPENSSL_cleanse(tmp, sizeof tmp);
        return -1;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    memcpy(out, tmp, want - pad);
    *len = want - pad;
    OPENSSL_cleanse(tmp, sizeof tmp);
    return 0;
}

int sink_acs_sign(const uint8_t *key, size_t key_len, const char *method, const char *path_query,
                  const char *host, int64_t now_s, const uint8_t *body, size_t body_len,
                  struct sink_acs_signed *out)
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    if (!SHA256(body, body_len, h))
        return -1;
    b64(h, sizeof h, out->content_hash, sizeof out->content_hash);
    sink_sms_rfc1123(now_s, out->date);
    char sts[1024];
    int n = snprintf(sts, sizeof sts, "%s\n%s\n%s;%s;%s", method, path_query, out->date, host,
                     out->content_hash);
    if (n < 0 || (size_t)n >= sizeof sts)
        return -1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)sts, (size_t)n, mac, &mlen))
        return -1;
    char sig[64];
    b64(mac, mlen, sig, sizeof sig);
    n = snprintf(out->authorization, sizeof out->authorization,
                 "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=%s", sig);
    return n > 0 && (size_t)n < sizeof out->authorization ? 0 : -1;
}

int sink_acs_endpoint(const char *endpoint, char *host, size_t hcap, char *url, size_t ucap,
                      char *path_query, size_t pcap)
{
    const char *p = endpoint;
    if (strncasecmp(p, "https://", 8) != 0)
        return -1;
    p += 8;
    size_t hl = strcspn(p, "/?#");
    if (hl == 0 || hl >= hcap || memchr(p, '@', hl))
        return -1;
    const char *base = p + hl;
    size_t bl = strcspn(base, "?#");
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    /* ":443" is the default port: the Host header then carries no port. */
    size_t keep = hl;
    if (hl > 4 && memcmp(p + hl - 4, ":443", 4) == 0)
        keep = hl - 4;
    memcpy(host, p, keep);
    host[keep] = '\0';
    int n = snprintf(path_query, pcap, "%.*s/sms?api-version=%s", (int)bl, base,
                     SINK_ACS_API_VERSION);
    if (n < 0 || (size_t)n >= pcap)
        return -1;
    n = snprintf(url, ucap, "https://%.*s%s", (int)hl, p, path_query);
    return n > 0 && (size_t)n < ucap ? 0 : -1;
}

/* ---- body and answer ------------------------------------------------------ */

static int put_str(struct buf *o, const char *key, const char *v)
{
    if (buf_append_str(o, "\"") || buf_append_str(o, key) || buf_append_str(o, "\":\"") ||
        sink_sms_json_escape(o, v, strlen(v)) || buf_append_str(o, "\""))
        return -1;
    return 0;
}

int sink_acs_body(struct buf *out, const char *from, const char *to, const char *request_id,
                  const char *first_sent, const char *message, int delivery_report,
                  const char *tag)
{
    if (buf_append_str(out, "{") || put_str(out, "from", from) ||
        buf_append_str(out, ",\"smsRecipients\":[{") || put_str(out, "to", to) ||
        buf_append_str(out, ",") || put_str(out, "repeatabilityRequestId", request_id) ||
        buf_append_str(out, ",") || put_str(out, "repeatabilityFirstSent", first_sent) ||
        buf_append_str(out, "}],") || put_str(out, "message", message) ||
        buf_append_str(out, ",\"smsSendOptions\":{\"enableDeliveryReport\":") ||
        buf_append_str(out, delivery_report ? "true" : "false"))
        return -1;
    if (tag && *tag && (buf_append_str(out, ",") || put_str(out, "tag", tag)))
        return -1;
    return buf_append_str(out, "}}");
}

static void jcopy(json_t *o, const char *key, char *out, size_t cap)
{
    const char *v = json_string_value(json_object_get(o, key));
    snprintf(out, cap, "%s", v ? v : "");
}

int sink_acs_parse_answer(const uint8_t *body, size_t len, struct sink_acs_result *out, size_t max)
{
    json_error_t je;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je);
    json_t *arr = root ? json_object_get(root, "value") : NULL;
    if (!json_is_array(arr)) {
        json_decref(root);
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(arr) && n < max; i++) {
        json_t *r = json_array_get(arr, i);
        if (!json_is_object(r))
            continue;
        struct sink_acs_result *x = &out[n++];
        memset(x, 0, sizeof *x);
        jcopy(r, "to", x->to, sizeof x->to);
        jcopy(r, "messageId", x->message_id, sizeof x->message_id);
        jcopy(r, "repeatabilityResult", x->repeatability, sizeof x->repeatability);
        jcopy(r, "errorMessage", x->error, sizeof x->error);
        json_t *st = json_object_get(r, "httpStatusCode");
        x->http_status = json_is_integer(st) ? (int)json_integer_value(st) : 0;
        x->successful = json_is_true(json_object_get(r, "successful"));
    }
    json_decref(root);
    return (int)n;
}

static int parse_ms(const char *v, uint64_t *ms)
{
    if (!v)
        return -1;
    size_t a = 0, b = strlen(v);
    while (a < b && (v[a] == ' ' || v[a] == '\t'))
        a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t' || v[b - 1] == '\r' || v[b - 1] == '\n'))
        b--;
    return num_parse_u64((const uint8_t *)v + a, b - a, UINT64_MAX / 2, ms);
}

int sink_acs_retry_hint(const char *retry_after_ms, const char *x_ms_retry_after_ms,
                        const char *retry_after, int64_t now_s, uint64_t *ms)
{
    uint64_t v;
    if (parse_ms(retry_after_ms, &v) == 0 || parse_ms(x_ms_retry_after_ms, &v) == 0 ||
        sink_retry_after_parse(retry_after, now_s, &v) == 0) {
        *ms = v > ACS_MAX_HINT_MS ? ACS_MAX_HINT_MS : v;
        return 0;
    }
    return -1;
}

int sink_acs_retryable(int s) { return s == 0 || s == 429 || (s >= 500 && s <= 599); }

/* ---- client ------------------------------------------------------------- */

struct sink_acs_client {
    CURL *curl;
    char host[256];
    char url[1024];
    char path_query[512];
    uint8_t key[ACS_MAX_KEY];
    size_t key_len;
    char *ca_file;
    unsigned timeout_s;
};

struct sink_acs_client *sink_acs_client_new(const char *endpoint, const uint8_t *key,
                                            size_t key_len, const char *ca_file,
                                            unsigned timeout_s, char *err, size_t errcap)
{
    struct sink_acs_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    if (!endpoint || sink_acs_endpoint(endpoint, c->host, sizeof c->host, c->url, sizeof c->url,
                                       c->path_query, sizeof c->path_query) < 0) {
        snprintf(err, errcap, "sinks.sms.endpoint: expected https://HOST[:PORT][/PATH]");
        goto fail;
    }
    if (key_len == 0 || key_len > sizeof c->key) {
        snprintf(err, errcap, "sinks.sms.access_key: empty or too long");
        goto fail;
    }
    memcpy(c->key, key, key_len);
    c->key_len = key_len;
    if (ca_file && !(c->ca_file = strdup(ca_file))) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    c->timeout_s = timeout_s ? timeout_s : 30;
    if (!(c->curl = curl_easy_init())) {
        snprintf(err, errcap, "libcurl: cannot create a handle");
        goto fail;
    }
    return c;
fail:
    sink_acs_client_free(c);
    return NULL;
}

void sink_acs_client_free(struct sink_acs_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    OPENSSL_cleanse(c->key, sizeof c->key);
    free(c->ca_file);
    free(c);
}

struct xfer {
    struct buf body;
    char ra_ms[32], xra_ms[32], ra[64];
    const atomic_int *cancel;
};

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    return buf_append(&x->body, p, size * n) == 0 ? size * n : 0;
}

/* Keeps the value of a header we care about (trimmed, cut to cap). */
static void header_value(const char *p, size_t n, size_t name_len, char *out, size_t cap)
{
    p += name_len;
    n -= name_len;
    while (n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == ' '))
        n--;
    snprintf(out, cap, "%.*s", (int)n, p);
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    static const struct { const char *name; size_t off, cap; } hs[] = {
        { "retry-after-ms:", offsetof(struct xfer, ra_ms), sizeof ((struct xfer *)0)->ra_ms },
        { "x-ms-retry-after-ms:", offsetof(struct xfer, xra_ms), sizeof ((struct xfer *)0)->xra_ms },
        { "retry-after:", offsetof(struct xfer, ra), sizeof ((struct xfer *)0)->ra },
    };
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
        size_t nl = strlen(hs[i].name);
        if (len >= nl && strncasecmp(p, hs[i].name, nl) == 0)
            header_value(p, len, nl, (char *)x + hs[i].off, hs[i].cap);
    }
    return len;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a, (void)b, (void)c, (void)d;
    const struct xfer *x = ud;
    return x->cancel && atomic_load(x->cancel) ? 1 : 0;
}

static void error_of_body(const struct buf *b, struct sink_acs_reply *out)
{
    json_error_t je;
    json_t *root = json_loadb((const char *)buf_data(b), b->len, 0, &je);
    json_t *e = root ? json_object_get(root, "error") : NULL;
    if (json_is_object(e)) {
        jcopy(e, "code", out->error_code, sizeof out->error_code);
        jcopy(e, "message", out->error_message, sizeof out->error_message);
    } else if (root && json_is_string(json_object_get(root, "message"))) {
        jcopy(root, "message", out->error_message, sizeof out->error_message);
    }
    json_decref(root);
}

int sink_acs_send(struct sink_acs_client *c, const uint8_t *body, size_t len, int64_t now_s,
                  const atomic_int *cancel, struct sink_acs_reply *out)
{
    memset(out, 0, sizeof *out);
    struct sink_acs_signed sg;
    if (sink_acs_sign(c->key, c->key_len, "POST", c->path_query, c->host, now_s, body, len, &sg) <
        0) {
        snprintf(out->transport_error, sizeof out->transport_error, "cannot sign the request");
        return -1;
    }
    char h_host[300], h_date[64], h_hash[96], h_auth[200];
    snprintf(h_host, sizeof h_host, "Host: %s", c->host);
    snprintf(h_date, sizeof h_date, "x-ms-date: %s", sg.date);
    snprintf(h_hash, sizeof h_hash, "x-ms-content-sha256: %s", sg.content_hash);
    snprintf(h_auth, sizeof h_auth, "Authorization: %s", sg.authorization);
    struct curl_slist *hl = NULL, *t;
    const char *const hdrs[] = { h_host, "Content-Type: application/json",
                                 "Accept: application/json", h_date, h_hash, h_auth, "Expect:" };
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        if (!(t = curl_slist_append(hl, hdrs[i]))) {
            curl_slist_free_all(hl);
            snprintf(out->transport_error, sizeof out->transport_error, "out of memory");
            return -1;
        }
        hl = t;
    }
    struct xfer x = { .cancel = cancel };
    buf_init(&x.body, ACS_MAX_ANSWER);
    CURL *e = c->curl;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, (long)c->timeout_s);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, &x);
    CURLcode rc = curl_easy_perform(e);
    curl_slist_free_all(hl);
    int ret = -1;
    if (rc != CURLE_OK) {
        snprintf(out->transport_error, sizeof out->transport_error, "%s",
                 curl_easy_strerror(rc));
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    out->http_status = (int)status;
    out->n_results = 0;
    if (status == 202) {
        out->n_results = sink_acs_parse_answer(buf_data(&x.body) ? buf_data(&x.body)
                                                                 : (const uint8_t *)"",
                                               x.body.len, &out->result, 1);
    } else {
        error_of_body(&x.body, out);
    }
    uint64_t ms;
    if (sink_acs_retry_hint(x.ra_ms[0] ? x.ra_ms : NULL, x.xra_ms[0] ? x.xra_ms : NULL,
                            x.ra[0] ? x.ra : NULL, now_s, &ms) == 0) {
        out->has_hint = 1;
        out->hint_ms = ms;
    }
    ret = 0;
out:
    buf_release(&x.body);
    return ret;
}
