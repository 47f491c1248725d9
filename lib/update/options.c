/* options.c - the update module's settings (conf.h). */
#include "update/options.h"

static const keel__option opts[] = {
    {"update_repos", KEEL__OPT_PATH, "", 0, 0, true,
     "repository base URLs (http://, https://, or file:// for a folder such as a mounted USB "
     "stick), separated by commas, or empty for none"},
    {"update_packages", KEEL__OPT_PATH, "", 0, 0, true,
     "package names to follow besides the installed ones, separated by commas (a new device "
     "installs them from the repository)"},
    {"update_channel", KEEL__OPT_STR, "stable", 0, 0, true, "a channel name"},
    {"update_interval", KEEL__OPT_DUR, "1h", 0, 365ull * 86400, true,
     "a duration like 1h between automatic checks, or 0 to check only when asked"},
    {"update_apply", KEEL__OPT_BOOL, "true", 0, 0, true,
     "true to download, validate and activate what a check finds; false to report it only"},
    {"probation_requests", KEEL__OPT_UINT, "0", 0, 1000000000, true,
     "a number of requests after which a newly activated version is judged (0: only packages "
     "with a health section are watched, unless probation_time is set)"},
    {"probation_time", KEEL__OPT_DUR, "0", 0, 365ull * 86400, true,
     "a duration like 30m after which a newly activated version is judged, or 0"},
};
const keel__option_set keel__update_options = {"update", opts, KEEL_ARRAY_LEN(opts)};
