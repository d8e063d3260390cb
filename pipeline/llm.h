/* The NLP lane: llm.concurrency threads behind a counting semaphore, one request each. */
#ifndef COFI_LLM_H
#define COFI_LLM_H

#include <stdbool.h>

#include "common/error.h"
#include "pipeline/lane.h"

struct llm_lane;

/* Starts llm.concurrency threads. host is copied. Returns 0 or a negative status; *out is
 * owned by the caller (llm_lane_stop, then _free). */
int llm_lane_start(struct llm_lane **out, const struct lane_host *host, struct cofi_err *err);

/* Queues every job of q (left empty); steals them. A closed lane gives them back at once. */
void llm_lane_push_all(struct llm_lane *l, struct jobq *q);

/* Stops taking jobs: gives queued ones back, refuses new ones; requests in flight go on. */
void llm_lane_close(struct llm_lane *l);

/* Closes the lane, waits for in-flight requests until deadline_mono (then aborts them) and
 * joins the threads. */
void llm_lane_stop(struct llm_lane *l, int64_t deadline_mono);

/* Frees a stopped lane. Accepts NULL. */
void llm_lane_free(struct llm_lane *l);

/* Requests holding a permit (sent or about to be). Thread-safe. */
int llm_lane_in_flight(struct llm_lane *l);

/* The requests being sent or answered now (no permit waiting to send). Any thread. */
int llm_lane_requests(struct llm_lane *l);

/* The limit set last (this instance's share of the NLP API). Thread-safe. */
int llm_lane_limit(struct llm_lane *l);

/* True when, since the last call, a thread waited for a permit with every permit of the share
 * in use (the share, not the work, was the limit). Clears the flag. Thread-safe. */
bool llm_lane_take_limited(struct llm_lane *l);

/* Hands back up to n queued jobs (not those in flight) as LANE_GIVEN_BACK. Thread-safe. */
void llm_lane_give_back(struct llm_lane *l, size_t n);

/* Sets how many requests this instance may have in flight to the NLP API (its share). When it
 * returns, no request beyond the new limit starts any more. Thread-safe. */
void llm_lane_set_limit(struct llm_lane *l, int limit);

#endif
