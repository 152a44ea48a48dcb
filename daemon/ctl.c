/* The control socket (see ctl.h): accept, check the peer, read one JSON
 * request, run it, stream the answer.
 *
 * Threads: one server thread; it waits in poll() on the listening socket
 * and an eventfd that ctl_server_stop writes. */
#include "daemon/ctl.h"
#include "daemon/browse.h"
#include "daemon/rules.h"
#include "core/fsutil.h"
#include "core/log.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_REQUEST_MAX  (1u << 20)
#define CTL_READ_TIMEOUT_MS 5000
#define CTL_MAX_IDS      100000

struct ctl_server {
    const struct config *cfg;
    struct rules_live *live;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int fd, efd;
    pthread_t thread;
    int started;
    _Atomic int stop;
};

int ctl_socket_path(const struct config *c, char *out, size_t cap)
{
    char *dir = fs_dir_of(c->store.path);
    if (!dir)
        return -1;
    int n = snprintf(out, cap, "%s/%s", dir, CTL_SOCKET_NAME);
    free(dir);
    return n > 0 && (size_t)n < cap && (size_t)n < sizeof(((struct sockaddr_un *)0)->sun_path)
               ? 0 : -1;
}

static int sock_addr(const char *path, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof a->sun_path)
        return -1;
    memcpy(a->sun_path, path, n + 1);
    return 0;
}

int ctl_connect(const char *path)
{
    struct sockaddr_un a;
    if (sock_addr(path, &a) != 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* ---- one request --------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct conn {
    struct ctl_server *s;
    int fd;
    int broken;
};

static int send_line(void *ud, const char *text)
{
    struct conn *c = ud;
    if (c->broken || atomic_load(&c->s->stop))
        return -1;
    if (write_all(c->fd, text, strlen(text)) != 0 || write_all(c->fd, "\n", 1) != 0) {
        c->broken = 1;
        return -1;
    }
    return 0;
}

static void send_json(struct conn *c, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (s)
        (void)send_line(c, s);
    free(s);
    json_decref(o);
}

static void send_error(struct conn *c, const char *msg)
{
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_false());
    json_object_set_new(o, "error", json_string(msg));
    send_json(c, o);
}

/* Reads the request line (bounded in size and time). */
static int read_request(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, CTL_READ_TIMEOUT_MS) <= 0)
            return -1;
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        n += (size_t)r;
        if (memchr(buf, '\n', n)) {
            buf[n] = '\0';
            return 0;
        }
    }
    return -1;
}

static int64_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void do_reprocess(struct conn *c, json_t *req)
{
    struct reprocess_req rq;
    memset(&rq, 0, sizeof rq);
    json_t *ids = json_object_get(req, "ids");
    const char **idv = NULL;
    if (json_is_array(ids) && json_array_size(ids)) {
        size_t n = json_array_size(ids);
        if (n > CTL_MAX_IDS || !(idv = calloc(n, sizeof *idv))) {
            send_error(c, "too many ids");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            idv[i] = json_string_value(json_array_get(ids, i));
            if (!idv[i]) {
                free(idv);
                send_error(c, "ids must be strings");
                return;
            }
        }
        rq.ids = idv;
        rq.n_ids = n;
    }
    const char *st = jstr(req, "status");
    int sv = st ? store_browse_status_parse(st) : 0;
    if (sv < 0) {
        free(idv);
        send_error(c, "unknown status");
        return;
    }
    rq.status = (enum store_browse_status)sv;
    rq.since_ms = jint(req, "since_ms");
    rq.until_ms = jint(req, "until_ms");
    rq.msg_type = jstr(req, "type");
    rq.trigger = jstr(req, "trigger");
    rq.dry_run = json_is_true(json_object_get(req, "dry_run"));
    rq.redeliver = json_is_true(json_object_get(req, "redeliver"));

    const struct config *cfg = c->s->cfg;
    struct rules_ref *ref = rules_live_get(c->s->live);
    struct reprocess_totals tot;
    char err[512];
    /* The format goes with the rules: a reload may have changed both. */
    int rc = reprocess_run(cfg->store.path, rules_ref_mapping(ref), rules_ref_format(ref),
                           rules_ref_eol(ref), &rq, send_line, c, &tot, err, sizeof err);
    rules_ref_put(c->s->live, ref);
    free(idv);
    log_info("reprocess", "queued=%llu rows=%llu already=%llu still_quarantined=%llu "
             "still_rejected=%llu dry_run=%d redeliver=%d result=%s",
             (unsigned long long)tot.n[RP_QUEUED], (unsigned long long)tot.rows,
             (unsigned long long)tot.n[RP_ALREADY],
             (unsigned long long)tot.n[RP_STILL_QUARANTINED],
             (unsigned long long)tot.n[RP_STILL_REJECTED], rq.dry_run, rq.redeliver,
             rc == 0 ? "ok" : "error");
    if (rc != 0) {
        send_error(c, err);
        return;
    }
    json_t *o = json_object();
    json_t *t = json_object();
    for (int i = 0; i < RP_N; i++)
        json_object_set_new(t, reprocess_outcome_name((enum reprocess_outcome)i),
                            json_integer((json_int_t)tot.n[i]));
    json_t *bs = json_object();
    for (unsigned k = 0; k < REPROCESS_NSTATUS; k++) {
        json_t *one = json_object();
        for (int i = 0; i < RP_N; i++)
            if (tot.by_status[k][i])
                json_object_set_new(one, reprocess_outcome_name((enum reprocess_outcome)i),
                                    json_integer((json_int_t)tot.by_status[k][i]));
        json_object_set_new(bs, reprocess_status_name(k), one);
    }
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "totals", t);
    json_object_set_new(o, "by_status", bs);
    json_object_set_new(o, "rows", json_integer((json_int_t)tot.rows));
    json_object_set_new(o, "pid", json_integer((json_int_t)getpid()));
    send_json(c, o);
}

static void serve(struct ctl_server *s, int fd)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
        (cr.uid != 0 && cr.uid != geteuid())) {
        log_warn("ctl_refused", "uid=%d", cl == sizeof cr ? (int)cr.uid : -1);
        return;
    }
    struct conn c = { .s = s, .fd = fd };
    char *buf = malloc(CTL_REQUEST_MAX);
    if (!buf)
        return;
    if (read_request(fd, buf, CTL_REQUEST_MAX) != 0) {
        free(buf);
        send_error(&c, "no request");
        return;
    }
    json_error_t je;
    json_t *req = json_loads(buf, JSON_DISABLE_EOF_CHECK, &je);
    free(buf);
    const char *cmd = req ? jstr(req, "cmd") : NULL;
    if (cmd && strcmp(cmd, "reprocess") == 0)
        do_reprocess(&c, req);
    else
        send_error(&c, "unknown request");
    json_decref(req);
}

static void *server_main(void *arg)
{
    struct ctl_server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p[2] = { { .fd = s->fd, .events = POLLIN }, { .fd = s->efd, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve(s, fd);
        close(fd);
    }
    return NULL;
}

/* ---- lifecycle ----------------------------------------------------------- */

struct ctl_server *ctl_server_start(const struct config *cfg, struct rules_live *live,
                                    char *errbuf, size_t errcap)
{
    struct ctl_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(errbuf, errcap, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->live = live;
    s->fd = s->efd = -1;
    struct sockaddr_un a;
    if (ctl_socket_path(cfg, s->path, sizeof s->path) != 0 || sock_addr(s->path, &a) != 0) {
        snprintf(errbuf, errcap, "control socket path too long (store directory)");
        goto fail;
    }
    /* A socket left by a daemon that died is removed; one that answers
     * belongs to a daemon running on this store. */
    int probe = ctl_connect(s->path);
    if (probe >= 0) {
        close(probe);
        snprintf(errbuf, errcap, "%s: another daemon answers there", s->path);
        s->path[0] = '\0';
        goto fail;
    }
    struct stat st;
    if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(s->path);
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    s->efd = eventfd(0, EFD_CLOEXEC);
    if (s->fd < 0 || s->efd < 0) {
        snprintf(errbuf, errcap, "socket: %s", strerror(errno));
        goto fail;
    }
    mode_t old = umask(0177);
    int brc = bind(s->fd, (struct sockaddr *)&a, sizeof a);
    int e = errno;
    umask(old);
    if (brc != 0) {
        snprintf(errbuf, errcap, "bind %s: %s", s->path, strerror(e));
        s->path[0] = '\0';
        goto fail;
    }
    if (chmod(s->path, 0600) != 0 || listen(s->fd, 8) != 0) {
        snprintf(errbuf, errcap, "%s: %s", s->path, strerror(errno));
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, server_main, s) != 0) {
        snprintf(errbuf, errcap, "control thread");
        goto fail;
    }
    s->started = 1;
    return s;
fail:
    ctl_server_stop(s);
    return NULL;
}

void ctl_server_stop(struct ctl_server *s)
{
    if (!s)
        return;
    atomic_store(&s->stop, 1);
    if (s->started) {
        uint64_t one = 1;
        ssize_t w = write(s->efd, &one, sizeof one);
        (void)w;
        pthread_join(s->thread, NULL);
    }
    if (s->fd >= 0)
        close(s->fd);
    if (s->efd >= 0)
        close(s->efd);
    if (s->path[0])
        unlink(s->path);
    free(s);
}
