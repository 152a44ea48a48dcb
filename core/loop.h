/* A tiny epoll event loop: file events with a callback each, a periodic tick
 * for timeouts, and a before-sleep hook that flushes what a turn produced
 * (ACKs) in one pass.  One loop per thread; not thread-safe except
 * loop_stop(), which may be called from a signal-free context of any
 * thread. */
#ifndef CORE_LOOP_H
#define CORE_LOOP_H

#include <stdint.h>

struct loop; /* opaque */

enum { LOOP_READ = 1, LOOP_WRITE = 2, LOOP_EDGE = 4 };

/* Called with the events (LOOP_READ/LOOP_WRITE, plus LOOP_READ for
 * errors/hang-ups so the owner sees them on its next read). */
typedef void (*loop_fd_cb)(void *ud, int fd, unsigned events);
typedef void (*loop_hook_cb)(void *ud);

struct loop *loop_new(void);
void loop_free(struct loop *l);

/* Registers fd with interest `events`; `ud` is passed back.  Returns 0/-1. */
int loop_add(struct loop *l, int fd, unsigned events, loop_fd_cb cb, void *ud)
    __attribute__((warn_unused_result));
int loop_mod(struct loop *l, int fd, unsigned events) __attribute__((warn_unused_result));
void loop_del(struct loop *l, int fd);

/* The hook runs before every sleep; the tick every `tick_ms`. */
void loop_set_before_sleep(struct loop *l, loop_hook_cb cb, void *ud);
void loop_set_tick(struct loop *l, unsigned tick_ms, loop_hook_cb cb, void *ud);
/* Makes the next sleep return at once (some work is ready without an fd
 * event, e.g. a paused connection can resume). */
void loop_no_sleep(struct loop *l);

/* Runs until loop_stop().  Returns 0, or -1 if epoll itself fails. */
int loop_run(struct loop *l);
void loop_stop(struct loop *l);

#endif
