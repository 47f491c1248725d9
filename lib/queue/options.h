/* options.h - the queue's settings (declared in options.c). */
#ifndef KEEL_QUEUE_OPTIONS_H
#define KEEL_QUEUE_OPTIONS_H

#include "core/conf.h"
#include "keel/queue.h"

extern const keel__option_set keel__queue_options;
/* The queue options the settings in c ask for. */
void keel__queue_opts_from(const keel__conf *c, keel_queue_opts *ret);

#endif
