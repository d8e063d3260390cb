/* The adaptive NLP limit's rule (see aimd.h for what and why). Pure. */
#include "pipeline/aimd.h"

static int clamp(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Just under a ceiling: AIMD_NEAR_CEILING of it, rounded down. */
static int under_ceiling(int ceiling)
{
    return (int)(AIMD_NEAR_CEILING * (double)ceiling);
}

/* True when the limit is at or beyond just under a known ceiling. */
static bool near_ceiling(int limit, int ceiling)
{
    return ceiling > 0 && limit >= under_ceiling(ceiling);
}

static void decrease(const struct aimd_in *in, double beta, enum aimd_reason why,
                     struct aimd_out *out)
{
    out->limit = clamp((int)((double)in->limit * beta), 1, in->max);
    out->ceiling = in->limit;
    out->clean_streak = 0;
    out->reason = out->limit < in->limit ? why : AIMD_HOLD;
}

static void increase(const struct aimd_in *in, struct aimd_out *out)
{
    int streak = in->clean_streak + 1;
    out->clean_streak = streak;
    out->ceiling = in->ceiling > 0 && in->limit > in->ceiling ? 0 : in->ceiling;
    int step = in->max / 10 > 1 ? in->max / 10 : 1;
    int next = in->limit;
    if (!near_ceiling(in->limit, out->ceiling)) {
        next = in->limit + step;
        if (out->ceiling > 0 && next > under_ceiling(out->ceiling)) {
            /* Fast back to just under where the last refusal came, not past it. */
            next = under_ceiling(out->ceiling);
        }
        out->reason = AIMD_INCREASE;
    } else if (streak >= AIMD_PROBE_WINDOWS) {
        next = in->limit + 1;
        out->reason = AIMD_PROBE;
    }
    out->limit = clamp(next, 1, in->max);
    if (out->limit == in->limit) {
        out->reason = AIMD_HOLD;
    } else {
        out->clean_streak = 0;
    }
}

void aimd_next(const struct aimd_in *in, struct aimd_out *out)
{
    out->limit = clamp(in->limit, 1, in->max);
    out->ceiling = in->ceiling;
    out->clean_streak = in->clean_streak;
    out->reason = AIMD_HOLD;
    if (in->throttled > 0) {
        double beta = near_ceiling(in->limit, in->ceiling) ? AIMD_BETA_PROBE : AIMD_BETA_DROP;
        decrease(in, beta, AIMD_THROTTLED, out);
        return;
    }
    if (in->answers >= AIMD_MIN_ANSWERS && in->floor_ms > 0 &&
        in->mean_ms > AIMD_LATENCY_FACTOR * in->floor_ms + AIMD_LATENCY_SLACK_MS) {
        decrease(in, AIMD_BETA_PROBE, AIMD_LATENCY, out);
        return;
    }
    if (in->limited && in->answers > 0 && in->limit < in->max) {
        increase(in, out);
        return;
    }
    if (!in->limited) {
        out->clean_streak = 0;
    }
}

const char *aimd_reason_name(enum aimd_reason r)
{
    switch (r) {
    case AIMD_INCREASE:
        return "increase";
    case AIMD_PROBE:
        return "probe";
    case AIMD_THROTTLED:
        return "throttled";
    case AIMD_LATENCY:
        return "latency";
    case AIMD_HOLD:
        break;
    }
    return "hold";
}
