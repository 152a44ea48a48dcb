/* `hl7bridge send ADDRESS FILE...`: an MLLP client for operators and tests.
 *
 * A file may hold one message, several (each starting with an MSH line), a
 * batch (FHS/BHS, sent as one frame), or already MLLP-framed messages.  Each
 * message is sent, its ACK awaited (or up to --window messages pipelined),
 * and the ACK's MSA segment printed.  Exit status: 0 when every ACK is AA or
 * CA, 1 on any AE/AR/CE/CR, timeout or connection failure, 2 on usage. */
#include "daemon/cli.h"
#include "daemon/msgfile.h"
#include "hl7/hl7.h"
#include "mllp/mllp.h"
#include "core/num.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Prints the MSA segment of an ACK and returns 0 for AA/CA, 1 otherwise. */
static int report_ack(const struct msgfile_msg *m, const uint8_t *ack, size_t len, int quiet)
{
    struct hl7_msg *a = hl7_msg_new();
    struct hl7_err e;
    int bad = 1;
    if (a && hl7_msg_parse(a, ack, len, NULL, &e) == 0) {
        long msa = hl7_seg_find(a, "MSA", 1);
        if (msa >= 0) {
            struct hl7_slice t = hl7_seg_text(a, (size_t)msa);
            struct hl7_slice code = hl7_seg_field(a, (size_t)msa, 1);
            bad = !(hl7_slice_eq(code, "AA") || hl7_slice_eq(code, "CA"));
            if (!quiet || bad)
                printf("%s#%u %.*s\n", m->file, m->index, (int)t.len, (const char *)t.p);
            long err = hl7_seg_find(a, "ERR", 1);
            if (bad && err >= 0) {
                struct hl7_slice et = hl7_seg_text(a, (size_t)err);
                printf("%s#%u %.*s\n", m->file, m->index, (int)et.len, (const char *)et.p);
            }
        } else {
            printf("%s#%u answer has no MSA segment\n", m->file, m->index);
        }
    } else {
        printf("%s#%u answer is not an HL7 message\n", m->file, m->index);
    }
    hl7_msg_free(a);
    return bad;
}

static void send_usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge send [--timeout SECONDS] [--window N] [--quiet] ADDRESS FILE...\n"
            "\n"
            "Sends every message of each FILE to ADDRESS (host:port) over MLLP and prints\n"
            "the MSA segment of each acknowledgement (and ERR when not accepted).\n"
            "A file may hold one or several messages (each starting with MSH), a batch\n"
            "(FHS/BHS, sent as one frame) or MLLP-framed messages.\n"
            "\n"
            "  --timeout SECONDS  wait this long for each ACK (default 10)\n"
            "  --window N         pipeline up to N messages before waiting (default 1)\n"
            "  --quiet            print only acknowledgements that are not AA/CA\n"
            "\n"
            "Exit status: 0 all accepted, 1 any AE/AR/CE/CR, timeout or connection error.\n");
}

int cmd_send(int argc, char **argv)
{
    int timeout_ms = 10000, quiet = 0;
    unsigned window = 1;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        uint64_t v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            send_usage(stdout);
            return 0;
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            quiet = 1;
        } else if ((strcmp(a, "--timeout") == 0 || strcmp(a, "--window") == 0) && i + 1 < argc &&
                   num_parse_u64((const uint8_t *)argv[i + 1], strlen(argv[i + 1]), 100000, &v) == 0 &&
                   v > 0) {
            if (a[2] == 't')
                timeout_ms = (int)v * 1000;
            else
                window = (unsigned)v;
            i++;
        } else {
            fprintf(stderr, "hl7bridge send: bad option '%s'\n", a);
            send_usage(stderr);
            return 2;
        }
    }
    if (argc - i < 2) {
        send_usage(stderr);
        return 2;
    }
    const char *addr = argv[i++];
    struct msgfile_list l = { 0 };
    uint8_t **files = calloc((size_t)(argc - i), sizeof *files);
    int nfiles = 0, rc = 0;
    for (; i < argc; i++) {
        size_t len;
        uint8_t *d = msgfile_read(argv[i], &len);
        if (!d) {
            fprintf(stderr, "hl7bridge send: %s: %s\n", argv[i], strerror(errno));
            rc = 1;
            goto out;
        }
        files[nfiles++] = d;
        if (msgfile_split(d, len, argv[i], &l) != 0) {
            fprintf(stderr, "hl7bridge send: out of memory\n");
            rc = 1;
            goto out;
        }
    }
    char err[256];
    int fd = mllp_client_connect(addr, timeout_ms, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "hl7bridge send: %s\n", err);
        rc = 1;
        goto out;
    }
    struct mllp_client_rx rx;
    mllp_client_rx_init(&rx, 64u << 20);
    size_t sent = 0, acked = 0;
    while (acked < l.n) {
        while (sent < l.n && sent - acked < window) {
            if (mllp_client_send(fd, l.v[sent].p, l.v[sent].len, timeout_ms) != 0) {
                fprintf(stderr, "hl7bridge send: %s#%u: send failed: %s\n", l.v[sent].file,
                        l.v[sent].index, strerror(errno));
                rc = 1;
                goto done;
            }
            sent++;
        }
        const uint8_t *ack;
        size_t alen;
        int r = mllp_client_recv(fd, &rx, timeout_ms, &ack, &alen);
        if (r <= 0) {
            fprintf(stderr, "hl7bridge send: %s#%u: %s\n", l.v[acked].file, l.v[acked].index,
                    r == 0 ? "timed out waiting for the ACK" : "connection closed before the ACK");
            rc = 1;
            goto done;
        }
        if (report_ack(&l.v[acked], ack, alen, quiet) != 0)
            rc = 1;
        acked++;
    }
done:
    fflush(stdout);
    mllp_client_rx_release(&rx);
    close(fd);
out:
    for (int k = 0; k < nfiles; k++)
        free(files[k]);
    free(files);
    free(l.v);
    return rc;
}
