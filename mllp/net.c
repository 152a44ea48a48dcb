/* Address parsing and socket set-up shared by the listener and the client. */
#include "mllp/mllp.h"
#include "mllp/mllp_int.h"
#include "core/net.h"
#include "core/num.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int mllp_parse_addr(const char *addr, char *host, size_t hostcap, unsigned *port)
{
    size_t n = strlen(addr);
    const char *colon;
    const char *h = addr;
    size_t hl;
    if (n && addr[0] == '[') {
        const char *rb = memchr(addr, ']', n);
        if (!rb || rb[1] != ':')
            return -1;
        h = addr + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - addr);
    }
    if (hl == 0 || hl >= hostcap)
        return -1;
    uint64_t p;
    const char *ps = colon + 1;
    if (num_parse_u64((const uint8_t *)ps, strlen(ps), 65535, &p) != 0)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (unsigned)p;
    return 0;
}

int mllp_client_connect(const char *addr, int timeout_ms, char *errbuf, size_t errcap)
{
    char host[256];
    unsigned port;
    if (mllp_parse_addr(addr, host, sizeof host, &port) != 0) {
        snprintf(errbuf, errcap, "bad address '%s' (want host:port)", addr);
        return -1;
    }
    struct addrinfo *res;
    if (net_resolve(host, port, 0, &res, errbuf, errcap) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            int err = 0;
            socklen_t el = sizeof err;
            if (poll(&pfd, 1, timeout_ms) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0)
                break;
            snprintf(errbuf, errcap, "cannot connect to %s: %s", addr,
                     err ? strerror(err) : "timed out");
        } else {
            snprintf(errbuf, errcap, "cannot connect to %s: %s", addr, strerror(errno));
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

int mllp_keepalive_set(int fd, const struct mllp_keepalive *k)
{
    if (!k->enabled)
        return 0;
    int on = 1, idle = (int)k->idle_s, intvl = (int)k->interval_s, cnt = (int)k->count;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0)
        return -1;
    if ((idle && setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0) ||
        (intvl && setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) != 0) ||
        (cnt && setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) != 0))
        return -1;
    return 0;
}

static int wait_fd(int fd, short ev, int timeout_ms)
{
    struct pollfd pfd = { .fd = fd, .events = ev };
    for (;;) {
        int r = poll(&pfd, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

int mllp_client_send(int fd, const uint8_t *msg, size_t len, int timeout_ms)
{
    uint8_t sb = MLLP_SB, eb[2] = { MLLP_EB, MLLP_CR };
    struct { const uint8_t *p; size_t n; } parts[3] = { { &sb, 1 }, { msg, len }, { eb, 2 } };
    for (int i = 0; i < 3; i++) {
        size_t off = 0;
        while (off < parts[i].n) {
            ssize_t w = send(fd, parts[i].p + off, parts[i].n - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (wait_fd(fd, POLLOUT, timeout_ms) <= 0)
                    return -1;
                continue;
            }
            return -1;
        }
    }
    return 0;
}

void mllp_client_rx_init(struct mllp_client_rx *rx, size_t max)
{
    memset(rx, 0, sizeof *rx);
    mllp_framer_init(&rx->framer, max);
}

void mllp_client_rx_release(struct mllp_client_rx *rx)
{
    free(rx->buf);
    memset(rx, 0, sizeof *rx);
}

static void rx_drop(struct mllp_client_rx *rx, size_t n)
{
    if (n >= rx->len) {
        rx->len = 0;
        return;
    }
    memmove(rx->buf, rx->buf + n, rx->len - n);
    rx->len -= n;
}

int mllp_client_recv(int fd, struct mllp_client_rx *rx, int timeout_ms, const uint8_t **msg,
                     size_t *len)
{
    /* The previous frame handed out stays in the buffer until now. */
    rx_drop(rx, rx->pending);
    rx->pending = 0;
    for (;;) {
        struct mllp_frame fr;
        int r = mllp_framer_next(&rx->framer, rx->buf, rx->len, &fr);
        if (r == MLLP_FRAME) {
            *msg = rx->buf + fr.off;
            *len = fr.len;
            rx->pending = fr.consumed;
            return 1;
        }
        if (r == MLLP_OVERSIZE)
            return -1;
        rx_drop(rx, fr.consumed);
        if (rx->cap - rx->len < 4096) {
            size_t ncap = rx->cap ? rx->cap * 2 : 8192;
            if (ncap > rx->framer.max + 8192)
                return -1;
            uint8_t *nb = realloc(rx->buf, ncap);
            if (!nb)
                return -1;
            rx->buf = nb;
            rx->cap = ncap;
        }
        int w = wait_fd(fd, POLLIN, timeout_ms);
        if (w == 0)
            return 0;
        if (w < 0)
            return -1;
        ssize_t n = recv(fd, rx->buf + rx->len, rx->cap - rx->len, 0);
        if (n > 0) {
            rx->len += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        return -1;
    }
}
