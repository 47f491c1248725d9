/*
 * mosq_dl.h - libmosquitto, loaded with dlopen on first use.
 *
 * keeld needs an MQTT client only when an MQTT uplink is configured; most
 * starts have none. lib/sync includes this header instead of calling
 * libmosquitto directly; each call goes through a table filled by
 * keel__mosq_load(), which must succeed first and also runs
 * mosquitto_lib_init once. Tests that run a broker-side client link
 * libmosquitto themselves and do not use this header.
 */
#ifndef KEEL_SYNC_MOSQ_DL_H
#define KEEL_SYNC_MOSQ_DL_H

#include <mosquitto.h>

#include "core/core.h"

#define KEEL__MOSQ_FUNCS(X)                                                                        \
    X(mosquitto_connack_string)                                                                    \
    X(mosquitto_connect_async)                                                                     \
    X(mosquitto_connect_callback_set)                                                              \
    X(mosquitto_destroy)                                                                           \
    X(mosquitto_disconnect)                                                                        \
    X(mosquitto_disconnect_callback_set)                                                           \
    X(mosquitto_int_option)                                                                        \
    X(mosquitto_lib_init)                                                                          \
    X(mosquitto_loop_misc)                                                                         \
    X(mosquitto_loop_read)                                                                         \
    X(mosquitto_loop_write)                                                                        \
    X(mosquitto_message_callback_set)                                                              \
    X(mosquitto_new)                                                                               \
    X(mosquitto_publish)                                                                           \
    X(mosquitto_publish_callback_set)                                                              \
    X(mosquitto_socket)                                                                            \
    X(mosquitto_strerror)                                                                          \
    X(mosquitto_subscribe)                                                                         \
    X(mosquitto_tls_set)                                                                           \
    X(mosquitto_username_pw_set)                                                                   \
    X(mosquitto_want_write)

typedef struct keel__mosq_api {
#define KEEL__MOSQ_MEMBER(f) __typeof__(&f) f;
    KEEL__MOSQ_FUNCS(KEEL__MOSQ_MEMBER)
#undef KEEL__MOSQ_MEMBER
} keel__mosq_api;

extern keel__mosq_api keel__mosq;

/* Loads libmosquitto once (thread-safe) and runs mosquitto_lib_init; never
 * unloaded. Fails with a message naming the package to install. */
KEEL_WUR int keel__mosq_load(keel_error *err);

#ifndef KEEL__MOSQ_DL_IMPL
#define mosquitto_connack_string          (keel__mosq.mosquitto_connack_string)
#define mosquitto_connect_async           (keel__mosq.mosquitto_connect_async)
#define mosquitto_connect_callback_set    (keel__mosq.mosquitto_connect_callback_set)
#define mosquitto_destroy                 (keel__mosq.mosquitto_destroy)
#define mosquitto_disconnect              (keel__mosq.mosquitto_disconnect)
#define mosquitto_disconnect_callback_set (keel__mosq.mosquitto_disconnect_callback_set)
#define mosquitto_int_option              (keel__mosq.mosquitto_int_option)
#define mosquitto_lib_init                (keel__mosq.mosquitto_lib_init)
#define mosquitto_loop_misc               (keel__mosq.mosquitto_loop_misc)
#define mosquitto_loop_read               (keel__mosq.mosquitto_loop_read)
#define mosquitto_loop_write              (keel__mosq.mosquitto_loop_write)
#define mosquitto_message_callback_set    (keel__mosq.mosquitto_message_callback_set)
#define mosquitto_new                     (keel__mosq.mosquitto_new)
#define mosquitto_publish                 (keel__mosq.mosquitto_publish)
#define mosquitto_publish_callback_set    (keel__mosq.mosquitto_publish_callback_set)
#define mosquitto_socket                  (keel__mosq.mosquitto_socket)
#define mosquitto_strerror                (keel__mosq.mosquitto_strerror)
#define mosquitto_subscribe               (keel__mosq.mosquitto_subscribe)
#define mosquitto_tls_set                 (keel__mosq.mosquitto_tls_set)
#define mosquitto_username_pw_set         (keel__mosq.mosquitto_username_pw_set)
#define mosquitto_want_write              (keel__mosq.mosquitto_want_write)
#endif

#endif
