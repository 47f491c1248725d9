/* fuzz_beacon.c - the LAN peer beacon datagram (lib/update/peers.c), as a
 * keeld with peer_beacon on reads it from anyone on its network. Accepted
 * beacons must carry a base URL the peer table takes and survive a format
 * and parse round trip; every refusal says why. */
#include <string.h>

#include "update/peers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    keel__beacon b, b2;
    keel_error e = {0};
    char buf[KEEL__BEACON_MAX * 8];
    if (keel__beacon_parse(data, size, &b, &e) != KEEL_OK) {
        if (!e.msg[0])
            __builtin_trap();
        return 0;
    }
    if (!keel__peer_url_valid(b.url) || strlen(b.device) >= sizeof(b.device))
        __builtin_trap();
    size_t n = keel__beacon_format(b.device, b.url, buf, sizeof(buf));
    if (n && (keel__beacon_parse(buf, n, &b2, &e) != KEEL_OK || strcmp(b.device, b2.device) ||
              strcmp(b.url, b2.url)))
        __builtin_trap();
    keel__peers *p = keel__peers_new();
    if (p) {
        char u[2][KEEL__PEER_URL_MAX];
        (void)keel__peers_seen(p, b.url, b.device, 30, 1);
        if (keel__peers_usable(p, 2, u, 2) != 1)
            __builtin_trap();
        keel__peers_free(p);
    }
    return 0;
}
