/* Private helpers shared inside mllp/. */
#ifndef MLLP_MLLP_INT_H
#define MLLP_MLLP_INT_H

#include <stddef.h>

#include "core/limits.h"

#define HB_MAX_LISTENERS_MLLP HB_MAX_LISTENERS

/* Creates a non-blocking listening socket on host:port (SO_REUSEADDR,
 * IPv6 sockets accept only IPv6).  Returns the fd or -1 with errbuf. */
int mllp_bind_listen(const char *host, unsigned port, char *errbuf, size_t errcap);

#endif
