/* Recent per-stage latency and throughput, kept in memory by this instance. */
#ifndef COFI_METRICS_H
#define COFI_METRICS_H

#include <stdint.h>

#include "pipeline/engine.h"

struct stage_metrics;

/* A new, empty set of metrics for every stage, or NULL when out of memory. */
struct stage_metrics *metrics_new(void);

/* Frees m. Accepts NULL. */
void metrics_free(struct stage_metrics *m);

/* Records one finished request at stage (success or not). Thread-safe; can't fail. */
void metrics_record(struct stage_metrics *m, int stage, int64_t latency_us);

/* Fills throughput and percentiles over the last window into out (other fields untouched).
 * Thread-safe; can't fail. */
void metrics_read(struct stage_metrics *m, int stage, struct stage_live *out);

#endif
