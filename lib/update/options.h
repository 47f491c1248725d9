/* options.h - the update module's settings (conf.h): repositories, channel,
 * checks, import, peers, probation. */
#ifndef KEEL_UPDATE_OPTIONS_H
#define KEEL_UPDATE_OPTIONS_H

#include "core/conf.h"

extern const keel__option_set keel__update_options;

#endif
