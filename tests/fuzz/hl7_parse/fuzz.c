/* libFuzzer target for hl7/: parse, validate, the strict escape check, an
 * ACK for each outcome, every field of every segment decoded (and split into
 * repetitions, components and subcomponents), batch iteration with a batch
 * ACK, and the same bytes read as a path.  The input is copied into an
 * exact-size heap block so ASan sees any read past its end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "hl7/hl7.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct hl7_msg *msg;
static struct buf scratch;

static void decode_all(const struct hl7_msg *m)
{
    const struct hl7_delims *d = hl7_msg_delims(m);
    for (size_t s = 0; s < hl7_seg_count(m); s++) {
        (void)hl7_seg_id(m, s);
        (void)hl7_seg_text(m, s);
        unsigned nf = hl7_seg_field_count(m, s);
        for (unsigned f = 0; f <= nf + 1; f++) {
            struct hl7_slice v = hl7_seg_field(m, s, f);
            buf_reset(&scratch);
            if (hl7_decode(m, v, &scratch) != 0)
                abort(); /* the ceiling is far above any fuzz input */
            unsigned nr = hl7_slice_count(v, d->rep);
            for (unsigned r = 1; r <= nr && r <= 8; r++) {
                struct hl7_slice rv = hl7_slice_piece(v, d->rep, r);
                unsigned nc = hl7_slice_count(rv, d->comp);
                for (unsigned c = 1; c <= nc && c <= 8; c++) {
                    struct hl7_slice cv = hl7_slice_piece(rv, d->comp, c);
                    unsigned ns = hl7_slice_count(cv, d->sub);
                    for (unsigned k = 1; k <= ns && k <= 4; k++) {
                        buf_reset(&scratch);
                        if (hl7_decode(m, hl7_slice_piece(cv, d->sub, k), &scratch) != 0)
                            abort();
                    }
                }
            }
        }
    }
}

static void ack(const struct hl7_msg *m, enum hl7_outcome o, const struct hl7_err *e)
{
    static const struct hl7_ack_ctx ctx = {"HL7BRIDGE", "FAC|^~\\&", "ACK\r1", 1772368800123LL};
    for (int enhanced = 0; enhanced <= 1; enhanced++) {
        int send;
        enum hl7_ack_code c = hl7_ack_choose(m, enhanced, o, &send);
        buf_reset(&scratch);
        if (hl7_ack_build(m, c, "text|with^delims", e, &ctx, &scratch) != 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!msg) {
        msg = hl7_msg_new();
        buf_init(&scratch, 64u << 20);
    }
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    if (size)
        memcpy(p, data, size);

    struct hl7_err e;
    struct hl7_parse_opts opts = {(int)(size & 1), (enum hl7_charset)(size % 5)};
    if (hl7_msg_parse(msg, p, size, size % 3 == 0 ? NULL : &opts, &e) == 0) {
        decode_all(msg);
        if (hl7_msg_validate(msg, &e) == 0) {
            ack(msg, HL7_ACCEPT, NULL);
            if (hl7_msg_check_escapes(msg, &e) != 0)
                ack(msg, HL7_ERROR, &e);
        } else {
            ack(msg, HL7_REJECT, &e);
        }
    } else {
        ack(msg, HL7_REJECT, &e);
        (void)hl7_msg_header(msg);
    }
    ack(NULL, HL7_REJECT, &e);

    if (hl7_is_batch(p, size) || size % 2) {
        struct hl7_batch_iter it;
        if (hl7_batch_begin(&it, p, size, &e) == 0) {
            struct hl7_slice s;
            int r;
            while ((r = hl7_batch_next(&it, &s, &e)) == 1) {
                if (s.p < p || s.p + s.len > p + size)
                    abort();
                if (hl7_msg_parse(msg, s.p, s.len, NULL, &e) == 0)
                    decode_all(msg);
            }
            buf_reset(&scratch);
            if (hl7_ack_build_batch(&it, r < 0 ? HL7_ACK_AE : HL7_ACK_AA, NULL, r < 0 ? &e : NULL,
                                    &(struct hl7_ack_ctx){"A", "B", "C", 0}, &scratch) != 0)
                abort();
        }
    }

    struct hl7_path path;
    const char *why;
    size_t at;
    if (hl7_path_parse((const char *)p, size, &path, &why, &at) == 0) {
        char out[128];
        hl7_path_format(&path, out, sizeof out);
        struct hl7_slice v;
        const char *sample = "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|1|P|2.5\rPID|1||x~y^z&w\r";
        if (hl7_msg_parse(msg, (const uint8_t *)sample, strlen(sample), NULL, &e) == 0) {
            (void)hl7_get(msg, &path, -1, &v);
            (void)hl7_get(msg, &path, 1, &v);
            (void)hl7_rep_count(msg, &path, -1);
        }
    } else if (at > size) {
        abort();
    }
    free(p);
    return 0;
}
