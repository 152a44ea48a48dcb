/* store — the hand-off between the producer (the network loop) and the one
 * SQLite writer thread, and the writer's main loop.
 *
 * Design: the producer puts messages on a bounded ring under a mutex; the
 * writer, when it finds work, takes everything waiting (up to max_group) in
 * one go, writes it in one transaction (store_db.c), then appends the results
 * to a completion ring in submission order and writes the eventfd once for
 * the whole group.  The producer never waits on the disk: the mutex is only
 * held to move pointers, and the writer is signalled only when it is really
 * asleep, so a busy writer costs the producer no system call.
 *
 * Bounds: `inflight` counts messages submitted whose results were not yet
 * taken; it never exceeds the queue capacity, so neither ring can overflow
 * and store_space() is the whole back-pressure signal.
 *
 * Threads: the producer-facing calls run on the one producer thread; the
 * writer thread runs writer_main; store_open/store_close on the main
 * thread.  The checkpointer thread (store_db.c) only copies the WAL. */
#include "store/store_int.h"
#include "core/fsutil.h"

#include "core/clock.h"
#include "core/limits.h"
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- messages ---------------------------------------------------------- */

static size_t cstr_len(const char *s)
{
    return s ? strlen(s) : 0;
}

struct store_msg *store_msg_new(const struct store_msg_fields *f)
{
    if (!f || !f->ack_code || !f->ack_code[0] || !f->ack_code[1] || f->ack_code[2])
        return NULL;

    const void *src[SF_COUNT];
    size_t len[SF_COUNT];
    src[SF_RAW] = f->raw;               len[SF_RAW] = f->raw_len;
    src[SF_LISTENER] = f->listener;     len[SF_LISTENER] = cstr_len(f->listener);
    src[SF_PEER] = f->peer;             len[SF_PEER] = cstr_len(f->peer);
    src[SF_SEND_APP] = f->send_app;     len[SF_SEND_APP] = f->send_app_len;
    src[SF_SEND_FAC] = f->send_fac;     len[SF_SEND_FAC] = f->send_fac_len;
    src[SF_CONTROL_ID] = f->control_id; len[SF_CONTROL_ID] = f->control_id_len;
    src[SF_MSG_TYPE] = f->msg_type;     len[SF_MSG_TYPE] = f->msg_type_len;
    src[SF_TRIGGER] = f->trigger;       len[SF_TRIGGER] = f->trigger_len;
    src[SF_VERSION] = f->version;       len[SF_VERSION] = f->version_len;
    src[SF_ROWS] = f->rows;             len[SF_ROWS] = f->rows_len;
    int why = f->quarantined || f->filtered || f->rejected;
    src[SF_REASON] = f->reason;         len[SF_REASON] = why ? cstr_len(f->reason) : 0;
    src[SF_ERR_WHERE] = f->err_where;   len[SF_ERR_WHERE] = f->rejected ? cstr_len(f->err_where) : 0;
    src[SF_APPT] = NULL;                len[SF_APPT] = 0;
    if (f->appt) {
        for (int i = 0; i < STORE_APPT_NTEXT; i++)
            len[SF_APPT] += cstr_len(f->appt->text[i]) + 1;
    }

    size_t total = 0;
    for (int i = 0; i < SF_COUNT; i++) {
        if (len[i] && !src[i] && i != SF_APPT)
            return NULL; /* a length without bytes is a caller bug */
        if (len[i] > SIZE_MAX - sizeof(struct store_msg) - total)
            return NULL;
        total += len[i];
    }

    struct store_msg *m = malloc(sizeof *m + total);
    if (!m)
        return NULL;
    m->tag = 0;
    m->received_ms = f->received_ms;
    m->row_count = f->row_count;
    m->layout = f->layout;
    m->quarantined = f->quarantined != 0;
    m->digest = f->digest;
    m->filtered = f->filtered != 0;
    m->rejected = f->rejected != 0;
    m->err_code = f->err_code;
    m->has_appt = f->appt != NULL;
    m->appt_event_time = f->appt ? f->appt->event_time : -1;
    m->appt_start_s = f->appt ? f->appt->start_s : -1;
    m->appt_duration_min = f->appt ? f->appt->duration_min : -1;
    memcpy(m->ack_code, f->ack_code, 3);
    size_t off = 0;
    for (int i = 0; i < SF_COUNT; i++) {
        m->span[i].off = off;
        m->span[i].len = len[i];
        if (i == SF_APPT && f->appt) {
            /* the facts one after the other, each with its NUL */
            size_t o = off;
            for (int k = 0; k < STORE_APPT_NTEXT; k++) {
                size_t n = cstr_len(f->appt->text[k]);
                if (n)
                    memcpy(m->data + o, f->appt->text[k], n);
                m->data[o + n] = '\0';
                o += n + 1;
            }
        } else if (len[i]) {
            memcpy(m->data + off, src[i], len[i]);
        }
        off += len[i];
    }
    return m;
}

void store_msg_free(struct store_msg *m)
{
    free(m);
}

/* ---- writer thread ----------------------------------------------------- */

static void efd_signal(struct store *s)
{
    uint64_t one = 1;
    /* EAGAIN would mean the counter is saturated: the producer is already
     * due to wake, so there is nothing to add. */
    if (write(s->efd, &one, sizeof one) < 0 && errno != EAGAIN) {
        int e = errno;
        log_error("store_eventfd_write", " errno=%d", e);
    }
}

/* Publishes the results of the group the writer holds, in submission order,
 * then frees the messages.  Only called after COMMIT returned (or the group
 * failed), which is what makes STORE_STORED mean durable. */
static void publish(struct store *s, size_t n)
{
    pthread_mutex_lock(&s->mu);
    size_t idx = s->r_head + s->r_count;
    if (idx >= s->cap)
        idx -= s->cap;
    for (size_t i = 0; i < n; i++) {
        s->grp_res[i].tag = s->grp[i]->tag;
        s->res[idx] = s->grp_res[i];
        if (++idx == s->cap)
            idx = 0;
    }
    s->r_count += n;
    atomic_fetch_add_explicit(&s->published, n, memory_order_release);
    pthread_mutex_unlock(&s->mu);
    efd_signal(s);
    for (size_t i = 0; i < n; i++) {
        store_msg_free(s->grp[i]);
        s->grp[i] = NULL;
    }
}

static void fail_group(struct store *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        s->grp_res[i].status = STORE_FAILED;
        s->grp_res[i].id = 0;
        s->grp_res[i].key_reused = 0;
        memcpy(s->grp_res[i].ack_code, s->grp[i]->ack_code, 3);
    }
    atomic_fetch_add_explicit(&s->st.failures, n, memory_order_relaxed);
}

uint64_t store_housekeep_interval_ms(const struct store_opts *o)
{
    uint64_t shortest = (uint64_t)o->retention_days * 86400000u;
    for (int k = 0; o->use_keep && k < STORE_KIND_N; k++)
        if (o->keep_ms[k] < shortest)
            shortest = o->keep_ms[k];
    uint64_t every = shortest / 10;
    if (every < STORE_HOUSEKEEP_MIN_MS)
        every = STORE_HOUSEKEEP_MIN_MS;
    return every < STORE_HOUSEKEEP_MS ? every : STORE_HOUSEKEEP_MS;
}

static void housekeep(struct store *s, uint64_t now_ms)
{
    int more = 0;
    long purged = s->be->housekeep(s, clock_wall_ms(), &more);
    /* Work left means a backlog: come back soon, between groups, rather
     * than holding the write lock for one long purge. */
    if (more)
        s->next_housekeep_ms = now_ms + STORE_DISK_CHECK_MS;
    else
        s->next_housekeep_ms = now_ms + store_housekeep_interval_ms(&s->opts);
    if (purged > 0)
        log_info("store_retention", " purged=%ld", purged);
}

static void deadline_ts(struct timespec *ts, uint64_t wait_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(wait_ms / 1000);
    ts->tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *writer_main(void *arg)
{
    struct store *s = arg;
    for (;;) {
        int stop = 0, hk = 0;
        size_t n = 0;

        pthread_mutex_lock(&s->mu);
        for (;;) {
            if (s->q_count || s->stopping || s->housekeep_asked)
                break;
            uint64_t now = clock_mono_ms();
            uint64_t wake = s->next_housekeep_ms;
            if (s->be_wake_ms && s->be_wake_ms < wake)
                wake = s->be_wake_ms;
            if (now >= wake)
                break;
            struct timespec ts;
            deadline_ts(&ts, wake - now);
            s->writer_waiting = 1;
            atomic_store_explicit(&s->busy_since_ms, 0, memory_order_relaxed);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            s->writer_waiting = 0;
        }
        atomic_store_explicit(&s->busy_since_ms, clock_mono_ms(), memory_order_relaxed);
        /* Gather: fewer queued than active senders means the others' next
         * messages are a network round trip away (their ACKs just left);
         * waiting that long lets one fsync serve all of them. */
        unsigned want = atomic_load_explicit(&s->expected_group, memory_order_relaxed);
        if (want > s->opts.max_group)
            want = s->opts.max_group;
        if (s->q_count && s->q_count < want && !s->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += STORE_GATHER_US * 1000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            s->writer_gathering = 1;
            while (s->q_count < want && !s->stopping &&
                   pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0)
                ;
            s->writer_gathering = 0;
            s->gather_waits++;
        }
        n = s->q_count < s->opts.max_group ? s->q_count : s->opts.max_group;
        for (size_t i = 0; i < n; i++) {
            s->grp[i] = s->q[s->q_head];
            if (++s->q_head == s->cap)
                s->q_head = 0;
        }
        s->q_count -= n;
        stop = s->stopping && n == 0 && s->q_count == 0;
        hk = s->housekeep_asked;
        s->housekeep_asked = 0;
        pthread_mutex_unlock(&s->mu);

        if (stop)
            break;
        uint64_t now = clock_mono_ms();
        if (s->be->tick)
            s->be->tick(s, now);
        if (n) {
            if (s->be->unavailable(s, now))
                fail_group(s, n);
            else
                s->be->write_group(s, n);
            publish(s, n);
            if (s->be->after_group)
                s->be->after_group(s);
        }
        if (s->be->housekeep && (hk || now >= s->next_housekeep_ms))
            housekeep(s, now);
        else if (!s->be->housekeep && now >= s->next_housekeep_ms)
            s->next_housekeep_ms = now + STORE_HOUSEKEEP_MS;
    }
    return NULL;
}

/* ---- open / close ------------------------------------------------------ */

static void store_destroy(struct store *s)
{
    s->be->close(s);
    /* Anything still queued can only be left when the writer never started. */
    while (s->q && s->q_count) {
        /* q_count <= cap, so the ring index never revisits a freed slot */
        store_msg_free(s->q[s->q_head]); // NOLINT(clang-analyzer-unix.Malloc)
        if (++s->q_head == s->cap)
            s->q_head = 0;
        s->q_count--;
    }
    if (s->efd >= 0)
        close(s->efd);
    pthread_cond_destroy(&s->ckpt_cv);
    pthread_mutex_destroy(&s->ckpt_mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->rt_mu_storage);
    for (size_t i = 0; i < s->n_files; i++) {
        free(s->files[i].path_own);
        free(s->files[i].prefix_own);
    }
    free(s->cluster);
    free(s->grp_res);
    free(s->grp);
    free(s->res);
    free(s->q);
    free(s->dir_buf);
    free(s->path_buf);
    free(s);
}

struct store *store_open(const struct store_opts *o, char *errbuf, size_t errcap)
{
    if (errcap)
        errbuf[0] = '\0';
    int pg = o && o->type == STORE_POSTGRESQL;
    if (!o || (pg ? !o->url || !o->url[0] : !o->path || !o->path[0])) {
        snprintf(errbuf, errcap, pg ? "store: no PostgreSQL url" : "store: no database path");
        return NULL;
    }
    struct store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(errbuf, errcap, "store: out of memory");
        return NULL;
    }
    s->efd = -1;
    s->opts = *o;
    s->be = pg ? &store_pg_backend : &store_sqlite_backend;
    s->cap = o->queue_capacity ? o->queue_capacity : STORE_QUEUE_CAPACITY;
    if (!s->opts.max_group)
        s->opts.max_group = STORE_MAX_GROUP;
    if (s->opts.max_group > s->cap)
        s->opts.max_group = (unsigned)s->cap;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, &ca);
    pthread_mutex_init(&s->ckpt_mu, NULL);
    pthread_cond_init(&s->ckpt_cv, NULL);
    s->rt_mu = &s->rt_mu_storage;
    pthread_mutex_init(s->rt_mu, NULL);
    pthread_condattr_destroy(&ca);

    s->n_files = o->n_files < STORE_MAX_FILE_KEEPS ? o->n_files : STORE_MAX_FILE_KEEPS;
    for (size_t i = 0; i < s->n_files; i++) {
        struct store_file_state *f = &s->files[i];
        f->k = o->files[i];
        f->k.path = f->path_own = o->files[i].path ? strdup(o->files[i].path) : NULL;
        f->k.prefix = f->prefix_own = o->files[i].prefix ? strdup(o->files[i].prefix) : NULL;
        if (!f->path_own || (o->files[i].prefix && !f->prefix_own)) {
            snprintf(errbuf, errcap, "store: out of memory");
            goto fail;
        }
        struct stat st;
        f->last_rotate_ms = clock_wall_ms();
        f->rotate_first = f->k.rotate && stat(f->k.path, &st) == 0 && S_ISREG(st.st_mode) &&
                          st.st_size > 0;
    }
    s->opts.n_files = 0; /* the copies above are the ones used */

    /* PostgreSQL: the path only names where local files would go. */
    const char *path = o->path && o->path[0] ? o->path : "hl7bridge.db";
    s->path_buf = strdup(path);
    s->dir_buf = fs_dir_of(path);
    s->q = calloc(s->cap, sizeof *s->q);
    s->res = calloc(s->cap, sizeof *s->res);
    s->grp = calloc(s->opts.max_group, sizeof *s->grp);
    s->grp_res = calloc(s->opts.max_group, sizeof *s->grp_res);
    if (!s->path_buf || !s->dir_buf || !s->q || !s->res || !s->grp || !s->grp_res) {
        snprintf(errbuf, errcap, "store: out of memory");
        goto fail;
    }
    s->opts.path = s->path_buf;

    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        int e = errno;
        snprintf(errbuf, errcap, "store: eventfd: %s", strerror(e));
        goto fail;
    }
    if (s->be->open(s, errbuf, errcap) < 0)
        goto fail;

    /* Retention first runs shortly after start, not during start-up. */
    s->next_housekeep_ms = clock_mono_ms() + STORE_HOUSEKEEP_FIRST_MS;
    int rc = pthread_create(&s->writer, NULL, writer_main, s);
    if (rc) {
        snprintf(errbuf, errcap, "store: writer thread: %s", strerror(rc));
        goto fail;
    }
    s->writer_started = 1;
    if (!pg)
        log_info("store_open", " path=%s queue=%zu max_group=%u", s->path_buf, s->cap,
                 s->opts.max_group);
    return s;

fail:
    store_destroy(s);
    return NULL;
}

/* Contract: the writer stops only once the queue is empty, so every message
 * submitted before close gets its result published and committed (or
 * failed).  Results the producer has not taken by the time close returns are
 * discarded with the store; a producer that must answer every sender drains
 * first with store_pending()/store_take_results(). */
void store_close(struct store *s)
{
    if (!s)
        return;
    if (s->writer_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->writer, NULL);
        s->writer_started = 0;
    }
    struct store_stats st;
    store_get_stats(s, &st);
    log_info("store_close",
             " commits=%llu messages=%llu duplicates=%llu failures=%llu avg_commit_us=%llu "
             "gather_waits=%llu",
             (unsigned long long)st.commits, (unsigned long long)st.messages,
             (unsigned long long)st.duplicates, (unsigned long long)st.failures,
             (unsigned long long)(st.commits ? st.commit_ns_total / st.commits / 1000u : 0),
             (unsigned long long)s->gather_waits);
    store_destroy(s);
}

/* ---- producer side ----------------------------------------------------- */

size_t store_space(const struct store *s)
{
    return s->inflight < s->cap ? s->cap - s->inflight : 0;
}

size_t store_pending(const struct store *s)
{
    uint64_t pub = atomic_load_explicit(&s->published, memory_order_acquire);
    return (size_t)(s->submitted - pub);
}

int store_submit(struct store *s, struct store_msg *m, uint64_t tag)
{
    if (!m)
        return -1;
    if (!s || s->inflight >= s->cap) {
        store_msg_free(m);
        return -1;
    }
    m->tag = tag;
    pthread_mutex_lock(&s->mu);
    size_t idx = s->q_head + s->q_count;
    if (idx >= s->cap)
        idx -= s->cap;
    s->q[idx] = m;
    s->q_count++;
    unsigned want = atomic_load_explicit(&s->expected_group, memory_order_relaxed);
    int wake = s->writer_waiting || (s->writer_gathering && s->q_count >= want);
    pthread_mutex_unlock(&s->mu);
    /* The writer checks the queue under the mutex before it sleeps, so when
     * it is not marked waiting it is bound to see this message. */
    if (wake)
        pthread_cond_signal(&s->cv);
    s->inflight++;
    s->submitted++;
    return 0;
}

void store_set_expected_group(struct store *s, unsigned n)
{
    atomic_store_explicit(&s->expected_group, n, memory_order_relaxed);
}

int store_event_fd(const struct store *s)
{
    return s->efd;
}

size_t store_take_results(struct store *s, struct store_result *out, size_t max)
{
    uint64_t v;
    /* Clear the eventfd before looking at the ring: a group published after
     * this read writes the eventfd again, so no wake-up is lost. */
    ssize_t r = read(s->efd, &v, sizeof v);
    (void)r;

    pthread_mutex_lock(&s->mu);
    size_t k = s->r_count < max ? s->r_count : max;
    for (size_t i = 0; i < k; i++) {
        out[i] = s->res[s->r_head];
        if (++s->r_head == s->cap)
            s->r_head = 0;
    }
    s->r_count -= k;
    size_t left = s->r_count;
    pthread_mutex_unlock(&s->mu);

    s->inflight -= k;
    if (left)
        efd_signal(s); /* the caller's `out` was too small: stay readable */
    return k;
}

uint64_t store_writer_stalled_ms(const struct store *s, uint64_t now_ms)
{
    uint64_t since = atomic_load_explicit(&s->busy_since_ms, memory_order_relaxed);
    return since && now_ms > since ? now_ms - since : 0;
}

void store_request_housekeeping(struct store *s)
{
    pthread_mutex_lock(&s->mu);
    s->housekeep_asked = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void store_get_stats(const struct store *s, struct store_stats *out)
{
    out->commits = atomic_load_explicit(&s->st.commits, memory_order_relaxed);
    out->messages = atomic_load_explicit(&s->st.messages, memory_order_relaxed);
    out->duplicates = atomic_load_explicit(&s->st.duplicates, memory_order_relaxed);
    out->control_id_reused = atomic_load_explicit(&s->st.control_id_reused, memory_order_relaxed);
    out->failures = atomic_load_explicit(&s->st.failures, memory_order_relaxed);
    out->max_group_seen = atomic_load_explicit(&s->st.max_group_seen, memory_order_relaxed);
    out->commit_ns_total = atomic_load_explicit(&s->st.commit_ns_total, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&s->st.rejected, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&s->st.reconnects, memory_order_relaxed);
    out->unavailable = atomic_load_explicit(&s->st.unavailable, memory_order_relaxed);
    pthread_mutex_lock(s->rt_mu);
    out->retention = s->rt_report;
    pthread_mutex_unlock(s->rt_mu);
}

void store_set_acks(struct store *s, uint64_t aa, uint64_t ae, uint64_t ar)
{
    if (!s)
        return;
    atomic_store_explicit(&s->node_acks[0], aa, memory_order_relaxed);
    atomic_store_explicit(&s->node_acks[1], ae, memory_order_relaxed);
    atomic_store_explicit(&s->node_acks[2], ar, memory_order_relaxed);
}

size_t store_cluster_nodes(const struct store *s, struct store_node *out, size_t cap)
{
    pthread_mutex_lock(s->rt_mu);
    size_t n = s->n_cluster < cap ? s->n_cluster : cap;
    if (n)
        memcpy(out, s->cluster, n * sizeof *out);
    pthread_mutex_unlock(s->rt_mu);
    return n;
}
