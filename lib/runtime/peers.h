/*
 * peers.h - LAN peers in the runtime (docs/update.md, "LAN peers"): the
 * peer table (lib/update/peers.h) kept in step with the `peers` and
 * `peer_backoff` settings, and the multicast beacon thread: with
 * peer_beacon on it listens for announcements and adds their senders; with
 * peer_serve on too it announces this keeld every peer_beacon_interval.
 */
#ifndef KEEL_RUNTIME_PEERS_H
#define KEEL_RUNTIME_PEERS_H

#include "runtime/runtime.h"
#include "update/peers.h"

/* Peer base URLs to try now, configured first (see keel__peers_usable). */
size_t keel__runtime_peers_usable(keel__runtime *rt, char (*out)[KEEL__PEER_URL_MAX], size_t max);
/* A peer failed or served a bad chunk: skipped for peer_backoff. */
void keel__runtime_peer_bad(keel__runtime *rt, const char *url, const char *why);
/* The table as JSON (malloc'd): /api/status's "peers". */
char *keel__runtime_peers_json(keel__runtime *rt);

#endif
