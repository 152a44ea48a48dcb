/* TLS for listeners (OpenSSL).  Builds a server context from the listener's
 * files — TLS 1.2 minimum, forward-secret AEAD suites only for 1.2, the
 * library's defaults for 1.3, no compression, no renegotiation — and checks
 * a verified client certificate against the allowed names.  Handshakes are
 * driven non-blocking by server.c.  Network thread. */
#include "mllp/mllp.h"
#include "mllp/mllp_int.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

static void ssl_err(char *errbuf, size_t errcap, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char reason[160];
    ERR_error_string_n(e, reason, sizeof reason);
    snprintf(errbuf, errcap, "%s%s%s: %s", what, file ? " " : "", file ? file : "", reason);
    ERR_clear_error();
}

SSL_CTX *mllp_tls_ctx_new(const struct mllp_tls_opts *o, char *errbuf, size_t errcap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_err(errbuf, errcap, "TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, o->min_tls13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* The write buffer moves as it is consumed and compacted. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!DSS") != 1) {
        ssl_err(errbuf, errcap, "TLS cipher list", NULL);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
        ssl_err(errbuf, errcap, "cannot load certificate", o->cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
        ssl_err(errbuf, errcap, "cannot load key", o->key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_err(errbuf, errcap, "key does not match certificate", o->key_file);
        goto fail;
    }
    if (o->verify_client) {
        if (!o->client_ca_file || SSL_CTX_load_verify_locations(ctx, o->client_ca_file, NULL) != 1) {
            ssl_err(errbuf, errcap, "cannot load client CA", o->client_ca_file);
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca_file);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int mllp_tls_check(const struct mllp_tls_opts *o, char *errbuf, size_t errcap)
{
    SSL_CTX *ctx = mllp_tls_ctx_new(o, errbuf, errcap);
    SSL_CTX_free(ctx);
    return ctx ? 0 : -1;
}

int mllp_tls_name_allowed(X509 *cert, const char *const *names, size_t n)
{
    if (!cert)
        return 0;
    if (n == 0)
        return 1;
    for (size_t i = 0; i < n; i++) {
        if (X509_check_host(cert, names[i], strlen(names[i]), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
                            NULL) == 1)
            return 1;
    }
    return 0;
}

void mllp_tls_subject_cn(X509 *cert, char *out, size_t cap)
{
    out[0] = '\0';
    if (!cert)
        return;
    X509_NAME *sn = X509_get_subject_name(cert);
    if (sn && X509_NAME_get_text_by_NID(sn, NID_commonName, out, (int)cap) < 0)
        out[0] = '\0';
}
