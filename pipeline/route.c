/* Routes jobs: to their lane, and every lane report to what pipeline/outcome.c decided. */
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "pipeline/engine_state.h"
#include "pipeline/metrics.h"
#include "pipeline/outcome.h"

/* The priority of batch id as last read (1 when unknown). e->mu held. */
static int batch_priority(const struct engine *e, int64_t id)
{
    for (size_t i = 0; i < e->nbatches; i++) {
        if (e->batches[i].id == id) {
            return e->batches[i].priority;
        }
    }
    return 1;
}

void engine_submit_all(struct engine *e, struct jobq *q)
{
    struct jobq med = {0};
    struct jobq llm = {0};
    /* Each job's place in the fair order, by its batch's priority (1 without memory). */
    int *weight = calloc(q->len + 1, sizeof *weight);
    size_t k = 0;
    pthread_mutex_lock(&e->mu);
    for (struct job *j = q->head; weight != NULL && j != NULL; j = j->next) {
        weight[k++] = batch_priority(e, j->batch_id);
    }
    pthread_mutex_unlock(&e->mu);
    k = 0;
    struct job *j = jobq_pop(q);
    while (j != NULL) {
        j->vtime = stride_tag(&e->stride, j->batch_id, weight != NULL ? weight[k++] : 1);
        jobq_push(stage_is_llm(j->stage) ? &llm : &med, j);
        j = jobq_pop(q);
    }
    free(weight);
    mediator_lane_push_all(e->med, &med);
    llm_lane_push_all(e->llm, &llm);
}

void engine_release_job(struct engine *e, struct job *j)
{
    struct record r = record_of(j, CALL_PENDING);
    record_queue_push(&e->rq, &r);
    engine_in_hand(e, j->stage, -1);
    job_free(j);
    engine_wake_dispatcher(e, false);
}

void engine_redistribute_job(struct engine *e, struct job *j)
{
    log_debug("call %s: node %s unavailable at %s, distributing again", j->call_id_str,
              j->node >= 0 ? e->cfg->nodes[j->node].id : "-", stage_name(j->stage));
    engine_in_hand(e, j->stage, -1);
    job_restart(j);
    engine_in_hand(e, j->stage, 1);
    j->stage_started_wall = clock_wall_ms();
    struct record r = record_of(j, CALL_RUNNING);
    record_queue_push(&e->rq, &r);
    struct jobq q = {0};
    jobq_push(&q, j);
    engine_submit_all(e, &q);
}

static void fail_job(struct engine *e, struct job *j, const char *why)
{
    job_set_str(&j->last_error, why);
    log_warn("call %s failed at %s after %d attempt(s): %s", j->call_id_str, stage_name(j->stage),
             j->attempts, why);
    struct record r = record_of(j, CALL_FAILED);
    r.has_row = true;
    r.row_stage = j->stage;
    r.row_failed = true;
    r.row_attempts = j->attempts;
    r.row_error = strdup(why);
    r.row_started_ms = j->stage_started_wall;
    r.row_finished_ms = clock_wall_ms();
    record_queue_push(&e->rq, &r);
    engine_in_hand(e, j->stage, -1);
    job_free(j);
    engine_wake_dispatcher(e, false);
}

static void retry_job(struct engine *e, struct job *j, const struct decision *d)
{
    job_set_str(&j->last_error, d->why);
    struct record r = record_of(j, CALL_RUNNING);
    /* Written with the call (not_before), so GET of the call says when it tries again and
     * why while the engine holds it. */
    r.retry_at_ms = clock_wall_ms() + d->delay_ms;
    record_queue_push(&e->rq, &r);
    log_debug("call %s: %s attempt %d failed (%s); retrying in %lld ms", j->call_id_str,
              stage_name(j->stage), j->attempts, d->why, (long long)d->delay_ms);
    j->due_mono = clock_mono_ms() + d->delay_ms;
    pthread_mutex_lock(&e->mu);
    jobq_push(&e->delayed, j);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* Looks up whether a batch runs staged or was cancelled, as last read from the database. */
static bool batch_goes_on(struct engine *e, int64_t id)
{
    bool on = false;
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->nbatches; i++) {
        if (e->batches[i].id == id) {
            on = !e->batches[i].cancelled && !e->batches[i].staged;
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return on;
}

/* Success: keeps the result for later stages and records it; the call either ends, waits
 * (staged, cancelled, draining) or goes on once the record is written. */
static void advance_job(struct engine *e, struct job *j, struct job_outcome *o)
{
    int done_stage = j->stage;
    int64_t now = clock_wall_ms();
    /* The record gets the result as text (the worker's own when the lane kept it, else made
     * here in the lane's thread): the tree itself stays with the job (jansson's reference
     * counts are no safe way to share one tree between threads). */
    char *text = o->result_text != NULL ? o->result_text : json_dumps(o->result, JSON_COMPACT);
    o->result_text = NULL;
    if (text != NULL) {
        job_prev_text_add(j, stage_name(done_stage), text, strlen(text));
    } else {
        j->prev_text_ok = false;
    }
    json_object_set_new(j->prev, stage_name(done_stage), o->result);
    o->result = NULL;
    int row_attempts = j->attempts;
    int64_t row_started = j->stage_started_wall;

    j->stage = done_stage + 1;
    j->attempts = 0;
    job_set_str(&j->last_error, NULL);
    j->stage_started_wall = now;

    bool finished = j->stage == STAGE_COUNT;
    /* The next stage starts here at once, unless the batch waits (staged, cancelled, paused),
     * the engine drains, or the call would join a full NLP backlog (it then waits in the
     * database, for whichever instance has room). A call going from llm1 to llm2 keeps its
     * place in the backlog; one coming to the NLP stages takes one atomically or waits. */
    bool keep = !finished && !atomic_load(&e->stopping) && batch_goes_on(e, j->batch_id);
    bool nlp_to_nlp = keep && stage_is_llm(done_stage) && stage_is_llm(j->stage);
    if (!nlp_to_nlp) {
        engine_in_hand(e, done_stage, -1);
        if (keep && stage_is_llm(j->stage)) {
            keep = engine_nlp_reserve(e);
        } else if (keep) {
            engine_in_hand(e, j->stage, 1);
        }
    }
    int status = finished ? CALL_DONE : (keep ? CALL_RUNNING : CALL_PENDING);
    struct record r = record_of(j, status);
    r.has_row = true;
    r.row_stage = done_stage;
    r.row_attempts = row_attempts;
    r.row_started_ms = row_started;
    r.row_finished_ms = now;
    r.row_result = text;
    if (keep) {
        /* The next request starts only once this result is in the database: a crash then
         * repeats at most the one request each call has in flight. */
        r.cont = j;
        record_queue_push(&e->rq, &r);
        return;
    }
    record_queue_push(&e->rq, &r);
    job_free(j);
    engine_wake_dispatcher(e, false);
}

/* Counts what became of an answered request at stage, for GET /metrics. */
static void count_outcome(struct engine *e, int stage, enum job_action action)
{
    if (action == ACTION_ADVANCE) {
        metrics_count(e->metrics, stage, METRICS_SUCCEEDED);
    } else if (action == ACTION_RETRY) {
        metrics_count(e->metrics, stage, METRICS_RETRIED);
    } else if (action == ACTION_FAIL) {
        metrics_count(e->metrics, stage, METRICS_FAILED);
    }
}

void engine_route_report(void *ctx, struct job *j, struct job_outcome *o)
{
    struct engine *e = ctx;
    if (o->event == LANE_ANSWERED) {
        metrics_record(e->metrics, j->stage, o->latency_us);
    }
    if (o->event != LANE_ANSWERED || o->kind != OUTCOME_OK) {
        free(o->result_text);
        o->result_text = NULL;
        json_decref(o->result);
        o->result = NULL;
    }
    uint64_t seed = (uint64_t)j->call_id * 0x9E3779B97F4A7C15ULL + (uint64_t)clock_mono_us();
    if (seed == 0) {
        seed = 1;
    }
    struct decide_in in = {
        .o = o,
        .attempts = j->attempts,
        .w = stage_is_llm(j->stage) ? &e->cfg->llm : &e->cfg->mediator,
        .valid = j->epoch == atomic_load(&e->epoch),
        .stopping = atomic_load(&e->stopping),
        .seed = &seed,
    };
    struct decision d;
    outcome_decide(&in, &d);
    if (d.uncount && j->attempts > 0) {
        j->attempts--;
    }
    if (o->event == LANE_ANSWERED) {
        count_outcome(e, j->stage, d.action);
    }
    switch (d.action) {
    case ACTION_ADVANCE:
        advance_job(e, j, o);
        return;
    case ACTION_RETRY:
        retry_job(e, j, &d);
        return;
    case ACTION_FAIL:
        fail_job(e, j, d.why);
        return;
    case ACTION_REDISTRIBUTE:
        engine_redistribute_job(e, j);
        return;
    case ACTION_RELEASE:
        if (!in.valid) {
            log_debug("call %s: its claim is from a lease this instance lost; let go",
                      j->call_id_str);
        }
        engine_release_job(e, j);
        return;
    }
}
