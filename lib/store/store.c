/*
 * store.c - installed packages, slots, anti-rollback, verification stamps,
 * and the content-addressed blob store. Invariants: docs/internals/store.md.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/json.h"
#include "store/check.h"
#include "store/db.h"

#define MOD                "store"
#define MANIFEST_CACHE_MAX (64u * 1024u) /* bigger manifests leave the page cache after a read */

typedef struct serving_rec {
    keel_serving s;
    bool valid;
} serving_rec;

struct keel_store {
    pthread_mutex_t lock;
    sqlite3 *db;
    char dir[PATH_MAX - 128];
    keel_limits lim;
    unsigned installs; /* in progress in this process */
    int lockfd;        /* STATE_DIR/lock: shared while open, exclusive to clean or gc */
    size_t nserving;
    serving_rec *serving;
    keel_store_validator validator;
    void *validator_ctx;
};

static const char *const slot_names[] = {"active", "previous", "known_good", "staged"};

const char *keel_slot_name(keel_slot s)
{
    return s >= 0 && s < KEEL_SLOT_COUNT ? slot_names[s] : "none";
}

static void blob_path(const keel_store *s, const char *hex, char *out, size_t n)
{
    snprintf(out, n, "%s/%s/%.2s/%s", s->dir, keel_state_name(KEEL_STATE_BLOBS), hex, hex);
}

/* --- open / close ---------------------------------------------------------- */

static void clean_staging(const char *dir)
{
    char path[PATH_MAX];
    keel_error e;
    /* Partial blobs of an install that was killed: never referenced. */
    (void)keel_state_path(dir, KEEL_STATE_STAGING_BLOBS, path, sizeof(path));
    if (keel__fs_rm_rf(path, &e))
        KEEL_LOG_W(MOD, "cannot clean %s: %s", path, e.msg);
}

/* The state dir holds the API token, queued events and what is installed:
 * only its owner may enter it. A directory made by hand (mkdir gives 0755)
 * is closed to 0700; one that other users could write to (its contents
 * cannot be trusted) or that belongs to another user is refused. */
static int state_dir_private(const char *dir, keel_error *err)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno,
                               "cannot read the state dir %s", dir);
    if (!S_ISDIR(st.st_mode))
        return keel__err(err, KEEL_EINVALID, "state dir %s is not a directory", dir);
    unsigned mode = (unsigned)st.st_mode & 07777, uid = (unsigned)geteuid();
    if (!(mode & 077))
        return KEEL_OK;
    if (mode & S_IWOTH)
        return keel__err(err, KEEL_EPERM,
                         "state dir %s is writable by every user (mode %04o), so what is in it "
                         "cannot be trusted; give keel a directory of its own (mode 0700)",
                         dir, mode);
    if (st.st_uid != geteuid())
        return keel__err(err, KEEL_EPERM,
                         "state dir %s is open to other users (mode %04o) and belongs to uid %u, "
                         "not to this user (uid %u); it holds the API token and queued data: "
                         "`chmod 700` it as its owner, or run keel as uid %u",
                         dir, mode, (unsigned)st.st_uid, uid, (unsigned)st.st_uid);
    if (chmod(dir, 0700) != 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno,
                               "state dir %s is open to other users (mode %04o) and cannot be "
                               "closed to them (chmod 700 it)",
                               dir, mode);
    KEEL_LOG_W(MOD, "state dir %s was open to other users (mode %04o); made it 0700", dir, mode);
    return KEEL_OK;
}

int keel_store_open(const char *state_dir, const keel_limits *lim, keel_store **ret,
                    keel_error *err)
{
    char path[PATH_MAX];
    keel_store *s = calloc(1, sizeof(*s));
    int rc;
    if (!s)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    s->lockfd = -1;
    pthread_mutex_init(&s->lock, NULL);
    if (strlen(state_dir) >= sizeof(s->dir)) {
        rc = keel__err(err, KEEL_ETOOBIG, "state dir path too long: %s", state_dir);
        goto fail;
    }
    keel__strlcpy(s->dir, state_dir, sizeof(s->dir));
    if (lim)
        s->lim = *lim;
    else
        keel_limits_default(&s->lim);
    (void)keel_state_path(state_dir, KEEL_STATE_BLOBS, path, sizeof(path));
    if ((rc = keel__fs_mkdir_p(state_dir, 0700, err)) || (rc = state_dir_private(state_dir, err)) ||
        (rc = keel__fs_mkdir_p(path, 0755, err)))
        goto fail;
    /* Several processes may open one store (keeld, `keel --offline`, `keel
     * verify`). Each holds a shared lock for its lifetime; only a process
     * that can take the lock exclusively (nobody else has the store open)
     * removes leftovers of a killed install, and gc needs it too. */
    (void)keel_state_path(state_dir, KEEL_STATE_LOCK, path, sizeof(path));
    s->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lockfd < 0) {
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", path);
        goto fail;
    }
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) == 0)
        clean_staging(state_dir);
    if (flock(s->lockfd, LOCK_SH) != 0) {
        rc = keel__err_errno(err, KEEL_EIO, errno, "cannot lock %s", path);
        goto fail;
    }
    (void)keel_state_path(state_dir, KEEL_STATE_STAGING_BLOBS, path, sizeof(path));
    if ((rc = keel__fs_mkdir_p(path, 0700, err)))
        goto fail;
    (void)keel_state_path(state_dir, KEEL_STATE_STORE_DB, path, sizeof(path));
    if ((rc = keel__db_open(path, &s->db, err)))
        goto fail;
    *ret = s;
    return KEEL_OK;
fail:
    keel_store_close(s);
    return rc;
}

void keel_store_set_limits(keel_store *s, const keel_limits *lim)
{
    pthread_mutex_lock(&s->lock);
    s->lim = *lim;
    pthread_mutex_unlock(&s->lock);
}

void keel_store_close(keel_store *s)
{
    if (!s)
        return;
    sqlite3_close(s->db);
    if (s->lockfd >= 0)
        close(s->lockfd);
    pthread_mutex_destroy(&s->lock);
    free(s->serving);
    free(s);
}

/* --- small queries (called with the lock held) ------------------------------- */

static int get_text(keel_store *s, const char *sql, const char *a, const char *b, char *out,
                    size_t n, bool *found, keel_error *err)
{
    sqlite3_stmt *st;
    int rc = keel__db_prepare(s->db, sql, &st, err);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, a, -1, SQLITE_STATIC);
    if (b)
        sqlite3_bind_text(st, 2, b, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *found = r == SQLITE_ROW;
    if (r == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        keel__strlcpy(out, t ? (const char *)t : "", n);
    } else if (r != SQLITE_DONE) {
        rc = keel__db_err(s->db, err, "query");
    }
    sqlite3_finalize(st);
    return rc;
}

/* The digest of a recorded name@version; *found says whether it is recorded. */
static int package_digest(keel_store *s, const char *name, const char *ver, char *out, size_t n,
                          bool *found, keel_error *err)
{
    return get_text(s, "SELECT digest FROM packages WHERE name=?1 AND version=?2", name, ver, out,
                    n, found, err);
}

static int slot_get(keel_store *s, const char *name, keel_slot slot, char *ver, bool *found,
                    keel_error *err)
{
    return get_text(s, "SELECT version FROM slots WHERE name=?1 AND slot=?2", name,
                    slot_names[slot], ver, KEEL_VERSION_MAX, found, err);
}

static int slot_set(keel_store *s, const char *name, keel_slot slot, const char *ver,
                    keel_error *err)
{
    sqlite3_stmt *st;
    KEEL_ASSERT(slot >= 0 && slot < KEEL_SLOT_COUNT, "slot %d", (int)slot);
    KEEL_ASSERT(!sqlite3_get_autocommit(s->db), "%s %s := %s outside a transaction", name,
                slot_names[slot], ver ? ver : "(none)");
    KEEL_ASSERT(ver || slot != KEEL_SLOT_ACTIVE, "%s: clearing the active slot", name);
    KEEL_ASSERT(!ver || ver[0], "%s %s := empty version", name, slot_names[slot]);
    int rc = keel__db_prepare(s->db,
                              ver ? "INSERT INTO slots(name, slot, version) VALUES(?1, ?2, ?3) "
                                    "ON CONFLICT(name, slot) DO UPDATE SET version=excluded.version"
                                  : "DELETE FROM slots WHERE name=?1 AND slot=?2",
                              &st, err);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, slot_names[slot], -1, SQLITE_STATIC);
    if (ver)
        sqlite3_bind_text(st, 3, ver, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "updating a slot");
    sqlite3_finalize(st);
    return rc;
}

static int journal(keel_store *s, const char *name, const char *action, const char *ver,
                   const char *detail, keel_error *err)
{
    sqlite3_stmt *st;
    KEEL_ASSERT(!sqlite3_get_autocommit(s->db), "%s %s %s journalled outside a transaction", name,
                action, ver);
    int rc = keel__db_prepare(s->db,
                              "INSERT INTO journal(at, name, action, version, detail) "
                              "VALUES(?1, ?2, ?3, ?4, ?5)",
                              &st, err);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, keel__now_wall_s());
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, action, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, ver, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, detail ? detail : "", -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "writing the journal");
    sqlite3_finalize(st);
    return rc;
}

/* Transactions: every BEGIN is closed by txn_end, which commits on success
 * and rolls back on any failure, a failed COMMIT included. */
static int txn_begin(keel_store *s, const char *what, keel_error *err)
{
    KEEL_ASSERT(sqlite3_get_autocommit(s->db), "%s: a transaction is already open", what);
    return keel__db_exec(s->db, "BEGIN IMMEDIATE", what, err);
}

static int txn_end(keel_store *s, int rc, const char *what, keel_error *err)
{
    if (!rc)
        rc = keel__db_exec(s->db, "COMMIT", what, err);
    if (rc && !sqlite3_get_autocommit(s->db) &&
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
        KEEL_LOG_E(MOD, "rollback after a failed %s did not complete: %s", what,
                   sqlite3_errmsg(s->db));
    KEEL_ASSERT(sqlite3_get_autocommit(s->db), "%s: the transaction is still open", what);
    return rc;
}

static int highwater_raise(keel_store *s, const char *name, const char *ver, keel_error *err)
{
    char hw[KEEL_VERSION_MAX];
    bool found;
    int rc = get_text(s, "SELECT version FROM highwater WHERE name=?1", name, NULL, hw, sizeof(hw),
                      &found, err);
    if (rc || (found && keel_semver_cmp(ver, hw) <= 0))
        return rc;
    sqlite3_stmt *st;
    if ((rc = keel__db_prepare(s->db,
                               "INSERT INTO highwater(name, version) VALUES(?1, ?2) "
                               "ON CONFLICT(name) DO UPDATE SET version=excluded.version",
                               &st, err)))
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, ver, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "raising the high-water mark");
    sqlite3_finalize(st);
    return rc;
}

/* Anti-rollback: ver may go live unless it is below the highest version ever
 * activated here and is not this device's recorded known-good. */
static int rollback_allowed(keel_store *s, const char *name, const char *ver, keel_error *err)
{
    char hw[KEEL_VERSION_MAX], kg[KEEL_VERSION_MAX];
    bool found, kg_found;
    int rc = get_text(s, "SELECT version FROM highwater WHERE name=?1", name, NULL, hw, sizeof(hw),
                      &found, err);
    if (rc || !found || keel_semver_cmp(ver, hw) >= 0)
        return rc;
    if ((rc = slot_get(s, name, KEEL_SLOT_KNOWN_GOOD, kg, &kg_found, err)))
        return rc;
    if (kg_found && strcmp(kg, ver) == 0)
        return KEEL_OK;
    return keel__err(err, KEEL_EDOWNGRADE,
                     "%s %s is older than %s, the highest version this device has activated, "
                     "and is not its recorded known-good version%s%s; publish a higher version",
                     name, ver, hw, kg_found ? " " : "", kg_found ? kg : "");
}

/* A version the trust in force no longer accepts (keel_store_recheck): its
 * reason into why when *found. */
static int mark_get(keel_store *s, const char *name, const char *ver, bool *found, char *why,
                    size_t n, keel_error *err)
{
    char buf[KEEL_ERROR_MSG_MAX];
    int rc = get_text(s, "SELECT reason FROM revoked WHERE name=?1 AND version=?2", name, ver,
                      why ? why : buf, why ? n : sizeof(buf), found, err);
    return rc;
}

/* Refuses (UNTRUSTED) to put a revoked version in a slot that serves. */
static int refuse_revoked(keel_store *s, const char *name, const char *ver, const char *what,
                          keel_error *err)
{
    char why[KEEL_ERROR_MSG_MAX];
    bool found;
    int rc = mark_get(s, name, ver, &found, why, sizeof(why), err);
    if (rc || !found)
        return rc;
    return keel__err(err, KEEL_EUNTRUSTED,
                     "%s %s is revoked, so it cannot be %s: %s; install a newer version the "
                     "trust dir accepts",
                     name, ver, what, why);
}

/* --- verification ----------------------------------------------------------------- */

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int stamp_put(keel_store *s, const char *hex, const struct stat *st, keel_error *err)
{
    sqlite3_stmt *q;
    int rc = keel__db_prepare(s->db,
                              "INSERT OR REPLACE INTO stamps(sha256, dev, ino, size, mtime_ns, "
                              "ctime_ns, verified_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                              &q, err);
    if (rc)
        return rc;
    sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)st->st_dev);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)st->st_ino);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)st->st_size);
    sqlite3_bind_int64(q, 5, ts_ns(st->st_mtim));
    sqlite3_bind_int64(q, 6, ts_ns(st->st_ctim));
    sqlite3_bind_int64(q, 7, keel__now_wall_s());
    if (sqlite3_step(q) != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "recording a verification stamp");
    sqlite3_finalize(q);
    return rc;
}

static bool stamp_matches(keel_store *s, const char *hex, const struct stat *st)
{
    sqlite3_stmt *q;
    bool ok = false;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT dev, ino, size, mtime_ns, ctime_ns FROM stamps WHERE sha256=?1",
                           -1, &q, NULL) != SQLITE_OK)
        return false;
    sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW)
        ok = sqlite3_column_int64(q, 0) == (sqlite3_int64)st->st_dev &&
             sqlite3_column_int64(q, 1) == (sqlite3_int64)st->st_ino &&
             sqlite3_column_int64(q, 2) == (sqlite3_int64)st->st_size &&
             sqlite3_column_int64(q, 3) == ts_ns(st->st_mtim) &&
             sqlite3_column_int64(q, 4) == ts_ns(st->st_ctim);
    sqlite3_finalize(q);
    return ok;
}

static void stamp_drop(keel_store *s, const char *hex)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM stamps WHERE sha256=?1", -1, &q, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC);
        (void)sqlite3_step(q);
        sqlite3_finalize(q);
    }
}

/* Checks one blob: stat, stamp, else re-hash. Lock held. */
static int verify_blob(keel_store *s, const char *path_in_pkg, const char *hex, uint64_t size,
                       unsigned flags, keel_error *err)
{
    char bp[PATH_MAX];
    struct stat st;
    uint8_t want[KEEL_SHA256_LEN], got[KEEL_SHA256_LEN];
    char ghex[KEEL_SHA256_HEX];
    blob_path(s, hex, bp, sizeof(bp));
    if (stat(bp, &st) != 0)
        return keel__err(err, KEEL_ECORRUPT, "%s is missing from the blob store (%s)", path_in_pkg,
                         bp);
    if ((uint64_t)st.st_size != size) {
        stamp_drop(s, hex);
        return keel__err(err, KEEL_ECORRUPT, "%s is %lld bytes on disk, expected %llu (%s)",
                         path_in_pkg, (long long)st.st_size, (unsigned long long)size, bp);
    }
    if (!(flags & KEEL_VERIFY_DEEP) && stamp_matches(s, hex, &st))
        return KEEL_OK;
    if (keel_hex_decode(hex, strlen(hex), want, sizeof(want)))
        return keel__err(err, KEEL_ECORRUPT, "bad hash recorded for %s", path_in_pkg);
    int rc = keel_sha256_file(bp, got, NULL, err);
    if (rc)
        return rc;
    if (memcmp(want, got, sizeof(want)) != 0) {
        stamp_drop(s, hex);
        keel_hex_encode(got, sizeof(got), ghex);
        return keel__err(err, KEEL_ECORRUPT,
                         "%s is corrupt on disk: sha256 %s, expected %s (%s); reinstall the "
                         "package",
                         path_in_pkg, ghex, hex, bp);
    }
    /* Re-stat after hashing: the stamp must describe what was hashed. */
    struct stat st2;
    if (stat(bp, &st2) == 0 && ts_ns(st2.st_mtim) == ts_ns(st.st_mtim) &&
        ts_ns(st2.st_ctim) == ts_ns(st.st_ctim) && st2.st_size == st.st_size)
        return stamp_put(s, hex, &st2, err);
    return KEEL_OK;
}

static int verify_locked(keel_store *s, const char *name, const char *ver, unsigned flags,
                         keel_error *err)
{
    sqlite3_stmt *q;
    int rc = keel__db_prepare(
        s->db, "SELECT path, sha256, size FROM files WHERE name=?1 AND version=?2", &q, err);
    bool any = false;
    if (rc)
        return rc;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ver, -1, SQLITE_STATIC);
    int r;
    while (!rc && (r = sqlite3_step(q)) == SQLITE_ROW) {
        any = true;
        rc = verify_blob(s, (const char *)sqlite3_column_text(q, 0),
                         (const char *)sqlite3_column_text(q, 1),
                         (uint64_t)sqlite3_column_int64(q, 2), flags, err);
    }
    sqlite3_finalize(q);
    if (rc)
        return keel__err_prefix(err, "%s %s", name, ver);
    if (!any) {
        /* A package with no files is valid only if it is recorded. */
        bool found;
        char d[80];
        if ((rc = package_digest(s, name, ver, d, sizeof(d), &found, err)))
            return rc;
        if (!found)
            return keel__err(err, KEEL_ENOTFOUND, "%s %s is not installed", name, ver);
    }
    return KEEL_OK;
}

int keel_store_blob_path(keel_store *s, const char *hex, char *buf, size_t n, uint64_t *ret_size,
                         keel_error *err)
{
    sqlite3_stmt *q;
    struct stat st;
    char bp[PATH_MAX];
    uint64_t size = 0;
    bool known = false;
    size_t hl = strlen(hex);
    if (hl != 64 || strspn(hex, "0123456789abcdef") != 64)
        return keel__err(err, KEEL_EINVALID, "not a SHA-256 in lower-case hex (64 digits)");
    pthread_mutex_lock(&s->lock);
    int rc = keel__db_prepare(s->db,
                              "SELECT f.size FROM files f JOIN packages p ON p.name = f.name AND "
                              "p.version = f.version WHERE f.sha256 = ?1 LIMIT 1",
                              &q, err);
    if (!rc) {
        sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            known = true;
            size = (uint64_t)sqlite3_column_int64(q, 0);
        }
        sqlite3_finalize(q);
    }
    blob_path(s, hex, bp, sizeof(bp));
    if (!rc && !known)
        rc =
            keel__err(err, KEEL_ENOTFOUND, "no installed version holds a file with sha256 %s", hex);
    if (!rc && (stat(bp, &st) != 0 || (uint64_t)st.st_size != size || !stamp_matches(s, hex, &st)))
        rc = keel__err(err, KEEL_ECORRUPT,
                       "the file with sha256 %s is missing, changed or not verified since it "
                       "changed (POST /api/verify checks it again)",
                       hex);
    pthread_mutex_unlock(&s->lock);
    if (rc)
        return rc;
    if (keel__snprintf(buf, n, "%s", bp))
        return keel__err(err, KEEL_ETOOBIG, "state dir path too long");
    *ret_size = size;
    return KEEL_OK;
}

int keel_store_verify(keel_store *s, const char *name, const char *version, unsigned flags,
                      keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = verify_locked(s, name, version, flags, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* --- install ------------------------------------------------------------------------ */

typedef struct install_ctx {
    keel_store *s;
    int fd;
    char tmp[PATH_MAX];
    uint64_t new_bytes;
    size_t nnew;
    char (*new_hex)[KEEL_SHA256_HEX]; /* blobs written by this install: stamp them */
} install_ctx;

static int sink_begin(void *ud, const keel_file *f, bool *ret_skip, keel_error *err)
{
    install_ctx *c = ud;
    char hex[KEEL_SHA256_HEX], bp[PATH_MAX];
    struct stat st;
    keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
    blob_path(c->s, hex, bp, sizeof(bp));
    if (stat(bp, &st) == 0 && (uint64_t)st.st_size == f->size) {
        pthread_mutex_lock(&c->s->lock);
        bool ok = stamp_matches(c->s, hex, &st);
        pthread_mutex_unlock(&c->s->lock);
        if (ok) {
            *ret_skip = true; /* already stored and verified; the reader still hashes */
            return KEEL_OK;
        }
    }
    *ret_skip = false;
    snprintf(c->tmp, sizeof(c->tmp), "%s/%s/%s.XXXXXX", c->s->dir,
             keel_state_name(KEEL_STATE_STAGING_BLOBS), hex);
    c->fd = mkostemp(c->tmp, O_CLOEXEC);
    if (c->fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno,
                               "cannot create a staging file in %s/staging", c->s->dir);
    return KEEL_OK;
}

static int sink_write(void *ud, const void *data, size_t len, keel_error *err)
{
    install_ctx *c = ud;
    if (keel__fs_write_all(c->fd, data, len) != 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot write %s", c->tmp);
    return KEEL_OK;
}

/* A blob this install wrote: its stamp comes with the COMMIT. */
static int note_new_blob(install_ctx *c, const char *hex, uint64_t size, keel_error *err)
{
    void *p = realloc(c->new_hex, (c->nnew + 1) * sizeof(*c->new_hex));
    if (!p)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    c->new_hex = p;
    memcpy(c->new_hex[c->nnew++], hex, KEEL_SHA256_HEX);
    c->new_bytes += size;
    return KEEL_OK;
}

static int sink_end(void *ud, const keel_file *f, bool ok, keel_error *err)
{
    install_ctx *c = ud;
    char hex[KEEL_SHA256_HEX], bp[PATH_MAX], dir[PATH_MAX];
    int rc = KEEL_OK;
    if (c->fd < 0)
        return KEEL_OK; /* skipped */
    if (!ok) {
        close(c->fd);
        c->fd = -1;
        unlink(c->tmp);
        return KEEL_OK;
    }
    keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
    blob_path(c->s, hex, bp, sizeof(bp));
    snprintf(dir, sizeof(dir), "%s/%s/%.2s", c->s->dir, keel_state_name(KEEL_STATE_BLOBS), hex);
    if (fchmod(c->fd, 0444) != 0 || keel__fs_fsync(c->fd) != 0)
        rc = keel__err_errno(err, KEEL_EIO, errno, "cannot sync %s", c->tmp);
    close(c->fd);
    c->fd = -1;
    if (!rc)
        rc = keel__fs_mkdir_p(dir, 0755, err);
    /* Invariant 1: only a file the reader matched (ok), synced, is renamed in. */
    KEEL_ASSERT(ok, "%s: renaming an unverified blob", c->tmp);
    if (!rc && keel__fs_rename(c->tmp, bp) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot move %s into %s",
                             c->tmp, bp);
    if (!rc)
        rc = keel__fs_fsync_dir(dir, err);
    if (rc) {
        unlink(c->tmp);
        return rc;
    }
    return note_new_blob(c, hex, f->size, err);
}

static int activate_locked(keel_store *s, const char *name, const char *ver, const char *action,
                           keel_error *err);

static int record_package(keel_store *s, const keel_manifest *m, const keel_sigset *sigs,
                          install_ctx *c, unsigned flags, keel_error *err)
{
    const char *name = keel_manifest_name(m), *ver = keel_manifest_version(m);
    char digest[72], *sigjson = NULL;
    size_t mlen;
    const uint8_t *mbytes = keel_manifest_bytes(m, &mlen);
    sqlite3_stmt *q = NULL;
    int rc;
    keel_manifest_digest_str(m, digest);
    if ((rc = keel_sigset_format(sigs, &sigjson, err)))
        return rc;
    if ((rc = txn_begin(s, "install", err)))
        goto out;
    if ((rc = keel__db_prepare(s->db,
                               "INSERT INTO packages(name, version, digest, manifest, sigs, "
                               "bytes, installed_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                               &q, err)))
        goto rollback;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ver, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, digest, -1, SQLITE_STATIC);
    sqlite3_bind_blob(q, 4, mbytes, (int)mlen, SQLITE_STATIC);
    sqlite3_bind_text(q, 5, sigjson, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 6, (sqlite3_int64)keel_manifest_total_bytes(m));
    sqlite3_bind_int64(q, 7, keel__now_wall_s());
    if (sqlite3_step(q) != SQLITE_DONE) {
        rc = keel__db_err(s->db, err, "recording the package");
        goto rollback;
    }
    sqlite3_finalize(q);
    q = NULL;
    if ((rc = keel__db_prepare(s->db,
                               "INSERT INTO files(name, version, path, sha256, size) "
                               "VALUES(?1, ?2, ?3, ?4, ?5)",
                               &q, err)))
        goto rollback;
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++) {
        const keel_file *f = keel_manifest_file(m, i);
        char hex[KEEL_SHA256_HEX];
        keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ver, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, f->path, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, hex, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(q, 5, (sqlite3_int64)f->size);
        if (sqlite3_step(q) != SQLITE_DONE) {
            rc = keel__db_err(s->db, err, "recording the package files");
            goto rollback;
        }
    }
    for (size_t i = 0; i < c->nnew; i++) {
        char bp[PATH_MAX];
        struct stat st;
        blob_path(s, c->new_hex[i], bp, sizeof(bp));
        if (stat(bp, &st) == 0 && (rc = stamp_put(s, c->new_hex[i], &st, err)))
            goto rollback;
    }
    if ((rc = journal(s, name, "install", ver, digest, err)))
        goto rollback;
    if (flags & KEEL_INSTALL_ACTIVATE) {
        if ((rc = activate_locked(s, name, ver, "activate", err)))
            goto rollback;
    } else if ((rc = slot_set(s, name, KEEL_SLOT_STAGED, ver, err))) {
        goto rollback;
    }
rollback:
    sqlite3_finalize(q);
    q = NULL;
    rc = txn_end(s, rc, "install", err);
out:
    sqlite3_finalize(q);
    free(sigjson);
    return rc;
}

/* Before anything is written: the same name@version recorded with another
 * digest is CONFLICT; below the high-water mark and not known-good is
 * DOWNGRADE. *found: this exact package is recorded already. Fills res. */
static int install_precheck(keel_store *s, const keel_manifest *m, bool *found,
                            keel_install_result *res, keel_error *err)
{
    const char *name = keel_manifest_name(m), *ver = keel_manifest_version(m);
    char digest[72], have[80];
    int rc;
    keel_manifest_digest_str(m, digest);
    keel__strlcpy(res->name, name, sizeof(res->name));
    keel__strlcpy(res->version, ver, sizeof(res->version));
    keel__strlcpy(res->digest, digest, sizeof(res->digest));
    res->bytes = keel_manifest_total_bytes(m);
    pthread_mutex_lock(&s->lock);
    rc = package_digest(s, name, ver, have, sizeof(have), found, err);
    if (!rc && *found && strcmp(have, digest) != 0)
        rc = keel__err(err, KEEL_ECONFLICT,
                       "%s %s is already installed with different content (%s, this one is "
                       "%s); a changed package needs a new version",
                       name, ver, have, digest);
    if (!rc)
        rc = rollback_allowed(s, name, ver, err);
    pthread_mutex_unlock(&s->lock);
    if (rc || !*found)
        return rc;
    /* Same bytes again: re-check the stored files. */
    res->already = true;
    pthread_mutex_lock(&s->lock);
    rc = verify_locked(s, name, ver, 0, err);
    pthread_mutex_unlock(&s->lock);
    if (rc == KEEL_ECORRUPT) {
        /* Repair from this source: the caller copies every file. */
        KEEL_LOG_W(MOD, "%s; repairing", err->msg);
        res->already = false;
        rc = KEEL_OK;
    }
    return rc;
}

/* Once the new blobs are in place (c->new_hex): records the package (or,
 * when it was recorded already, stamps repaired blobs), then stages or
 * activates it as flags say. */
static int install_commit(keel_store *s, const keel_manifest *m, const keel_sigset *sigs,
                          install_ctx *c, bool found, unsigned flags, keel_install_result *res,
                          keel_error *err)
{
    const char *name = keel_manifest_name(m), *ver = keel_manifest_version(m);
    int rc = KEEL_OK;
    if (c->nnew) /* a blob went missing since the check: stamp it */
        res->already = false;
    if (!res->already) {
        pthread_mutex_lock(&s->lock);
        if (found) {
            rc = txn_begin(s, "repair", err);
            for (size_t i = 0; !rc && i < c->nnew; i++) {
                char bp[PATH_MAX];
                struct stat st;
                blob_path(s, c->new_hex[i], bp, sizeof(bp));
                if (stat(bp, &st) == 0)
                    rc = stamp_put(s, c->new_hex[i], &st, err);
            }
            if (!rc && (flags & KEEL_INSTALL_ACTIVATE))
                rc = activate_locked(s, name, ver, "activate", err);
            rc = txn_end(s, rc, "repair", err);
        } else {
            rc = record_package(s, m, sigs, c, flags, err);
        }
        pthread_mutex_unlock(&s->lock);
    } else if (flags & KEEL_INSTALL_ACTIVATE) {
        pthread_mutex_lock(&s->lock);
        if (!(rc = txn_begin(s, "activation", err)))
            rc = txn_end(s, activate_locked(s, name, ver, "activate", err), "activation", err);
        pthread_mutex_unlock(&s->lock);
    }
    if (rc)
        return rc;
    res->new_bytes = c->new_bytes;
    res->activated = (flags & KEEL_INSTALL_ACTIVATE) != 0;
    KEEL_LOG_I(MOD, "installed %s %s (%s, %llu bytes, %llu new)%s", res->name, res->version,
               res->digest, (unsigned long long)res->bytes, (unsigned long long)res->new_bytes,
               res->activated ? ", active" : ", staged");
    return KEEL_OK;
}

static keel_limits install_begin(keel_store *s)
{
    pthread_mutex_lock(&s->lock);
    s->installs++;
    keel_limits lim = s->lim;
    pthread_mutex_unlock(&s->lock);
    return lim;
}

static void install_end(keel_store *s, install_ctx *c)
{
    pthread_mutex_lock(&s->lock);
    KEEL_ASSERT(s->installs > 0, "install count underflow");
    s->installs--;
    pthread_mutex_unlock(&s->lock);
    free(c->new_hex);
}

static int install_one(keel_store *s, const char *pkg_path, const keel_trust *trust, unsigned flags,
                       keel_install_result *ret, keel_error *err)
{
    keel_pkg *p = NULL;
    install_ctx c = {.s = s, .fd = -1};
    keel_install_result res;
    bool found = false;
    int rc;
    memset(&res, 0, sizeof(res));
    if (!trust)
        return keel__err(err, KEEL_EUNTRUSTED, "no trust root: refusing to install %s", pkg_path);
    keel_limits lim = install_begin(s);
    if ((rc = keel_pkg_open(pkg_path, &lim, &p, err)) || (rc = keel_pkg_check_trust(p, trust, err)))
        goto out;
    const keel_manifest *m = keel_pkg_manifest(p);
    if ((rc = install_precheck(s, m, &found, &res, err)))
        goto out;
    /* Every byte is read and hashed as in a first install, even when this
     * version is there already: a truncated or altered copy is refused, not
     * answered "already installed". Blobs stored and stamped are not
     * written again. */
    keel_pkg_sink sink = {sink_begin, sink_write, sink_end, &c};
    if ((rc = keel_pkg_extract(p, &sink, err)) ||
        (rc = install_commit(s, m, keel_pkg_sigs(p), &c, found, flags, &res, err)))
        goto out;
    if (ret)
        *ret = res;
out:
    install_end(s, &c);
    keel_pkg_close(p);
    return rc;
}

typedef int (*install_fn)(keel_store *s, const char *from, const keel_trust *trust, unsigned flags,
                          keel_install_result *ret, keel_error *err);

/* With a validator, an activating install installs staged, validates, and
 * activates. */
static int install_validated(keel_store *s, install_fn fn, const char *from,
                             const keel_trust *trust, unsigned flags, keel_install_result *ret,
                             keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    bool validated = s->validator != NULL;
    pthread_mutex_unlock(&s->lock);
    if (!validated || !(flags & KEEL_INSTALL_ACTIVATE))
        return fn(s, from, trust, flags, ret, err);
    keel_install_result res;
    int rc = fn(s, from, trust, flags & ~KEEL_INSTALL_ACTIVATE, &res, err);
    if (!rc && !(rc = keel_store_activate(s, res.name, res.version, err)))
        res.activated = true;
    if (ret)
        *ret = res;
    return rc;
}

int keel_store_install(keel_store *s, const char *pkg_path, const keel_trust *trust, unsigned flags,
                       keel_install_result *ret, keel_error *err)
{
    return install_validated(s, install_one, pkg_path, trust, flags, ret, err);
}

/* --- install from a download folder (keel_store_install_dir) ------------------------------ */

/* Links dir/<hex> into the blob store after matching its size and SHA-256
 * (invariant 1: hashed here, whatever the downloader checked). A link, not a
 * rename: until the COMMIT the download folder keeps its copy, so a crash
 * before it costs no download again (the blob in blobs/ is then an
 * unreferenced file for gc); install_dir_one unlinks the folder's name
 * after the COMMIT. The link is made under staging/ and renamed over the
 * blob's name (replacing an unstamped copy, if any). */
static int link_blob_in(install_ctx *c, const char *src, const keel_file *f, keel_error *err)
{
    char hex[KEEL_SHA256_HEX], bp[PATH_MAX], dir[PATH_MAX], ghex[KEEL_SHA256_HEX], tmp[PATH_MAX];
    uint8_t got[KEEL_SHA256_LEN];
    uint64_t size = 0;
    int rc, fd;
    keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
    for (size_t i = 0; i < c->nnew; i++)
        if (strcmp(c->new_hex[i], hex) == 0)
            return KEEL_OK; /* listed twice in the manifest */
    if ((rc = keel_sha256_file(src, got, &size, err)))
        return rc;
    if (size != f->size || memcmp(got, f->sha256, sizeof(got)) != 0) {
        keel_hex_encode(got, sizeof(got), ghex);
        return keel__err(err, KEEL_ECORRUPT,
                         "%s: %s is %llu bytes with sha256 %s, the manifest says %llu bytes, %s; "
                         "delete it and download again",
                         f->path, src, (unsigned long long)size, ghex, (unsigned long long)f->size,
                         hex);
    }
    blob_path(c->s, hex, bp, sizeof(bp));
    snprintf(dir, sizeof(dir), "%s/%s/%.2s", c->s->dir, keel_state_name(KEEL_STATE_BLOBS), hex);
    snprintf(tmp, sizeof(tmp), "%s/%s/%s.link-%ld", c->s->dir,
             keel_state_name(KEEL_STATE_STAGING_BLOBS), hex, (long)getpid());
    if ((fd = open(src, O_RDONLY | O_CLOEXEC)) < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", src);
    if (fchmod(fd, 0444) != 0 || keel__fs_fsync(fd) != 0)
        rc = keel__err_errno(err, KEEL_EIO, errno, "cannot sync %s", src);
    close(fd);
    if (!rc)
        rc = keel__fs_mkdir_p(dir, 0755, err);
    (void)unlink(tmp);
    if (!rc && link(src, tmp) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno,
                             "cannot link %s to %s (the download folder must be on the state "
                             "dir's file system)",
                             src, tmp);
    if (!rc && keel__fs_rename(tmp, bp) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot move %s into %s", tmp,
                             bp);
    /* Gone after a rename, except when bp already was this inode (left by an
     * install whose COMMIT failed): rename then does nothing. */
    (void)unlink(tmp);
    if (!rc)
        rc = keel__fs_fsync_dir(dir, err);
    if (rc)
        return rc;
    return note_new_blob(c, hex, f->size, err);
}

/* After the COMMIT: drops the download folder's names of the new blobs.
 * That changes each blob's ctime, so its stamp is written again when
 * nothing else changed (same inode, size and mtime: no write since it was
 * hashed). Stamps are a cache: a missed one costs a re-hash. */
static void unlink_dir_copies(install_ctx *c, const char *dir)
{
    for (size_t i = 0; i < c->nnew; i++) {
        char src[PATH_MAX], bp[PATH_MAX];
        struct stat before, after;
        keel_error e;
        snprintf(src, sizeof(src), "%s/%s", dir, c->new_hex[i]);
        blob_path(c->s, c->new_hex[i], bp, sizeof(bp));
        if (stat(bp, &before) != 0 || unlink(src) != 0 || stat(bp, &after) != 0)
            continue;
        if (before.st_dev != after.st_dev || before.st_ino != after.st_ino ||
            before.st_size != after.st_size || ts_ns(before.st_mtim) != ts_ns(after.st_mtim))
            continue;
        pthread_mutex_lock(&c->s->lock);
        if (stamp_matches(c->s, c->new_hex[i], &before) &&
            stamp_put(c->s, c->new_hex[i], &after, &e) != KEEL_OK)
            KEEL_LOG_W(MOD, "%s", e.msg);
        pthread_mutex_unlock(&c->s->lock);
    }
}

/* Each file of m: linked in from dir/<hex>, or already a verified blob. */
static int place_dir_blobs(install_ctx *c, const char *dir, const keel_manifest *m, keel_error *err)
{
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++) {
        const keel_file *f = keel_manifest_file(m, i);
        char hex[KEEL_SHA256_HEX], src[PATH_MAX];
        struct stat st;
        int rc;
        keel_hex_encode(f->sha256, KEEL_SHA256_LEN, hex);
        snprintf(src, sizeof(src), "%s/%s", dir, hex);
        if (lstat(src, &st) == 0) {
            if (!S_ISREG(st.st_mode))
                return keel__err(err, KEEL_EINVALID, "%s is not a regular file", src);
            if ((rc = link_blob_in(c, src, f, err)))
                return rc;
            continue;
        }
        pthread_mutex_lock(&c->s->lock);
        rc = verify_blob(c->s, f->path, hex, f->size, 0, err);
        pthread_mutex_unlock(&c->s->lock);
        if (rc)
            return keel__err_prefix(err, "%s is not in %s and the store has no valid copy", f->path,
                                    dir);
    }
    return KEEL_OK;
}

static int install_dir_one(keel_store *s, const char *dir, const keel_trust *trust, unsigned flags,
                           keel_install_result *ret, keel_error *err)
{
    install_ctx c = {.s = s, .fd = -1};
    keel_install_result res;
    keel_manifest *m = NULL;
    keel_sigset sigs;
    char path[PATH_MAX], *doc = NULL, *sig = NULL;
    size_t dlen, slen;
    bool found = false;
    int rc;
    memset(&res, 0, sizeof(res));
    if (!trust)
        return keel__err(err, KEEL_EUNTRUSTED, "no trust root: refusing to install %s", dir);
    keel_limits lim = install_begin(s);
    snprintf(path, sizeof(path), "%s/%s", dir, KEEL_MANIFEST_NAME);
    if ((rc = keel__fs_read(path, lim.max_manifest_bytes, &doc, &dlen, err)))
        goto out;
    snprintf(path, sizeof(path), "%s/%s", dir, KEEL_SIG_NAME);
    if ((rc = keel__fs_read(path, lim.max_sig_bytes, &sig, &slen, err)) ||
        (rc = keel_manifest_parse(doc, dlen, &lim, &m, err)) ||
        (rc = keel_sigset_parse(sig, slen, &sigs, err)))
        goto out;
    size_t mlen;
    const uint8_t *mbytes = keel_manifest_bytes(m, &mlen);
    if ((rc = keel_trust_check_package(trust, keel_manifest_name(m), mbytes, mlen, &sigs, err)) ||
        (rc = install_precheck(s, m, &found, &res, err)))
        goto out;
    if (!res.already && (rc = place_dir_blobs(&c, dir, m, err)))
        goto out;
    if ((rc = install_commit(s, m, &sigs, &c, found, flags, &res, err)))
        goto out;
    unlink_dir_copies(&c, dir);
    if (ret)
        *ret = res;
out:
    if (rc)
        keel__err_prefix(err, "%s", dir);
    install_end(s, &c);
    keel_manifest_free(m);
    free(doc);
    free(sig);
    return rc;
}

int keel_store_install_dir(keel_store *s, const char *dir, const keel_trust *trust, unsigned flags,
                           keel_install_result *ret, keel_error *err)
{
    return install_validated(s, install_dir_one, dir, trust, flags, ret, err);
}

/* --- activation ------------------------------------------------------------------------ */

/* Inside a transaction, lock held. Makes ver active. */
static int activate_locked(keel_store *s, const char *name, const char *ver, const char *action,
                           keel_error *err)
{
    char cur[KEEL_VERSION_MAX], staged[KEEL_VERSION_MAX];
    bool has_cur, has_staged;
    int rc;
    KEEL_ASSERT(!sqlite3_get_autocommit(s->db), "activating %s %s outside a transaction", name,
                ver);
    /* Invariant 5: anti-rollback and verification come first, in this transaction. */
    if ((rc = refuse_revoked(s, name, ver, "activated", err)) ||
        (rc = rollback_allowed(s, name, ver, err)) || (rc = verify_locked(s, name, ver, 0, err)) ||
        (rc = slot_get(s, name, KEEL_SLOT_ACTIVE, cur, &has_cur, err)) ||
        (rc = slot_get(s, name, KEEL_SLOT_STAGED, staged, &has_staged, err)))
        return rc;
    if (has_cur && strcmp(cur, ver) != 0) {
        keel_error e2;
        bool revoked;
        if ((rc = slot_set(s, name, KEEL_SLOT_PREVIOUS, cur, err)) ||
            (rc = mark_get(s, name, cur, &revoked, NULL, 0, err)))
            return rc;
        /* The version being replaced served, is not revoked and still
         * verifies: it is this device's known-good to return to
         * (docs/security.md, anti-rollback). */
        if (!revoked && verify_locked(s, name, cur, 0, &e2) == KEEL_OK &&
            (rc = slot_set(s, name, KEEL_SLOT_KNOWN_GOOD, cur, err)))
            return rc;
    }
    if ((rc = slot_set(s, name, KEEL_SLOT_ACTIVE, ver, err)) ||
        (has_staged && !strcmp(staged, ver) &&
         (rc = slot_set(s, name, KEEL_SLOT_STAGED, NULL, err))) ||
        (rc = highwater_raise(s, name, ver, err)) ||
        (rc = journal(s, name, action, ver, has_cur ? cur : "", err)))
        return rc;
    return KEEL_OK;
}

static int in_txn(keel_store *s, const char *what, int (*fn)(keel_store *, void *, keel_error *),
                  void *arg, keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = txn_begin(s, what, err);
    if (!rc)
        rc = txn_end(s, fn(s, arg, err), what, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

struct act_arg {
    const char *name, *version;
    char chosen[KEEL_VERSION_MAX];
};

static int do_activate(keel_store *s, void *arg, keel_error *err)
{
    struct act_arg *a = arg;
    bool found;
    int rc;
    if (a->version) {
        char d[80];
        if ((rc = package_digest(s, a->name, a->version, d, sizeof(d), &found, err)))
            return rc;
        if (!found)
            return keel__err(err, KEEL_ENOTFOUND, "%s %s is not installed", a->name, a->version);
        keel__strlcpy(a->chosen, a->version, sizeof(a->chosen));
    } else {
        if ((rc = slot_get(s, a->name, KEEL_SLOT_STAGED, a->chosen, &found, err)))
            return rc;
        if (!found)
            return keel__err(err, KEEL_ENOTFOUND,
                             "%s has no staged version to activate (install one first, or "
                             "name a version)",
                             a->name);
    }
    return activate_locked(s, a->name, a->chosen, "activate", err);
}

void keel_store_set_validator(keel_store *s, keel_store_validator fn, void *ctx)
{
    pthread_mutex_lock(&s->lock);
    s->validator = fn;
    s->validator_ctx = ctx;
    pthread_mutex_unlock(&s->lock);
}

/* Runs the validator (if any) on name@version, lock not held. */
static int validate(keel_store *s, const char *name, const char *version, keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    keel_store_validator fn = s->validator;
    void *ctx = s->validator_ctx;
    pthread_mutex_unlock(&s->lock);
    if (!fn)
        return KEEL_OK;
    int rc = fn(ctx, s, name, version, err);
    if (rc) {
        keel__err_prefix(err, "%s %s failed validation, not activated", name, version);
        KEEL_LOG_W(MOD, "%s", err ? err->msg : "validation failed");
    }
    return rc;
}

int keel_store_activate(keel_store *s, const char *name, const char *version, keel_error *err)
{
    struct act_arg a = {name, version, ""};
    char staged[KEEL_VERSION_MAX];
    bool found = false;
    int rc = KEEL_OK;
    if (!version) {
        pthread_mutex_lock(&s->lock);
        rc = slot_get(s, name, KEEL_SLOT_STAGED, staged, &found, err);
        pthread_mutex_unlock(&s->lock);
        if (rc)
            return rc;
        if (found)
            version = staged;
    }
    if (version) { /* a revoked version is refused before the validator loads it */
        pthread_mutex_lock(&s->lock);
        rc = refuse_revoked(s, name, version, "activated", err);
        pthread_mutex_unlock(&s->lock);
    }
    if (version && !rc)
        rc = validate(s, name, version, err);
    if (rc)
        return rc;
    rc = in_txn(s, "activating", do_activate, &a, err);
    if (!rc)
        KEEL_LOG_I(MOD, "activated %s %s", name, a.chosen);
    return rc;
}

static int do_rollback(keel_store *s, void *arg, keel_error *err)
{
    struct act_arg *a = arg;
    char cur[KEEL_VERSION_MAX];
    bool has_cur, found;
    int rc;
    if ((rc = slot_get(s, a->name, KEEL_SLOT_ACTIVE, cur, &has_cur, err)) ||
        (rc = slot_get(s, a->name, KEEL_SLOT_PREVIOUS, a->chosen, &found, err)))
        return rc;
    if (!found && (rc = slot_get(s, a->name, KEEL_SLOT_KNOWN_GOOD, a->chosen, &found, err)))
        return rc;
    if (!found || (has_cur && !strcmp(cur, a->chosen)))
        return keel__err(err, KEEL_ENOTFOUND,
                         "%s has no previous or known-good version to roll back to", a->name);
    if ((rc = refuse_revoked(s, a->name, a->chosen, "rolled back to", err)) ||
        (rc = rollback_allowed(s, a->name, a->chosen, err)) ||
        (rc = verify_locked(s, a->name, a->chosen, 0, err)))
        return rc;
    KEEL_ASSERT(!has_cur || strcmp(cur, a->chosen), "%s: rolling back to the active %s", a->name,
                cur);
    if ((rc = slot_set(s, a->name, KEEL_SLOT_ACTIVE, a->chosen, err)) ||
        (rc = slot_set(s, a->name, KEEL_SLOT_PREVIOUS, has_cur ? cur : NULL, err)) ||
        (rc = journal(s, a->name, "rollback", a->chosen, has_cur ? cur : "", err)))
        return rc;
    return KEEL_OK;
}

int keel_store_rollback(keel_store *s, const char *name, keel_error *err)
{
    struct act_arg a = {name, NULL, ""};
    int rc = in_txn(s, "rolling back", do_rollback, &a, err);
    if (!rc)
        KEEL_LOG_I(MOD, "rolled %s back to %s", name, a.chosen);
    return rc;
}

static int do_mark_good(keel_store *s, void *arg, keel_error *err)
{
    struct act_arg *a = arg;
    bool found;
    int rc = slot_get(s, a->name, KEEL_SLOT_ACTIVE, a->chosen, &found, err);
    if (rc)
        return rc;
    if (!found)
        return keel__err(err, KEEL_ENOTFOUND, "%s has no active version", a->name);
    if ((rc = refuse_revoked(s, a->name, a->chosen, "marked known-good", err)) ||
        (rc = verify_locked(s, a->name, a->chosen, 0, err)) ||
        (rc = slot_set(s, a->name, KEEL_SLOT_KNOWN_GOOD, a->chosen, err)))
        return rc;
    return journal(s, a->name, "mark-good", a->chosen, "", err);
}

int keel_store_mark_good(keel_store *s, const char *name, keel_error *err)
{
    struct act_arg a = {name, NULL, ""};
    return in_txn(s, "marking known-good", do_mark_good, &a, err);
}

/* --- serving ------------------------------------------------------------------------ */

static serving_rec *serving_slot(keel_store *s, const char *name)
{
    for (size_t i = 0; i < s->nserving; i++)
        if (!strcmp(s->serving[i].s.name, name))
            return &s->serving[i];
    serving_rec *p = realloc(s->serving, (s->nserving + 1) * sizeof(*p));
    if (!p)
        return NULL;
    s->serving = p;
    memset(&p[s->nserving], 0, sizeof(*p));
    keel__strlcpy(p[s->nserving].s.name, name, sizeof(p->s.name));
    return &p[s->nserving++];
}

static int resolve_locked(keel_store *s, const char *name, unsigned flags, keel_serving *ret,
                          keel_error *err)
{
    keel_serving out;
    keel_buf why;
    int rc = KEEL_OK;
    memset(&out, 0, sizeof(out));
    keel__strlcpy(out.name, name, sizeof(out.name));
    out.slot = KEEL_SLOT_NONE;
    keel__buf_init(&why, sizeof(out.reason) - 1);
    static const keel_slot order[] = {KEEL_SLOT_ACTIVE, KEEL_SLOT_PREVIOUS, KEEL_SLOT_KNOWN_GOOD};
    char tried[3][KEEL_VERSION_MAX];
    size_t ntried = 0, nrevoked = 0;
    for (size_t i = 0; i < KEEL_ARRAY_LEN(order); i++) {
        char ver[KEEL_VERSION_MAX];
        bool found, dup = false;
        keel_error e;
        if ((rc = slot_get(s, name, order[i], ver, &found, err)))
            goto out;
        if (!found)
            continue;
        for (size_t j = 0; j < ntried; j++)
            dup = dup || !strcmp(tried[j], ver);
        if (dup)
            continue;
        keel__strlcpy(tried[ntried++], ver, KEEL_VERSION_MAX);
        keel__err_clear(&e);
        char rwhy[KEEL_ERROR_MSG_MAX];
        bool revoked;
        if ((rc = mark_get(s, name, ver, &revoked, rwhy, sizeof(rwhy), err)))
            goto out;
        if (revoked) { /* the trust in force refuses it: not a candidate (docs/security.md) */
            nrevoked++;
            if (keel__buf_appendf(&why, "%s%s version %s is revoked: %s", why.len ? "; " : "",
                                  slot_names[order[i]], ver, rwhy)) {
                /* reason is bounded; the rest is in the log */
            }
            continue;
        }
        if (verify_locked(s, name, ver, flags, &e) == KEEL_OK) {
            bool f2;
            keel__strlcpy(out.version, ver, sizeof(out.version));
            if ((rc = package_digest(s, name, ver, out.digest, sizeof(out.digest), &f2, err)))
                goto out;
            out.slot = order[i];
            out.degraded = order[i] != KEEL_SLOT_ACTIVE;
            break;
        }
        if (keel__buf_appendf(&why, "%s%s %s failed verification: %s", why.len ? "; " : "",
                              slot_names[order[i]], ver, e.msg)) {
            /* reason is bounded; the rest is in the log */
        }
        KEEL_LOG_E(MOD, "%s: %s %s failed verification: %s", name, slot_names[order[i]], ver,
                   e.msg);
    }
    if (out.slot == KEEL_SLOT_NONE && ntried == 0 && !why.len) {
        if (keel__buf_appendf(&why, "%s has no active version (activate one)", name)) {
        }
    } else if (out.slot == KEEL_SLOT_NONE) {
        if (keel__buf_appendf(&why, "; nothing valid is left to serve (%s)",
                              nrevoked ? "install a version the trust dir accepts"
                                       : "reinstall a package")) {
        }
    }
    if (why.data)
        keel__strlcpy(out.reason, why.data, sizeof(out.reason));
    if (out.degraded)
        KEEL_LOG_W(MOD, "%s: serving %s %s instead of the active version: %s", name,
                   slot_names[out.slot], out.version, out.reason);
    serving_rec *rec = serving_slot(s, name);
    if (rec) {
        rec->s = out;
        rec->valid = true;
    }
    if (ret)
        *ret = out;
out:
    keel__buf_done(&why);
    return rc;
}

int keel_store_resolve(keel_store *s, const char *name, unsigned flags, keel_serving *ret,
                       keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = resolve_locked(s, name, flags, ret, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int keel_store_resolve_all(keel_store *s, unsigned flags, bool *ret_ready, char *why, size_t n,
                           keel_error *err)
{
    sqlite3_stmt *q;
    bool ready = true, any = false;
    keel_buf reasons;
    int rc;
    keel__buf_init(&reasons, n ? n - 1 : 0);
    pthread_mutex_lock(&s->lock);
    rc = keel__db_prepare(s->db, "SELECT DISTINCT name FROM slots ORDER BY name", &q, err);
    while (!rc) {
        int r = sqlite3_step(q);
        if (r == SQLITE_DONE)
            break;
        if (r != SQLITE_ROW) {
            rc = keel__db_err(s->db, err, "listing packages");
            break;
        }
        keel_serving sv;
        char name[KEEL_NAME_MAX];
        keel__strlcpy(name, (const char *)sqlite3_column_text(q, 0), sizeof(name));
        if ((rc = resolve_locked(s, name, flags, &sv, err)))
            break;
        if (sv.slot == KEEL_SLOT_NONE) {
            bool has_active = false;
            char v[KEEL_VERSION_MAX];
            if ((rc = slot_get(s, name, KEEL_SLOT_ACTIVE, v, &has_active, err)))
                break;
            if (!has_active)
                continue; /* only staged: nothing was meant to serve yet */
            ready = false;
            if (keel__buf_appendf(&reasons, "%s%s", reasons.len ? "; " : "", sv.reason)) {
            }
        } else {
            any = true;
            if (sv.degraded && keel__buf_appendf(&reasons, "%sdegraded: %s: %s",
                                                 reasons.len ? "; " : "", name, sv.reason)) {
            }
        }
    }
    sqlite3_finalize(q);
    pthread_mutex_unlock(&s->lock);
    if (!rc) {
        if (!any && ready) {
            ready = false;
            if (keel__buf_appendf(&reasons, "no package is installed and active (install one "
                                            "with `keel install FILE --activate`)")) {
            }
        }
        if (ret_ready)
            *ret_ready = ready;
        if (why && n)
            keel__strlcpy(why, reasons.data ? reasons.data : "", n);
    }
    keel__buf_done(&reasons);
    return rc;
}

int keel_store_serving_list(keel_store *s, keel_serving **ret, size_t *ret_n, keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    keel_serving *v = calloc(s->nserving + 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; v && i < s->nserving; i++)
        if (s->serving[i].valid)
            v[n++] = s->serving[i].s;
    pthread_mutex_unlock(&s->lock);
    if (!v)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    *ret = v;
    *ret_n = n;
    return KEEL_OK;
}

/* --- revocation: re-checking what is installed ----------------------------------------- */

/* What a re-check decided for one installed version (the rows are read
 * first, then written, in the same transaction). */
typedef struct verdict {
    char name[KEEL_NAME_MAX], version[KEEL_VERSION_MAX], digest[72];
    bool refused;                    /* the trust refuses it now */
    bool marked;                     /* it was marked revoked before */
    uint64_t mroot, mserial;         /* ... by trusts of at most this root version and serial */
    char reason[KEEL_ERROR_MSG_MAX]; /* the new reason (refused) or the recorded one */
    char old_reason[KEEL_ERROR_MSG_MAX];
} verdict;

/* The trust's word on one recorded version: KEEL_OK, a refusal (reason in
 * v->reason), or an error that stops the re-check (out of memory). */
static int judge(const keel_trust *t, sqlite3_stmt *q, verdict *v, keel_error *err)
{
    keel_sigset sigs;
    keel_error ce;
    const void *man = sqlite3_column_blob(q, 3);
    size_t mlen = (size_t)sqlite3_column_bytes(q, 3);
    const char *sj = (const char *)sqlite3_column_text(q, 4);
    keel__err_clear(&ce);
    int rc = keel_sigset_parse(sj ? sj : "", sj ? strlen(sj) : 0, &sigs, &ce);
    if (!rc)
        rc = keel_trust_check_package(t, v->name, man ? man : "", mlen, &sigs, &ce);
    if (rc == KEEL_ENOMEM)
        return keel__err(err, rc, "%s", ce.msg);
    v->refused = rc != KEEL_OK;
    if (v->refused)
        snprintf(v->reason, sizeof(v->reason),
                 "%s (trust root version %llu, revocation list serial %llu)", ce.msg,
                 (unsigned long long)keel_trust_root_version(t),
                 (unsigned long long)keel_trust_revocation_serial(t));
    return KEEL_OK;
}

static int verdicts_read(keel_store *s, const keel_trust *t, verdict **ret, size_t *ret_n,
                         keel_error *err)
{
    sqlite3_stmt *q = NULL;
    verdict *v = NULL;
    size_t n = 0;
    int rc = keel__db_prepare(s->db,
                              "SELECT p.name, p.version, p.digest, p.manifest, p.sigs, r.reason, "
                              "r.root_version, r.serial FROM packages p LEFT JOIN revoked r ON "
                              "r.name=p.name AND r.version=p.version ORDER BY p.name, p.version",
                              &q, err);
    int r = SQLITE_DONE;
    while (!rc && (r = sqlite3_step(q)) == SQLITE_ROW) {
        verdict *nv = realloc(v, (n + 1) * sizeof(*v));
        if (!nv) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory re-checking installed packages");
            break;
        }
        v = nv;
        verdict *d = memset(&v[n++], 0, sizeof(*v));
        keel__strlcpy(d->name, (const char *)sqlite3_column_text(q, 0), sizeof(d->name));
        keel__strlcpy(d->version, (const char *)sqlite3_column_text(q, 1), sizeof(d->version));
        keel__strlcpy(d->digest, (const char *)sqlite3_column_text(q, 2), sizeof(d->digest));
        d->marked = sqlite3_column_type(q, 5) != SQLITE_NULL;
        if (d->marked) {
            keel__strlcpy(d->old_reason, (const char *)sqlite3_column_text(q, 5),
                          sizeof(d->old_reason));
            d->mroot = (uint64_t)sqlite3_column_int64(q, 6);
            d->mserial = (uint64_t)sqlite3_column_int64(q, 7);
        }
        rc = judge(t, q, d, err);
    }
    if (!rc && r != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "reading installed packages");
    sqlite3_finalize(q);
    if (rc) {
        free(v);
        return rc;
    }
    *ret = v;
    *ret_n = n;
    return KEEL_OK;
}

static int mark_put(keel_store *s, const verdict *v, uint64_t root, uint64_t serial,
                    keel_error *err)
{
    sqlite3_stmt *q;
    int rc = keel__db_prepare(s->db,
                              "INSERT INTO revoked(name, version, digest, reason, root_version, "
                              "serial, at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(name, "
                              "version) DO UPDATE SET digest=excluded.digest, "
                              "reason=excluded.reason, root_version=excluded.root_version, "
                              "serial=excluded.serial",
                              &q, err);
    if (rc)
        return rc;
    sqlite3_bind_text(q, 1, v->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, v->version, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, v->digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, v->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)root);
    sqlite3_bind_int64(q, 6, (sqlite3_int64)serial);
    sqlite3_bind_int64(q, 7, keel__now_wall_s());
    if (sqlite3_step(q) != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "recording a revoked version");
    sqlite3_finalize(q);
    return rc;
}

static int mark_drop(keel_store *s, const verdict *v, keel_error *err)
{
    sqlite3_stmt *q;
    int rc = keel__db_prepare(s->db, "DELETE FROM revoked WHERE name=?1 AND version=?2", &q, err);
    if (rc)
        return rc;
    sqlite3_bind_text(q, 1, v->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, v->version, -1, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "lifting a revocation");
    sqlite3_finalize(q);
    return rc;
}

static int change_add(keel_revocation **ch, size_t *n, const verdict *v, bool revoked,
                      keel_error *err)
{
    keel_revocation *p = realloc(*ch, (*n + 1) * sizeof(**ch));
    if (!p)
        return keel__err(err, KEEL_ENOMEM, "out of memory re-checking installed packages");
    *ch = p;
    keel_revocation *c = memset(&p[(*n)++], 0, sizeof(*p));
    keel__strlcpy(c->name, v->name, sizeof(c->name));
    keel__strlcpy(c->version, v->version, sizeof(c->version));
    keel__strlcpy(c->digest, v->digest, sizeof(c->digest));
    c->revoked = revoked;
    if (revoked)
        keel__strlcpy(c->reason, v->reason, sizeof(c->reason));
    return KEEL_OK;
}

/* Inside the transaction: applies the verdicts, collecting the changes. */
static int verdicts_apply(keel_store *s, const verdict *v, size_t n, uint64_t root, uint64_t serial,
                          keel_revocation **ch, size_t *nch, keel_error *err)
{
    int rc = KEEL_OK;
    for (size_t i = 0; !rc && i < n; i++) {
        const verdict *d = &v[i];
        if (d->refused) {
            /* a new mark, or one confirmed by this trust: it keeps the
             * highest root version and serial that refused the version, so
             * a trust put back to an older state cannot lower the bar */
            uint64_t mr = d->marked && d->mroot > root ? d->mroot : root;
            uint64_t ms = d->marked && d->mserial > serial ? d->mserial : serial;
            if (d->marked && d->mroot == mr && d->mserial == ms &&
                !strcmp(d->old_reason, d->reason))
                continue;
            if ((rc = mark_put(s, d, mr, ms, err)) || d->marked)
                continue;
            if (!(rc = journal(s, d->name, "revoke", d->version, d->reason, err)))
                rc = change_add(ch, nch, d, true, err);
            continue;
        }
        if (!d->marked)
            continue;
        /* Only a newer trust lifts a mark: a revocation list deleted or put
         * back to an older one, or an older root.json, does not. */
        bool newer =
            root >= d->mroot && serial >= d->mserial && (root > d->mroot || serial > d->mserial);
        if (!newer) {
            KEEL_LOG_W(MOD,
                       "%s %s passes the trust in force (root version %llu, revocation list "
                       "serial %llu) but stays revoked: that trust is not newer than the one "
                       "that revoked it (root version %llu, serial %llu)",
                       d->name, d->version, (unsigned long long)root, (unsigned long long)serial,
                       (unsigned long long)d->mroot, (unsigned long long)d->mserial);
            continue;
        }
        if (!(rc = mark_drop(s, d, err)) &&
            !(rc = journal(s, d->name, "unrevoke", d->version, "", err)))
            rc = change_add(ch, nch, d, false, err);
    }
    return rc;
}

int keel_store_recheck(keel_store *s, const keel_trust *trust, keel_revocation **ret, size_t *ret_n,
                       keel_error *err)
{
    uint64_t root = keel_trust_root_version(trust), serial = keel_trust_revocation_serial(trust);
    verdict *v = NULL;
    size_t n = 0, nch = 0;
    keel_revocation *ch = NULL;
    int rc;
    pthread_mutex_lock(&s->lock);
    if (!(rc = txn_begin(s, "re-checking installed packages", err))) {
        if (!(rc = verdicts_read(s, trust, &v, &n, err)))
            rc = verdicts_apply(s, v, n, root, serial, &ch, &nch, err);
        rc = txn_end(s, rc, "re-checking installed packages", err);
    }
    /* What serves must never name a revoked version: the names that changed
     * and were resolved before are resolved again before the lock is let go. */
    for (size_t i = 0; !rc && i < nch; i++) {
        keel_error e;
        bool resolved = false;
        KEEL_LOG_W(MOD, "%s %s (%s) %s%s", ch[i].name, ch[i].version, ch[i].digest,
                   ch[i].revoked ? "is revoked: " : "is no longer revoked", ch[i].reason);
        for (size_t k = 0; k < s->nserving; k++)
            resolved |= s->serving[k].valid && !strcmp(s->serving[k].s.name, ch[i].name);
        if (resolved && resolve_locked(s, ch[i].name, 0, NULL, &e))
            KEEL_LOG_E(MOD, "%s: %s", ch[i].name, e.msg);
    }
    pthread_mutex_unlock(&s->lock);
    free(v);
    if (rc) {
        free(ch);
        keel__err_prefix(err, "re-checking installed packages against the trust dir");
        return rc;
    }
    if (ret)
        *ret = ch;
    else
        free(ch);
    if (ret_n)
        *ret_n = nch;
    return KEEL_OK;
}

int keel_store_revoked(keel_store *s, const char *name, const char *version, bool *ret_revoked,
                       char *why, size_t n, keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = mark_get(s, name, version, ret_revoked, why, n, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int keel_store_version_manifest(keel_store *s, const char *name, const char *version, char **ret,
                                size_t *ret_len, keel_error *err)
{
    sqlite3_stmt *q = NULL;
    sqlite3_blob *b = NULL;
    char *copy = NULL;
    size_t len = 0;
    pthread_mutex_lock(&s->lock);
    /* length() of a BLOB reads no content; the bytes then go from the
     * overflow pages straight into the caller's buffer (sqlite3_blob_read),
     * not through a column value and a second copy: a 1 GiB package's
     * manifest is ~1 MiB, read at every model load. */
    int rc = keel__db_prepare(
        s->db, "SELECT rowid, length(manifest) FROM packages WHERE name=?1 AND version=?2", &q,
        err);
    if (rc)
        goto out;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, version, -1, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_ROW) {
        rc = keel__err(err, KEEL_ENOTFOUND, "%s %s is not installed", name, version);
        goto out;
    }
    sqlite3_int64 rowid = sqlite3_column_int64(q, 0);
    len = (size_t)sqlite3_column_int64(q, 1);
    if (!(copy = malloc(len + 1))) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory reading the manifest of %s %s", name,
                       version);
        goto out;
    }
    if (len &&
        (sqlite3_blob_open(s->db, "main", "packages", "manifest", rowid, 0, &b) != SQLITE_OK ||
         sqlite3_blob_read(b, copy, (int)len, 0) != SQLITE_OK)) {
        rc = keel__db_err(s->db, err, "reading a manifest");
        goto out;
    }
    copy[len] = 0;
out:
    sqlite3_blob_close(b);
    sqlite3_finalize(q);
    /* A big manifest (a chunk list per file) went through the page cache as
     * overflow pages, read once per load: give them back rather than keep
     * them resident while idle. */
    if (len > MANIFEST_CACHE_MAX)
        (void)sqlite3_db_release_memory(s->db);
    pthread_mutex_unlock(&s->lock);
    if (rc) {
        free(copy);
        return rc;
    }
    *ret = copy;
    *ret_len = len;
    return KEEL_OK;
}

static int file_path_locked(keel_store *s, const char *name, const char *ver, const char *path,
                            char *buf, size_t n, keel_error *err)
{
    sqlite3_stmt *q = NULL;
    int rc = keel__db_prepare(
        s->db, "SELECT sha256 FROM files WHERE name=?1 AND version=?2 AND path=?3", &q, err);
    if (rc)
        return rc;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ver, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, path, -1, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_ROW) {
        rc = keel__err(err, KEEL_ENOTFOUND, "%s %s has no file %s", name, ver, path);
    } else {
        char bp[PATH_MAX];
        blob_path(s, (const char *)sqlite3_column_text(q, 0), bp, sizeof(bp));
        if (keel__snprintf(buf, n, "%s", bp))
            rc = keel__err(err, KEEL_ETOOBIG, "buffer too small for %s", bp);
    }
    sqlite3_finalize(q);
    return rc;
}

int keel_store_version_file(keel_store *s, const char *name, const char *version, const char *path,
                            char *buf, size_t n, keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = file_path_locked(s, name, version, path, buf, n, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int keel_store_file_path(keel_store *s, const char *name, const char *path, char *buf, size_t n,
                         keel_error *err)
{
    char ver[KEEL_VERSION_MAX] = "";
    int rc;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nserving; i++)
        if (s->serving[i].valid && !strcmp(s->serving[i].s.name, name) &&
            s->serving[i].s.slot != KEEL_SLOT_NONE)
            keel__strlcpy(ver, s->serving[i].s.version, sizeof(ver));
    if (!ver[0])
        rc = keel__err(err, KEEL_ENOTREADY, "%s has no verified version to serve", name);
    else
        rc = file_path_locked(s, name, ver, path, buf, n, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* --- status ------------------------------------------------------------------------------ */

static cJSON *package_slots(keel_store *s, const char *name)
{
    cJSON *slots = cJSON_CreateObject();
    for (int i = 0; slots && i < KEEL_SLOT_COUNT; i++) {
        char ver[KEEL_VERSION_MAX];
        bool found;
        keel_error e;
        if (slot_get(s, name, (keel_slot)i, ver, &found, &e) == KEEL_OK && found)
            cJSON_AddStringToObject(slots, slot_names[i], ver);
        else
            cJSON_AddNullToObject(slots, slot_names[i]);
    }
    return slots;
}

/* [{"version", "digest", "reason", "since"}] of the name's revoked versions. */
static cJSON *package_revoked(keel_store *s, const char *name)
{
    cJSON *arr = cJSON_CreateArray();
    sqlite3_stmt *q;
    if (!arr || sqlite3_prepare_v2(s->db,
                                   "SELECT version, digest, reason, at FROM revoked WHERE name=?1 "
                                   "ORDER BY at, version",
                                   -1, &q, NULL) != SQLITE_OK)
        return arr;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    while (sqlite3_step(q) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        char when[32];
        if (!o)
            break;
        cJSON_AddStringToObject(o, "version", (const char *)sqlite3_column_text(q, 0));
        cJSON_AddStringToObject(o, "digest", (const char *)sqlite3_column_text(q, 1));
        cJSON_AddStringToObject(o, "reason", (const char *)sqlite3_column_text(q, 2));
        keel__format_rfc3339(sqlite3_column_int64(q, 3), when, sizeof(when));
        cJSON_AddStringToObject(o, "since", when);
        cJSON_AddItemToArray(arr, o);
    }
    sqlite3_finalize(q);
    return arr;
}

static int finish_json(cJSON *root, char **ret_json, keel_error *err)
{
    *ret_json = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return *ret_json ? KEEL_OK : keel__err(err, KEEL_ENOMEM, "out of memory");
}

int keel_store_status_json(keel_store *s, char **ret_json, keel_error *err)
{
    sqlite3_stmt *q;
    cJSON *root = cJSON_CreateObject(), *pkgs = cJSON_AddArrayToObject(root, "packages");
    int rc;
    pthread_mutex_lock(&s->lock);
    rc = keel__db_prepare(s->db, "SELECT DISTINCT name FROM slots ORDER BY name", &q, err);
    while (!rc && sqlite3_step(q) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(q, 0);
        char hw[KEEL_VERSION_MAX];
        bool found;
        cJSON *p = cJSON_CreateObject();
        if (!p)
            break;
        cJSON_AddStringToObject(p, "name", name);
        cJSON_AddItemToObject(p, "slots", package_slots(s, name));
        cJSON_AddItemToObject(p, "revoked", package_revoked(s, name));
        if (get_text(s, "SELECT version FROM highwater WHERE name=?1", name, NULL, hw, sizeof(hw),
                     &found, err) == KEEL_OK &&
            found)
            cJSON_AddStringToObject(p, "highest_activated", hw);
        for (size_t i = 0; i < s->nserving; i++) {
            const keel_serving *sv = &s->serving[i].s;
            if (!s->serving[i].valid || strcmp(sv->name, name))
                continue;
            cJSON *o = cJSON_AddObjectToObject(p, "serving");
            if (!o)
                break;
            if (sv->slot == KEEL_SLOT_NONE) {
                cJSON_AddNullToObject(o, "version");
            } else {
                cJSON_AddStringToObject(o, "version", sv->version);
                cJSON_AddStringToObject(o, "digest", sv->digest);
            }
            cJSON_AddStringToObject(o, "slot", keel_slot_name(sv->slot));
            cJSON_AddBoolToObject(o, "verified", sv->slot != KEEL_SLOT_NONE);
            cJSON_AddBoolToObject(o, "degraded", sv->degraded);
            cJSON_AddStringToObject(o, "reason", sv->reason);
        }
        cJSON_AddItemToArray(pkgs, p);
    }
    sqlite3_finalize(q);
    pthread_mutex_unlock(&s->lock);
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    return finish_json(root, ret_json, err);
}

int keel_store_list_json(keel_store *s, char **ret_json, keel_error *err)
{
    sqlite3_stmt *q;
    cJSON *root = cJSON_CreateObject(), *pkgs = cJSON_AddArrayToObject(root, "packages");
    int rc;
    pthread_mutex_lock(&s->lock);
    rc = keel__db_prepare(s->db,
                          "SELECT p.name, p.version, p.digest, p.bytes, p.installed_at, "
                          "(SELECT group_concat(slot) FROM slots s WHERE s.name=p.name AND "
                          "s.version=p.version), (SELECT reason FROM revoked r WHERE "
                          "r.name=p.name AND r.version=p.version) FROM packages p "
                          "ORDER BY p.name, p.installed_at",
                          &q, err);
    while (!rc && sqlite3_step(q) == SQLITE_ROW) {
        cJSON *p = cJSON_CreateObject(), *slots;
        char when[32];
        if (!p)
            break;
        cJSON_AddStringToObject(p, "name", (const char *)sqlite3_column_text(q, 0));
        cJSON_AddStringToObject(p, "version", (const char *)sqlite3_column_text(q, 1));
        cJSON_AddStringToObject(p, "digest", (const char *)sqlite3_column_text(q, 2));
        cJSON_AddNumberToObject(p, "bytes", (double)sqlite3_column_int64(q, 3));
        keel__format_rfc3339(sqlite3_column_int64(q, 4), when, sizeof(when));
        cJSON_AddStringToObject(p, "installed", when);
        slots = cJSON_AddArrayToObject(p, "slots");
        const char *sl = (const char *)sqlite3_column_text(q, 5);
        while (slots && sl && *sl) {
            size_t l = strcspn(sl, ",");
            char one[32];
            snprintf(one, sizeof(one), "%.*s", (int)l, sl);
            cJSON_AddItemToArray(slots, cJSON_CreateString(one));
            sl += l + (sl[l] == ',');
        }
        const char *rev = (const char *)sqlite3_column_text(q, 6);
        cJSON_AddBoolToObject(p, "revoked", rev != NULL);
        if (rev)
            cJSON_AddStringToObject(p, "revoked_reason", rev);
        cJSON_AddItemToArray(pkgs, p);
    }
    sqlite3_finalize(q);
    pthread_mutex_unlock(&s->lock);
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    return finish_json(root, ret_json, err);
}

/* --- garbage collection -------------------------------------------------------------- */

int keel_store_gc(keel_store *s, uint64_t *ret_freed_bytes, keel_error *err)
{
    sqlite3_stmt *q = NULL;
    uint64_t freed = 0;
    int rc;
    pthread_mutex_lock(&s->lock);
    /* A blob renamed into place by an install not yet recorded looks
     * unreferenced: gc runs only when no install can be running, here or in
     * another process holding the store open. */
    if (s->installs || flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
        /* a failed conversion drops our shared lock: take it back */
        if (!s->installs && flock(s->lockfd, LOCK_SH) != 0)
            KEEL_LOG_W(MOD, "cannot return to a shared store lock");
        rc = keel__err(err, KEEL_EBUSY,
                       "the store is in use (an install here, or another process such as "
                       "keeld has it open); stop it or try again later");
        goto out;
    }
    /* Versions in no slot go first (one transaction), then unreferenced blobs. */
    if (!(rc = txn_begin(s, "garbage collection", err)))
        rc = txn_end(s,
                     keel__db_exec(s->db,
                                   "DELETE FROM files WHERE NOT EXISTS (SELECT 1 FROM slots s "
                                   "WHERE s.name=files.name AND s.version=files.version);"
                                   "DELETE FROM packages WHERE NOT EXISTS (SELECT 1 FROM slots s "
                                   "WHERE s.name=packages.name AND s.version=packages.version);"
                                   "DELETE FROM revoked WHERE NOT EXISTS (SELECT 1 FROM packages "
                                   "p WHERE p.name=revoked.name AND p.version=revoked.version);",
                                   "dropping unused versions", err),
                     "garbage collection", err);
    if (rc)
        goto out_unlock;
    char top[PATH_MAX];
    (void)keel_state_path(s->dir, KEEL_STATE_BLOBS, top, sizeof(top));
    if ((rc = keel__db_prepare(s->db, "SELECT 1 FROM files WHERE sha256=?1 LIMIT 1", &q, err)))
        goto out_unlock;
    for (int hi = 0; hi < 256; hi++) {
        char sub[PATH_MAX];
        snprintf(sub, sizeof(sub), "%s/%02x", top, hi);
        DIR *d = opendir(sub);
        struct dirent *de;
        if (!d)
            continue;
        while ((de = readdir(d))) {
            if (strlen(de->d_name) != 64)
                continue;
            sqlite3_reset(q);
            sqlite3_bind_text(q, 1, de->d_name, -1, SQLITE_TRANSIENT);
            if (sqlite3_step(q) == SQLITE_ROW)
                continue;
            char bp[PATH_MAX];
            struct stat st;
            snprintf(bp, sizeof(bp), "%s/%s", sub, de->d_name);
            if (stat(bp, &st) == 0 && unlink(bp) == 0) {
                freed += (uint64_t)st.st_size;
                stamp_drop(s, de->d_name);
            }
        }
        closedir(d);
    }
    KEEL_LOG_I(MOD, "garbage collection freed %llu bytes", (unsigned long long)freed);
    if (ret_freed_bytes)
        *ret_freed_bytes = freed;
out_unlock:
    if (flock(s->lockfd, LOCK_SH) != 0)
        KEEL_LOG_W(MOD, "cannot return to a shared store lock");
out:
    sqlite3_finalize(q);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* --- deep check (tests) ------------------------------------------------------------------ */

static int check_locked(keel_store *s, keel_error *err)
{
    sqlite3_stmt *st = NULL;
    char path[PATH_MAX];
    int rc, r;
    if (!sqlite3_get_autocommit(s->db))
        return keel__err(err, KEEL_ECORRUPT, "%s/keel.db: a transaction is left open", s->dir);
    /* Invariant 4: slots name recorded versions. */
    if ((rc = keel__db_prepare(s->db,
                               "SELECT name, slot, version FROM slots s WHERE slot NOT IN "
                               "('active', 'previous', 'known_good', 'staged') OR NOT EXISTS "
                               "(SELECT 1 FROM packages p WHERE p.name=s.name AND "
                               "p.version=s.version)",
                               &st, err)))
        return rc;
    if ((r = sqlite3_step(st)) == SQLITE_ROW)
        rc = keel__err(err, KEEL_ECORRUPT, "slot %s of %s names %s, which is not recorded",
                       sqlite3_column_text(st, 1), sqlite3_column_text(st, 0),
                       sqlite3_column_text(st, 2));
    else if (r != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "checking slots");
    sqlite3_finalize(st);
    if (rc)
        return rc;
    /* Invariant 8: revocation marks name recorded versions, and what serves
     * is never marked. */
    if ((rc = keel__db_prepare(s->db,
                               "SELECT name, version FROM revoked r WHERE NOT EXISTS (SELECT 1 "
                               "FROM packages p WHERE p.name=r.name AND p.version=r.version)",
                               &st, err)))
        return rc;
    if ((r = sqlite3_step(st)) == SQLITE_ROW)
        rc = keel__err(err, KEEL_ECORRUPT, "%s %s is marked revoked but not recorded",
                       sqlite3_column_text(st, 0), sqlite3_column_text(st, 1));
    else if (r != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "checking revocation marks");
    sqlite3_finalize(st);
    for (size_t i = 0; !rc && i < s->nserving; i++) {
        const keel_serving *sv = &s->serving[i].s;
        bool revoked = false;
        if (!s->serving[i].valid || sv->slot == KEEL_SLOT_NONE)
            continue;
        if (!(rc = mark_get(s, sv->name, sv->version, &revoked, NULL, 0, err)) && revoked)
            rc = keel__err(err, KEEL_ECORRUPT, "%s serves %s, which is revoked", sv->name,
                           sv->version);
    }
    if (rc)
        return rc;
    /* Invariant 2: rows never run ahead of blobs. */
    if ((rc = keel__db_prepare(s->db, "SELECT name, version, path, sha256, size FROM files", &st,
                               err)))
        return rc;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        struct stat sb;
        blob_path(s, (const char *)sqlite3_column_text(st, 3), path, sizeof(path));
        if (stat(path, &sb) != 0 || (uint64_t)sb.st_size != (uint64_t)sqlite3_column_int64(st, 4))
            rc = keel__err(err, KEEL_ECORRUPT,
                           "%s %s: %s is recorded but its blob %s is missing or of another size",
                           sqlite3_column_text(st, 0), sqlite3_column_text(st, 1),
                           sqlite3_column_text(st, 2), path);
    }
    if (!rc && r != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "checking files");
    sqlite3_finalize(st);
    if (rc)
        return rc;
    /* Invariants 5 and 6: active is at most the high-water mark and was put
     * there by the last activate or rollback in the journal. */
    if ((rc = keel__db_prepare(
             s->db,
             "SELECT s.name, s.version, (SELECT version FROM highwater h WHERE h.name=s.name), "
             "(SELECT version FROM journal j WHERE j.name=s.name AND j.action IN "
             "('activate', 'rollback') ORDER BY id DESC LIMIT 1) FROM slots s WHERE "
             "s.slot='active'",
             &st, err)))
        return rc;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *ver = (const char *)sqlite3_column_text(st, 1);
        const char *hw = (const char *)sqlite3_column_text(st, 2);
        const char *last = (const char *)sqlite3_column_text(st, 3);
        if (!hw || keel_semver_cmp(ver, hw) > 0)
            rc = keel__err(err, KEEL_ECORRUPT, "%s: active %s is above the high-water mark %s",
                           name, ver, hw ? hw : "(none)");
        else if (!last || strcmp(last, ver))
            rc = keel__err(err, KEEL_ECORRUPT,
                           "%s: active is %s but the journal's last activation names %s", name, ver,
                           last ? last : "nothing");
    }
    if (!rc && r != SQLITE_DONE)
        rc = keel__db_err(s->db, err, "checking the active slots");
    sqlite3_finalize(st);
    if (rc || s->installs)
        return rc;
    snprintf(path, sizeof(path), "%s/staging/blobs", s->dir);
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && !rc && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            rc = keel__err(err, KEEL_ECORRUPT, "%s/%s is left over with no install running", path,
                           de->d_name);
    if (d)
        closedir(d);
    return rc;
}

int keel__store_check(keel_store *s, keel_error *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = check_locked(s, err);
    pthread_mutex_unlock(&s->lock);
    return rc;
}
