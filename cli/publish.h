/* publish.h - the CLI's publisher verbs (cli/publish.c): keel publish,
 * keel rollout, keel repo timestamp|verify. argv[0] is the verb; each
 * returns the process exit status. */
#ifndef KEEL_CLI_PUBLISH_H
#define KEEL_CLI_PUBLISH_H

int keel_cli_publish(int argc, char **argv);
int keel_cli_rollout(int argc, char **argv);
int keel_cli_repo(int argc, char **argv);

#endif
