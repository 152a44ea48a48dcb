/* epoll event loop.  File callbacks are looked up through a table indexed by
 * fd (fds are small and dense), so dispatch costs one array access.  The tick
 * is driven by the epoll_wait timeout rather than a timerfd: one less fd, and
 * a busy loop checks the clock once per turn anyway. */
#include "core/loop.h"
#include "core/clock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct loop_slot {
    loop_fd_cb cb;
    void *ud;
};

struct loop {
    int epfd;
    struct loop_slot *slots;
    int nslots;
    volatile int stop;
    int no_sleep;
    loop_hook_cb before_sleep;
    void *before_sleep_ud;
    loop_hook_cb tick;
    void *tick_ud;
    unsigned tick_ms;
    uint64_t next_tick_ms;
};

struct loop *loop_new(void)
{
    struct loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    return l;
}

void loop_free(struct loop *l)
{
    if (!l)
        return;
    close(l->epfd);
    free(l->slots);
    free(l);
}

static uint32_t to_epoll(unsigned ev)
{
    uint32_t e = 0;
    if (ev & LOOP_READ)
        e |= EPOLLIN | EPOLLRDHUP;
    if (ev & LOOP_WRITE)
        e |= EPOLLOUT;
    if (ev & LOOP_EDGE)
        e |= EPOLLET;
    return e;
}

int loop_add(struct loop *l, int fd, unsigned events, loop_fd_cb cb, void *ud)
{
    if (fd < 0)
        return -1;
    if (fd >= l->nslots) {
        int n = l->nslots ? l->nslots : 64;
        while (n <= fd)
            n *= 2;
        struct loop_slot *ns = realloc(l->slots, (size_t)n * sizeof *ns);
        if (!ns)
            return -1;
        memset(ns + l->nslots, 0, (size_t)(n - l->nslots) * sizeof *ns);
        l->slots = ns;
        l->nslots = n;
    }
    struct epoll_event ev = { .events = to_epoll(events), .data.fd = fd };
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -1;
    l->slots[fd].cb = cb;
    l->slots[fd].ud = ud;
    return 0;
}

int loop_mod(struct loop *l, int fd, unsigned events)
{
    struct epoll_event ev = { .events = to_epoll(events), .data.fd = fd };
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev);
}

void loop_del(struct loop *l, int fd)
{
    if (fd < 0 || fd >= l->nslots)
        return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    l->slots[fd].cb = NULL;
    l->slots[fd].ud = NULL;
}

void loop_set_before_sleep(struct loop *l, loop_hook_cb cb, void *ud)
{
    l->before_sleep = cb;
    l->before_sleep_ud = ud;
}

void loop_set_tick(struct loop *l, unsigned tick_ms, loop_hook_cb cb, void *ud)
{
    l->tick = cb;
    l->tick_ud = ud;
    l->tick_ms = tick_ms;
    l->next_tick_ms = clock_mono_ms() + tick_ms;
}

void loop_no_sleep(struct loop *l) { l->no_sleep = 1; }
void loop_stop(struct loop *l) { l->stop = 1; }

int loop_run(struct loop *l)
{
    struct epoll_event evs[256];
    while (!l->stop) {
        if (l->before_sleep)
            l->before_sleep(l->before_sleep_ud);
        if (l->stop)
            break;
        int timeout = -1;
        uint64_t now = clock_mono_ms();
        if (l->tick) {
            timeout = now >= l->next_tick_ms ? 0 : (int)(l->next_tick_ms - now);
        }
        if (l->no_sleep) {
            timeout = 0;
            l->no_sleep = 0;
        }
        int n = epoll_wait(l->epfd, evs, (int)(sizeof evs / sizeof evs[0]), timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd < 0 || fd >= l->nslots || !l->slots[fd].cb)
                continue;
            unsigned e = 0;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                e |= LOOP_READ;
            if (evs[i].events & EPOLLOUT)
                e |= LOOP_WRITE;
            l->slots[fd].cb(l->slots[fd].ud, fd, e);
        }
        if (l->tick) {
            now = clock_mono_ms();
            if (now >= l->next_tick_ms) {
                l->next_tick_ms = now + l->tick_ms;
                l->tick(l->tick_ud);
            }
        }
    }
    return 0;
}
