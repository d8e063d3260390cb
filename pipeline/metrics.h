/* This instance's figures per stage: recent latency and throughput (a sliding window), and
 * totals since start (counters and fixed-bucket histograms, for GET /metrics). */
#ifndef COFI_METRICS_H
#define COFI_METRICS_H

#include <stdint.h>

#include "common/histo.h"
#include "common/stages.h"
#include "pipeline/engine.h"

struct stage_metrics;

/* A new, empty set of metrics for every stage, or NULL when out of memory. */
struct stage_metrics *metrics_new(void);

/* Frees m. Accepts NULL. */
void metrics_free(struct stage_metrics *m);

/* Records one finished request at stage (success or not). Thread-safe; can't fail. */
void metrics_record(struct stage_metrics *m, int stage, int64_t latency_us);

/* What the engine decided about an answered request. */
enum metrics_outcome {
    METRICS_SUCCEEDED = 0, /* the stage's result is recorded */
    METRICS_RETRIED,       /* tried again later */
    METRICS_FAILED,        /* the call failed at the stage */
};

/* Counts an outcome at stage. Thread-safe, lock-free; can't fail. */
void metrics_count(struct stage_metrics *m, int stage, enum metrics_outcome outcome);

/* Counts one flush (one statement writing many records) that took us microseconds.
 * Thread-safe, lock-free; can't fail. */
void metrics_observe_flush(struct stage_metrics *m, int64_t us);

/* Counts one claim of calls from the database that took us microseconds. Thread-safe,
 * lock-free; can't fail. */
void metrics_observe_claim(struct stage_metrics *m, int64_t us);

/* Totals since start. */
struct metrics_totals {
    uint64_t requests[STAGE_COUNT];             /* answered requests (whatever the answer) */
    uint64_t outcomes[STAGE_COUNT][3];          /* by enum metrics_outcome */
    struct histo_snapshot latency[STAGE_COUNT]; /* of answered requests */
    struct histo_snapshot flush;
    struct histo_snapshot claim;
};

/* Copies the totals into out. Thread-safe; can't fail (m NULL: zeros). */
void metrics_totals(struct stage_metrics *m, struct metrics_totals *out);

/* Fills throughput and percentiles over the last window into out (other fields untouched).
 * Thread-safe; can't fail. */
void metrics_read(struct stage_metrics *m, int stage, struct stage_live *out);

#endif
