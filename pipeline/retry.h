/* Failure semantics of CONTRACTS §5: what a worker's answer means and how long to wait. */
#ifndef COFI_RETRY_H
#define COFI_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"

enum outcome_kind {
    OUTCOME_OK = 0,        /* 2xx with a JSON object */
    OUTCOME_RETRY = 1,     /* transient: try again after a delay */
    OUTCOME_PERMANENT = 2, /* the call fails at this stage, no retry */
};

/* Classifies one exchange. transport_error is true when no HTTP answer came (connection
 * failure, timeout); http_status is the status otherwise; body_is_object says whether the
 * body parsed as a JSON object. Can't fail. */
enum outcome_kind retry_classify(bool transport_error, long http_status, bool body_is_object);

/* Parses a Retry-After value (delta-seconds or an HTTP-date) into milliseconds from now_ms
 * (wall clock). Returns 0 and sets *out_ms (>= 0), or -1 when the value is not valid. */
int retry_parse_after(const char *value, int64_t now_wall_ms, int64_t *out_ms);

/* The wait before attempt number `attempt + 1` after `attempt` failed tries (attempt >= 1):
 * exponential from backoff_base_ms, capped at backoff_max_ms, with "equal jitter" (a
 * random point in the upper half). *seed is a per-thread random state. Can't fail. */
int64_t retry_backoff_ms(const struct cofi_worker_cfg *w, int attempt, uint64_t *seed);

/* A fast per-thread random generator (xorshift64*); *state must not be 0. */
uint64_t retry_rand(uint64_t *state);

#endif
