/* config internals shared by the loader (config.c), the key tables
 * (config_keys.c) and the dumper (config_dump.c).
 *
 * A section is a table of keys; each key says where its value lives (byte
 * offsets into the object the section describes), how to parse it, its range
 * and its default as text.  Defaults go through the same parser as written
 * values, so a default can never be something the file could not say.  One
 * walker loads, one releases and one dumps, all driven by these tables. */
#ifndef CONFIG_CONFIG_INT_H
#define CONFIG_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>

#include <yaml.h>

#include "config/config.h"

enum cfg_type {
    CT_STR,         /* char *; optional check() */
    CT_CHOICE,      /* char *, one of words[] (exact) */
    CT_ENUM,        /* an enum (int-sized): index into words[] */
    CT_UINT,        /* unsigned in min..max */
    CT_U64,         /* uint64_t in min..max */
    CT_BOOL,        /* bool: true | false */
    CT_DURATION,    /* unsigned seconds from "90m", "2h", "1h30m", "45s", "1d" */
    CT_SIZE,        /* uint64_t bytes from "256MiB", "1GB" or plain digits */
    CT_HHMM,        /* unsigned minutes after midnight from "HH:MM" */
    CT_ADDR,        /* host:port → char *text (off), char *host (off2), unsigned port (off3) */
    CT_STRLIST,     /* char ** (off) + size_t count (off2); min..max items */
    CT_DURLIST,     /* unsigned * (off) + size_t count (off2) */
    CT_MAP,         /* struct config_pair * (off) + size_t count (off2) */
    CT_SECRET,      /* char * that must be exactly "${NAME}" */
    CT_SECRET_FILE, /* path (char *, off2); the file's content goes to off */
    CT_SECTION,     /* nested section, same base object */
    CT_SECTIONS,    /* list of sections: elements of sub->elem_size at off, count at off2 */
};

#define CK_REQUIRED 1u  /* must be written when its section is written */
#define CK_MAP_LIST 2u  /* CT_MAP whose values may be lists: items joined by '\n' */
/* A file or directory name (CT_STR, CT_STRLIST items, CT_SECRET_FILE): a
 * relative one written in a file resolves against that file's directory. */
#define CK_PATH 4u
#define CK_NAMED 8u     /* CT_SECTIONS written as a mapping NAME: {section}; each
                         * element starts with `char *name` holding NAME */

struct cfg_walk;
struct cfg_section;

/* Extra validation of a string value; returns 0, or -1 with a reason in why
 * (which must not quote the value if it may be secret). */
typedef int (*cfg_check_fn)(const char *v, char *why, size_t whylen);

struct cfg_key {
    const char *name;
    enum cfg_type type;
    unsigned flags;
    size_t off, off2, off3;
    uint64_t min, max;              /* value range (numbers, durations) */
    size_t min_n, max_n;            /* item count of a list; max_n 0 = no limit */
    const char *def;                /* scalar default as text, NULL for none */
    const char *const *defs;        /* list default, NULL-terminated */
    const char *const *words;       /* CT_CHOICE / CT_ENUM, NULL-terminated */
    const struct cfg_section *sub;  /* CT_SECTION / CT_SECTIONS */
    cfg_check_fn check;             /* CT_STR */
};

/* Called after a section's keys are parsed and defaulted, for rules that span
 * keys.  `node` is the section's mapping node (NULL if the section was not
 * written); seen[i] is the key node of keys[i] when written, else NULL;
 * given[i] is 1 when keys[i] had a non-null value that was stored, -1 when it
 * had one that was refused (already reported), 0 when it was not written. */
typedef void (*cfg_validate_fn)(struct cfg_walk *w, void *base, const char *path,
                                const yaml_node_t *node, const yaml_node_t *const *seen,
                                const int *given);

struct cfg_section {
    const struct cfg_key *keys;
    size_t n_keys;
    size_t elem_size;               /* element size when used by CT_SECTIONS */
    cfg_validate_fn validate;
    /* For optional sections (quiet_hours): whether it is in effect; the
     * dump prints "~" otherwise.  NULL means always.  For a list of
     * sections (CT_SECTIONS) it is asked about the object holding the
     * list. */
    int (*present)(const void *base);
};

/* The top-level section (config_keys.c). */
extern const struct cfg_section cfg_root;

/* For validate hooks (config.c). */
void cfg_error(struct cfg_walk *w, const yaml_node_t *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
yaml_document_t *cfg_doc(struct cfg_walk *w);
/* The value node of `key` in mapping `map`, or NULL. */
const yaml_node_t *cfg_find(struct cfg_walk *w, const yaml_node_t *map, const char *key);
/* The key node itself, for error locations. */
const yaml_node_t *cfg_find_key(struct cfg_walk *w, const yaml_node_t *map, const char *key);

/* Field access by offset. */
#define CFG_AT(base, off, type) ((type *)(void *)((char *)(base) + (off)))

#endif
