/* The adaptive NLP limit's rule (see aimd.h for what and why). Pure. */
#include "pipeline/aimd.h"

static int clamp(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* True when the limit is one step under a known ceiling: nothing left to bisect. */
static bool near_ceiling(int limit, int ceiling)
{
    return ceiling > 0 && limit >= ceiling - 1;
}

static void decrease(const struct aimd_in *in, double beta, enum aimd_reason why,
                     struct aimd_out *out)
{
    int next = (int)((double)in->limit * beta);
    if (why == AIMD_THROTTLED) {
        /* It took that much a moment ago: the capacity is between the two. */
        int passed = in->raised_from > 0 ? in->raised_from : in->last_clean;
        if (passed > next && passed < in->limit) {
            next = passed;
        }
    }
    out->limit = clamp(next, 1, in->max);
    out->ceiling = in->limit;
    out->clean_streak = 0;
    bool probe = (near_ceiling(in->limit, in->ceiling + 1) && in->ceiling > 0) ||
                 (why == AIMD_THROTTLED && in->raised_from == in->limit - 1);
    out->failed_probes = probe ? in->failed_probes + 1 : 0;
    out->reason = out->limit < in->limit ? why : AIMD_HOLD;
}

static void increase(const struct aimd_in *in, struct aimd_out *out)
{
    int streak = in->clean_streak + 1;
    out->clean_streak = streak;
    out->ceiling = in->ceiling > 0 && in->limit >= in->ceiling ? 0 : in->ceiling;
    if (out->ceiling == 0) {
        out->failed_probes = 0;
    }
    int next = in->limit;
    if (out->ceiling == 0) {
        int step = in->max / 10 > 1 ? in->max / 10 : 1;
        next = in->limit + (in->limit / 2 > step ? in->limit / 2 : step);
        out->reason = AIMD_INCREASE;
    } else if (!near_ceiling(in->limit, out->ceiling)) {
        /* Half way to where the last refusal came: the capacity is in between. */
        next = (in->limit + out->ceiling) / 2;
        next = next > in->limit ? next : in->limit + 1;
        out->reason = AIMD_INCREASE;
    } else if (streak >= aimd_probe_windows(in->failed_probes)) {
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

int aimd_probe_windows(int failed_probes)
{
    int backoff = failed_probes < AIMD_PROBE_BACKOFF ? failed_probes : AIMD_PROBE_BACKOFF;
    return AIMD_PROBE_WINDOWS << (backoff > 0 ? backoff : 0);
}

void aimd_next(const struct aimd_in *in, struct aimd_out *out)
{
    out->limit = clamp(in->limit, 1, in->max);
    out->ceiling = in->ceiling;
    out->clean_streak = in->clean_streak;
    out->last_clean = in->last_clean;
    out->failed_probes = in->failed_probes;
    out->reason = AIMD_HOLD;
    if (in->throttled > 0) {
        bool probe =
            in->ceiling > 0 && (double)in->limit >= AIMD_NEAR_CEILING * (double)in->ceiling;
        decrease(in, probe ? AIMD_BETA_PROBE : AIMD_BETA_DROP, AIMD_THROTTLED, out);
        return;
    }
    if (in->answers >= AIMD_MIN_ANSWERS && in->floor_ms > 0 &&
        in->mean_ms > AIMD_LATENCY_FACTOR * in->floor_ms + AIMD_LATENCY_SLACK_MS) {
        decrease(in, AIMD_BETA_LATENCY, AIMD_LATENCY, out);
        return;
    }
    if (in->limited && in->answers > 0) {
        out->last_clean = in->limit;
        if (in->limit < in->max) {
            increase(in, out);
        }
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
