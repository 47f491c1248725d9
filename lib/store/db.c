/* db.c - SQLite (WAL) open, schema and helpers for the store. */
#include <string.h>

#include "store/db.h"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS packages("
    "  name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL,"
    "  manifest BLOB NOT NULL, sigs TEXT NOT NULL, bytes INTEGER NOT NULL,"
    "  installed_at INTEGER NOT NULL, PRIMARY KEY(name, version));"
    "CREATE TABLE IF NOT EXISTS files("
    "  name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY(name, version, path));"
    "CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);"
    "CREATE TABLE IF NOT EXISTS slots("
    "  name TEXT NOT NULL, slot TEXT NOT NULL, version TEXT NOT NULL,"
    "  PRIMARY KEY(name, slot));"
    "CREATE TABLE IF NOT EXISTS highwater(name TEXT PRIMARY KEY, version TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS stamps("
    "  sha256 TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
    "  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
    "  verified_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS journal("
    "  id INTEGER PRIMARY KEY, at INTEGER NOT NULL, name TEXT NOT NULL,"
    "  action TEXT NOT NULL, version TEXT NOT NULL, detail TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS revoked("
    "  name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, reason TEXT NOT NULL,"
    "  root_version INTEGER NOT NULL, serial INTEGER NOT NULL, at INTEGER NOT NULL,"
    "  PRIMARY KEY(name, version));"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema', '1');";

/* Every table and index the schema above creates: when all are there, an
 * open writes nothing. */
static const char schema_present[] =
    "SELECT count(*) FROM sqlite_master WHERE name IN ('meta', 'packages', 'files', 'files_sha',"
    " 'slots', 'highwater', 'stamps', 'journal', 'revoked')";
#define SCHEMA_OBJECTS 9

/* Creates what is missing in one transaction (one WAL commit and sync, not
 * one per statement); an open of an existing store only reads. A store made
 * by an older keel (no `revoked` table) gets the new tables this way. */
static int schema_ensure(sqlite3 *db, keel_error *err)
{
    sqlite3_stmt *q = NULL;
    int rc;
    if ((rc = keel__db_prepare(db, schema_present, &q, err)))
        return rc;
    bool complete = sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == SCHEMA_OBJECTS;
    sqlite3_finalize(q);
    if (complete)
        return KEEL_OK;
    if ((rc = keel__db_exec(db, "BEGIN IMMEDIATE", "creating the schema", err)))
        return rc;
    if ((rc = keel__db_exec(db, schema, "creating the schema", err)) ||
        (rc = keel__db_exec(db, "COMMIT", "creating the schema", err)))
        (void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int keel__db_err(sqlite3 *db, keel_error *err, const char *what)
{
    int code = sqlite3_errcode(db);
    int kc = KEEL_EIO;
    if (code == SQLITE_BUSY || code == SQLITE_LOCKED)
        kc = KEEL_EBUSY;
    else if (code == SQLITE_FULL)
        kc = KEEL_ENOSPACE;
    else if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
        kc = KEEL_ECORRUPT;
    else if (code == SQLITE_CONSTRAINT)
        kc = KEEL_ECONFLICT; /* e.g. the same name@version recorded concurrently */
    else if (code == SQLITE_NOMEM)
        kc = KEEL_ENOMEM;
    else if (code == SQLITE_READONLY || code == SQLITE_PERM || code == SQLITE_CANTOPEN)
        kc = KEEL_EPERM;
    const char *file = sqlite3_db_filename(db, "main");
    return keel__err(err, kc, "state database %s: %s: %s", file && *file ? file : "(memory)", what,
                     sqlite3_errmsg(db));
}

int keel__db_exec(sqlite3 *db, const char *sql, const char *what, keel_error *err)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return keel__db_err(db, err, what);
    return KEEL_OK;
}

int keel__db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret, keel_error *err)
{
    if (sqlite3_prepare_v2(db, sql, -1, ret, NULL) != SQLITE_OK)
        return keel__db_err(db, err, "prepare");
    return KEEL_OK;
}

int keel__db_open(const char *path, sqlite3 **ret, keel_error *err)
{
    sqlite3 *db = NULL;
    int rc;
    if ((rc = keel__fs_private_db(path, err)))
        return rc;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = keel__err(err, KEEL_EIO, "cannot open the state database %s: %s", path,
                       db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return rc;
    }
    sqlite3_busy_timeout(db, 10000);
    if ((rc = keel__db_exec(db,
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                            "PRAGMA foreign_keys=ON; PRAGMA cache_size=-512;",
                            "setting pragmas", err)) ||
        (rc = schema_ensure(db, err))) {
        sqlite3_close(db);
        return rc;
    }
    *ret = db;
    return KEEL_OK;
}
