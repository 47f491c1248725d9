/* client.h - the CLI's client verbs, talking to a running keeld over HTTP. */
#ifndef KEEL_CLI_CLIENT_H
#define KEEL_CLI_CLIENT_H

/* verb: status, install, activate, rollback, mark-good, packages, gc.
 * argv[0] is the verb; returns the process exit status. */
int keel_cli_client(const char *verb, int argc, char **argv);

/* keel infer / keel selftest (cli/infer.c). */
int keel_cli_infer(int argc, char **argv);
int keel_cli_selftest(int argc, char **argv);
/* keel import / keel bundle (cli/import.c). */
int keel_cli_import(int argc, char **argv);
int keel_cli_bundle(int argc, char **argv);
/* Sets the inference self-test as s's validator; *ret to free after. */
struct keel_store;
struct keel__infer;
int keel_cli_validator(struct keel_store *s, struct keel__infer **ret);

#endif
