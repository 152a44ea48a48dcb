/* Rule loading: YAML rule files → the compiled program in mapping_int.h.
 *
 * Each file is read with libyaml's document API and walked once.  Every
 * problem is collected as `file:line:column: message` (1-based, from the
 * libyaml marks, plus the offset inside a scalar for paths and templates)
 * and loading goes on, so an analyst sees all mistakes in one run; nothing
 * of a set with errors is returned.  Paths are parsed with hl7_path_parse,
 * templates split into literal and field parts, regexes compiled, value maps
 * sorted, and every segment a rule reads gets a slot that evaluation
 * resolves with one pass over the message's segments; every field (slot
 * and field number) gets a key under which evaluation keeps that field's
 * component split for the rest of the message.
 *
 * Runs on whichever thread loads the rules (start-up, `check`, SIGHUP
 * reload); it touches no global state. */
#include "mapping/mapping_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct named_map {
    char *name;
    struct mp_map *map;
};

struct ld {
    const char *file;
    yaml_document_t *doc;
    struct mapping_errors *errs;
    size_t nerr;
    struct mapping *mp;
    struct named_map *named;
    size_t n_named;
    struct mp_rule *rule;
};

/* ---- errors ------------------------------------------------------------- */

void mp_errors_add(struct mapping_errors *e, const char *msg)
{
    if (!e)
        return;
    char **n = realloc(e->items, (e->n + 1) * sizeof *n);
    if (!n)
        return;
    e->items = n;
    e->items[e->n] = strdup(msg);
    if (e->items[e->n])
        e->n++;
}

void mapping_errors_release(struct mapping_errors *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i]);
    free(e->items);
    e->items = NULL;
    e->n = 0;
}

void mp_errors_vadd(struct mapping_errors *e, const char *where, const char *fmt, va_list ap)
{
    char msg[600];
    int k = snprintf(msg, sizeof msg, "%s", where);
    if (k > 0 && (size_t)k < sizeof msg)
        vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    mp_errors_add(e, msg);
}

__attribute__((format(printf, 4, 5))) static void lerr(struct ld *ld, const yaml_node_t *n,
                                                      size_t coloff, const char *fmt, ...)
{
    char where[300];
    snprintf(where, sizeof where, "%s:%lu:%lu: ", ld->file,
             n ? (unsigned long)n->start_mark.line + 1 : 1ul,
             n ? (unsigned long)(n->start_mark.column + 1 + coloff) : 1ul);
    va_list ap;
    va_start(ap, fmt);
    mp_errors_vadd(ld->errs, where, fmt, ap);
    va_end(ap);
    ld->nerr++;
}

/* ---- YAML helpers ---------------------------------------------------------- */

static yaml_node_t *node(struct ld *ld, int i) { return yaml_document_get_node(ld->doc, i); }

static int is_scalar(const yaml_node_t *n) { return n && n->type == YAML_SCALAR_NODE; }

static const char *sval(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static size_t slen(const yaml_node_t *n) { return n->data.scalar.length; }

static int seq(const yaml_node_t *n, const char *s)
{
    return is_scalar(n) && slen(n) == strlen(s) && memcmp(sval(n), s, slen(n)) == 0;
}

/* Column offset of a scalar's first character (quotes shift it by one). */
static size_t qoff(const yaml_node_t *n)
{
    return n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                   n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE
               ? 1
               : 0;
}

static int mp_strdup(struct mp_str *s, const char *p, size_t len)
{
    s->p = malloc(len + 1);
    if (!s->p)
        return -1;
    memcpy(s->p, p, len);
    s->p[len] = 0;
    s->len = len;
    return 0;
}

static int want_scalar(struct ld *ld, const yaml_node_t *n, const char *what)
{
    if (is_scalar(n))
        return 0;
    lerr(ld, n, 0, "%s must be a single value", what);
    return -1;
}

/* true/false/yes/no/on/off → 1/0, else -1 (with an error). */
static int want_bool(struct ld *ld, const yaml_node_t *n, const char *what)
{
    if (is_scalar(n)) {
        static const char *const t[] = {"true", "yes", "on", "True", "TRUE", "Yes"};
        static const char *const f[] = {"false", "no", "off", "False", "FALSE", "No"};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            if (seq(n, t[i]))
                return 1;
            if (seq(n, f[i]))
                return 0;
        }
    }
    lerr(ld, n, 0, "%s must be true or false", what);
    return -1;
}

/* Calls `fn` for each key/value pair; reports keys that are not in `allowed`
 * (a NULL-terminated list) and non-scalar keys. */
static int check_keys(struct ld *ld, const yaml_node_t *map, const char *where,
                      const char *const *allowed)
{
    int bad = 0;
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = node(ld, pr->key);
        int ok = 0;
        for (size_t i = 0; is_scalar(k) && allowed[i]; i++)
            if (seq(k, allowed[i]))
                ok = 1;
        if (!ok) {
            if (is_scalar(k)) {
                char list[256] = "";
                size_t o = 0;
                for (size_t i = 0; allowed[i] && o < sizeof list; i++)
                    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "",
                                          allowed[i]);
                lerr(ld, k, 0, "unknown key '%.*s' in %s (expected one of: %s)",
                     (int)(slen(k) > 60 ? 60 : slen(k)), sval(k), where, list);
            } else {
                lerr(ld, k, 0, "keys in %s must be plain names", where);
            }
            bad = 1;
        }
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; ok && q < pr; q++)
            if (seq(node(ld, q->key), sval(k)) && slen(node(ld, q->key)) == slen(k)) {
                lerr(ld, k, 0, "duplicate key '%s' in %s", sval(k), where);
                bad = 1;
            }
    }
    return bad ? -1 : 0;
}

static yaml_node_t *get(struct ld *ld, const yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top;
         pr++)
        if (seq(node(ld, pr->key), key))
            return node(ld, pr->value);
    return NULL;
}

/* ---- paths ----------------------------------------------------------------- */

static int segref_slot(struct ld *ld, const yaml_node_t *n, size_t at, const struct hl7_path *p)
{
    struct mp_rule *r = ld->rule;
    /* The for_each segment without an explicit instance is "the current
     * one"; recorded as nth 0. */
    unsigned nth = p->seg_nth;
    if (r->for_each[0] && memcmp(p->seg, r->for_each, 4) == 0 && p->seg_nth == 0)
        nth = 0;
    else if (nth == 0)
        nth = 1;
    for (size_t i = 0; i < r->n_segrefs; i++)
        if (memcmp(r->segrefs[i].id, p->seg, 4) == 0 && r->segrefs[i].nth == nth)
            return (int)i;
    if (r->n_segrefs == MP_MAX_SEGREFS) {
        lerr(ld, n, at, "rule reads more than %d different segments", MP_MAX_SEGREFS);
        return -1;
    }
    memcpy(r->segrefs[r->n_segrefs].id, p->seg, 4);
    r->segrefs[r->n_segrefs].nth = nth;
    return (int)r->n_segrefs++;
}

/* The split-cache key of (slot, field) in rule r: paths reading the same
 * field of the same segment share one split during evaluation.  -1 past
 * MP_MAX_FKEYS (such paths are split on every read). */
static int fkey_of(struct mp_rule *r, int slot, unsigned field)
{
    for (size_t i = 0; i < r->n_fkeys; i++)
        if (r->fkeys[i].slot == slot && r->fkeys[i].field == field)
            return (int)i;
    if (r->n_fkeys == MP_MAX_FKEYS)
        return -1;
    r->fkeys[r->n_fkeys].slot = slot;
    r->fkeys[r->n_fkeys].field = field;
    return (int)r->n_fkeys++;
}

/* Compiles `len` bytes at s (inside scalar n, at offset `at`). */
static int path_compile(struct ld *ld, const yaml_node_t *n, size_t at, const char *s, size_t len,
                        struct mp_path *out)
{
    const char *why = NULL;
    size_t bad = 0;
    while (len && s[0] == ' ') {
        s++;
        len--;
        at++;
    }
    while (len && s[len - 1] == ' ')
        len--;
    if (hl7_path_parse(s, len, &out->p, &why, &bad) != 0) {
        lerr(ld, n, qoff(n) + at + bad, "bad field path '%.*s': %s", (int)(len > 40 ? 40 : len), s,
             why ? why : "invalid");
        return -1;
    }
    if (out->p.field == 0) {
        lerr(ld, n, qoff(n) + at, "field path '%.*s' needs a field number (e.g. PID-5)",
             (int)(len > 40 ? 40 : len), s);
        return -1;
    }
    out->slot = segref_slot(ld, n, qoff(n) + at, &out->p);
    if (out->slot < 0)
        return -1;
    /* MSH-1 and MSH-2 are the delimiters themselves and never split */
    if (memcmp(out->p.seg, "MSH", 3) == 0 && out->p.field <= 2)
        out->fkey = -1;
    else
        out->fkey = fkey_of(ld->rule, out->slot, out->p.field);
    return 0;
}

/* ---- conditions -------------------------------------------------------------- */

static int str_cmp(const void *a, const void *b)
{
    const struct mp_str *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int cond_compile(struct ld *ld, const yaml_node_t *n, struct mp_cond *c)
{
    static const char *const keys[] = {"field", "equals", "in", "present", "absent", "regex", NULL};
    memset(c, 0, sizeof *c);
    if (!n || n->type != YAML_MAPPING_NODE) {
        lerr(ld, n, 0, "a condition is a mapping like {field: PID-8, equals: F}");
        return -1;
    }
    if (check_keys(ld, n, "a condition", keys) != 0)
        return -1;
    yaml_node_t *f = get(ld, n, "field");
    if (!f) {
        lerr(ld, n, 0, "condition needs 'field'");
        return -1;
    }
    if (want_scalar(ld, f, "field") != 0 || path_compile(ld, f, 0, sval(f), slen(f), &c->path) != 0)
        return -1;
    int nops = !!get(ld, n, "equals") + !!get(ld, n, "in") + !!get(ld, n, "present") +
               !!get(ld, n, "absent") + !!get(ld, n, "regex");
    if (nops != 1) {
        lerr(ld, n, 0, "a condition needs exactly one of equals, in, present, absent, regex");
        return -1;
    }
    yaml_node_t *v;
    if ((v = get(ld, n, "equals"))) {
        c->op = MP_C_EQUALS;
        if (want_scalar(ld, v, "equals") != 0)
            return -1;
        c->vals = calloc(1, sizeof *c->vals);
        if (!c->vals || mp_strdup(&c->vals[0], sval(v), slen(v)) != 0)
            return -1;
        c->n_vals = 1;
    }
    if ((v = get(ld, n, "in"))) {
        c->op = MP_C_IN;
        if (v->type != YAML_SEQUENCE_NODE) {
            lerr(ld, v, 0, "'in' takes a list, e.g. [A01, A04]");
            return -1;
        }
        size_t cnt = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        c->vals = calloc(cnt ? cnt : 1, sizeof *c->vals);
        if (!c->vals)
            return -1;
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_t *it = node(ld, v->data.sequence.items.start[i]);
            if (want_scalar(ld, it, "a list item") != 0)
                return -1;
            if (mp_strdup(&c->vals[c->n_vals], sval(it), slen(it)) != 0)
                return -1;
            c->n_vals++;
        }
        qsort(c->vals, c->n_vals, sizeof *c->vals, str_cmp);
    }
    if ((v = get(ld, n, "present"))) {
        int b = want_bool(ld, v, "present");
        if (b < 0)
            return -1;
        c->op = b ? MP_C_PRESENT : MP_C_ABSENT;
    }
    if ((v = get(ld, n, "absent"))) {
        int b = want_bool(ld, v, "absent");
        if (b < 0)
            return -1;
        c->op = b ? MP_C_ABSENT : MP_C_PRESENT;
    }
    if ((v = get(ld, n, "regex"))) {
        c->op = MP_C_REGEX;
        if (want_scalar(ld, v, "regex") != 0)
            return -1;
        int rc = regcomp(&c->re, sval(v), REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char eb[128];
            regerror(rc, &c->re, eb, sizeof eb);
            lerr(ld, v, 0, "bad regex: %s", eb);
            return -1;
        }
        c->has_re = 1;
    }
    return 0;
}

/* A condition mapping or a list of them → array. */
static int conds_compile(struct ld *ld, const yaml_node_t *n, struct mp_cond **out, size_t *nout)
{
    size_t cnt = n->type == YAML_SEQUENCE_NODE
                     ? (size_t)(n->data.sequence.items.top - n->data.sequence.items.start)
                     : 1;
    *out = calloc(cnt ? cnt : 1, sizeof **out);
    if (!*out)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < cnt; i++) {
        const yaml_node_t *c = n->type == YAML_SEQUENCE_NODE
                                   ? node(ld, n->data.sequence.items.start[i])
                                   : n;
        if (cond_compile(ld, c, &(*out)[*nout]) != 0) {
            mp_cond_release(&(*out)[*nout]);
            rc = -1;
            continue;
        }
        (*nout)++;
    }
    return rc;
}

/* ---- value maps ------------------------------------------------------------------ */

static struct mp_map *map_compile(struct ld *ld, const yaml_node_t *n)
{
    if (n->type != YAML_MAPPING_NODE) {
        lerr(ld, n, 0, "a value map is a mapping like {A01: Admit, A03: Discharge}");
        return NULL;
    }
    size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    struct mp_map *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->keys = calloc(cnt ? cnt : 1, sizeof *m->keys);
    m->vals = calloc(cnt ? cnt : 1, sizeof *m->vals);
    if (!m->keys || !m->vals)
        goto fail;
    int bad = 0;
    for (size_t i = 0; i < cnt; i++) {
        yaml_node_t *k = node(ld, n->data.mapping.pairs.start[i].key);
        yaml_node_t *v = node(ld, n->data.mapping.pairs.start[i].value);
        if (!is_scalar(k) || !is_scalar(v)) {
            lerr(ld, is_scalar(k) ? v : k, 0, "value map entries are 'code: text'");
            bad = 1;
            continue;
        }
        if (seq(k, "*")) {
            if (mp_strdup(&m->fallback, sval(v), slen(v)) != 0)
                goto fail;
            m->has_fallback = 1;
            continue;
        }
        if (mp_strdup(&m->keys[m->n], sval(k), slen(k)) != 0 ||
            mp_strdup(&m->vals[m->n], sval(v), slen(v)) != 0) {
            free(m->keys[m->n].p);
            goto fail;
        }
        /* check duplicates against earlier entries (maps are small) */
        for (size_t j = 0; j < m->n; j++)
            if (str_cmp(&m->keys[j], &m->keys[m->n]) == 0) {
                lerr(ld, k, 0, "duplicate code '%s' in value map", sval(k));
                bad = 1;
            }
        m->n++;
    }
    /* sort keys and values together: sort an index */
    for (size_t i = 1; i < m->n; i++) { /* insertion sort: a few hundred entries at most */
        struct mp_str k = m->keys[i], v = m->vals[i];
        size_t j = i;
        while (j > 0 && str_cmp(&m->keys[j - 1], &k) > 0) {
            m->keys[j] = m->keys[j - 1];
            m->vals[j] = m->vals[j - 1];
            j--;
        }
        m->keys[j] = k;
        m->vals[j] = v;
    }
    if (bad)
        goto fail;
    return m;
fail:
    mp_map_free(m);
    return NULL;
}

/* ---- values ------------------------------------------------------------------------- */

static int val_compile(struct ld *ld, const yaml_node_t *n, int depth, struct mp_val *v);

static const struct mp_path *first_src(const struct mp_val *v)
{
    if (v->op == MP_V_FIELD)
        return &v->path;
    for (size_t i = 0; i < v->n_kids; i++) {
        const struct mp_path *p = first_src(&v->kids[i]);
        if (p)
            return p;
    }
    return NULL;
}

static void fix_src(struct mp_val *v)
{
    for (size_t i = 0; i < v->n_kids; i++)
        fix_src(&v->kids[i]);
    v->src = first_src(v);
}

/* Counts [*] paths on the same segment slot and field as `w`. */
static size_t count_rep_paths(const struct mp_val *v, const struct mp_path *w)
{
    size_t c = 0;
    if (v->op == MP_V_FIELD && v->path.slot == w->slot && v->path.p.field == w->p.field &&
        v->path.p.rep == HL7_REP_ALL)
        c++;
    for (size_t i = 0; i < v->n_kids; i++)
        c += count_rep_paths(&v->kids[i], w);
    return c;
}

/* A template "text {PATH} text"; `{{` and `}}` are literal braces. */
static int template_compile(struct ld *ld, const yaml_node_t *n, const char *s, size_t len,
                            struct mp_val *v)
{
    size_t cap = 4, nfield = 0;
    struct mp_val *parts = calloc(cap, sizeof *parts);
    char *lit = malloc(len + 1);
    size_t litn = 0;
    int rc = 0;
    if (!parts || !lit) {
        free(parts);
        goto oom;
    }
    v->kids = parts;
    v->n_kids = 0;
    for (size_t i = 0; i <= len; i++) {
        int flush = i == len;
        if (!flush && s[i] == '{' && i + 1 < len && s[i + 1] == '{') {
            lit[litn++] = '{';
            i++;
            continue;
        }
        if (!flush && s[i] == '}' && i + 1 < len && s[i + 1] == '}') {
            lit[litn++] = '}';
            i++;
            continue;
        }
        if (!flush && s[i] == '}') {
            lerr(ld, n, qoff(n) + i, "unmatched '}' in template (write '}}' for a brace)");
            rc = -1;
            continue;
        }
        if (!flush && s[i] != '{') {
            lit[litn++] = s[i];
            continue;
        }
        /* flush literal text */
        if (litn || (flush && v->n_kids == 0)) {
            if (v->n_kids == cap) {
                struct mp_val *np = realloc(v->kids, 2 * cap * sizeof *np);
                if (!np)
                    goto oom;
                memset(np + cap, 0, cap * sizeof *np);
                v->kids = np;
                cap *= 2;
            }
            struct mp_val *p = &v->kids[v->n_kids++];
            p->op = MP_V_LIT;
            if (mp_strdup(&p->lit, lit, litn) != 0)
                goto oom;
            litn = 0;
        }
        if (flush)
            break;
        const char *close = memchr(s + i, '}', len - i);
        if (!close) {
            lerr(ld, n, qoff(n) + i, "'{' without a closing '}' in template (write '{{' for a brace)");
            rc = -1;
            break;
        }
        size_t plen = (size_t)(close - (s + i + 1));
        if (v->n_kids == cap) {
            struct mp_val *np = realloc(v->kids, 2 * cap * sizeof *np);
            if (!np)
                goto oom;
            memset(np + cap, 0, cap * sizeof *np);
            v->kids = np;
            cap *= 2;
        }
        struct mp_val *p = &v->kids[v->n_kids++];
        p->op = MP_V_FIELD;
        if (path_compile(ld, n, i + 1, s + i + 1, plen, &p->path) != 0)
            rc = -1;
        nfield++;
        i += plen + 1;
    }
    free(lit);
    if (rc != 0)
        return -1;
    if (v->n_kids == 1) { /* a lone literal or a lone field: no template needed */
        struct mp_val *only = v->kids;
        v->op = only->op;
        v->lit = only->lit;
        v->path = only->path;
        v->kids = NULL;
        v->n_kids = 0;
        free(only);
    } else {
        v->op = MP_V_TEMPLATE;
    }
    (void)nfield;
    return 0;
oom:
    free(lit);
    lerr(ld, n, 0, "out of memory");
    return -1;
}

/* Records whether evaluation has modifier steps to run for v; called again
 * whenever one is set after val_compile. */
static void set_mods(struct mp_val *v)
{
    v->mods = v->n_where || v->kase != MP_CASE_KEEP || v->map || v->dt != MP_DT_NONE ||
              v->units || v->has_dflt;
}

/* `lookup: {table: NAME, key: VALUE}`: the key is any value (a template, a
 * `first` list ...); the table must be one of mapping.lookups. */
static int lookup_compile(struct ld *ld, const yaml_node_t *x, int depth, struct mp_val *v)
{
    static const char *const keys[] = {"table", "key", NULL};
    v->op = MP_V_LOOKUP;
    if (x->type != YAML_MAPPING_NODE) {
        lerr(ld, x, 0, "'lookup' is a mapping like {table: users, key: \"{EVN-5.1}\"}");
        return -1;
    }
    if (check_keys(ld, x, "a lookup", keys) != 0)
        return -1;
    yaml_node_t *t = get(ld, x, "table"), *k = get(ld, x, "key");
    if (!t || !k) {
        lerr(ld, x, 0, "'lookup' needs 'table' and 'key'");
        return -1;
    }
    if (want_scalar(ld, t, "table") != 0)
        return -1;
    for (size_t i = 0; i < ld->mp->n_tables; i++)
        if (seq(t, mp_table_name(ld->mp->tables[i])))
            v->table = ld->mp->tables[i];
    if (!v->table) {
        char names[200] = "";
        size_t at = 0;
        for (size_t i = 0; i < ld->mp->n_tables && at < sizeof names; i++)
            at += (size_t)snprintf(names + at, sizeof names - at, "%s%s", i ? ", " : "",
                                   mp_table_name(ld->mp->tables[i]));
        lerr(ld, t, 0, "no lookup table named '%.60s' under mapping.lookups (%s)", sval(t),
             ld->mp->n_tables ? names : "none is configured");
        return -1;
    }
    v->kids = calloc(1, sizeof *v->kids);
    if (!v->kids)
        return -1;
    v->n_kids = 1;
    return val_compile(ld, k, depth + 1, &v->kids[0]);
}

static int val_compile(struct ld *ld, const yaml_node_t *n, int depth, struct mp_val *v)
{
    static const char *const keys[] = {"field", "template", "literal", "first", "lookup",
                                       "where", "trim", "case", "map", "datetime", "units",
                                       "default", NULL};
    v->trim = 1;
    if (depth > MP_MAX_DEPTH) {
        lerr(ld, n, 0, "values nested too deeply");
        return -1;
    }
    if (is_scalar(n)) {
        struct hl7_path tp;
        const char *why;
        size_t at;
        if (!memchr(sval(n), '{', slen(n)) && !memchr(sval(n), ' ', slen(n)) &&
            hl7_path_parse(sval(n), slen(n), &tp, &why, &at) == 0 && tp.field > 0) {
            lerr(ld, n, 0,
                 "'%.40s' looks like a field path: write \"{%.40s}\" for the field's value, "
                 "or {literal: %.40s} for the text",
                 sval(n), sval(n), sval(n));
            return -1;
        }
        return template_compile(ld, n, sval(n), slen(n), v);
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        if (cnt == 0) {
            lerr(ld, n, 0, "an empty list gives no value");
            return -1;
        }
        v->op = MP_V_FIRST;
        v->kids = calloc(cnt, sizeof *v->kids);
        if (!v->kids)
            return -1;
        int rc = 0;
        for (size_t i = 0; i < cnt; i++) {
            v->n_kids++;
            if (val_compile(ld, node(ld, n->data.sequence.items.start[i]), depth + 1,
                            &v->kids[i]) != 0)
                rc = -1;
        }
        return rc;
    }
    if (n->type == YAML_MAPPING_NODE &&
        n->data.mapping.pairs.top - n->data.mapping.pairs.start == 1) {
        /* `x: {PID-5.1}` unquoted is YAML for a mapping, not a template */
        yaml_node_t *k = node(ld, n->data.mapping.pairs.start[0].key);
        yaml_node_t *val = node(ld, n->data.mapping.pairs.start[0].value);
        struct hl7_path tp;
        const char *why;
        size_t at;
        if (is_scalar(k) && is_scalar(val) && slen(val) == 0 &&
            hl7_path_parse(sval(k), slen(k), &tp, &why, &at) == 0) {
            lerr(ld, n, 0, "put templates in quotes: \"{%.40s}\"", sval(k));
            return -1;
        }
    }
    if (check_keys(ld, n, "a value", keys) != 0)
        return -1;
    int kinds = 0, rc = 0;
    yaml_node_t *x;
    if ((x = get(ld, n, "field"))) {
        kinds++;
        v->op = MP_V_FIELD;
        if (want_scalar(ld, x, "field") != 0 ||
            path_compile(ld, x, 0, sval(x), slen(x), &v->path) != 0)
            rc = -1;
    }
    if ((x = get(ld, n, "template"))) {
        kinds++;
        if (want_scalar(ld, x, "template") != 0 || template_compile(ld, x, sval(x), slen(x), v) != 0)
            rc = -1;
    }
    if ((x = get(ld, n, "literal"))) {
        kinds++;
        v->op = MP_V_LIT;
        if (want_scalar(ld, x, "literal") != 0 || mp_strdup(&v->lit, sval(x), slen(x)) != 0)
            rc = -1;
    }
    if ((x = get(ld, n, "first"))) {
        kinds++;
        if (x->type != YAML_SEQUENCE_NODE) {
            lerr(ld, x, 0, "'first' takes a list of values");
            rc = -1;
        } else if (val_compile(ld, x, depth + 1, v) != 0) {
            rc = -1;
        } else {
            v->trim = 1;
        }
    }
    if ((x = get(ld, n, "lookup"))) {
        if (++kinds == 1 && lookup_compile(ld, x, depth, v) != 0)
            rc = -1;
    }
    if (kinds > 1) {
        lerr(ld, n, 0, "a value has one of field, template, literal, first, lookup");
        return -1;
    }
    if (kinds == 0) {
        if (!get(ld, n, "default")) {
            lerr(ld, n, 0,
                 "a value needs one of field, template, literal, first, lookup (or a default)");
            return -1;
        }
        v->op = MP_V_LIT;
        if (mp_strdup(&v->lit, "", 0) != 0)
            return -1;
    }
    if ((x = get(ld, n, "trim"))) {
        int b = want_bool(ld, x, "trim");
        if (b < 0)
            rc = -1;
        else
            v->trim = b;
    }
    if ((x = get(ld, n, "case"))) {
        if (seq(x, "upper"))
            v->kase = MP_CASE_UPPER;
        else if (seq(x, "lower"))
            v->kase = MP_CASE_LOWER;
        else {
            lerr(ld, x, 0, "case must be upper or lower");
            rc = -1;
        }
    }
    if ((x = get(ld, n, "map"))) {
        if (is_scalar(x)) {
            for (size_t i = 0; i < ld->n_named; i++)
                if (seq(x, ld->named[i].name))
                    v->map = ld->named[i].map;
            if (!v->map) {
                lerr(ld, x, 0, "no value map named '%s' under 'maps:' in this file", sval(x));
                rc = -1;
            }
        } else if (!(v->map = map_compile(ld, x))) {
            rc = -1;
        }
    }
    if ((x = get(ld, n, "datetime"))) {
        if (seq(x, "epoch"))
            v->dt = MP_DT_EPOCH;
        else if (seq(x, "iso"))
            v->dt = MP_DT_ISO;
        else {
            int b = want_bool(ld, x, "datetime (true, iso or epoch)");
            if (b < 0)
                rc = -1;
            v->dt = b > 0 ? MP_DT_FORMAT : MP_DT_NONE;
        }
    }
    if ((x = get(ld, n, "units"))) {
        if (v->dt != MP_DT_NONE) {
            lerr(ld, x, 0, "a value cannot have both datetime and units");
            rc = -1;
        } else {
            v->units = calloc(1, sizeof *v->units);
            if (!v->units || val_compile(ld, x, depth + 1, v->units) != 0)
                rc = -1;
            else
                fix_src(v->units);
        }
    }
    if ((x = get(ld, n, "default"))) {
        if (want_scalar(ld, x, "default") != 0 || mp_strdup(&v->dflt, sval(x), slen(x)) != 0)
            rc = -1;
        else
            v->has_dflt = 1;
    }
    if ((x = get(ld, n, "where")) && rc == 0) {
        if (conds_compile(ld, x, &v->where, &v->n_where) != 0) {
            rc = -1;
        } else {
            const struct mp_path *w0 = &v->where[0].path;
            for (size_t i = 1; i < v->n_where; i++) {
                const struct mp_path *wi = &v->where[i].path;
                if (wi->slot != w0->slot || wi->p.field != w0->p.field) {
                    lerr(ld, x, 0, "all 'where' conditions must test the same field");
                    rc = -1;
                }
            }
            v->where_field = *w0;
            v->where_field.p.rep = HL7_REP_ALL;
            v->where_field.p.comp = 0;
            v->where_field.p.sub = 0;
            if (rc == 0 && count_rep_paths(v, w0) == 0) {
                char pb[32];
                hl7_path_format(&v->where_field.p, pb, sizeof pb);
                lerr(ld, x, 0,
                     "'where' picks a repetition of %.31s, but the value reads no %.3s-%u[*] path",
                     pb, w0->p.seg, w0->p.field);
                rc = -1;
            }
        }
    }
    set_mods(v);
    return rc;
}

/* Parses one value spec into a heap value; NULL on error. */
static struct mp_val *val_new(struct ld *ld, const yaml_node_t *n)
{
    struct mp_val *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    if (val_compile(ld, n, 0, v) != 0) {
        mp_val_free(v);
        return NULL;
    }
    fix_src(v);
    return v;
}

/* ---- rules ------------------------------------------------------------------------------- */

static int match_compile(struct ld *ld, const yaml_node_t *n, struct mp_match *m)
{
    if (want_scalar(ld, n, "a match entry") != 0)
        return -1;
    const char *s = sval(n);
    size_t len = slen(n);
    const char *caret = memchr(s, '^', len);
    size_t tl = caret ? (size_t)(caret - s) : len;
    size_t gl = caret ? len - tl - 1 : 0;
    const char *g = caret ? caret + 1 : "";
    memset(m, 0, sizeof *m);
    if (tl == 0 || tl >= sizeof m->type || (caret && (gl == 0 || gl >= sizeof m->trigger))) {
        lerr(ld, n, 0, "match '%.*s' must look like ADT^A01, ADT^* or ADT", (int)(len > 40 ? 40 : len),
             s);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '*' || c == '^' || c == '_')) {
            lerr(ld, n, qoff(n) + i, "unexpected character in match '%.*s'",
                 (int)(len > 40 ? 40 : len), s);
            return -1;
        }
    }
    if (!(tl == 1 && s[0] == '*'))
        memcpy(m->type, s, tl);
    if (gl && !(gl == 1 && g[0] == '*'))
        memcpy(m->trigger, g, gl);
    if ((memchr(m->type, '*', sizeof m->type) || memchr(m->trigger, '*', sizeof m->trigger))) {
        lerr(ld, n, 0, "'*' stands for a whole message type or trigger");
        return -1;
    }
    return 0;
}

static const char *const appt_keys[MAPPING_APPT_N + 1] = {
    "appointment_id", "facility", "event", "event_time", "start", "duration_minutes",
    "location", "provider", "patient_first_name", "patient_last_name", "phone", "consent", "language", "link", NULL};

const char *mapping_appt_field_name(enum mapping_appt_field f)
{
    return (unsigned)f < MAPPING_APPT_N ? appt_keys[f] : "";
}

static const char *const unresolved_names[MAPPING_UNRESOLVED_N] = {"keep", "filter",
                                                                   "quarantine"};

const char *mapping_unresolved_name(enum mapping_unresolved a)
{
    return (unsigned)a < MAPPING_UNRESOLVED_N ? unresolved_names[a] : "";
}

/* The first MSH path a value reads (anywhere: keys of lookups, `first`
 * alternatives, templates, units), or NULL. */
static const struct mp_path *reads_msh(const struct mp_val *v)
{
    if (v->op == MP_V_FIELD && memcmp(v->path.p.seg, "MSH", 4) == 0)
        return &v->path;
    for (size_t i = 0; i < v->n_kids; i++) {
        const struct mp_path *p = reads_msh(&v->kids[i]);
        if (p)
            return p;
    }
    return v->units ? reads_msh(v->units) : NULL;
}

static int rule_compile(struct ld *ld, const yaml_node_t *n, struct mp_rule *r)
{
    static const char *const keys[] = {"name", "match", "when", "for_each",
                                       "on_missing_mandatory", "on_unresolved_user",
                                       "missing_value", "columns", "appointment", NULL};
    r->loc.file = ld->file;
    r->loc.line = (unsigned)n->start_mark.line + 1;
    r->loc.col = (unsigned)n->start_mark.column + 1;
    r->for_each_slot = -1;
    ld->rule = r;
    if (n->type != YAML_MAPPING_NODE) {
        lerr(ld, n, 0, "a rule is a mapping with name, match and columns");
        return -1;
    }
    int rc = check_keys(ld, n, "a rule", keys);
    yaml_node_t *x;
    if (!(x = get(ld, n, "name")) || !is_scalar(x) || slen(x) == 0) {
        lerr(ld, x ? x : n, 0, "rule needs a 'name'");
        rc = -1;
    } else if (!(r->name = strndup(sval(x), slen(x)))) {
        return -1;
    }
    if (!(x = get(ld, n, "match"))) {
        lerr(ld, n, 0, "rule needs 'match' (e.g. match: ADT^A01)");
        rc = -1;
    } else {
        size_t cnt = x->type == YAML_SEQUENCE_NODE
                         ? (size_t)(x->data.sequence.items.top - x->data.sequence.items.start)
                         : 1;
        r->match = calloc(cnt ? cnt : 1, sizeof *r->match);
        if (!r->match)
            return -1;
        if (cnt == 0) {
            lerr(ld, x, 0, "'match' needs at least one message type");
            rc = -1;
        }
        for (size_t i = 0; i < cnt; i++) {
            const yaml_node_t *it =
                x->type == YAML_SEQUENCE_NODE ? node(ld, x->data.sequence.items.start[i]) : x;
            if (match_compile(ld, it, &r->match[r->n_match]) == 0)
                r->n_match++;
            else
                rc = -1;
        }
    }
    if ((x = get(ld, n, "for_each"))) {
        int ok = is_scalar(x) && slen(x) == 3;
        for (size_t i = 0; ok && i < 3; i++) {
            char c = sval(x)[i];
            ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        }
        if (!ok) {
            lerr(ld, x, 0, "for_each names a segment id, e.g. for_each: ZAU");
            rc = -1;
        } else {
            memcpy(r->for_each, sval(x), 3);
            struct hl7_path p = {.seg_nth = 0};
            memcpy(p.seg, r->for_each, 4);
            r->for_each_slot = segref_slot(ld, x, 0, &p);
        }
    }
    if ((x = get(ld, n, "when")) && conds_compile(ld, x, &r->when, &r->n_when) != 0)
        rc = -1;
    r->missing = MP_MISSING_QUARANTINE;
    if ((x = get(ld, n, "on_missing_mandatory"))) {
        if (seq(x, "quarantine"))
            r->missing = MP_MISSING_QUARANTINE;
        else if (seq(x, "reject"))
            r->missing = MP_MISSING_REJECT;
        else if (seq(x, "default"))
            r->missing = MP_MISSING_DEFAULT;
        else {
            lerr(ld, x, 0, "on_missing_mandatory must be reject, quarantine or default");
            rc = -1;
        }
    }
    r->unresolved = MAPPING_UNRESOLVED_KEEP;
    yaml_node_t *unres = get(ld, n, "on_unresolved_user");
    if (unres) {
        int a;
        for (a = 0; a < MAPPING_UNRESOLVED_N; a++)
            if (seq(unres, mapping_unresolved_name((enum mapping_unresolved)a)))
                break;
        if (a == MAPPING_UNRESOLVED_N) {
            lerr(ld, unres, 0, "on_unresolved_user must be filter, quarantine or keep");
            rc = -1;
        } else {
            r->unresolved = (enum mapping_unresolved)a;
        }
    }
    x = get(ld, n, "missing_value");
    if (x && want_scalar(ld, x, "missing_value") != 0)
        rc = -1;
    if (mp_strdup(&r->missing_value, x && is_scalar(x) ? sval(x) : "Unknown",
                  x && is_scalar(x) ? slen(x) : 7) != 0)
        return -1;
    yaml_node_t *cols = get(ld, n, "columns");
    yaml_node_t *appt = get(ld, n, "appointment");
    if (!cols && !appt) {
        lerr(ld, n, 0, "rule needs 'columns' (connector rows) or 'appointment' (SMS facts)");
        rc = -1;
    }
    if (cols) {
        r->has_columns = 1;
        if (cols->type != YAML_MAPPING_NODE) {
            lerr(ld, cols, 0, "'columns' maps column names to values");
            rc = -1;
        } else {
            for (yaml_node_pair_t *pr = cols->data.mapping.pairs.start;
                 pr < cols->data.mapping.pairs.top; pr++) {
                yaml_node_t *k = node(ld, pr->key);
                int ci = is_scalar(k) ? mp_col_lookup(sval(k), slen(k)) : -1;
                if (ci < 0) {
                    lerr(ld, k, 0, "unknown column '%.*s' (see docs/mapping.md for the names)",
                         is_scalar(k) ? (int)(slen(k) > 60 ? 60 : slen(k)) : 1,
                         is_scalar(k) ? sval(k) : "?");
                    rc = -1;
                    continue;
                }
                if (r->cols[ci]) {
                    lerr(ld, k, 0, "column '%s' given twice", mp_cols[ci].key);
                    rc = -1;
                    continue;
                }
                if (!(r->cols[ci] = val_new(ld, node(ld, pr->value)))) {
                    rc = -1;
                    continue;
                }
                const struct mp_path *msh = ci == ld->mp->user_col ? reads_msh(r->cols[ci]) : NULL;
                if (msh) {
                    char pb[32];
                    hl7_path_format(&msh->p, pb, sizeof pb);
                    lerr(ld, k, 0,
                         "column 'user_login' reads %s: MSH names systems, never the person "
                         "acting (use EVN-5, SCH-20 or the feed's user field, with a lookup)",
                         pb);
                    rc = -1;
                }
            }
            if (unres && !r->cols[ld->mp->user_col]) {
                lerr(ld, unres, 0, "on_unresolved_user needs a user_login column");
                rc = -1;
            }
            for (int ci = 0; ci < MP_NCOLS && rc == 0; ci++)
                if (mp_cols[ci].mandatory && !r->cols[ci] && r->missing != MP_MISSING_DEFAULT) {
                    lerr(ld, cols, 0,
                         "mandatory column '%s' has no value (give one, or say "
                         "on_missing_mandatory: default)",
                         mp_cols[ci].key);
                    rc = -1;
                }
        }
    }
    if (appt) {
        r->has_appt = 1;
        if (appt->type != YAML_MAPPING_NODE) {
            lerr(ld, appt, 0, "'appointment' maps fact names to values");
            rc = -1;
        } else {
            if (check_keys(ld, appt, "appointment", appt_keys) != 0)
                rc = -1;
            for (int f = 0; f < MAPPING_APPT_N; f++) {
                yaml_node_t *v = get(ld, appt, appt_keys[f]);
                if (!v)
                    continue;
                if (!(r->appt[f] = val_new(ld, v))) {
                    rc = -1;
                    continue;
                }
                /* The SMS sink schedules on these: always epoch seconds. */
                if ((f == MAPPING_APPT_START || f == MAPPING_APPT_EVENT_TIME) &&
                    r->appt[f]->dt == MP_DT_NONE) {
                    r->appt[f]->dt = MP_DT_EPOCH;
                    set_mods(r->appt[f]);
                }
            }
        }
    }
    return rc;
}

static void rule_release(struct mp_rule *r)
{
    free(r->name);
    free(r->match);
    for (size_t i = 0; i < r->n_when; i++)
        mp_cond_release(&r->when[i]);
    free(r->when);
    free(r->missing_value.p);
    for (int i = 0; i < MP_NCOLS; i++)
        mp_val_free(r->cols[i]);
    for (int i = 0; i < MAPPING_APPT_N; i++)
        mp_val_free(r->appt[i]);
}

/* ---- files -------------------------------------------------------------------------------- */

static int file_compile(struct ld *ld, yaml_node_t *root)
{
    static const char *const keys[] = {"rules", "maps", NULL};
    if (!root) {
        lerr(ld, NULL, 0, "empty rule file");
        return -1;
    }
    if (root->type != YAML_MAPPING_NODE) {
        lerr(ld, root, 0, "a rule file is a mapping with 'rules:' (and optional 'maps:')");
        return -1;
    }
    int rc = check_keys(ld, root, "a rule file", keys);
    yaml_node_t *maps = get(ld, root, "maps");
    if (maps) {
        if (maps->type != YAML_MAPPING_NODE) {
            lerr(ld, maps, 0, "'maps' holds named value maps");
            rc = -1;
        } else {
            for (yaml_node_pair_t *pr = maps->data.mapping.pairs.start;
                 pr < maps->data.mapping.pairs.top; pr++) {
                yaml_node_t *k = node(ld, pr->key);
                if (want_scalar(ld, k, "a map name") != 0) {
                    rc = -1;
                    continue;
                }
                struct mp_map *m = map_compile(ld, node(ld, pr->value));
                struct named_map *nn = realloc(ld->named, (ld->n_named + 1) * sizeof *nn);
                struct mp_map **all =
                    realloc(ld->mp->maps, (ld->mp->n_maps + 1) * sizeof *ld->mp->maps);
                if (all)
                    ld->mp->maps = all;
                if (nn)
                    ld->named = nn;
                if (!m || !nn || !all) {
                    mp_map_free(m);
                    rc = -1;
                    continue;
                }
                m->shared = 1;
                ld->mp->maps[ld->mp->n_maps++] = m;
                ld->named[ld->n_named].name = strndup(sval(k), slen(k));
                ld->named[ld->n_named++].map = m;
            }
        }
    }
    yaml_node_t *rules = get(ld, root, "rules");
    if (!rules || rules->type != YAML_SEQUENCE_NODE) {
        lerr(ld, rules ? rules : root, 0, "'rules' must be a list of rules");
        return -1;
    }
    size_t cnt = (size_t)(rules->data.sequence.items.top - rules->data.sequence.items.start);
    struct mp_rule *nr = realloc(ld->mp->rules, (ld->mp->n_rules + cnt) * sizeof *nr);
    if (!nr && cnt)
        return -1;
    if (nr)
        ld->mp->rules = nr;
    for (size_t i = 0; i < cnt; i++) {
        struct mp_rule *r = &ld->mp->rules[ld->mp->n_rules++];
        memset(r, 0, sizeof *r);
        if (rule_compile(ld, node(ld, rules->data.sequence.items.start[i]), r) != 0)
            rc = -1;
    }
    return rc;
}

/* Parses and compiles one rule document from an initialised parser; `name`
 * is used in messages. */
static int load_parser(struct mapping *mp, const char *name, yaml_parser_t *parser,
                       struct mapping_errors *errs)
{
    struct ld ld = {.file = name, .errs = errs, .mp = mp};
    yaml_document_t doc;
    int rc = -1;
    if (!yaml_parser_load(parser, &doc)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s:%lu:%lu: YAML: %s%s%s", name,
                 (unsigned long)parser->problem_mark.line + 1,
                 (unsigned long)parser->problem_mark.column + 1,
                 parser->problem ? parser->problem : "syntax error", parser->context ? " " : "",
                 parser->context ? parser->context : "");
        mp_errors_add(errs, msg);
        return -1;
    }
    ld.doc = &doc;
    rc = file_compile(&ld, yaml_document_get_root_node(&doc));
    if (ld.nerr)
        rc = -1;
    yaml_document_delete(&doc);
    for (size_t i = 0; i < ld.n_named; i++)
        free(ld.named[i].name);
    free(ld.named);
    return rc;
}

static int load_file(struct mapping *mp, const char *path, struct mapping_errors *errs)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s:1:1: cannot open rule file: %s", path, strerror(errno));
        mp_errors_add(errs, msg);
        return -1;
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return -1;
    }
    yaml_parser_set_input_file(&parser, f);
    int rc = load_parser(mp, path, &parser, errs);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

static int load_source(struct mapping *mp, const struct mapping_source *src,
                       struct mapping_errors *errs)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return -1;
    yaml_parser_set_input_string(&parser, (const unsigned char *)src->text, src->len);
    int rc = load_parser(mp, src->name, &parser, errs);
    yaml_parser_delete(&parser);
    return rc;
}

/* ---- the rule set ---------------------------------------------------------------------------- */

static int headers_setup(struct mapping *mp, const struct mapping_opts *o,
                         struct mapping_errors *errs)
{
    int rc = 0;
    mp->ncols = 0;
    for (unsigned c = 0; c < MP_NCOLS; c++) {
        const char *h = o->schema == MAPPING_SCHEMA_EPIC ? mp_cols[c].epic : mp_cols[c].healthcare;
        if (!h)
            continue;
        mp->colmap[mp->ncols] = c;
        if (!(mp->headers[mp->ncols] = strdup(h)))
            return -1;
        mp->ncols++;
    }
    for (size_t i = 0; i < o->n_headers; i++) {
        const char *col = o->headers[i].column, *hdr = o->headers[i].header;
        int ci = col ? mp_col_lookup(col, strlen(col)) : -1;
        unsigned k = 0;
        while (ci >= 0 && k < mp->ncols && mp->colmap[k] != (unsigned)ci)
            k++;
        char msg[400];
        if (ci < 0 || k == mp->ncols) {
            snprintf(msg, sizeof msg, "mapping.headers: '%.200s' is not a column of the %s schema",
                     col ? col : "(null)",
                     o->schema == MAPPING_SCHEMA_EPIC ? "epic" : "healthcare");
            mp_errors_add(errs, msg);
            rc = -1;
            continue;
        }
        if (!hdr || !*hdr) {
            snprintf(msg, sizeof msg, "mapping.headers: empty header name for '%.200s'", col);
            mp_errors_add(errs, msg);
            rc = -1;
            continue;
        }
        char *d = strdup(hdr);
        if (!d)
            return -1;
        free(mp->headers[k]);
        mp->headers[k] = d;
    }
    return rc;
}

struct mapping *mapping_load(const struct mapping_opts *o, struct mapping_errors *errs)
{
    static const char *const defaults[] = {MAPPING_DEFAULT_RULES_ADT, MAPPING_DEFAULT_RULES_SIU,
                                           MAPPING_DEFAULT_RULES_AUDIT};
    struct mapping *mp = calloc(1, sizeof *mp);
    if (!mp) {
        mp_errors_add(errs, "mapping: out of memory");
        return NULL;
    }
    int rc = 0;
    mp->schema = o->schema;
    mp->unmatched = o->unmatched;
    if (headers_setup(mp, o, errs) != 0)
        rc = -1;
    char why[300] = "";
    if (!(mp->tz = tz_load(o->time_zone, why, sizeof why))) {
        char msg[400];
        snprintf(msg, sizeof msg, "mapping.time_zone: %s", why);
        mp_errors_add(errs, msg);
        rc = -1;
    }
    if (o->consent_field && *o->consent_field) {
        const char *pwhy = NULL;
        size_t at = 0;
        if (hl7_path_parse(o->consent_field, strlen(o->consent_field), &mp->consent_path, &pwhy,
                           &at) < 0) {
            char msg[300];
            snprintf(msg, sizeof msg, "sinks.sms.consent.field: %s", pwhy ? pwhy : "invalid path");
            mp_errors_add(errs, msg);
            rc = -1;
        } else {
            mp->has_consent_path = 1;
        }
    }
    const char *fmt = o->date_format && *o->date_format ? o->date_format
                                                        : MAPPING_DEFAULT_DATE_FORMAT;
    mp->date_format = strdup(fmt);
    mp->iso_default = strcmp(fmt, MAPPING_DEFAULT_DATE_FORMAT) == 0;
    if (!mp->date_format) {
        rc = -1;
    } else if (!mp->iso_default) {
        char probe[128];
        if (mp_time_format(1700000000, fmt, 0, probe, sizeof probe) == 0) {
            mp_errors_add(errs, "mapping.date_format: gives an empty or over-long date (max 127 bytes)");
            rc = -1;
        }
    }
    int in_memory = !(o->rules && o->n_rules) && o->sources && o->n_sources;
    mp->user_col = mp_col_lookup("user_login", 10);
    if (o->n_lookups) {
        mp->tables = calloc(o->n_lookups, sizeof *mp->tables);
        if (!mp->tables) {
            mapping_free(mp);
            return NULL;
        }
    }
    for (size_t i = 0; i < o->n_lookups; i++) {
        struct mp_table *t;
        if (mp_table_load(&o->lookups[i], errs, &t) != 0)
            rc = -1;
        if (t)
            mp->tables[mp->n_tables++] = t;
    }
    const char *const *files = o->rules && o->n_rules ? o->rules : defaults;
    size_t nf = in_memory ? o->n_sources : o->rules && o->n_rules ? o->n_rules : 3;
    mp->files = calloc(nf, sizeof *mp->files);
    if (!mp->files) {
        mapping_free(mp);
        return NULL;
    }
    for (size_t i = 0; i < nf; i++) {
        const char *name = in_memory ? o->sources[i].name : files[i];
        if (!(mp->files[i] = strdup(name ? name : ""))) {
            rc = -1;
            break;
        }
        mp->n_files++;
        if ((in_memory ? load_source(mp, &o->sources[i], errs)
                       : load_file(mp, mp->files[i], errs)) != 0)
            rc = -1;
    }
    if (rc != 0) {
        mapping_free(mp);
        return NULL;
    }
    return mp;
}

void mapping_free(struct mapping *mp)
{
    if (!mp)
        return;
    for (size_t i = 0; i < mp->n_rules; i++)
        rule_release(&mp->rules[i]);
    free(mp->rules);
    for (size_t i = 0; i < mp->n_maps; i++) {
        mp->maps[i]->shared = 0;
        mp_map_free(mp->maps[i]);
    }
    free(mp->maps);
    for (unsigned i = 0; i < MP_NCOLS; i++)
        free(mp->headers[i]);
    for (size_t i = 0; i < mp->n_files; i++)
        free(mp->files[i]);
    free(mp->files);
    for (size_t i = 0; i < mp->n_tables; i++)
        mp_table_free(mp->tables[i]);
    free(mp->tables);
    tz_free(mp->tz);
    free(mp->date_format);
    free(mp);
}

size_t mapping_rule_count(const struct mapping *mp) { return mp->n_rules; }

size_t mapping_lookup_count(const struct mapping *mp) { return mp->n_tables; }

const char *mapping_lookup_name(const struct mapping *mp, size_t i)
{
    return i < mp->n_tables ? mp_table_name(mp->tables[i]) : "";
}

size_t mapping_lookup_rows(const struct mapping *mp, size_t i)
{
    return i < mp->n_tables ? mp_table_size(mp->tables[i]) : 0;
}
