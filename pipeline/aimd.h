/* The adaptive NLP limit's rule: additive increase, multiplicative decrease. Pure.
 *
 * Why AIMD: the one signal every NLP API gives is a refusal (429, or 503 when overloaded),
 * and some also queue (latency grows). AIMD converges to the largest limit the API takes and
 * shares it fairly among clients (Chiu & Jain), needs no model of the API, and its state is
 * one number, which the instances can keep together in one database row.
 *
 * Once per window (a lease beat, about a second, or at once after a fresh refusal) an
 * instance feeds what its NLP answers of that window said:
 *   - any 429/503: decrease, and the limit that was refused becomes the ceiling. Where the
 *     limit had reached 95 % of the last ceiling the refusal only says a probe went one step
 *     too far: x AIMD_BETA_PROBE (0.95). Anywhere else the API's capacity fell: x
 *     AIMD_BETA_DROP (0.7). (The share of a window's requests refused is no measure of how
 *     far: each instance stops at its first refusal, for the Retry-After.) Never below a
 *     limit known to pass when that is under the refused one: the capacity is between the
 *     two. Known to pass: the limit the cluster had just before an increase of the last
 *     AIMD_RAISE_WINDOWS windows (raised_from: the refusal answers that increase, and costs
 *     a pause, so dropping further would pay twice), else the last limit this instance saw
 *     answered cleanly while it used every permit (last_clean). A refusal one step above
 *     raised_from is a refused probe, whatever the ceiling said.
 *   - the window's mean latency above AIMD_LATENCY_FACTOR (3) x its recent floor plus
 *     AIMD_LATENCY_SLACK_MS (50 ms), with at least AIMD_MIN_ANSWERS answers: the API queues;
 *     x AIMD_BETA_LATENCY (0.9).
 *   - a clean window in which the instance used every permit it had (limited): increase.
 *     Under a ceiling: half way to it (bisection: the capacity is between the limit that
 *     passed and the one refused), so what was taken is taken back in a few windows. One
 *     under it: by 1, once every AIMD_PROBE_WINDOWS (3) clean windows, doubled by every probe
 *     refused in a row (3, 6, 12 windows): probing slowly where the last refusal came keeps
 *     429s rare, and each refusal pauses the whole cluster for its Retry-After, so a refused
 *     probe costs far more than the one permit it may win. A clean window at
 *     the ceiling forgets it: the API takes more than it did (the limiter lets that land
 *     only two windows after the probe, once every instance's share has taken the probe's
 *     permit). Without a ceiling by
 *     max(max/10, limit/2): a capacity that came back is found within a few windows (an
 *     additive step alone, +1 or even +max/10 a second, would leave most of it unused for
 *     tens of seconds; this is TCP's slow start, for the same reason).
 *   - otherwise: hold.
 * Besides this rule, a refusal is measured (limiter.h, LIMITER_REPORT_MS): what the API held
 * when it refused, summed over the instances, takes a limit above it straight down to it.
 * The limit stays in [1, max]. The database makes the cluster one client: a decrease lands at
 * most once a second and an increase at most once per 500 ms, whoever asks (limiter_db.h). */
#ifndef COFI_AIMD_H
#define COFI_AIMD_H

#include <stdbool.h>

#define AIMD_BETA_DROP        0.7
#define AIMD_RAISE_WINDOWS    3 /* an increase this recent is what a refusal answers */
#define AIMD_BETA_PROBE       0.95
#define AIMD_BETA_LATENCY     0.9
#define AIMD_NEAR_CEILING     0.95 /* a refusal this close to the ceiling was a probe */
#define AIMD_PROBE_WINDOWS    3
#define AIMD_PROBE_BACKOFF    2 /* a refused probe doubles the wait, at most 2^2 times */
#define AIMD_LATENCY_FACTOR   3.0
#define AIMD_LATENCY_SLACK_MS 50.0
#define AIMD_MIN_ANSWERS      5

enum aimd_reason { AIMD_HOLD = 0, AIMD_INCREASE, AIMD_PROBE, AIMD_THROTTLED, AIMD_LATENCY };

/* What one window saw, and the state it starts from. */
struct aimd_in {
    int limit;         /* the cluster's limit now, 1..max */
    int max;           /* llm.concurrency */
    int ceiling;       /* the limit at the last decrease, 0 = none */
    int clean_streak;  /* clean limited windows in a row before this one */
    int answers;       /* NLP answers in the window */
    int throttled;     /* of them 429 or 503 */
    double mean_ms;    /* their mean latency (answers > 0) */
    double floor_ms;   /* the lowest window mean of the recent windows, 0 = none yet */
    bool limited;      /* every permit was in use at some moment, with work waiting */
    int last_clean;    /* the last limit of a clean limited window here, 0 = none */
    int failed_probes; /* probes refused in a row (each doubles the wait before the next) */
    int raised_from;   /* the limit before an increase of the last AIMD_RAISE_WINDOWS, 0 = none */
};

struct aimd_out {
    int limit;
    int ceiling;
    int clean_streak;
    int last_clean;
    int failed_probes;
    enum aimd_reason reason; /* AIMD_HOLD: limit unchanged */
};

/* Decides the next limit. Can't fail. */
void aimd_next(const struct aimd_in *in, struct aimd_out *out);

/* The clean windows before the next probe after failed_probes refused ones: 3, 6, 12. */
int aimd_probe_windows(int failed_probes);

/* "hold", "increase", "probe", "throttled", "latency". Static string. */
const char *aimd_reason_name(enum aimd_reason r);

#endif
