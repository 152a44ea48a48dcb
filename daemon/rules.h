/* Loading the mapping rules named by a configuration (shared by run, check
 * and map). */
#ifndef DAEMON_RULES_H
#define DAEMON_RULES_H

#include "config/config.h"
#include "mapping/mapping.h"

/* Compiles the rules of `c`; prints every error (file:line:column: message)
 * to stderr and returns NULL on failure. */
struct mapping *rules_load(const struct config *c);
/* The rules compiled into the binary, used when the configuration names no
 * rule files: sets *out to the array and returns its length. */
size_t rules_builtin(const struct mapping_source **out);
/* The configured audit row format and line ending. */
enum mapping_format rules_format(const struct config *c);
const char *rules_eol(const struct config *c);

#endif
