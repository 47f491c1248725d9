/* options.c - the uplink's settings (conf.h). */
#include "core/conf.h"
#include "sync/uplink.h"

static const keel__option opts[] = {
    {"uplink", KEEL__OPT_STR, "none", 0, 0, false, "none, mqtt or http"},
    {"mqtt_host", KEEL__OPT_PATH, "", 0, 0, false, "a host name or address"},
    {"mqtt_port", KEEL__OPT_UINT, "0", 0, 65535, false, "a TCP port"},
    {"uplink_url", KEEL__OPT_PATH, "", 0, 0, false, "an http:// or https:// URL"},
    {"uplink_ca", KEEL__OPT_PATH, "", 0, 0, false, "a CA certificate file (PEM)"},
    {"uplink_cert", KEEL__OPT_PATH, "", 0, 0, false, "a client certificate file (PEM)"},
    {"uplink_key", KEEL__OPT_PATH, "", 0, 0, false, "a private key file (PEM)"},
    {"uplink_username", KEEL__OPT_STR, "", 0, 0, false, "a user name"},
    {"uplink_password_file", KEEL__OPT_PATH, "", 0, 0, false, "a file holding the password"},
    {"sync_window", KEEL__OPT_STR, "always", 0, 0, false,
     "always, every 15m, 02:00-04:00, or both separated by a comma"},
    {"uplink_bandwidth", KEEL__OPT_SIZE, "0", 0, 1ull << 40, false,
     "bytes per second like 64K, or 0 for no cap"},
};
const keel__option_set keel__sync_options = {"sync", opts, KEEL_ARRAY_LEN(opts)};
