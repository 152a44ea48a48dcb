/* config_dump: the effective configuration as YAML-like text, for
 * `hl7bridge check`.  Walks the same key tables as the loader, so every key
 * appears with its value after defaults — what the daemon will really use.
 * Secrets print as "(set)"; nothing here may ever print one.
 * Any thread; writes only to `out`. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "config/config_int.h"

static void indent(FILE *out, int n)
{
    fprintf(out, "%*s", n, "");
}

/* Double-quoted YAML scalar, so any value reads back as the same string. */
static void put_str(FILE *out, const char *s)
{
    if (!s) {
        fputs("~", out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\x%02x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

/* Largest whole unit, so 86400 prints as "1d" and 5400 as "90m". */
static void put_duration(FILE *out, unsigned s)
{
    if (s == 0)
        fputs("0", out);
    else if (s % 86400 == 0)
        fprintf(out, "%ud", s / 86400);
    else if (s % 3600 == 0)
        fprintf(out, "%uh", s / 3600);
    else if (s % 60 == 0)
        fprintf(out, "%um", s / 60);
    else
        fprintf(out, "%us", s);
}

static void dump_section(const struct config *c, const struct cfg_section *sec,
                         const void *base, int ind, FILE *out, int list_item);

/* The written form of a resolved path held in `field`, or NULL. */
static const char *written_as(const struct config *c, const void *field)
{
    for (size_t i = 0; i < c->n_written_paths; i++)
        if (c->written_paths[i].field == field)
            return c->written_paths[i].written;
    return NULL;
}

/* After a path: "# written: x" when a relative written one led to it, or
 * a note that a relative default stays in the working directory. */
static void put_written(const struct config *c, const struct cfg_key *k, const void *field,
                        FILE *out)
{
    if (!(k->flags & CK_PATH))
        return;
    const char *w = written_as(c, field);
    const char *v = *(char *const *)field;
    if (w) {
        fputs("  # written: ", out);
        put_str(out, w);
    } else if (v && *v && *v != '/') {
        fputs("  # relative to the working directory", out);
    }
}

static void dump_key(const struct config *c, const struct cfg_key *k, const void *base, int ind,
                     FILE *out)
{
    const char *b = base;
    switch (k->type) {
    case CT_SECTION:
        if (k->sub->present && !k->sub->present(base)) {
            fprintf(out, "%s: ~\n", k->name);
            return;
        }
        fprintf(out, "%s:\n", k->name);
        dump_section(c, k->sub, base, ind + 2, out, 0);
        return;
    case CT_SECTIONS: {
        const char *arr = *(const char *const *)(const void *)(b + k->off);
        size_t n = *(const size_t *)(const void *)(b + k->off2);
        if (k->sub->present && !k->sub->present(base)) {
            fprintf(out, "%s: ~\n", k->name);
            return;
        }
        if (k->flags & CK_NAMED) {
            fprintf(out, "%s:%s\n", k->name, n ? "" : " {}");
            for (size_t i = 0; i < n; i++) {
                const char *elem = arr + i * k->sub->elem_size;
                indent(out, ind + 2);
                put_str(out, *(char *const *)(const void *)elem);
                fputs(":\n", out);
                dump_section(c, k->sub, elem, ind + 4, out, 0);
            }
            return;
        }
        fprintf(out, "%s:%s\n", k->name, n ? "" : " []");
        for (size_t i = 0; i < n; i++) {
            indent(out, ind + 2);
            fputs("- ", out);
            dump_section(c, k->sub, arr + i * k->sub->elem_size, ind + 4, out, 1);
        }
        return;
    }
    default:
        break;
    }
    /* A non-empty map continues on the next lines: no trailing space. */
    fprintf(out, "%s:%s", k->name, k->type == CT_MAP ? "" : " ");
    switch (k->type) {
    case CT_STR:
    case CT_CHOICE:
    case CT_ADDR:
        put_str(out, *(char *const *)(const void *)(b + k->off));
        put_written(c, k, b + k->off, out);
        break;
    case CT_SECRET:
        fputs(*(char *const *)(const void *)(b + k->off) ? "(set)" : "~", out);
        break;
    case CT_SECRET_FILE:
        put_str(out, *(char *const *)(const void *)(b + k->off2));
        put_written(c, k, b + k->off2, out);
        break;
    case CT_ENUM: {
        int e;
        memcpy(&e, b + k->off, sizeof e);
        fputs(k->words[e], out);
        break;
    }
    case CT_UINT:
        fprintf(out, "%u", *(const unsigned *)(const void *)(b + k->off));
        break;
    case CT_U64:
    case CT_SIZE:
        fprintf(out, "%" PRIu64, *(const uint64_t *)(const void *)(b + k->off));
        break;
    case CT_BOOL:
        fputs(*(const bool *)(const void *)(b + k->off) ? "true" : "false", out);
        break;
    case CT_DURATION:
        put_duration(out, *(const unsigned *)(const void *)(b + k->off));
        break;
    case CT_HHMM: {
        unsigned m = *(const unsigned *)(const void *)(b + k->off);
        fprintf(out, "\"%02u:%02u\"", m / 60, m % 60);
        break;
    }
    case CT_STRLIST: {
        char *const *items = *(char *const *const *)(const void *)(b + k->off);
        size_t n = *(const size_t *)(const void *)(b + k->off2);
        fputc('[', out);
        for (size_t i = 0; i < n; i++) {
            fputs(i ? ", " : "", out);
            put_str(out, items[i]);
        }
        fputc(']', out);
        if (n == 0 && (k->flags & CK_PATH))
            fputs("  # none: the built-in ones", out);
        for (size_t i = 0; i < n; i++) {
            const char *w = written_as(c, &items[i]);
            if (w) {
                fprintf(out, "%s", i == 0 || !written_as(c, &items[i - 1]) ? "  # written: " : ", ");
                put_str(out, w);
            }
        }
        break;
    }
    case CT_DURLIST: {
        const unsigned *items = *(const unsigned *const *)(const void *)(b + k->off);
        size_t n = *(const size_t *)(const void *)(b + k->off2);
        fputc('[', out);
        for (size_t i = 0; i < n; i++) {
            fputs(i ? ", " : "", out);
            put_duration(out, items[i]);
        }
        fputc(']', out);
        break;
    }
    case CT_MAP: {
        const struct config_pair *pairs =
            *(const struct config_pair *const *)(const void *)(b + k->off);
        size_t n = *(const size_t *)(const void *)(b + k->off2);
        if (n == 0) {
            fputs(" {}", out);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            fputc('\n', out);
            indent(out, ind + 2);
            put_str(out, pairs[i].key);
            fputs(": ", out);
            if (k->flags & CK_MAP_LIST) {
                /* '\n'-joined items back into a flow list */
                fputc('[', out);
                const char *v = pairs[i].value;
                for (int first = 1;; first = 0) {
                    const char *nl = strchr(v, '\n');
                    size_t l = nl ? (size_t)(nl - v) : strlen(v);
                    char item[512];
                    snprintf(item, sizeof item, "%.*s", (int)(l < 511 ? l : 511), v);
                    fputs(first ? "" : ", ", out);
                    put_str(out, item);
                    if (!nl)
                        break;
                    v = nl + 1;
                }
                fputc(']', out);
            } else {
                put_str(out, pairs[i].value);
            }
        }
        break;
    }
    default:
        fputs("?", out);
        break;
    }
    fputc('\n', out);
}

/* list_item: the "- " is already written, so the first key gets no indent. */
static void dump_section(const struct config *c, const struct cfg_section *sec,
                         const void *base, int ind, FILE *out, int list_item)
{
    for (size_t i = 0; i < sec->n_keys; i++) {
        if (!(list_item && i == 0))
            indent(out, ind);
        dump_key(c, &sec->keys[i], base, ind, out);
    }
}

void config_dump(const struct config *c, FILE *out)
{
    fprintf(out, "# effective configuration from %s\n", c->path ? c->path : "(string)");
    if (c->base_dir)
        fprintf(out, "# relative paths written in it resolve against %s\n", c->base_dir);
    else
        fputs("# relative paths resolve against the working directory\n", out);
    dump_section(c, &cfg_root, c, 0, out, 0);
}

int config_dump_part(const struct config *c, const char *dotted, FILE *out)
{
    const struct cfg_section *sec = &cfg_root;
    const char *p = dotted;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        const struct cfg_key *k = NULL;
        for (size_t i = 0; i < sec->n_keys; i++)
            if (strlen(sec->keys[i].name) == n && memcmp(sec->keys[i].name, p, n) == 0)
                k = &sec->keys[i];
        if (!k)
            return -1;
        if (!dot) {
            dump_key(c, k, c, 0, out);
            return 0;
        }
        /* Only nested single sections share the root's base. */
        if (k->type != CT_SECTION)
            return -1;
        sec = k->sub;
        p = dot + 1;
    }
}
