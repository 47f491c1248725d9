/*
 * peers.h - the LAN peer table (docs/update.md, "LAN peers"): keelds on
 * the same network that serve their verified files read-only
 * (GET /api/chunks/sha256/HEX). Peers come from the `peers` setting
 * (configured, kept) or from multicast beacons (discovered, forgotten
 * after a TTL); a peer that failed or served a bad chunk is skipped for a
 * backoff period. Peers are untrusted mirrors: the fetcher checks every byte
 * against signed hashes, this table only decides whom to ask first.
 *
 * Also the beacon datagram's format: {"keel":1,"device":ID,"url":URL},
 * parsed with bounds (at most KEEL__BEACON_MAX bytes, a URL of at most 255
 * bytes, http:// only).
 *
 * Pure: no sockets, no clock of its own (callers pass monotonic
 * nanoseconds). Thread safety: every function may be called from any
 * thread.
 */
#ifndef KEEL_UPDATE_PEERS_H
#define KEEL_UPDATE_PEERS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"

#define KEEL__PEERS_MAX    64  /* configured and discovered together */
#define KEEL__PEER_URL_MAX 256 /* with the NUL */
#define KEEL__BEACON_MAX   512 /* a datagram */

typedef struct keel__peers keel__peers;

/* NULL when out of memory. */
keel__peers *keel__peers_new(void);
void keel__peers_free(keel__peers *p);

/* Replaces the configured peers with list ("http://a:8480,http://b:8480";
 * spaces around commas allowed; empty: none). Each must be an http:// URL
 * with a host and no path beyond "/"; KEEL_EINVALID names the bad one and
 * nothing changes. Backoffs of peers that stay are kept. */
KEEL_WUR int keel__peers_configure(keel__peers *p, const char *list, keel_error *err);
/* Seconds a failing peer is skipped (peer_backoff). */
void keel__peers_set_backoff(keel__peers *p, uint64_t seconds);

/* A beacon from device announced url: added or refreshed, usable until
 * now + ttl_s. A full table drops the discovered peer seen longest ago.
 * Returns true when it is new. */
bool keel__peers_seen(keel__peers *p, const char *url, const char *device, uint64_t ttl_s,
                      uint64_t now_ns);
/* A peer failed or served a bad chunk: skipped for the backoff period. */
void keel__peers_bad(keel__peers *p, const char *url, const char *why, uint64_t now_ns);

/* Base URLs to try now, configured first (in their order), then
 * discovered ones (most recently seen first); expired and backed-off peers
 * are left out. Copies at most max into out; returns how many. */
size_t keel__peers_usable(keel__peers *p, uint64_t now_ns, char (*out)[KEEL__PEER_URL_MAX],
                          size_t max);
/* [{"url","source":"configured"|"discovered","device","usable",
 *   "backoff_s","why","expires_s"}] (malloc'd); NULL when out of memory. */
char *keel__peers_json(keel__peers *p, uint64_t now_ns);

/* --- the beacon ------------------------------------------------------------------ */

typedef struct keel__beacon {
    char device[64];
    char url[KEEL__PEER_URL_MAX];
} keel__beacon;

/* Parses a datagram (len bytes, not NUL-terminated). */
KEEL_WUR int keel__beacon_parse(const void *data, size_t len, keel__beacon *ret, keel_error *err);
/* Writes the datagram for device and url into buf; its length, or 0 when
 * it does not fit. */
size_t keel__beacon_format(const char *device, const char *url, char *buf, size_t n);
/* Whether url is a peer base URL this table takes (http://HOST[:PORT][/]). */
bool keel__peer_url_valid(const char *url);

#endif
