/* `hl7bridge send ADDRESS FILE...`: an MLLP client for operators and tests.
 *
 * A file may hold one message, several (each starting with an MSH line), a
 * batch (FHS/BHS, sent as one frame), or already MLLP-framed messages.  Each
 * message is sent, its ACK awaited (or up to --window messages pipelined),
 * and the ACK's MSA segment printed.  Exit status: 0 when every ACK is AA or
 * CA, 1 on any AE/AR/CE/CR, timeout or connection failure, 2 on usage.
 *
 * Enhanced mode: MSH-15 says which messages get an accept ACK at all (NE
 * never, ER only on error, SU only on success, AL or empty always).  A
 * message that may get none (NE, ER, SU) does not count against the window:
 * it is settled by the answer to a later message (the receiver answers in
 * order, so an answer carrying another MSA-2 means none came for it; one
 * carrying its MSA-2 is its own, as a receiver in original mode answers
 * every message) or, at the end, at once for NE and after a short wait for
 * ER/SU.  Application ACKs (MSH-16) are not awaited. */
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

/* Which answer a message is due (from its MSH-15). */
enum due { DUE_ALWAYS = 0, DUE_NEVER, DUE_ON_ERROR, DUE_ON_SUCCESS };

struct sent {
    enum due due;
    struct hl7_slice control_id; /* MSH-10 (view into the file) */
    char mode[3];                /* MSH-15 as written, for messages */
};

/* Reads MSH-15 of a message; batches and unreadable messages are always
 * answered. */
static void classify(struct hl7_msg *h, const struct msgfile_msg *m, struct sent *out)
{
    struct hl7_err e;
    memset(out, 0, sizeof *out);
    if (hl7_is_batch(m->p, m->len) || !h)
        return;
    /* A message that does not parse still has what its header could give. */
    if (hl7_msg_parse(h, m->p, m->len, NULL, &e) != 0 && hl7_msg_header(h)->accept_ack.len == 0)
        return;
    const struct hl7_header *hd = hl7_msg_header(h);
    out->control_id = hd->control_id;
    struct hl7_slice a = hd->accept_ack;
    if (a.len == 2) {
        out->mode[0] = (char)a.p[0];
        out->mode[1] = (char)a.p[1];
    }
    if (hl7_slice_eq(a, "NE"))
        out->due = DUE_NEVER;
    else if (hl7_slice_eq(a, "ER"))
        out->due = DUE_ON_ERROR;
    else if (hl7_slice_eq(a, "SU"))
        out->due = DUE_ON_SUCCESS;
}

/* MSA-2 of an answer (a view into it), empty when it has none. */
static struct hl7_slice answer_id(struct hl7_msg *a, const uint8_t *ack, size_t len)
{
    struct hl7_err e;
    struct hl7_slice none = {NULL, 0};
    if (!a || hl7_msg_parse(a, ack, len, NULL, &e) != 0)
        return none;
    long msa = hl7_seg_find(a, "MSA", 1);
    return msa < 0 ? none : hl7_seg_field(a, (size_t)msa, 2);
}

static int same_id(struct hl7_slice x, struct hl7_slice y)
{
    return x.len == y.len && (x.len == 0 || memcmp(x.p, y.p, x.len) == 0);
}

/* A message settled without an answer, as its MSH-15 allows.  Returns 1
 * when that means "not accepted" (SU: an answer comes only on success). */
static int settle_silent(const struct msgfile_msg *m, const struct sent *s, int quiet)
{
    int bad = s->due == DUE_ON_SUCCESS;
    if (!quiet || bad)
        printf("%s#%u no ACK (MSH-15 %.2s: %s)\n", m->file, m->index, s->mode,
               s->due == DUE_NEVER ? "none due" : bad ? "not accepted" : "accepted");
    return bad;
}

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
            "Enhanced mode (MSH-15 set): NE messages get no ACK and are not waited for;\n"
            "ER (answer on error only) and SU (on success only) are settled by the answers\n"
            "to later messages, or after a wait of up to 2 s at the end; an SU message\n"
            "without an answer counts as not accepted.  Application ACKs (MSH-16) are\n"
            "not awaited.\n"
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
    struct hl7_msg *hm = hl7_msg_new(), *am = hl7_msg_new();
    struct sent *due = calloc(l.n ? l.n : 1, sizeof *due);
    if (!due) {
        rc = 1;
        goto done;
    }
    for (size_t k = 0; k < l.n; k++)
        classify(hm, &l.v[k], &due[k]);
    /* [acked, sent): sent and not settled; `waiting` of them must get an
     * answer (DUE_ALWAYS) and count against the window. */
    size_t sent = 0, acked = 0, waiting = 0;
    while (acked < l.n) {
        while (sent < l.n && waiting < window) {
            if (mllp_client_send(fd, l.v[sent].p, l.v[sent].len, timeout_ms) != 0) {
                fprintf(stderr, "hl7bridge send: %s#%u: send failed: %s\n", l.v[sent].file,
                        l.v[sent].index, strerror(errno));
                rc = 1;
                goto done;
            }
            waiting += due[sent].due == DUE_ALWAYS;
            sent++;
        }
        /* Only optional answers outstanding and nothing left to send: none
         * is due for NE, so it is settled at once; ER and SU get a short
         * wait for an error (ER) or success (SU) answer. */
        int only_optional = waiting == 0 && sent == l.n;
        if (only_optional && due[acked].due == DUE_NEVER) {
            rc |= settle_silent(&l.v[acked], &due[acked], quiet);
            acked++;
            continue;
        }
        int wait_ms = only_optional && timeout_ms > 2000 ? 2000 : timeout_ms;
        const uint8_t *ack;
        size_t alen;
        int r = mllp_client_recv(fd, &rx, wait_ms, &ack, &alen);
        if (r == 0 && only_optional) {
            rc |= settle_silent(&l.v[acked], &due[acked], quiet);
            acked++;
            continue;
        }
        if (r <= 0) {
            fprintf(stderr, "hl7bridge send: %s#%u: %s\n", l.v[acked].file, l.v[acked].index,
                    r == 0 ? "timed out waiting for the ACK" : "connection closed before the ACK");
            rc = 1;
            goto done;
        }
        /* Whose answer is it?  Answers come in order: optional ones before
         * it whose MSA-2 differs got none.  (A receiver in original mode
         * answers NE messages too: MSA-2 tells.) */
        struct hl7_slice id = answer_id(am, ack, alen);
        while (acked < sent && due[acked].due != DUE_ALWAYS &&
               !same_id(id, due[acked].control_id)) {
            rc |= settle_silent(&l.v[acked], &due[acked], quiet);
            acked++;
        }
        if (acked == sent) {
            printf("answer matches no message sent: %.*s\n", (int)(id.len < 64 ? id.len : 64),
                   id.p ? (const char *)id.p : "");
            rc = 1;
            continue;
        }
        if (report_ack(&l.v[acked], ack, alen, quiet) != 0)
            rc = 1;
        waiting -= due[acked].due == DUE_ALWAYS;
        acked++;
    }
done:
    fflush(stdout);
    hl7_msg_free(hm);
    hl7_msg_free(am);
    free(due);
    mllp_client_rx_release(&rx);
    close(fd);
out:
    for (int k = 0; k < nfiles; k++)
        free(files[k]);
    free(files);
    free(l.v);
    return rc;
}
