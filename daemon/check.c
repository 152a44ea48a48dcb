/* `hl7bridge check`: loads the configuration and everything it references,
 * prints every problem as file:line:column: message, exit status 1 if any. */
#include "daemon/cli.h"
#include "config/config.h"
#include "daemon/rules.h"
#include "mllp/mllp.h"
#include "sinks/sms.h"
#include "store/store.h"

#include <stdio.h>
#include <string.h>

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static void print_problem(void *ud, const char *problem)
{
    fprintf(stderr, "%s: %s\n", *(const char **)ud, problem);
}

int cmd_check(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH;
    int explicit_path = 0, dump = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dump") == 0) {
            dump = 1;
            continue;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: hl7bridge check [-c FILE] [--dump]\n"
                   "\n"
                   "Validates the configuration (default %s) and what it names (mapping\n"
                   "rules, TLS certificates and keys, the user to run as, a PostgreSQL\n"
                   "store: server reachable, credentials, schema; the SMS templates and\n"
                   "links), as `run` would.\n"
                   "Prints each problem as file:line:column: message;\n"
                   "exit status 1 if any.  --dump prints the effective configuration\n"
                   "(secrets shown as (set)) and where each relative path led: a path\n"
                   "written in the file is relative to the file's directory.\n",
                   CONFIG_DEFAULT_PATH);
            return 0;
        }
        if (cli_config_opt(argc, argv, &i, &path) <= 0) {
            fprintf(stderr, "usage: hl7bridge check [-c FILE]\n");
            return 2;
        }
        explicit_path = 1;
    }
    struct config *c = load_config_or_report(path, explicit_path, &path);
    if (!c)
        return 1;
    /* Everything `run` reads before it serves, reported together: the
     * rules, every listener's certificate, key and client CAs, and the SMS
     * templates and links. */
    struct mapping *mp = rules_load(c);
    int bad = !mp;
    if (sink_sms_config_check(c, print_problem, &path) > 0)
        bad = 1;
    for (size_t i = 0; i < c->n_listeners; i++) {
        const struct config_listener *cl = &c->listeners[i];
        struct mllp_tls_opts to = { 0 };
        char err[512];
        if (!cl->tls.enabled)
            continue;
        run_tls_opts(cl, &to);
        if (mllp_tls_check(&to, err, sizeof err) != 0) {
            fprintf(stderr, "%s: listen[%zu] (%s): tls: %s\n", path, i, cl->name, err);
            bad = 1;
        }
    }
    /* PostgreSQL: reach the server as `run` would and say what is wrong. */
    char pg_info[512] = "";
    if (c->store.type == CONFIG_STORE_POSTGRESQL) {
        struct store_opts so = { .type = STORE_POSTGRESQL, .url = c->store.url,
                                 .password = c->store.password, .node = c->node.name };
        char err[768];
        if (store_check_postgresql(&so, pg_info, sizeof pg_info, err, sizeof err) != 0) {
            fprintf(stderr, "%s: store: %s\n", path, err);
            bad = 1;
        }
    }
    if (bad) {
        mapping_free(mp);
        config_free(c);
        return 1;
    }
    printf("%s: configuration OK (%zu listener%s, %zu mapping rule%s)\n", path, c->n_listeners,
           c->n_listeners == 1 ? "" : "s", mapping_rule_count(mp),
           mapping_rule_count(mp) == 1 ? "" : "s");
    if (pg_info[0])
        printf("store: %s; node %s\n", pg_info, c->node.name);
    for (size_t i = 0; i < mapping_lookup_count(mp); i++)
        printf("lookup table %s: %zu row%s\n", mapping_lookup_name(mp, i),
               mapping_lookup_rows(mp, i), mapping_lookup_rows(mp, i) == 1 ? "" : "s");
    if (dump) {
        config_dump(c, stdout);
        if (c->mapping.n_rules == 0) {
            const struct mapping_source *src;
            size_t n = rules_builtin(&src);
            fputs("# mapping rules compiled into the binary:", stdout);
            for (size_t i = 0; i < n; i++)
                printf(" %s", src[i].name);
            fputc('\n', stdout);
        }
    }
    mapping_free(mp);
    config_free(c);
    return 0;
}
