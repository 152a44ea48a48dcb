/* File-system helpers shared by the store and the sinks. */
#ifndef CORE_FSUTIL_H
#define CORE_FSUTIL_H

#include <stddef.h>

/* Creates every missing directory of `dir` with mode 0700 (chmod after
 * mkdir, so a permissive umask cannot widen it); existing directories are
 * left alone (they may be shared).  Returns 0 when `dir` is a directory at
 * the end, or -1 with a message in err.  Any thread. */
int fs_mkdirs(const char *dir, char *err, size_t errcap) __attribute__((warn_unused_result));

/* The directory part of `path` ("." when there is none, "/" for a file in
 * the root), owned by the caller; NULL when out of memory. */
char *fs_dir_of(const char *path);

#endif
