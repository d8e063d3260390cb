/* What a lane's report about a job means for the call: the one place that decides it. Pure. */
#ifndef COFI_OUTCOME_H
#define COFI_OUTCOME_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "pipeline/lane.h"

enum job_action {
    ACTION_ADVANCE,      /* record the stage's result; the call goes on to its next stage */
    ACTION_RETRY,        /* record the failed attempt; try again after delay_ms */
    ACTION_FAIL,         /* the call fails at this stage (why) */
    ACTION_REDISTRIBUTE, /* not the call's fault: back to distribute, on another node */
    ACTION_RELEASE,      /* give the claim back: the call waits as pending at its stage */
};

struct decision {
    enum job_action action;
    bool uncount;     /* the attempt does not count (cut short by cofid itself) */
    int64_t delay_ms; /* ACTION_RETRY */
    char why[320];    /* ACTION_FAIL, ACTION_RETRY: for last_error (valid UTF-8) */
};

/* What the engine knows besides the report. */
struct decide_in {
    const struct job_outcome *o;
    int attempts;                    /* requests made at this stage, this one included */
    const struct cofi_worker_cfg *w; /* the stage's worker settings */
    bool valid;                      /* the job's claim may still be this instance's */
    bool stopping;                   /* the engine is draining */
    uint64_t *seed;                  /* the caller's random state, for the back-off's jitter */
};

/* Decides what becomes of the job. A claim that is no longer valid, or a job a lane gave back,
 * is released (the database's fence ignores the release of a claim that is not ours any
 * more); a lost node means distribute again, unless draining; a success advances; a permanent
 * failure fails; a retryable one is retried after the back-off (or the worker's Retry-After,
 * capped), unless max_attempts were made (then it fails: "gave up after N attempts: ...") or
 * the engine is draining (released). Can't fail. */
void outcome_decide(const struct decide_in *in, struct decision *out);

#endif
