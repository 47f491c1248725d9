/*
 * patch.c - per-file binary patches, codec "keel-tpatch-1" (patch.h; the
 * format byte by byte in docs/update.md, "Patches").
 *
 * A patch is a zstd stream of the target compressed with the base as a
 * prefix dictionary (long-distance matching, a window that covers the
 * base), after an optional transform of the tensors of both files: each
 * tensor's bytes, in blocks of 1 MiB, are written as byte planes (all the
 * high bytes, then the next, ...), so that exponents sit together and the
 * mostly random low mantissa bytes do not break the matches and the
 * entropy coding of the rest. The transform keeps every byte in place
 * outside the tensors, so the file's length and layout do not change.
 *
 * Apply holds the base (transformed) in memory, decompresses one segment
 * of the target (at most 16 MiB, a separate zstd frame) at a time, undoes
 * the transform block by block and streams the bytes to the output file,
 * hashing them. Peak memory: base size + 2 x segment + one block + zstd's
 * context, about base + 40 MiB.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_d_stableOutBuffer */
#include <zstd.h>

#include "keel/crypto.h"
#include "update/patch.h"
#include "update/patch_format.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "patch.c's width-4 loops assume a little-endian host (load_elem is the portable form)"
#endif

#define ZSTD_LEVEL       19
#define MIN_REGION_BYTES 64
#define ONNX_MAX_DEPTH   32
#define WINDOW_LOG_MIN   10 /* zstd.h has these under ZSTD_STATIC_LINKING_ONLY */
#define WINDOW_LOG_MAX   31

/* --- little-endian and varint helpers -------------------------------------------- */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* LEB128; false on a truncated or over-long varint. */
static bool get_varint(const uint8_t *p, size_t n, size_t *pos, uint64_t *ret)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*pos >= n)
            return false;
        uint8_t b = p[(*pos)++];
        if (shift == 63 && b > 1)
            return false;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *ret = v;
            return true;
        }
    }
    return false;
}

static int put_varint(keel_buf *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            tmp[n] |= 0x80;
        n++;
    } while (v);
    return keel__buf_append(b, tmp, n);
}

const char *keel__patch_transform_name(uint32_t t)
{
    static const char *const names[] = {"plain", "planes", "sub", "xor"};
    return t < KEEL_ARRAY_LEN(names) ? names[t] : "unknown";
}

/* --- ONNX walk ----------------------------------------------------------------------- */

enum { PB_MODEL, PB_GRAPH, PB_NODE, PB_ATTR, PB_TENSOR };

typedef struct onnx_walk {
    const uint8_t *base; /* the whole file */
    keel__patch_region *out;
    size_t count, max;
} onnx_walk;

/* Element width of an ONNX TensorProto.DataType, 0 when not transformed. */
static uint32_t onnx_width(uint64_t data_type)
{
    switch (data_type) {
    case 1:  /* FLOAT */
    case 6:  /* INT32 */
    case 12: /* UINT32 */
        return 4;
    case 4:  /* UINT16 */
    case 5:  /* INT16 */
    case 10: /* FLOAT16 */
    case 16: /* BFLOAT16 */
        return 2;
    case 2: /* UINT8 */
    case 3: /* INT8 */
        return 1;
    default:
        return 0;
    }
}

/* Which message a length-delimited field of a message of kind holds. */
static int onnx_child(int kind, uint64_t field)
{
    switch (kind) {
    case PB_MODEL:
        return field == 7 ? PB_GRAPH : -1;
    case PB_GRAPH:
        return field == 1 ? PB_NODE : field == 5 ? PB_TENSOR : -1;
    case PB_NODE:
        return field == 5 ? PB_ATTR : -1;
    case PB_ATTR:
        return field == 5 || field == 10 ? PB_TENSOR : field == 6 || field == 11 ? PB_GRAPH : -1;
    default:
        return -1;
    }
}

static bool onnx_msg(onnx_walk *w, int kind, size_t start, size_t end, int depth)
{
    const uint8_t *p = w->base;
    size_t pos = start;
    uint64_t data_type = 0, raw_off = 0, raw_len = 0;
    bool has_raw = false;
    if (depth > ONNX_MAX_DEPTH)
        return false;
    while (pos < end) {
        uint64_t key, v;
        if (!get_varint(p, end, &pos, &key))
            return false;
        uint64_t field = key >> 3;
        switch (key & 7) {
        case 0:
            if (!get_varint(p, end, &pos, &v))
                return false;
            if (kind == PB_TENSOR && field == 2)
                data_type = v;
            break;
        case 1:
            if (end - pos < 8)
                return false;
            pos += 8;
            break;
        case 5:
            if (end - pos < 4)
                return false;
            pos += 4;
            break;
        case 2: {
            if (!get_varint(p, end, &pos, &v) || v > end - pos)
                return false;
            int child = onnx_child(kind, field);
            if (child >= 0 && !onnx_msg(w, child, pos, pos + v, depth + 1))
                return false;
            if (kind == PB_TENSOR && field == 9) {
                raw_off = pos;
                raw_len = v;
                has_raw = true;
            }
            pos += v;
            break;
        }
        default:
            return false;
        }
    }
    uint32_t width = onnx_width(data_type);
    if (kind == PB_TENSOR && has_raw && width && raw_len >= MIN_REGION_BYTES &&
        raw_len % width == 0 && w->count < w->max) {
        /* the walk is sequential, so regions come in file order */
        if (w->count == 0 || w->out[w->count - 1].off + w->out[w->count - 1].len <= raw_off)
            w->out[w->count++] = (keel__patch_region){raw_off, raw_len, width, 0};
    }
    return true;
}

size_t keel__patch_onnx_regions(const uint8_t *p, size_t n, keel__patch_region *out, size_t max)
{
    onnx_walk w = {p, out, 0, max};
    if (!onnx_msg(&w, PB_MODEL, 0, n, 0))
        return 0;
    return w.count;
}

/* --- transforms ------------------------------------------------------------------------ */

static uint32_t load_elem(const uint8_t *p, uint32_t w)
{
    uint32_t v = 0;
    for (uint32_t k = 0; k < w; k++)
        v |= (uint32_t)p[k] << (8 * k);
    return v;
}

static void store_elem(uint8_t *p, uint32_t w, uint32_t v)
{
    for (uint32_t k = 0; k < w; k++)
        p[k] = (uint8_t)(v >> (8 * k));
}

static uint32_t elem_mask(uint32_t w)
{
    return w == 4 ? 0xffffffffu : (1u << (8 * w)) - 1;
}

/* Rotations within w bytes: the float's sign goes to the lowest bit and the
 * exponent fills the top byte. */
static uint32_t rotl1(uint32_t v, uint32_t w)
{
    uint32_t bits = 8 * w;
    return w == 1 ? v : ((v << 1) | (v >> (bits - 1))) & elem_mask(w);
}

static uint32_t rotr1(uint32_t v, uint32_t w)
{
    uint32_t bits = 8 * w;
    return w == 1 ? v : ((v >> 1) | (v << (bits - 1))) & elem_mask(w);
}

static uint32_t enc_elem(uint32_t mode, uint32_t w, uint32_t t, const uint32_t *b)
{
    switch (mode) {
    case KEEL__PATCH_PLANES:
        return rotl1(t, w);
    case KEEL__PATCH_SUB:
        return b ? (t - *b) & elem_mask(w) : t;
    case KEEL__PATCH_XOR:
        return b ? t ^ *b : t;
    default:
        return t;
    }
}

static uint32_t dec_elem(uint32_t mode, uint32_t w, uint32_t e, const uint32_t *b)
{
    switch (mode) {
    case KEEL__PATCH_PLANES:
        return rotr1(e, w);
    case KEEL__PATCH_SUB:
        return b ? (e + *b) & elem_mask(w) : e;
    case KEEL__PATCH_XOR:
        return b ? e ^ *b : e;
    default:
        return e;
    }
}

/* Plane p (0 = most significant byte) of element i of a block of n elements. */
static uint32_t plane_get(const uint8_t *planes, size_t n, uint32_t w, size_t i)
{
    uint32_t v = 0;
    for (uint32_t p = 0; p < w; p++)
        v |= (uint32_t)planes[p * n + i] << (8 * (w - 1 - p));
    return v;
}

static void plane_put(uint8_t *planes, size_t n, uint32_t w, size_t i, uint32_t v)
{
    for (uint32_t p = 0; p < w; p++)
        planes[p * n + i] = (uint8_t)(v >> (8 * (w - 1 - p)));
}

/* Forward transform of one block: src (raw elements) into dst (planes).
 * pair_raw: the paired base block's raw elements, or NULL. Width 4 (float32,
 * the common case) has its own loop: the generic one costs 4x on apply. */
static void block_forward(uint32_t mode, uint32_t w, const uint8_t *src, const uint8_t *pair_raw,
                          size_t n, uint8_t *dst)
{
    if (w == 4) {
        uint8_t *p0 = dst, *p1 = dst + n, *p2 = dst + 2 * n, *p3 = dst + 3 * n;
        for (size_t i = 0; i < n; i++) {
            uint32_t t, b = 0, e;
            memcpy(&t, src + 4 * i, 4); /* little-endian hosts: load_elem */
            if (pair_raw)
                memcpy(&b, pair_raw + 4 * i, 4);
            e = mode == KEEL__PATCH_PLANES ? (t << 1 | t >> 31)
                : !pair_raw                ? t
                : mode == KEEL__PATCH_SUB  ? t - b
                : mode == KEEL__PATCH_XOR  ? t ^ b
                                           : t;
            p0[i] = (uint8_t)(e >> 24), p1[i] = (uint8_t)(e >> 16), p2[i] = (uint8_t)(e >> 8),
            p3[i] = (uint8_t)e;
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t t = load_elem(src + i * w, w), b = 0;
        if (pair_raw)
            b = load_elem(pair_raw + i * w, w);
        plane_put(dst, n, w, i, enc_elem(mode, w, t, pair_raw ? &b : NULL));
    }
}

/* Inverse: planes in src to raw elements in dst. pair_planes: the paired
 * base block as it sits in the transformed base (planes of raw elements). */
static void block_inverse(uint32_t mode, uint32_t w, const uint8_t *src, const uint8_t *pair_planes,
                          size_t n, uint8_t *dst)
{
    if (w == 4) {
        const uint8_t *p0 = src, *p1 = src + n, *p2 = src + 2 * n, *p3 = src + 3 * n;
        const uint8_t *b0 = pair_planes, *b1 = b0 ? b0 + n : NULL, *b2 = b0 ? b0 + 2 * n : NULL,
                      *b3 = b0 ? b0 + 3 * n : NULL;
        for (size_t i = 0; i < n; i++) {
            uint32_t e = (uint32_t)p0[i] << 24 | (uint32_t)p1[i] << 16 | (uint32_t)p2[i] << 8 |
                         p3[i],
                     b = 0, t;
            if (b0)
                b = (uint32_t)b0[i] << 24 | (uint32_t)b1[i] << 16 | (uint32_t)b2[i] << 8 | b3[i];
            t = mode == KEEL__PATCH_PLANES ? (e >> 1 | e << 31)
                : !b0                      ? e
                : mode == KEEL__PATCH_SUB  ? e + b
                : mode == KEEL__PATCH_XOR  ? e ^ b
                                           : e;
            memcpy(dst + 4 * i, &t, 4);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t e = plane_get(src, n, w, i), b = 0;
        if (pair_planes)
            b = plane_get(pair_planes, n, w, i);
        store_elem(dst + i * w, w, dec_elem(mode, w, e, pair_planes ? &b : NULL));
    }
}

/* The base as the prefix sees it: each region's blocks as planes of the
 * elements (rotated for PLANES, raw for SUB and XOR, so paired blocks can
 * be read back). In place, through one block of scratch. */
static int transform_base(uint32_t mode, uint8_t *buf, const keel__patch_region *r, uint32_t nr,
                          keel_error *err)
{
    if (mode == KEEL__PATCH_PLAIN || nr == 0)
        return KEEL_OK;
    uint8_t *tmp = malloc(KEEL__PATCH_BLOCK);
    if (!tmp)
        return keel__err(err, KEEL_ENOMEM, "out of memory transforming the base");
    uint32_t emode = mode == KEEL__PATCH_PLANES ? KEEL__PATCH_PLANES : KEEL__PATCH_PLAIN;
    for (uint32_t k = 0; k < nr; k++) {
        for (uint64_t o = 0; o < r[k].len; o += KEEL__PATCH_BLOCK) {
            size_t blen =
                (size_t)(r[k].len - o < KEEL__PATCH_BLOCK ? r[k].len - o : KEEL__PATCH_BLOCK);
            uint8_t *blk = buf + r[k].off + o;
            block_forward(emode, r[k].width, blk, NULL, blen / r[k].width, tmp);
            memcpy(blk, tmp, blen);
        }
    }
    free(tmp);
    return KEEL_OK;
}

/* --- header and table ------------------------------------------------------------------- */

void keel__patch_info_done(keel__patch_info *info)
{
    if (!info)
        return;
    free(info->base);
    free(info->target);
    free(info->segments);
    info->base = info->target = NULL;
    info->segments = NULL;
}

int keel__patch_parse_header(const uint8_t *p, size_t n, keel__patch_info *info, keel_error *err)
{
    memset(info, 0, sizeof(*info));
    if (n < KEEL__PATCH_HEADER_SIZE || memcmp(p, KEEL__PATCH_MAGIC, 8) != 0)
        return keel__err(err, KEEL_EINVALID,
                         "not a keel patch (no \"" KEEL__PATCH_MAGIC "\" header): make it with "
                         "`keel delta BASE TARGET -o PATCH`");
    info->version = get_u32(p + 8);
    info->transform = get_u32(p + 12);
    info->base_size = get_u64(p + 16);
    info->target_size = get_u64(p + 24);
    memcpy(info->base_sha256, p + 32, 32);
    memcpy(info->target_sha256, p + 64, 32);
    info->segment_max = get_u32(p + 96);
    info->table_len = get_u32(p + 100);
    if (info->version != KEEL__PATCH_VERSION)
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "patch codec version %u is not supported (this keel reads version %u of "
                         "%s): update keel, or fetch whole files or chunks instead",
                         info->version, KEEL__PATCH_VERSION, KEEL__PATCH_CODEC);
    if (info->transform >= KEEL__PATCH_NTRANSFORMS)
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "patch uses transform %u, unknown to this keel: update keel, or fetch "
                         "whole files or chunks instead",
                         info->transform);
    if (info->base_size > KEEL__PATCH_MAX_BASE || info->target_size > KEEL__PATCH_MAX_TARGET)
        return keel__err(err, KEEL_ECORRUPT,
                         "patch declares a base of %llu bytes and a target of %llu bytes, over "
                         "the limits (%llu, %llu): the patch is corrupt; fetch the file instead",
                         (unsigned long long)info->base_size, (unsigned long long)info->target_size,
                         (unsigned long long)KEEL__PATCH_MAX_BASE,
                         (unsigned long long)KEEL__PATCH_MAX_TARGET);
    if (info->segment_max < 4096 || info->segment_max > KEEL__PATCH_MAX_SEGMENT ||
        info->segment_max < KEEL__PATCH_BLOCK)
        return keel__err(err, KEEL_ECORRUPT,
                         "patch declares segments of %u bytes (allowed %u..%u): the patch is "
                         "corrupt; fetch the file instead",
                         info->segment_max, KEEL__PATCH_BLOCK, KEEL__PATCH_MAX_SEGMENT);
    if (info->table_len > KEEL__PATCH_MAX_TABLE)
        return keel__err(err, KEEL_ECORRUPT,
                         "patch declares a table of %u bytes (limit %u): the patch is corrupt; "
                         "fetch the file instead",
                         info->table_len, KEEL__PATCH_MAX_TABLE);
    return KEEL_OK;
}

static int table_corrupt(keel_error *err, const char *what)
{
    return keel__err(err, KEEL_ECORRUPT,
                     "patch table: %s: the patch is corrupt; fetch the file or its chunks instead",
                     what);
}

/* Reads nr regions of a file of size fsize; pair_max: base region count for
 * target regions (pairs allowed), or -1 for base regions. */
static int parse_regions(const uint8_t *p, size_t n, size_t *pos, uint64_t fsize, int64_t pair_max,
                         uint32_t *ret_count, keel__patch_region **ret, keel_error *err)
{
    uint64_t count, prev_end = 0;
    if (!get_varint(p, n, pos, &count))
        return table_corrupt(err, "truncated region count");
    /* every region takes at least 3 bytes: bounds the allocation by the table */
    if (count > KEEL__PATCH_MAX_REGIONS || count > (n - *pos) / 3)
        return table_corrupt(err, "more regions than the table can hold");
    keel__patch_region *r = calloc(count ? count : 1, sizeof(*r));
    if (!r)
        return keel__err(err, KEEL_ENOMEM, "out of memory reading a patch table");
    for (uint64_t k = 0; k < count; k++) {
        uint64_t gap, len, width, pair = 0;
        if (!get_varint(p, n, pos, &gap) || !get_varint(p, n, pos, &len) ||
            !get_varint(p, n, pos, &width) || (pair_max >= 0 && !get_varint(p, n, pos, &pair))) {
            free(r);
            return table_corrupt(err, "truncated region");
        }
        if ((width != 1 && width != 2 && width != 4) || len == 0 || len % width ||
            gap > fsize - prev_end || len > fsize - prev_end - gap ||
            (pair_max >= 0 && pair > (uint64_t)pair_max)) {
            free(r);
            return table_corrupt(err, "a tensor region outside its file or of a bad width");
        }
        r[k] = (keel__patch_region){prev_end + gap, len, (uint32_t)width, (uint32_t)pair};
        prev_end += gap + len;
    }
    *ret_count = (uint32_t)count;
    *ret = r;
    return KEEL_OK;
}

int keel__patch_parse_table(const uint8_t *p, size_t n, keel__patch_info *info, keel_error *err)
{
    size_t pos = 0;
    int rc;
    uint64_t ns, total = 0, payload = 0;
    if ((rc = parse_regions(p, n, &pos, info->base_size, -1, &info->nbase, &info->base, err)))
        return rc;
    if ((rc = parse_regions(p, n, &pos, info->target_size, info->nbase, &info->ntarget,
                            &info->target, err)))
        return rc;
    if (info->transform == KEEL__PATCH_PLAIN && (info->nbase || info->ntarget))
        return table_corrupt(err, "tensor regions in a plain patch");
    for (uint32_t k = 0; k < info->ntarget; k++) {
        const keel__patch_region *t = &info->target[k];
        if (!t->pair)
            continue;
        const keel__patch_region *b = &info->base[t->pair - 1];
        if (info->transform < KEEL__PATCH_SUB || b->len != t->len || b->width != t->width)
            return table_corrupt(err, "a tensor paired with a base tensor of another shape");
    }
    if (!get_varint(p, n, &pos, &ns))
        return table_corrupt(err, "truncated segment count");
    if (ns > (n - pos) / 2)
        return table_corrupt(err, "more segments than the table can hold");
    info->segments = calloc(ns ? ns : 1, sizeof(*info->segments));
    if (!info->segments)
        return keel__err(err, KEEL_ENOMEM, "out of memory reading a patch table");
    for (uint64_t k = 0; k < ns; k++) {
        keel__patch_segment *s = &info->segments[k];
        if (!get_varint(p, n, &pos, &s->usize) || !get_varint(p, n, &pos, &s->csize))
            return table_corrupt(err, "truncated segment");
        if (s->usize == 0 || s->usize > info->segment_max || s->csize == 0 ||
            s->csize > ZSTD_compressBound(info->segment_max) ||
            s->usize > info->target_size - total)
            return table_corrupt(err, "a segment of a bad size");
        total += s->usize;
        payload += s->csize;
    }
    if (total != info->target_size)
        return table_corrupt(err, "segments do not add up to the target's size");
    if (pos != n)
        return table_corrupt(err, "bytes after the segments");
    info->nsegments = (uint32_t)ns;
    info->payload_size = payload;
    return KEEL_OK;
}

/* --- apply -------------------------------------------------------------------------------- */

/* Where the patch's bytes come from: memory or a file descriptor. */
typedef struct patch_src {
    const uint8_t *mem;
    size_t mem_len, mem_pos;
    int fd;
    const char *path;
} patch_src;

static int src_read(patch_src *s, void *buf, size_t n, keel_error *err)
{
    if (s->mem) {
        if (n > s->mem_len - s->mem_pos)
            return keel__err(err, KEEL_ECORRUPT,
                             "patch is truncated: the download was cut or the file damaged; "
                             "fetch it again");
        memcpy(buf, s->mem + s->mem_pos, n);
        s->mem_pos += n;
        return KEEL_OK;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(s->fd, (uint8_t *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return keel__err_errno(err, KEEL_EIO, errno, "cannot read %s", s->path);
        if (r == 0)
            return keel__err(err, KEEL_ECORRUPT,
                             "%s is truncated: the download was cut or the file damaged; fetch "
                             "it again",
                             s->path);
        got += (size_t)r;
    }
    return KEEL_OK;
}

static int read_info(patch_src *s, uint64_t patch_size, keel__patch_info *info, keel_error *err)
{
    uint8_t hdr[KEEL__PATCH_HEADER_SIZE];
    uint8_t *table = NULL;
    int rc;
    memset(info, 0, sizeof(*info));
    if (patch_size < KEEL__PATCH_HEADER_SIZE)
        return keel__err(err, KEEL_EINVALID,
                         "not a keel patch (%llu bytes, shorter than its %u-byte header)",
                         (unsigned long long)patch_size, KEEL__PATCH_HEADER_SIZE);
    if ((rc = src_read(s, hdr, sizeof(hdr), err)) ||
        (rc = keel__patch_parse_header(hdr, sizeof(hdr), info, err)))
        return rc;
    if (info->table_len > patch_size - KEEL__PATCH_HEADER_SIZE)
        return keel__err(err, KEEL_ECORRUPT,
                         "patch is truncated (its table of %u bytes runs past its end): fetch "
                         "it again",
                         info->table_len);
    table = malloc(info->table_len ? info->table_len : 1);
    if (!table)
        return keel__err(err, KEEL_ENOMEM, "out of memory reading a patch table");
    if (!(rc = src_read(s, table, info->table_len, err)))
        rc = keel__patch_parse_table(table, info->table_len, info, err);
    free(table);
    if (rc)
        return rc;
    if (info->payload_size != patch_size - KEEL__PATCH_HEADER_SIZE - info->table_len)
        return keel__err(
            err, KEEL_ECORRUPT,
            "patch is %llu bytes, its table says %llu: truncated or with bytes "
            "appended; fetch it again",
            (unsigned long long)patch_size,
            (unsigned long long)(KEEL__PATCH_HEADER_SIZE + info->table_len + info->payload_size));
    return KEEL_OK;
}

typedef struct apply_state {
    const keel__patch_info *info;
    const uint8_t *prefix; /* the transformed base */
    keel__patch_sink sink;
    void *sink_ctx;
    keel_sha256 *hash;
    uint8_t *block;       /* KEEL__PATCH_BLOCK scratch */
    uint32_t region;      /* next target region not yet done */
    uint64_t region_done; /* bytes of it done */
} apply_state;

static int emit(apply_state *st, const uint8_t *p, size_t n, keel_error *err)
{
    if (n == 0)
        return KEEL_OK;
    keel_sha256_update(st->hash, p, n);
    return st->sink(st->sink_ctx, p, n, err);
}

/* Undoes the transform on the bytes [from, avail) of a segment that covers
 * target bytes from start, handing them on, and says in *ret_done how far
 * it got: a tensor block not yet whole waits for more bytes, unless final
 * (then the segment cuts the block: corrupt). */
static int apply_range(apply_state *st, uint64_t start, const uint8_t *seg, size_t from,
                       size_t avail, bool final, size_t *ret_done, keel_error *err)
{
    const keel__patch_info *info = st->info;
    uint64_t end = start + avail, pos = start + from;
    int rc = KEEL_OK;
    while (pos < end) {
        const keel__patch_region *r = st->region < info->ntarget ? &info->target[st->region] : NULL;
        uint64_t rstart = r ? r->off + st->region_done : end;
        if (pos < rstart) { /* bytes outside tensors pass through */
            uint64_t stop = rstart < end ? rstart : end;
            if ((rc = emit(st, seg + (pos - start), (size_t)(stop - pos), err)))
                break;
            pos = stop;
            continue;
        }
        uint64_t left = r->len - st->region_done;
        size_t blen = (size_t)(left < KEEL__PATCH_BLOCK ? left : KEEL__PATCH_BLOCK);
        if (blen > end - pos) {
            if (final)
                rc = keel__err(err, KEEL_ECORRUPT,
                               "patch segment ends inside a tensor block: the patch is corrupt; "
                               "fetch the file or its chunks instead");
            break;
        }
        const uint8_t *pair = NULL;
        if (r->pair)
            pair = st->prefix + info->base[r->pair - 1].off + st->region_done;
        block_inverse(info->transform, r->width, seg + (pos - start), pair, blen / r->width,
                      st->block);
        if ((rc = emit(st, st->block, blen, err)))
            break;
        pos += blen;
        st->region_done += blen;
        if (st->region_done == r->len) {
            st->region++;
            st->region_done = 0;
        }
    }
    *ret_done = (size_t)(pos - start);
    return rc;
}

/*
 * One segment, decompressed by this thread while a second one undoes the
 * transform, hashes and writes what is already there: the SHA-256 of the
 * result costs about as much as the decompression, and this halves the
 * wall time on two cores. zstd writes straight into seg (stable output
 * buffer, no window buffer); the worker reads only bytes below `avail`,
 * which zstd no longer writes.
 */
typedef struct seg_pipe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    apply_state *st;
    const uint8_t *seg;
    uint64_t start;
    size_t avail; /* bytes decompressed so far */
    bool final;   /* avail is the whole segment, or the decoder gave up */
    bool stop;    /* the worker failed */
    int rc;
    keel_error err;
} seg_pipe;

static void *seg_worker(void *arg)
{
    seg_pipe *p = arg;
    size_t done = 0, seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->avail == seen && !p->final)
            pthread_cond_wait(&p->cv, &p->mu);
        size_t avail = p->avail;
        bool final = p->final;
        pthread_mutex_unlock(&p->mu);
        seen = avail;
        int rc = apply_range(p->st, p->start, p->seg, done, avail, final, &done, &p->err);
        if (rc) {
            pthread_mutex_lock(&p->mu);
            p->rc = rc;
            p->stop = true;
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        if (final)
            return NULL;
    }
}

#define DECODE_SLICE (64u << 10) /* compressed bytes per step */

static int decode_segment(ZSTD_DCtx *dctx, apply_state *st, uint32_t k, const uint8_t *cbuf,
                          size_t csize, uint8_t *ubuf, size_t usize, uint64_t start,
                          keel_error *err)
{
    seg_pipe p = {.st = st, .seg = ubuf, .start = start};
    pthread_t tid;
    ZSTD_outBuffer out = {ubuf, usize, 0};
    ZSTD_inBuffer in = {cbuf, 0, 0};
    size_t zr = 0;
    const char *why = NULL;
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    bool threaded = pthread_create(&tid, NULL, seg_worker, &p) == 0;
    for (;;) {
        size_t in_before = in.pos, out_before = out.pos;
        in.size = csize - in.pos > DECODE_SLICE ? in.pos + DECODE_SLICE : csize;
        zr = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(zr)) {
            why = ZSTD_getErrorName(zr);
            break;
        }
        pthread_mutex_lock(&p.mu);
        p.avail = out.pos;
        bool stop = p.stop;
        pthread_cond_signal(&p.cv);
        pthread_mutex_unlock(&p.mu);
        if (stop || zr == 0)
            break;
        if (in.pos == csize && in.pos == in_before && out.pos == out_before) {
            why = "truncated frame";
            break;
        }
    }
    if (!why && zr == 0 && out.pos != usize)
        why = "short";
    pthread_mutex_lock(&p.mu);
    p.final = true;
    if (why) /* nothing more for the worker: it stops at what it has */
        p.stop = true;
    pthread_cond_signal(&p.cv);
    pthread_mutex_unlock(&p.mu);
    if (threaded) {
        pthread_join(tid, NULL);
    } else if (!why) { /* no thread: do the work here */
        size_t done;
        p.rc = apply_range(st, start, ubuf, 0, out.pos, true, &done, &p.err);
    }
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
    if (why)
        return keel__err(err, KEEL_ECORRUPT,
                         "patch segment %u does not decompress (%s): the patch is corrupt or for "
                         "another base; fetch the file or its chunks instead",
                         k, why);
    if (p.rc) {
        *err = p.err;
        return p.rc;
    }
    return KEEL_OK;
}

static int base_mismatch(keel_error *err, const keel__patch_info *info, uint64_t size,
                         const uint8_t sha[32])
{
    char want[65], got[65];
    keel_hex_encode(info->base_sha256, 32, want);
    keel_hex_encode(sha, 32, got);
    return keel__err(err, KEEL_EINVALID,
                     "wrong base: the patch applies to sha256 %s (%llu bytes), this base is "
                     "sha256 %s (%llu bytes): use the file the patch was made from, or fetch "
                     "the target whole",
                     want, (unsigned long long)info->base_size, got, (unsigned long long)size);
}

/* The core of apply: prefix (the base, transformed in place by the caller
 * per info) and the patch's frames from src. */
static int apply_frames(apply_state *st, patch_src *src, keel_error *err)
{
    const keel__patch_info *info = st->info;
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    uint8_t *cbuf = NULL, *ubuf = NULL;
    uint64_t cmax = 0, umax = 0, done = 0;
    int rc = KEEL_OK;
    for (uint32_t k = 0; k < info->nsegments; k++) {
        cmax = info->segments[k].csize > cmax ? info->segments[k].csize : cmax;
        umax = info->segments[k].usize > umax ? info->segments[k].usize : umax;
    }
    cbuf = malloc(cmax ? cmax : 1);
    ubuf = malloc(umax ? umax : 1);
    if (!dctx || !cbuf || !ubuf) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory applying a patch");
        goto out;
    }
    /* zstd writes into the segment buffer (stable output): it keeps no
     * window buffer of its own, so a frame may reach back over the whole
     * base without costing memory */
    if (ZSTD_isError(ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, WINDOW_LOG_MAX)) ||
        ZSTD_isError(ZSTD_DCtx_setParameter(dctx, ZSTD_d_stableOutBuffer, 1))) {
        rc = keel__err(err, KEEL_EINTERNAL, "zstd refused its window limit");
        goto out;
    }
    for (uint32_t k = 0; k < info->nsegments; k++) {
        const keel__patch_segment *s = &info->segments[k];
        if ((rc = src_read(src, cbuf, s->csize, err)))
            goto out;
        unsigned long long fcs = ZSTD_getFrameContentSize(cbuf, s->csize);
        if (fcs != s->usize || ZSTD_findFrameCompressedSize(cbuf, s->csize) != s->csize) {
            rc = keel__err(err, KEEL_ECORRUPT,
                           "patch segment %u is not one zstd frame of %llu bytes: the patch is "
                           "corrupt; fetch the file or its chunks instead",
                           k, (unsigned long long)s->usize);
            goto out;
        }
        size_t zr = ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
        if (!ZSTD_isError(zr))
            zr = ZSTD_DCtx_refPrefix(dctx, st->prefix, info->base_size);
        if (ZSTD_isError(zr)) {
            rc = keel__err(err, KEEL_EINTERNAL, "zstd refused the base as prefix: %s",
                           ZSTD_getErrorName(zr));
            goto out;
        }
        if ((rc = decode_segment(dctx, st, k, cbuf, s->csize, ubuf, s->usize, done, err)))
            goto out;
        done += s->usize;
    }
out:
    ZSTD_freeDCtx(dctx);
    free(cbuf);
    free(ubuf);
    return rc;
}

static int apply_common(uint8_t *base, const keel__patch_info *info, patch_src *src,
                        keel__patch_sink sink, void *ctx, uint8_t ret_sha256[32], keel_error *err)
{
    apply_state st = {.info = info, .prefix = base, .sink = sink, .sink_ctx = ctx};
    int rc;
    st.hash = keel_sha256_new();
    st.block = malloc(KEEL__PATCH_BLOCK);
    if (!st.hash || !st.block) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory applying a patch");
        goto out;
    }
    if ((rc = transform_base(info->transform, base, info->base, info->nbase, err)) ||
        (rc = apply_frames(&st, src, err)))
        goto out;
    keel_sha256_final(st.hash, ret_sha256);
    if (memcmp(ret_sha256, info->target_sha256, 32) != 0)
        rc = keel__err(err, KEEL_ECORRUPT,
                       "the patched file does not hash to the target the patch names: the patch "
                       "is corrupt; fetch the file or its chunks instead");
out:
    keel_sha256_free(st.hash);
    free(st.block);
    return rc;
}

int keel__patch_apply_mem(const uint8_t *base, size_t base_len, const uint8_t *patch,
                          size_t patch_len, bool check_base, keel__patch_sink sink, void *ctx,
                          uint8_t ret_sha256[32], keel_error *err)
{
    patch_src src = {.mem = patch, .mem_len = patch_len, .fd = -1};
    keel__patch_info info;
    uint8_t *copy = NULL;
    int rc = read_info(&src, patch_len, &info, err);
    if (rc)
        goto out;
    if (info.base_size != base_len) {
        uint8_t sha[32];
        keel_sha256_buf(base, base_len, sha);
        rc = base_mismatch(err, &info, base_len, sha);
        goto out;
    }
    copy = malloc(base_len ? base_len : 1);
    if (!copy) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory applying a patch");
        goto out;
    }
    if (base_len)
        memcpy(copy, base, base_len);
    rc = apply_common(copy, &info, &src, sink, ctx, ret_sha256, err);
    if (rc && rc != KEEL_ENOMEM && check_base) {
        /* a wrong base shows only now (see keel__patch_apply) */
        uint8_t sha[32];
        keel_sha256_buf(base, base_len, sha);
        if (memcmp(sha, info.base_sha256, 32) != 0)
            rc = base_mismatch(err, &info, base_len, sha);
    }
out:
    free(copy);
    keel__patch_info_done(&info);
    return rc;
}

/* Reads the whole of fd (size bytes) into a new buffer, hashing it when sha
 * is not NULL. */
static int read_whole(int fd, const char *path, uint64_t size, uint8_t **ret, uint8_t sha[32],
                      keel_error *err)
{
    uint8_t *buf = malloc(size ? size : 1);
    keel_sha256 *h = sha ? keel_sha256_new() : NULL;
    uint64_t got = 0;
    int rc = KEEL_OK;
    if (!buf || (sha && !h)) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory reading %s (%llu bytes)", path,
                       (unsigned long long)size);
        goto out;
    }
    while (got < size) {
        size_t want = size - got > (1u << 24) ? (1u << 24) : (size_t)(size - got);
        ssize_t r = read(fd, buf + got, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = keel__err_errno(err, KEEL_EIO, errno, "cannot read %s", path);
            goto out;
        }
        if (r == 0) {
            rc = keel__err(err, KEEL_EIO, "%s shrank while being read", path);
            goto out;
        }
        if (h)
            keel_sha256_update(h, buf + got, (size_t)r);
        got += (size_t)r;
    }
    if (h)
        keel_sha256_final(h, sha);
    *ret = buf;
    buf = NULL;
out:
    keel_sha256_free(h);
    free(buf);
    return rc;
}

static int open_sized(const char *path, uint64_t *ret_size, keel_error *err)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot open %s", path);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -keel__err(err, KEEL_EINVALID, "%s is not a regular file", path);
    }
    *ret_size = (uint64_t)st.st_size;
    return fd;
}

int keel__patch_read_info(const char *path, keel__patch_info *info, keel_error *err)
{
    uint64_t size = 0;
    int fd = open_sized(path, &size, err);
    if (fd < 0)
        return -fd;
    patch_src src = {.fd = fd, .path = path};
    int rc = read_info(&src, size, info, err);
    close(fd);
    if (rc) {
        keel__patch_info_done(info);
        return keel__err_prefix(err, "%s", path);
    }
    return KEEL_OK;
}

typedef struct file_sink {
    int fd;
    const char *path;
} file_sink;

static int file_sink_write(void *ctx, const uint8_t *p, size_t n, keel_error *err)
{
    file_sink *f = ctx;
    if (keel__fs_write_all(f->fd, p, n) != 0)
        return keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot write %s", f->path);
    return KEEL_OK;
}

/* A temporary file beside path; its name into tmp. */
static int open_tmp(const char *path, char *tmp, size_t n, keel_error *err)
{
    if (keel__snprintf(tmp, n, "%s.tmp.XXXXXX", path))
        return -keel__err(err, KEEL_EINVALID, "output path too long: %s", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return -keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot create %s", tmp);
    if (fchmod(fd, 0644) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return -keel__err_errno(err, keel__err_from_errno(e), e, "cannot chmod %s", tmp);
    }
    return fd;
}

/* fsync, close, rename over path, fsync the directory; on failure removes tmp. */
static int commit_tmp(int fd, const char *tmp, const char *path, keel_error *err)
{
    int rc = KEEL_OK;
    if (keel__fs_fsync(fd) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot sync %s", tmp);
    if (close(fd) != 0 && rc == KEEL_OK)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot close %s", tmp);
    if (rc == KEEL_OK && keel__fs_rename(tmp, path) != 0)
        rc = keel__err_errno(err, keel__err_from_errno(errno), errno, "cannot rename %s to %s", tmp,
                             path);
    if (rc) {
        unlink(tmp);
        return rc;
    }
    return keel__fs_fsync_parent(path, err);
}

int keel__patch_apply(const char *base_path, const char *patch_path, const char *out_path,
                      const uint8_t expect_sha256[32], keel_error *err)
{
    keel__patch_info info;
    uint64_t psize = 0, bsize = 0;
    uint8_t *base = NULL, sha[32];
    char tmp[4096];
    int pfd, bfd = -1, ofd = -1, rc;
    memset(&info, 0, sizeof(info));
    pfd = open_sized(patch_path, &psize, err);
    if (pfd < 0)
        return -pfd;
    patch_src src = {.fd = pfd, .path = patch_path};
    if ((rc = read_info(&src, psize, &info, err))) {
        keel__err_prefix(err, "%s", patch_path);
        goto out;
    }
    if (memcmp(info.target_sha256, expect_sha256, 32) != 0) {
        char want[65], got[65];
        keel_hex_encode(expect_sha256, 32, want);
        keel_hex_encode(info.target_sha256, 32, got);
        rc = keel__err(err, KEEL_EINVALID,
                       "%s makes sha256 %s, not the expected %s: it is a patch for another "
                       "file; fetch the right patch or the file itself",
                       patch_path, got, want);
        goto out;
    }
    bfd = open_sized(base_path, &bsize, err);
    if (bfd < 0) {
        rc = -bfd;
        bfd = -1;
        goto out;
    }
    if (bsize != info.base_size) {
        memset(sha, 0, sizeof(sha));
        rc = base_mismatch(err, &info, bsize, sha);
        keel__err_prefix(err, "%s", base_path);
        goto out;
    }
    /* The base is not hashed up front: that costs as much as the
     * decompression; a wrong base ends in a failure below, and is named
     * there. */
    if ((rc = read_whole(bfd, base_path, bsize, &base, NULL, err)))
        goto out;
    ofd = open_tmp(out_path, tmp, sizeof(tmp), err);
    if (ofd < 0) {
        rc = -ofd;
        ofd = -1;
        goto out;
    }
    file_sink fs = {ofd, out_path};
    rc = apply_common(base, &info, &src, file_sink_write, &fs, sha, err);
    if (rc == KEEL_OK && memcmp(sha, expect_sha256, 32) != 0) {
        char want[65], got[65];
        keel_hex_encode(expect_sha256, 32, want);
        keel_hex_encode(sha, 32, got);
        rc = keel__err(err, KEEL_ECORRUPT,
                       "applying %s gave sha256 %s, not the expected %s: the patch is corrupt; "
                       "nothing was written; fetch the file or its chunks instead",
                       patch_path, got, want);
    }
    if (rc && rc != KEEL_ENOMEM) {
        keel_error e2;
        uint8_t bsha[32];
        if (keel_sha256_file(base_path, bsha, NULL, &e2) == KEEL_OK &&
            memcmp(bsha, info.base_sha256, 32) != 0) {
            rc = base_mismatch(err, &info, bsize, bsha);
            keel__err_prefix(err, "%s", base_path);
        }
    }
    if (rc) {
        close(ofd);
        unlink(tmp);
        ofd = -1;
        goto out;
    }
    rc = commit_tmp(ofd, tmp, out_path, err);
    ofd = -1;
out:
    if (ofd >= 0) {
        close(ofd);
        unlink(tmp);
    }
    if (bfd >= 0)
        close(bfd);
    close(pfd);
    free(base);
    keel__patch_info_done(&info);
    return rc;
}

/* --- make ------------------------------------------------------------------------------- */

typedef struct region_key {
    uint64_t len;
    uint32_t width, index;
} region_key;

static int key_cmp(const void *a, const void *b)
{
    const region_key *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    if (x->width != y->width)
        return x->width < y->width ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Pairs the k-th target tensor of a (length, width) with the k-th base
 * tensor of the same (length, width). Returns how many were paired. */
static size_t pair_regions(const keel__patch_region *b, size_t nb, keel__patch_region *t, size_t nt)
{
    region_key *kb = calloc(nb + 1, sizeof(*kb)), *kt = calloc(nt + 1, sizeof(*kt));
    size_t paired = 0;
    if (!kb || !kt)
        goto out;
    for (size_t i = 0; i < nb; i++)
        kb[i] = (region_key){b[i].len, b[i].width, (uint32_t)i};
    for (size_t i = 0; i < nt; i++)
        kt[i] = (region_key){t[i].len, t[i].width, (uint32_t)i};
    qsort(kb, nb, sizeof(*kb), key_cmp);
    qsort(kt, nt, sizeof(*kt), key_cmp);
    for (size_t i = 0, j = 0; i < nt && j < nb;) {
        if (kt[i].len == kb[j].len && kt[i].width == kb[j].width) {
            t[kt[i].index].pair = kb[j].index + 1;
            paired++;
            i++, j++;
        } else if (kt[i].len < kb[j].len || (kt[i].len == kb[j].len && kt[i].width < kb[j].width)) {
            i++;
        } else {
            j++;
        }
    }
out:
    free(kb);
    free(kt);
    return paired;
}

/* The transformed target (a copy). */
static uint8_t *transform_target(uint32_t mode, const uint8_t *target, size_t tlen,
                                 const uint8_t *base, const keel__patch_region *br,
                                 const keel__patch_region *tr, size_t nt)
{
    uint8_t *out = malloc(tlen ? tlen : 1);
    if (!out)
        return NULL;
    if (tlen)
        memcpy(out, target, tlen);
    for (size_t k = 0; k < nt && mode != KEEL__PATCH_PLAIN; k++) {
        for (uint64_t o = 0; o < tr[k].len; o += KEEL__PATCH_BLOCK) {
            size_t blen =
                (size_t)(tr[k].len - o < KEEL__PATCH_BLOCK ? tr[k].len - o : KEEL__PATCH_BLOCK);
            const uint8_t *pair = NULL;
            if (tr[k].pair && mode >= KEEL__PATCH_SUB)
                pair = base + br[tr[k].pair - 1].off + o;
            block_forward(mode, tr[k].width, target + tr[k].off + o, pair, blen / tr[k].width,
                          out + tr[k].off + o);
        }
    }
    return out;
}

/* Segment ends: at most segment_max bytes, never inside a tensor block. */
static uint64_t segment_end(uint64_t start, uint64_t tlen, const keel__patch_region *tr, size_t nt,
                            uint32_t mode)
{
    uint64_t end = start + KEEL__PATCH_SEGMENT;
    if (end >= tlen)
        return tlen;
    for (size_t k = 0; k < nt && mode != KEEL__PATCH_PLAIN; k++) {
        if (tr[k].off < end && end < tr[k].off + tr[k].len) {
            uint64_t in = end - tr[k].off;
            uint64_t cut = tr[k].off + in / KEEL__PATCH_BLOCK * KEEL__PATCH_BLOCK;
            return cut > start ? cut : end; /* a block is smaller than a segment */
        }
    }
    return end;
}

static unsigned window_log(uint64_t n)
{
    unsigned w = WINDOW_LOG_MIN;
    while (w < WINDOW_LOG_MAX && ((uint64_t)1 << w) < n)
        w++;
    return w;
}

/* Compresses transformed target bytes [start, end) as one frame into dst,
 * ending a zstd block at each tensor plane of at least PLANE_FLUSH bytes:
 * zstd codes a block's literals with one Huffman table, and a table shared
 * by a plane of exponents and a plane of random mantissa bytes fits
 * neither (silero v5 -> v6: 2.8 KB smaller). Matches still reach across
 * blocks. Returns the frame's size or a zstd error code. */
#define PLANE_FLUSH 4096

static size_t compress_segment(ZSTD_CCtx *cctx, const uint8_t *xt, uint64_t start, uint64_t end,
                               const keel__patch_region *tr, size_t nt, uint32_t mode, uint8_t *dst,
                               size_t cap)
{
    ZSTD_outBuffer out = {dst, cap, 0};
    uint64_t pos = start;
    for (size_t k = 0; k < nt && mode != KEEL__PATCH_PLAIN; k++) {
        if (tr[k].off + tr[k].len <= start || tr[k].off >= end)
            continue;
        for (uint64_t o = 0; o < tr[k].len; o += KEEL__PATCH_BLOCK) {
            uint64_t blen = tr[k].len - o < KEEL__PATCH_BLOCK ? tr[k].len - o : KEEL__PATCH_BLOCK;
            uint64_t plane = blen / tr[k].width, b = tr[k].off + o;
            if (b < start || b + blen > end || plane < PLANE_FLUSH)
                continue;
            for (uint32_t p = 0; p <= tr[k].width; p++) {
                uint64_t cut = b + p * plane; /* the start of each plane, and the end */
                if (cut <= pos)
                    continue;
                ZSTD_inBuffer in = {xt + pos, (size_t)(cut - pos), 0};
                size_t r;
                do {
                    r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_flush);
                    if (ZSTD_isError(r))
                        return r;
                } while (r != 0 || in.pos < in.size);
                pos = cut;
            }
        }
    }
    ZSTD_inBuffer in = {xt + pos, (size_t)(end - pos), 0};
    size_t r;
    do {
        r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(r))
            return r;
    } while (r != 0);
    return out.pos;
}

/* One candidate patch for mode into *ret. */
static int make_one(uint32_t mode, const uint8_t *base, size_t blen, const uint8_t *target,
                    size_t tlen, keel__patch_region *br, size_t nb, keel__patch_region *tr,
                    size_t nt, const uint8_t bsha[32], const uint8_t tsha[32], keel_buf *ret,
                    keel_error *err)
{
    uint8_t *prefix = NULL, *xt = NULL, *frames = NULL;
    keel_buf table, payload;
    keel__patch_segment *segs = NULL;
    size_t nseg = 0, cap = (size_t)(tlen / KEEL__PATCH_BLOCK) + 2;
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    int rc = KEEL_OK;
    keel__buf_init(&table, 0);
    keel__buf_init(&payload, 0);
    if (mode == KEEL__PATCH_PLAIN)
        nb = nt = 0;
    prefix = malloc(blen ? blen : 1);
    segs = calloc(cap, sizeof(*segs));
    frames = malloc(ZSTD_compressBound(KEEL__PATCH_SEGMENT));
    if (!cctx || !prefix || !segs || !frames) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory making a patch");
        goto out;
    }
    if (blen)
        memcpy(prefix, base, blen);
    if ((rc = transform_base(mode, prefix, br, (uint32_t)nb, err)))
        goto out;
    xt = transform_target(mode, target, tlen, base, br, tr, nt);
    if (!xt) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory making a patch");
        goto out;
    }
    for (uint64_t start = 0; start < tlen;) {
        uint64_t end = segment_end(start, tlen, tr, nt, mode);
        size_t n = (size_t)(end - start), z;
        z = ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
        if (!ZSTD_isError(z))
            z = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, ZSTD_LEVEL);
        if (!ZSTD_isError(z))
            z = ZSTD_CCtx_setParameter(cctx, ZSTD_c_enableLongDistanceMatching, 1);
        if (!ZSTD_isError(z))
            z = ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, (int)window_log(blen + n));
        if (!ZSTD_isError(z))
            z = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
        if (!ZSTD_isError(z) && blen)
            z = ZSTD_CCtx_refPrefix(cctx, prefix, blen);
        if (!ZSTD_isError(z))
            z = ZSTD_CCtx_setPledgedSrcSize(cctx, n);
        if (!ZSTD_isError(z))
            z = compress_segment(cctx, xt, start, end, tr, nt, mode, frames,
                                 ZSTD_compressBound(KEEL__PATCH_SEGMENT));
        if (ZSTD_isError(z)) {
            rc = keel__err(err, KEEL_EINTERNAL, "zstd failed making a patch: %s",
                           ZSTD_getErrorName(z));
            goto out;
        }
        if (nseg == cap || keel__buf_append(&payload, frames, z)) {
            rc = keel__err(err, KEEL_ENOMEM, "out of memory making a patch");
            goto out;
        }
        segs[nseg++] = (keel__patch_segment){n, z};
        start = end;
    }
    /* the table */
    uint64_t prev = 0;
    rc = put_varint(&table, nb);
    for (size_t k = 0; k < nb && !rc; k++) {
        rc = put_varint(&table, br[k].off - prev) || put_varint(&table, br[k].len) ||
             put_varint(&table, br[k].width);
        prev = br[k].off + br[k].len;
    }
    prev = 0;
    rc = rc || put_varint(&table, nt);
    for (size_t k = 0; k < nt && !rc; k++) {
        uint32_t pair = mode >= KEEL__PATCH_SUB ? tr[k].pair : 0;
        rc = put_varint(&table, tr[k].off - prev) || put_varint(&table, tr[k].len) ||
             put_varint(&table, tr[k].width) || put_varint(&table, pair);
        prev = tr[k].off + tr[k].len;
    }
    rc = rc || put_varint(&table, nseg);
    for (size_t k = 0; k < nseg && !rc; k++)
        rc = put_varint(&table, segs[k].usize) || put_varint(&table, segs[k].csize);
    uint8_t hdr[KEEL__PATCH_HEADER_SIZE];
    memcpy(hdr, KEEL__PATCH_MAGIC, 8);
    put_u32(hdr + 8, KEEL__PATCH_VERSION);
    put_u32(hdr + 12, mode);
    put_u64(hdr + 16, blen);
    put_u64(hdr + 24, tlen);
    memcpy(hdr + 32, bsha, 32);
    memcpy(hdr + 64, tsha, 32);
    put_u32(hdr + 96, KEEL__PATCH_SEGMENT);
    put_u32(hdr + 100, (uint32_t)table.len);
    rc = rc || table.len > KEEL__PATCH_MAX_TABLE || keel__buf_append(ret, hdr, sizeof(hdr)) ||
         keel__buf_append(ret, table.data, table.len) ||
         keel__buf_append(ret, payload.data, payload.len);
    if (rc)
        rc = keel__err(err, KEEL_ENOMEM, "out of memory making a patch");
out:
    ZSTD_freeCCtx(cctx);
    free(prefix);
    free(xt);
    free(frames);
    free(segs);
    keel__buf_done(&table);
    keel__buf_done(&payload);
    return rc;
}

int keel__patch_make_mem(const uint8_t *base, size_t base_len, const uint8_t *target,
                         size_t target_len, int transform, uint8_t **ret, size_t *ret_len,
                         keel_error *err)
{
    keel__patch_region *br = NULL, *tr = NULL;
    size_t nb = 0, nt = 0, paired = 0;
    uint8_t bsha[32], tsha[32];
    keel_buf best;
    int rc = KEEL_OK;
    bool have = false;
    keel__buf_init(&best, 0);
    if (base_len > KEEL__PATCH_MAX_BASE || target_len > KEEL__PATCH_MAX_TARGET)
        return keel__err(err, KEEL_EUNSUPPORTED,
                         "files too large for a patch (base %zu bytes, limit %llu; target %zu, "
                         "limit %llu): send chunks instead",
                         base_len, (unsigned long long)KEEL__PATCH_MAX_BASE, target_len,
                         (unsigned long long)KEEL__PATCH_MAX_TARGET);
    br = calloc(KEEL__PATCH_MAX_REGIONS / 16, sizeof(*br));
    tr = calloc(KEEL__PATCH_MAX_REGIONS / 16, sizeof(*tr));
    if (!br || !tr) {
        rc = keel__err(err, KEEL_ENOMEM, "out of memory making a patch");
        goto out;
    }
    nb = keel__patch_onnx_regions(base, base_len, br, KEEL__PATCH_MAX_REGIONS / 16);
    nt = keel__patch_onnx_regions(target, target_len, tr, KEEL__PATCH_MAX_REGIONS / 16);
    paired = pair_regions(br, nb, tr, nt);
    keel_sha256_buf(base, base_len, bsha);
    keel_sha256_buf(target, target_len, tsha);
    for (uint32_t mode = 0; mode < KEEL__PATCH_NTRANSFORMS; mode++) {
        if (transform >= 0 && (uint32_t)transform != mode)
            continue;
        if (transform < 0 && mode != KEEL__PATCH_PLAIN && (nt == 0 || nb == 0))
            continue;
        if (transform < 0 && mode >= KEEL__PATCH_SUB && paired == 0)
            continue;
        keel_buf cand;
        keel__buf_init(&cand, 0);
        rc = make_one(mode, base, base_len, target, target_len, br, nb, tr, nt, bsha, tsha, &cand,
                      err);
        if (rc) {
            keel__buf_done(&cand);
            goto out;
        }
        if (!have || cand.len < best.len) {
            keel__buf_done(&best);
            best = cand;
            have = true;
        } else {
            keel__buf_done(&cand);
        }
    }
    *ret_len = best.len;
    *ret = (uint8_t *)keel__buf_steal(&best);
    if (!*ret)
        rc = keel__err(err, KEEL_ENOMEM, "out of memory making a patch");
out:
    free(br);
    free(tr);
    keel__buf_done(&best);
    return rc;
}

int keel__patch_make(const char *base_path, const char *target_path, const char *out_path,
                     keel_error *err)
{
    char *base = NULL, *target = NULL;
    size_t blen = 0, tlen = 0, plen = 0;
    uint8_t *patch = NULL;
    int rc;
    if ((rc = keel__fs_read(base_path, (size_t)KEEL__PATCH_MAX_BASE, &base, &blen, err)) ||
        (rc = keel__fs_read(target_path, (size_t)KEEL__PATCH_MAX_TARGET, &target, &tlen, err)))
        goto out;
    if ((rc = keel__patch_make_mem((const uint8_t *)base, blen, (const uint8_t *)target, tlen, -1,
                                   &patch, &plen, err)))
        goto out;
    rc = keel__fs_write_atomic(out_path, patch, plen, 0644, err);
out:
    free(base);
    free(target);
    free(patch);
    return rc;
}
