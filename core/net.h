/* Name resolution and listening sockets, shared by the MLLP listeners and
 * client and the metrics endpoint. */
#ifndef CORE_NET_H
#define CORE_NET_H

#include <stddef.h>

struct addrinfo;

/* Stream addresses of host:port (numeric port; `passive` for binding).
 * Returns 0 with *res to be freed by freeaddrinfo, or -1 with a message in
 * errbuf. */
int net_resolve(const char *host, unsigned port, int passive, struct addrinfo **res,
                char *errbuf, size_t errcap) __attribute__((warn_unused_result));

/* A listening TCP socket on host:port (SO_REUSEADDR; an IPv6 socket takes
 * IPv6 only), non-blocking when `nonblock`.  *family (optional) gets the
 * address family.  Returns the fd, or -1 with a message in errbuf. */
int net_listen(const char *host, unsigned port, int nonblock, int *family, char *errbuf,
               size_t errcap) __attribute__((warn_unused_result));

#endif
