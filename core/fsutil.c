/* File-system helpers (any thread). */
#include "core/fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int fs_mkdirs(const char *dir, char *err, size_t errcap)
{
    size_t n = strlen(dir);
    if (n == 0) {
        snprintf(err, errcap, "empty directory name");
        return -1;
    }
    char *p = malloc(n + 1);
    if (!p) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, 0700) == 0) {
            if (chmod(p, 0700) < 0) {
                int e = errno;
                snprintf(err, errcap, "chmod %s: %s", p, strerror(e));
                free(p);
                return -1;
            }
        } else if (errno != EEXIST) {
            int e = errno;
            snprintf(err, errcap, "mkdir %s: %s", p, strerror(e));
            free(p);
            return -1;
        }
        p[i] = saved;
    }
    free(p);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errcap, "%s is not a directory", dir);
        return -1;
    }
    return 0;
}

char *fs_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}
