/*
 * keel.h - the public API of libkeel, the offline-first edge AI runtime.
 *
 * This umbrella header pulls in every public module header. Nothing from a
 * third-party library (OpenSSL, SQLite, libarchive, cJSON, microhttpd) appears
 * here or in any header under include/keel/: those stop at adapter files in
 * lib/. Functions are thread-safe only where their header says so.
 *
 * Conventions used throughout:
 *  - Fallible functions return 0 (KEEL_OK) or a KEEL_E* code and fill an
 *    optional `keel_error *` with a message that says what failed, on what,
 *    and what to do. Output parameters are last and named ret_*; they are
 *    written only on success.
 *  - `_new`/`_free`, `_open`/`_close`: destructors accept NULL.
 *  - Ownership of every pointer crossing the API is written beside it:
 *    borrowed, copied, taken, or valid until its parent is freed.
 */
#ifndef KEEL_KEEL_H
#define KEEL_KEEL_H

#define KEEL_VERSION_MAJOR  0
#define KEEL_VERSION_MINOR  1
#define KEEL_VERSION_PATCH  0
#define KEEL_VERSION_STRING "0.1.0"

#include "keel/common.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/config.h"
#include "keel/crypto.h"
#include "keel/trust.h"
#include "keel/pkg.h"
#include "keel/store.h"
#include "keel/queue.h"
#include "keel/infer.h"

#endif
