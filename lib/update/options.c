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
    /* USB / air gap and LAN peers (docs/update.md) */
    {"import_dir", KEEL__OPT_PATH, "", 0, 0, true,
     "a directory keeld watches for bundles and .keel files to import, or empty for none"},
    {"peer_serve", KEEL__OPT_BOOL, "false", 0, 0, true,
     "true to serve verified files to LAN peers (GET /api/chunks/sha256/HEX, no token)"},
    {"peers", KEEL__OPT_PATH, "", 0, 0, true,
     "peer base URLs (http://HOST:PORT) separated by commas, tried before the repositories"},
    {"peer_backoff", KEEL__OPT_DUR, "10m", 1, 7ull * 86400, true,
     "a duration like 10m to skip a peer that failed or served a bad chunk"},
    {"peer_beacon", KEEL__OPT_BOOL, "false", 0, 0, false,
     "true to find peers by UDP multicast beacons (and announce this keeld when peer_serve is on)"},
    {"peer_beacon_group", KEEL__OPT_STR, "239.255.84.80", 0, 0, false, "an IPv4 multicast address"},
    {"peer_beacon_port", KEEL__OPT_UINT, "8481", 1, 65535, false, "a UDP port 1..65535"},
    {"peer_beacon_if", KEEL__OPT_STR, "any", 0, 0, false,
     "the IPv4 address of the interface beacons use, or any"},
    {"peer_beacon_interval", KEEL__OPT_DUR, "10s", 1, 3600, false,
     "a duration like 10s between announcements (peers are forgotten after 3 missed)"},
    {"peer_url", KEEL__OPT_PATH, "", 0, 0, false,
     "the URL peers reach this keeld at (http://ADDR:PORT), or empty: from listen and port"},
    {"probation_requests", KEEL__OPT_UINT, "0", 0, 1000000000, true,
     "a number of requests after which a newly activated version is judged (0: only packages "
     "with a health section are watched, unless probation_time is set)"},
    {"probation_time", KEEL__OPT_DUR, "0", 0, 365ull * 86400, true,
     "a duration like 30m after which a newly activated version is judged, or 0"},
};
const keel__option_set keel__update_options = {"update", opts, KEEL_ARRAY_LEN(opts)};
