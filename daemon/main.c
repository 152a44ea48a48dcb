/* hl7bridge entry point: dispatches to the subcommands. */
#include "daemon/cli.h"
#include "config/config.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: hl7bridge COMMAND [OPTIONS]\n"
            "\n"
            "HL7 v2 MLLP listener: parses, stores durably, acknowledges, maps and forwards.\n"
            "\n"
            "commands:\n"
            "  run [-c FILE]           run the daemon (default config: config/hl7bridge.yaml)\n"
            "  check [-c FILE]         validate the configuration; errors as file:line:column\n"
            "  send ADDRESS FILE...    send HL7 messages over MLLP and print each ACK's MSA\n"
            "  map [-c FILE] FILE...   print the connector rows the rules make of messages\n"
            "  redrive [-c FILE] --list|--all-failed|ID...\n"
            "                          list failed blocks (audit sink and uploads) and send\n"
            "                          them again once the cause is fixed\n"
            "  upload [-c FILE] DATAFILE...\n"
            "                          check prepared connector files and send them in blocks\n"
            "                          (a rerun sends only blocks not yet delivered)\n"
            "  stats [-c FILE] [--cluster]\n"
            "                          ACK statistics of the running daemon (or the store's\n"
            "                          retention and daily totals when it is not running);\n"
            "                          --cluster: every node on the PostgreSQL store\n"
            "  messages [-c FILE] [--status S] [--control-id ID] ...\n"
            "                          search stored messages (metadata only, no PHI)\n"
            "  show [-c FILE] ID [--reveal --reason TEXT]\n"
            "                          one message's metadata; --reveal prints it and\n"
            "                          writes the access to the audit feed\n"
            "  reprocess [-c FILE] (--id ID... | --status S | --since T) [--dry-run]\n"
            "                          run the current rules again on stored messages\n"
            "  backup [-c FILE] FILE   online copy of the store (while the daemon runs)\n"
            "  version                 print the version\n"
            "  help                    this text\n"
            "\n"
            "Run 'hl7bridge COMMAND --help' for a command's options.\n");
}

int cli_sqlite_only(const struct config *c, const char *cmd)
{
    if (c->store.type != CONFIG_STORE_POSTGRESQL)
        return 0;
    fprintf(stderr, "hl7bridge %s: not available with store.type postgresql yet\n", cmd);
    return 1;
}

int cli_config_opt(int argc, char **argv, int *i, const char **path)
{
    const char *a = argv[*i];
    if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
        if (*i + 1 >= argc)
            return -1;
        *path = argv[++*i];
        return 1;
    }
    if (strncmp(a, "--config=", 9) == 0) {
        *path = a + 9;
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(argc - 1, argv + 1);
    if (strcmp(cmd, "send") == 0)
        return cmd_send(argc - 1, argv + 1);
    if (strcmp(cmd, "map") == 0)
        return cmd_map(argc - 1, argv + 1);
    if (strcmp(cmd, "stats") == 0)
        return cmd_stats(argc - 1, argv + 1);
    if (strcmp(cmd, "redrive") == 0)
        return cmd_redrive(argc - 1, argv + 1);
    if (strcmp(cmd, "messages") == 0)
        return cmd_messages(argc - 1, argv + 1);
    if (strcmp(cmd, "show") == 0)
        return cmd_show(argc - 1, argv + 1);
    if (strcmp(cmd, "reprocess") == 0)
        return cmd_reprocess(argc - 1, argv + 1);
    if (strcmp(cmd, "upload") == 0)
        return cmd_upload(argc - 1, argv + 1);
    if (strcmp(cmd, "backup") == 0)
        return cmd_backup(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("hl7bridge %s\n", HL7BRIDGE_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "hl7bridge: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
