/* Scratch directories for the unit tests: made under /tmp, removed with
 * everything in them.  Header-only: each test program is one file. */
#ifndef TESTS_UNIT_TMPDIR_H
#define TESTS_UNIT_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static inline int tmpdir_rm_entry(const char *p, const struct stat *sb, int flag,
                                  struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* Makes /tmp/hb-<tag>-XXXXXX and writes its name into dir; 0 or -1. */
static inline int tmpdir_make(char *dir, size_t cap, const char *tag)
{
    int n = snprintf(dir, cap, "/tmp/hb-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    return mkdtemp(dir) ? 0 : -1;
}

static inline void tmpdir_remove(const char *dir)
{
    nftw(dir, tmpdir_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
