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
    UPLOAD_FAILED,        /* a block not delivered nor kept; rerun to resume */
    UPLOAD_KEPT,          /* every block delivered except those kept for `redrive` */
};

/* Borrows cfg and mp for its lifetime.  Progress lines go to `out`,
 * problems to `err` (either may be NULL: then only the log).  NULL with
 * a reason in why. */
struct upload *upload_new(const struct config *cfg, const struct mapping *mp, FILE *out, FILE *err,
                          char *why, size_t whycap);
void upload_free(struct upload *u); /* NULL is a no-op */
/* Stops a running upload_file from another thread (see sink_push_set_stop). */
void upload_set_stop(struct upload *u, const atomic_int *stop);
/* The watcher's mode: blocks kept for redrive are left to `hl7bridge
 * redrive` (not sent again at each look), and blocks given up (connector
 * unreachable) are not kept (the next look tries them again). */
void upload_set_unattended(struct upload *u);
/* Checks and sends one file (enum upload_result). */
int upload_file(struct upload *u, const char *path);

/* ---- `hl7bridge redrive` of kept blocks ---- */
struct store_upload_kept;
/* "upload:ID FILE block N/M (lines A-B): R rows, K attempts, last status S: ERROR",
 * the listing line of a kept block (no newline). */
void upload_kept_describe(const struct store_upload_kept *k, char *out, size_t cap);
struct upload_redrive_counts {
    uint64_t found, delivered, failed;
};
/* Sends kept block `id` again (0: every kept block) from its kept content,
 * printing each block's line with its outcome (" -> delivered",
 * " -> refused again: …", " -> not delivered: …") to the upload's `out`;
 * a delivered block is marked done in the checkpoint (and its file, when
 * it was the last one missing) and its kept copy deleted.  0, or -1 on a
 * store error (printed to `err`). */
int upload_redrive(struct upload *u, int64_t id, struct upload_redrive_counts *c);

#endif
