/* libFuzzer target for the MLLP framer.  Property: feeding the input in one
 * piece and feeding it in chunks whose sizes come from the input itself
 * yield the same frames, every frame lies inside the buffer, consumed never
 * exceeds what was given, and no frame contains a start byte.
 *
 * Inputs are tried up to max_len (1 MiB, more than the daemon's 64 KiB
 * read), and an input whose first byte is EXPAND is stretched: every byte
 * after it is repeated, up to 1 MiB in all, so small seeds give the long
 * runs of one byte (start bytes, end bytes) that a per-byte recursion or
 * an unbounded rescan would choke on.  Lenient and strict framing are
 * both run. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "mllp/mllp.h"

struct run {
    struct mllp_framer f;
    struct buf b;
    uint8_t *out; /* concatenated frames, each followed by its length byte pattern */
    size_t out_len, out_cap;
    unsigned frames, oversize;
};

static void emit(struct run *r, const uint8_t *p, size_t len)
{
    if (r->out_len + len + 8 > r->out_cap) {
        r->out_cap = (r->out_len + len + 8) * 2;
        r->out = realloc(r->out, r->out_cap);
        if (!r->out)
            abort();
    }
    memcpy(r->out + r->out_len, p, len);
    r->out_len += len;
    memcpy(r->out + r->out_len, &len, sizeof len);
    r->out_len += sizeof len;
}

static void feed(struct run *r, const uint8_t *p, size_t len)
{
    if (buf_append(&r->b, p, len) != 0)
        abort();
    for (;;) {
        struct mllp_frame fr;
        int rc = mllp_framer_next(&r->f, buf_data(&r->b), r->b.len, &fr);
        if (fr.consumed > r->b.len)
            abort();
        if (rc == MLLP_FRAME) {
            /* the end marker follows the message: 0x1C 0x0D, or (lenient)
             * 0x1C before the next 0x0B */
            if (fr.off + fr.len > r->b.len || fr.off + fr.len + 2 - (size_t)r->f.lenient > fr.consumed)
                abort();
            if (memchr(buf_data(&r->b) + fr.off, MLLP_SB, fr.len))
                abort();
            emit(r, buf_data(&r->b) + fr.off, fr.len);
            r->frames++;
            buf_consume(&r->b, fr.consumed);
            continue;
        }
        if (rc == MLLP_OVERSIZE) {
            r->oversize++;
            buf_reset(&r->b);
            return;
        }
        buf_consume(&r->b, fr.consumed);
        return;
    }
}

#define EXPAND      0xA5
#define EXPAND_MAX  (1u << 20)

static int check(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || data[0] != EXPAND)
        return check(data, size);
    /* data[1]: the framer's ceiling byte; each later byte repeated. */
    size_t reps = EXPAND_MAX / (size - 1);
    uint8_t *big = malloc(1 + (size - 2) * reps);
    if (!big)
        abort();
    big[0] = data[1];
    size_t n = 1;
    for (size_t i = 2; i < size; i++) {
        memset(big + n, data[i], reps);
        n += reps;
    }
    int rc = check(big, n);
    free(big);
    return rc;
}

static int check(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t max = 64 + (data[0] & 0x7f) * 16u;
    int lenient = data[0] >> 7;
    struct run a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    mllp_framer_init(&a.f, max);
    mllp_framer_init(&b.f, max);
    mllp_framer_set_lenient(&a.f, lenient);
    mllp_framer_set_lenient(&b.f, lenient);
    buf_init(&a.b, max + 65536 + size);
    buf_init(&b.b, max + 65536 + size);
    feed(&a, data + 1, size - 1);
    size_t off = 1, k = 0;
    while (off < size) {
        size_t c = 1 + (data[k % size] % 7u);
        k++;
        if (c > size - off)
            c = size - off;
        feed(&b, data + off, c);
        off += c;
    }
    /* Oversize resets differ with chunking (the reset drops what is
     * buffered), so compare only runs without one. */
    if (!a.oversize && !b.oversize) {
        if (a.frames != b.frames || a.out_len != b.out_len ||
            (a.out_len && memcmp(a.out, b.out, a.out_len) != 0))
            abort();
    }
    free(a.out);
    free(b.out);
    buf_release(&a.b);
    buf_release(&b.b);
    return 0;
}
