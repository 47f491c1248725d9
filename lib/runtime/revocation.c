/*
 * revocation.c - the trust in force reaches what is installed. Every
 * installed version is re-checked against the trust dir (keel_store_recheck)
 * at start, when the trust dir changes on disk (a stat signature of its
 * files, compared every trust_check_interval on the jobs thread), on SIGHUP
 * (keel__runtime_reload), before a slot action, and when another part of
 * the runtime has installed a revocation list or a root rotation
 * (keel__runtime_trust_changed). Then what serves and readiness follow, a
 * TRUST event says what was checked, and one REVOKED event per newly revoked
 * version carries its package, version, reason and digest (the reporter
 * makes it an alert). docs/security.md, "Revocation of installed versions".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "keel/trust.h"
#include "runtime/rt.h"

#define MOD "runtime"

/* What stat says of one trust file. An atomic write (rename) changes the
 * inode, an edit in place the size, mtime or ctime: any change shows. */
typedef struct file_sig {
    bool present;
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
} file_sig;

static const char *const watched[] = {"root.json", "revoked.json", "revoked.sig"};

typedef struct trust_sig {
    char dir[PATH_MAX];
    file_sig f[KEEL_ARRAY_LEN(watched)];
} trust_sig;

struct keel__rt_revocation {
    pthread_mutex_t mu; /* one re-check at a time, and the fields below */
    int job;
    uint64_t period;
    bool seen_valid;
    trust_sig seen; /* taken before the trust of the last re-check was loaded */
};

static void signature(keel__runtime *rt, trust_sig *ret)
{
    memset(ret, 0, sizeof(*ret));
    keel__rt_trust_dir(rt, ret->dir, sizeof(ret->dir));
    for (size_t i = 0; i < KEEL_ARRAY_LEN(watched); i++) {
        char path[PATH_MAX + 32];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", ret->dir, watched[i]);
        if (stat(path, &st) != 0)
            continue;
        ret->f[i] =
            (file_sig){.present = true,
                       .dev = (uint64_t)st.st_dev,
                       .ino = (uint64_t)st.st_ino,
                       .size = (uint64_t)st.st_size,
                       .mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
                       .ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec};
    }
}

static bool same_signature(const trust_sig *a, const trust_sig *b)
{
    return !strcmp(a->dir, b->dir) && !memcmp(a->f, b->f, sizeof(a->f));
}

static void publish_trust(keel__runtime *rt, const char *dir, bool ok, const char *reason)
{
    keel__bus_event ev = {.type = KEEL__BUS_TRUST, .detail = dir, .ok = ok, .reason = reason};
    keel__bus_publish(rt->bus, &ev);
}

/* Loads the trust in sig->dir and re-checks the store against it; *ret
 * (malloc'd) gets the changes. A trust dir that does not load changes
 * nothing: the marks stay as they are (installs are refused meanwhile). */
static int recheck(keel__runtime *rt, const trust_sig *sig, keel_revocation **ret, size_t *ret_n)
{
    keel_trust *t = NULL;
    keel_error e;
    char summary[256];
    *ret = NULL;
    *ret_n = 0;
    int rc = keel_trust_load(sig->dir, &t, &e);
    if (rc == KEEL_ENOTFOUND) {
        KEEL_LOG_I(MOD, "installed packages not re-checked: %s", e.msg);
        publish_trust(rt, sig->dir, false, e.msg);
        return rc;
    }
    if (rc) {
        KEEL_LOG_E(MOD,
                   "the trust dir does not load, so installed packages keep the revocation "
                   "state they had and every install is refused until it is repaired: %s",
                   e.msg);
        publish_trust(rt, sig->dir, false, e.msg);
        return rc;
    }
    rc = keel_store_recheck(rt->store, t, ret, ret_n, &e);
    if (rc) {
        KEEL_LOG_E(MOD, "%s", e.msg);
        publish_trust(rt, sig->dir, false, e.msg);
    } else {
        size_t nrev = 0;
        for (size_t i = 0; i < *ret_n; i++)
            nrev += (*ret)[i].revoked;
        snprintf(summary, sizeof(summary),
                 "installed packages re-checked against root version %llu, revocation list "
                 "serial %llu: %zu newly revoked, %zu no longer revoked",
                 (unsigned long long)keel_trust_root_version(t),
                 (unsigned long long)keel_trust_revocation_serial(t), nrev, *ret_n - nrev);
        KEEL_LOG_I(MOD, "trust dir %s: %s", sig->dir, summary);
        publish_trust(rt, sig->dir, true, summary);
    }
    keel_trust_free(t);
    return rc;
}

/* STATE_DIR/update/trust.seen: the signature of the trust files the last
 * complete re-check read. At start, when the files still look the same (a
 * change to a file changes its ctime, which user space cannot set back),
 * the marks in keel.db are those that trust gives, and the re-check (which
 * loads the trust and checks every installed version's signatures: ~4 MiB
 * of OpenSSL pages and heap, and milliseconds, for nothing) is skipped. */
static void seen_path(keel__runtime *rt, char *buf, size_t n)
{
    char dir[PATH_MAX];
    keel__runtime_path(rt, KEEL_STATE_UPDATE_DIR, dir, sizeof(dir));
    if (keel__snprintf(buf, n, "%s/trust.seen", dir))
        buf[0] = '\0';
}

static void seen_format(const trust_sig *sig, keel_buf *b)
{
    int rc = keel__buf_appendf(b, "%s\n", sig->dir);
    for (size_t i = 0; !rc && i < KEEL_ARRAY_LEN(watched); i++)
        rc = keel__buf_appendf(b, "%d %llu %llu %llu %lld %lld\n", sig->f[i].present ? 1 : 0,
                               (unsigned long long)sig->f[i].dev, (unsigned long long)sig->f[i].ino,
                               (unsigned long long)sig->f[i].size, (long long)sig->f[i].mtime_ns,
                               (long long)sig->f[i].ctime_ns);
}

static void seen_save(keel__runtime *rt, const trust_sig *sig)
{
    char p[PATH_MAX];
    keel_buf b;
    keel_error e;
    char dir[PATH_MAX];
    keel__runtime_path(rt, KEEL_STATE_UPDATE_DIR, dir, sizeof(dir));
    seen_path(rt, p, sizeof(p));
    keel__buf_init(&b, 0);
    seen_format(sig, &b);
    if (p[0] && b.data &&
        (keel__fs_mkdir_p(dir, 0700, &e) || keel__fs_write_atomic(p, b.data, b.len, 0600, &e)))
        KEEL_LOG_D(MOD, "%s", e.msg);
    keel__buf_done(&b);
}

static bool seen_matches(keel__runtime *rt, const trust_sig *sig)
{
    char p[PATH_MAX], *data = NULL;
    size_t len;
    keel_buf b;
    seen_path(rt, p, sizeof(p));
    if (!p[0] || keel__fs_read(p, 8192, &data, &len, NULL))
        return false;
    keel__buf_init(&b, 0);
    seen_format(sig, &b);
    bool same = b.data && len == b.len && !memcmp(data, b.data, len);
    keel__buf_done(&b);
    free(data);
    return same;
}

/* force: re-check even when the trust files look unchanged. refresh: then
 * refresh what serves and readiness (not at open: it does that next). */
static void check(keel__runtime *rt, bool force, bool refresh, bool at_start)
{
    struct keel__rt_revocation *rv = rt->revocation;
    trust_sig sig;
    keel_revocation *ch = NULL;
    size_t n = 0;
    if (!rv)
        return;
    pthread_mutex_lock(&rv->mu);
    uint64_t period = keel__runtime_setting_u64(rt, "trust_check_interval");
    if (rv->job && period != rv->period) { /* a reload changed it */
        keel__jobs_set_period(rt->jobs, rv->job, period);
        rv->period = period;
    }
    signature(rt, &sig); /* before loading: a change during the load shows next time */
    if (at_start && seen_matches(rt, &sig)) {
        rv->seen = sig; /* the last re-check read these very files */
        rv->seen_valid = true;
    } else if (force || !rv->seen_valid || !same_signature(&sig, &rv->seen)) {
        rv->seen = sig;
        rv->seen_valid = true;
        if (recheck(rt, &sig, &ch, &n) == KEEL_OK)
            seen_save(rt, &sig);
        if (refresh)
            keel__runtime_refresh(rt, 0);
        for (size_t i = 0; i < n; i++) {
            if (!ch[i].revoked)
                continue;
            keel__bus_event ev = {.type = KEEL__BUS_REVOKED,
                                  .package = ch[i].name,
                                  .version = ch[i].version,
                                  .reason = ch[i].reason,
                                  .detail = ch[i].digest};
            keel__bus_publish(rt->bus, &ev);
        }
        free(ch);
    }
    pthread_mutex_unlock(&rv->mu);
}

void keel__runtime_trust_changed(keel__runtime *rt)
{
    check(rt, true, true, false);
}

void keel__rt_trust_poll(keel__runtime *rt)
{
    check(rt, false, true, false);
}

static void job_trust(void *ctx)
{
    keel__rt_trust_poll(ctx);
}

int keel__rt_revocation_start(keel__runtime *rt, keel_error *err)
{
    struct keel__rt_revocation *rv = calloc(1, sizeof(*rv));
    if (!rv)
        return keel__err(err, KEEL_ENOMEM, "out of memory");
    pthread_mutex_init(&rv->mu, NULL);
    rv->period = keel__runtime_setting_u64(rt, "trust_check_interval");
    rt->revocation = rv;
    check(rt, true, false, true);
    if (!(rv->job = keel__jobs_add(rt->jobs, "trust", rv->period, job_trust, rt)))
        KEEL_LOG_W(MOD, "no room for the trust dir check job: trust changes apply on SIGHUP only");
    return KEEL_OK;
}

void keel__rt_revocation_stop(keel__runtime *rt)
{
    struct keel__rt_revocation *rv = rt->revocation;
    if (!rv)
        return;
    if (rv->job && rt->jobs)
        keel__jobs_remove(rt->jobs, rv->job);
    rt->revocation = NULL;
    pthread_mutex_destroy(&rv->mu);
    free(rv);
}
