/* notify: the sd_notify datagram protocol without libsystemd (see notify.h).
 * One SOCK_DGRAM socket, opened at start and kept, so a notification costs
 * one sendto; the address is parsed once.  Main thread. */
#include "daemon/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"
#include "core/num.h"

/* A notification is a handful of short lines. */
#define NOTIFY_MAX 1024

struct notify {
    int fd;
    struct sockaddr_un addr;
    socklen_t addrlen;
    uint64_t watchdog_usec;
    int warned;
};

/* $WATCHDOG_USEC, honoured only when $WATCHDOG_PID is unset or ours. */
static uint64_t watchdog_from_env(void)
{
    const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    uint64_t v = 0, p = 0;
    if (!us || num_parse_u64((const uint8_t *)us, strlen(us), UINT64_MAX, &v) != 0)
        return 0;
    if (pid && (num_parse_u64((const uint8_t *)pid, strlen(pid), UINT64_MAX, &p) != 0 ||
                p != (uint64_t)getpid()))
        return 0;
    return v;
}

struct notify *notify_new(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return NULL;
    size_t len = strlen(path);
    struct notify *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->fd = -1;
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof n->addr.sun_path) {
        log_warn("notify_socket_ignored", "reason=\"not an absolute or abstract socket name\"");
        goto fail;
    }
    n->addr.sun_family = AF_UNIX;
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@')
        n->addr.sun_path[0] = '\0'; /* abstract namespace: no terminating NUL counted */
    n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (n->fd < 0) {
        int e = errno;
        log_warn("notify_socket_failed", "errno=%d", e);
        goto fail;
    }
    n->watchdog_usec = watchdog_from_env();
    return n;
fail:
    free(n);
    return NULL;
}

void notify_free(struct notify *n)
{
    if (!n)
        return;
    if (n->fd >= 0)
        close(n->fd);
    free(n);
}

int notify_send(struct notify *n, const char *text)
{
    if (!n)
        return 0;
    ssize_t r;
    do
        r = sendto(n->fd, text, strlen(text), MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
                   n->addrlen);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        int e = errno;
        if (!n->warned)
            log_warn("notify_failed", "errno=%d", e);
        n->warned = 1;
        return -1;
    }
    return 0;
}

int notify_sendf(struct notify *n, const char *fmt, ...)
{
    if (!n)
        return 0;
    char text[NOTIFY_MAX];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (len < 0)
        return -1;
    return notify_send(n, text);
}

uint64_t notify_watchdog_usec(const struct notify *n)
{
    return n ? n->watchdog_usec : 0;
}
