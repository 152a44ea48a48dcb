/* Growable byte buffer with a ceiling set at creation.  Growing past the
 * ceiling fails (-1) and the caller treats it as a protocol error.  Data lives
 * in p[off .. off+len); consuming from the front only moves `off`, and the
 * buffer compacts lazily when it needs room. */
#ifndef CORE_BUF_H
#define CORE_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *p;
    size_t off;  /* start of live data */
    size_t len;  /* bytes of live data */
    size_t cap;  /* bytes allocated */
    size_t max;  /* ceiling on len */
};

void buf_init(struct buf *b, size_t max);
void buf_release(struct buf *b);

static inline uint8_t *buf_data(const struct buf *b) { return b->p ? b->p + b->off : NULL; }

/* Makes room for `n` more bytes after the live data; returns the write
 * pointer or NULL when the ceiling (or memory) forbids it. */
uint8_t *buf_reserve(struct buf *b, size_t n) __attribute__((warn_unused_result));
/* Commits `n` bytes written through buf_reserve(). */
void buf_commit(struct buf *b, size_t n);
int buf_append(struct buf *b, const void *data, size_t n) __attribute__((warn_unused_result));
int buf_append_str(struct buf *b, const char *s) __attribute__((warn_unused_result));
/* Drops `n` bytes from the front. */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);

#endif
