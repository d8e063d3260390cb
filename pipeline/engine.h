/* The pipeline engine: claims calls from PostgreSQL and drives them through the stages. */
#ifndef COFI_ENGINE_H
#define COFI_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "common/config.h"
#include "pipeline/limiter.h"  /* struct llm_limit_snapshot */
#include "pipeline/mediator.h" /* struct node_live */

struct engine;
struct metrics_totals; /* pipeline/metrics.h */

/* Recent figures for one stage, as seen by this instance (a sliding window of about 10 s). */
struct stage_live {
    int concurrency_limit;         /* sum of node capacities, or llm.concurrency */
    int in_flight;                 /* requests this instance has in flight at this stage */
    double throughput_per_s;       /* completions per second over the window */
    double p50_ms, p95_ms, p99_ms; /* request latency over the window; 0 when none */
};

/* Starts the engine's threads for this instance (id used as lease owner). cfg must outlive
 * the engine. Returns 0 or a negative cofi_status; *out is owned by the caller, who ends
 * it with engine_stop, then engine_free. */
int engine_start(struct engine **out, const struct cofi_config *cfg, const char *instance_id,
                 struct cofi_err *err);

/* Tells the engine that a batch was started, resumed or cancelled, so it looks at once
 * instead of at its next poll. Thread-safe; can't fail; accepts NULL. */
void engine_wake(struct engine *e);

/* Fills *out for stage (0..6). Thread-safe; can't fail; with e NULL fills zeros and the
 * configured limit is unknown (0). */
void engine_stage_live(struct engine *e, int stage, struct stage_live *out);

/* The cluster's adaptive NLP limit as this instance last saw it (pipeline/limiter.h): for
 * /stages/{llm}/status and /metrics. Thread-safe; accepts e NULL (zeroes out). */
void engine_llm_limit(struct engine *e, struct llm_limit_snapshot *out);

/* Copies up to max nodes into out and returns the number of configured nodes.
 * Thread-safe; accepts e NULL (returns 0). */
size_t engine_nodes(struct engine *e, struct node_live *out, size_t max);

/* Copies this instance's totals since start (counters and histograms of pipeline/metrics.h).
 * Thread-safe, lock-free; with e NULL fills zeros. */
void engine_totals(struct engine *e, struct metrics_totals *out);

/* This instance's requests in flight to the NLP API and its limit of them (its share of
 * llm.concurrency). Thread-safe; with e NULL both are 0. */
void engine_nlp_live(struct engine *e, int *in_flight, int *limit);

/* Stops dispatching, waits up to grace_ms for in-flight requests to finish and be recorded,
 * releases this instance's claims (so another instance can take them at once) and stops the
 * threads. The engine stays readable (engine_stage_live, engine_nodes, engine_wake) until
 * engine_free, so the API can answer while it drains. Accepts NULL. */
void engine_stop(struct engine *e, int grace_ms);

/* Frees a stopped engine. Nothing may use it any more: stop the API's threads first (the
 * status handlers and the background re-rendering read it). Accepts NULL. */
void engine_free(struct engine *e);

#endif
