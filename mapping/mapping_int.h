/* Internals shared by the mapping module's files: the compiled rule program,
 * the schema table, time zones and the result layout.  Not for other
 * modules. */
#ifndef MAPPING_MAPPING_INT_H
#define MAPPING_MAPPING_INT_H

#include <regex.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tz.h"
#include "mapping/mapping.h"

/* Distinct segment references (id + instance) one rule may use; resolved
 * once per message into segment indices. */
#define MP_MAX_SEGREFS 48
/* Output ceiling for one message's values (all rows). */
#define MP_MAX_RESULT_BYTES (256u * 1024u * 1024u)
/* Rows one message may produce (for_each). */
#define MP_MAX_ROWS 100000u
/* Nesting of value expressions (first: inside first: ...). */
#define MP_MAX_DEPTH 8
/* Distinct fields (segment slot + field number) of one rule whose
 * component split is kept during an evaluation; paths beyond are split on
 * every read.  64 so that one word says which splits are current. */
#define MP_MAX_FKEYS 64
/* Components of one repetition recorded by a split; further ones are found
 * by scanning on from the last recorded one. */
#define MP_MAX_SPLIT_COMPS 24

/* ---- schema ------------------------------------------------------------ */

#define MP_NCOLS 23 /* semantic columns; healthcare has all, epic 22 */

struct mp_coldef {
    const char *key;        /* rule key, e.g. "creation_time" */
    const char *healthcare; /* documented healthcare header, e.g. "Creation Time" */
    const char *epic;       /* documented epic header, NULL when epic has none */
    int mandatory;
};
extern const struct mp_coldef mp_cols[MP_NCOLS];
/* Semantic column index for a key or either documented name, or -1. */
int mp_col_lookup(const char *name, size_t len);

/* ---- time zones and date-times ------------------------------------------ */

/* Parses a DTM: returns 0 with *utc, or -1.  `tz` reads offset-less values. */
int mp_dtm_parse(const struct tz *tz, const uint8_t *p, size_t len, int64_t *utc);
/* Formats UTC epoch seconds with a strftime format (fast path for the
 * default ISO form).  Returns bytes written (0 on overflow). */
size_t mp_time_format(int64_t t, const char *fmt, int iso_default, char *out, size_t cap);

/* ---- compiled rules ----------------------------------------------------- */

struct mp_str {
    char *p; /* NUL-terminated, owned */
    size_t len;
};

/* Where a path was written, for messages. */
struct mp_loc {
    const char *file; /* owned by the mapping's file list */
    unsigned line, col;
};

enum mp_cop { MP_C_EQUALS, MP_C_IN, MP_C_PRESENT, MP_C_ABSENT, MP_C_REGEX };

/* A compiled path plus the rule's segment slot it reads. */
struct mp_path {
    struct hl7_path p;
    int slot;   /* index into rule->segrefs; -1 → hl7_seg_find at eval time */
    int fkey;   /* index into rule->fkeys (slot + field), -1 → not kept */
};

struct mp_cond {
    struct mp_path path;
    enum mp_cop op;
    struct mp_str *vals; /* sorted for IN/EQUALS */
    size_t n_vals;
    regex_t re;
    int has_re;
};

struct mp_map {
    struct mp_str *keys; /* sorted, bytewise */
    struct mp_str *vals;
    size_t n;
    struct mp_str fallback; /* "*" entry */
    int has_fallback;
    int shared;             /* owned by the file's `maps:` table */
};

/* ---- lookup tables (lookup.c) ------------------------------------------ */

struct mp_table; /* immutable once loaded */

/* Loads one table into *out (owned by the caller).  Returns 0, or -1 with
 * every problem ("file:line: message") added to errs; *out is then a table
 * that must not be used for lookups but still names itself (so rules that
 * use it get no second error), or NULL when memory ran out. */
int mp_table_load(const struct mapping_lookup *o, struct mapping_errors *errs,
                  struct mp_table **out);
/* The same from bytes in memory (o->file only names them in messages);
 * for the fuzz target. */
int mp_table_parse(const struct mapping_lookup *o, const char *data, size_t len,
                   struct mapping_errors *errs, struct mp_table **out);
void mp_table_free(struct mp_table *t);
const char *mp_table_name(const struct mp_table *t);
size_t mp_table_size(const struct mp_table *t);
/* The value for `key`: 0 with a view into the table, or -1 when absent.
 * No allocation. */
int mp_table_get(const struct mp_table *t, const uint8_t *key, size_t len, const char **val,
                 size_t *vlen);

/* load.c: errors are "where" (e.g. "file:line:col: ") then the message */
void mp_errors_add(struct mapping_errors *e, const char *msg);
void mp_errors_vadd(struct mapping_errors *e, const char *where, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

enum mp_vop {
    MP_V_LIT = 0,  /* literal text */
    MP_V_FIELD,    /* one path */
    MP_V_TEMPLATE, /* parts: MP_V_LIT / MP_V_FIELD; empty when every field is */
    MP_V_FIRST,    /* first non-empty child */
    MP_V_LOOKUP    /* kids[0] is the key; `table` gives the value (empty if absent) */
};

enum mp_dt { MP_DT_NONE = 0, MP_DT_FORMAT, MP_DT_ISO, MP_DT_EPOCH };
enum mp_case { MP_CASE_KEEP = 0, MP_CASE_UPPER, MP_CASE_LOWER };

struct mp_val {
    enum mp_vop op;
    struct mp_str lit;          /* MP_V_LIT */
    struct mp_path path;        /* MP_V_FIELD */
    struct mp_val *kids;        /* MP_V_TEMPLATE parts, MP_V_FIRST alternatives, MP_V_LOOKUP key */
    const struct mp_table *table; /* MP_V_LOOKUP, owned by the mapping */
    size_t n_kids;
    /* repetition chosen by conditions on the same field (`where:`) */
    struct mp_cond *where;
    size_t n_where;
    struct mp_path where_field; /* SEG-F of the where conditions */
    /* modifiers, applied in this order */
    int trim;                   /* default on */
    enum mp_case kase;
    struct mp_map *map;
    enum mp_dt dt;
    struct mp_val *units;       /* amount in these units → minutes */
    struct mp_str dflt;
    int has_dflt;
    /* first path read, for ERR-2 and reasons; NULL when literal only */
    const struct mp_path *src;
    /* any of where, case, map, datetime, units, default: evaluation skips
     * the modifier steps when 0 */
    int mods;
};

enum mp_missing { MP_MISSING_QUARANTINE = 0, MP_MISSING_REJECT, MP_MISSING_DEFAULT };

struct mp_segref {
    char id[4];
    unsigned nth; /* 1-based */
};

struct mp_match {
    char type[8];    /* "" = any */
    char trigger[8]; /* "" = any */
};

struct mp_rule {
    char *name;
    struct mp_loc loc;
    struct mp_match *match;
    size_t n_match;
    struct mp_cond *when;
    size_t n_when;
    char for_each[4];      /* "" = one row per message */
    int for_each_slot;
    enum mp_missing missing;
    struct mp_str missing_value;
    enum mapping_unresolved unresolved; /* on_unresolved_user */
    int has_columns;
    struct mp_val *cols[MP_NCOLS];        /* NULL → empty */
    int has_appt;
    struct mp_val *appt[MAPPING_APPT_N];  /* NULL → empty */
    struct mp_segref segrefs[MP_MAX_SEGREFS];
    size_t n_segrefs;
    /* distinct (slot, field) pairs read by paths, for the split cache */
    struct mp_fkey {
        int slot;
        unsigned field;
    } fkeys[MP_MAX_FKEYS];
    size_t n_fkeys;
};

struct mapping {
    enum mapping_schema schema;
    enum mapping_unmatched unmatched;
    unsigned ncols;              /* columns of the schema */
    unsigned colmap[MP_NCOLS];   /* output column → semantic column */
    char *headers[MP_NCOLS];     /* header per output column (owned) */
    struct mp_rule *rules;
    size_t n_rules;
    struct mp_map **maps;        /* shared named maps, owned */
    size_t n_maps;
    char **files;                /* rule file names (for locations) */
    size_t n_files;
    int user_col;                /* semantic column of user_login */
    struct mp_table **tables;    /* mapping.lookups, owned */
    size_t n_tables;
    struct tz *tz;
    struct hl7_path consent_path;  /* mapping_opts.consent_field */
    int has_consent_path;
    char *date_format;
    int iso_default;             /* date_format is the default ISO form */
};

/* ---- result --------------------------------------------------------------- */

struct mp_cell {
    uint32_t off, len; /* into arena; offsets survive reallocation */
};

/* One repetition of one field split into components, kept for the rest of
 * an evaluation so that the six PID-11 columns split PID-11 once.  Valid
 * while its bit is set in the evaluation's mask and seg/rep still match
 * (for_each rows move a slot to another segment). */
struct mp_split {
    long seg;
    unsigned rep;
    unsigned ncomp;            /* components whose start is recorded */
    int more;                  /* more components than recorded */
    struct hl7_slice whole;    /* the repetition */
    struct hl7_slice field;    /* the whole field, every repetition */
    size_t next;               /* offset in field of the next repetition, 0 after the last */
    /* component k (1-based, k <= ncomp) starts at start[k-1]; when !more,
     * start[ncomp] is whole.len + 1 so that every recorded component ends
     * one byte before the next one starts */
    uint32_t start[MP_MAX_SPLIT_COMPS + 1];
};

struct mapping_result {
    enum mapping_outcome outcome;
    const struct mp_rule *rule;
    struct buf arena;            /* every value, each followed by a NUL */
    struct mp_cell *cells;       /* nrows * ncols */
    size_t cells_cap;
    size_t nrows, ncols;
    int has_appt;
    struct mp_cell appt[MAPPING_APPT_N];
    struct hl7_err err;
    size_t unresolved;           /* rows whose user stayed empty */
    char reason[200];
    struct buf scratch;          /* conditions and date-times */
    long segidx[MP_MAX_SEGREFS];
    struct mp_split splits[MP_MAX_FKEYS]; /* by rule fkey; see eval.c */
};

/* eval.c */
void mp_val_free(struct mp_val *v);
void mp_cond_release(struct mp_cond *c);
void mp_map_free(struct mp_map *m);

#endif
