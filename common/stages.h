/* The fixed table of the seven pipeline stages and the call/stage state model. */
#ifndef COFI_STAGES_H
#define COFI_STAGES_H

#include <stdbool.h>
#include <stdint.h>

enum stage {
    STAGE_DISTRIBUTE = 0,
    STAGE_DENOISE = 1,
    STAGE_IVR = 2,
    STAGE_LID = 3,
    STAGE_STT = 4,
    STAGE_LLM1 = 5,
    STAGE_LLM2 = 6,
    STAGE_COUNT = 7, /* also calls.stage of a call that finished every stage */
};

/* The stage's name ("distribute" ...), or NULL for an index out of range. */
const char *stage_name(int stage);

/* The index of a stage name, or -1. */
int stage_from_name(const char *name);

/* True for llm1 and llm2 (the NLP API), false for the mediator stages. */
bool stage_is_llm(int stage);

/* calls.status values. */
enum call_status {
    CALL_PENDING = 0,
    CALL_RUNNING,
    CALL_DONE,
    CALL_FAILED,
    CALL_CANCELLED,
    CALL_STATUS_COUNT,
};

/* "pending", "running", "done", "failed", "cancelled"; NULL out of range. */
const char *call_status_name(int status);

/* The index of a status name, or -1. */
int call_status_from_name(const char *name);

/* Per-stage counts as the API reports them. For every stage the five add up to the number
 * of calls. */
struct stage_counts {
    int64_t pending, running, done, failed, skipped;
};

/* Adds n calls that are at (call_stage, status) to the per-stage counts in out[STAGE_COUNT].
 * The state model: for pipeline stage s, a call at stage cs with status st counts as
 *   done    if cs > s;
 *   running if cs == s and st is running;
 *   failed  if cs == s and st is failed;
 *   pending if (cs == s and st is pending) or (cs < s and st is pending or running);
 *   skipped otherwise (cancelled at or before s, failed before s).
 * Sums saturate at the ends of int64_t instead of wrapping. Can't fail; ignores out-of-range
 * input. */
void stage_counts_add(struct stage_counts out[STAGE_COUNT], int call_stage, int status, int64_t n);

#endif
