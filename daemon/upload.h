/* upload — prepared connector files to the connector, checked first, sent
 * in blocks with a checkpoint in the store (daemon/upload.c).  Used by
 * `hl7bridge upload` and the daemon's inputs.files watcher. */
#ifndef DAEMON_UPLOAD_H
#define DAEMON_UPLOAD_H

#include <stdatomic.h>
#include <stdio.h>

#include "config/config.h"
#include "mapping/mapping.h"

struct upload; /* opaque */

enum upload_result {
    UPLOAD_DELIVERED = 0, /* every block accepted (now or by an earlier run) */
    UPLOAD_INVALID,       /* the file has problems (printed as file:line: message); nothing sent */
    UPLOAD_FAILED,        /* a block refused or not delivered; rerun to resume */
};

/* Borrows cfg and mp for its lifetime.  Progress lines go to `out`,
 * problems to `err` (either may be NULL: then only the log).  NULL with
 * a reason in why. */
struct upload *upload_new(const struct config *cfg, const struct mapping *mp, FILE *out, FILE *err,
                          char *why, size_t whycap);
void upload_free(struct upload *u); /* NULL is a no-op */
/* Stops a running upload_file from another thread (see sink_push_set_stop). */
void upload_set_stop(struct upload *u, const atomic_int *stop);
/* Checks and sends one file (enum upload_result). */
int upload_file(struct upload *u, const char *path);

#endif
