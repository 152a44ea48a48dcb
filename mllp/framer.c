/* MLLP framer.  State is the scan offset and whether a frame has started, so
 * bytes arriving one at a time or many frames in one read cost the same: each
 * byte is examined once.  next_marker does the scanning; the end marker is the pair
 * 0x1C 0x0D, and a 0x1C at the very end of the data waits for the next byte.
 *
 * One call walks the buffer in a loop: garbage before a start byte and
 * abandoned frames (a new 0x0B inside an unfinished one) only move the base
 * offset, so a run of any number of start bytes costs no stack.
 *
 * Lenient end (`listen[].frame_end: lenient`): some engines end a frame with
 * 0x1C alone.  Then 0x1C followed by 0x0B ends the frame too, and a 0x1C
 * that is the last byte received ends it once the connection has paused
 * (the caller decides when, and asks through mllp_framer_end_lone).
 *
 * Pure function of its inputs: no I/O, any thread. */
#include "mllp/mllp.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

void mllp_framer_init(struct mllp_framer *f, size_t max_message_bytes)
{
    memset(f, 0, sizeof *f);
    f->max = max_message_bytes;
}

void mllp_framer_set_lenient(struct mllp_framer *f, int lenient) { f->lenient = lenient != 0; }

/* First position >= from holding 0x0B or 0x1C, or len.  One pass that
 * stops at the first of the two: searching the whole rest for one byte and
 * then for the other re-read the buffer after every stray 0x1C, which made
 * a long run of them quadratic.  Sixteen bytes per compare with SSE2 (every
 * x86-64), a plain loop elsewhere. */
static size_t next_marker(const uint8_t *buf, size_t from, size_t len)
{
    size_t i = from;
#if defined(__SSE2__)
    const __m128i vsb = _mm_set1_epi8((char)MLLP_SB), veb = _mm_set1_epi8((char)MLLP_EB);
    while (len - i >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(buf + i));
        unsigned hit = (unsigned)_mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(x, vsb), _mm_cmpeq_epi8(x, veb)));
        if (hit)
            return i + (unsigned)__builtin_ctz(hit);
        i += 16;
    }
#endif
    while (i < len && buf[i] != MLLP_SB && buf[i] != MLLP_EB)
        i++;
    return i;
}

/* The frame in progress ends at `m` (the 0x1C at b[m]); `tail` end bytes
 * follow the message.  `base` is where b lies in the caller's buffer. */
static int end_frame(struct mllp_framer *f, size_t base, size_t m, size_t tail,
                     struct mllp_frame *out)
{
    size_t mlen = m - f->start;
    out->off = base + f->start;
    f->in_frame = 0;
    f->scan = 0;
    if (mlen > f->max) {
        out->len = f->max;
        out->consumed = base;
        return MLLP_OVERSIZE;
    }
    out->len = mlen;
    out->consumed = base + m + tail;
    f->start = 0;
    return MLLP_FRAME;
}

int mllp_framer_next(struct mllp_framer *f, const uint8_t *buf, size_t len, struct mllp_frame *out)
{
    out->consumed = 0;
    out->off = 0;
    out->len = 0;

    size_t base = 0; /* bytes of buf dropped (garbage, abandoned frames) */
    if (!f->in_frame) {
        /* Outside a frame: everything up to the next 0x0B is garbage. */
        const uint8_t *sb = len ? memchr(buf, MLLP_SB, len) : NULL;
        if (!sb) {
            f->garbage += len;
            out->consumed = len;
            f->scan = 0;
            return MLLP_MORE;
        }
        base = (size_t)(sb - buf);
        f->garbage += base;
        f->in_frame = 1;
        f->start = 1;
        f->scan = 1;
    }

    /* From here on, offsets kept in *f are relative to b, the buffer the
     * caller keeps once it has dropped `base` bytes. */
    const uint8_t *b = buf + base;
    size_t n = len - base;
    while (f->scan < n) {
        size_t m = next_marker(b, f->scan, n);
        if (m >= n) {
            f->scan = n;
            break;
        }
        if (b[m] == MLLP_SB) {
            /* A new start inside a frame: the sender abandoned the previous
             * one.  Count it as garbage and restart here. */
            f->restarts++;
            f->garbage += m - (f->start - 1);
            base += m;
            b += m;
            n -= m;
            f->start = 1;
            f->scan = 1;
            continue;
        }
        /* 0x1C: the end if followed by CR (or, lenient, by the next
         * frame's start); wait if it is the last byte. */
        if (m + 1 >= n) {
            f->scan = m;
            break;
        }
        if (b[m + 1] == MLLP_CR)
            return end_frame(f, base, m, 2, out);
        if (f->lenient && b[m + 1] == MLLP_SB)
            return end_frame(f, base, m, 1, out);
        /* A stray 0x1C inside the message: keep it as data. */
        f->scan = m + 1;
    }
    out->consumed = base;
    if (n - f->start > f->max) {
        out->off = base + f->start;
        out->len = f->max;
        f->in_frame = 0;
        f->scan = 0;
        return MLLP_OVERSIZE;
    }
    return MLLP_MORE;
}

int mllp_framer_end_lone(struct mllp_framer *f, const uint8_t *buf, size_t len,
                         struct mllp_frame *out)
{
    out->consumed = 0;
    out->off = 0;
    out->len = 0;
    if (!f->lenient || !f->in_frame || len == 0 || f->scan != len - 1 ||
        buf[len - 1] != MLLP_EB || f->start > len - 1)
        return MLLP_MORE;
    return end_frame(f, 0, len - 1, 1, out);
}
