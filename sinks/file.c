/* file — writing one block as a file, atomically and durably: a temporary
 * name in the same directory, fsync, rename over the final name, fsync of
 * the directory.  A reader (or the operator's upload script) therefore sees
 * either no file or the whole block, and a crash between the rename and the
 * store's `done` only means the same block is written again under the same
 * name — never two files for one block.
 *
 * Threads: the sink thread; no shared state. */
#include "sinks/sinks.h"

#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sink_mkdirs(const char *dir, char *err, size_t errcap)
{
    return fs_mkdirs(dir, err, errcap);
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int sink_file_write(const char *dir, const char *name, const uint8_t *p, size_t len, char *err,
                    size_t errcap)
{
    char tmp[4096], final[4096];
    int n1 = snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    int n2 = snprintf(final, sizeof final, "%s/%s", dir, name);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof tmp || (size_t)n2 >= sizeof final) {
        snprintf(err, errcap, "path too long");
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errcap, "create %s: %s", tmp, strerror(e));
        return -1;
    }
    /* A temporary left by a crash may have been created with another mode. */
    if (fchmod(fd, 0600) < 0 || write_all(fd, p, len) < 0 || fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        snprintf(err, errcap, "write %s: %s", tmp, strerror(e));
        return -1;
    }
    if (close(fd) < 0) {
        int e = errno;
        unlink(tmp);
        snprintf(err, errcap, "close %s: %s", tmp, strerror(e));
        return -1;
    }
    if (rename(tmp, final) < 0) {
        int e = errno;
        unlink(tmp);
        snprintf(err, errcap, "rename to %s: %s", final, strerror(e));
        return -1;
    }
    /* The rename is durable only once the directory is. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0) {
        int e = errno;
        if (dfd >= 0)
            close(dfd);
        snprintf(err, errcap, "fsync %s: %s", dir, strerror(e));
        return -1;
    }
    close(dfd);
    return 0;
}
