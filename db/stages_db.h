/* The SQL of the stage resource: a stage's figures across batches (or in one). */
#ifndef COFI_STAGES_DB_H
#define COFI_STAGES_DB_H

#include <libpq-fe.h>
#include <stdint.h>

#include "common/error.h"
#include "common/stages.h"

/* What the database knows about one pipeline stage. */
struct stage_figures {
    struct stage_counts counts; /* the API's counts at the stage, from batch_progress */
    int64_t pending;            /* calls at the stage with status pending */
    int64_t running;            /* calls at the stage with status running (claimed) */
    int64_t others_in_flight;   /* requests in flight at the stage that the other live
                                 * instances published with their heartbeat */
};

/* Fills *out for stage `stage` (0..6): counts summed over every batch (batch_id 0) or for
 * one batch (COFI_E_NOT_FOUND when it does not exist), and the in-flight requests published
 * by the instances other than `instance_id` (may be NULL) whose heartbeat is younger than
 * lease_ms. One statement (prepared). Returns 0 or a negative status; on error *out is
 * unchanged. The connection is used for this statement only; thread-safe with distinct
 * connections. */
int stages_db_figures(PGconn *conn, int stage, int64_t batch_id, const char *instance_id,
                      int lease_ms, struct stage_figures *out, struct cofi_err *err);

#endif
