/* Name resolution and listening sockets. */
#include "core/net.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int net_resolve(const char *host, unsigned port, int passive, struct addrinfo **res,
                char *errbuf, size_t errcap)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    *res = NULL;
    int rc = getaddrinfo(host, ps, &hints, res);
    if (rc != 0) {
        snprintf(errbuf, errcap, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    return 0;
}

int net_listen(const char *host, unsigned port, int nonblock, int *family, char *errbuf,
               size_t errcap)
{
    struct addrinfo *res;
    if (net_resolve(host, port, 1, &res, errbuf, errcap) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0),
                    0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0) {
            if (family)
                *family = ai->ai_family;
            break;
        }
        snprintf(errbuf, errcap, "cannot listen on %s port %u: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}
