/* The cluster's adaptive NLP limit on this instance: what its NLP answers say (lane threads),
 * the pause every instance keeps after a Retry-After (lane threads read it at every
 * admission), and once per lease beat the AIMD step (pipeline/aimd.h) against the row in
 * PostgreSQL (db/limiter_db.h), whose limit the shares of "nlp" then split. */
#ifndef COFI_LIMITER_H
#define COFI_LIMITER_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/error.h"
#include "db/limiter_db.h"
#include "pipeline/lane.h"

struct nlp_limiter;

#define LIMITER_WAKE_MS 250

/* A refusal, measured: each instance counts the requests the API had accepted and was still
 * working on when it refused (those this instance had in flight at that moment, less those
 * refused with it), and reports them LIMITER_REPORT_MS later, once the refusals are back,
 * while the accepted ones are still in flight. Once every live instance reported, the sum is
 * what the API held when it refused: at most its capacity, and the capacity itself in the
 * burst that follows a pause, when nothing older is still in flight. A limit above the sum
 * falls to it, and the sum + 1 becomes the ceiling (db/limiter_db.h, migration 011). Only
 * where the API's answers take LIMITER_EST_MIN_LATENCY_MS or more: with faster answers the
 * ones accepted would be over before the other instances hear of the refusal. */
#define LIMITER_REPORT_MS          100
#define LIMITER_EST_MIN_LATENCY_MS 100
/* The lease thread beats this long before a pause ends, so the lanes start again under the
 * limit the cluster learned during the pause. */
#define LIMITER_RESUME_LEAD_MS 60

/* The limiter's state for /stages/{llm}/status and /metrics. */
struct llm_limit_snapshot {
    bool adaptive;           /* llm.adaptive */
    int limit;               /* the cluster's limit now (llm.concurrency when not adaptive) */
    int max;                 /* llm.concurrency */
    int ceiling;             /* the limit at the last decrease, 0 = none */
    int64_t paused_until_ms; /* Unix ms until which no NLP request starts, 0 = not paused */
    int64_t throttled_total; /* 429/503 answers this instance saw */
    struct limiter_change history[LIMITER_HISTORY_MAX]; /* newest first */
    int nhistory;
};

/* A new limiter (instance is copied). Returns 0 or -1 (memory). */
int limiter_new(struct nlp_limiter **out, const struct cofi_config *cfg, const char *instance);

/* Frees l. Accepts NULL. */
void limiter_free(struct nlp_limiter *l);

/* Takes one NLP answer into the window; a Retry-After pauses this instance's new NLP
 * requests at once (and, once the lease thread wrote it, every instance's: pause_watch.h).
 * in_flight: this instance's NLP requests in flight, this one included, and counted_us when
 * this one was counted in (monotonic µs): a refusal's count.
 * Returns true when the lease thread should beat at once: a fresh refusal (at most once per
 * LIMITER_WAKE_MS), so the pause is written and the decrease lands before the pause ends
 * instead of up to a beat later. Without llm.adaptive it
 * only counts refusals: the limit is fixed and each request honours its own Retry-After.
 * Any thread. */
bool limiter_on_answer(struct nlp_limiter *l, const struct job_outcome *o, int in_flight,
                       int64_t counted_us);

/* Holds this instance's new NLP requests for ms (capped by llm.retry_after_max_ms): a pause
 * another instance announced; in_flight (this instance's NLP requests in flight now) is its
 * count of that refusal. Returns true when the lease thread should beat now (limiter_due_ms
 * has changed). Only with llm.adaptive. Any thread. */
bool limiter_heard_pause(struct nlp_limiter *l, int64_t ms, int in_flight);

/* How long until the limiter needs a beat (a refusal's report, or the end of a pause), in ms;
 * -1: none. Lease thread. */
int64_t limiter_due_ms(struct nlp_limiter *l);

/* How long no NLP request may start yet, in ms (0 = go). Any thread. */
int64_t limiter_pause_ms(struct nlp_limiter *l);

/* The lease beat's step: writes this instance's pause, reads the cluster's row, adopts its
 * pause, and (adaptive) applies the window's AIMD decision in one rate-limited UPDATE.
 * limited: every permit of this instance was in use at some moment of the window. Returns
 * the limit the shares of "nlp" split (1..llm.concurrency), or a negative status with err
 * (the caller keeps the limit it had). Lease thread only. */
int limiter_beat(struct nlp_limiter *l, PGconn *c, bool limited, struct cofi_err *err);

/* Copies the state as of the last beat. Any thread; accepts l NULL (zeroes out). */
void limiter_snapshot(struct nlp_limiter *l, struct llm_limit_snapshot *out);

#endif
