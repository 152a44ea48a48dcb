/* http_guard — whole-request deadlines and eviction of the oldest
 * connection for the monitoring port (see http_guard.h).
 *
 * A fixed table, one slot per connection libmicrohttpd may hold; the slot
 * is taken when the connection starts and given back when it is closed,
 * which libmicrohttpd reports before it closes the socket, so a shutdown(2)
 * under the mutex always reaches the connection the slot names.
 *
 * Threads: libmicrohttpd's thread (callbacks), the monitor thread (sweep). */
#include "daemon/http_guard.h"

#include "core/clock.h"
#include "core/log.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Connections closed but not yet freed by libmicrohttpd still hold a slot. */
#define HTTP_GUARD_SLACK 16

struct slot {
    int used, closing;
    int fd;
    struct sockaddr_storage addr;
    uint64_t start_ms;
};

struct http_guard {
    pthread_mutex_t mu;
    unsigned max_conns, max_per_ip, n;
    uint64_t deadline_ms;
    struct slot *slots;
};

struct http_guard *http_guard_new(unsigned max_conns, unsigned max_per_ip, uint64_t deadline_ms)
{
    struct http_guard *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->n = max_conns + HTTP_GUARD_SLACK;
    g->slots = calloc(g->n, sizeof *g->slots);
    if (!g->slots) {
        free(g);
        return NULL;
    }
    g->max_conns = max_conns;
    g->max_per_ip = max_per_ip;
    g->deadline_ms = deadline_ms;
    pthread_mutex_init(&g->mu, NULL);
    return g;
}

void http_guard_free(struct http_guard *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->mu);
    free(g->slots);
    free(g);
}

unsigned http_guard_table_size(const struct http_guard *g) { return g->n; }

/* Same host (the port does not matter). */
static int same_host(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return 0;
    if (b->sa_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)(const void *)a)->sin_addr,
                      &((const struct sockaddr_in *)(const void *)b)->sin_addr,
                      sizeof(struct in_addr)) == 0;
    if (b->sa_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr,
                      sizeof(struct in6_addr)) == 0;
    return 0;
}

static int live(const struct slot *s) { return s->used && !s->closing; }

/* Caller holds mu. */
static void close_slot(struct slot *s)
{
    shutdown(s->fd, SHUT_RDWR);
    s->closing = 1;
}

enum MHD_Result http_guard_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    (void)len;
    struct http_guard *g = cls;
    pthread_mutex_lock(&g->mu);
    unsigned total = 0, mine = 0, free_slots = 0;
    struct slot *oldest = NULL, *oldest_mine = NULL;
    for (unsigned i = 0; i < g->n; i++) {
        struct slot *s = &g->slots[i];
        if (!s->used) {
            free_slots++;
            continue;
        }
        if (!live(s))
            continue;
        total++;
        if (!oldest || s->start_ms < oldest->start_ms)
            oldest = s;
        if (same_host(&s->addr, addr)) {
            mine++;
            if (!oldest_mine || s->start_ms < oldest_mine->start_ms)
                oldest_mine = s;
        }
    }
    int evicted = 0;
    if (mine >= g->max_per_ip && oldest_mine) {
        close_slot(oldest_mine);
        evicted = 1;
    } else if (total >= g->max_conns && oldest) {
        close_slot(oldest);
        evicted = 1;
    }
    pthread_mutex_unlock(&g->mu);
    if (evicted)
        log_debug("http_evicted", "reason=%s", mine >= g->max_per_ip ? "per_address" : "total");
    return free_slots ? MHD_YES : MHD_NO;
}

void http_guard_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code)
{
    struct http_guard *g = cls;
    pthread_mutex_lock(&g->mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        struct slot *s = NULL;
        for (unsigned i = 0; i < g->n && !s; i++)
            if (!g->slots[i].used)
                s = &g->slots[i];
        *socket_context = s;
        if (s && fd) {
            memset(s, 0, sizeof *s);
            s->used = 1;
            s->fd = fd->connect_fd;
            s->start_ms = clock_mono_ms();
            if (ad && ad->client_addr) {
                socklen_t l = ad->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                                     : sizeof(struct sockaddr_in);
                memcpy(&s->addr, ad->client_addr, l);
            }
        } else if (fd) {
            shutdown(fd->connect_fd, SHUT_RDWR); /* no slot: not served */
            *socket_context = NULL;
        }
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        struct slot *s = *socket_context;
        s->used = 0;
        s->closing = 0;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&g->mu);
}

void http_guard_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                          enum MHD_RequestTerminationCode toe)
{
    (void)req_cls;
    (void)toe;
    struct http_guard *g = cls;
    const union MHD_ConnectionInfo *sc = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    pthread_mutex_lock(&g->mu);
    /* The next request on this connection gets a deadline of its own. */
    if (sc && sc->socket_context)
        ((struct slot *)sc->socket_context)->start_ms = clock_mono_ms();
    pthread_mutex_unlock(&g->mu);
}

unsigned http_guard_sweep(struct http_guard *g, uint64_t now_ms)
{
    unsigned n = 0;
    pthread_mutex_lock(&g->mu);
    for (unsigned i = 0; i < g->n; i++) {
        struct slot *s = &g->slots[i];
        if (live(s) && now_ms - s->start_ms > g->deadline_ms) {
            close_slot(s);
            n++;
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (n)
        log_info("http_deadline", "closed=%u deadline_ms=%llu", n,
                 (unsigned long long)g->deadline_ms);
    return n;
}
