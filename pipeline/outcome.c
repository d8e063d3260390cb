/* The decision of what a job's outcome means: record, retry, fail, redistribute or release. */
#include "pipeline/outcome.h"

#include <stdio.h>
#include <string.h>

#include "pipeline/retry.h"

static void decide_answered(const struct decide_in *in, struct decision *out)
{
    const struct job_outcome *o = in->o;
    if (o->kind == OUTCOME_OK) {
        out->action = ACTION_ADVANCE;
        return;
    }
    if (o->kind == OUTCOME_PERMANENT) {
        out->action = ACTION_FAIL;
        snprintf(out->why, sizeof out->why, "%s", o->error);
        return;
    }
    out->uncount = o->not_counted;
    if (in->stopping) {
        out->action = ACTION_RELEASE;
        return;
    }
    int made = out->uncount ? in->attempts - 1 : in->attempts;
    if (made >= in->w->max_attempts) {
        out->action = ACTION_FAIL;
        snprintf(out->why, sizeof out->why, "gave up after %d attempts: %s", made, o->error);
        return;
    }
    out->action = ACTION_RETRY;
    snprintf(out->why, sizeof out->why, "%s", o->error);
    out->delay_ms = retry_delay_ms(in->w, made > 0 ? made : 1, o->retry_after_ms, in->seed);
}

void outcome_decide(const struct decide_in *in, struct decision *out)
{
    memset(out, 0, sizeof *out);
    if (!in->valid) {
        out->action = ACTION_RELEASE;
        return;
    }
    switch (in->o->event) {
    case LANE_ANSWERED:
        decide_answered(in, out);
        return;
    case LANE_NODE_LOST:
        out->action = in->stopping ? ACTION_RELEASE : ACTION_REDISTRIBUTE;
        return;
    case LANE_GIVEN_BACK:
    case LANE_NOT_VALID:
        out->action = ACTION_RELEASE;
        return;
    }
    out->action = ACTION_RELEASE;
}

void job_outcome_init(struct job_outcome *o, enum lane_event event)
{
    memset(o, 0, sizeof *o);
    o->event = event;
    o->kind = OUTCOME_RETRY;
    o->retry_after_ms = -1;
    o->usage_tokens = -1;
}
