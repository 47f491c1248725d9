/* delta.h - `keel delta`: per-file binary patches (lib/update/patch.h). */
#ifndef KEEL_CLI_DELTA_H
#define KEEL_CLI_DELTA_H

int keel_cli_delta(int argc, char **argv);

#endif
