/* watch — inputs.files: the daemon looks at each configured directory every
 * inputs.poll_s seconds and sends each prepared connector file found there
 * the way `hl7bridge upload` does (daemon/upload.c: checked first, sent in
 * blocks, checkpoint in the store), then moves it to its done_directory.
 *
 * Which files: regular files whose name matches `pattern` (fnmatch), does
 * not start with '.', and was not written for min_age_s (an exporter still
 * writing it is left alone; writing under a temporary name and renaming is
 * better still).  A file with problems is logged (event=upload_invalid per
 * problem, then input_file_invalid) and left where it is, not taken again
 * until it changes; a file not fully delivered is taken again at the next
 * look, and its checkpoint sends only the missing blocks.  A block the
 * connector refuses is kept in the store for `hl7bridge redrive` and not
 * sent again at the next looks; once every other block is delivered the
 * file is moved as delivered (event input_file_kept_for_redrive).  Moving is a
 * rename (same file system as done_directory), followed by an fsync of the
 * directory; a file of the same name already there gets a numbered name.
 *
 * Threads: start/stop on the main thread; one watcher thread owns the
 * upload client, its own mapping rules and the checkpoint connection. */
#include "daemon/watch.h"

#include "daemon/rules.h"
#include "daemon/upload.h"
#include "core/clock.h"
#include "core/fsutil.h"
#include "core/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WATCH_BAD_MAX 64   /* invalid files remembered (name, size, mtime) */

struct bad_file {
    char path[PATH_MAX];
    off_t size;
    int64_t mtime_ms;
};

struct input_watch {
    const struct config *cfg;
    struct mapping *mp;
    struct upload *up;
    pthread_t th;
    int started;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct bad_file bad[WATCH_BAD_MAX];
    size_t bad_next;
};

static int64_t mtime_ms(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

static int is_bad(const struct input_watch *w, const char *path, const struct stat *st)
{
    for (size_t i = 0; i < WATCH_BAD_MAX; i++)
        if (w->bad[i].path[0] && strcmp(w->bad[i].path, path) == 0 &&
            w->bad[i].size == st->st_size && w->bad[i].mtime_ms == mtime_ms(st))
            return 1;
    return 0;
}

static void remember_bad(struct input_watch *w, const char *path, const struct stat *st)
{
    struct bad_file *b = &w->bad[w->bad_next];
    w->bad_next = (w->bad_next + 1) % WATCH_BAD_MAX;
    snprintf(b->path, sizeof b->path, "%s", path);
    b->size = st->st_size;
    b->mtime_ms = mtime_ms(st);
}

/* Moves src into dir (keeping its name, or name.N when taken). */
static int move_done(const char *src, const char *dir, const char *name)
{
    char err[300], to[PATH_MAX];
    if (fs_mkdirs(dir, err, sizeof err) < 0) {
        log_error("input_file_move_failed", " file=\"%s\" error=\"%s\"", name, err);
        return -1;
    }
    for (unsigned n = 0; n < 1000; n++) {
        int w = n ? snprintf(to, sizeof to, "%s/%s.%u", dir, name, n)
                  : snprintf(to, sizeof to, "%s/%s", dir, name);
        if (w < 0 || (size_t)w >= sizeof to)
            return -1;
        if (access(to, F_OK) != 0)
            break;
    }
    if (rename(src, to) < 0) {
        int e = errno;
        log_error("input_file_move_failed", " file=\"%s\" errno=%d", name, e);
        return -1;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) < 0)
            log_warn("input_file_fsync_failed", " errno=%d", errno);
        close(dfd);
    }
    return 0;
}

static void look(struct input_watch *w, const struct config_input_file *in)
{
    DIR *dp = opendir(in->directory);
    if (!dp)
        return; /* not there (yet): nothing to send */
    struct dirent *de;
    int64_t now = clock_wall_ms();
    while (!atomic_load(&w->stop) && (de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.' || fnmatch(in->pattern, de->d_name, 0) != 0)
            continue;
        char path[PATH_MAX];
        struct stat st;
        int n = snprintf(path, sizeof path, "%s/%s", in->directory, de->d_name);
        if (n < 0 || (size_t)n >= sizeof path || lstat(path, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (now - mtime_ms(&st) < (int64_t)in->min_age_s * 1000 || is_bad(w, path, &st))
            continue;
        log_info("input_file_found", " file=\"%s\" bytes=%lld", de->d_name, (long long)st.st_size);
        switch (upload_file(w->up, path)) {
        case UPLOAD_DELIVERED:
            if (move_done(path, in->done_directory, de->d_name) == 0)
                log_info("input_file_delivered", " file=\"%s\" moved_to=\"%s\"", de->d_name,
                         in->done_directory);
            break;
        case UPLOAD_KEPT:
            /* What is missing is in the store, waiting for redrive: the
             * file itself is not needed again. */
            if (move_done(path, in->done_directory, de->d_name) == 0)
                log_warn("input_file_kept_for_redrive",
                         " file=\"%s\" moved_to=\"%s\" hint=\"refused blocks are kept: "
                         "hl7bridge redrive --list\"", de->d_name, in->done_directory);
            break;
        case UPLOAD_INVALID:
            remember_bad(w, path, &st);
            log_error("input_file_invalid",
                      " file=\"%s\" hint=\"fix or replace the file; it is taken again once it "
                      "changes\"", de->d_name);
            break;
        default:
            log_warn("input_file_not_delivered",
                     " file=\"%s\" hint=\"taken again at the next look; delivered blocks are not "
                     "sent twice\"", de->d_name);
            break;
        }
    }
    closedir(dp);
}

static void *watch_main(void *arg)
{
    struct input_watch *w = arg;
    const struct config *c = w->cfg;
    while (!atomic_load(&w->stop)) {
        for (size_t i = 0; i < c->inputs.n_files && !atomic_load(&w->stop); i++)
            look(w, &c->inputs.files[i]);
        pthread_mutex_lock(&w->mu);
        if (!atomic_load(&w->stop)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)c->inputs.poll_s;
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

struct input_watch *input_watch_start(const struct config *cfg, char *err, size_t errcap)
{
    if (errcap)
        err[0] = '\0';
    if (!cfg->inputs.n_files)
        return NULL;
    struct input_watch *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errcap, "inputs: out of memory");
        return NULL;
    }
    w->cfg = cfg;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    char why[600];
    if (!(w->mp = rules_load(cfg))) {
        snprintf(err, errcap, "inputs: mapping rules");
        goto fail;
    }
    if (!(w->up = upload_new(cfg, w->mp, NULL, NULL, why, sizeof why))) {
        snprintf(err, errcap, "inputs: %s", why);
        goto fail;
    }
    upload_set_stop(w->up, &w->stop);
    upload_set_unattended(w->up);
    if (pthread_create(&w->th, NULL, watch_main, w) != 0) {
        snprintf(err, errcap, "inputs: cannot start the watcher thread");
        goto fail;
    }
    w->started = 1;
    log_info("inputs_started", " directories=%zu poll_s=%u", cfg->inputs.n_files,
             cfg->inputs.poll_s);
    return w;
fail:
    input_watch_stop(w);
    return NULL;
}

void input_watch_stop(struct input_watch *w)
{
    if (!w)
        return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        atomic_store(&w->stop, 1);
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->th, NULL);
    }
    upload_free(w->up);
    mapping_free(w->mp);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
