/* What a lane (a way of sending requests to workers) and the engine say to each other. The
 * lanes know nothing of the engine: it hands them a lane_host, and they hand every job back
 * through its one report function, with an outcome that says what happened; what that means
 * (record, retry, fail, redistribute, release, drop) is decided in pipeline/outcome.c. */
#ifndef COFI_LANE_H
#define COFI_LANE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "pipeline/job.h"
#include "pipeline/retry.h"

/* What happened to a job a lane held. */
enum lane_event {
    LANE_ANSWERED = 0, /* a request ended: kind says how (enum outcome_kind) */
    LANE_NODE_LOST,    /* its node is unhealthy or failing: not the call's fault */
    LANE_GIVEN_BACK,   /* the lane won't run it (stopping, or no share of its node any more) */
    LANE_NOT_VALID,    /* its claim is no longer this instance's (host->admit said so) */
};

/* What a lane reports when it hands a job back. */
struct job_outcome {
    enum lane_event event;
    enum outcome_kind kind; /* LANE_ANSWERED only */
    json_t *result;         /* OUTCOME_OK: the result to store (stolen) */
    char *result_text;      /* OUTCOME_OK: the result as the worker sent it (owned), or NULL */
    char error[256];        /* otherwise: what went wrong, for last_error (valid UTF-8) */
    int64_t retry_after_ms; /* >= 0 when the worker said Retry-After, else -1 */
    int64_t latency_us;
    int http_status;        /* LANE_ANSWERED with an HTTP answer: its status, else 0 */
    long long usage_tokens; /* the tokens the NLP API said the request used, -1 = unknown */
    bool not_counted;       /* the attempt was cut short by cofid itself (fence): don't count it */
};

/* Fills o for an event without an answer. Can't fail. */
void job_outcome_init(struct job_outcome *o, enum lane_event event);

/* The engine's side of a lane. Every function may be called from any lane thread, never with
 * a lane lock held. */
struct lane_host {
    void *ctx;
    const struct cofi_config *cfg;
    /* Takes back j (and o->result, o->result_text): the one way a job leaves a lane. */
    void (*report)(void *ctx, struct job *j, struct job_outcome *o);
    /* Called as a lane is about to start a request for j: false when j's claim is no longer
     * this instance's (the lane then starts nothing and reports LANE_NOT_VALID). True also
     * tells the engine that j's turn in the fair order has come. */
    bool (*admit)(void *ctx, const struct job *j);
    /* Counts a request starting (+1) or ending (-1) at stage. */
    void (*inflight)(void *ctx, int stage, int delta);
    /* The X-Request-Id of the attempt of j about to start, into out: unique, visible ASCII,
     * and naming the call, the stage and the attempt ("<call>:<stage>:<attempt>-<tag><n>"). */
    void (*request_id)(void *ctx, const struct job *j, char *out, size_t outlen);
    /* False once this instance could not renew its lease in time (or before its first
     * renewal): a lane then starts nothing and cuts its requests in flight short (reporting
     * them retryable, the attempt not counted), so none of them outlives the lease that the
     * other instances see, and they may take its shares. Cheap: called on every turn. */
    bool (*lease_ok)(void *ctx);
    /* NLP lane only (NULL elsewhere): how long no NLP request may start yet (ms, 0 = go: a
     * Retry-After seen by any instance pauses them all), and what each answer said (o after
     * the request: status, latency, Retry-After; in_flight: the lane's requests in flight,
     * this one included; counted_us: when the lane counted this one in flight, monotonic),
     * for the adaptive limit. Cheap. */
    int64_t (*nlp_pause_ms)(void *ctx);
    /* NLP lane only (NULL elsewhere): takes a request's share of the cluster's token and
     * request budgets (transcript_bytes / 4 + llm.completion_tokens, and one request); false
     * when there is none now (the lane waits and asks again). */
    bool (*nlp_budget)(void *ctx, size_t transcript_bytes, int64_t ticket[2]);
    /* Settles the ticket nlp_budget filled with what the answer said it used (-1: unknown). */
    void (*nlp_settle)(void *ctx, const int64_t ticket[2], long long used_tokens);
    void (*nlp_answer)(void *ctx, const struct job_outcome *o, int in_flight, int64_t counted_us);
};

#endif
