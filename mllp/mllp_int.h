/* Private helpers shared inside mllp/. */
#ifndef MLLP_MLLP_INT_H
#define MLLP_MLLP_INT_H

#include <stddef.h>

#include "core/limits.h"
#include "mllp/mllp.h"

#define HB_MAX_LISTENERS_MLLP HB_MAX_LISTENERS


#include <openssl/ssl.h>

/* A server context for `o`, or NULL with errbuf. */
/* Turns TCP keep-alive on for an accepted socket with k's timings (net.c).
 * Returns 0, or -1 with errno (the connection is still usable). */
int mllp_keepalive_set(int fd, const struct mllp_keepalive *k);
SSL_CTX *mllp_tls_ctx_new(const struct mllp_tls_opts *o, char *errbuf, size_t errcap);
/* 1 when the certificate matches one of the names (or n == 0). */
int mllp_tls_name_allowed(X509 *cert, const char *const *names, size_t n);
/* The subject CN ("" when none). */
void mllp_tls_subject_cn(X509 *cert, char *out, size_t cap);

#endif
