/* The benchmark's baseline: an MLLP responder built from hl7bridge's own
 * transport and HL7 code that stores nothing.  Each frame is parsed and
 * answered with an AA at once, so the difference between it and hl7bridge in
 * `make bench` is the cost of durability (and mapping, once on).
 *
 *   null_responder --port PORT      (prints "ready port=PORT", runs until killed) */
#include "core/buf.h"
#include "core/clock.h"
#include "core/loop.h"
#include "core/num.h"
#include "hl7/hl7.h"
#include "mllp/mllp.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nr {
    struct hl7_msg *m;
    struct buf ack;
    uint64_t n;
};

static void on_frame(void *ud, struct mllp_conn *c, uint64_t seq, const uint8_t *p, size_t len)
{
    struct nr *r = ud;
    struct hl7_err e;
    int ok = hl7_msg_parse(r->m, p, len, NULL, &e) == 0 && hl7_msg_validate(r->m, &e) == 0;
    char id[32];
    snprintf(id, sizeof id, "NR%llu", (unsigned long long)++r->n);
    struct hl7_ack_ctx ctx = { "NULL", "NULL", id, clock_wall_ms() };
    buf_reset(&r->ack);
    if (hl7_ack_build(r->m, ok ? HL7_ACK_AA : HL7_ACK_AR, ok ? "OK" : "rejected", ok ? NULL : &e,
                      &ctx, &r->ack) == 0)
        (void)mllp_conn_reply(c, seq, buf_data(&r->ack), r->ack.len);
    else
        (void)mllp_conn_reply(c, seq, NULL, 0);
}

int main(int argc, char **argv)
{
    uint64_t port = 0;
    if (argc != 3 || strcmp(argv[1], "--port") != 0 ||
        num_parse_u64((const uint8_t *)argv[2], strlen(argv[2]), 65535, &port) != 0) {
        fprintf(stderr, "usage: null_responder --port PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct nr r = { .m = hl7_msg_new() };
    buf_init(&r.ack, 65536);
    struct loop *l = loop_new();
    struct mllp_handler h = { .on_frame = on_frame, .ud = &r };
    struct mllp_server *s = mllp_server_new(l, &h);
    struct mllp_listener_opts o = { .name = "null", .host = "127.0.0.1", .port = (unsigned)port,
                                    .max_connections = 4096, .max_message_bytes = 16u << 20,
                                    .idle_timeout_s = 600 };
    char err[256];
    if (!l || !s || !r.m || mllp_server_listen(s, &o, err, sizeof err) != 0) {
        fprintf(stderr, "null_responder: %s\n", err);
        return 1;
    }
    printf("ready port=%u\n", mllp_server_port(s, 0));
    fflush(stdout);
    int rc = loop_run(l);
    mllp_server_free(s);
    loop_free(l);
    hl7_msg_free(r.m);
    buf_release(&r.ack);
    return rc == 0 ? 0 : 1;
}
