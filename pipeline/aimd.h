/* The adaptive NLP limit's rule: additive increase, multiplicative decrease. Pure.
 *
 * Why AIMD: the one signal every NLP API gives is a refusal (429, or 503 when overloaded),
 * and some also queue (latency grows). AIMD converges to the largest limit the API takes and
 * shares it fairly among clients (Chiu & Jain), needs no model of the API, and its state is
 * one number, which the instances can keep together in one database row.
 *
 * Once per window (a lease beat, about a second) an instance feeds what its NLP answers of
 * that window said:
 *   - any 429/503: decrease. Where the limit had already reached 90 % of the ceiling (the
 *     limit at the last decrease) the refusal only says the probe went one step too far:
 *     x AIMD_BETA_PROBE (0.9). Anywhere else the API's capacity fell: x AIMD_BETA_DROP (0.7).
 *     The new ceiling is the limit that was refused.
 *   - the window's mean latency above AIMD_LATENCY_FACTOR (3) x its recent floor plus
 *     AIMD_LATENCY_SLACK_MS (50 ms), with at least AIMD_MIN_ANSWERS answers: the API queues;
 *     x AIMD_BETA_PROBE.
 *   - a clean window in which the instance used every permit it had (limited): increase.
 *     Below 90 % of the ceiling (or without one) by max/10 at once: what was taken before is
 *     taken back within a few windows. From there on by 1, once every AIMD_PROBE_WINDOWS (3)
 *     clean windows: probing slowly where the last refusal came keeps 429s rare. A clean
 *     window above the ceiling forgets it: the API takes more than it did.
 *   - otherwise: hold.
 * The limit stays in [1, max]. The database makes the cluster one client: a decrease lands at
 * most once a second and an increase at most once per 750 ms, whoever asks (limiter_db.h). */
#ifndef COFI_AIMD_H
#define COFI_AIMD_H

#include <stdbool.h>

#define AIMD_BETA_DROP        0.7
#define AIMD_BETA_PROBE       0.9
#define AIMD_NEAR_CEILING     0.9
#define AIMD_PROBE_WINDOWS    3
#define AIMD_LATENCY_FACTOR   3.0
#define AIMD_LATENCY_SLACK_MS 50.0
#define AIMD_MIN_ANSWERS      5

enum aimd_reason { AIMD_HOLD = 0, AIMD_INCREASE, AIMD_PROBE, AIMD_THROTTLED, AIMD_LATENCY };

/* What one window saw, and the state it starts from. */
struct aimd_in {
    int limit;        /* the cluster's limit now, 1..max */
    int max;          /* llm.concurrency */
    int ceiling;      /* the limit at the last decrease, 0 = none */
    int clean_streak; /* clean limited windows in a row before this one */
    int answers;      /* NLP answers in the window */
    int throttled;    /* of them 429 or 503 */
    double mean_ms;   /* their mean latency (answers > 0) */
    double floor_ms;  /* the lowest window mean of the recent windows, 0 = none yet */
    bool limited;     /* every permit was in use at some moment, with work waiting */
};

struct aimd_out {
    int limit;
    int ceiling;
    int clean_streak;
    enum aimd_reason reason; /* AIMD_HOLD: limit unchanged */
};

/* Decides the next limit. Can't fail. */
void aimd_next(const struct aimd_in *in, struct aimd_out *out);

/* "hold", "increase", "probe", "throttled", "latency". Static string. */
const char *aimd_reason_name(enum aimd_reason r);

#endif
