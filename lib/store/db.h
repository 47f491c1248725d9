/*
 * db.h - the SQLite adapter for the store: open with WAL, schema, and small
 * helpers. No sqlite3 type leaves lib/store.
 */
#ifndef KEEL_STORE_DB_H
#define KEEL_STORE_DB_H

#include <sqlite3.h>

#include "core/core.h"

#define KEEL_DB_SCHEMA_VERSION 1

KEEL_WUR int keel__db_open(const char *path, sqlite3 **ret, keel_error *err);
/* Runs SQL with no results; errors name `what`. */
KEEL_WUR int keel__db_exec(sqlite3 *db, const char *sql, const char *what, keel_error *err);
/* Prepares or reports. */
KEEL_WUR int keel__db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret, keel_error *err);
int keel__db_err(sqlite3 *db, keel_error *err, const char *what);

#endif
