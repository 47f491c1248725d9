/* client.h - the CLI's client verbs, talking to a running keeld over HTTP. */
#ifndef KEEL_CLI_CLIENT_H
#define KEEL_CLI_CLIENT_H

#include "core/core.h"

/* Where keeld is and how to talk to it (--url, --unix-socket, --token). */
typedef struct keel_cli_conn {
    const char *url, *unix_socket, *token;
} keel_cli_conn;
/* One request; body_file streams a file, body_json sends a small JSON body
 * (either may be NULL). 0 with *status set, or 1 after printing why keeld
 * could not be reached. */
int keel_cli_request(const keel_cli_conn *c, const char *method, const char *path,
                     const char *body_file, const char *body_json, long *status, keel_buf *out);
/* 0 for a 2xx; otherwise prints keeld's error (either API family's shape)
 * and returns 1. */
int keel_cli_check(long status, const keel_buf *body);
/* The API token from STATE_DIR/token into buf (at least 65 bytes); 1 after
 * printing how to provide one. */
int keel_cli_token(const char *state_dir, char *buf, size_t n);

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
