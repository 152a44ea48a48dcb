/* Splitting message files into messages (see msgfile.h). */
#include "daemon/msgfile.h"
#include "hl7/hl7.h"
#include "mllp/mllp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int push(struct msgfile_list *l, const uint8_t *p, size_t len, const char *file, unsigned idx)
{
    /* Trim trailing blank lines so the last segment ends with one CR. */
    while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == ' '))
        len--;
    if (len == 0)
        return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        struct msgfile_msg *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv)
            return -1;
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = (struct msgfile_msg){ p, len, file, idx };
    return 0;
}

static int line_starts_msh(const uint8_t *p, size_t len, size_t i)
{
    return i + 3 < len && p[i] == 'M' && p[i + 1] == 'S' && p[i + 2] == 'H' &&
           (i == 0 || p[i - 1] == '\r' || p[i - 1] == '\n');
}

/* Splits one file's bytes into messages (views into `data`). */
int msgfile_split(const uint8_t *data, size_t len, const char *file, struct msgfile_list *l)
{
    unsigned idx = 0;
    if (memchr(data, MLLP_SB, len)) {
        struct mllp_framer f;
        mllp_framer_init(&f, len);
        size_t off = 0;
        struct mllp_frame fr;
        for (;;) {
            int r = mllp_framer_next(&f, data + off, len - off, &fr);
            if (r != MLLP_FRAME)
                break;
            if (push(l, data + off + fr.off, fr.len, file, ++idx) != 0)
                return -1;
            off += fr.consumed;
        }
        return 0;
    }
    size_t skip = (len >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF) ? 3 : 0;
    if (hl7_is_batch(data + skip, len - skip))
        return push(l, data + skip, len - skip, file, ++idx);
    size_t start = skip;
    for (size_t i = skip + 1; i < len; i++) {
        if (line_starts_msh(data, len, i)) {
            if (push(l, data + start, i - start, file, ++idx) != 0)
                return -1;
            start = i;
        }
    }
    return push(l, data + start, len - start, file, ++idx);
}

uint8_t *msgfile_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 65536, n = 0;
    uint8_t *b = malloc(cap);
    while (b) {
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            uint8_t *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    fclose(f);
    *len = n;
    return b;
}

