/* options.c - the HTTP server's settings (conf.h). */
#include "core/conf.h"
#include "http/server.h"

static const keel__option opts[] = {
    {"listen", KEEL__OPT_STR, "127.0.0.1", 0, 0, false,
     "an address with an optional port: 127.0.0.1, 0.0.0.0:8480, [::1]:8480, localhost"},
    {"port", KEEL__OPT_UINT, "8480", 0, 65535, false, "a TCP port 0..65535 (0 disables TCP)"},
    {"unix_socket", KEEL__OPT_PATH, "", 0, 0, false, "a socket path, or empty for none"},
    {"threads", KEEL__OPT_UINT, "2", 1, 256, false, "a number of threads 1..256"},
    {"max_connections", KEEL__OPT_UINT, "64", 1, 65536, false, "a count 1..65536"},
    {"max_connections_per_ip", KEEL__OPT_UINT, "16", 0, 65536, false,
     "a count 0..65536 (connections one client address other than 127.0.0.1 and ::1 may "
     "hold; 0: no bound)"},
    {"connection_reserve", KEEL__OPT_UINT, "8", 0, 65536, false,
     "a count 0..65536 (connections over max_connections kept for 127.0.0.1 and ::1)"},
    {"request_timeout", KEEL__OPT_DUR, "30s", 1, 86400, false, "a duration like 30s or 2m"},
    {"header_timeout", KEEL__OPT_DUR, "10s", 1, 3600, false,
     "a duration 1s..1h (a request's headers must be in within it)"},
    {"min_body_rate", KEEL__OPT_SIZE, "1K", 0, 1ull << 30, false,
     "bytes a second like 1K, or 0 for no bound (a body slower than this on average, after "
     "header_timeout, is cut off)"},
    {"max_body", KEEL__OPT_SIZE, "1M", 1024, 1ull << 32, true, "a size like 1M (>= 1K)"},
    {"max_infer_body", KEEL__OPT_SIZE, "64M", 1024, 1ull << 32, true, "a size like 64M (>= 1K)"},
    {"read_auth", KEEL__OPT_BOOL, "false", 0, 0, true,
     "true (GET /api/... needs the bearer token) or false (open to whoever reaches the "
     "listen address)"},
};
const keel__option_set keel__http_options = {"http", opts, KEEL_ARRAY_LEN(opts)};
