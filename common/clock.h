/* Monotonic and wall-clock time helpers. */
#ifndef COFI_CLOCK_H
#define COFI_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds on the monotonic clock. Can't fail. */
int64_t clock_mono_ms(void);

/* Microseconds on the monotonic clock. Can't fail. */
int64_t clock_mono_us(void);

/* Milliseconds since the Unix epoch. Can't fail. */
int64_t clock_wall_ms(void);

/* Writes the wall-clock time `ms` (Unix epoch ms) as RFC 3339 UTC with milliseconds,
 * "2026-11-27T01:02:03.456Z", into out (at least 32 bytes). Can't fail. */
void clock_format_rfc3339(int64_t ms, char *out, size_t outlen);

/* Adds ms milliseconds to an absolute CLOCK_MONOTONIC timespec (for pthread_cond_timedwait
 * on a condition variable created with clock_cond_init). */
struct timespec clock_deadline_ms(int64_t ms);

/* Initialises a condition variable that waits on CLOCK_MONOTONIC. Returns 0 or errno. */
#include <pthread.h>
int clock_cond_init(pthread_cond_t *cond);

/* Sleeps for ms milliseconds (restarting after signals). */
void clock_sleep_ms(int64_t ms);

#endif
