/* The word of a Retry-After from the other instances: a thread on a connection of its own
 * LISTENs for the pauses they write (db/limiter_db.h) and passes each on (the engine holds
 * this instance's new NLP requests at once, instead of at its next lease beat). The lease beat
 * still reads the row, so a missed word (a reconnect) costs at most a beat. */
#ifndef COFI_PAUSE_WATCH_H
#define COFI_PAUSE_WATCH_H

#include "common/error.h"
#include <stdint.h>

struct pause_watch;

/* Starts the thread (conninfo and instance are copied). heard(ctx, ms) is called from it for
 * each pause of ms another instance announces. Returns 0 or a negative status with err. */
int pause_watch_start(struct pause_watch **out, const char *conninfo, const char *instance,
                      void (*heard)(void *ctx, int64_t ms), void *ctx, struct cofi_err *err);

/* Stops the thread and frees w. Accepts NULL. */
void pause_watch_stop(struct pause_watch *w);

#endif
