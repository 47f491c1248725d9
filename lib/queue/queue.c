/*
 * queue.c - the durable priority queue of store-and-forward: its SQLite
 * database (WAL, synchronous=FULL, exclusive locking), the eviction policy,
 * and group commit. Promises and invariants: docs/internals/queue.md.
 *
 * Locks: db_mu serializes every use of the connection and the in-memory
 * counters; mu guards the group-commit pending list. The committer takes mu,
 * then (after letting it go) db_mu; nothing takes mu while holding db_mu.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "core/core.h"
#include "keel/queue.h"
#include "queue/check.h"

#define MOD "queue"

#define SCHEMA_VERSION       1
#define QUEUE_APPLICATION_ID 1262834005 /* 0x4b455155, "KEQU": the SQLite header says queue */
#define QUEUE_STR_(x)        #x
#define QUEUE_STR(x)         QUEUE_STR_(x)
#define BATCH_MAX_MSGS       1024                /* one group-commit transaction at most */
#define BATCH_MAX_BYTES      (64u * 1024 * 1024) /* ... unless one message alone is larger */

/*
 * One table per priority class, rowid = message id. A message is one row in
 * one B-tree: an enqueue dirties one page (plus the overflow pages of a large
 * payload) and a commit appends one WAL frame. A single table with a
 * (prio, id) index wrote two, measured 5 % slower in sync mode, and doubled
 * the bytes written to flash per small message.
 */
static const char *const class_tables[KEEL_PRIO_COUNT] = {"msgs_critical", "msgs_high",
                                                          "msgs_normal", "msgs_bulk"};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS idem(key TEXT PRIMARY KEY, id INTEGER NOT NULL,"
    "  prio INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema', 1);";

/* Per class: '@' stands for the class's table. */
static const char class_schema[] =
    "CREATE TABLE IF NOT EXISTS @(id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
    "  expires_at INTEGER, size INTEGER NOT NULL, topic TEXT NOT NULL, ctype TEXT NOT NULL,"
    "  idem TEXT, payload BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS @_expiry ON @(expires_at) WHERE expires_at IS NOT NULL;";

/* Prepared once at open. */
enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_IDEM_GET,
    ST_IDEM_PUT,
    ST_IDEM_DEL,
    ST_META_PUT,
    ST_COUNT,
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_IDEM_GET] = "SELECT id, prio, at FROM idem WHERE key = ?1",
    [ST_IDEM_PUT] = "INSERT OR REPLACE INTO idem(key, id, prio, at) VALUES(?1, ?2, ?3, ?4)",
    [ST_IDEM_DEL] = "DELETE FROM idem WHERE key = ?1 AND id = ?2",
    [ST_META_PUT] = "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
};

/* Prepared once per class at open. */
enum {
    CS_INSERT,
    CS_GET,
    CS_DEL,
    CS_SCAN,
    CS_OLDEST,
    CS_EXPIRED_SUM,
    CS_EXPIRED_IDEM_DEL,
    CS_EXPIRED_DEL,
    CS_EVICT_IDEM_DEL,
    CS_EVICT_DEL,
    CS_PEEK,
    CS_COUNT,
};

static const char *const class_sql[CS_COUNT] = {
    [CS_INSERT] = "INSERT INTO @(id, created_at, expires_at, size, topic, ctype, idem, payload)"
                  " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [CS_GET] = "SELECT size, idem FROM @ WHERE id = ?1",
    [CS_DEL] = "DELETE FROM @ WHERE id = ?1",
    [CS_SCAN] = "SELECT id, size FROM @ ORDER BY id",
    [CS_OLDEST] = "SELECT created_at FROM @ ORDER BY id LIMIT 1",
    [CS_EXPIRED_SUM] = "SELECT count(*), sum(size) FROM @ INDEXED BY @_expiry"
                       " WHERE expires_at <= ?1",
    [CS_EXPIRED_IDEM_DEL] = "DELETE FROM idem WHERE key IN (SELECT idem FROM @ INDEXED BY @_expiry"
                            " WHERE expires_at <= ?1 AND idem IS NOT NULL)",
    [CS_EXPIRED_DEL] = "DELETE FROM @ WHERE expires_at <= ?1",
    [CS_EVICT_IDEM_DEL] = "DELETE FROM idem WHERE key IN (SELECT idem FROM @"
                          " WHERE id <= ?1 AND idem IS NOT NULL)",
    [CS_EVICT_DEL] = "DELETE FROM @ WHERE id <= ?1",
    [CS_PEEK] = "SELECT id, created_at, expires_at, topic, ctype, idem, payload FROM @"
                " WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY id LIMIT ?2",
};

static const char *const prio_names[KEEL_PRIO_COUNT] = {"critical", "high", "normal", "bulk"};

/* What the database holds, kept in memory so that limits cost no query.
 * Loaded at open; changed only inside transactions, restored on rollback. */
typedef struct counters {
    uint64_t depth[KEEL_PRIO_COUNT];
    uint64_t bytes[KEEL_PRIO_COUNT];
    uint64_t evicted[KEEL_PRIO_COUNT]; /* persisted in meta */
    uint64_t expired;                  /* persisted in meta */
    uint64_t next_id;                  /* > every id ever used (meta id_floor + rows) */
    bool dirty;                        /* evicted/expired/id_floor changed: save in meta */
} counters;

/* One enqueue on its way through the committer (lives on the producer's stack). */
typedef struct req {
    struct req *next;
    const keel_msg_in *m;
    const char *ctype;
    size_t topic_len, ctype_len, key_len;
    uint64_t size; /* accounted bytes */
    uint64_t id;
    int rc;
    sem_t done;      /* posted by the committer when rc and id are final */
    keel_error *err; /* the producer's; may be NULL */
    /* keel_queue_enqueue_async: called instead of posting done; the req,
     * its copy of the message and aerr are one allocation, freed after. */
    keel_queue_done_fn cb;
    void *cb_ctx;
    keel_error aerr;
    keel_msg_in mcopy;
} req;

struct keel_queue {
    pthread_mutex_t db_mu;
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    sqlite3_stmt *cs[KEEL_PRIO_COUNT][CS_COUNT];
    bool loaded;  /* the counters match the rows: a snapshot may be saved at close */
    bool suspect; /* a transaction failed: do not trust the counters for a snapshot */
    char path[PATH_MAX];
    char dir[PATH_MAX];
    keel_queue_opts o;
    /* under db_mu */
    counters c;
    int64_t disk_room; /* during a write: bytes the queue may still grow by on disk */
    uint64_t refused[KEEL_PRIO_COUNT];
    uint64_t enqueued, commits;
    int64_t last_sync;
    /* meta.clean is 1 on disk: the snapshot of the last clean close still
     * holds, because nothing changed since. The first transaction that
     * changes a row sets it to 0 (in that transaction). */
    bool snap_on_disk;
    int64_t tx_changes;                     /* sqlite3_total_changes64 at tx_begin */
    uint64_t evict_logged[KEEL_PRIO_COUNT]; /* monotonic ns of the last eviction warning */
    /* group commit, under mu */
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* producer -> committer (CLOCK_MONOTONIC) */
    req *head, **tail;
    size_t npending;
    size_t last_batch;
    size_t wake_at;         /* signal the committer when npending reaches this */
    bool committer_waiting; /* it sleeps on work_cv */
    bool stop;
    bool committer_running;
    pthread_t committer;
};

/* --- small helpers ---------------------------------------------------------- */

const char *keel_prio_name(keel_prio p)
{
    return p >= 0 && p < KEEL_PRIO_COUNT ? prio_names[p] : "unknown";
}

int keel_prio_parse(const char *s, size_t len, keel_prio *ret, keel_error *err)
{
    for (int i = 0; i < KEEL_PRIO_COUNT; i++) {
        if (s && strlen(prio_names[i]) == len && memcmp(prio_names[i], s, len) == 0) {
            *ret = (keel_prio)i;
            return KEEL_OK;
        }
    }
    return keel__err(err, KEEL_EINVALID,
                     "unknown priority class \"%.*s\" (expected critical, high, normal or bulk)",
                     (int)(len > 64 ? 64 : len), s ? s : "");
}

const char *keel_queue_durability_name(keel_queue_durability d)
{
    return d == KEEL_QUEUE_SYNC ? "sync" : d == KEEL_QUEUE_GROUP ? "group" : "unknown";
}

void keel_queue_opts_default(keel_queue_opts *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->durability = KEEL_QUEUE_GROUP;
    ret->group_window_us = 1000;
    ret->max_bytes = 256u * 1024 * 1024;
    ret->max_rows = 1000000;
    ret->min_free_disk = 64u * 1024 * 1024;
    ret->max_payload = KEEL_QUEUE_PAYLOAD_DEFAULT;
    ret->idem_retention_s = 3600;
}

static int64_t now_s(const keel_queue *q)
{
    return q->o.clock ? q->o.clock(q->o.clock_ctx) : keel__now_wall_s();
}

static int db_err(keel_queue *q, keel_error *err, const char *what)
{
    int code = sqlite3_errcode(q->db);
    int kc = KEEL_EIO;
    const char *hint = "";
    if (code == SQLITE_BUSY || code == SQLITE_LOCKED) {
        kc = KEEL_EBUSY;
        hint = " (another process has the queue open; one owner at a time)";
    } else if (code == SQLITE_FULL) {
        kc = KEEL_ENOSPACE;
        hint = " (the disk is full)";
    } else if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) {
        kc = KEEL_ECORRUPT;
        hint = " (move the file away to start an empty queue)";
    } else if (code == SQLITE_CONSTRAINT) {
        kc = KEEL_ECONFLICT;
    } else if (code == SQLITE_NOMEM) {
        kc = KEEL_ENOMEM;
    } else if (code == SQLITE_READONLY || code == SQLITE_PERM || code == SQLITE_CANTOPEN) {
        kc = KEEL_EPERM;
    }
    return keel__err(err, kc, "queue database %s: %s: %s%s", q->path, what, sqlite3_errmsg(q->db),
                     hint);
}

static int exec(keel_queue *q, const char *sql, const char *what, keel_error *err)
{
    if (sqlite3_exec(q->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return db_err(q, err, what);
    return KEEL_OK;
}

/* Steps a statement that returns no rows and resets it. */
static int step_done(keel_queue *q, sqlite3_stmt *st, const char *what, keel_error *err)
{
    int r = sqlite3_step(st);
    int rc = r == SQLITE_DONE ? KEEL_OK : db_err(q, err, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static sqlite3_stmt *stmt(keel_queue *q, int which)
{
    sqlite3_reset(q->st[which]);
    sqlite3_clear_bindings(q->st[which]);
    return q->st[which];
}

static sqlite3_stmt *cstmt(keel_queue *q, int p, int which)
{
    sqlite3_reset(q->cs[p][which]);
    sqlite3_clear_bindings(q->cs[p][which]);
    return q->cs[p][which];
}

/* Writes tmpl into out with every '@' replaced by the class's table name. */
static void expand(const char *tmpl, int p, char *out, size_t n)
{
    size_t o = 0;
    for (const char *c = tmpl; *c && o + 1 < n; c++) {
        if (*c == '@')
            o += keel__strlcpy(out + o, class_tables[p], n - o);
        else
            out[o++] = *c;
        if (o >= n)
            o = n - 1;
    }
    out[o] = '\0';
}

static uint64_t col_u64(sqlite3_stmt *st, int i)
{
    sqlite3_int64 v = sqlite3_column_int64(st, i);
    return v > 0 ? (uint64_t)v : 0;
}

static sqlite3_int64 i64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)v;
}

static uint64_t sum(const uint64_t v[KEEL_PRIO_COUNT])
{
    return v[0] + v[1] + v[2] + v[3];
}

static int meta_put(keel_queue *q, const char *key, uint64_t value, keel_error *err)
{
    sqlite3_stmt *st = stmt(q, ST_META_PUT);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, i64(value));
    return step_done(q, st, "saving counters", err);
}

/* Saves the persisted counters; called inside a transaction that deleted rows. */
static int save_counters(keel_queue *q, keel_error *err)
{
    static const char *const keys[KEEL_PRIO_COUNT] = {"evicted.critical", "evicted.high",
                                                      "evicted.normal", "evicted.bulk"};
    int rc;
    if (!q->c.dirty)
        return KEEL_OK;
    /* Ids are never reused: the highest id handed out is kept even when its
     * row is gone. */
    if ((rc = meta_put(q, "id_floor", q->c.next_id - 1, err)) ||
        (rc = meta_put(q, "expired", q->c.expired, err)))
        return rc;
    for (int i = 0; i < KEEL_PRIO_COUNT; i++)
        if ((rc = meta_put(q, keys[i], q->c.evicted[i], err)))
            return rc;
    q->c.dirty = false;
    return KEEL_OK;
}

/* --- transactions --------------------------------------------------------------- */

static int tx_begin(keel_queue *q, counters *saved, keel_error *err)
{
    KEEL_ASSERT(sqlite3_get_autocommit(q->db), "%s: a transaction is already open", q->path);
    *saved = q->c;
    q->tx_changes = sqlite3_total_changes64(q->db);
    return step_done(q, stmt(q, ST_BEGIN), "beginning a transaction", err);
}

/* A transaction that changed nothing (an expiry pass with nothing due)
 * commits nothing: no WAL frame, no fsync, and the snapshot stays valid. */
static int tx_commit(keel_queue *q, keel_error *err)
{
    int rc = save_counters(q, err);
    bool unclean = !rc && q->snap_on_disk && sqlite3_total_changes64(q->db) != q->tx_changes;
    if (unclean)
        rc = meta_put(q, "clean", 0, err);
    if (!rc)
        rc = step_done(q, stmt(q, ST_COMMIT), "committing", err);
    if (!rc && unclean)
        q->snap_on_disk = false;
    return rc;
}

static void tx_rollback(keel_queue *q, const counters *saved)
{
    if (!sqlite3_get_autocommit(q->db)) {
        keel_error e;
        if (step_done(q, stmt(q, ST_ROLLBACK), "rolling back", &e))
            KEEL_LOG_W(MOD, "%s", e.msg);
    }
    KEEL_ASSERT(sqlite3_get_autocommit(q->db), "%s: rollback left the transaction open", q->path);
    q->c = *saved;
    q->suspect = true;
}

/* --- removing ------------------------------------------------------------------- */

/* Removes every message expired at now; *ret_n: how many. In a transaction. */
static int remove_expired(keel_queue *q, int64_t now, uint64_t *ret_n, keel_error *err)
{
    int rc = KEEL_OK;
    *ret_n = 0;
    for (int p = 0; p < KEEL_PRIO_COUNT && !rc; p++) {
        uint64_t n = 0, b = 0;
        sqlite3_stmt *st = cstmt(q, p, CS_EXPIRED_SUM);
        sqlite3_bind_int64(st, 1, now);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            n = col_u64(st, 0);
            b = col_u64(st, 1);
        } else {
            rc = db_err(q, err, "counting expired messages");
        }
        sqlite3_reset(st);
        if (rc || n == 0)
            continue;
        if (q->o.idem_retention_s == 0) {
            st = cstmt(q, p, CS_EXPIRED_IDEM_DEL);
            sqlite3_bind_int64(st, 1, now);
            if ((rc = step_done(q, st, "forgetting keys of expired messages", err)))
                break;
        }
        st = cstmt(q, p, CS_EXPIRED_DEL);
        sqlite3_bind_int64(st, 1, now);
        if ((rc = step_done(q, st, "removing expired messages", err)))
            break;
        KEEL_ASSERT(q->c.depth[p] >= n && q->c.bytes[p] >= b,
                    "%s: expiring %" PRIu64 " rows/%" PRIu64 " bytes of %s, counted %" PRIu64
                    "/%" PRIu64,
                    q->path, n, b, prio_names[p], q->c.depth[p], q->c.bytes[p]);
        q->c.depth[p] -= n;
        q->c.bytes[p] -= b;
        q->c.expired += n;
        q->c.dirty = true;
        q->disk_room += i64(b);
        *ret_n += n;
    }
    return rc;
}

/* Would a message of need bytes fit after freeing rows/bytes more? */
typedef enum { FIT_OK, FIT_ROWS, FIT_BYTES, FIT_DISK } fit;

static fit fits_after(const keel_queue *q, uint64_t need, uint64_t freed_rows, uint64_t freed_bytes)
{
    uint64_t rows = sum(q->c.depth) - freed_rows, bytes = sum(q->c.bytes) - freed_bytes;
    if (q->o.max_rows && rows + 1 > q->o.max_rows)
        return FIT_ROWS;
    if (q->o.max_bytes && bytes + need > q->o.max_bytes)
        return FIT_BYTES;
    if (q->o.min_free_disk && (int64_t)need > q->disk_room + i64(freed_bytes))
        return FIT_DISK;
    return FIT_OK;
}

/* Evicts the oldest messages of class p until need fits (or the class is
 * empty). In a transaction. */
static int evict_class(keel_queue *q, keel_prio p, uint64_t need, keel_error *err)
{
    uint64_t rows = 0, bytes = 0, last = 0;
    sqlite3_stmt *st = cstmt(q, (int)p, CS_SCAN);
    int r = SQLITE_DONE, rc = KEEL_OK;
    while (fits_after(q, need, rows, bytes) != FIT_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        last = col_u64(st, 0);
        bytes += col_u64(st, 1);
        rows++;
    }
    if (fits_after(q, need, rows, bytes) != FIT_OK && r != SQLITE_DONE)
        rc = db_err(q, err, "finding messages to evict");
    sqlite3_reset(st);
    if (rc || rows == 0)
        return rc;
    if (q->o.idem_retention_s == 0) {
        st = cstmt(q, (int)p, CS_EVICT_IDEM_DEL);
        sqlite3_bind_int64(st, 1, i64(last));
        if ((rc = step_done(q, st, "forgetting keys of evicted messages", err)))
            return rc;
    }
    st = cstmt(q, (int)p, CS_EVICT_DEL);
    sqlite3_bind_int64(st, 1, i64(last));
    if ((rc = step_done(q, st, "evicting messages", err)))
        return rc;
    KEEL_ASSERT(p >= KEEL_PRIO_NORMAL, "%s: evicting %s messages", q->path, prio_names[p]);
    KEEL_ASSERT(q->c.depth[p] >= rows && q->c.bytes[p] >= bytes,
                "%s: evicting %" PRIu64 " rows/%" PRIu64 " bytes of %s, counted %" PRIu64
                "/%" PRIu64,
                q->path, rows, bytes, prio_names[p], q->c.depth[p], q->c.bytes[p]);
    q->c.depth[p] -= rows;
    q->c.bytes[p] -= bytes;
    q->c.evicted[p] += rows;
    q->c.dirty = true;
    q->disk_room += i64(bytes);
    /* Evicting is data loss: it is counted (keel_queue_stats_get), and the
     * owner says so (keeld's runtime logs it, once a minute at most); here
     * only a debug line, at most once a minute per class. */
    uint64_t t = keel__now_mono_ns();
    if (q->evict_logged[p] == 0 || t - q->evict_logged[p] > 60ull * 1000000000) {
        KEEL_LOG_D(MOD,
                   "queue full: evicted %" PRIu64 " %s message(s) (%" PRIu64 " bytes); %" PRIu64
                   " %s evicted since the database was created",
                   rows, prio_names[p], bytes, q->c.evicted[p], prio_names[p]);
        q->evict_logged[p] = t;
    }
    return KEEL_OK;
}

/*
 * Makes room for a message of class p and need bytes: expired messages
 * first, then bulk, then normal, oldest first; never critical or high, and
 * never a class above p. Refuses (KEEL_ENOSPACE in r->rc, nothing evicted)
 * when even evicting everything allowed would not be enough.
 */
static int make_room(keel_queue *q, req *r, int64_t now, bool *ret_ok, keel_error *err)
{
    keel_prio p = r->m->prio;
    uint64_t n, ev_rows = 0, ev_bytes = 0, kept = 0;
    fit f;
    int rc;
    *ret_ok = true;
    if (fits_after(q, r->size, 0, 0) == FIT_OK)
        return KEEL_OK;
    if ((rc = remove_expired(q, now, &n, err)))
        return rc;
    if (fits_after(q, r->size, 0, 0) == FIT_OK)
        return KEEL_OK;
    uint64_t evicted_before = sum(q->c.evicted);
    KEEL_UNUSED(evicted_before);
    /* Bulk may evict older bulk; normal, high and critical evict bulk then normal. */
    keel_prio lowest_kept = p == KEEL_PRIO_BULK ? KEEL_PRIO_NORMAL : KEEL_PRIO_HIGH;
    for (int i = 0; i < KEEL_PRIO_COUNT; i++) {
        if (i > (int)lowest_kept) {
            ev_rows += q->c.depth[i];
            ev_bytes += q->c.bytes[i];
        } else {
            kept += q->c.bytes[i];
        }
    }
    f = fits_after(q, r->size, ev_rows, ev_bytes);
    if (f != FIT_OK) {
        char limit[PATH_MAX + 128];
        if (f == FIT_ROWS)
            snprintf(limit, sizeof(limit), "max_rows %" PRIu64, q->o.max_rows);
        else if (f == FIT_BYTES)
            snprintf(limit, sizeof(limit), "max_bytes %" PRIu64, q->o.max_bytes);
        else
            snprintf(limit, sizeof(limit), "min_free_disk %" PRIu64 " on %s", q->o.min_free_disk,
                     q->dir);
        KEEL_ASSERT(sum(q->c.evicted) == evicted_before, "%s: a refusal evicted messages", q->path);
        q->refused[p]++;
        *ret_ok = false;
        r->rc = keel__err(r->err, KEEL_ENOSPACE,
                          "queue full: %" PRIu64 " bytes of %s messages waiting; not evicting "
                          "them%s%s%s (limit: %s; delivering or acking messages makes room)",
                          kept, p == KEEL_PRIO_BULK ? "critical/high/normal" : "critical/high",
                          p >= KEEL_PRIO_NORMAL ? " for a " : "",
                          p >= KEEL_PRIO_NORMAL ? prio_names[p] : "",
                          p >= KEEL_PRIO_NORMAL ? " message" : "", limit);
        return KEEL_OK;
    }
    for (int i = KEEL_PRIO_BULK; i > (int)lowest_kept; i--) {
        if (fits_after(q, r->size, 0, 0) == FIT_OK)
            break;
        if ((rc = evict_class(q, (keel_prio)i, r->size, err)))
            return rc;
    }
    return KEEL_OK;
}

/* --- enqueue ------------------------------------------------------------------------- */

static bool bad_chars(const char *s, size_t len, bool mqtt)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f || (mqtt && (ch == '+' || ch == '#')))
            return true;
    }
    return false;
}

/* Checks m against the limits and fills the lengths of r. Touches no shared state. */
static int validate(const keel_queue *q, const keel_msg_in *m, req *r, keel_error *err)
{
    if (!m)
        return keel__err(err, KEEL_EINVALID, "enqueue: no message given");
    if (!m->topic || !m->topic[0])
        return keel__err(err, KEEL_EINVALID, "enqueue: the message topic is empty");
    r->topic_len = strnlen(m->topic, KEEL_QUEUE_TOPIC_MAX + 1);
    if (r->topic_len > KEEL_QUEUE_TOPIC_MAX)
        return keel__err(err, KEEL_EINVALID, "enqueue: topic \"%.40s...\" is longer than %u bytes",
                         m->topic, KEEL_QUEUE_TOPIC_MAX);
    if (bad_chars(m->topic, r->topic_len, true))
        return keel__err(err, KEEL_EINVALID,
                         "enqueue: topic \"%.64s\" contains a control character or an MQTT "
                         "wildcard ('+', '#')",
                         m->topic);
    if ((int)m->prio < 0 || m->prio >= KEEL_PRIO_COUNT)
        return keel__err(err, KEEL_EINVALID,
                         "enqueue: unknown priority class %d (expected critical, high, normal or "
                         "bulk)",
                         (int)m->prio);
    if (!m->payload && m->payload_len)
        return keel__err(err, KEEL_EINVALID, "enqueue: payload_len is %zu but payload is NULL",
                         m->payload_len);
    if (m->payload_len > q->o.max_payload)
        return keel__err(err, KEEL_ETOOBIG,
                         "enqueue: payload is %zu bytes; this queue accepts at most %" PRIu64
                         " (max_payload)",
                         m->payload_len, q->o.max_payload);
    r->ctype = m->content_type ? m->content_type : "application/octet-stream";
    r->ctype_len = strnlen(r->ctype, KEEL_QUEUE_CONTENT_TYPE_MAX + 1);
    if (r->ctype_len == 0 || r->ctype_len > KEEL_QUEUE_CONTENT_TYPE_MAX ||
        bad_chars(r->ctype, r->ctype_len, false))
        return keel__err(err, KEEL_EINVALID,
                         "enqueue: content type \"%.64s\" is empty, longer than %u bytes or has a "
                         "control character",
                         r->ctype, KEEL_QUEUE_CONTENT_TYPE_MAX);
    r->key_len = m->idem_key ? strnlen(m->idem_key, KEEL_QUEUE_IDEM_KEY_MAX + 1) : 0;
    if (r->key_len > KEEL_QUEUE_IDEM_KEY_MAX)
        return keel__err(err, KEEL_EINVALID,
                         "enqueue: idempotency key \"%.40s...\" is longer than %u bytes",
                         m->idem_key, KEEL_QUEUE_IDEM_KEY_MAX);
    if (m->ttl_s < 0)
        return keel__err(err, KEEL_EINVALID,
                         "enqueue: ttl_s is %" PRId64 "; use 0 for no expiry or a positive "
                         "number of seconds",
                         m->ttl_s);
    r->size = (uint64_t)m->payload_len + r->topic_len + r->ctype_len + r->key_len;
    if (q->o.max_bytes && r->size > q->o.max_bytes)
        return keel__err(err, KEEL_ETOOBIG,
                         "enqueue: message is %" PRIu64 " bytes; the whole queue holds at most "
                         "%" PRIu64 " (max_bytes)",
                         r->size, q->o.max_bytes);
    return KEEL_OK;
}

/* Looks up r's idempotency key. *ret_dup: a live message (or a key within its
 * retention) has it; r->id is set to that message's id. */
static int idem_lookup(keel_queue *q, req *r, int64_t now, bool *ret_dup, keel_error *err)
{
    sqlite3_stmt *st = stmt(q, ST_IDEM_GET);
    uint64_t id = 0;
    int64_t at = 0;
    int p = -1, s, rc = KEEL_OK;
    bool exists = false;
    *ret_dup = false;
    sqlite3_bind_text(st, 1, r->m->idem_key, (int)r->key_len, SQLITE_STATIC);
    s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        id = col_u64(st, 0);
        p = sqlite3_column_int(st, 1);
        at = sqlite3_column_int64(st, 2);
    } else if (s != SQLITE_DONE) {
        rc = db_err(q, err, "looking up an idempotency key");
    }
    sqlite3_reset(st);
    if (rc || p < 0 || p >= KEEL_PRIO_COUNT)
        return rc;
    st = cstmt(q, p, CS_GET);
    sqlite3_bind_int64(st, 1, i64(id));
    s = sqlite3_step(st);
    exists = s == SQLITE_ROW;
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        rc = db_err(q, err, "looking up an idempotency key's message");
    sqlite3_reset(st);
    if (!rc && (exists || now < at + (int64_t)q->o.idem_retention_s)) {
        *ret_dup = true;
        r->id = id;
    }
    return rc;
}

/* Stores one message inside the open transaction. Refusals go to r->rc;
 * the return value is a database failure that dooms the transaction. */
static int put_one(keel_queue *q, req *r, int64_t now, keel_error *err)
{
    const keel_msg_in *m = r->m;
    bool dup, ok;
    int rc;
    r->rc = KEEL_OK;
    if (r->key_len) {
        if ((rc = idem_lookup(q, r, now, &dup, err)))
            return rc;
        if (dup)
            return KEEL_OK;
    }
    if ((rc = make_room(q, r, now, &ok, err)) || !ok)
        return rc;
    uint64_t id = q->c.next_id;
    KEEL_ASSERT(id > 0 && !sqlite3_get_autocommit(q->db), "%s: storing id %" PRIu64 " %s", q->path,
                id, id ? "outside a transaction" : "(ids start at 1)");
    sqlite3_stmt *st = cstmt(q, (int)m->prio, CS_INSERT);
    sqlite3_bind_int64(st, 1, i64(id));
    sqlite3_bind_int64(st, 2, now);
    if (m->ttl_s > 0)
        sqlite3_bind_int64(st, 3, m->ttl_s > INT64_MAX - now ? INT64_MAX : now + m->ttl_s);
    sqlite3_bind_int64(st, 4, i64(r->size));
    sqlite3_bind_text(st, 5, m->topic, (int)r->topic_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->ctype, (int)r->ctype_len, SQLITE_STATIC);
    if (r->key_len)
        sqlite3_bind_text(st, 7, m->idem_key, (int)r->key_len, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 8, m->payload ? m->payload : "", (sqlite3_uint64)m->payload_len,
                        SQLITE_STATIC);
    if ((rc = step_done(q, st, "storing a message", err)))
        return rc;
    if (r->key_len) {
        st = stmt(q, ST_IDEM_PUT);
        sqlite3_bind_text(st, 1, m->idem_key, (int)r->key_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, i64(id));
        sqlite3_bind_int(st, 3, (int)m->prio);
        sqlite3_bind_int64(st, 4, now);
        if ((rc = step_done(q, st, "recording an idempotency key", err)))
            return rc;
    }
    q->c.next_id++;
    q->c.depth[m->prio]++;
    q->c.bytes[m->prio] += r->size;
    q->disk_room -= i64(r->size);
    r->id = id;
    return KEEL_OK;
}

static void measure_disk(keel_queue *q)
{
    struct statvfs sv;
    q->disk_room = INT64_MAX / 2;
    if (!q->o.min_free_disk)
        return;
    if (statvfs(q->dir, &sv) != 0) {
        KEEL_LOG_W(MOD, "cannot read free space of %s: %s; not enforcing min_free_disk", q->dir,
                   strerror(errno));
        return;
    }
    uint64_t free_b = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    q->disk_room = free_b > (uint64_t)INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)free_b;
    q->disk_room -= i64(q->o.min_free_disk);
}

/* Writes reqs [head, n of them) in one transaction; every r->rc is set. */
static void write_batch(keel_queue *q, req *head, size_t n)
{
    keel_error e;
    counters saved;
    int64_t now = now_s(q);
    uint64_t stored = 0;
    req *r;
    size_t i;
    int rc;
    pthread_mutex_lock(&q->db_mu);
    measure_disk(q);
    if ((rc = tx_begin(q, &saved, &e)))
        goto out;
    for (r = head, i = 0; i < n; r = r->next, i++) {
        uint64_t before = q->c.next_id;
        if ((rc = put_one(q, r, now, &e)))
            break;
        stored += q->c.next_id - before;
    }
    if (!rc)
        rc = tx_commit(q, &e);
out:
    if (rc) {
        tx_rollback(q, &saved);
        for (r = head, i = 0; i < n; r = r->next, i++) {
            r->rc = rc;
            if (r->err)
                *r->err = e;
        }
    } else {
        q->enqueued += stored;
        q->commits++;
    }
    pthread_mutex_unlock(&q->db_mu);
}

/* Tells an asynchronous producer how its message fared, then frees it. */
static void finish_async(req *r)
{
    r->cb(r->cb_ctx, r->rc, r->rc == KEEL_OK ? r->id : 0, r->rc ? &r->aerr : NULL);
    free(r);
}

static void *committer_main(void *arg)
{
    keel_queue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        q->wake_at = 1;
        while (!q->head && !q->stop) {
            q->committer_waiting = true;
            pthread_cond_wait(&q->work_cv, &q->mu);
            q->committer_waiting = false;
        }
        if (!q->head)
            break; /* stopping and nothing left */
        /* A producer alone commits at once, and under contention batches
         * form by themselves: whoever arrives during a commit goes into the
         * next one. Only a batch less than half the size of the last one
         * waits (up to the window) until half of the last one's producers
         * are back: this stops a convoy from splitting into a lone producer
         * and the rest, taking turns. Waiting for all of them measured
         * slower: the disk idles while the last ones come back. */
        size_t want = (q->last_batch + 1) / 2;
        if (q->o.group_window_us && q->npending < want && !q->stop) {
            struct timespec dl;
            clock_gettime(CLOCK_MONOTONIC, &dl);
            dl.tv_nsec += (long)q->o.group_window_us * 1000;
            dl.tv_sec += dl.tv_nsec / 1000000000;
            dl.tv_nsec %= 1000000000;
            q->wake_at = want;
            while (q->npending < want && !q->stop) {
                q->committer_waiting = true;
                int e = pthread_cond_timedwait(&q->work_cv, &q->mu, &dl);
                q->committer_waiting = false;
                if (e == ETIMEDOUT)
                    break;
            }
        }
        req *batch = q->head, *r = batch;
        size_t n = 0;
        uint64_t bytes = 0;
        while (r && n < BATCH_MAX_MSGS && (n == 0 || bytes + r->size <= BATCH_MAX_BYTES)) {
            bytes += r->size;
            n++;
            r = r->next;
        }
        q->head = r;
        if (!r)
            q->tail = &q->head;
        q->npending -= n;
        q->last_batch = n;
        pthread_mutex_unlock(&q->mu);

        write_batch(q, batch, n);
        /* Wake exactly this batch's producers. Each req is gone as soon as
         * its producer returns: read next before posting. */
        for (r = batch; n--;) {
            req *next = r->next;
            if (r->cb)
                finish_async(r);
            else
                sem_post(&r->done);
            r = next;
        }

        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

int keel_queue_enqueue(keel_queue *q, const keel_msg_in *m, uint64_t *ret_id, keel_error *err)
{
    req r;
    int rc;
    memset(&r, 0, sizeof(r));
    if ((rc = validate(q, m, &r, err)))
        return rc;
    r.m = m;
    r.err = err;
    if (q->o.durability == KEEL_QUEUE_SYNC) {
        write_batch(q, &r, 1);
    } else {
        sem_init(&r.done, 0, 0);
        pthread_mutex_lock(&q->mu);
        *q->tail = &r;
        q->tail = &r.next;
        q->npending++;
        /* Only when the committer waits for this many: a wakeup per
         * producer would cost more than the commit it waits for. */
        if (q->committer_waiting && q->npending >= q->wake_at)
            pthread_cond_signal(&q->work_cv);
        pthread_mutex_unlock(&q->mu);
        while (sem_wait(&r.done) != 0)
            ; /* EINTR */
        sem_destroy(&r.done);
    }
    if (r.rc == KEEL_OK && ret_id)
        *ret_id = r.id;
    return r.rc;
}

/* One allocation holding the req, a copy of m's strings and its payload. */
static req *async_req(const keel_msg_in *m)
{
    size_t tl = strlen(m->topic) + 1, cl = m->content_type ? strlen(m->content_type) + 1 : 0,
           kl = m->idem_key ? strlen(m->idem_key) + 1 : 0;
    req *r = malloc(sizeof(*r) + tl + cl + kl + m->payload_len);
    if (!r)
        return NULL;
    memset(r, 0, sizeof(*r));
    char *p = (char *)(r + 1);
    r->mcopy = *m;
    r->mcopy.topic = memcpy(p, m->topic, tl);
    p += tl;
    if (cl)
        r->mcopy.content_type = memcpy(p, m->content_type, cl);
    p += cl;
    if (kl)
        r->mcopy.idem_key = memcpy(p, m->idem_key, kl);
    p += kl;
    r->mcopy.payload = m->payload_len ? memcpy(p, m->payload, m->payload_len) : NULL;
    r->m = &r->mcopy;
    r->err = &r->aerr;
    return r;
}

int keel_queue_enqueue_async(keel_queue *q, const keel_msg_in *m, keel_queue_done_fn done,
                             void *ctx, keel_error *err)
{
    req probe;
    int rc;
    memset(&probe, 0, sizeof(probe));
    if ((rc = validate(q, m, &probe, err)))
        return rc;
    req *r = async_req(m);
    if (!r)
        return keel__err(err, KEEL_ENOMEM, "out of memory queueing a %zu-byte message",
                         m->payload_len);
    r->ctype = probe.ctype == m->content_type ? r->mcopy.content_type : probe.ctype;
    r->topic_len = probe.topic_len;
    r->ctype_len = probe.ctype_len;
    r->key_len = probe.key_len;
    r->size = probe.size;
    r->cb = done;
    r->cb_ctx = ctx;
    if (q->o.durability == KEEL_QUEUE_SYNC) {
        write_batch(q, r, 1);
        finish_async(r);
        return KEEL_OK;
    }
    pthread_mutex_lock(&q->mu);
    *q->tail = r;
    q->tail = &r->next;
    q->npending++;
    if (q->committer_waiting && q->npending >= q->wake_at)
        pthread_cond_signal(&q->work_cv);
    pthread_mutex_unlock(&q->mu);
    return KEEL_OK;
}

/* --- open / close ------------------------------------------------------------------- */

static int check_opts(const keel_queue_opts *o, keel_error *err)
{
    if (o->durability != KEEL_QUEUE_SYNC && o->durability != KEEL_QUEUE_GROUP)
        return keel__err(err, KEEL_EINVALID,
                         "queue: unknown durability mode %d (expected sync or group)",
                         (int)o->durability);
    if (o->group_window_us > KEEL_QUEUE_WINDOW_MAX_US)
        return keel__err(err, KEEL_EINVALID,
                         "queue: group_window_us is %u; at most %u (10 ms) is allowed",
                         o->group_window_us, KEEL_QUEUE_WINDOW_MAX_US);
    if (o->max_payload > KEEL_QUEUE_PAYLOAD_LIMIT)
        return keel__err(err, KEEL_EINVALID,
                         "queue: max_payload is %" PRIu64 " bytes; at most %u is allowed",
                         o->max_payload, KEEL_QUEUE_PAYLOAD_LIMIT);
    return KEEL_OK;
}

/* Runs a one-row query and copies its first column as text. */
static int query_text(keel_queue *q, const char *sql, char *out, size_t n, keel_error *err)
{
    sqlite3_stmt *st;
    int rc = KEEL_OK;
    out[0] = '\0';
    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_err(q, err, sql);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW && sqlite3_column_text(st, 0))
        keel__strlcpy(out, (const char *)sqlite3_column_text(st, 0), n);
    else if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = db_err(q, err, sql);
    sqlite3_finalize(st);
    return rc;
}

/* Loads the counters from the database (at open: nobody else can write). */
static int load(keel_queue *q, keel_error *err)
{
    sqlite3_stmt *st = NULL;
    uint64_t id_floor = 0, max_id = 0, snap_depth[KEEL_PRIO_COUNT] = {0},
             snap_bytes[KEEL_PRIO_COUNT] = {0};
    bool clean = false;
    char sql[256];
    int r, rc;
    if ((rc = exec(q, "BEGIN IMMEDIATE", "reading the counters", err)))
        return rc;
    if (sqlite3_prepare_v2(q->db, "SELECT key, value FROM meta", -1, &st, NULL) != SQLITE_OK) {
        rc = db_err(q, err, "reading meta");
        goto out;
    }
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        uint64_t v = col_u64(st, 1);
        if (!k)
            continue;
        if (strcmp(k, "schema") == 0 && v > SCHEMA_VERSION) {
            rc = keel__err(err, KEEL_EUNSUPPORTED,
                           "queue database %s has schema %" PRIu64
                           "; this keel understands %d (a newer keel wrote it)",
                           q->path, v, SCHEMA_VERSION);
            goto out;
        }
        if (strcmp(k, "id_floor") == 0)
            id_floor = v;
        else if (strcmp(k, "expired") == 0)
            q->c.expired = v;
        else if (strcmp(k, "last_sync") == 0)
            q->last_sync = sqlite3_column_int64(st, 1);
        else if (strcmp(k, "clean") == 0)
            clean = v == 1;
        for (int i = 0; i < KEEL_PRIO_COUNT; i++) {
            const char *dot = strchr(k, '.');
            if (!dot || strcmp(dot + 1, prio_names[i]) != 0)
                continue;
            if (strncmp(k, "evicted.", 8) == 0)
                q->c.evicted[i] = v;
            else if (strncmp(k, "depth.", 6) == 0)
                snap_depth[i] = v;
            else if (strncmp(k, "bytes.", 6) == 0)
                snap_bytes[i] = v;
        }
    }
    if (r != SQLITE_DONE) {
        rc = db_err(q, err, "reading meta");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* Depth and bytes per class: from the snapshot a clean close left, or
     * (after a crash) by reading every row. The highest id is cheap. */
    for (int p = 0; p < KEEL_PRIO_COUNT; p++) {
        if (clean)
            snprintf(sql, sizeof(sql), "SELECT max(id) FROM %s", class_tables[p]);
        else
            snprintf(sql, sizeof(sql), "SELECT max(id), count(*), sum(size) FROM %s",
                     class_tables[p]);
        if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW) {
            rc = db_err(q, err, "counting messages");
            goto out;
        }
        if (col_u64(st, 0) > max_id)
            max_id = col_u64(st, 0);
        q->c.depth[p] = clean ? snap_depth[p] : col_u64(st, 1);
        q->c.bytes[p] = clean ? snap_bytes[p] : col_u64(st, 2);
        sqlite3_finalize(st);
        st = NULL;
    }
    q->c.next_id = (max_id > id_floor ? max_id : id_floor) + 1;
    /* The snapshot stays valid until a transaction changes a row: that
     * transaction sets clean = 0 (tx_commit). An open writes nothing. */
    q->snap_on_disk = clean;
    rc = exec(q, "COMMIT", "reading the counters", err);
out:
    sqlite3_finalize(st);
    if (rc)
        (void)sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    else
        q->loaded = true;
    return rc;
}

/* At a clean close: the counters, so that the next open need not read every
 * row. Not after a failed transaction (the next open counts instead). */
static void save_snapshot(keel_queue *q)
{
    static const char *const keys[2][KEEL_PRIO_COUNT] = {
        {"depth.critical", "depth.high", "depth.normal", "depth.bulk"},
        {"bytes.critical", "bytes.high", "bytes.normal", "bytes.bulk"}};
    keel_error e;
    int rc;
    if (!q->loaded || q->suspect || q->snap_on_disk) /* on disk already: nothing changed */
        return;
    if ((rc = exec(q, "BEGIN IMMEDIATE", "saving the counters", &e)))
        goto out;
    for (int p = 0; p < KEEL_PRIO_COUNT && !rc; p++)
        if (!(rc = meta_put(q, keys[0][p], q->c.depth[p], &e)))
            rc = meta_put(q, keys[1][p], q->c.bytes[p], &e);
    if (!rc && !(rc = meta_put(q, "clean", 1, &e)))
        rc = exec(q, "COMMIT", "saving the counters", &e);
out:
    if (rc) {
        (void)sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
        KEEL_LOG_W(MOD, "%s (the next open counts the messages instead)", e.msg);
    }
}

/* The file is a queue database, or a new empty one (then marked as one):
 * never create queue tables inside another database (keel.db, say). */
static int check_format(keel_queue *q, keel_error *err)
{
    char id[32], tables[32];
    int rc;
    if ((rc = query_text(q, "PRAGMA application_id", id, sizeof(id), err)) ||
        (rc = query_text(q, "SELECT count(*) FROM sqlite_master", tables, sizeof(tables), err)))
        return rc;
    if (strtol(id, NULL, 10) == QUEUE_APPLICATION_ID)
        return KEEL_OK;
    if (strcmp(id, "0") == 0 && strcmp(tables, "0") == 0)
        return exec(q, "PRAGMA application_id=" QUEUE_STR(QUEUE_APPLICATION_ID),
                    "marking the queue database", err);
    return keel__err(err, KEEL_EUNSUPPORTED,
                     "%s is an SQLite database but not a keel queue (application_id %s, %s "
                     "tables); not writing into it: give the queue its own file",
                     q->path, id, tables);
}

int keel_queue_open(const char *path, const keel_queue_opts *opts, keel_queue **ret,
                    keel_error *err)
{
    char mode[16], sql[512];
    pthread_condattr_t ca;
    keel_queue *q;
    bool existed;
    int rc;
    if (!path || !path[0])
        return keel__err(err, KEEL_EINVALID, "queue: no database path given");
    if (!(q = calloc(1, sizeof(*q))))
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_mutex_init(&q->db_mu, NULL);
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->work_cv, &ca);
    pthread_condattr_destroy(&ca);
    q->tail = &q->head;
    if (opts)
        q->o = *opts;
    else
        keel_queue_opts_default(&q->o);
    if (q->o.max_payload == 0)
        q->o.max_payload = KEEL_QUEUE_PAYLOAD_DEFAULT;
    if ((rc = check_opts(&q->o, err)))
        goto fail;
    if (strlen(path) >= sizeof(q->path)) {
        rc = keel__err(err, KEEL_ETOOBIG, "queue database path too long: %.64s...", path);
        goto fail;
    }
    keel__strlcpy(q->path, path, sizeof(q->path));
    keel__strlcpy(q->dir, path, sizeof(q->dir));
    char *slash = strrchr(q->dir, '/');
    if (!slash)
        keel__strlcpy(q->dir, ".", sizeof(q->dir));
    else if (slash == q->dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    if ((rc = keel__fs_mkdir_p(q->dir, 0700, err)))
        goto fail;
    existed = keel__fs_exists(path);
    if (sqlite3_open_v2(path, &q->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = keel__err(err, KEEL_EIO, "cannot open the queue database %s: %s", path,
                       q->db ? sqlite3_errmsg(q->db) : "out of memory");
        goto fail;
    }
    /* One owner: exclusive locking keeps every other connection out for the
     * life of this one (and keeps the WAL index in memory, no -shm file).
     * The counters in memory depend on it. */
    if ((rc = exec(q, "PRAGMA locking_mode=EXCLUSIVE", "setting pragmas", err)) ||
        (rc = query_text(q, "PRAGMA journal_mode=WAL", mode, sizeof(mode), err)))
        goto fail;
    if (strcmp(mode, "wal") != 0) {
        rc = keel__err(err, KEEL_EIO, "queue database %s: cannot use WAL (journal mode is %s)",
                       path, mode);
        goto fail;
    }
    if ((rc = exec(q,
                   "PRAGMA synchronous=FULL; PRAGMA journal_size_limit=8388608;"
                   "PRAGMA cache_size=-2048;",
                   "setting pragmas", err)) ||
        (rc = exec(q, "BEGIN IMMEDIATE", "locking the queue database", err)))
        goto fail;
    rc = check_format(q, err);
    if (!rc)
        rc = exec(q, schema, "creating the schema", err);
    for (int p = 0; p < KEEL_PRIO_COUNT && !rc; p++) {
        expand(class_schema, p, sql, sizeof(sql));
        rc = exec(q, sql, "creating the schema", err);
    }
    if (rc || (rc = exec(q, "COMMIT", "creating the schema", err))) {
        (void)sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(q->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i],
                               NULL) != SQLITE_OK) {
            rc = db_err(q, err, stmt_sql[i]);
            goto fail;
        }
    }
    for (int p = 0; p < KEEL_PRIO_COUNT; p++) {
        for (int i = 0; i < CS_COUNT; i++) {
            expand(class_sql[i], p, sql, sizeof(sql));
            if (sqlite3_prepare_v3(q->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &q->cs[p][i], NULL) !=
                SQLITE_OK) {
                rc = db_err(q, err, sql);
                goto fail;
            }
        }
    }
    if ((rc = load(q, err)))
        goto fail;
    if (!existed && (rc = keel__fs_fsync_parent(path, err)))
        goto fail;
    if (q->o.durability == KEEL_QUEUE_GROUP) {
        int e = pthread_create(&q->committer, NULL, committer_main, q);
        if (e) {
            rc = keel__err_errno(err, KEEL_ENOMEM, e, "queue: cannot start the committer thread");
            goto fail;
        }
        q->committer_running = true;
    }
    *ret = q;
    return KEEL_OK;
fail:
    keel_queue_close(q);
    return rc;
}

void keel_queue_close(keel_queue *q)
{
    if (!q)
        return;
    if (q->committer_running) {
        pthread_mutex_lock(&q->mu);
        q->stop = true;
        pthread_cond_signal(&q->work_cv);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->committer, NULL);
    }
    if (q->db)
        save_snapshot(q);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(q->st[i]);
    for (int p = 0; p < KEEL_PRIO_COUNT; p++)
        for (int i = 0; i < CS_COUNT; i++)
            sqlite3_finalize(q->cs[p][i]);
    sqlite3_close(q->db);
    pthread_cond_destroy(&q->work_cv);
    pthread_mutex_destroy(&q->mu);
    pthread_mutex_destroy(&q->db_mu);
    free(q);
}

/* --- consuming ------------------------------------------------------------------------ */

/* A batch being read: messages, and their strings and payloads in one
 * buffer (offsets, turned into pointers at the end). */
typedef struct msg_off {
    size_t topic, ctype, idem, payload; /* idem SIZE_MAX: none */
} msg_off;

typedef struct peek_ctx {
    keel_msg *msgs;
    msg_off *offs;
    size_t n, cap, max_msgs, max_bytes, payload_total;
    unsigned flags;
    keel_buf data;
} peek_ctx;

/* Adds the row st is on (class p) to the batch. *ret_stop: the batch is full. */
static int peek_row(keel_queue *q, peek_ctx *b, int p, sqlite3_stmt *st, bool *ret_stop,
                    keel_error *err)
{
    const char *topic = (const char *)sqlite3_column_text(st, 3);
    const char *ctype = (const char *)sqlite3_column_text(st, 4);
    const char *idem = (const char *)sqlite3_column_text(st, 5);
    const void *payload = sqlite3_column_blob(st, 6);
    size_t plen = (size_t)sqlite3_column_bytes(st, 6);
    int rc;
    *ret_stop = true;
    if (!topic || !ctype)
        return keel__err(err, KEEL_ECORRUPT,
                         "queue database %s: message %" PRIu64 " has no topic or content type",
                         q->path, col_u64(st, 0));
    if (b->n > 0 && (plen > b->max_bytes || b->payload_total > b->max_bytes - plen))
        return KEEL_OK;
    if (b->n > 0 && (b->flags & KEEL_QUEUE_PEEK_SAME_TOPIC) &&
        ((int)b->msgs[0].prio != p || strcmp(b->data.data + b->offs[0].topic, topic) != 0))
        return KEEL_OK;
    if (b->n == b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 16;
        keel_msg *m2 = realloc(b->msgs, ncap * sizeof(*m2));
        if (m2)
            b->msgs = m2;
        msg_off *o2 = m2 ? realloc(b->offs, ncap * sizeof(*o2)) : NULL;
        if (o2)
            b->offs = o2;
        if (!m2 || !o2)
            return keel__err(err, KEEL_ENOMEM, "out of memory reading the queue");
        b->cap = ncap;
    }
    keel_msg *m = &b->msgs[b->n];
    msg_off *o = &b->offs[b->n];
    memset(m, 0, sizeof(*m));
    m->id = col_u64(st, 0);
    m->prio = (keel_prio)p;
    m->created_at = sqlite3_column_int64(st, 1);
    m->expires_at = sqlite3_column_int64(st, 2);
    m->payload_len = plen;
    o->topic = b->data.len;
    rc = keel__buf_append(&b->data, topic, strlen(topic) + 1);
    o->ctype = b->data.len;
    if (!rc)
        rc = keel__buf_append(&b->data, ctype, strlen(ctype) + 1);
    o->idem = idem ? b->data.len : SIZE_MAX;
    if (!rc && idem)
        rc = keel__buf_append(&b->data, idem, strlen(idem) + 1);
    o->payload = b->data.len;
    if (!rc)
        rc = keel__buf_append(&b->data, payload, plen);
    if (rc)
        return keel__err(err, rc, "out of memory reading the queue");
    b->payload_total += plen;
    b->n++;
    *ret_stop = b->n >= b->max_msgs;
    return KEEL_OK;
}

int keel_queue_peek_batch(keel_queue *q, size_t max_msgs, size_t max_bytes, unsigned flags,
                          keel_msg **ret, size_t *ret_n, keel_error *err)
{
    peek_ctx b = {.max_msgs = max_msgs, .max_bytes = max_bytes, .flags = flags};
    keel_msg *out = NULL;
    bool stop = max_msgs == 0;
    int rc = KEEL_OK;
    keel__buf_init(&b.data, 0);
    pthread_mutex_lock(&q->db_mu);
    int64_t now = now_s(q);
    /* Strict priority: a class is read only when every class above it is
     * empty (of deliverable messages) or did not fill the batch. */
    for (int p = 0; p < KEEL_PRIO_COUNT && !stop && !rc; p++) {
        if (q->c.depth[p] == 0)
            continue;
        sqlite3_stmt *st = cstmt(q, p, CS_PEEK);
        int r = SQLITE_DONE;
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_int64(st, 2, i64(max_msgs - b.n));
        while (!stop && (r = sqlite3_step(st)) == SQLITE_ROW)
            if ((rc = peek_row(q, &b, p, st, &stop, err)))
                break;
        if (!rc && !stop && r != SQLITE_DONE)
            rc = db_err(q, err, "reading messages");
        sqlite3_reset(st);
    }
    pthread_mutex_unlock(&q->db_mu);
    if (rc || b.n == 0)
        goto done;
    if (!(out = malloc(b.n * sizeof(*out) + b.data.len))) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory reading the queue");
        goto done;
    }
    char *base = (char *)(out + b.n);
    memcpy(base, b.data.data, b.data.len);
    for (size_t i = 0; i < b.n; i++) {
        out[i] = b.msgs[i];
        out[i].topic = base + b.offs[i].topic;
        out[i].content_type = base + b.offs[i].ctype;
        out[i].idem_key = b.offs[i].idem == SIZE_MAX ? NULL : base + b.offs[i].idem;
        out[i].payload = base + b.offs[i].payload;
    }
done:
    free(b.msgs);
    free(b.offs);
    keel__buf_done(&b.data);
    if (!rc) {
        *ret = out;
        *ret_n = b.n;
    }
    return rc;
}

void keel_queue_batch_free(keel_msg *batch)
{
    free(batch);
}

/* Removes message id wherever it is (acks carry no class). In a transaction. */
static int remove_one(keel_queue *q, uint64_t id, keel_error *err)
{
    for (int p = 0; p < KEEL_PRIO_COUNT; p++) {
        if (q->c.depth[p] == 0)
            continue;
        sqlite3_stmt *st = cstmt(q, p, CS_GET);
        int rc = KEEL_OK;
        sqlite3_bind_int64(st, 1, i64(id));
        int r = sqlite3_step(st);
        if (r == SQLITE_DONE)
            continue;
        if (r != SQLITE_ROW)
            return db_err(q, err, "looking up an acked message");
        uint64_t size = col_u64(st, 0);
        if (q->o.idem_retention_s == 0 && sqlite3_column_type(st, 1) == SQLITE_TEXT) {
            sqlite3_stmt *d = stmt(q, ST_IDEM_DEL);
            sqlite3_bind_text(d, 1, (const char *)sqlite3_column_text(st, 1), -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(d, 2, i64(id));
            rc = step_done(q, d, "forgetting the key of an acked message", err);
        }
        sqlite3_reset(st);
        if (rc)
            return rc;
        st = cstmt(q, p, CS_DEL);
        sqlite3_bind_int64(st, 1, i64(id));
        if ((rc = step_done(q, st, "removing an acked message", err)))
            return rc;
        KEEL_ASSERT(q->c.bytes[p] >= size, "%s: acking %" PRIu64 " bytes of %s, counted %" PRIu64,
                    q->path, size, prio_names[p], q->c.bytes[p]);
        q->c.depth[p]--;
        q->c.bytes[p] -= size;
        q->c.dirty = true;
        return KEEL_OK;
    }
    return KEEL_OK; /* already gone: acks are idempotent */
}

int keel_queue_ack(keel_queue *q, const uint64_t *ids, size_t n, keel_error *err)
{
    counters saved;
    int rc;
    if (n == 0)
        return KEEL_OK;
    if (!ids)
        return keel__err(err, KEEL_EINVALID, "ack: %zu ids announced but none given", n);
    pthread_mutex_lock(&q->db_mu);
    if ((rc = tx_begin(q, &saved, err)))
        goto out;
    for (size_t i = 0; i < n && !rc; i++)
        rc = remove_one(q, ids[i], err);
    if (!rc)
        rc = tx_commit(q, err);
    if (rc)
        tx_rollback(q, &saved);
out:
    pthread_mutex_unlock(&q->db_mu);
    return rc;
}

int keel_queue_expire(keel_queue *q, int64_t now, uint64_t *ret_removed, keel_error *err)
{
    counters saved;
    uint64_t n = 0;
    sqlite3_stmt *st = NULL;
    int rc;
    pthread_mutex_lock(&q->db_mu);
    if ((rc = tx_begin(q, &saved, err)) || (rc = remove_expired(q, now, &n, err)))
        goto out;
    /* Keys whose message is gone and whose retention is over. */
    if (sqlite3_prepare_v2(q->db,
                           "DELETE FROM idem WHERE at <= ?1"
                           " AND NOT EXISTS(SELECT 1 FROM msgs_critical WHERE id = idem.id)"
                           " AND NOT EXISTS(SELECT 1 FROM msgs_high WHERE id = idem.id)"
                           " AND NOT EXISTS(SELECT 1 FROM msgs_normal WHERE id = idem.id)"
                           " AND NOT EXISTS(SELECT 1 FROM msgs_bulk WHERE id = idem.id)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = db_err(q, err, "forgetting old idempotency keys");
        goto out;
    }
    sqlite3_bind_int64(st, 1, now - (int64_t)q->o.idem_retention_s);
    if ((rc = step_done(q, st, "forgetting old idempotency keys", err)))
        goto out;
    rc = tx_commit(q, err);
out:
    sqlite3_finalize(st);
    if (rc)
        tx_rollback(q, &saved);
    pthread_mutex_unlock(&q->db_mu);
    if (!rc && ret_removed)
        *ret_removed = n;
    return rc;
}

int keel_queue_mark_synced(keel_queue *q, int64_t when, keel_error *err)
{
    int rc;
    pthread_mutex_lock(&q->db_mu);
    sqlite3_stmt *st = stmt(q, ST_META_PUT);
    sqlite3_bind_text(st, 1, "last_sync", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, when);
    rc = step_done(q, st, "recording the last sync", err);
    if (!rc)
        q->last_sync = when;
    pthread_mutex_unlock(&q->db_mu);
    return rc;
}

/* --- observing ------------------------------------------------------------------------ */

int keel_queue_stats_get(keel_queue *q, keel_queue_stats *ret, keel_error *err)
{
    keel_queue_stats s;
    int rc = KEEL_OK;
    memset(&s, 0, sizeof(s));
    pthread_mutex_lock(&q->db_mu);
    s.durability = q->o.durability;
    s.now = now_s(q);
    for (int p = 0; p < KEEL_PRIO_COUNT && !rc; p++) {
        keel_queue_class_stats *c = &s.cls[p];
        c->depth = q->c.depth[p];
        c->bytes = q->c.bytes[p];
        c->evicted = q->c.evicted[p];
        c->refused = q->refused[p];
        c->oldest_age_s = -1;
        s.depth += c->depth;
        s.bytes += c->bytes;
        if (!c->depth)
            continue;
        sqlite3_stmt *st = cstmt(q, p, CS_OLDEST);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            int64_t age = s.now - sqlite3_column_int64(st, 0);
            c->oldest_age_s = age < 0 ? 0 : age;
        } else if (r != SQLITE_DONE) {
            rc = db_err(q, err, "finding the oldest message");
        }
        sqlite3_reset(st);
    }
    s.expired = q->c.expired;
    s.last_sync = q->last_sync;
    s.max_bytes = q->o.max_bytes;
    s.max_rows = q->o.max_rows;
    s.min_free_disk = q->o.min_free_disk;
    s.max_payload = q->o.max_payload;
    s.enqueued = q->enqueued;
    s.commits = q->commits;
    pthread_mutex_unlock(&q->db_mu);
    if (!rc)
        *ret = s;
    return rc;
}

int keel_queue_stats_json(const keel_queue_stats *st, char **ret_json, keel_error *err)
{
    keel_buf b;
    char when[32];
    int rc;
    keel__buf_init(&b, 0);
    if (st->last_sync > 0) {
        keel__format_rfc3339(st->last_sync, when, sizeof(when));
    }
    rc = keel__buf_appendf(&b,
                           "{\"format\":1,\"durability\":\"%s\",\"depth\":%" PRIu64
                           ",\"bytes\":%" PRIu64 ",\"expired\":%" PRIu64 ",\"last_sync\":",
                           keel_queue_durability_name(st->durability), st->depth, st->bytes,
                           st->expired);
    if (!rc)
        rc = st->last_sync > 0 ? keel__buf_appendf(&b, "\"%s\"", when)
                               : keel__buf_appendf(&b, "null");
    if (!rc)
        rc = keel__buf_appendf(&b,
                               ",\"limits\":{\"max_bytes\":%" PRIu64 ",\"max_rows\":%" PRIu64
                               ",\"min_free_disk\":%" PRIu64 ",\"max_payload\":%" PRIu64
                               "},\"enqueued\":%" PRIu64 ",\"commits\":%" PRIu64 ",\"classes\":{",
                               st->max_bytes, st->max_rows, st->min_free_disk, st->max_payload,
                               st->enqueued, st->commits);
    for (int p = 0; p < KEEL_PRIO_COUNT && !rc; p++) {
        const keel_queue_class_stats *c = &st->cls[p];
        rc = keel__buf_appendf(
            &b,
            "%s\"%s\":{\"depth\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"oldest_age_s\":", p ? "," : "",
            prio_names[p], c->depth, c->bytes);
        if (!rc)
            rc = c->oldest_age_s >= 0 ? keel__buf_appendf(&b, "%" PRId64, c->oldest_age_s)
                                      : keel__buf_appendf(&b, "null");
        if (!rc)
            rc = keel__buf_appendf(&b, ",\"evicted\":%" PRIu64 ",\"refused\":%" PRIu64 "}",
                                   c->evicted, c->refused);
    }
    if (!rc)
        rc = keel__buf_appendf(&b, "}}");
    if (rc) {
        keel__buf_done(&b);
        return keel__err(err, rc, "out of memory rendering queue stats");
    }
    *ret_json = keel__buf_steal(&b);
    return KEEL_OK;
}

/* --- deep check (tests) ------------------------------------------------------------------ */

int keel__queue_check(keel_queue *q, keel_error *err)
{
    int rc = KEEL_OK;
    pthread_mutex_lock(&q->db_mu);
    if (!sqlite3_get_autocommit(q->db)) {
        rc = keel__err(err, KEEL_ECORRUPT, "%s: a transaction is left open", q->path);
        goto out;
    }
    for (int p = 0; p < KEEL_PRIO_COUNT && !rc; p++) {
        char sql[160];
        sqlite3_stmt *st = NULL;
        snprintf(sql, sizeof(sql),
                 "SELECT count(*), coalesce(sum(size), 0), coalesce(max(id), 0) FROM %s",
                 class_tables[p]);
        if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW) {
            rc = db_err(q, err, "recounting the rows");
        } else {
            uint64_t rows = col_u64(st, 0), bytes = col_u64(st, 1), max_id = col_u64(st, 2);
            if (rows != q->c.depth[p] || bytes != q->c.bytes[p])
                rc = keel__err(err, KEEL_ECORRUPT,
                               "%s: %s holds %" PRIu64 " rows, %" PRIu64 " bytes; the counters "
                               "say %" PRIu64 ", %" PRIu64,
                               q->path, class_tables[p], rows, bytes, q->c.depth[p], q->c.bytes[p]);
            else if (max_id >= q->c.next_id)
                rc = keel__err(err, KEEL_ECORRUPT,
                               "%s: %s holds id %" PRIu64 " but the next id is %" PRIu64, q->path,
                               class_tables[p], max_id, q->c.next_id);
        }
        sqlite3_finalize(st);
    }
    if (!rc) {
        char v[32] = "";
        if ((rc = query_text(q, "SELECT value FROM meta WHERE key='id_floor'", v, sizeof(v), err)))
            goto out;
        if (v[0] && strtoull(v, NULL, 10) >= q->c.next_id)
            rc = keel__err(err, KEEL_ECORRUPT, "%s: id_floor %s is not below the next id %" PRIu64,
                           q->path, v, q->c.next_id);
    }
out:
    pthread_mutex_unlock(&q->db_mu);
    return rc;
}
