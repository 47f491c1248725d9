/*
 * fetch.c - resumable, verified download of one package version
 * (docs/update.md, "Downloads").
 *
 * Per file of the signed manifest: nothing when the store holds its blob;
 * else a patch when one is offered against a blob the store holds and it is
 * smaller than the missing chunks; else the file is assembled in
 * work_dir/<hex>.part, in order: chunks held by installed versions are
 * copied, runs of missing chunks are fetched with one Range request each
 * from the first source that has not failed (peers, then origins). Each
 * chunk is hashed as it completes and written only when it matches; the
 * whole file's SHA-256 is computed along the way and checked at the end.
 * A .part found at start is re-hashed chunk by chunk and cut to its verified
 * prefix.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/curl_dl.h"
#include "core/json.h"
#include "keel/crypto.h"
#include "keel/pkg.h"
#include "update/fetch.h"
#include "update/patch.h"

#define MOD          "update"
#define SIG_MAX      (64u * 1024u)
#define USER_AGENT   "keel-fetch/1"
#define PART_SUFFIX  ".part"
#define PATCH_SUFFIX ".patch"

#define RING 8 /* chunk buffers: 2 MiB at most */

typedef struct source {
    char *base; /* without a trailing slash */
    size_t base_len;
    bool peer;
    bool down; /* failed or served a bad chunk: not asked again in this call */
    CURL *h;   /* one easy handle per source: its connection is kept alive */
} source;

typedef struct blob_ref {
    uint8_t sha256[KEEL_SHA256_LEN];
    uint64_t size;
    char path[PATH_MAX];
} blob_ref;

typedef struct local_chunk {
    uint8_t sha256[KEEL_SHA256_LEN];
    uint32_t len;
    uint32_t blob; /* index into blobs */
    uint64_t off;
} local_chunk;

typedef struct fetcher {
    const keel__fetch_opts *o;
    keel__fetch_stats *st;
    keel_limits lim;
    source *src;
    size_t nsrc;
    blob_ref *blobs; /* every installed file whose blob is on disk, sorted by hash */
    size_t nblobs;
    local_chunk *chunks; /* every chunk of those, sorted by hash */
    size_t nchunks;
    uint8_t *buf; /* the chunk being filled: a free slot of the ring below */
    /* The whole-file SHA-256 runs on a second thread: verified chunks are
     * handed over in a ring of chunk buffers, so hashing the file overlaps
     * receiving, checking and writing the next chunks. */
    keel_sha256 *whole;
    pthread_t hasher;
    bool hasher_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *ring[RING];
    uint32_t ring_len[RING];
    size_t head, tail; /* slots handed over / hashed; head - tail <= RING */
    bool stop;
    uint64_t pace_start_ns, pace_bytes; /* this request, for max_bytes_per_s */
} fetcher;

/* --- small helpers ----------------------------------------------------------------- */

static int cmp_hash(const void *a, const void *b)
{
    return memcmp(a, b, KEEL_SHA256_LEN);
}

static const blob_ref *find_blob(const fetcher *f, const uint8_t sha[KEEL_SHA256_LEN])
{
    return f->nblobs ? bsearch(sha, f->blobs, f->nblobs, sizeof(*f->blobs), cmp_hash) : NULL;
}

static const local_chunk *find_chunk(const fetcher *f, const uint8_t sha[KEEL_SHA256_LEN],
                                     uint32_t len)
{
    const local_chunk *c =
        f->nchunks ? bsearch(sha, f->chunks, f->nchunks, sizeof(*f->chunks), cmp_hash) : NULL;
    return c && c->len == len ? c : NULL;
}

static bool cancelled(const fetcher *f)
{
    return f->o->cancel && atomic_load(f->o->cancel);
}

static void *hasher_main(void *arg)
{
    fetcher *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (f->tail == f->head && !f->stop)
            pthread_cond_wait(&f->cv, &f->mu);
        if (f->tail == f->head)
            break;
        size_t i = f->tail % RING;
        pthread_mutex_unlock(&f->mu);
        keel_sha256_update(f->whole, f->ring[i], f->ring_len[i]);
        pthread_mutex_lock(&f->mu);
        f->tail++;
        pthread_cond_broadcast(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* Hands f->buf's len verified bytes to the whole-file hash and moves f->buf
 * to the next free slot. */
static void whole_feed(fetcher *f, uint32_t len)
{
    pthread_mutex_lock(&f->mu);
    f->ring_len[f->head % RING] = len;
    f->head++;
    pthread_cond_broadcast(&f->cv);
    while (f->head - f->tail >= RING)
        pthread_cond_wait(&f->cv, &f->mu);
    f->buf = f->ring[f->head % RING];
    pthread_mutex_unlock(&f->mu);
}

/* Waits for the hasher to catch up; the digest of everything fed since
 * the last call (which also starts a new file). */
static void whole_final(fetcher *f, uint8_t out[KEEL_SHA256_LEN])
{
    pthread_mutex_lock(&f->mu);
    while (f->tail != f->head)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    keel_sha256_final(f->whole, out);
}

static void work_path(const fetcher *f, const char *hex, const char *suffix, char *out, size_t n)
{
    snprintf(out, n, "%s/%s%s", f->o->work_dir, hex, suffix);
}

/* The bandwidth cap, kept here in the write callbacks: libcurl's
 * CURLOPT_MAX_RECV_SPEED_LARGE is set too, but some versions (7.88) do not
 * hold it on a fast link. Sleeps while this request is ahead of the cap. */
static void pace_begin(fetcher *f)
{
    f->pace_start_ns = keel__now_mono_ns();
    f->pace_bytes = 0;
}

static void pace(fetcher *f, size_t len)
{
    uint64_t rate = f->o->max_bytes_per_s;
    if (!rate)
        return;
    f->pace_bytes += len;
    for (;;) {
        uint64_t due = (uint64_t)((double)f->pace_bytes * 1e9 / (double)rate);
        uint64_t spent = keel__now_mono_ns() - f->pace_start_ns;
        if (spent >= due || cancelled(f))
            return;
        uint64_t ns = due - spent > 100000000u ? 100000000u : due - spent;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ns};
        nanosleep(&ts, NULL);
    }
}

/* --- what the store already holds -------------------------------------------------- */

static int add_blob(fetcher *f, const keel_file *kf, const char *path, size_t *cap)
{
    if (*cap == f->nblobs) {
        size_t ncap = *cap ? *cap * 2 : 16;
        void *p = realloc(f->blobs, ncap * sizeof(*f->blobs));
        if (!p)
            return KEEL_ENOMEM;
        f->blobs = p;
        *cap = ncap;
    }
    blob_ref *b = &f->blobs[f->nblobs++];
    memcpy(b->sha256, kf->sha256, KEEL_SHA256_LEN);
    b->size = kf->size;
    keel__strlcpy(b->path, path, sizeof(b->path));
    return KEEL_OK;
}

static int add_chunks(fetcher *f, const keel_file *kf, uint32_t blob, size_t *cap)
{
    for (size_t i = 0; i < kf->nchunks; i++) {
        if (*cap == f->nchunks) {
            size_t ncap = *cap ? *cap * 2 : 256;
            void *p = realloc(f->chunks, ncap * sizeof(*f->chunks));
            if (!p)
                return KEEL_ENOMEM;
            f->chunks = p;
            *cap = ncap;
        }
        local_chunk *c = &f->chunks[f->nchunks++];
        memcpy(c->sha256, kf->chunks[i].sha256, KEEL_SHA256_LEN);
        c->len = kf->chunks[i].len;
        c->off = kf->chunks[i].offset;
        c->blob = blob;
    }
    return KEEL_OK;
}

/* Indexes the files and chunks of one installed version whose blobs are on
 * disk with the recorded size (install_dir verifies them again). */
static int index_version(fetcher *f, const char *name, const char *ver, size_t *bcap, size_t *ccap,
                         keel_error *err)
{
    char *mj = NULL;
    size_t mlen;
    keel_manifest *m = NULL;
    int rc = keel_store_version_manifest(f->o->store, name, ver, &mj, &mlen, err);
    if (!rc)
        rc = keel_manifest_parse(mj, mlen, &f->lim, &m, err);
    free(mj);
    if (rc)
        return keel__err_prefix(err, "reading installed %s %s", name, ver);
    for (size_t i = 0; !rc && i < keel_manifest_nfiles(m); i++) {
        const keel_file *kf = keel_manifest_file(m, i);
        char path[PATH_MAX];
        struct stat sb;
        keel_error e;
        if (keel_store_version_file(f->o->store, name, ver, kf->path, path, sizeof(path), &e) ||
            stat(path, &sb) != 0 || (uint64_t)sb.st_size != kf->size)
            continue;
        if (add_blob(f, kf, path, bcap) || add_chunks(f, kf, (uint32_t)(f->nblobs - 1), ccap))
            rc = keel__err(err, KEEL_ENOMEM, "out of memory indexing installed chunks");
    }
    keel_manifest_free(m);
    return rc;
}

static int index_store(fetcher *f, keel_error *err)
{
    char *js = NULL;
    cJSON *root = NULL;
    size_t bcap = 0, ccap = 0;
    int rc;
    if (!f->o->store)
        return KEEL_OK;
    if ((rc = keel_store_list_json(f->o->store, &js, err)) ||
        (rc = keel__json_parse(js, strlen(js), "the store's package list", &root, err)))
        goto out;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(root, "packages"))
    {
        const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "name"));
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "version"));
        if (n && v && (rc = index_version(f, n, v, &bcap, &ccap, err)))
            goto out;
    }
    /* Sort both for bsearch; chunks' blob indices are moved to the sorted
     * blobs (equal hashes are equal bytes: any copy serves). */
    if (f->nblobs) {
        blob_ref *sorted = malloc(f->nblobs * sizeof(*sorted));
        uint32_t *where = malloc(f->nblobs * sizeof(*where));
        if (!sorted || !where) {
            free(sorted);
            free(where);
            rc = keel__err(err, KEEL_ENOMEM, "out of memory indexing installed chunks");
            goto out;
        }
        memcpy(sorted, f->blobs, f->nblobs * sizeof(*sorted));
        qsort(sorted, f->nblobs, sizeof(*sorted), cmp_hash);
        for (size_t i = 0; i < f->nblobs; i++) {
            const blob_ref *b =
                bsearch(f->blobs[i].sha256, sorted, f->nblobs, sizeof(*sorted), cmp_hash);
            where[i] = (uint32_t)(b - sorted);
        }
        for (size_t i = 0; i < f->nchunks; i++)
            f->chunks[i].blob = where[f->chunks[i].blob];
        free(f->blobs);
        f->blobs = sorted;
        free(where);
    }
    if (f->nchunks)
        qsort(f->chunks, f->nchunks, sizeof(*f->chunks), cmp_hash);
out:
    cJSON_Delete(root);
    free(js);
    return rc;
}

/* --- HTTP ---------------------------------------------------------------------------- */

typedef struct mem_sink {
    char *data;
    size_t len, max;
    bool too_big;
} mem_sink;

static size_t mem_write(char *p, size_t size, size_t n, void *ud)
{
    mem_sink *m = ud;
    size_t len = size * n;
    if (m->len + len > m->max) {
        m->too_big = true;
        return 0;
    }
    char *d = realloc(m->data, m->len + len + 1);
    if (!d)
        return 0;
    memcpy(d + m->len, p, len);
    m->data = d;
    m->len += len;
    d[m->len] = '\0';
    return len;
}

static int xfer_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    return cancelled(ud) ? 1 : 0;
}

static bool is_file(const source *s)
{
    return !strncmp(s->base, "file:", 5);
}

/* Sets what every request of a source shares; the handle is kept between
 * requests so the connection stays open. */
static void setup_handle(fetcher *f, source *s)
{
    CURL *h = s->h;
    long t = f->o->timeout_s ? (long)f->o->timeout_s : 30L;
    curl_easy_reset(h);
    (void)curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    /* file://: a repository folder (a mounted stick, a share); no status codes there */
    (void)curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
    (void)curl_easy_setopt(h, CURLOPT_USERAGENT, USER_AGENT);
    (void)curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, t);
    (void)curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    (void)curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, t);
    (void)curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    (void)curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, xfer_progress);
    (void)curl_easy_setopt(h, CURLOPT_XFERINFODATA, f);
    (void)curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L * 1024L);
    if (f->o->max_bytes_per_s)
        (void)curl_easy_setopt(h, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)f->o->max_bytes_per_s);
    pace_begin(f);
}

/* GET url into memory (at most max bytes). */
static int get_small(fetcher *f, source *s, const char *url, size_t max, mem_sink *ms,
                     keel_error *err)
{
    long code = 0;
    memset(ms, 0, sizeof(*ms));
    ms->max = max;
    setup_handle(f, s);
    (void)curl_easy_setopt(s->h, CURLOPT_URL, url);
    (void)curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, mem_write);
    (void)curl_easy_setopt(s->h, CURLOPT_WRITEDATA, ms);
    CURLcode cc = curl_easy_perform(s->h);
    (void)curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
    if (!code && cc == CURLE_OK && is_file(s))
        code = 200;
    if (ms->too_big)
        return keel__err(err, KEEL_ETOOBIG, "%s is larger than %zu bytes", url, max);
    if (cc == CURLE_ABORTED_BY_CALLBACK && cancelled(f))
        return keel__err(err, KEEL_EBUSY, "download cancelled");
    if (cc != CURLE_OK)
        return keel__err(err, KEEL_ENOCONN, "cannot fetch %s: %s", url, curl_easy_strerror(cc));
    if (code != 200)
        return keel__err(err, code == 404 ? KEEL_ENOTFOUND : KEEL_ENOCONN,
                         "cannot fetch %s: HTTP %ld", url, code);
    return KEEL_OK;
}

/* --- the manifest -------------------------------------------------------------------- */

static int fetch_doc(fetcher *f, const char *name, const char *version, const char *doc, size_t max,
                     const uint8_t *want_sha, mem_sink *out, keel_error *err)
{
    int rc = keel__err(err, KEEL_ENOCONN, "no origin repository configured");
    for (size_t i = 0; i < f->nsrc; i++) {
        source *s = &f->src[i];
        char url[4096];
        if (s->peer)
            continue;
        char *en = curl_easy_escape(s->h, name, 0), *ev = curl_easy_escape(s->h, version, 0);
        snprintf(url, sizeof(url), "%s/packages/%s/%s/%s", s->base, en ? en : name,
                 ev ? ev : version, doc);
        curl_free(en);
        curl_free(ev);
        rc = get_small(f, s, url, max, out, err);
        if (!rc && want_sha) {
            uint8_t got[KEEL_SHA256_LEN];
            keel_sha256_buf(out->data, out->len, got);
            if (memcmp(got, want_sha, KEEL_SHA256_LEN) != 0)
                rc = keel__err(err, KEEL_ECORRUPT,
                               "%s does not match the digest the repository index signed "
                               "(a wrong or tampered mirror)",
                               url);
        }
        if (!rc)
            return KEEL_OK;
        free(out->data);
        memset(out, 0, sizeof(*out));
        if (rc == KEEL_EBUSY)
            return rc;
    }
    return rc;
}

/* keel.json (kept when work_dir holds one that hashes to digest) and keel.sig
 * (always fetched again: it is small, and a bad one must not stick). */
static int get_manifest(fetcher *f, const char *name, const char *version, const char *digest,
                        keel_manifest **ret, keel_error *err)
{
    uint8_t want[KEEL_SHA256_LEN], got[KEEL_SHA256_LEN];
    char path[PATH_MAX], *have = NULL;
    size_t have_len = 0;
    mem_sink doc = {0}, sig = {0};
    int rc;
    if (strncmp(digest, "sha256:", 7) != 0 || strlen(digest) != 7 + 64 ||
        keel_hex_decode(digest + 7, 64, want, sizeof(want)))
        return keel__err(err, KEEL_EINVALID, "bad digest '%s': expected sha256:<64 hex>", digest);
    snprintf(path, sizeof(path), "%s/%s", f->o->work_dir, KEEL_MANIFEST_NAME);
    if (keel__fs_read(path, f->lim.max_manifest_bytes, &have, &have_len, err) == KEEL_OK) {
        keel_sha256_buf(have, have_len, got);
        if (memcmp(got, want, sizeof(got)) == 0) {
            doc.data = have;
            doc.len = have_len;
            have = NULL;
        }
    }
    free(have);
    if (!doc.data) {
        if ((rc = fetch_doc(f, name, version, KEEL_MANIFEST_NAME, f->lim.max_manifest_bytes, want,
                            &doc, err)) ||
            (rc = keel__fs_write_atomic(path, doc.data, doc.len, 0644, err)))
            goto out;
    }
    if ((rc = fetch_doc(f, name, version, KEEL_SIG_NAME, SIG_MAX, NULL, &sig, err)))
        goto out;
    snprintf(path, sizeof(path), "%s/%s", f->o->work_dir, KEEL_SIG_NAME);
    if ((rc = keel__fs_write_atomic(path, sig.data, sig.len, 0644, err)))
        goto out;
    if ((rc = keel_manifest_parse(doc.data, doc.len, &f->lim, ret, err)))
        goto out;
    if (strcmp(keel_manifest_name(*ret), name) != 0 ||
        strcmp(keel_manifest_version(*ret), version) != 0) {
        rc = keel__err(err, KEEL_EINVALID, "the manifest at %s names %s %s, not %s %s", digest,
                       keel_manifest_name(*ret), keel_manifest_version(*ret), name, version);
        keel_manifest_free(*ret);
        *ret = NULL;
    }
out:
    free(doc.data);
    free(sig.data);
    return rc;
}

/* --- one file: its chunks -------------------------------------------------------------- */

/* Where the .part stands: chunks [0, next) verified and written. */
typedef struct part {
    const keel_file *kf;
    char hex[KEEL_SHA256_HEX];
    char path[PATH_MAX];
    int fd;
    size_t next;
    uint64_t done;   /* bytes verified = offset of chunk next */
    uint64_t synced; /* writeback started up to here */
} part;

#define WRITEBACK_STEP (8u << 20)

/* Appends verified bytes to the .part. Writeback is started every 8 MiB
 * (sync_file_range, asynchronous) so the fsync at the end or at a cut has
 * little left to write: on a fast link it otherwise costs as much as the
 * transfer. */
static int part_append(part *p, const void *data, size_t len)
{
    if (keel__fs_write_all(p->fd, data, len) != 0)
        return -1;
    uint64_t end = p->done + len;
    if (end - p->synced >= WRITEBACK_STEP) {
        (void)sync_file_range(p->fd, (off_t)p->synced, (off_t)(end - p->synced),
                              SYNC_FILE_RANGE_WRITE);
        p->synced = end;
    }
    return 0;
}

/* A streamed Range request for chunks [p->next, end). */
typedef struct xfer {
    fetcher *f;
    source *s;
    part *p;
    size_t end;
    uint32_t have; /* bytes of chunk p->next in f->buf */
    bool bad, io_failed, status_bad;
    long status;
    uint64_t first; /* offset the request starts at */
    keel_error io_err;
} xfer;

static int chunk_done(xfer *x)
{
    fetcher *f = x->f;
    part *p = x->p;
    const keel_chunk *c = &p->kf->chunks[p->next];
    uint8_t got[KEEL_SHA256_LEN];
    keel_sha256_buf(f->buf, c->len, got);
    if (memcmp(got, c->sha256, KEEL_SHA256_LEN) != 0) {
        x->bad = true;
        f->st->bad_chunks++;
        f->st->wasted += c->len;
        return -1;
    }
    if (part_append(p, f->buf, c->len) != 0) {
        x->io_failed = true;
        keel__err_errno(&x->io_err, keel__err_from_errno(errno), errno, "cannot write %s", p->path);
        return -1;
    }
    whole_feed(f, c->len);
    if (x->s->peer)
        f->st->from_peers += c->len;
    else
        f->st->from_origin += c->len;
    p->done += c->len;
    p->next++;
    x->have = 0;
    return 0;
}

static size_t xfer_write(char *data, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n, used = 0;
    pace(x->f, len);
    if (!x->status) {
        (void)curl_easy_getinfo(x->s->h, CURLINFO_RESPONSE_CODE, &x->status);
        /* 206 for the range; 200 only when the range was the whole file. */
        bool whole = x->first == 0 && x->end == x->p->kf->nchunks;
        if (!x->status && is_file(x->s)) /* file:// honours the range, says nothing */
            x->status = 206;
        if (x->status != 206 && !(x->status == 200 && whole)) {
            x->status_bad = true;
            return 0;
        }
    }
    while (used < len) {
        if (x->p->next >= x->end) { /* more than asked for */
            x->f->st->wasted += len - used;
            x->status_bad = true;
            return 0;
        }
        uint32_t clen = x->p->kf->chunks[x->p->next].len;
        size_t take = clen - x->have;
        if (take > len - used)
            take = len - used;
        memcpy(x->f->buf + x->have, data + used, take);
        x->have += (uint32_t)take;
        used += take;
        if (x->have == clen && chunk_done(x) != 0)
            return 0;
    }
    return len;
}

static void source_failed(fetcher *f, source *s, const char *why)
{
    s->down = true;
    if (s->peer && f->o->peer_bad)
        f->o->peer_bad(f->o->ctx, s->base, why);
    KEEL_LOG_W(MOD, "source %s skipped for this download: %s", s->base, why);
}

/* Fetches chunks [p->next, end) from the sources in order. */
static int fetch_run(fetcher *f, part *p, size_t end, keel_error *err)
{
    char last[512] = "no source left to try";
    for (size_t i = 0; i < f->nsrc && p->next < end; i++) {
        source *s = &f->src[i];
        char url[4096], range[64];
        if (s->down)
            continue;
        if (s->peer)
            snprintf(url, sizeof(url), "%s/api/chunks/sha256/%s", s->base, p->hex);
        else
            snprintf(url, sizeof(url), "%s/files/sha256/%.2s/%s", s->base, p->hex, p->hex);
        /* A source that fails is not asked again in this call: a cut link
         * ends the call, and the next check resumes from p->done. */
        xfer x = {.f = f, .s = s, .p = p, .end = end, .first = p->done};
        uint64_t last_byte = p->kf->chunks[end - 1].offset + p->kf->chunks[end - 1].len - 1;
        snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)p->done,
                 (unsigned long long)last_byte);
        setup_handle(f, s);
        (void)curl_easy_setopt(s->h, CURLOPT_URL, url);
        (void)curl_easy_setopt(s->h, CURLOPT_RANGE, range);
        (void)curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, xfer_write);
        (void)curl_easy_setopt(s->h, CURLOPT_WRITEDATA, &x);
        CURLcode cc = curl_easy_perform(s->h);
        f->st->wasted += x.have; /* a chunk cut in the middle */
        if (x.io_failed) {
            *err = x.io_err;
            return err->code;
        }
        if (cc == CURLE_ABORTED_BY_CALLBACK && cancelled(f))
            return keel__err(err, KEEL_EBUSY, "download cancelled");
        if (p->next == end && (cc == CURLE_OK || cc == CURLE_WRITE_ERROR))
            return KEEL_OK;
        if (x.bad) {
            snprintf(last, sizeof(last),
                     "%s served a chunk of %s that does not match its signed "
                     "hash (at byte %llu)",
                     s->base, p->kf->path, (unsigned long long)p->done);
            source_failed(f, s, "served a chunk that does not match its signed hash");
        } else if (x.status_bad || (cc == CURLE_OK && x.status != 206 && x.status != 200)) {
            long code = x.status;
            if (!code)
                (void)curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
            snprintf(last, sizeof(last), "%s answered HTTP %ld for bytes %s of %s", url, code,
                     range, p->kf->path);
            /* A peer without this file is not at fault: skip it for this file only. */
            if (!(s->peer && code == 404))
                source_failed(f, s, last);
        } else {
            snprintf(last, sizeof(last), "%s: %s", url,
                     cc == CURLE_OK ? "the answer ended early" : curl_easy_strerror(cc));
            source_failed(f, s, last);
        }
    }
    if (p->next >= end)
        return KEEL_OK;
    return keel__err(err, KEEL_ENOCONN,
                     "%s: download interrupted (%s); resumes from byte %llu at the next check",
                     p->kf->path, last, (unsigned long long)p->done);
}

/* Copies chunk p->next from an installed blob, hash-checked. */
static int copy_local(fetcher *f, part *p, const local_chunk *lc)
{
    const blob_ref *b = &f->blobs[lc->blob];
    uint8_t got[KEEL_SHA256_LEN];
    int fd = open(b->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t r = pread(fd, f->buf, lc->len, (off_t)lc->off);
    close(fd);
    if (r != (ssize_t)lc->len)
        return -1;
    keel_sha256_buf(f->buf, lc->len, got);
    if (memcmp(got, lc->sha256, sizeof(got)) != 0) {
        KEEL_LOG_W(MOD, "installed blob %s does not match its chunk hash at %llu: not reused",
                   b->path, (unsigned long long)lc->off);
        return -1;
    }
    return 0;
}

/* Re-hashes an existing .part chunk by chunk; keeps the verified prefix. */
static int resume_part(fetcher *f, part *p, keel_error *err)
{
    struct stat sb;
    if (fstat(p->fd, &sb) != 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot stat %s", p->path);
    uint64_t size = (uint64_t)sb.st_size;
    while (p->next < p->kf->nchunks) {
        const keel_chunk *c = &p->kf->chunks[p->next];
        uint8_t got[KEEL_SHA256_LEN];
        if (p->done + c->len > size)
            break;
        if (pread(p->fd, f->buf, c->len, (off_t)p->done) != (ssize_t)c->len)
            break;
        keel_sha256_buf(f->buf, c->len, got);
        if (memcmp(got, c->sha256, sizeof(got)) != 0)
            break;
        whole_feed(f, c->len);
        p->done += c->len;
        p->next++;
    }
    if (p->done)
        f->st->resumes++;
    if (p->done != size) {
        if (ftruncate(p->fd, (off_t)p->done) != 0)
            return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot truncate %s",
                                   p->path);
        if (size > p->done)
            KEEL_LOG_I(MOD, "%s: kept %llu verified bytes of %llu", p->path,
                       (unsigned long long)p->done, (unsigned long long)size);
    }
    p->synced = p->done;
    if (lseek(p->fd, (off_t)p->done, SEEK_SET) < 0)
        return keel__err_errno(err, KEEL_EIO, errno, "cannot seek %s", p->path);
    return KEEL_OK;
}

/* Bytes of chunks [from, n) that neither the .part nor installed blobs hold. */
static uint64_t missing_bytes(const fetcher *f, const keel_file *kf, size_t from)
{
    uint64_t m = 0;
    for (size_t i = from; i < kf->nchunks; i++)
        if (!find_chunk(f, kf->chunks[i].sha256, kf->chunks[i].len))
            m += kf->chunks[i].len;
    return m;
}

static int keep_part(part *p, keel_error *err)
{
    if (p->fd >= 0 && keel__fs_fsync(p->fd) != 0)
        return keel__err_errno(err, KEEL_EIO, errno, "cannot sync %s", p->path);
    return KEEL_OK;
}

/* Assembles kf's chunks in order into its .part, then renames it to <hex>. */
static int fetch_chunks(fetcher *f, part *p, keel_error *err)
{
    const keel_file *kf = p->kf;
    int rc = KEEL_OK;
    while (!rc && p->next < kf->nchunks) {
        if (cancelled(f))
            return keel__err(err, KEEL_EBUSY, "download cancelled");
        const keel_chunk *c = &kf->chunks[p->next];
        const local_chunk *lc = find_chunk(f, c->sha256, c->len);
        if (lc && copy_local(f, p, lc) == 0) {
            if (part_append(p, f->buf, c->len) != 0)
                return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot write %s",
                                       p->path);
            whole_feed(f, c->len);
            f->st->from_local += c->len;
            p->done += c->len;
            p->next++;
            continue;
        }
        size_t end = p->next + 1; /* a run: consecutive chunks no installed blob holds */
        while (end < kf->nchunks && !find_chunk(f, kf->chunks[end].sha256, kf->chunks[end].len))
            end++;
        rc = fetch_run(f, p, end, err);
    }
    return rc;
}

/* --- one file: a patch ----------------------------------------------------------------- */

/* The offered patch usable for kf: `from` a blob the store holds, cheaper
 * than the missing chunks. NULL when none. */
static const keel__repo_patch *usable_patch(const fetcher *f, const keel_file *kf, uint64_t missing,
                                            const blob_ref **base)
{
    char hex[KEEL_SHA256_HEX];
    keel_hex_encode(kf->sha256, KEEL_SHA256_LEN, hex);
    const keel__repo_patch *best = NULL;
    for (size_t i = 0; i < f->o->npatches; i++) {
        const keel__repo_patch *pt = &f->o->patches[i];
        uint8_t from[KEEL_SHA256_LEN];
        const blob_ref *b;
        if (strcmp(pt->to, hex) != 0 || strcmp(pt->codec, KEEL__PATCH_CODEC) != 0 ||
            pt->size >= missing || (best && best->size <= pt->size) ||
            keel_hex_decode(pt->from, strlen(pt->from), from, sizeof(from)) ||
            !(b = find_blob(f, from)))
            continue;
        best = pt;
        *base = b;
    }
    return best;
}

typedef struct file_sink {
    fetcher *f;
    int fd;
} file_sink;

static size_t file_write(char *data, size_t size, size_t n, void *ud)
{
    file_sink *fs = ud;
    pace(fs->f, size * n);
    return keel__fs_write_all(fs->fd, data, size * n) == 0 ? size * n : 0;
}

/* Downloads the patch (resuming a partial one by Range) and checks its
 * signed SHA-256. */
static int fetch_patch(fetcher *f, const keel__repo_patch *pt, const char *path, keel_error *err)
{
    uint8_t want[KEEL_SHA256_LEN], got[KEEL_SHA256_LEN];
    char last[512] = "no origin repository configured";
    if (keel_hex_decode(pt->sha256, strlen(pt->sha256), want, sizeof(want)))
        return keel__err(err, KEEL_EINVALID, "bad patch hash '%s'", pt->sha256);
    for (size_t i = 0; i < f->nsrc; i++) {
        source *s = &f->src[i];
        char url[4096], range[48];
        long code = 0;
        struct stat sb;
        if (s->peer || s->down)
            continue;
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0)
            return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", path);
        uint64_t have = fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        if (have > pt->size) {
            close(fd);
            unlink(path);
            i--; /* start again with an empty file */
            continue;
        }
        snprintf(url, sizeof(url), "%s/patches/sha256/%.2s/%s", s->base, pt->sha256, pt->sha256);
        snprintf(range, sizeof(range), "%llu-", (unsigned long long)have);
        CURLcode cc = CURLE_OK;
        if (have < pt->size) {
            setup_handle(f, s);
            (void)curl_easy_setopt(s->h, CURLOPT_URL, url);
            (void)curl_easy_setopt(s->h, CURLOPT_FAILONERROR, 1L); /* no error page in the file */
            if (have)
                (void)curl_easy_setopt(s->h, CURLOPT_RANGE, range);
            file_sink fsk = {f, fd};
            (void)curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, file_write);
            (void)curl_easy_setopt(s->h, CURLOPT_WRITEDATA, &fsk);
            cc = curl_easy_perform(s->h);
            (void)curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
        }
        uint64_t now = fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        (void)keel__fs_fsync(fd);
        close(fd);
        f->st->from_patches += now - have;
        if (have && code == 200) { /* Range ignored: the body was the whole patch again */
            f->st->wasted += now - have;
            unlink(path);
            snprintf(last, sizeof(last), "%s ignored the byte range", url);
            continue;
        }
        if (now < pt->size) {
            snprintf(last, sizeof(last), "%s: %s", url,
                     cc != CURLE_OK ? curl_easy_strerror(cc) : "HTTP error or short answer");
            if (cc == CURLE_ABORTED_BY_CALLBACK && cancelled(f))
                return keel__err(err, KEEL_EBUSY, "download cancelled");
            continue;
        }
        int rc = keel_sha256_file(path, got, NULL, err);
        if (rc)
            return rc;
        if (now == pt->size && memcmp(got, want, sizeof(got)) == 0)
            return KEEL_OK;
        f->st->wasted += now;
        unlink(path);
        return keel__err(err, KEEL_ECORRUPT,
                         "patch %s does not match its signed hash and size (from %s)", pt->sha256,
                         url);
    }
    return keel__err(err, KEEL_ENOCONN, "cannot fetch patch %s: %s", pt->sha256, last);
}

/* --- one file ------------------------------------------------------------------------------ */

static int finish_part(fetcher *f, part *p, const char *final, keel_error *err)
{
    uint8_t got[KEEL_SHA256_LEN];
    char ghex[KEEL_SHA256_HEX];
    whole_final(f, got);
    if (memcmp(got, p->kf->sha256, sizeof(got)) != 0) {
        keel_hex_encode(got, sizeof(got), ghex);
        close(p->fd);
        p->fd = -1;
        unlink(p->path);
        return keel__err(err, KEEL_ECORRUPT,
                         "%s: the assembled file hashes to %s, the manifest says %s (its chunk "
                         "list does not add up to the file); fetched again at the next check",
                         p->kf->path, ghex, p->hex);
    }
    int rc = keep_part(p, err);
    close(p->fd);
    p->fd = -1;
    if (!rc && keel__fs_rename(p->path, final) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot rename %s to %s",
                             p->path, final);
    return rc;
}

/* A finished <hex> in work_dir from an earlier call: kept only if it hashes
 * right (nothing on disk is trusted without a hash). */
static bool already_fetched(const char *final, const keel_file *kf)
{
    struct stat sb;
    uint8_t got[KEEL_SHA256_LEN];
    keel_error e;
    if (stat(final, &sb) != 0)
        return false;
    if ((uint64_t)sb.st_size == kf->size && keel_sha256_file(final, got, NULL, &e) == KEEL_OK &&
        memcmp(got, kf->sha256, sizeof(got)) == 0)
        return true;
    unlink(final);
    return false;
}

static int try_patch(fetcher *f, part *p, const char *final)
{
    const blob_ref *base = NULL;
    const keel__repo_patch *pt = usable_patch(f, p->kf, missing_bytes(f, p->kf, p->next), &base);
    char ppath[PATH_MAX];
    keel_error e;
    if (!pt)
        return -1;
    work_path(f, pt->sha256, PATCH_SUFFIX, ppath, sizeof(ppath));
    int rc = fetch_patch(f, pt, ppath, &e);
    if (!rc)
        rc = keel__patch_apply(base->path, ppath, final, p->kf->sha256, &e);
    if (rc == KEEL_EBUSY)
        return -1;
    unlink(ppath);
    if (!rc)
        return 0;
    f->st->patch_failures++;
    KEEL_LOG_W(MOD, "%s: patch %s not used (%s); fetching chunks instead", p->kf->path, pt->sha256,
               e.msg);
    return -1;
}

static int fetch_file(fetcher *f, const keel_file *kf, keel_error *err)
{
    part p = {.kf = kf, .fd = -1};
    char final[PATH_MAX];
    int rc;
    keel_hex_encode(kf->sha256, KEEL_SHA256_LEN, p.hex);
    work_path(f, p.hex, "", final, sizeof(final));
    work_path(f, p.hex, PART_SUFFIX, p.path, sizeof(p.path));
    if (already_fetched(final, kf))
        return KEEL_OK;
    if (kf->size > 0 && kf->nchunks == 0)
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "%s has no chunk list: it cannot be verified while it arrives; "
                         "republish the package with keel pack",
                         kf->path);
    uint8_t scratch[KEEL_SHA256_LEN];
    whole_final(f, scratch); /* starts the whole-file hash afresh */
    p.fd = open(p.path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (p.fd < 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", p.path);
    if ((rc = resume_part(f, &p, err)))
        goto out;
    if (p.next < kf->nchunks && try_patch(f, &p, final) == 0) {
        close(p.fd);
        p.fd = -1;
        unlink(p.path);
        return KEEL_OK;
    }
    if ((rc = fetch_chunks(f, &p, err)))
        goto out;
    rc = finish_part(f, &p, final, err);
out:
    if (p.fd >= 0) {
        keel_error e2;
        if (keep_part(&p, &e2) && !rc)
            rc = keel__err(err, e2.code, "%s", e2.msg);
        close(p.fd);
    }
    return rc;
}

/* --- the package ------------------------------------------------------------------------------ */

static int trim_base(source *s, const char *url, bool peer)
{
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    s->base = strndup(url, n);
    s->base_len = n;
    s->peer = peer;
    s->h = curl_easy_init();
    return s->base && s->h ? KEEL_OK : KEEL_ENOMEM;
}

static void fetcher_free(fetcher *f)
{
    for (size_t i = 0; i < f->nsrc; i++) {
        if (f->src[i].h)
            curl_easy_cleanup(f->src[i].h);
        free(f->src[i].base);
    }
    free(f->src);
    free(f->blobs);
    free(f->chunks);
    if (f->hasher_started) {
        pthread_mutex_lock(&f->mu);
        f->stop = true;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->hasher, NULL);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    for (size_t i = 0; i < RING; i++)
        free(f->ring[i]);
    keel_sha256_free(f->whole);
}

int keel__fetch_package(const keel__fetch_opts *o, const char *name, const char *version,
                        const char *digest, keel__fetch_stats *st, keel_error *err)
{
    fetcher f = {.o = o, .st = st};
    keel_manifest *m = NULL;
    int rc;
    memset(st, 0, sizeof(*st));
    keel_limits_default(&f.lim);
    if (!o->work_dir || !o->norigins)
        return keel__err(err, KEEL_EINVALID, "a download needs a work dir and a repository URL");
    if ((rc = keel__curl_load(err)) || (rc = keel__fs_mkdir_p(o->work_dir, 0700, err)))
        return rc;
    f.nsrc = o->npeers + o->norigins;
    f.src = calloc(f.nsrc, sizeof(*f.src));
    f.whole = keel_sha256_new();
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);
    bool ring_ok = true;
    for (size_t i = 0; i < RING; i++)
        ring_ok = (f.ring[i] = malloc(KEEL_CHUNK_MAX)) != NULL && ring_ok;
    f.buf = f.ring[0];
    if (!f.src || !ring_ok || !f.whole) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory");
        goto out;
    }
    if (pthread_create(&f.hasher, NULL, hasher_main, &f) != 0) {
        rc = keel__err(err, KEEL_ENOMEM, "cannot start the hashing thread");
        goto out;
    }
    f.hasher_started = true;
    for (size_t i = 0; i < f.nsrc; i++) {
        bool peer = i < o->npeers;
        if (trim_base(&f.src[i], peer ? o->peers[i] : o->origins[i - o->npeers], peer)) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory");
            goto out;
        }
    }
    if ((rc = index_store(&f, err)) || (rc = get_manifest(&f, name, version, digest, &m, err)))
        goto out;
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++) {
        const keel_file *kf = keel_manifest_file(m, i);
        bool dup = false;
        if (find_blob(&f, kf->sha256))
            continue; /* identical files never travel */
        for (size_t j = 0; j < i && !dup; j++)
            dup = memcmp(keel_manifest_file(m, j)->sha256, kf->sha256, KEEL_SHA256_LEN) == 0;
        if (!dup)
            st->needed += kf->size;
    }
    for (size_t i = 0; i < keel_manifest_nfiles(m); i++) {
        const keel_file *kf = keel_manifest_file(m, i);
        if (find_blob(&f, kf->sha256))
            continue;
        if ((rc = fetch_file(&f, kf, err)))
            goto out;
    }
    KEEL_LOG_I(MOD,
               "fetched %s %s: %llu bytes needed, %llu from origin, %llu from peers, %llu local, "
               "%llu by patches, %llu wasted",
               name, version, (unsigned long long)st->needed, (unsigned long long)st->from_origin,
               (unsigned long long)st->from_peers, (unsigned long long)st->from_local,
               (unsigned long long)st->from_patches, (unsigned long long)st->wasted);
out:
    keel_manifest_free(m);
    fetcher_free(&f);
    return rc;
}
