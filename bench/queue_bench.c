/*
 * queue_bench.c - the durable queue's enqueue rate against its peers, on the
 * same disk in the same run.
 *
 *   queue_bench DIR [PRODUCERS [SECONDS [PAYLOAD_BYTES]]]
 *
 * 1. Group commit: PRODUCERS threads enqueue; keel's average batch so far
 *    (messages / transactions) is given to a plain C loop that inserts the
 *    same rows into SQLite through one prepared statement, in transactions
 *    of that many rows, with the same schema and the same pragmas (WAL,
 *    synchronous=FULL, exclusive locking). Ratio keel/plain.
 * 2. Sync mode: one producer, one transaction and fsync per message, against
 *    a loop that writes 4 KiB at offset 0 of a file and fdatasyncs it: the
 *    disk's own bound on durable writes per second. Ratio keel/fdatasync.
 * 3. (information) group mode with one producer, against sync mode: a
 *    producer alone should not wait for company.
 *
 * The two sides of each row run in alternating slices (8 of each, SECONDS
 * per side in all), so that a disk whose speed drifts drifts for both.
 * Files live in DIR (removed at start and end): put it on the disk you care
 * about.
 * Prints a markdown table.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "keel/keel.h"
#include "keel/queue.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "queue_bench: %s: %s\n", what, msg);
    exit(1);
}

static char dir[3072];
static size_t payload_len = 256;
static double seconds = 3;
static char payload[65536];

static const char *path_in(const char *name)
{
    static char bufs[4][4096];
    static int k;
    char *b = bufs[k++ & 3];
    snprintf(b, 4096, "%s/%s", dir, name);
    return b;
}

static void rm_db(const char *name)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s", path_in(name));
    unlink(p);
    strcat(p, "-wal");
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path_in(name));
    unlink(p);
}

/* Each comparison runs its two sides in alternating slices (ROUNDS of each,
 * SECONDS in all per side), so that a disk whose speed drifts during the run
 * (a shared VM, an SSD's cache) drifts for both. */
#define ROUNDS 8

typedef struct side {
    uint64_t n;
    double dt;
} side;

static double rate(const side *s)
{
    return s->dt > 0 ? (double)s->n / s->dt : 0;
}

/* --- keel ------------------------------------------------------------------- */

typedef struct prod {
    keel_queue *q;
    double until;
    uint64_t n;
} prod;

static void *producer(void *arg)
{
    prod *p = arg;
    keel_msg_in m = {.topic = "bench/queue",
                     .prio = KEEL_PRIO_NORMAL,
                     .payload = payload,
                     .payload_len = payload_len,
                     .content_type = "application/octet-stream"};
    keel_error e;
    uint64_t id;
    while (now() < p->until) {
        if (keel_queue_enqueue(p->q, &m, &id, &e))
            die("enqueue", e.msg);
        p->n++;
    }
    return NULL;
}

static keel_queue *keel_open(keel_queue_durability d, const char *name)
{
    keel_queue_opts o;
    keel_queue *q;
    keel_error e;
    rm_db(name);
    keel_queue_opts_default(&o);
    o.durability = d;
    if (getenv("QUEUE_BENCH_WINDOW_US"))
        o.group_window_us = (uint32_t)atoi(getenv("QUEUE_BENCH_WINDOW_US"));
    o.max_bytes = o.max_rows = o.min_free_disk = 0; /* measure storing, not evicting */
    if (keel_queue_open(path_in(name), &o, &q, &e))
        die("open", e.msg);
    return q;
}

/* PRODUCERS threads enqueue for t seconds. */
static void keel_slice(keel_queue *q, int producers, double t, side *s)
{
    pthread_t th[256];
    prod p[256];
    double t0 = now();
    for (int i = 0; i < producers; i++) {
        p[i] = (prod){.q = q, .until = t0 + t};
        if (pthread_create(&th[i], NULL, producer, &p[i]))
            die("pthread_create", "failed");
    }
    for (int i = 0; i < producers; i++) {
        pthread_join(th[i], NULL);
        s->n += p[i].n;
    }
    s->dt += now() - t0;
}

static double avg_batch(keel_queue *q)
{
    keel_queue_stats st;
    keel_error e;
    if (keel_queue_stats_get(q, &st, &e))
        die("stats", e.msg);
    return st.commits ? (double)st.enqueued / (double)st.commits : 1;
}

/* --- plain SQLite ------------------------------------------------------------------ */

/* The tables and indexes lib/queue/queue.c has for normal messages (one
 * table per class; the bench enqueues normal ones). */
static const char schema[] =
    "CREATE TABLE msgs_normal(id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
    "  expires_at INTEGER, size INTEGER NOT NULL, topic TEXT NOT NULL, ctype TEXT NOT NULL,"
    "  idem TEXT, payload BLOB NOT NULL);"
    "CREATE INDEX msgs_normal_expiry ON msgs_normal(expires_at) WHERE expires_at IS NOT NULL;"
    "CREATE TABLE idem(key TEXT PRIMARY KEY, id INTEGER NOT NULL, prio INTEGER NOT NULL,"
    "  at INTEGER NOT NULL) WITHOUT ROWID;";

typedef struct plain {
    sqlite3 *db;
    sqlite3_stmt *ins, *begin, *commit;
    int64_t id;
} plain;

static void ok(sqlite3 *db, int rc, int want, const char *what)
{
    if (rc != want)
        die(what, db ? sqlite3_errmsg(db) : "failed");
}

static void plain_open(plain *p)
{
    rm_db("plain.db");
    p->id = 1;
    ok(NULL,
       sqlite3_open_v2(path_in("plain.db"), &p->db,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL),
       SQLITE_OK, "open plain.db");
    ok(p->db,
       sqlite3_exec(p->db,
                    "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=FULL; PRAGMA journal_size_limit=8388608;"
                    "PRAGMA cache_size=-2048;",
                    NULL, NULL, NULL),
       SQLITE_OK, "pragmas");
    ok(p->db, sqlite3_exec(p->db, schema, NULL, NULL, NULL), SQLITE_OK, "schema");
    ok(p->db,
       sqlite3_prepare_v2(p->db,
                          "INSERT INTO msgs_normal(id, created_at, expires_at, size, topic,"
                          " ctype, idem, payload) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                          -1, &p->ins, NULL),
       SQLITE_OK, "prepare");
    ok(p->db, sqlite3_prepare_v2(p->db, "BEGIN IMMEDIATE", -1, &p->begin, NULL), SQLITE_OK,
       "prepare");
    ok(p->db, sqlite3_prepare_v2(p->db, "COMMIT", -1, &p->commit, NULL), SQLITE_OK, "prepare");
}

static void plain_close(plain *p)
{
    sqlite3_finalize(p->ins);
    sqlite3_finalize(p->begin);
    sqlite3_finalize(p->commit);
    sqlite3_close(p->db);
    rm_db("plain.db");
}

/* Inserts for t seconds in transactions of batch rows. */
static void plain_slice(plain *p, size_t batch, double t, side *s)
{
    sqlite3 *db = p->db;
    double t0 = now(), until = t0 + t;
    while (now() < until) {
        ok(db, sqlite3_step(p->begin), SQLITE_DONE, "begin");
        sqlite3_reset(p->begin);
        for (size_t i = 0; i < batch; i++) {
            sqlite3_bind_int64(p->ins, 1, p->id++);
            sqlite3_bind_int64(p->ins, 2, (sqlite3_int64)time(NULL));
            sqlite3_bind_null(p->ins, 3);
            sqlite3_bind_int64(p->ins, 4, (sqlite3_int64)(payload_len + 11 + 24));
            sqlite3_bind_text(p->ins, 5, "bench/queue", -1, SQLITE_STATIC);
            sqlite3_bind_text(p->ins, 6, "application/octet-stream", -1, SQLITE_STATIC);
            sqlite3_bind_null(p->ins, 7);
            sqlite3_bind_blob64(p->ins, 8, payload, payload_len, SQLITE_STATIC);
            ok(db, sqlite3_step(p->ins), SQLITE_DONE, "insert");
            sqlite3_reset(p->ins);
            s->n++;
        }
        ok(db, sqlite3_step(p->commit), SQLITE_DONE, "commit");
        sqlite3_reset(p->commit);
    }
    s->dt += now() - t0;
}

/* --- the disk ------------------------------------------------------------------------- */

/* 4 KiB at offset 0, then fdatasync, for t seconds. */
static void fdatasync_slice(int fd, double t, side *s)
{
    static char block[4096];
    double t0 = now(), until = t0 + t;
    while (now() < until) {
        memset(block, (int)(s->n & 0xff), sizeof(block));
        if (pwrite(fd, block, sizeof(block), 0) != (ssize_t)sizeof(block) || fdatasync(fd))
            die("fdatasync.bin", "write failed");
        s->n++;
    }
    s->dt += now() - t0;
}

int main(int argc, char **argv)
{
    int producers = 8;
    if (argc < 2) {
        fprintf(stderr, "usage: queue_bench DIR [PRODUCERS [SECONDS [PAYLOAD_BYTES]]]\n");
        return 2;
    }
    snprintf(dir, sizeof(dir), "%s", argv[1]);
    mkdir(dir, 0700);
    if (argc > 2)
        producers = atoi(argv[2]);
    if (argc > 3)
        seconds = atof(argv[3]);
    if (argc > 4)
        payload_len = (size_t)atol(argv[4]);
    if (producers < 1 || producers > 256 || seconds <= 0 || payload_len > sizeof(payload))
        die("arguments", "PRODUCERS 1..256, SECONDS > 0, PAYLOAD_BYTES <= 65536");
    keel_log_set_stderr(false);
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (char)(i * 131 + 7);

    double slice = seconds / ROUNDS;
    int fd = open(path_in("fdatasync.bin"), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die("open fdatasync.bin", "failed");
    side warm = {0};
    fdatasync_slice(fd, 0.3, &warm); /* the disk and the page cache, once */

    /* 1. group commit vs the plain loop at keel's batch size so far */
    side g = {0}, pl = {0};
    plain p;
    keel_queue *q = keel_open(KEEL_QUEUE_GROUP, "group.db");
    plain_open(&p);
    size_t batch = 1;
    for (int r = 0; r < ROUNDS; r++) {
        keel_slice(q, producers, slice, &g);
        batch = (size_t)(avg_batch(q) + 0.5);
        plain_slice(&p, batch < 1 ? 1 : batch, slice, &pl);
    }
    double gbatch = avg_batch(q);
    keel_queue_close(q);
    plain_close(&p);
    rm_db("group.db");

    /* 2. sync vs fdatasync */
    side sy = {0}, fs = {0};
    q = keel_open(KEEL_QUEUE_SYNC, "sync.db");
    for (int r = 0; r < ROUNDS; r++) {
        keel_slice(q, 1, slice, &sy);
        fdatasync_slice(fd, slice, &fs);
    }
    keel_queue_close(q);
    rm_db("sync.db");
    close(fd);
    unlink(path_in("fdatasync.bin"));

    /* 3. group commit with a producer alone vs sync */
    side g1 = {0}, sy1 = {0};
    keel_queue *qs = keel_open(KEEL_QUEUE_SYNC, "sync.db");
    q = keel_open(KEEL_QUEUE_GROUP, "group1.db");
    for (int r = 0; r < ROUNDS; r++) {
        keel_slice(q, 1, slice, &g1);
        keel_slice(qs, 1, slice, &sy1);
    }
    double g1batch = avg_batch(q);
    keel_queue_close(q);
    keel_queue_close(qs);
    rm_db("group1.db");
    rm_db("sync.db");

    printf("\nqueue enqueue rate, %zu-byte payloads, %.1f s per side in %d alternating slices, "
           "in %s\n\n",
           payload_len, seconds, ROUNDS, dir);
    printf("| what | peer | keel | ratio | target |\n|---|---|---|---|---|\n");
    printf("| group commit, %d producers (average batch %.1f) | plain SQLite loop, same rows, "
           "schema and pragmas, %zu rows per transaction: %.0f rows/s | %.0f msg/s | %.2fx | "
           ">= 0.80x |\n",
           producers, gbatch, batch, rate(&pl), rate(&g), rate(&g) / rate(&pl));
    printf("| sync, 1 producer (one fsync per message) | 4 KiB pwrite + fdatasync loop: %.0f/s | "
           "%.0f msg/s | %.2fx | >= 0.80x |\n",
           rate(&fs), rate(&sy), rate(&sy) / rate(&fs));
    printf("| group commit, 1 producer (average batch %.1f) | sync, 1 producer: %.0f msg/s | %.0f "
           "msg/s | %.2fx | (information: no added latency alone) |\n",
           g1batch, rate(&sy1), rate(&g1), rate(&g1) / rate(&sy1));
    return 0;
}
