/* options.c - the queue's settings (conf.h), and the queue options they make. */
#include "core/conf.h"
#include "queue/options.h"

static const keel__option opts[] = {
    {"queue_sync", KEEL__OPT_BOOL, "false", 0, 0, false,
     "true (fsync per message) or false (group commit; the same promise per message)"},
    {"queue_max_bytes", KEEL__OPT_SIZE, "256M", 0, 1ull << 50, false, "a size like 256M"},
    {"queue_max_rows", KEEL__OPT_SIZE, "1000000", 0, 1ull << 40, false, "a count"},
    {"queue_min_free", KEEL__OPT_SIZE, "64M", 0, 1ull << 50, false, "a size like 64M"},
};
const keel__option_set keel__queue_options = {"queue", opts, KEEL_ARRAY_LEN(opts)};

void keel__queue_opts_from(const keel__conf *c, keel_queue_opts *ret)
{
    keel_queue_opts_default(ret);
    ret->durability = keel__conf_bool(c, "queue_sync") ? KEEL_QUEUE_SYNC : KEEL_QUEUE_GROUP;
    ret->max_bytes = keel__conf_u64(c, "queue_max_bytes");
    ret->max_rows = keel__conf_u64(c, "queue_max_rows");
    ret->min_free_disk = keel__conf_u64(c, "queue_min_free");
}
