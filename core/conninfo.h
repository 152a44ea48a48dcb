/* conninfo — a PostgreSQL connection string made fit for a log line.
 *
 * libpq takes either a URI (postgresql://user:secret@host:5432/db?sslmode=…)
 * or keyword=value pairs (host=db password='s e' sslmode=verify-full).
 * Either may carry a password; anything that prints a connection string
 * (log lines, `check`, the config dump) prints it through here.
 *
 * Pure functions, any thread. */
#ifndef CORE_CONNINFO_H
#define CORE_CONNINFO_H

#include <stddef.h>

/* Writes `in` to out[cap] with every password (the URI's user:PASSWORD@,
 * password= / sslpassword= in the URI query or among keywords) replaced by
 * "***".  Returns 0, or -1 when out was too small (out then holds "" or a
 * cut copy that never ends inside a password).  Input libpq would refuse
 * (an unterminated quote) is scrubbed to its end. */
int conninfo_scrub(const char *in, char *out, size_t cap) __attribute__((warn_unused_result));

/* 1 when `in` holds a password of its own (URI user:password@, or a
 * password keyword / query parameter), else 0. */
int conninfo_has_password(const char *in);

#endif
