/*
 * delta_chunks.c OLD NEW - keel's chunk transfer for an update: the bytes of
 * NEW's content-defined chunks (lib/pkg/chunk.c, as in a package manifest)
 * whose hashes OLD's chunks do not have. Prints "<bytes> <chunks>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"

typedef struct list {
    keel_chunk *c;
    size_t n, cap;
} list;

static void add(void *ud, const keel_chunk *c)
{
    list *l = ud;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->c = realloc(l->c, l->cap * sizeof(*l->c));
        if (!l->c)
            exit(1);
    }
    l->c[l->n++] = *c;
}

static void chunk_file(const char *path, list *l)
{
    FILE *f = fopen(path, "rb");
    static unsigned char buf[1 << 16];
    size_t r;
    keel_chunker *ch = keel_chunker_new(add, l);
    if (!f || !ch) {
        fprintf(stderr, "delta_chunks: cannot read %s\n", path);
        exit(1);
    }
    while ((r = fread(buf, 1, sizeof(buf), f)) > 0)
        keel_chunker_update(ch, buf, r);
    keel_chunker_finish(ch);
    keel_chunker_free(ch);
    fclose(f);
}

int main(int argc, char **argv)
{
    list a = {0}, b = {0};
    unsigned long long bytes = 0, count = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: delta_chunks OLD NEW\n");
        return 2;
    }
    chunk_file(argv[1], &a);
    chunk_file(argv[2], &b);
    for (size_t i = 0; i < b.n; i++) {
        int have = 0;
        for (size_t j = 0; j < a.n && !have; j++)
            have = !memcmp(a.c[j].sha256, b.c[i].sha256, sizeof(b.c[i].sha256));
        if (!have) {
            bytes += b.c[i].len;
            count++;
        }
    }
    printf("%llu %llu\n", bytes, count);
    free(a.c);
    free(b.c);
    return 0;
}
