/* `hl7bridge backup [-c FILE] BACKUP-FILE`: an online, consistent copy of
 * the configured store, taken while the daemon runs (store_backup), with its
 * size and message count.  Restoring is copying it back with the daemon
 * stopped (README, "Operating"). */
#include "daemon/cli.h"
#include "config/config.h"
#include "store/store.h"

#include <stdio.h>
#include <string.h>

struct config *load_config_or_report(const char *path, int explicit_path, const char **used);

static void backup_usage(FILE *out)
{
    fprintf(out, "usage: hl7bridge backup [-c FILE] BACKUP-FILE\n"
                 "\n"
                 "Copies the store named by the configuration (default %s) into\n"
                 "BACKUP-FILE, a new file, while the daemon keeps running: one consistent\n"
                 "snapshot (SQLite's backup API), checked and fsync'd before it gets its\n"
                 "name.  Prints its size and message count.  The copy holds patient data:\n"
                 "it is created mode 0600.\n",
            CONFIG_DEFAULT_PATH);
}

int cmd_backup(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH, *target = NULL;
    int explicit_path = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            backup_usage(stdout);
            return 0;
        }
        int r = cli_config_opt(argc, argv, &i, &path);
        if (r < 0 || (r == 0 && (argv[i][0] == '-' || target))) {
            backup_usage(stderr);
            return 2;
        }
        if (r > 0)
            explicit_path = 1;
        else
            target = argv[i];
    }
    if (!target) {
        backup_usage(stderr);
        return 2;
    }
    struct config *cfg = load_config_or_report(path, explicit_path, &path);
    if (!cfg)
        return 1;
    if (cfg->store.type == CONFIG_STORE_POSTGRESQL) {
        /* The store is the server's database: its own tools copy it
         * consistently while every node writes. */
        fprintf(stderr,
                "hl7bridge backup: copies the SQLite file only; with store.type postgresql "
                "back up the database with the server's tools instead: pg_dump (e.g. "
                "pg_dump -Fc -f hl7bridge.dump DBNAME, restored with pg_restore), or the "
                "server's own backups (pg_basebackup with WAL archiving, or the managed "
                "service's point-in-time restore)\n");
        config_free(cfg);
        return 1;
    }
    struct store_backup_info info;
    char err[512];
    int rc = store_backup(cfg->store.path, target, &info, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "hl7bridge backup: %s\n", err);
    else
        printf("%s: %llu bytes, %llu messages (from %s)\n", target,
               (unsigned long long)info.bytes, (unsigned long long)info.messages,
               cfg->store.path);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}
