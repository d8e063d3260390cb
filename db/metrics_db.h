/* The SQL behind GET /metrics: batches by state and the calls waiting at each stage. */
#ifndef COFI_METRICS_DB_H
#define COFI_METRICS_DB_H

#include <libpq-fe.h>
#include <stdint.h>

#include "common/error.h"
#include "common/stages.h"

#define METRICS_DB_STATES 6

/* The batch states in the order of metrics_db_figures.batches. */
extern const char *const metrics_db_state_names[METRICS_DB_STATES];

/* What the database says, for every instance together. */
struct metrics_db_figures {
    int64_t batches[METRICS_DB_STATES]; /* batches per state (metrics_db_state_names) */
    int64_t pending[STAGE_COUNT];       /* calls pending at each stage, in running batches */
};

/* Fills *out in one statement (prepared): a count over the batches' state index and the
 * per-stage rows of batch_progress of the running batches (at most 40 per batch). Returns 0
 * or a negative status with err filled; *out is unchanged on error. Thread-safe with
 * distinct connections. */
int metrics_db_figures(PGconn *conn, struct metrics_db_figures *out, struct cofi_err *err);

#endif
