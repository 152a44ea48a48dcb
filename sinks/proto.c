/* proto — the wire details of the Purview connector push API, kept apart
 * from the sink's thread so each can be tested alone: default endpoints per
 * cloud, the token request body and answer, Retry-After, the backoff
 * formula and the multipart/form-data framing of the uploaded file.
 *
 * Design: pure functions over bytes with explicit lengths; the token answer
 * is parsed with jansson (strict JSON, duplicate keys refused) and only the
 * fields the protocol names are looked at.
 *
 * Threads: any; no shared state. */
#include "sinks/sinks.h"

#include "core/num.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- endpoints ----------------------------------------------------------- */

struct cloud_hosts {
    const char *login, *webhook;
};

static const struct cloud_hosts clouds[] = {
    [SINK_CLOUD_COMMERCIAL] = { "login.windows.net", "webhook.ingestion.office.com" },
    [SINK_CLOUD_GCC] = { "login.microsoftonline.com", "webhook-gcc.ingestion.office365.us" },
    [SINK_CLOUD_ITAR_L4] = { "login.microsoftonline.us", "webhook-itarl4.ingestion.office365.us" },
    [SINK_CLOUD_ITAR_L5] = { "login.microsoftonline.us", "webhook-itarl5.ingestion.apps.mil" },
};

int sink_cloud_urls(enum sink_cloud c, const char *tenant_id, char *token_url, size_t tcap,
                    char *upload_url, size_t ucap)
{
    if ((unsigned)c >= sizeof clouds / sizeof clouds[0] || !tenant_id)
        return -1;
    int n = snprintf(token_url, tcap, "https://%s/%s/oauth2/token?api-version=1.0",
                     clouds[c].login, tenant_id);
    if (n < 0 || (size_t)n >= tcap)
        return -1;
    n = snprintf(upload_url, ucap, "https://%s/api/signals", clouds[c].webhook);
    if (n < 0 || (size_t)n >= ucap)
        return -1;
    return 0;
}

/* ---- token request ------------------------------------------------------- */

/* Percent-encodes per application/x-www-form-urlencoded: unreserved bytes
 * as they are, everything else %XX (a space too, never '+', which every
 * server reads the same way). */
static int form_value(struct buf *out, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        unsigned char c = *p;
        int plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
        if (plain) {
            if (buf_append(out, p, 1) < 0)
                return -1;
        } else {
            char e[3] = { '%', hex[c >> 4], hex[c & 15] };
            if (buf_append(out, e, 3) < 0)
                return -1;
        }
    }
    return 0;
}

int sink_token_form(struct buf *out, const char *client_id, const char *secret,
                    const char *resource, const char *tenant_id)
{
    if (!client_id || !secret || !resource || !tenant_id)
        return -1;
    if (buf_append_str(out, "client_id=") < 0 || form_value(out, client_id) < 0 ||
        buf_append_str(out, "&client_secret=") < 0 || form_value(out, secret) < 0 ||
        buf_append_str(out, "&grant_type=client_credentials&resource=") < 0 ||
        form_value(out, resource) < 0 || buf_append_str(out, "&tenant_id=") < 0 ||
        form_value(out, tenant_id) < 0)
        return -1;
    return 0;
}

/* ---- token answer -------------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    /* Control characters and quotes would break the one-line log format. */
    for (; src && src[n] && n + 1 < cap; n++) {
        unsigned char c = (unsigned char)src[n];
        dst[n] = (c < 0x20 || c == 0x7f || c == '"' || c == '\\') ? ' ' : (char)c;
    }
    dst[n] = '\0';
}

/* A number given as a JSON integer, a real or a string of digits. */
static int json_seconds(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d < 0 || d > 1e12)
            return -1;
        *out = (int64_t)d;
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        uint64_t u;
        if (num_parse_u64((const uint8_t *)s, json_string_length(v), (uint64_t)1 << 40, &u) < 0)
            return -1;
        *out = (int64_t)u;
        return 0;
    }
    return -1;
}

int sink_token_parse(const uint8_t *body, size_t len, int64_t now_s, struct sink_token *out)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return -1;
    int ret = -1;
    if (!json_is_object(root))
        goto out;
    const json_t *err = json_object_get(root, "error");
    const json_t *desc = json_object_get(root, "error_description");
    if (json_is_string(err))
        copy_str(out->error, sizeof out->error, json_string_value(err));
    if (json_is_string(desc))
        copy_str(out->description, sizeof out->description, json_string_value(desc));
    if (out->error[0])
        goto out;
    const json_t *tok = json_object_get(root, "access_token");
    if (!json_is_string(tok) || json_string_length(tok) == 0) {
        copy_str(out->error, sizeof out->error, "no_access_token");
        goto out;
    }
    const json_t *tt = json_object_get(root, "token_type");
    if (tt && (!json_is_string(tt) || strcasecmp(json_string_value(tt), "Bearer") != 0)) {
        copy_str(out->error, sizeof out->error, "unexpected_token_type");
        goto out;
    }
    int64_t exp = 0;
    const json_t *ein = json_object_get(root, "expires_in");
    const json_t *eon = json_object_get(root, "expires_on");
    if (ein) {
        if (json_seconds(ein, &exp) < 0) {
            copy_str(out->error, sizeof out->error, "bad_expires_in");
            goto out;
        }
    } else if (eon) {
        int64_t on = 0;
        if (json_seconds(eon, &on) < 0) {
            copy_str(out->error, sizeof out->error, "bad_expires_on");
            goto out;
        }
        exp = on - now_s;
    }
    if (exp <= 0 && (ein || eon)) {
        copy_str(out->error, sizeof out->error, "token_already_expired");
        goto out;
    }
    /* Neither field: a lifetime is not promised, so the sink renews early
     * (it treats 0 as "unknown"). */
    out->expires_in_s = exp;
    out->access_token = strdup(json_string_value(tok));
    if (!out->access_token) {
        copy_str(out->error, sizeof out->error, "out_of_memory");
        goto out;
    }
    ret = 0;
out:
    json_decref(root);
    return ret;
}

void sink_token_release(struct sink_token *t)
{
    if (t->access_token) {
        explicit_bzero(t->access_token, strlen(t->access_token));
        free(t->access_token);
    }
    memset(t, 0, sizeof *t);
}

const char *sink_aadsts_hint(const char *d)
{
    static const struct {
        const char *code, *hint;
    } hints[] = {
        /* longest codes first: "AADSTS7000215" starts with "AADSTS700021" */
        { "AADSTS7000215", "the client secret is wrong: check app_secret" },
        { "AADSTS7000222", "the client secret has expired: create a new one (app_secret)" },
        { "AADSTS700016", "the application is not in this tenant: check app_id and tenant_id" },
        { "AADSTS90002", "the tenant was not found: check tenant_id" },
        { "AADSTS900023", "the tenant id is not valid: check tenant_id" },
        { "AADSTS90013", "the tenant id is not valid: check tenant_id" },
        { "AADSTS500011", "the resource is unknown in the tenant: check resource" },
        { "AADSTS50001", "the resource is unknown in the tenant: check resource" },
        { "AADSTS7000218", "the request lacks client credentials: check app_secret" },
        { "AADSTS50034", "unknown account: check tenant_id" },
    };
    if (!d)
        return "";
    for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++) {
        size_t n = strlen(hints[i].code);
        const char *p = strstr(d, hints[i].code);
        if (p && !(p[n] >= '0' && p[n] <= '9'))
            return hints[i].hint;
    }
    return "";
}

/* ---- retries ------------------------------------------------------------- */

int sink_retry_after_parse(const char *value, int64_t now_s, uint64_t *delay_ms)
{
    if (!value)
        return -1;
    size_t a = 0, b = strlen(value);
    while (a < b && (value[a] == ' ' || value[a] == '\t'))
        a++;
    while (b > a && (value[b - 1] == ' ' || value[b - 1] == '\t' || value[b - 1] == '\r' ||
                     value[b - 1] == '\n'))
        b--;
    if (a == b)
        return -1;
    if (value[a] >= '0' && value[a] <= '9') {
        uint64_t s;
        if (num_parse_u64((const uint8_t *)value + a, b - a, UINT64_MAX / 1000, &s) < 0)
            return -1;
        *delay_ms = s * 1000;
        return 0;
    }
    /* An HTTP date (IMF-fixdate, or the obsolete forms): libcurl's parser
     * knows all three. */
    char tmp[64];
    if (b - a >= sizeof tmp)
        return -1;
    memcpy(tmp, value + a, b - a);
    tmp[b - a] = '\0';
    time_t t = curl_getdate(tmp, NULL);
    if (t == (time_t)-1)
        return -1;
    *delay_ms = (int64_t)t > now_s ? (uint64_t)((int64_t)t - now_s) * 1000 : 0;
    return 0;
}

uint64_t sink_backoff_ms(unsigned attempt, unsigned base_ms, unsigned max_ms, uint32_t rnd)
{
    if (attempt == 0)
        attempt = 1;
    uint64_t d = base_ms ? base_ms : 1;
    for (unsigned i = 1; i < attempt && d < max_ms; i++)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    uint64_t half = d / 2;
    return half + (half ? (uint64_t)rnd % (d - half + 1) : 0);
}

/* ---- multipart ----------------------------------------------------------- */

int sink_multipart_begin(struct buf *out, const char *boundary, const char *filename)
{
    /* The file name is ours (no quote or CR/LF can reach it), so it needs
     * no escaping. */
    if (buf_append_str(out, "--") < 0 || buf_append_str(out, boundary) < 0 ||
        buf_append_str(out, "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"") <
            0 ||
        buf_append_str(out, filename) < 0 ||
        buf_append_str(out, "\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n") < 0)
        return -1;
    return 0;
}

int sink_multipart_end(struct buf *out, const char *boundary)
{
    if (buf_append_str(out, "\r\n--") < 0 || buf_append_str(out, boundary) < 0 ||
        buf_append_str(out, "--\r\n") < 0)
        return -1;
    return 0;
}

int sink_multipart_ok(const uint8_t *content, size_t len, const char *boundary)
{
    size_t bl = strlen(boundary);
    for (const uint8_t *p = content; len >= bl + 2;) {
        const uint8_t *q = memmem(p, len, "--", 2);
        if (!q || (size_t)(q - p) > len - bl - 2)
            return 1;
        if (memcmp(q + 2, boundary, bl) == 0)
            return 0;
        len -= (size_t)(q - p) + 1;
        p = q + 1;
    }
    return 1;
}

void sink_curl_connector(void *easy, const char *ca_file, unsigned timeout_s,
                         unsigned connect_timeout_s)
{
    CURL *e = easy;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, (long)timeout_s);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)connect_timeout_s);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* HTTPS with TLS 1.2 or newer and full verification, loopback included:
     * the token request carries the client secret. */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "hl7bridge");
}

/* ---- refusals --------------------------------------------------------------- */

void sink_refusal_summary(const char *secret, char *dst, size_t cap, const uint8_t *p,
                          size_t len)
{
    if (cap == 0)
        return;
    json_error_t je;
    json_t *j = len ? json_loadb((const char *)p, len, 0, &je) : NULL;
    const char *code = NULL;
    if (json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        if (json_is_object(e))
            e = json_object_get(e, "code");
        if (json_is_string(e))
            code = json_string_value(e);
    }
    char tmp[256];
    if (code)
        snprintf(tmp, sizeof tmp, "%s (%zu-byte answer, text not kept)", code, len);
    else
        snprintf(tmp, sizeof tmp, "%zu-byte answer, text not kept", len);
    json_decref(j);
    /* Printable ASCII only, no quotes; the secret, should a peer ever echo
     * it, replaced. */
    size_t n = 0;
    for (size_t i = 0; tmp[i] && n + 1 < cap; i++) {
        uint8_t c = (uint8_t)tmp[i];
        dst[n++] = (c < 0x20 || c > 0x7e || c == '"' || c == '\\') ? ' ' : (char)c;
    }
    dst[n] = '\0';
    size_t sl = secret ? strlen(secret) : 0;
    if (sl >= 4) {
        char *hit;
        while ((hit = memmem(dst, n, secret, sl)) != NULL)
            memset(hit, '*', sl);
    }
}
