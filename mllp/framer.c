/* MLLP framer.  State is the scan offset and whether a frame has started, so
 * bytes arriving one at a time or many frames in one read cost the same: each
 * byte is examined once.  memchr does the scanning; the end marker is the pair
 * 0x1C 0x0D, and a 0x1C at the very end of the data waits for the next byte.
 * Pure function of its inputs: no I/O, any thread. */
#include "mllp/mllp.h"

#include <string.h>

void mllp_framer_init(struct mllp_framer *f, size_t max_message_bytes)
{
    memset(f, 0, sizeof *f);
    f->max = max_message_bytes;
}

/* First position >= from holding 0x0B or 0x1C, or len. */
static size_t next_marker(const uint8_t *buf, size_t from, size_t len)
{
    const uint8_t *p = buf + from;
    size_t n = len - from;
    const uint8_t *sb = memchr(p, MLLP_SB, n);
    size_t lim = sb ? (size_t)(sb - p) : n;
    const uint8_t *eb = memchr(p, MLLP_EB, lim);
    if (eb)
        return from + (size_t)(eb - p);
    return from + lim;
}

int mllp_framer_next(struct mllp_framer *f, const uint8_t *buf, size_t len, struct mllp_frame *out)
{
    out->consumed = 0;
    out->off = 0;
    out->len = 0;

    if (!f->in_frame) {
        /* Outside a frame: everything up to the next 0x0B is garbage. */
        const uint8_t *sb = len ? memchr(buf, MLLP_SB, len) : NULL;
        if (!sb) {
            f->garbage += len;
            out->consumed = len;
            f->scan = 0;
            return MLLP_MORE;
        }
        size_t g = (size_t)(sb - buf);
        f->garbage += g;
        /* Drop the garbage now; the frame starts at offset 0 of what is left. */
        out->consumed = g;
        f->in_frame = 1;
        f->start = 1;
        f->scan = 1;
        buf += g;
        len -= g;
        size_t base = g;
        int r = mllp_framer_next(f, buf, len, out);
        /* Re-base the recursive answer onto the caller's buffer. */
        out->consumed += base;
        /* In the MLLP_MORE case the saved offsets are already relative to
         * the buffer the caller keeps after dropping `consumed`. */
        if (r == MLLP_FRAME || r == MLLP_OVERSIZE)
            out->off += base;
        return r;
    }

    while (f->scan < len) {
        size_t m = next_marker(buf, f->scan, len);
        if (m >= len) {
            f->scan = len;
            break;
        }
        if (buf[m] == MLLP_SB) {
            /* A new start inside a frame: the sender abandoned the previous
             * one.  Count it as garbage and restart here. */
            f->restarts++;
            f->garbage += m - (f->start - 1);
            out->consumed = m;
            f->start = 1;
            f->scan = 1;
            buf += m;
            len -= m;
            size_t base = m;
            int r = mllp_framer_next(f, buf, len, out);
            out->consumed += base;
            if (r == MLLP_FRAME || r == MLLP_OVERSIZE)
                out->off += base;
            return r;
        }
        /* 0x1C: the end if followed by CR; wait if it is the last byte. */
        if (m + 1 >= len) {
            f->scan = m;
            break;
        }
        if (buf[m + 1] == MLLP_CR) {
            size_t mlen = m - f->start;
            if (mlen > f->max) {
                out->off = f->start;
                out->len = f->max;
                f->in_frame = 0;
                f->scan = 0;
                return MLLP_OVERSIZE;
            }
            out->off = f->start;
            out->len = mlen;
            out->consumed = m + 2;
            f->in_frame = 0;
            f->scan = 0;
            f->start = 0;
            return MLLP_FRAME;
        }
        /* A stray 0x1C inside the message: keep it as data. */
        f->scan = m + 1;
    }
    if (len - f->start > f->max) {
        out->off = f->start;
        out->len = f->max;
        f->in_frame = 0;
        f->scan = 0;
        return MLLP_OVERSIZE;
    }
    return MLLP_MORE;
}
