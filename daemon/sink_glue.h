/* Configuration → audit sink.  sinks/ does not
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

/* Records in the store the layout rows of `c` and `mp` are formatted in
 * (header line, file extension) and puts its id in *layout, for the ingest
 * pipeline to label its rows with.  Main / network thread, at start-up and
 * on reload; a short write on its own connection.  0 / -1 with err. */
int sink_glue_layout(const struct config *c, const struct mapping *mp, int64_t *layout, char *err,
                     size_t errcap) __attribute__((warn_unused_result));

/* The same for rows written by `mp` in format `fmt` with line end `eol`
 * into the store `where` names (reprocess, reveal: their rows must go out
 * under their own header too). */
int sink_glue_layout_of(const struct store_opts *where, const struct mapping *mp,
                        enum mapping_format fmt,
                        const char *eol, int64_t *layout, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* SIGHUP: 0 when the running audit and SMS sinks can go on under `next` (only the
 * mapping, the row format and line ending differ: those follow the rows,
 * block by block); -1 with the first setting that needs a restart named in
 * why.  `cur` is the configuration the sink was started with. */
int sink_glue_reload_check(const struct config *cur, const struct config *next, char *why,
                           size_t cap);

#endif
