/* Reading message files for `send` and `map`: one message, several (each
 * starting with an MSH line), a batch (FHS/BHS, kept whole) or MLLP-framed
 * messages. */
#ifndef DAEMON_MSGFILE_H
#define DAEMON_MSGFILE_H

#include <stddef.h>
#include <stdint.h>

struct msgfile_msg {
    const uint8_t *p; /* view into the file's bytes */
    size_t len;
    const char *file;
    unsigned index;   /* 1-based within its file */
};

struct msgfile_list {
    struct msgfile_msg *v;
    size_t n, cap;
};

/* Reads a whole file (owned by the caller) or NULL with errno. */
uint8_t *msgfile_read(const char *path, size_t *len);
/* Appends the messages of `data` (borrowed; must outlive the list) to `l`.
 * Returns 0 or -1 when out of memory. */
int msgfile_split(const uint8_t *data, size_t len, const char *file, struct msgfile_list *l);

#endif
