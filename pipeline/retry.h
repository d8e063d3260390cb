/* Failure semantics: what a worker's answer means and how long to wait before trying again. */
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
 * (wall clock), at most 24 h (86400000). Returns 0 and sets *out_ms (>= 0), or -1 when the
 * value is not valid (*out_ms unchanged). */
int retry_parse_after(const char *value, int64_t now_wall_ms, int64_t *out_ms);

/* The wait before attempt number `attempt + 1` after `attempt` failed tries (attempt >= 1):
 * exponential from backoff_base_ms, capped at backoff_max_ms, with "equal jitter" (a
 * random point in the upper half). *seed is a per-thread random state. Can't fail. */
int64_t retry_backoff_ms(const struct cofi_worker_cfg *w, int attempt, uint64_t *seed);

/* The wait in ms before the next try after `attempt` failed tries (attempt >= 1) of a
 * worker of kind w. *seed is a per-thread random state (not 0), advanced.
 *   - retry_after_ms >= 0 (the worker sent Retry-After): r = min(retry_after_ms,
 *     w->retry_after_max_ms), plus a jitter drawn uniformly from [0, max(r / 10,
 *     w->backoff_base_ms)], so calls told the same Retry-After at the same moment do not all
 *     come back in the same millisecond. The wait is never below r, so a Retry-After up to
 *     retry_after_max_ms is always honoured; a longer one is cut to retry_after_max_ms.
 *   - retry_after_ms < 0 (no Retry-After): retry_backoff_ms(w, attempt, seed).
 * The result is >= 0. Can't fail. */
int64_t retry_delay_ms(const struct cofi_worker_cfg *w, int attempt, int64_t retry_after_ms,
                       uint64_t *seed);

/* A fast per-thread random generator (xorshift64*); *state must not be 0. */
uint64_t retry_rand(uint64_t *state);

#endif
