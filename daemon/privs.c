/* Limits and privilege dropping (main thread, at start-up, before any other
 * thread exists except the store writer, which only writes through its open
 * descriptors). */
#include "daemon/privs.h"
#include "core/fsutil.h"
#include "core/log.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

void privs_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            log_info("nofile_raised", "from=%llu to=%llu", (unsigned long long)was,
                     (unsigned long long)rl.rlim_cur);
    }
}

/* chown of one path when it exists; a missing file is fine (created later
 * by the unprivileged process in a directory it now owns). */
static int give(const char *path, uid_t uid, gid_t gid, char *errbuf, size_t errcap)
{
    if (!path || !*path)
        return 0;
    if (chown(path, uid, gid) != 0 && errno != ENOENT) {
        snprintf(errbuf, errcap, "cannot hand %s to the configured user: %s", path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

static int give_dir_of(const char *path, uid_t uid, gid_t gid, char *errbuf, size_t errcap)
{
    char *dir = fs_dir_of(path);
    if (!dir) {
        snprintf(errbuf, errcap, "out of memory");
        return -1;
    }
    int rc = give(dir, uid, gid, errbuf, errcap);
    free(dir);
    return rc;
}

int privs_drop(const struct config *c, char *errbuf, size_t errcap)
{
    if (!c->user)
        return 0;
    if (geteuid() != 0) {
        log_warn("privs_not_root", "user=%s note=already_unprivileged", c->user);
        return 0;
    }
    struct passwd *pw = getpwnam(c->user);
    if (!pw) {
        snprintf(errbuf, errcap, "user '%s' does not exist", c->user);
        return -1;
    }
    const char *suffixes[] = { "", "-wal", "-shm" };
    char p[4096];
    if (give_dir_of(c->store.path, pw->pw_uid, pw->pw_gid, errbuf, errcap) != 0)
        return -1;
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", c->store.path, suffixes[i]);
        if (give(p, pw->pw_uid, pw->pw_gid, errbuf, errcap) != 0)
            return -1;
    }
    if (give(c->sinks.audit.directory, pw->pw_uid, pw->pw_gid, errbuf, errcap) != 0 ||
        give(c->sinks.sms.path, pw->pw_uid, pw->pw_gid, errbuf, errcap) != 0 ||
        give_dir_of(c->sinks.sms.path, pw->pw_uid, pw->pw_gid, errbuf, errcap) != 0)
        return -1;
    if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        snprintf(errbuf, errcap, "cannot switch to user '%s': %s", c->user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        snprintf(errbuf, errcap, "root could be regained after switching to '%s'", c->user);
        return -1;
    }
    log_info("privs_dropped", "user=%s uid=%u gid=%u", c->user, (unsigned)pw->pw_uid,
             (unsigned)pw->pw_gid);
    return 0;
}
