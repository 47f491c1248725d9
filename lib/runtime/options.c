/* options.c - the runtime's own settings (conf.h), and the tables of the
 * modules it opens. */
#include "core/conf.h"
#include "queue/options.h"
#include "runtime/runtime.h"
#include "store/options.h"
#include "sync/uplink.h"
#include "update/options.h"

static const keel__option opts[] = {
    {"state_dir", KEEL__OPT_PATH, "/var/lib/keel", 0, 0, false, "a directory path"},
    {"trust_dir", KEEL__OPT_PATH, "", 0, 0, true, "a directory path"},
    {"device_id", KEEL__OPT_STR, "", 0, 0, false, "a name of 1..63 bytes"},
    {"verify_interval", KEEL__OPT_DUR, "24h", 0, 365ull * 86400, true,
     "a duration like 24h, or 0 to turn the background re-check off"},
    {"trust_check_interval", KEEL__OPT_DUR, "5s", 0, 86400, true,
     "a duration like 5s, or 0 for no periodic look (start, SIGHUP, slot actions only)"},
    {"log_level", KEEL__OPT_LEVEL, "info", 0, 0, true, "one of error, warn, info, debug"},
    {"syslog", KEEL__OPT_BOOL, "false", 0, 0, false, "true or false"},
};
const keel__option_set keel__runtime_options = {"runtime", opts, KEEL_ARRAY_LEN(opts)};

const keel__option_set *const *keel__runtime_option_sets(size_t *ret_n)
{
    static const keel__option_set *const sets[] = {
        &keel__runtime_options, &keel__store_options, &keel__queue_options,
        &keel__infer_options,   &keel__sync_options,  &keel__update_options,
    };
    *ret_n = KEEL_ARRAY_LEN(sets);
    return sets;
}
