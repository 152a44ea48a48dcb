/* Process set-up that needs root or touches limits: raising the open-file
 * limit for many connections, and dropping root after binding. */
#ifndef DAEMON_PRIVS_H
#define DAEMON_PRIVS_H

#include "config/config.h"

/* Raises RLIMIT_NOFILE's soft limit to the hard limit (each connection is
 * one descriptor).  Logs the result; never fails the start. */
void privs_raise_nofile(void);

/* With `user:` configured and running as root: hands the store and output
 * paths to that user and switches to it (groups, gid, uid), so a later bug
 * cannot act as root.  Returns 0, or -1 with errbuf (the daemon stops). */
int privs_drop(const struct config *c, char *errbuf, size_t errcap);

#endif
