/* options.c - the inference engine's settings (conf.h). */
#include "core/conf.h"
#include "infer/infer.h"

static const keel__option opts[] = {
    {"max_sessions", KEEL__OPT_SIZE, "1024", 1, 1000000, false, "a count 1..1000000"},
    {"session_idle", KEEL__OPT_DUR, "5m", 1, 86400, false, "a duration like 5m"},
    {"upstream_url", KEEL__OPT_PATH, "", 0, 0, false,
     "an Open Inference Protocol endpoint like http://fog:8480, or empty"},
};
const keel__option_set keel__infer_options = {"infer", opts, KEEL_ARRAY_LEN(opts)};
