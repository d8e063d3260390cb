/* Shared between the engine and its two lanes (mediator over curl_multi, NLP thread pool). */
#ifndef COFI_ENGINE_INTERNAL_H
#define COFI_ENGINE_INTERNAL_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "pipeline/engine.h"
#include "pipeline/retry.h"

/* A call this instance holds a claim on, at one stage. Owned by exactly one of: the
 * dispatcher, a lane queue, a transfer in flight, the delayed list. */
struct job {
    struct job *next; /* intrusive link for queues */
    int64_t call_id;
    int64_t batch_id;
    char call_id_str[24];
    int stage;                  /* the stage to run next (0..6) */
    int attempts;               /* requests made at this stage so far */
    char *file;                 /* as submitted, relative to input_root (owned) */
    int node;                   /* index into cfg->nodes, or -1 before distribute */
    char *file_name;            /* the node's name for the file (owned), or NULL */
    json_t *prev;               /* results of earlier stages by name (owned reference) */
    char *last_error;           /* owned, or NULL */
    int64_t stage_started_wall; /* wall ms when the current stage started */
    int64_t due_mono;           /* for the delayed list: when to try again */
    /* The results of prev as the members of a mediator request's "previous" object, ready to
     * send: `"distribute":{...},"denoise":{...}` (no braces; empty before any), so a request
     * is not serialised anew from the tree every time. prev_text_ok is false when it could
     * not be kept (memory): the request is then built from prev. */
    struct buf prev_text;
    bool prev_text_ok;
};

/* A FIFO of jobs. Not thread-safe by itself. */
struct jobq {
    struct job *head, *tail;
    size_t len;
};

void jobq_push(struct jobq *q, struct job *j);
struct job *jobq_pop(struct jobq *q);

/* Frees a job and everything it owns. Accepts NULL. */
void job_free(struct job *j);

/* What a lane reports when one request ended. */
struct job_outcome {
    enum outcome_kind kind;
    json_t *result;         /* OUTCOME_OK: the result to store (stolen) */
    char *result_text;      /* OUTCOME_OK: the result as the worker sent it (owned), or NULL */
    char error[256];        /* otherwise: what went wrong, for last_error */
    int64_t retry_after_ms; /* >= 0 when the worker said Retry-After, else -1 */
    int64_t latency_us;
};

struct mediator_lane;
struct llm_lane;

/* Lane API used by the engine. Pushing steals the job. */
int mediator_lane_start(struct mediator_lane **out, struct engine *e, struct cofi_err *err);
void mediator_lane_push(struct mediator_lane *m, struct job *j);
/* Pushes every job of q (left empty) with one lock and one wake-up. */
void mediator_lane_push_all(struct mediator_lane *m, struct jobq *q);
/* Stops starting requests, waits for in-flight ones (until deadline_mono, then aborts
 * them), gives queued jobs back via engine__release and joins the lane's threads. A job
 * pushed afterwards is released at once. */
void mediator_lane_stop(struct mediator_lane *m, int64_t deadline_mono);
/* Frees a stopped lane. Accepts NULL. */
void mediator_lane_free(struct mediator_lane *m);
size_t mediator_lane_nodes(struct mediator_lane *m, struct node_live *out, size_t max);
int mediator_lane_in_flight(struct mediator_lane *m);
/* The sum of this instance's shares of the healthy nodes. */
int mediator_lane_healthy_capacity(struct mediator_lane *m);
/* Sets this instance's share of node's capacity (never above the capacity). Thread-safe. */
void mediator_lane_set_limit(struct mediator_lane *m, size_t node, int limit);
/* This instance's share of a healthy node, or -1 when the node is unhealthy. Thread-safe. */
int mediator_lane_node_limit(struct mediator_lane *m, size_t node);
/* This instance's requests in flight to node. Thread-safe. */
int mediator_lane_node_in_flight(struct mediator_lane *m, size_t node);

int llm_lane_start(struct llm_lane **out, struct engine *e, struct cofi_err *err);
void llm_lane_push(struct llm_lane *l, struct job *j);
/* Pushes every job of q (left empty) with one lock. */
void llm_lane_push_all(struct llm_lane *l, struct jobq *q);
void llm_lane_stop(struct llm_lane *l, int64_t deadline_mono);
void llm_lane_free(struct llm_lane *l);
int llm_lane_in_flight(struct llm_lane *l);
/* Sets how many requests this instance may have in flight to the NLP API (its share). */
void llm_lane_set_limit(struct llm_lane *l, int limit);

/* Engine services for the lanes. */
const struct cofi_config *engine__cfg(struct engine *e);
const char *engine__instance(struct engine *e);
/* Called by a lane when a request for j ended; takes ownership of j and of o->result. */
void engine__job_done(struct engine *e, struct job *j, struct job_outcome *o);
/* Gives a job back to the database as pending at its stage (lane shutting down). */
void engine__release(struct engine *e, struct job *j);
/* The node of j became unusable before its request started: back to distribute. */
void engine__redistribute(struct engine *e, struct job *j);
/* True once the engine is stopping (lanes start nothing new). */
bool engine__stopping(struct engine *e);
/* Counts a request starting (+1) or ending (-1) at stage. */
void engine__inflight(struct engine *e, int stage, int delta);
/* A unique X-Request-Id into out. */
void engine__request_id(struct engine *e, char *out, size_t outlen);

#endif
