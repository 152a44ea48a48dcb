/* MLLP listeners and connections, on the network thread's core/loop.
 *
 * Sockets are non-blocking and edge-triggered.  A connection reads until
 * EAGAIN, but at most READ_BUDGET bytes per loop turn, so one fast peer cannot
 * starve the others; a connection with work left (budget spent, or paused by
 * back-pressure) waits on the ready list, which the before-sleep hook walks.
 *
 * Every frame gets a sequence number.  Replies go out in sequence order: a
 * reply that is ready before its predecessors (an AR for garbage while the
 * previous message waits for the store) is parked in a per-connection ring.
 * The ring's size bounds the frames in flight per connection; a full ring
 * stops reading that connection, and so do replies the peer has not read
 * (WBUF_HIGH): an answer is never dropped.
 *
 * A connection is never freed inside its own callback: it is marked and
 * freed by the before-sleep hook.  All of this runs on the network thread. */
#include "mllp/mllp.h"
#include "mllp/mllp_int.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/net.h"

#include "core/num.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUDGET       (256u * 1024u)
#define READ_CHUNK        (64u * 1024u)
#define RING_CAP          256u            /* frames in flight per connection */
/* A connection whose unsent replies pass WBUF_HIGH takes no new frame until
 * its peer has read some: a sender that pipelines faster than it reads its
 * ACKs is slowed down, never cut off.  Past the mark at most RING_CAP more
 * replies (each at most HL7_ACK_MAX_BYTES) can join, so WBUF_MAX is never
 * reached by ACKs. */
#define WBUF_HIGH         (256u * 1024u)
#define WBUF_MAX          (8u * 1024u * 1024u)
#define SLOT_BITS         20u
#define SLOT_MASK         ((1u << SLOT_BITS) - 1u)
#define ACCEPTS_PER_TURN  64
/* frame_end: lenient — a trailing lone 0x1C ends the frame once the peer
 * has sent nothing for this long (checked by the one-second tick). */
#define LONE_END_PAUSE_MS 500u

struct cidr {
    int family;
    uint8_t addr[16];
    unsigned prefix;
};

struct listener {
    struct mllp_server *srv;
    int fd;
    unsigned port;
    char name[64];
    unsigned max_connections;
    unsigned max_per_ip;
    size_t max_message_bytes;
    unsigned idle_timeout_s;
    unsigned handshake_timeout_s;
    unsigned frame_timeout_s;
    int frame_end_lenient;
    struct mllp_keepalive keepalive;
    void *user;
    unsigned nconns;
    struct cidr *allow;
    size_t n_allow;
    /* TLS: the context new connections use, and what rebuilds it. */
    SSL_CTX *tls;
    struct mllp_tls_opts tls_opts; /* strings owned (tls_strs) */
    char **tls_strs;
    size_t n_tls_strs;
};

struct reply_slot {
    uint8_t *data;  /* owned; NULL with ready=1 means "no reply" */
    size_t len;
    int ready;
};

enum conn_state {
    CONN_OPEN = 0,   /* reading frames */
    CONN_DRAINING,   /* no more reads; close once every reply is written */
    CONN_DEAD,       /* close now */
};

struct mllp_conn {
    struct mllp_server *srv;
    struct listener *ls;
    int fd;
    uint64_t id;
    enum conn_state state;
    char peer[64];
    struct sockaddr_storage addr;
    SSL *ssl;               /* NULL on plain TCP */
    int handshaking;
    int read_wants_write;   /* TLS read stalled until the socket is writable */
    X509 *peer_cert;        /* verified client certificate (owned ref) */
    char cn[128];
    uint64_t accepted_ms;
    uint64_t frame_started_ms; /* 0 when no frame is in progress */
    int lone_end_due;       /* lenient: the peer paused after a trailing 0x1C */
    struct buf rbuf, wbuf;  /* rbuf's length changes only through rbuf_consume/rbuf_account
                               (the server-wide input budget counts it) */
    struct mllp_framer framer;
    uint64_t next_seq;      /* assigned to the next frame */
    uint64_t send_seq;      /* the next reply to write */
    struct reply_slot ring[RING_CAP];
    uint64_t last_active_ms;
    uint64_t last_frame_ms;
    int readable;           /* an edge was seen and the socket not drained */
    int budget_wait;        /* paused: the server-wide input budget is spent */
    size_t drain_left;      /* draining: bytes that had arrived at the signal, still to read */
    int on_ready, on_dirty, on_dead;
    struct mllp_conn *next_ready, *next_dirty, *next_dead;
};

struct mllp_server {
    struct loop *loop;
    struct mllp_handler h;
    struct listener *ls[HB_MAX_LISTENERS_MLLP];
    size_t nls;
    struct mllp_conn **slots;
    size_t nslots;
    size_t nconns;
    uint64_t id_counter;
    uint64_t inflight;
    int draining;
    int kicked;
    /* One budget for the input held by every connection (unfinished and
     * not yet taken frames): 0 = none.  `buffered` is the sum of rbuf.len. */
    size_t max_buffered, buffered;
    size_t holders;      /* connections with rbuf.len > 0 */
    struct mllp_conn *ready, *dirty, *dead;
    struct mllp_stats st;
};

static void conn_fd_cb(void *ud, int fd, unsigned ev);
static void listener_cb(void *ud, int fd, unsigned ev);
static void before_sleep(void *ud);
static void tick(void *ud);

/* ---- lists -------------------------------------------------------------- */

static void mark_ready(struct mllp_conn *c)
{
    if (c->on_ready || c->state == CONN_DEAD)
        return;
    c->on_ready = 1;
    c->next_ready = c->srv->ready;
    c->srv->ready = c;
}

static void mark_dirty(struct mllp_conn *c)
{
    if (c->on_dirty || c->state == CONN_DEAD)
        return;
    c->on_dirty = 1;
    c->next_dirty = c->srv->dirty;
    c->srv->dirty = c;
}

static void conn_kill(struct mllp_conn *c)
{
    if (c->on_dead)
        return;
    c->state = CONN_DEAD;
    c->on_dead = 1;
    c->next_dead = c->srv->dead;
    c->srv->dead = c;
}

/* ---- replies ------------------------------------------------------------ */

static int wbuf_frame(struct mllp_conn *c, const uint8_t *msg, size_t len)
{
    uint8_t *w = buf_reserve(&c->wbuf, len + 3);
    if (!w)
        return -1;
    w[0] = MLLP_SB;
    memcpy(w + 1, msg, len);
    w[len + 1] = MLLP_EB;
    w[len + 2] = MLLP_CR;
    buf_commit(&c->wbuf, len + 3);
    return 0;
}

/* Moves every reply that is next in order from the ring to the write buffer. */
static int flush_ring(struct mllp_conn *c)
{
    while (c->send_seq < c->next_seq) {
        struct reply_slot *s = &c->ring[c->send_seq % RING_CAP];
        if (!s->ready)
            break;
        int rc = s->data ? wbuf_frame(c, s->data, s->len) : 0;
        free(s->data);
        s->data = NULL;
        s->ready = 0;
        c->send_seq++;
        c->srv->inflight--;
        if (rc != 0)
            return -1;
    }
    return 0;
}

int mllp_conn_reply(struct mllp_conn *c, uint64_t seq, const uint8_t *msg, size_t len)
{
    if (seq < c->send_seq || seq >= c->next_seq)
        return -1; /* not a frame awaiting an answer: a caller bug */
    struct reply_slot *s = &c->ring[seq % RING_CAP];
    if (s->ready)
        return -1;
    if (seq == c->send_seq) {
        /* The common case: in order, straight into the write buffer. */
        if (len && wbuf_frame(c, msg, len) != 0)
            goto fail;
        c->send_seq++;
        c->srv->inflight--;
        if (flush_ring(c) != 0)
            goto fail;
    } else {
        if (len) {
            s->data = malloc(len);
            if (!s->data)
                goto fail;
            memcpy(s->data, msg, len);
            s->len = len;
        }
        s->ready = 1;
    }
    mark_dirty(c);
    /* A full ring may have stopped reading; room again. */
    mark_ready(c);
    return 0;
fail:
    log_warn("mllp_reply_overflow", "conn=%llu peer=%s", (unsigned long long)c->id, c->peer);
    conn_kill(c);
    return -1;
}

/* ---- transport: TCP or TLS behind one pair of calls ------------------------ */

/* Like recv(2): >0 bytes, 0 orderly close, -1 with errno (EAGAIN: wait). */
static ssize_t conn_recv(struct mllp_conn *c, uint8_t *p, size_t n)
{
    if (!c->ssl)
        return recv(c->fd, p, n, 0);
    size_t got = 0;
    ERR_clear_error();
    if (SSL_read_ex(c->ssl, p, n, &got) == 1)
        return (ssize_t)got;
    int e = SSL_get_error(c->ssl, 0);
    if (e == SSL_ERROR_WANT_READ) {
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        c->read_wants_write = 1;
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = ECONNRESET;
    return -1;
}

/* Like send(2). */
static ssize_t conn_send(struct mllp_conn *c, const uint8_t *p, size_t n)
{
    if (!c->ssl)
        return send(c->fd, p, n, MSG_NOSIGNAL);
    size_t put = 0;
    ERR_clear_error();
    if (SSL_write_ex(c->ssl, p, n, &put) == 1)
        return (ssize_t)put;
    int e = SSL_get_error(c->ssl, 0);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        errno = EAGAIN;
        return -1;
    }
    errno = EPIPE;
    return -1;
}

/* Drives the TLS handshake.  Returns 1 when done (the connection may read
 * frames), 0 while it needs the socket, -1 when it failed (conn killed). */
static int conn_handshake(struct mllp_conn *c)
{
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r == 1) {
        c->handshaking = 0;
        X509 *cert = SSL_get1_peer_certificate(c->ssl);
        if (cert && SSL_get_verify_result(c->ssl) == X509_V_OK) {
            c->peer_cert = cert;
            mllp_tls_subject_cn(cert, c->cn, sizeof c->cn);
        } else {
            X509_free(cert);
        }
        const struct mllp_tls_opts *o = &c->ls->tls_opts;
        if (o->verify_client && o->n_allowed_names &&
            !mllp_tls_name_allowed(c->peer_cert, o->allowed_names, o->n_allowed_names)) {
            c->srv->st.tls_failed++;
            char q[sizeof c->cn * 6];
            log_warn("mllp_tls_refused", "conn=%llu peer=%s listener=%s reason=name_not_allowed "
                     "cn=\"%s\"", (unsigned long long)c->id, c->peer, c->ls->name,
                     log_quote(q, sizeof q, c->cn)); /* the peer wrote it */
            conn_kill(c);
            return -1;
        }
        char q[sizeof c->cn * 6];
        log_info("mllp_tls_established", "conn=%llu peer=%s listener=%s version=%s cn=\"%s\"",
                 (unsigned long long)c->id, c->peer, c->ls->name, SSL_get_version(c->ssl),
                 log_quote(q, sizeof q, c->cn));
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    unsigned long le = ERR_peek_error();
    char reason[160] = "closed";
    if (le)
        ERR_error_string_n(le, reason, sizeof reason);
    ERR_clear_error();
    c->srv->st.tls_failed++;
    log_warn("mllp_tls_refused", "conn=%llu peer=%s listener=%s reason=handshake_failed "
             "detail=\"%s\"", (unsigned long long)c->id, c->peer, c->ls->name, reason);
    conn_kill(c);
    return -1;
}

/* ---- reading ------------------------------------------------------------ */

static int conn_can_take(struct mllp_conn *c)
{
    if (c->next_seq - c->send_seq >= RING_CAP)
        return 0;
    if (c->wbuf.len >= WBUF_HIGH)
        return 0; /* the peer is not reading its ACKs: wait for it */
    if (c->srv->h.can_take && !c->srv->h.can_take(c->srv->h.ud))
        return 0;
    return 1;
}

/* Every change of a connection's rbuf length goes through these, so the
 * server-wide sum stays exact. */
static void rbuf_account(struct mllp_conn *c, size_t before)
{
    struct mllp_server *s = c->srv;
    s->buffered = s->buffered - before + c->rbuf.len;
    if (!before && c->rbuf.len)
        s->holders++;
    else if (before && !c->rbuf.len)
        s->holders--;
}

static void rbuf_consume(struct mllp_conn *c, size_t n)
{
    size_t before = c->rbuf.len;
    buf_consume(&c->rbuf, n);
    rbuf_account(c, before);
}

/* 1 when reading `want` more bytes into c stays within the budget. */
static int budget_room(const struct mllp_conn *c, size_t want)
{
    const struct mllp_server *s = c->srv;
    return !s->max_buffered || s->buffered + want <= s->max_buffered;
}

/* Answers the unfinished frame in c's buffer through `cb` (or with no reply),
 * drops the buffer and closes the connection once the answer is out. */
static void refuse_frame(struct mllp_conn *c,
                         void (*cb)(void *, struct mllp_conn *, uint64_t, const uint8_t *, size_t),
                         const uint8_t *p, size_t len)
{
    struct mllp_server *s = c->srv;
    uint64_t seq = c->next_seq++;
    s->inflight++;
    if (cb)
        cb(s->h.ud, c, seq, p, len);
    else
        (void)mllp_conn_reply(c, seq, NULL, 0);
    size_t before = c->rbuf.len;
    buf_reset(&c->rbuf);
    rbuf_account(c, before);
    c->state = CONN_DRAINING;
    c->drain_left = 0;
    mark_dirty(c);
}

/* Over the budget, a connection between frames waits (back-pressure); one
 * whose unfinished frame holds at least half its fair share of the budget
 * (budget / connections holding input) is the one to give way: its frame is answered (AR) and it is closed, so
 * the others can finish theirs.  The largest holder always qualifies, so
 * waiting cannot deadlock.  Returns 1 to wait, 0 after refusing. */
static int budget_wait_or_refuse(struct mllp_conn *c)
{
    struct mllp_server *s = c->srv;
    size_t holders = s->holders ? s->holders : 1;
    if (!c->framer.in_frame || c->rbuf.len < s->max_buffered / 2 / holders) {
        c->budget_wait = 1;
        mark_ready(c);
        return 1;
    }
    s->st.over_budget++;
    log_warn("mllp_input_budget", "conn=%llu peer=%s listener=%s held=%zu total=%zu max=%zu",
             (unsigned long long)c->id, c->peer, c->ls->name, c->rbuf.len, s->buffered,
             s->max_buffered);
    refuse_frame(c, s->h.on_over_budget, buf_data(&c->rbuf) + c->framer.start,
                 c->rbuf.len - c->framer.start);
    return 0;
}

/* Frames everything buffered, then reads more within the budget. */
static void conn_process(struct mllp_conn *c)
{
    struct mllp_server *s = c->srv;
    size_t budget = READ_BUDGET;
    c->budget_wait = 0;
    if (c->handshaking && (c->state != CONN_OPEN || conn_handshake(c) <= 0))
        return;
    for (;;) {
        if (c->state != CONN_OPEN && c->state != CONN_DRAINING)
            return;
        if (c->rbuf.len) {
            if (!conn_can_take(c)) {
                mark_ready(c); /* resumes when replies or the store free up */
                return;
            }
            struct mllp_frame fr;
            int r = mllp_framer_next(&c->framer, buf_data(&c->rbuf), c->rbuf.len, &fr);
            if (r == MLLP_MORE && c->lone_end_due) {
                c->lone_end_due = 0;
                rbuf_consume(c, fr.consumed);
                r = mllp_framer_end_lone(&c->framer, buf_data(&c->rbuf), c->rbuf.len, &fr);
            }
            if (r == MLLP_FRAME) {
                uint64_t seq = c->next_seq++;
                s->inflight++;
                s->st.frames++;
                c->last_frame_ms = c->last_active_ms;
                c->frame_started_ms = 0;
                s->h.on_frame(s->h.ud, c, seq, buf_data(&c->rbuf) + fr.off, fr.len);
                rbuf_consume(c, fr.consumed);
                continue;
            }
            if (r == MLLP_OVERSIZE) {
                s->st.oversize++;
                log_warn("mllp_frame_oversize", "conn=%llu peer=%s listener=%s max=%zu",
                         (unsigned long long)c->id, c->peer, c->ls->name, c->ls->max_message_bytes);
                refuse_frame(c, s->h.on_oversize, buf_data(&c->rbuf) + fr.off, fr.len);
                return;
            }
            rbuf_consume(c, fr.consumed);
            /* A frame has begun: it must now end within frame_timeout_s,
             * however slowly its bytes trickle in. */
            if (c->framer.in_frame && !c->frame_started_ms)
                c->frame_started_ms = clock_mono_ms();
        }
        if (c->state == CONN_DRAINING && !c->drain_left) {
            mark_dirty(c); /* close once replies are out */
            return;
        }
        if (!c->readable)
            return;
        if (budget == 0) {
            mark_ready(c);
            return;
        }
        size_t want = READ_CHUNK < budget ? READ_CHUNK : budget;
        if (c->state == CONN_DRAINING && want > c->drain_left)
            want = c->drain_left;
        if (!budget_room(c, want)) {
            budget_wait_or_refuse(c);
            return;
        }
        uint8_t *w = buf_reserve(&c->rbuf, want);
        if (!w) {
            /* Cannot happen while the framer enforces the ceiling first. */
            conn_kill(c);
            return;
        }
        ssize_t n = conn_recv(c, w, want);
        if (n > 0) {
            buf_commit(&c->rbuf, (size_t)n);
            rbuf_account(c, c->rbuf.len - (size_t)n);
            budget -= (size_t)n;
            if (c->state == CONN_DRAINING)
                c->drain_left -= (size_t)n < c->drain_left ? (size_t)n : c->drain_left;
            s->st.bytes_in += (uint64_t)n;
            c->last_active_ms = clock_mono_ms();
            continue;
        }
        if (n == 0) {
            /* Peer half-closed: answer what it sent, then close. */
            c->readable = 0;
            c->state = CONN_DRAINING;
            c->drain_left = 0;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->readable = 0;
            c->drain_left = 0; /* nothing more had arrived */
            return;
        }
        if (errno == EINTR)
            continue;
        conn_kill(c);
        return;
    }
}

/* The peer read some replies: if it was paused for a full write buffer,
 * it may take frames again (this may run after the before-sleep hook has
 * walked the ready list, hence the no-sleep). */
static void conn_resume_reading(struct mllp_conn *c)
{
    if (c->state == CONN_OPEN && (c->readable || c->rbuf.len) && conn_can_take(c)) {
        mark_ready(c);
        loop_no_sleep(c->srv->loop);
    }
}

static void conn_flush(struct mllp_conn *c)
{
    int was_full = c->wbuf.len >= WBUF_HIGH;
    while (c->wbuf.len) {
        ssize_t n = conn_send(c, buf_data(&c->wbuf), c->wbuf.len);
        if (n > 0) {
            buf_consume(&c->wbuf, (size_t)n);
            c->srv->st.bytes_out += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (was_full)
                conn_resume_reading(c);
            return; /* EPOLLOUT edge will call us again */
        }
        conn_kill(c);
        return;
    }
    if (was_full)
        conn_resume_reading(c);
    if (c->state == CONN_DRAINING && c->send_seq == c->next_seq && !c->drain_left)
        conn_kill(c);
}

static void conn_fd_cb(void *ud, int fd, unsigned ev)
{
    (void)fd;
    struct mllp_conn *c = ud;
    if (c->state == CONN_DEAD)
        return;
    if (c->handshaking) {
        conn_process(c);
        return;
    }
    if ((ev & LOOP_WRITE) && c->read_wants_write) {
        c->read_wants_write = 0;
        ev |= LOOP_READ;
    }
    if (ev & LOOP_WRITE)
        conn_flush(c);
    if (ev & LOOP_READ) {
        c->readable = 1;
        conn_process(c);
    }
    if (c->wbuf.len)
        mark_dirty(c);
}

/* Takes a connection off the ready and dirty lists (it may have been put
 * back on one after it was marked dead, e.g. by a reply written while the
 * dead list was pending). */
static void unlink_lists(struct mllp_conn *c)
{
    struct mllp_server *s = c->srv;
    if (c->on_ready) {
        for (struct mllp_conn **pp = &s->ready; *pp; pp = &(*pp)->next_ready) {
            if (*pp == c) {
                *pp = c->next_ready;
                break;
            }
        }
        c->on_ready = 0;
    }
    if (c->on_dirty) {
        for (struct mllp_conn **pp = &s->dirty; *pp; pp = &(*pp)->next_dirty) {
            if (*pp == c) {
                *pp = c->next_dirty;
                break;
            }
        }
        c->on_dirty = 0;
    }
}

static void conn_free(struct mllp_conn *c)
{
    struct mllp_server *s = c->srv;
    unlink_lists(c);
    if (s->h.on_close)
        s->h.on_close(s->h.ud, c);
    loop_del(s->loop, c->fd);
    if (c->ssl) {
        if (!c->handshaking && c->state != CONN_DEAD)
            SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    X509_free(c->peer_cert);
    close(c->fd);
    s->inflight -= c->next_seq - c->send_seq;
    s->st.garbage_bytes += c->framer.garbage;
    s->st.restarts += c->framer.restarts;
    for (size_t i = 0; i < RING_CAP; i++)
        free(c->ring[i].data);
    size_t before = c->rbuf.len;
    buf_reset(&c->rbuf);
    rbuf_account(c, before);
    buf_release(&c->rbuf);
    buf_release(&c->wbuf);
    s->slots[c->id & SLOT_MASK] = NULL;
    s->nconns--;
    s->st.current = s->nconns;
    c->ls->nconns--;
    log_debug("mllp_conn_close", "conn=%llu peer=%s", (unsigned long long)c->id, c->peer);
    free(c);
}

/* ---- before sleep, tick ------------------------------------------------- */

static void before_sleep(void *ud)
{
    struct mllp_server *s = ud;
    /* Connections with work left: walk a detached list, since processing
     * may put a connection back on it. */
    struct mllp_conn *r = s->ready;
    s->ready = NULL;
    s->kicked = 0;
    while (r) {
        struct mllp_conn *next = r->next_ready;
        r->on_ready = 0;
        r->next_ready = NULL;
        conn_process(r);
        if (r->wbuf.len)
            mark_dirty(r);
        r = next;
    }
    /* If anything is still ready and can make progress, do not sleep. */
    for (struct mllp_conn *c = s->ready; c; c = c->next_ready) {
        int progress = c->budget_wait ? budget_room(c, READ_CHUNK)
                                      : (c->readable || c->rbuf.len);
        if (conn_can_take(c) && progress) {
            loop_no_sleep(s->loop);
            break;
        }
    }
    struct mllp_conn *d = s->dirty;
    s->dirty = NULL;
    while (d) {
        struct mllp_conn *next = d->next_dirty;
        d->on_dirty = 0;
        d->next_dirty = NULL;
        if (d->state != CONN_DEAD)
            conn_flush(d);
        d = next;
    }
    struct mllp_conn *x = s->dead;
    s->dead = NULL;
    while (x) {
        struct mllp_conn *next = x->next_dead;
        conn_free(x);
        x = next;
    }
    s->st.current = s->nconns;
}

static void tick(void *ud)
{
    struct mllp_server *s = ud;
    uint64_t now = clock_mono_ms();
    for (size_t i = 0; i < s->nslots; i++) {
        struct mllp_conn *c = s->slots[i];
        if (!c || c->state == CONN_DEAD)
            continue;
        if (c->handshaking) {
            if (now - c->accepted_ms > (uint64_t)c->ls->handshake_timeout_s * 1000u) {
                s->st.tls_handshake_timeout++;
                log_warn("mllp_tls_refused", "conn=%llu peer=%s listener=%s reason=handshake_timeout",
                         (unsigned long long)c->id, c->peer, c->ls->name);
                conn_kill(c);
            }
            continue;
        }
        if (c->frame_started_ms &&
            now - c->frame_started_ms > (uint64_t)c->ls->frame_timeout_s * 1000u) {
            s->st.closed_frame_timeout++;
            log_warn("mllp_frame_timeout", "conn=%llu peer=%s listener=%s timeout_s=%u",
                     (unsigned long long)c->id, c->peer, c->ls->name, c->ls->frame_timeout_s);
            conn_kill(c);
            continue;
        }
        if (c->framer.lenient && c->framer.in_frame && c->rbuf.len &&
            buf_data(&c->rbuf)[c->rbuf.len - 1] == MLLP_EB &&
            now - c->last_active_ms >= LONE_END_PAUSE_MS) {
            c->lone_end_due = 1;
            mark_ready(c);
        }
        if (c->next_seq != c->send_seq)
            continue; /* waiting on us, not on the peer */
        /* Idle means no complete frame: bytes that never make one (a
         * trickle of garbage) do not keep a connection alive. */
        uint64_t since = c->last_frame_ms ? c->last_frame_ms : c->accepted_ms;
        if (now - since > (uint64_t)c->ls->idle_timeout_s * 1000u) {
            s->st.closed_idle++;
            log_info("mllp_conn_idle_timeout", "conn=%llu peer=%s listener=%s idle_s=%u",
                     (unsigned long long)c->id, c->peer, c->ls->name, c->ls->idle_timeout_s);
            conn_kill(c);
        }
    }
}

/* ---- accept ------------------------------------------------------------- */

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    /* ss was filled by accept4(); the analyzer cannot see that */
    if (ss->ss_family == AF_INET) { // NOLINT(clang-analyzer-core.UndefinedBinaryOperatorResult)
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, cap, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, cap, "[%s]:%u", host, port);
    } else {
        snprintf(out, cap, "unknown");
    }
}

static int alloc_slot(struct mllp_server *s, size_t *out)
{
    for (size_t i = 0; i < s->nslots; i++) {
        if (!s->slots[i]) {
            *out = i;
            return 0;
        }
    }
    size_t n = s->nslots ? s->nslots * 2 : 64;
    if (n > SLOT_MASK + 1u)
        return -1;
    struct mllp_conn **ns = realloc(s->slots, n * sizeof *ns);
    if (!ns)
        return -1;
    memset(ns + s->nslots, 0, (n - s->nslots) * sizeof *ns);
    *out = s->nslots;
    s->slots = ns;
    s->nslots = n;
    return 0;
}

static int cidr_parse(const char *text, struct cidr *out)
{
    char addr[64];
    const char *slash = strchr(text, '/');
    size_t al = slash ? (size_t)(slash - text) : strlen(text);
    if (al == 0 || al >= sizeof addr)
        return -1;
    memcpy(addr, text, al);
    addr[al] = '\0';
    memset(out, 0, sizeof *out);
    out->family = strchr(addr, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(out->family, addr, out->addr) != 1)
        return -1;
    unsigned maxp = out->family == AF_INET ? 32 : 128;
    out->prefix = maxp;
    if (slash) {
        uint64_t p;
        if (num_parse_u64((const uint8_t *)slash + 1, strlen(slash + 1), maxp, &p) != 0)
            return -1;
        out->prefix = (unsigned)p;
    }
    return 0;
}

/* The address bytes of a peer; IPv4-mapped IPv6 addresses count as IPv4. */
static int peer_bytes(const struct sockaddr_storage *ss, const uint8_t **p)
{
    if (ss->ss_family == AF_INET) {
        *p = (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr;
        return AF_INET;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
        *p = a6->s6_addr + 12;
        return AF_INET;
    }
    *p = a6->s6_addr;
    return AF_INET6;
}

static int cidr_match(const struct cidr *c, const struct sockaddr_storage *ss)
{
    const uint8_t *a;
    if (peer_bytes(ss, &a) != c->family)
        return 0;
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(a, c->addr, full) != 0)
        return 0;
    if (rest) {
        uint8_t mask = (uint8_t)(0xFFu << (8 - rest));
        if ((a[full] & mask) != (c->addr[full] & mask))
            return 0;
    }
    return 1;
}

static int listener_allows(const struct listener *ls, const struct sockaddr_storage *ss)
{
    if (ls->n_allow == 0)
        return 1;
    for (size_t i = 0; i < ls->n_allow; i++)
        if (cidr_match(&ls->allow[i], ss))
            return 1;
    return 0;
}

static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    const uint8_t *pa, *pb;
    int fa = peer_bytes(a, &pa), fb = peer_bytes(b, &pb);
    return fa == fb && memcmp(pa, pb, fa == AF_INET ? 4 : 16) == 0;
}

static unsigned conns_from(const struct mllp_server *s, const struct listener *ls,
                           const struct sockaddr_storage *ss)
{
    unsigned n = 0;
    for (size_t i = 0; i < s->nslots; i++) {
        const struct mllp_conn *c = s->slots[i];
        if (c && c->ls == ls && c->state != CONN_DEAD && same_ip(&c->addr, ss))
            n++;
    }
    return n;
}

static void listener_cb(void *ud, int lfd, unsigned ev)
{
    (void)ev;
    struct listener *ls = ud;
    struct mllp_server *s = ls->srv;
    for (int i = 0; i < ACCEPTS_PER_TURN; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("mllp_accept_failed", "listener=%s errno=%d", ls->name, errno);
            return;
        }
        char peer[64];
        format_peer(&ss, peer, sizeof peer);
        /* Refused before any byte is read. */
        if (!listener_allows(ls, &ss)) {
            s->st.refused_allow++;
            log_warn("mllp_conn_refused", "listener=%s peer=%s reason=not_allowed", ls->name, peer);
            close(fd);
            continue;
        }
        if (ls->max_per_ip && conns_from(s, ls, &ss) >= ls->max_per_ip) {
            s->st.refused_per_ip++;
            log_warn("mllp_conn_refused", "listener=%s peer=%s reason=max_connections_per_ip "
                     "limit=%u", ls->name, peer, ls->max_per_ip);
            close(fd);
            continue;
        }
        size_t slot;
        if (ls->nconns >= ls->max_connections || alloc_slot(s, &slot) != 0) {
            s->st.refused_limit++;
            log_warn("mllp_conn_refused", "listener=%s peer=%s reason=max_connections limit=%u",
                     ls->name, peer, ls->max_connections);
            close(fd);
            continue;
        }
        struct mllp_conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (mllp_keepalive_set(fd, &ls->keepalive) != 0)
            log_warn("mllp_keepalive_failed", "listener=%s peer=%s errno=%d", ls->name, peer,
                     errno);
        c->srv = s;
        c->ls = ls;
        c->fd = fd;
        c->id = (++s->id_counter << SLOT_BITS) | slot;
        memcpy(c->peer, peer, sizeof c->peer);
        c->addr = ss;
        c->accepted_ms = clock_mono_ms();
        if (ls->tls) {
            c->ssl = SSL_new(ls->tls);
            if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
                SSL_free(c->ssl);
                free(c);
                close(fd);
                s->st.tls_failed++;
                continue;
            }
            c->handshaking = 1;
        }
        /* Room for one whole message plus the read chunk in flight, so the
         * framer always reports oversize before the buffer refuses bytes. */
        buf_init(&c->rbuf, ls->max_message_bytes + READ_CHUNK + 16u);
        buf_init(&c->wbuf, WBUF_MAX);
        mllp_framer_init(&c->framer, ls->max_message_bytes);
        mllp_framer_set_lenient(&c->framer, ls->frame_end_lenient);
        c->last_active_ms = clock_mono_ms();
        if (loop_add(s->loop, fd, LOOP_READ | LOOP_WRITE | LOOP_EDGE, conn_fd_cb, c) != 0) {
            SSL_free(c->ssl);
            buf_release(&c->rbuf);
            buf_release(&c->wbuf);
            free(c);
            close(fd);
            continue;
        }
        s->slots[slot] = c;
        s->nconns++;
        ls->nconns++;
        s->st.accepted++;
        s->st.current = s->nconns;
        log_debug("mllp_conn_open", "conn=%llu peer=%s listener=%s", (unsigned long long)c->id,
                  peer, ls->name);
        if (s->draining)
            c->state = CONN_DRAINING;
        /* Data may already be waiting: the edge fired before we registered. */
        c->readable = 1;
        mark_ready(c);
    }
}

/* ---- server ------------------------------------------------------------- */

struct mllp_server *mllp_server_new(struct loop *l, const struct mllp_handler *h)
{
    struct mllp_server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->loop = l;
    s->h = *h;
    loop_set_before_sleep(l, before_sleep, s);
    loop_set_tick(l, 1000, tick, s);
    return s;
}

void mllp_server_stop_accepting(struct mllp_server *s)
{
    for (size_t i = 0; i < s->nls; i++) {
        if (s->ls[i]->fd >= 0) {
            loop_del(s->loop, s->ls[i]->fd);
            close(s->ls[i]->fd);
            s->ls[i]->fd = -1;
        }
    }
}

static void listener_free(struct listener *ls)
{
    if (!ls)
        return;
    SSL_CTX_free(ls->tls);
    for (size_t i = 0; i < ls->n_tls_strs; i++)
        free(ls->tls_strs[i]);
    free(ls->tls_strs);
    free(ls->allow);
    free(ls);
}

/* Keeps a copy of a string for the listener's lifetime (TLS reload needs
 * the file names after the caller's options are gone). */
static const char *keep(struct listener *ls, const char *v)
{
    if (!v)
        return NULL;
    char **ns = realloc(ls->tls_strs, (ls->n_tls_strs + 1) * sizeof *ns);
    if (!ns)
        return NULL;
    ls->tls_strs = ns;
    char *d = strdup(v);
    if (d)
        ls->tls_strs[ls->n_tls_strs++] = d;
    return d;
}

static int listener_tls_init(struct listener *ls, const struct mllp_tls_opts *o, char *errbuf,
                             size_t errcap)
{
    ls->tls_opts = *o;
    ls->tls_opts.cert_file = keep(ls, o->cert_file);
    ls->tls_opts.key_file = keep(ls, o->key_file);
    ls->tls_opts.client_ca_file = keep(ls, o->client_ca_file);
    const char **names = NULL;
    if (o->n_allowed_names) {
        /* The array itself lives in tls_strs too, as one block. */
        names = calloc(o->n_allowed_names, sizeof *names);
        if (!names)
            return -1;
        char **ns = realloc(ls->tls_strs, (ls->n_tls_strs + 1) * sizeof *ns);
        if (!ns) {
            free(names);
            return -1;
        }
        ls->tls_strs = ns;
        ls->tls_strs[ls->n_tls_strs++] = (char *)names;
        for (size_t i = 0; i < o->n_allowed_names; i++)
            names[i] = keep(ls, o->allowed_names[i]);
    }
    ls->tls_opts.allowed_names = names;
    ls->tls = mllp_tls_ctx_new(&ls->tls_opts, errbuf, errcap);
    return ls->tls ? 0 : -1;
}

int mllp_server_reload_tls(struct mllp_server *s, char *errbuf, size_t errcap)
{
    SSL_CTX *fresh[HB_MAX_LISTENERS_MLLP] = { 0 };
    for (size_t i = 0; i < s->nls; i++) {
        if (!s->ls[i]->tls)
            continue;
        fresh[i] = mllp_tls_ctx_new(&s->ls[i]->tls_opts, errbuf, errcap);
        if (!fresh[i]) {
            for (size_t j = 0; j < i; j++)
                SSL_CTX_free(fresh[j]);
            return -1;
        }
    }
    /* All built: swap.  Open connections hold their own reference. */
    for (size_t i = 0; i < s->nls; i++) {
        if (fresh[i]) {
            SSL_CTX_free(s->ls[i]->tls);
            s->ls[i]->tls = fresh[i];
        }
    }
    return 0;
}

void mllp_server_free(struct mllp_server *s)
{
    if (!s)
        return;
    mllp_server_stop_accepting(s);
    for (size_t i = 0; i < s->nslots; i++) {
        if (s->slots[i])
            conn_free(s->slots[i]);
    }
    for (size_t i = 0; i < s->nls; i++)
        listener_free(s->ls[i]);
    free(s->slots);
    free(s);
}

int mllp_server_listen(struct mllp_server *s, const struct mllp_listener_opts *o, char *errbuf,
                       size_t errcap)
{
    if (s->nls >= HB_MAX_LISTENERS_MLLP) {
        snprintf(errbuf, errcap, "too many listeners");
        return -1;
    }
    int fd = net_listen(o->host, o->port, 1, NULL, errbuf, errcap);
    if (fd < 0)
        return -1;
    struct listener *ls = calloc(1, sizeof *ls);
    if (!ls) {
        close(fd);
        snprintf(errbuf, errcap, "out of memory");
        return -1;
    }
    ls->srv = s;
    ls->fd = fd;
    snprintf(ls->name, sizeof ls->name, "%s", o->name ? o->name : "main");
    ls->max_connections = o->max_connections ? o->max_connections : 512;
    ls->max_message_bytes = o->max_message_bytes ? o->max_message_bytes : (16u << 20);
    ls->idle_timeout_s = o->idle_timeout_s ? o->idle_timeout_s : 600;
    ls->user = o->user;
    ls->max_per_ip = o->max_connections_per_ip;
    ls->handshake_timeout_s = o->handshake_timeout_s ? o->handshake_timeout_s : 10;
    ls->frame_timeout_s = o->frame_timeout_s ? o->frame_timeout_s : 60;
    ls->frame_end_lenient = o->frame_end_lenient;
    ls->keepalive = o->keepalive;
    if (o->n_allow) {
        ls->allow = calloc(o->n_allow, sizeof *ls->allow);
        for (size_t i = 0; ls->allow && i < o->n_allow; i++) {
            if (cidr_parse(o->allow[i], &ls->allow[i]) != 0) {
                snprintf(errbuf, errcap, "bad CIDR '%s' in allow", o->allow[i]);
                close(fd);
                listener_free(ls);
                return -1;
            }
        }
        ls->n_allow = ls->allow ? o->n_allow : 0;
    }
    if (o->tls && listener_tls_init(ls, o->tls, errbuf, errcap) != 0) {
        close(fd);
        listener_free(ls);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        /* filled by getsockname(), which succeeded */
        // NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult)
        ls->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    if (loop_add(s->loop, fd, LOOP_READ, listener_cb, ls) != 0) {
        snprintf(errbuf, errcap, "epoll: %s", strerror(errno));
        close(fd);
        listener_free(ls);
        return -1;
    }
    s->ls[s->nls++] = ls;
    return 0;
}

unsigned mllp_server_port(const struct mllp_server *s, size_t i)
{
    return i < s->nls ? s->ls[i]->port : 0;
}

uint64_t mllp_server_inflight(const struct mllp_server *s) { return s->inflight; }
size_t mllp_server_conn_count(const struct mllp_server *s) { return s->nconns; }

size_t mllp_server_active_conns(const struct mllp_server *s, uint64_t within_ms)
{
    uint64_t now = clock_mono_ms();
    size_t n = 0;
    for (size_t i = 0; i < s->nslots; i++) {
        const struct mllp_conn *c = s->slots[i];
        if (c && c->state != CONN_DEAD && c->last_frame_ms && now - c->last_frame_ms <= within_ms)
            n++;
    }
    return n;
}

void mllp_server_drain(struct mllp_server *s)
{
    s->draining = 1;
    for (size_t i = 0; i < s->nslots; i++) {
        struct mllp_conn *c = s->slots[i];
        if (c && c->state == CONN_OPEN) {
            /* Frames the peer sent before the signal are in flight too:
             * what its socket holds now is still read and answered (on
             * plain TCP; over TLS, what was decrypted into our buffer). */
            int avail = 0;
            if (!c->ssl && !c->handshaking && ioctl(c->fd, FIONREAD, &avail) == 0 && avail > 0)
                c->drain_left = (size_t)avail;
            c->state = CONN_DRAINING;
            mark_ready(c);
            mark_dirty(c);
        }
    }
    loop_no_sleep(s->loop);
}

void mllp_server_get_stats(const struct mllp_server *s, struct mllp_stats *out)
{
    /* Closed connections' framer counts were folded into st at close. */
    *out = s->st;
    for (size_t i = 0; i < s->nslots; i++) {
        if (s->slots[i]) {
            out->garbage_bytes += s->slots[i]->framer.garbage;
            out->restarts += s->slots[i]->framer.restarts;
        }
    }
}

void mllp_server_set_max_buffered(struct mllp_server *s, size_t bytes)
{
    s->max_buffered = bytes;
}

size_t mllp_server_buffered(const struct mllp_server *s)
{
    return s->buffered;
}

void mllp_server_kick(struct mllp_server *s)
{
    if (s->ready) {
        s->kicked = 1;
        loop_no_sleep(s->loop);
    }
}

uint64_t mllp_conn_id(const struct mllp_conn *c) { return c->id; }

struct mllp_conn *mllp_server_conn(struct mllp_server *s, uint64_t id)
{
    size_t slot = id & SLOT_MASK;
    if (slot >= s->nslots)
        return NULL;
    struct mllp_conn *c = s->slots[slot];
    return (c && c->id == id && c->state != CONN_DEAD) ? c : NULL;
}

const char *mllp_conn_peer(const struct mllp_conn *c) { return c->peer; }
void *mllp_conn_listener_user(const struct mllp_conn *c) { return c->ls->user; }
const char *mllp_conn_listener_name(const struct mllp_conn *c) { return c->ls->name; }

const char *mllp_conn_tls_name(const struct mllp_conn *c)
{
    return c->peer_cert && c->cn[0] ? c->cn : NULL;
}

int mllp_conn_cert_matches(const struct mllp_conn *c, const char *name)
{
    return c->peer_cert ? mllp_tls_name_allowed(c->peer_cert, &name, 1) : 0;
}
