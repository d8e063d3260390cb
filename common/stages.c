/* The stage table and the state model that turns (stage, status) counts into API counts. */
#include "common/stages.h"

#include <stdint.h>
#include <string.h>

static const char *const stage_names[STAGE_COUNT] = {"distribute", "denoise", "ivr", "lid",
                                                     "stt",        "llm1",    "llm2"};
static const char *const status_names[CALL_STATUS_COUNT] = {"pending", "running", "done", "failed",
                                                            "cancelled"};

const char *stage_name(int stage)
{
    if (stage < 0 || stage >= STAGE_COUNT) {
        return NULL;
    }
    return stage_names[stage];
}

int stage_from_name(const char *name)
{
    for (int i = 0; i < STAGE_COUNT; i++) {
        if (strcmp(name, stage_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

bool stage_is_llm(int stage)
{
    return stage == STAGE_LLM1 || stage == STAGE_LLM2;
}

const char *call_status_name(int status)
{
    if (status < 0 || status >= CALL_STATUS_COUNT) {
        return NULL;
    }
    return status_names[status];
}

int call_status_from_name(const char *name)
{
    for (int i = 0; i < CALL_STATUS_COUNT; i++) {
        if (strcmp(name, status_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* *c += n, saturating at the ends of int64_t: counts from the database are trusted to be
 * sane, but a sum never wraps into a negative count. */
static void add_saturating(int64_t *c, int64_t n)
{
    int64_t sum;
    if (__builtin_add_overflow(*c, n, &sum)) {
        sum = n > 0 ? INT64_MAX : INT64_MIN;
    }
    *c = sum;
}

void stage_counts_add(struct stage_counts out[STAGE_COUNT], int cs, int st, int64_t n)
{
    if (cs < 0 || cs > STAGE_COUNT || st < 0 || st >= CALL_STATUS_COUNT) {
        return;
    }
    for (int s = 0; s < STAGE_COUNT; s++) {
        struct stage_counts *c = &out[s];
        if (cs > s) {
            add_saturating(&c->done, n);
        } else if (cs == s && st == CALL_RUNNING) {
            add_saturating(&c->running, n);
        } else if (cs == s && st == CALL_FAILED) {
            add_saturating(&c->failed, n);
        } else if (st == CALL_PENDING || (cs < s && st == CALL_RUNNING)) {
            add_saturating(&c->pending, n);
        } else {
            add_saturating(&c->skipped, n);
        }
    }
}
