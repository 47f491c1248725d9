/* options.h - the store's settings (declared in options.c). */
#ifndef KEEL_STORE_OPTIONS_H
#define KEEL_STORE_OPTIONS_H

#include "core/conf.h"
#include "keel/config.h"

extern const keel__option_set keel__store_options;
/* The limits the settings in c ask for. */
void keel__store_limits_from(const keel__conf *c, keel_limits *ret);

#endif
