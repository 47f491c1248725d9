/*
 * publish.c - the publisher's verbs: keel publish, keel rollout, keel repo
 * timestamp|verify (docs/update.md, "Repository"). Thin: parse arguments,
 * load keys, call lib/update/publish.c.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "publish.h"
#include "update/publish.h"

#define PUB_KEYS_MAX 16

typedef struct popts {
    const char *repo, *trust, *channel, *state, *reason, *pull, *current;
    const char *devices[1024];
    size_t ndevices;
    const char *keys[PUB_KEYS_MAX], *ts_keys[PUB_KEYS_MAX];
    size_t nkeys, nts_keys;
    double rollout, set;
    bool has_rollout, has_set, halt, resume, promote, force, offline;
    int64_t expires, ts_expires, at;
    unsigned patch_from;
    const char *pos[8];
    size_t npos;
} popts;

static int perr(const keel_error *e)
{
    fprintf(stderr, "keel: %s (%s)\n", e->msg, keel_errname(e->code));
    return 1;
}

static int pusage(const char *msg, const char *arg)
{
    fprintf(stderr, "keel: %s%s\nRun `keel help` for usage.\n", msg, arg ? arg : "");
    return 2;
}

static bool percent_arg(const char *s, double *ret)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0 && v <= 100))
        return false;
    *ret = v;
    return true;
}

static int pparse(int argc, char **argv, popts *o)
{
    static const struct option lo[] = {{"repo", required_argument, 0, 'r'},
                                       {"key", required_argument, 0, 'k'},
                                       {"timestamp-key", required_argument, 0, 'T'},
                                       {"trust", required_argument, 0, 't'},
                                       {"channel", required_argument, 0, 'c'},
                                       {"rollout", required_argument, 0, 'R'},
                                       {"expires", required_argument, 0, 'e'},
                                       {"timestamp-expires", required_argument, 0, 'E'},
                                       {"patch-from", required_argument, 0, 'p'},
                                       {"force", no_argument, 0, 'f'},
                                       {"reason", required_argument, 0, 'W'},
                                       {"set", required_argument, 0, 's'},
                                       {"halt", no_argument, 0, 'H'},
                                       {"resume", no_argument, 0, 'U'},
                                       {"pull", required_argument, 0, 'P'},
                                       {"promote", no_argument, 0, 'M'},
                                       {"state", required_argument, 0, 'S'},
                                       {"offline", no_argument, 0, 'O'},
                                       {"at", required_argument, 0, 'A'},
                                       {"device", required_argument, 0, 'D'},
                                       {"current", required_argument, 0, 'C'},
                                       {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof(*o));
    o->patch_from = KEEL__PUBLISH_PATCH_FROM;
    o->rollout = 100;
    optind = 1;
    while ((c = getopt_long(argc, argv, "k:", lo, NULL)) != -1) {
        switch (c) {
        case 'r':
            o->repo = optarg;
            break;
        case 'k':
        case 'T':
            if ((c == 'k' ? o->nkeys : o->nts_keys) == PUB_KEYS_MAX)
                return pusage("at most 16 keys per option", NULL);
            if (c == 'k')
                o->keys[o->nkeys++] = optarg;
            else
                o->ts_keys[o->nts_keys++] = optarg;
            break;
        case 't':
            o->trust = optarg;
            break;
        case 'c':
            o->channel = optarg;
            break;
        case 'R':
            if (!percent_arg(optarg, &o->rollout))
                return pusage("--rollout takes a percent 0..100, not ", optarg);
            o->has_rollout = true;
            break;
        case 'e':
        case 'E':
            if (keel__publish_duration(optarg, c == 'e' ? &o->expires : &o->ts_expires))
                return pusage("expiry must be a duration like 30d, 12h, 90m (up to 10 years), "
                              "not ",
                              optarg);
            break;
        case 'p': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || end == optarg || v > 16)
                return pusage("--patch-from takes a number 0..16, not ", optarg);
            o->patch_from = (unsigned)v;
            break;
        }
        case 'f':
            o->force = true;
            break;
        case 'W':
            o->reason = optarg;
            break;
        case 's':
            if (!percent_arg(optarg, &o->set))
                return pusage("--set takes a percent 0..100, not ", optarg);
            o->has_set = true;
            break;
        case 'H':
            o->halt = true;
            break;
        case 'U':
            o->resume = true;
            break;
        case 'P':
            o->pull = optarg;
            break;
        case 'M':
            o->promote = true;
            break;
        case 'S':
            o->state = optarg;
            break;
        case 'O':
            o->offline = true;
            break;
        case 'D':
            if (o->ndevices == KEEL_ARRAY_LEN(o->devices))
                return pusage("at most 1024 --device options", NULL);
            o->devices[o->ndevices++] = optarg;
            break;
        case 'C':
            o->current = optarg;
            break;
        case 'A':
            if (keel__repo_time_parse(optarg, &o->at))
                return pusage("--at takes an RFC 3339 UTC time like 2026-12-05T00:00:00Z, not ",
                              optarg);
            break;
        default:
            return 2;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (o->npos == KEEL_ARRAY_LEN(o->pos))
            return pusage("too many arguments near ", argv[i]);
        o->pos[o->npos++] = argv[i];
    }
    return 0;
}

typedef struct loaded {
    keel_key *keys[PUB_KEYS_MAX], *ts[PUB_KEYS_MAX];
    size_t nkeys, nts;
} loaded;

static int load_priv(const popts *o, loaded *l, keel_error *e)
{
    int rc = KEEL_OK;
    for (size_t i = 0; !rc && i < o->nkeys; i++)
        if (!(rc = keel_key_load_private(o->keys[i], &l->keys[i], e)))
            l->nkeys++;
    for (size_t i = 0; !rc && i < o->nts_keys; i++)
        if (!(rc = keel_key_load_private(o->ts_keys[i], &l->ts[i], e)))
            l->nts++;
    return rc;
}

static void free_loaded(loaded *l)
{
    for (size_t i = 0; i < l->nkeys; i++)
        keel_key_free(l->keys[i]);
    for (size_t i = 0; i < l->nts; i++)
        keel_key_free(l->ts[i]);
}

static void fill_opts(const popts *o, const loaded *l, keel__publish_opts *po)
{
    memset(po, 0, sizeof(*po));
    po->repo = o->repo;
    po->index_keys = (const keel_key *const *)l->keys;
    po->nindex_keys = l->nkeys;
    po->timestamp_keys = (const keel_key *const *)l->ts;
    po->ntimestamp_keys = l->nts;
    po->now = o->at;
    po->index_expires = o->expires;
    po->timestamp_expires = o->ts_expires;
}

int keel_cli_publish(int argc, char **argv)
{
    popts o;
    loaded l = {0};
    keel_error e;
    keel__publish_opts po;
    keel__publish_result res;
    keel_trust *t = NULL;
    int rc = pparse(argc, argv, &o);
    if (rc)
        return rc;
    if (o.npos != 1 || !o.repo || !o.nkeys)
        return pusage("usage: keel publish PKG.keel --repo DIR --key INDEX.key "
                      "[--timestamp-key TS.key] [--channel C] [--rollout PCT] [--expires 30d] "
                      "[--timestamp-expires 1d] [--patch-from N] [--force [--reason TEXT]] "
                      "[--trust DIR]",
                      NULL);
    if ((rc = load_priv(&o, &l, &e)))
        goto out;
    if (o.trust && (rc = keel_trust_load(o.trust, &t, &e)))
        goto out;
    fill_opts(&o, &l, &po);
    keel__publish_args a = {.trust = t,
                            .channel = o.channel ? o.channel : "stable",
                            .rollout = o.has_rollout ? o.rollout : -1,
                            .patch_from = o.patch_from,
                            .force = o.force,
                            .reason = o.reason};
    if ((rc = keel__publish_package(&po, o.pos[0], &a, &res, &e)))
        goto out;
    printf("published %s %s (%s) to %s%s\n", res.name, res.version, res.digest, o.repo,
           res.already ? " (already there: metadata re-signed)" : "");
    if (keel__publish_can_patch())
        printf("  files: %zu new, %zu already there; patches: %zu (%llu bytes in place of %llu "
               "bytes of chunks)\n",
               res.files_new, res.files_reused, res.patches, (unsigned long long)res.patch_bytes,
               (unsigned long long)res.chunk_bytes);
    else
        printf("  files: %zu new, %zu already there; no patch codec in this build: devices "
               "fetch changed chunks only\n",
               res.files_new, res.files_reused);
    char share[64];
    snprintf(share, sizeof(share), " at %g %%%s", res.rollout, res.kept ? " (unchanged)" : "");
    printf("  channel %s: %s%s%s%s; index version %llu, timestamp version %llu\n", a.channel,
           res.version, share, res.base[0] ? ", others stay on " : "", res.base,
           (unsigned long long)res.index_version, (unsigned long long)res.timestamp_version);
out:
    keel_trust_free(t);
    free_loaded(&l);
    return rc ? perr(&e) : 0;
}

int keel_cli_rollout(int argc, char **argv)
{
    popts o;
    loaded l = {0};
    keel_error e;
    keel__publish_opts po;
    int rc = pparse(argc, argv, &o);
    if (rc)
        return rc;
    int nact = o.has_set + o.halt + o.resume + (o.pull != NULL) + o.promote;
    if (o.npos != 1 || !o.repo || !o.nkeys || nact != 1 || (!o.pull && !o.channel))
        return pusage("usage: keel rollout NAME --repo DIR --channel C --key INDEX.key "
                      "[--timestamp-key TS.key] (--set PCT | --halt | --resume | --pull VERSION "
                      "| --promote)",
                      NULL);
    keel__rollout_action act = o.has_set  ? KEEL__ROLLOUT_SET
                               : o.halt   ? KEEL__ROLLOUT_HALT
                               : o.resume ? KEEL__ROLLOUT_RESUME
                               : o.pull   ? KEEL__ROLLOUT_PULL
                                          : KEEL__ROLLOUT_PROMOTE;
    if ((rc = load_priv(&o, &l, &e)))
        goto out;
    fill_opts(&o, &l, &po);
    if ((rc = keel__publish_rollout(&po, o.pos[0], o.channel, act, o.set, o.pull, &e)))
        goto out;
    if (o.pull)
        printf("%s %s pulled: never offered again; devices running it roll back to their "
               "known-good version\n",
               o.pos[0], o.pull);
    else
        printf("channel %s of %s: %s\n", o.channel, o.pos[0],
               o.has_set  ? "rollout changed"
               : o.halt   ? "halted (no new devices take it; those on it keep it)"
               : o.resume ? "resumed"
                          : "promoted to every device");
out:
    free_loaded(&l);
    return rc ? perr(&e) : 0;
}

static int read_state(const char *path, keel__repo_state *st, keel_error *e)
{
    char *data = NULL;
    size_t len = 0;
    cJSON *doc = NULL;
    const char *sha = NULL;
    memset(st, 0, sizeof(*st));
    if (!keel__fs_exists(path))
        return KEEL_OK;
    int rc = keel__fs_read(path, 4096, &data, &len, e);
    if (!rc)
        rc = keel__json_parse(data, len, path, &doc, e);
    if (!rc &&
        !(rc = keel__json_u64(doc, "timestamp_version", true, &st->timestamp_version, path, e)) &&
        !(rc = keel__json_u64(doc, "index_version", true, &st->index_version, path, e)) &&
        !(rc = keel__json_str(doc, "index_sha256", true, 64, &sha, path, e)))
        keel__strlcpy(st->index_sha256, sha, sizeof(st->index_sha256));
    cJSON_Delete(doc);
    free(data);
    return rc;
}

static int write_state(const char *path, const keel__repo_state *st, keel_error *e)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf),
                     "{\"timestamp_version\": %llu, \"index_version\": %llu, \"index_sha256\": "
                     "\"%s\"}\n",
                     (unsigned long long)st->timestamp_version,
                     (unsigned long long)st->index_version, st->index_sha256);
    return keel__fs_write_atomic(path, buf, (size_t)n, 0644, e);
}

/* The repository's index, checked as a device would check it. */
static int load_checked(const char *repo, const keel_trust *t, int64_t now, keel__repo_index **ret,
                        keel_error *e)
{
    char p[4096], *td = NULL, *tsig = NULL, *id = NULL, *isig = NULL;
    size_t tl = 0, tsl = 0, il = 0, isl = 0;
    keel__repo_timestamp ts;
    int rc = KEEL_OK;
    static const char *const files[4] = {"timestamp.json", "timestamp.sig", "index.json",
                                         "index.sig"};
    char **bufs[4] = {&td, &tsig, &id, &isig};
    size_t *lens[4] = {&tl, &tsl, &il, &isl};
    for (int i = 0; i < 4 && !rc; i++) {
        snprintf(p, sizeof(p), "%s/%s", repo, files[i]);
        rc = keel__fs_read(p, KEEL__REPO_INDEX_MAX, bufs[i], lens[i], e);
    }
    if (!rc && !(rc = keel__repo_check_timestamp(t, td, tl, tsig, tsl, NULL, now, &ts, e)))
        rc = keel__repo_index_parse(t, id, il, isig, isl, &ts, NULL, now, ret, e);
    free(td);
    free(tsig);
    free(id);
    free(isig);
    return rc;
}

int keel_cli_repo(int argc, char **argv)
{
    popts o;
    loaded l = {0};
    keel_error e;
    keel__publish_opts po;
    int rc = pparse(argc, argv, &o);
    if (rc)
        return rc;
    const char *sub = o.npos ? o.pos[0] : "";
    if (!strcmp(sub, "timestamp")) {
        uint64_t v = 0;
        if (o.npos != 1 || !o.repo || !o.nkeys)
            return pusage("usage: keel repo timestamp --repo DIR --key TS.key [--expires 1d]",
                          NULL);
        if (!(rc = load_priv(&o, &l, &e))) {
            fill_opts(&o, &l, &po);
            po.timestamp_expires = o.expires; /* --expires means the timestamp's here */
            rc = keel__publish_timestamp(&po, &v, &e);
        }
        if (!rc)
            printf("timestamp.json version %llu signed in %s\n", (unsigned long long)v, o.repo);
        free_loaded(&l);
        return rc ? perr(&e) : 0;
    }
    if (!strcmp(sub, "verify")) {
        keel_trust *t = NULL;
        keel__repo_state st;
        keel_buf report;
        if (o.npos != 1 || !o.repo || !o.trust)
            return pusage("usage: keel repo verify --repo DIR --trust TRUST_DIR [--state FILE] "
                          "[--offline | --at TIME]",
                          NULL);
        keel__buf_init(&report, 1u << 20);
        int64_t now = o.offline ? 0 : o.at ? o.at : keel__now_wall_s();
        if (!(rc = keel_trust_load(o.trust, &t, &e)) &&
            !(rc = o.state ? read_state(o.state, &st, &e) : KEEL_OK))
            rc = keel__publish_verify(o.repo, t, o.state ? &st : NULL, now, &report, &e);
        if (report.data)
            fputs(report.data, stdout);
        if (!rc && o.state)
            rc = write_state(o.state, &st, &e);
        if (!rc)
            printf("%s verifies: a device trusting %s accepts it\n", o.repo, o.trust);
        keel__buf_done(&report);
        keel_trust_free(t);
        return rc ? perr(&e) : 0;
    }
    if (!strcmp(sub, "offer")) {
        keel_trust *t = NULL;
        keel__repo_index *ix = NULL;
        if (o.npos != 2 || !o.repo || !o.trust || !o.ndevices)
            return pusage("usage: keel repo offer NAME --repo DIR --trust TRUST_DIR --device ID "
                          "[--device ID]... [--channel C] [--current VERSION] [--offline | --at "
                          "TIME]",
                          NULL);
        int64_t now = o.offline ? 0 : o.at ? o.at : keel__now_wall_s();
        if (!(rc = keel_trust_load(o.trust, &t, &e)))
            rc = load_checked(o.repo, t, now, &ix, &e);
        for (size_t i = 0; !rc && i < o.ndevices; i++) {
            keel__repo_offer off;
            keel_error oe;
            if (keel__repo_offer_for(ix, o.pos[1], o.channel ? o.channel : "stable", o.devices[i],
                                     o.current, &off, &oe))
                printf("nothing: %s\n", oe.msg);
            else
                printf("%s %s%s\n", off.name, off.version,
                       off.current_pulled ? " (current pulled)" : "");
        }
        keel__repo_index_free(ix);
        keel_trust_free(t);
        return rc ? perr(&e) : 0;
    }
    return pusage("unknown repo command (timestamp, verify, offer): ", sub);
}
