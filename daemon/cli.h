/* Subcommands of the hl7bridge binary.  Each takes argc/argv after the
 * subcommand name and returns the process exit status. */
#ifndef DAEMON_CLI_H
#define DAEMON_CLI_H

#define HL7BRIDGE_VERSION "0.1.0"

int cmd_run(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_redrive(int argc, char **argv);
int cmd_messages(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_reprocess(int argc, char **argv);
int cmd_upload(int argc, char **argv);
int cmd_backup(int argc, char **argv);

/* Parses `-c FILE` / `--config FILE` / `--config=FILE`; returns 1 if argv[*i]
 * was such an option (advancing *i), 0 if not, -1 on a missing value. */
int cli_config_opt(int argc, char **argv, int *i, const char **path);

/* Subcommands that read the SQLite file (browse, reprocess, backup,
 * redrive, a stopped node's retention, upload) do not run on PostgreSQL yet: prints one
 * line saying so and returns 1 for store.type postgresql, else 0. */
struct config;
int cli_sqlite_only(const struct config *c, const char *cmd);

/* The TLS options of a listener of the configuration (run.c; `check`
 * loads them as `run` does). */
struct config;
struct config_listener;
struct mllp_tls_opts;
void run_tls_opts(const struct config_listener *cl, struct mllp_tls_opts *to);

/* store.retention → the store's housekeeping options (run.c; `stats`
 * reads the same retention from the store of a stopped daemon). */
struct store_opts;
void run_retention_opts(const struct config *cfg, struct store_opts *so);

/* Where the store of `cfg` is (type, path, url, password, node name), for
 * the store's own connections (daily totals, the browser, batches); the
 * pointers borrow from cfg. */
void run_store_where(const struct config *cfg, struct store_opts *so);

#endif
