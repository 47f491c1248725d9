/* client.h - the CLI's client verbs, talking to a running keeld over HTTP. */
#ifndef KEEL_CLI_CLIENT_H
#define KEEL_CLI_CLIENT_H

/* verb: status, install, activate, rollback, mark-good, packages, gc.
 * argv[0] is the verb; returns the process exit status. */
int keel_cli_client(const char *verb, int argc, char **argv);

#endif
