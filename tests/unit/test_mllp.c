/* Framer tests: every corpus message split at every byte boundary and at
 * random chunkings, frames back to back, garbage between frames, abandoned
 * frames, oversize, and the stream reassembly a connection performs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/buf.h"
#include "mllp/mllp.h"

/* A connection-like harness: appends chunks to a buffer, runs the framer
 * as mllp/server.c does, and collects the frames. */
struct harness {
    struct mllp_framer f;
    struct buf b;
    uint8_t **frames;
    size_t *lens;
    size_t n, cap;
    int oversize;
};

static void h_init(struct harness *h, size_t max)
{
    memset(h, 0, sizeof *h);
    mllp_framer_init(&h->f, max);
    buf_init(&h->b, max + 65536 + 16);
}

static void h_release(struct harness *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->frames[i]);
    free(h->frames);
    free(h->lens);
    buf_release(&h->b);
}

static void h_feed(struct harness *h, const uint8_t *p, size_t len)
{
    assert_int_equal(buf_append(&h->b, p, len), 0);
    for (;;) {
        struct mllp_frame fr;
        int r = mllp_framer_next(&h->f, buf_data(&h->b), h->b.len, &fr);
        if (r == MLLP_FRAME) {
            if (h->n == h->cap) {
                h->cap = h->cap ? h->cap * 2 : 8;
                h->frames = realloc(h->frames, h->cap * sizeof *h->frames);
                h->lens = realloc(h->lens, h->cap * sizeof *h->lens);
            }
            h->frames[h->n] = malloc(fr.len + 1);
            memcpy(h->frames[h->n], buf_data(&h->b) + fr.off, fr.len);
            h->lens[h->n++] = fr.len;
            assert_true(fr.consumed <= h->b.len);
            buf_consume(&h->b, fr.consumed);
            continue;
        }
        if (r == MLLP_OVERSIZE) {
            h->oversize++;
            buf_reset(&h->b);
            return;
        }
        assert_true(fr.consumed <= h->b.len);
        buf_consume(&h->b, fr.consumed);
        return;
    }
}

static uint8_t *frame_of(const uint8_t *msg, size_t len, size_t *out_len)
{
    uint8_t *f = malloc(len + 3);
    f[0] = MLLP_SB;
    memcpy(f + 1, msg, len);
    f[len + 1] = MLLP_EB;
    f[len + 2] = MLLP_CR;
    *out_len = len + 3;
    return f;
}

static void test_single_and_pipelined(void **state)
{
    (void)state;
    const char *m1 = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r";
    const char *m2 = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|2|P|2.5\r";
    size_t l1, l2;
    uint8_t *f1 = frame_of((const uint8_t *)m1, strlen(m1), &l1);
    uint8_t *f2 = frame_of((const uint8_t *)m2, strlen(m2), &l2);
    uint8_t stream[512];
    memcpy(stream, f1, l1);
    memcpy(stream + l1, f2, l2);
    struct harness h;
    h_init(&h, 1 << 20);
    h_feed(&h, stream, l1 + l2);
    assert_int_equal(h.n, 2);
    assert_int_equal(h.lens[0], strlen(m1));
    assert_memory_equal(h.frames[0], m1, strlen(m1));
    assert_memory_equal(h.frames[1], m2, strlen(m2));
    assert_int_equal(h.b.len, 0);
    h_release(&h);
    free(f1);
    free(f2);
}

static void test_garbage_and_restart(void **state)
{
    (void)state;
    /* CR/LF and junk between frames, a BOM outside, an abandoned frame. */
    const uint8_t s[] = "\r\n\xEF\xBB\xBFjunk\x0bMSH|1\x1c\r\r\n\x0bMSH|abandoned\x0bMSH|2\x1c\r";
    struct harness h;
    h_init(&h, 1 << 20);
    h_feed(&h, s, sizeof s - 1);
    assert_int_equal(h.n, 2);
    assert_memory_equal(h.frames[0], "MSH|1", 5);
    assert_int_equal(h.lens[1], 5);
    assert_memory_equal(h.frames[1], "MSH|2", 5);
    assert_int_equal(h.f.restarts, 1);
    assert_true(h.f.garbage >= 2 + 3 + 4 + 2 + 13);
    h_release(&h);
}

static void test_stray_eb_kept(void **state)
{
    (void)state;
    /* 0x1C not followed by CR is data; an end marker split across reads. */
    const uint8_t s[] = "\x0bMSH|a\x1cx|b\x1c\r";
    struct harness h;
    h_init(&h, 1 << 20);
    h_feed(&h, s, 11);     /* ends right after the final 0x1C */
    assert_int_equal(h.n, 0);
    h_feed(&h, s + 11, 1); /* the CR */
    assert_int_equal(h.n, 1);
    assert_int_equal(h.lens[0], 9);
    assert_memory_equal(h.frames[0], "MSH|a\x1cx|b", 9);
    h_release(&h);
}

static void test_oversize(void **state)
{
    (void)state;
    struct harness h;
    h_init(&h, 100);
    uint8_t big[300];
    memset(big, 'A', sizeof big);
    big[0] = MLLP_SB;
    h_feed(&h, big, 50);
    assert_int_equal(h.oversize, 0);
    h_feed(&h, big + 50, 100);
    assert_int_equal(h.oversize, 1);
    h_release(&h);
    /* Exactly at the limit is fine. */
    h_init(&h, 100);
    uint8_t ok[103];
    memset(ok, 'B', sizeof ok);
    ok[0] = MLLP_SB;
    ok[101] = MLLP_EB;
    ok[102] = MLLP_CR;
    h_feed(&h, ok, sizeof ok);
    assert_int_equal(h.oversize, 0);
    assert_int_equal(h.n, 1);
    assert_int_equal(h.lens[0], 100);
    h_release(&h);
}

/* Feeds `stream` in two parts split at every offset (or `samples` random
 * offsets for long streams) and in random chunkings; checks the frames. */
static void check_all_splits(const uint8_t *stream, size_t slen, const uint8_t *msg, size_t mlen,
                             unsigned copies, unsigned *rng)
{
    size_t step = slen > 6000 ? slen / 300 : 1;
    for (size_t k = 0; k <= slen; k += step) {
        struct harness h;
        h_init(&h, 64u << 20);
        h_feed(&h, stream, k);
        h_feed(&h, stream + k, slen - k);
        assert_int_equal(h.n, copies);
        for (unsigned i = 0; i < copies; i++) {
            assert_int_equal(h.lens[i], mlen);
            assert_memory_equal(h.frames[i], msg, mlen);
        }
        h_release(&h);
    }
    for (int round = 0; round < 20; round++) {
        struct harness h;
        h_init(&h, 64u << 20);
        size_t off = 0;
        while (off < slen) {
            *rng = *rng * 1103515245u + 12345u;
            size_t maxc = round < 10 ? 7 : 4096;
            size_t c = 1 + (*rng >> 8) % maxc;
            if (c > slen - off)
                c = slen - off;
            h_feed(&h, stream + off, c);
            off += c;
        }
        assert_int_equal(h.n, copies);
        for (unsigned i = 0; i < copies; i++)
            assert_memory_equal(h.frames[i], msg, mlen);
        h_release(&h);
    }
}

static size_t corpus_files(const char *dir, char ***out)
{
    size_t n = 0, cap = 0;
    char **v = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            char **sub = NULL;
            size_t sn = corpus_files(path, &sub);
            for (size_t i = 0; i < sn; i++) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    v = realloc(v, cap * sizeof *v);
                }
                v[n++] = sub[i];
            }
            free(sub);
        } else if (strstr(e->d_name, ".hl7")) {
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                v = realloc(v, cap * sizeof *v);
            }
            v[n++] = strdup(path);
        }
    }
    closedir(d);
    *out = v;
    return n;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *len = 0;
    if (n < 0) {
        fclose(f);
        return NULL;
    }
    uint8_t *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

static void sweep(const char *root)
{
    char **files = NULL;
    size_t n = corpus_files(root, &files);
    if (n == 0) {
        print_message("%s absent: corpus sweep skipped\n", root);
        skip();
    }
    unsigned rng = 42, checked = 0;
    for (size_t i = 0; i < n; i++) {
        size_t mlen = 0;
        uint8_t *msg = slurp(files[i], &mlen);
        assert_non_null(msg);
        /* A file that itself contains MLLP markers cannot be framed as one
         * message (binary garbage samples): they are covered elsewhere. */
        if (mlen == 0 || memchr(msg, MLLP_SB, mlen) || memchr(msg, MLLP_EB, mlen)) {
            free(msg);
            free(files[i]);
            continue;
        }
        size_t fl;
        uint8_t *fr = frame_of(msg, mlen, &fl);
        /* Three copies back to back with garbage between. */
        size_t slen = 3 * fl + 4;
        uint8_t *stream = malloc(slen);
        memcpy(stream, fr, fl);
        memcpy(stream + fl, "\r\n", 2);
        memcpy(stream + fl + 2, fr, fl);
        memcpy(stream + 2 * fl + 2, "\n\r", 2);
        memcpy(stream + 2 * fl + 4, fr, fl);
        check_all_splits(stream, slen, msg, mlen, 3, &rng);
        checked++;
        free(stream);
        free(fr);
        free(msg);
        free(files[i]);
    }
    free(files);
    print_message("framer corpus sweep: %u files\n", checked);
    assert_true(checked > 0);
}

static void test_corpus_every_split(void **state)
{
    (void)state;
    sweep("../shared/corpus");
}

static void test_fixtures_every_split(void **state)
{
    (void)state;
    sweep("tests/fixtures");
}

/* Any number of consecutive start bytes, in one call: the framer walks
 * them in a loop (a recursion per start byte overflowed the stack at about
 * 131,072 of them). */
static void test_many_start_bytes(void **state)
{
    (void)state;
    const size_t nsb = 4u << 20;
    const char *msg = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r";
    size_t ml = strlen(msg);
    uint8_t *b = malloc(nsb + ml + 2);
    assert_non_null(b);
    memset(b, MLLP_SB, nsb);
    memcpy(b + nsb, msg, ml);
    b[nsb + ml] = MLLP_EB;
    b[nsb + ml + 1] = MLLP_CR;
    struct mllp_framer f;
    mllp_framer_init(&f, 1 << 20);
    struct mllp_frame fr;
    assert_int_equal(mllp_framer_next(&f, b, nsb + ml + 2, &fr), MLLP_FRAME);
    assert_int_equal(fr.off, nsb);
    assert_int_equal(fr.len, ml);
    assert_int_equal(fr.consumed, nsb + ml + 2);
    assert_memory_equal(b + fr.off, msg, ml);
    assert_int_equal(f.restarts, nsb - 1);
    /* Start bytes only: nothing to hand out, the last one kept as a start. */
    mllp_framer_init(&f, 1 << 20);
    assert_int_equal(mllp_framer_next(&f, b, nsb, &fr), MLLP_MORE);
    assert_int_equal(fr.consumed, nsb - 1);
    assert_int_equal(f.in_frame, 1);
    free(b);
}

/* frame_end: lenient — 0x1C alone ends a frame when the next frame starts
 * or (mllp_framer_end_lone) after a pause; strict keeps waiting. */
static void test_lenient_end(void **state)
{
    (void)state;
    const uint8_t two[] = "\x0bMSH|1\x1c\x0bMSH|2\x1c\r";
    struct harness h;
    h_init(&h, 1 << 20);
    h_feed(&h, two, sizeof two - 1);
    assert_int_equal(h.n, 1); /* strict: the first frame was abandoned */
    assert_memory_equal(h.frames[0], "MSH|2", 5);
    h_release(&h);

    h_init(&h, 1 << 20);
    mllp_framer_set_lenient(&h.f, 1);
    h_feed(&h, two, sizeof two - 1);
    assert_int_equal(h.n, 2);
    assert_int_equal(h.lens[0], 5);
    assert_memory_equal(h.frames[0], "MSH|1", 5);
    assert_memory_equal(h.frames[1], "MSH|2", 5);
    assert_int_equal(h.f.restarts, 0);
    h_release(&h);

    /* A lone trailing 0x1C: no frame until the caller says the peer paused. */
    const uint8_t lone[] = "xx\x0bMSH|3\x1c";
    struct mllp_framer f;
    struct mllp_frame fr;
    for (int lenient = 0; lenient <= 1; lenient++) {
        mllp_framer_init(&f, 1 << 20);
        mllp_framer_set_lenient(&f, lenient);
        assert_int_equal(mllp_framer_next(&f, lone, sizeof lone - 1, &fr), MLLP_MORE);
        assert_int_equal(fr.consumed, 2);
        const uint8_t *rest = lone + 2;
        size_t rl = sizeof lone - 1 - 2;
        int r = mllp_framer_end_lone(&f, rest, rl, &fr);
        if (!lenient) {
            assert_int_equal(r, MLLP_MORE);
            assert_int_equal(fr.consumed, 0);
            continue;
        }
        assert_int_equal(r, MLLP_FRAME);
        assert_int_equal(fr.off, 1);
        assert_int_equal(fr.len, 5);
        assert_memory_equal(rest + fr.off, "MSH|3", 5);
        assert_int_equal(fr.consumed, rl);
        assert_int_equal(f.in_frame, 0);
    }
    /* A 0x1C inside the data is no lone end. */
    mllp_framer_init(&f, 1 << 20);
    mllp_framer_set_lenient(&f, 1);
    const uint8_t mid[] = "\x0bMSH|\x1cx";
    assert_int_equal(mllp_framer_next(&f, mid, sizeof mid - 1, &fr), MLLP_MORE);
    assert_int_equal(mllp_framer_end_lone(&f, mid, sizeof mid - 1, &fr), MLLP_MORE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_and_pipelined),
        cmocka_unit_test(test_garbage_and_restart),
        cmocka_unit_test(test_stray_eb_kept),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_many_start_bytes),
        cmocka_unit_test(test_lenient_end),
        cmocka_unit_test(test_fixtures_every_split),
        cmocka_unit_test(test_corpus_every_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
