/* Growable buffer with a ceiling.  Compacts by memmove only when the free
 * tail is too small, so consuming frames one at a time stays O(n). */
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void buf_release(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

uint8_t *buf_reserve(struct buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return NULL;
    if (b->off + b->len + n <= b->cap)
        return b->p + b->off + b->len;
    if (b->off > 0 && b->len + n <= b->cap) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
        return b->p + b->len;
    }
    size_t need = b->len + n;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < need)
        ncap *= 2;
    uint8_t *np = malloc(ncap);
    if (!np)
        return NULL;
    if (b->len)
        memcpy(np, b->p + b->off, b->len);
    free(b->p);
    b->p = np;
    b->off = 0;
    b->cap = ncap;
    return b->p + b->len;
}

void buf_commit(struct buf *b, size_t n) { b->len += n; }

int buf_append(struct buf *b, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t *w = buf_reserve(b, n);
    if (!w)
        return -1;
    memcpy(w, data, n);
    b->len += n;
    return 0;
}

int buf_append_str(struct buf *b, const char *s) { return buf_append(b, s, strlen(s)); }

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->off = 0;
        b->len = 0;
        return;
    }
    b->off += n;
    b->len -= n;
}

void buf_reset(struct buf *b)
{
    b->off = 0;
    b->len = 0;
}
