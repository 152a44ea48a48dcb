/* Configuration → audit sink, and the `redrive` subcommand.  sinks/ does not
 * know config/ or mapping/ (modules stand side by side), so the daemon
 * translates. */
#ifndef DAEMON_SINK_GLUE_H
#define DAEMON_SINK_GLUE_H

#include <stddef.h>

#include "config/config.h"
#include "core/buf.h"
#include "mapping/mapping.h"
#include "sinks/sinks.h"

/* Fills `o` from the configuration.  The header line (configured column
 * names, format and line ending) is formatted into `header`, which the
 * caller releases; every other pointer in `o` borrows from `c`.  0 / -1. */
int sink_glue_opts(const struct config *c, const struct mapping *mp,
                   struct sink_audit_opts *o, struct buf *header)
    __attribute__((warn_unused_result));

/* Starts the audit sink of `c` (store already open).  NULL with a message
 * in err.  Main thread. */
struct sink_audit *sink_glue_start(const struct config *c, const struct mapping *mp, char *err,
                                   size_t errcap);

#endif
