/* queue_fill DIR N: enqueues N inference-record-like messages (about 200
 * bytes of JSON, all four classes) into DIR/queue.db with group commit
 * from 4 threads, for bench/queue_rss.sh. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"
#include "keel/queue.h"

static keel_queue *q;
static long per_thread;

static void *fill(void *arg)
{
    long t = (long)(intptr_t)arg;
    char payload[256];
    keel_error e;
    for (long i = 0; i < per_thread; i++) {
        int n = snprintf(payload, sizeof(payload),
                         "{\"model\":\"mnist\",\"version\":\"1.0.0\",\"tier\":\"primary\","
                         "\"latency_us\":%ld.5,\"result\":[{\"label\":\"%ld\",\"index\":%ld,"
                         "\"confidence\":0.98%04ld}],\"thread\":%ld}",
                         i % 997, i % 10, i % 10, i % 10000, t);
        keel_msg_in m = {.topic = "records/mnist",
                         .prio = (keel_prio)(i % 4),
                         .payload = payload,
                         .payload_len = (size_t)n,
                         .content_type = "application/json"};
        if (keel_queue_enqueue(q, &m, NULL, &e)) {
            fprintf(stderr, "queue_fill: %s\n", e.msg);
            exit(1);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char path[4096];
    keel_error e;
    keel_queue_opts o;
    if (argc != 3) {
        fprintf(stderr, "usage: queue_fill DIR N\n");
        return 2;
    }
    snprintf(path, sizeof(path), "%s/queue.db", argv[1]);
    keel_queue_opts_default(&o);
    o.max_rows = 0;
    o.max_bytes = 0;
    if (keel_queue_open(path, &o, &q, &e)) {
        fprintf(stderr, "queue_fill: %s\n", e.msg);
        return 1;
    }
    per_thread = atol(argv[2]) / 4;
    pthread_t th[4];
    for (long t = 0; t < 4; t++)
        pthread_create(&th[t], NULL, fill, (void *)(intptr_t)t);
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    keel_queue_close(q);
    return 0;
}
