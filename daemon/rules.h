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

/* The rule set the daemon has loaded, shared with threads other than the
 * network loop (the control socket's reprocess).  A SIGHUP swaps it; a
 * thread that took a reference keeps its set until it puts it back, and
 * the last one to let go frees it.  get/put from any thread; set from the
 * thread that swaps the ingest pipeline's rules. */
struct rules_ref;
struct rules_live;
/* Takes ownership of mp (the first set), whose rows are written in format
 * fmt with line end eol (a static string, as rules_eol gives).  NULL on no
 * memory (mp freed). */
struct rules_live *rules_live_new(struct mapping *mp, enum mapping_format fmt, const char *eol);
/* Drops the holder's reference (the set is freed when no thread holds it). */
void rules_live_free(struct rules_live *l);
/* Replaces the current set by mp (ownership taken on success; on -1 the
 * caller still owns mp and the current set stays). */
int rules_live_set(struct rules_live *l, struct mapping *mp, enum mapping_format fmt,
                   const char *eol);
struct rules_ref *rules_live_get(struct rules_live *l);
const struct mapping *rules_ref_mapping(const struct rules_ref *r);
/* The row format and line end that go with the set (a reload may change
 * them together with the rules). */
enum mapping_format rules_ref_format(const struct rules_ref *r);
const char *rules_ref_eol(const struct rules_ref *r);
void rules_ref_put(struct rules_live *l, struct rules_ref *r);

#endif
