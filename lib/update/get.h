/* get.h - one small HTTP(S) GET with a size limit, for repository metadata
 * (timestamp, index). Large files go through fetch.h. */
#ifndef KEEL_UPDATE_GET_H
#define KEEL_UPDATE_GET_H

#include "core/core.h"

/* GETs url into out (its max is raised to max bytes). A body larger than
 * max is TOOBIG; a transport failure is KEEL_ENOCONN ("cannot reach ...");
 * an HTTP status other than 200 is NOTFOUND (404) or IO, naming the URL. */
KEEL_WUR int keel__update_get(const char *url, size_t max, unsigned timeout_s, keel_buf *out,
                              keel_error *err);

#endif
