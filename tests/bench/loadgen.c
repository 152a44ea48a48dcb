/* MLLP load generator for `make bench`.
 *
 *   loadgen --addr HOST:PORT --conns N --window W --messages M --file MSG.hl7
 *           [--interval S] [--max-seconds T]
 *
 * Opens N connections and keeps W messages in flight on each (W = 1 is the
 * usual send-and-wait engine; W > 1 pipelines) until M messages have been
 * acknowledged.  Each message gets a unique MSH-10, unique across runs too
 * (a per-run tag), so a storing receiver never takes a second run against
 * the same store for duplicates and measures real inserts.  Checks that
 * every ACK's MSA-2 matches the message it answers, in order, and prints
 * one line of figures:
 *   messages=… seconds=… rate=… p50_us=… p99_us=… max_us=… aa=… not_aa=… errors=…
 * With --interval S (for `make soak`) it also prints, every S seconds, the
 * figures of the messages acknowledged in that interval, and at the end the
 * figures of each tenth of the messages, so a long run shows whether it
 * slowed down:
 *   interval t=… messages=… rate=… p50_us=… p99_us=… max_us=…
 *   tenth k=1..10 seconds=… rate=… p50_us=… p99_us=… max_us=…
 * The run stops after T seconds (default 600) whatever it reached.
 * Single thread, epoll, non-blocking sockets. */
#include "core/clock.h"
#include "core/num.h"
#include "mllp/mllp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CTRL_WIDTH 20

struct lconn {
    int fd;
    unsigned id;
    uint64_t sent, acked;
    uint64_t *t_sent;      /* ring of send times, window entries */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    struct mllp_client_rx rx;
};

static uint8_t *tmpl;
static size_t tmpl_len, ctrl_off, ctrl_len;
static unsigned window = 1;
static uint64_t target, total_sent, total_acked, aa, not_aa, errors;
static uint64_t *lat;     /* ACK latencies in µs, in the order the ACKs came */
static size_t nlat;
static uint64_t *scratch; /* an interval's latencies, sorted there */
static uint64_t tenth_ns[10];
static unsigned tenths_seen;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Locates MSH-10 in the template so each message can carry its own id. */
static int find_ctrl(void)
{
    if (tmpl_len < 8 || memcmp(tmpl, "MSH", 3) != 0)
        return -1;
    uint8_t fs = tmpl[3];
    unsigned field = 1;
    for (size_t i = 3; i < tmpl_len && tmpl[i] != '\r'; i++) {
        if (tmpl[i] == fs) {
            field++;
            if (field == 10) {
                ctrl_off = i + 1;
                size_t j = ctrl_off;
                while (j < tmpl_len && tmpl[j] != fs && tmpl[j] != '\r')
                    j++;
                ctrl_len = j - ctrl_off;
                return 0;
            }
        }
    }
    return -1;
}

static unsigned run_tag; /* 24 bits from the start time and pid */

/* MSH-10 of message n on connection c: "L", run tag, connection, sequence;
 * 20 characters, the ST length of the oldest versions. */
static void ctrl_id(const struct lconn *c, uint64_t n, char id[CTRL_WIDTH + 1])
{
    snprintf(id, CTRL_WIDTH + 1, "L%06x%03u%010llu", run_tag & 0xffffffu, c->id % 1000u,
             (unsigned long long)(n % 10000000000ull));
}

/* p50, p99 and max of n latencies, sorted in place. */
static void pct(uint64_t *v, size_t n, uint64_t *p50, uint64_t *p99, uint64_t *mx)
{
    qsort(v, n, sizeof *v, cmp_u64);
    *p50 = n ? v[n / 2] : 0;
    *p99 = n ? v[(n * 99) / 100] : 0;
    *mx = n ? v[n - 1] : 0;
}

/* One interval line: the ACKs from lat[from] on, over `secs` seconds. */
static void report_interval(double t, double secs, size_t from)
{
    size_t n = nlat - from;
    memcpy(scratch, lat + from, n * sizeof *lat);
    uint64_t p50, p99, mx;
    pct(scratch, n, &p50, &p99, &mx);
    printf("interval t=%.1f messages=%zu rate=%.0f p50_us=%llu p99_us=%llu max_us=%llu\n", t, n,
           secs > 0 ? (double)n / secs : 0.0, (unsigned long long)p50, (unsigned long long)p99,
           (unsigned long long)mx);
    fflush(stdout);
}

/* The tenths of the run by message count: time taken and latencies of each.
 * Sorts each tenth of lat in place (the whole is sorted afterwards). */
static void report_tenths(uint64_t t0)
{
    uint64_t prev = t0;
    for (unsigned k = 0; k < tenths_seen; k++) {
        size_t a = (size_t)(target * k / 10), b = (size_t)(target * (k + 1) / 10);
        if (b > nlat)
            b = nlat;
        uint64_t p50, p99, mx;
        pct(lat + a, b - a, &p50, &p99, &mx);
        double secs = (double)(tenth_ns[k] - prev) / 1e9;
        printf("tenth k=%u seconds=%.3f rate=%.0f p50_us=%llu p99_us=%llu max_us=%llu\n", k + 1,
               secs, secs > 0 ? (double)(b - a) / secs : 0.0, (unsigned long long)p50,
               (unsigned long long)p99, (unsigned long long)mx);
        prev = tenth_ns[k];
    }
}

static void queue_msg(struct lconn *c)
{
    size_t need = tmpl_len - ctrl_len + CTRL_WIDTH + 3;
    if (c->out_len + need > c->out_cap) {
        c->out_cap = (c->out_len + need) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    uint8_t *w = c->out + c->out_len;
    *w++ = MLLP_SB;
    memcpy(w, tmpl, ctrl_off);
    w += ctrl_off;
    char id[CTRL_WIDTH + 1];
    ctrl_id(c, c->sent, id);
    memcpy(w, id, CTRL_WIDTH);
    w += CTRL_WIDTH;
    memcpy(w, tmpl + ctrl_off + ctrl_len, tmpl_len - ctrl_off - ctrl_len);
    w += tmpl_len - ctrl_off - ctrl_len;
    *w++ = MLLP_EB;
    *w++ = MLLP_CR;
    c->out_len = (size_t)(w - c->out);
    c->t_sent[c->sent % window] = clock_mono_ns();
    c->sent++;
    total_sent++;
}

static int flush_out(struct lconn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        return -1;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static void fill(struct lconn *c)
{
    while (c->sent - c->acked < window && total_sent < target)
        queue_msg(c);
}

/* Checks MSA-1 and MSA-2 of one ACK against the message it answers. */
static void check_ack(struct lconn *c, const uint8_t *p, size_t len)
{
    const uint8_t *msa = NULL;
    for (size_t i = 0; i + 4 < len; i++) {
        if ((i == 0 || p[i - 1] == '\r') && memcmp(p + i, "MSA", 3) == 0) {
            msa = p + i;
            break;
        }
    }
    if (!msa) {
        errors++;
        return;
    }
    size_t rest = len - (size_t)(msa - p);
    if (rest >= 7 && (memcmp(msa + 4, "AA", 2) == 0 || memcmp(msa + 4, "CA", 2) == 0))
        aa++;
    else
        not_aa++;
    char id[CTRL_WIDTH + 1];
    ctrl_id(c, c->acked, id);
    if (rest < 7 + 1 + CTRL_WIDTH || memcmp(msa + 7, id, CTRL_WIDTH) != 0)
        errors++; /* wrong or out-of-order MSA-2 */
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen --addr HOST:PORT --conns N --window W --messages M --file FILE"
                    " [--interval S] [--max-seconds T]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *file = NULL;
    unsigned conns = 8, interval_s = 0;
    uint64_t max_s = 600;
    target = 100000;
    run_tag = (unsigned)(clock_wall_ms() ^ ((uint64_t)getpid() << 12));
    for (int i = 1; i + 1 < argc; i += 2) {
        uint64_t v = 0;
        int isnum = num_parse_u64((const uint8_t *)argv[i + 1], strlen(argv[i + 1]), 100000000, &v) == 0;
        if (strcmp(argv[i], "--addr") == 0) addr = argv[i + 1];
        else if (strcmp(argv[i], "--file") == 0) file = argv[i + 1];
        else if (strcmp(argv[i], "--conns") == 0 && isnum && v > 0) conns = (unsigned)v;
        else if (strcmp(argv[i], "--window") == 0 && isnum && v > 0) window = (unsigned)v;
        else if (strcmp(argv[i], "--messages") == 0 && isnum && v > 0) target = v;
        else if (strcmp(argv[i], "--interval") == 0 && isnum && v > 0 && v <= 3600)
            interval_s = (unsigned)v;
        else if (strcmp(argv[i], "--max-seconds") == 0 && isnum && v > 0 && v <= 864000)
            max_s = v;
        else usage();
    }
    if (!addr || !file)
        usage();
    FILE *f = fopen(file, "rb");
    if (!f) {
        perror(file);
        return 2;
    }
    tmpl = malloc(1 << 20);
    tmpl_len = fread(tmpl, 1, 1 << 20, f);
    fclose(f);
    while (tmpl_len && (tmpl[tmpl_len - 1] == '\n' || tmpl[tmpl_len - 1] == '\r'))
        tmpl_len--;
    tmpl[tmpl_len++] = '\r';
    for (size_t i = 0; i < tmpl_len; i++)
        if (tmpl[i] == '\n')
            tmpl[i] = '\r';
    if (find_ctrl() != 0) {
        fprintf(stderr, "loadgen: %s: no MSH-10 found\n", file);
        return 2;
    }
    lat = malloc(target * sizeof *lat);
    scratch = interval_s ? malloc(target * sizeof *scratch) : NULL;
    if (!lat || (interval_s && !scratch)) {
        fprintf(stderr, "loadgen: out of memory for %llu latencies\n", (unsigned long long)target);
        return 2;
    }
    struct lconn *cs = calloc(conns, sizeof *cs);
    int ep = epoll_create1(0);
    for (unsigned i = 0; i < conns; i++) {
        char err[256];
        cs[i].fd = mllp_client_connect(addr, 5000, err, sizeof err);
        if (cs[i].fd < 0) {
            fprintf(stderr, "loadgen: %s\n", err);
            return 1;
        }
        cs[i].id = i;
        cs[i].t_sent = calloc(window, sizeof *cs[i].t_sent);
        mllp_client_rx_init(&cs[i].rx, 1 << 20);
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = i };
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    uint64_t t0 = clock_mono_ns();
    for (unsigned i = 0; i < conns; i++) {
        fill(&cs[i]);
        if (flush_out(&cs[i]) != 0)
            return 1;
    }
    uint64_t deadline = t0 + max_s * 1000000000ull;
    uint64_t step_ns = (uint64_t)interval_s * 1000000000ull, next_report = t0 + step_ns;
    size_t mark = 0;
    struct epoll_event evs[64];
    while (total_acked < target && clock_mono_ns() < deadline) {
        if (interval_s) {
            uint64_t now = clock_mono_ns();
            if (now >= next_report) {
                report_interval((double)(now - t0) / 1e9,
                                (double)(now - (next_report - step_ns)) / 1e9, mark);
                mark = nlat;
                next_report += step_ns;
            }
        }
        int n = epoll_wait(ep, evs, 64, 1000);
        for (int k = 0; k < n; k++) {
            struct lconn *c = &cs[evs[k].data.u32];
            if (evs[k].events & EPOLLIN) {
                for (;;) {
                    const uint8_t *m;
                    size_t ml;
                    int r = mllp_client_recv(c->fd, &c->rx, 0, &m, &ml);
                    if (r <= 0) {
                        if (r < 0) {
                            fprintf(stderr, "loadgen: connection %u closed\n", c->id);
                            return 1;
                        }
                        break;
                    }
                    uint64_t now = clock_mono_ns();
                    check_ack(c, m, ml);
                    lat[nlat++] = (now - c->t_sent[c->acked % window]) / 1000u;
                    c->acked++;
                    total_acked++;
                    if (tenths_seen < 10 && total_acked * 10 >= target * (tenths_seen + 1))
                        tenth_ns[tenths_seen++] = now;
                    fill(c);
                }
            }
            if (flush_out(c) != 0) {
                fprintf(stderr, "loadgen: send failed on %u\n", c->id);
                return 1;
            }
        }
    }
    uint64_t t1 = clock_mono_ns();
    double secs = (double)(t1 - t0) / 1e9;
    if (interval_s) {
        if (nlat > mark)
            report_interval(secs, (double)(t1 - (next_report - step_ns)) / 1e9, mark);
        report_tenths(t0);
    }
    uint64_t p50, p99, mx;
    pct(lat, nlat, &p50, &p99, &mx);
    printf("messages=%llu seconds=%.3f rate=%.0f p50_us=%llu p99_us=%llu max_us=%llu aa=%llu "
           "not_aa=%llu errors=%llu\n",
           (unsigned long long)total_acked, secs, (double)total_acked / secs,
           (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)mx,
           (unsigned long long)aa, (unsigned long long)not_aa, (unsigned long long)errors);
    for (unsigned i = 0; i < conns; i++) {
        close(cs[i].fd);
        mllp_client_rx_release(&cs[i].rx);
        free(cs[i].t_sent);
        free(cs[i].out);
    }
    free(cs);
    free(lat);
    free(scratch);
    free(tmpl);
    close(ep);
    return (total_acked == target && errors == 0) ? 0 : 1;
}
