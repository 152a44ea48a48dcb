/* watch — the inputs.files watcher (daemon/watch.c): prepared connector
 * files dropped into a directory are checked, sent like `hl7bridge upload`
 * and moved to their done_directory. */
#ifndef DAEMON_WATCH_H
#define DAEMON_WATCH_H

#include <stddef.h>

#include "config/config.h"

struct input_watch; /* opaque */

/* Starts the watcher thread when inputs.files names a directory; borrows
 * cfg until input_watch_stop.  NULL with err[0] == '\0' when there is
 * nothing to watch, NULL with a reason in err on failure.  Main thread. */
struct input_watch *input_watch_start(const struct config *cfg, char *err, size_t errcap);
/* Stops promptly (a transfer in progress is abandoned; its blocks are sent
 * again at the next start).  NULL is a no-op.  Main thread. */
void input_watch_stop(struct input_watch *w);

#endif
