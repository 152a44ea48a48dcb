/* mllp — MLLP transport: framing, listeners and connections, and a blocking
 * client for `hl7bridge send` and the tests.  Moves frames, knows nothing of
 * HL7 fields.
 *
 * Frames are 0x0B <message> 0x1C 0x0D.  The framer resumes from its saved
 * offset (never rescans), skips and counts bytes outside frames, restarts on
 * a 0x0B inside an unfinished frame (the sender gave that frame up), and
 * reports a frame longer than the ceiling as oversize.
 *
 * The server runs on one thread's core/loop: edge-triggered non-blocking
 * sockets, a read budget per connection per turn so no peer starves the
 * others, and replies written in frame order whatever order they become
 * ready in (pipelined senders get every ACK, in order). */
#ifndef MLLP_MLLP_H
#define MLLP_MLLP_H

#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

#define MLLP_SB 0x0B
#define MLLP_EB 0x1C
#define MLLP_CR 0x0D

/* ---- framer ----------------------------------------------------------- */

struct mllp_framer {
    size_t max;       /* ceiling on one message's length */
    size_t scan;      /* next byte to look at, relative to the buffer start */
    size_t start;     /* offset of the message (after 0x0B) when in_frame */
    int in_frame;
    int lenient;      /* frame_end: lenient (see mllp_framer_set_lenient) */
    uint64_t garbage; /* bytes skipped outside frames, total */
    uint64_t restarts;/* frames abandoned by a new 0x0B, total */
};

struct mllp_frame {
    size_t consumed;  /* bytes the caller may drop from the buffer's front */
    size_t off, len;  /* the message (without framing) within the buffer */
};

void mllp_framer_init(struct mllp_framer *f, size_t max_message_bytes);
/* Lenient end (for engines that end frames with 0x1C alone): 0x1C followed
 * by 0x0B also ends a frame, and mllp_framer_end_lone may end one at a
 * trailing 0x1C.  Strict (the default): only 0x1C 0x0D ends a frame. */
void mllp_framer_set_lenient(struct mllp_framer *f, int lenient);

enum { MLLP_FRAME = 1, MLLP_MORE = 0, MLLP_OVERSIZE = -1 };

/* Looks for the next frame in buf[0..len), the caller's unconsumed bytes
 * (the same bytes as last time plus any appended since, minus what the
 * caller consumed as told).  Returns MLLP_FRAME with *out filled (drop
 * out->consumed bytes after using the message); MLLP_MORE when the frame is
 * incomplete (drop out->consumed garbage bytes now, possibly 0);
 * MLLP_OVERSIZE when the message in progress exceeds the ceiling (out->off
 * and out->len give its start, so an AR can echo its control id; the caller
 * closes the connection). */
int mllp_framer_next(struct mllp_framer *f, const uint8_t *buf, size_t len, struct mllp_frame *out);
/* Lenient framers only, after the peer paused with no further byte: when the
 * last byte of buf[0..len) is a 0x1C that ends the frame in progress, returns
 * MLLP_FRAME (or MLLP_OVERSIZE) as mllp_framer_next would; otherwise
 * MLLP_MORE with nothing consumed.  Same buffer contract. */
int mllp_framer_end_lone(struct mllp_framer *f, const uint8_t *buf, size_t len,
                         struct mllp_frame *out);

/* ---- server ----------------------------------------------------------- */

struct mllp_server;
struct mllp_conn;

/* TLS on a listener (OpenSSL): TLS 1.2 or newer only. */
struct mllp_tls_opts {
    const char *cert_file, *key_file;
    const char *client_ca_file;       /* CAs for client certificates */
    int verify_client;                /* require a client certificate from client_ca_file */
    int min_tls13;                    /* refuse TLS 1.2 as well */
    const char *const *allowed_names; /* CN/SAN names let in (n 0: any verified) */
    size_t n_allowed_names;
};

/* Loads the certificate, key and client CAs of `o` as a listener would,
 * then lets them go: 0, or -1 with the reason in errbuf (`check`). */
int mllp_tls_check(const struct mllp_tls_opts *o, char *errbuf, size_t errcap)
    __attribute__((warn_unused_result));

struct mllp_listener_opts {
    const struct mllp_tls_opts *tls;  /* NULL: plain TCP */
    const char *const *allow;         /* CIDRs let in (n 0: anyone) */
    size_t n_allow;
    unsigned max_connections_per_ip;  /* 0: no limit */
    unsigned handshake_timeout_s;     /* 0 → 10 */
    unsigned frame_timeout_s;         /* a started frame must end within; 0 → 60 */
    int frame_end_lenient;            /* 0x1C alone ends a frame (after a pause) */
    const char *name;
    const char *host;          /* numeric IPv4/IPv6 or a host name */
    unsigned port;             /* 0 → ephemeral (tests) */
    unsigned max_connections;
    size_t max_message_bytes;
    unsigned idle_timeout_s;
    /* TCP keep-alive on accepted connections (all zero: the kernel's default,
     * normally off) */
    struct mllp_keepalive {
        int enabled;
        unsigned idle_s, interval_s, count;
    } keepalive;
    void *user;                /* handed back with every frame of this listener */
};

struct mllp_handler {
    /* A complete frame.  The handler must answer it exactly once with
     * mllp_conn_reply(…, seq, …), now or later (after the store commits).
     * The bytes are valid only during the call. */
    void (*on_frame)(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *msg, size_t len);
    /* A frame over max_message_bytes: reply to `seq` (typically AR); the
     * connection is closed once that reply is written. `prefix` is the part
     * received so far. */
    void (*on_oversize)(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *prefix,
                        size_t len);
    /* The server-wide input budget (mllp_server_set_max_buffered) is spent
     * and this connection's unfinished frame is the one to give way: reply
     * to `seq` (typically AR); the connection is closed once that reply is
     * written.  NULL: closed without a reply. */
    void (*on_over_budget)(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *prefix,
                           size_t len);
    /* Back-pressure: return 0 while no new frame may be taken (the store
     * queue is full); reading resumes when it returns non-zero again. */
    int (*can_take)(void *ud);
    /* Connection closed (for per-connection state the handler keeps). */
    void (*on_close)(void *ud, struct mllp_conn *c);
    void *ud;
};

/* Counters, totals since start (network thread; read racily elsewhere). */
struct mllp_stats {
    uint64_t accepted, refused_limit, closed_idle, current;
    uint64_t refused_allow, refused_per_ip;
    uint64_t tls_failed, tls_handshake_timeout, closed_frame_timeout;
    uint64_t frames, oversize, garbage_bytes, restarts;
    uint64_t bytes_in, bytes_out;
    uint64_t over_budget;  /* unfinished frames refused for the input budget */
};

struct mllp_server *mllp_server_new(struct loop *l, const struct mllp_handler *h);
/* Stops listening, closes every connection at once, frees. NULL is a no-op. */
void mllp_server_free(struct mllp_server *s);
/* Binds and listens.  Returns 0, or -1 with a message in errbuf. */
int mllp_server_listen(struct mllp_server *s, const struct mllp_listener_opts *o, char *errbuf,
                       size_t errcap) __attribute__((warn_unused_result));
/* The port listener `i` (in listen order) is bound to (for port 0). */
unsigned mllp_server_port(const struct mllp_server *s, size_t i);
/* Closes the listening sockets (drain: connections stay until done). */
void mllp_server_stop_accepting(struct mllp_server *s);
/* Frames taken but not yet answered, all connections. */
uint64_t mllp_server_inflight(const struct mllp_server *s);
/* Stops reading from every connection and closes each once its replies are
 * written (SIGTERM drain). */
void mllp_server_drain(struct mllp_server *s);
/* Connections that delivered a frame within the last `within_ms`. */
size_t mllp_server_active_conns(const struct mllp_server *s, uint64_t within_ms);
/* Number of open connections. */
size_t mllp_server_conn_count(const struct mllp_server *s);
void mllp_server_get_stats(const struct mllp_server *s, struct mllp_stats *out);
/* One budget for the input all connections hold (unfinished frames and
 * frames not yet taken), in bytes; 0 = none.  Past it, connections between
 * frames stop reading until it frees up; a connection whose unfinished
 * frame holds a large share of it (the largest always does) gets
 * on_over_budget and is closed, so waiting cannot deadlock. */
void mllp_server_set_max_buffered(struct mllp_server *s, size_t bytes);
/* Bytes held now, all connections. */
size_t mllp_server_buffered(const struct mllp_server *s);
/* Re-examines connections that stopped reading for back-pressure; call when
 * can_take may have turned true (e.g. after store results were taken). */
void mllp_server_kick(struct mllp_server *s);

/* Connections are referred to across threads and time by a 64-bit id that
 * is never reused; lookup returns NULL once the connection is gone. */
uint64_t mllp_conn_id(const struct mllp_conn *c);
struct mllp_conn *mllp_server_conn(struct mllp_server *s, uint64_t id);
const char *mllp_conn_peer(const struct mllp_conn *c);     /* "ip:port" */
void *mllp_conn_listener_user(const struct mllp_conn *c);  /* opts.user */
const char *mllp_conn_listener_name(const struct mllp_conn *c);

/* TLS: the peer certificate's subject CN (verified clients only), else NULL. */
const char *mllp_conn_tls_name(const struct mllp_conn *c);
/* 1 when the verified peer certificate matches `name` (SAN DNS names, or the
 * CN when the certificate has none). 0 for plain or unverified peers. */
int mllp_conn_cert_matches(const struct mllp_conn *c, const char *name);
/* Rebuilds every TLS listener's context from its files (SIGHUP): new
 * connections use the new certificates, open ones keep theirs.  On error the
 * old contexts stay and errbuf says why.  Returns 0 or -1. */
int mllp_server_reload_tls(struct mllp_server *s, char *errbuf, size_t errcap);

/* Answers frame `seq` with `len` bytes of message (framed here).  Replies
 * are written in seq order.  len 0 means "no reply for this frame" (enhanced
 * mode NE).  Returns 0, or -1 if the connection cannot hold it (it is then
 * closed). */
int mllp_conn_reply(struct mllp_conn *c, uint64_t seq, const uint8_t *msg, size_t len);

/* ---- client (blocking, with timeouts) -------------------------------- */

/* Connects to "host:port" ([v6]:port accepted).  Returns a socket or -1 with
 * errbuf filled. */
int mllp_client_connect(const char *addr, int timeout_ms, char *errbuf, size_t errcap);
/* Sends one message framed.  Returns 0 or -1. */
int mllp_client_send(int fd, const uint8_t *msg, size_t len, int timeout_ms);

struct mllp_client_rx {
    struct mllp_framer framer;
    uint8_t *buf;
    size_t len, cap;
    size_t pending; /* bytes of the frame last returned, dropped on the next call */
};
void mllp_client_rx_init(struct mllp_client_rx *rx, size_t max);
void mllp_client_rx_release(struct mllp_client_rx *rx);
/* Waits for the next frame.  Returns 1 with *msg and *len pointing into rx
 * (valid until the next call), 0 on timeout, -1 on close or error. */
int mllp_client_recv(int fd, struct mllp_client_rx *rx, int timeout_ms, const uint8_t **msg,
                     size_t *len);

/* Splits "host:port" / "[v6]:port".  Returns 0 or -1. */
int mllp_parse_addr(const char *addr, char *host, size_t hostcap, unsigned *port);

#endif
