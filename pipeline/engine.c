/* The engine: starts and stops its threads (lease, dispatcher, flusher) and its two lanes,
 * and answers the API's questions about them. */
#include "pipeline/engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "db/db.h"
#include "pipeline/engine_state.h"
#include "pipeline/metrics.h"
#include "pipeline/pause_watch.h"

/* ---- the lanes' host ------------------------------------------------------------------- */

static bool host_admit(void *ctx, const struct job *j)
{
    struct engine *e = ctx;
    if (j->epoch != atomic_load(&e->epoch)) {
        return false;
    }
    stride_served(&e->stride, j->vtime);
    return true;
}

static void host_inflight(void *ctx, int stage, int delta)
{
    struct engine *e = ctx;
    if (stage >= 0 && stage < STAGE_COUNT) {
        atomic_fetch_add(&e->inflight[stage], delta);
    }
}

/* "<call id>:<stage>:<attempt>-<instance tag><n>": a worker's log line names the call,
 * stage and attempt; the tag (a hash of the instance id) and the counter keep ids unique
 * across instances and repeats. */
static void host_request_id(void *ctx, const struct job *j, char *out, size_t outlen)
{
    struct engine *e = ctx;
    unsigned long long n = (unsigned long long)atomic_fetch_add(&e->req_counter, 1);
    uint32_t tag = 2166136261u;
    for (const char *p = e->instance; *p != '\0'; p++) {
        tag = (tag ^ (unsigned char)*p) * 16777619u;
    }
    snprintf(out, outlen, "%s:%s:%d-%08x%llx", j->call_id_str, stage_name(j->stage), j->attempts,
             (unsigned)tag, n);
}

static bool host_lease_ok(void *ctx)
{
    return engine_lease_current(ctx);
}

static int64_t host_nlp_pause_ms(void *ctx)
{
    struct engine *e = ctx;
    return limiter_pause_ms(e->limiter);
}

/* Asks the lease thread to beat now. */
static void wake_lease(struct engine *e)
{
    pthread_mutex_lock(&e->lease_mu);
    pthread_cond_signal(&e->lease_cv);
    pthread_mutex_unlock(&e->lease_mu);
}

static bool host_nlp_budget(void *ctx, size_t transcript_bytes, int64_t ticket[2])
{
    struct engine *e = ctx;
    bool wake = false;
    uint64_t grant = 0;
    ticket[0] = budget_estimate(e->budget, transcript_bytes);
    bool ok = budget_take(e->budget, ticket[0], &grant, &wake);
    ticket[1] = (int64_t)grant;
    if (wake) {
        wake_lease(e); /* a grant now, not at the next beat */
    }
    return ok;
}

static void host_nlp_settle(void *ctx, const int64_t ticket[2], long long used_tokens)
{
    struct engine *e = ctx;
    budget_settle(e->budget, ticket[0], (uint64_t)ticket[1], used_tokens);
}

static void host_nlp_answer(void *ctx, const struct job_outcome *o, int in_flight,
                            int64_t counted_us)
{
    struct engine *e = ctx;
    if (limiter_on_answer(e->limiter, o, in_flight, counted_us)) {
        wake_lease(e); /* a fresh refusal: decrease and shares now instead of later */
    }
}

/* A pause another instance announced (the pause watch's thread, started once the lane is):
 * held here at once, and counted for the limiter's report, which the lease thread makes. */
static void engine_heard_pause(void *ctx, int64_t ms)
{
    struct engine *e = ctx;
    if (limiter_heard_pause(e->limiter, ms, llm_lane_requests(e->llm))) {
        wake_lease(e);
    }
}

/* ---- start and stop ---------------------------------------------------------------------- */

/* Frees what engine_start built, once no thread runs. */
static void engine_destroy(struct engine *e)
{
    mediator_lane_free(e->med);
    llm_lane_free(e->llm);
    limiter_free(e->limiter);
    budget_free(e->budget);
    metrics_free(e->metrics);
    struct jobq orphans = {0};
    record_queue_destroy(&e->rq, &orphans);
    struct job *j = jobq_pop(&orphans);
    while (j != NULL) {
        job_free(j);
        j = jobq_pop(&orphans);
    }
    j = jobq_pop(&e->delayed);
    while (j != NULL) {
        job_free(j);
        j = jobq_pop(&e->delayed);
    }
    engine_lease_free(e);
    stride_free(&e->stride);
    free(e->batches);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->lease_mu);
    pthread_cond_destroy(&e->lease_cv);
    free(e);
}

/* Stops the lease thread (the claims are released by whoever stops the engine). */
static void stop_lease_thread(struct engine *e)
{
    pthread_mutex_lock(&e->lease_mu);
    e->stop_lease = true;
    pthread_cond_signal(&e->lease_cv);
    pthread_mutex_unlock(&e->lease_mu);
    pthread_join(e->lease_thread, NULL);
}

static void stop_dispatcher_thread(struct engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->stop_dispatcher = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->dispatcher, NULL);
}

/* Starts the threads; on failure stops those already started. */
static int start_threads(struct engine *e, struct cofi_err *err)
{
    if (pthread_create(&e->flusher, NULL, engine_flusher_main, e) != 0) {
        return cofi_err_set(err, COFI_E_INTERNAL, "cannot start the flusher thread");
    }
    if (pthread_create(&e->lease_thread, NULL, engine_lease_main, e) != 0) {
        record_queue_stop(&e->rq);
        pthread_join(e->flusher, NULL);
        return cofi_err_set(err, COFI_E_INTERNAL, "cannot start the lease thread");
    }
    if (pthread_create(&e->dispatcher, NULL, engine_dispatcher_main, e) != 0) {
        stop_lease_thread(e);
        record_queue_stop(&e->rq);
        pthread_join(e->flusher, NULL);
        return cofi_err_set(err, COFI_E_INTERNAL, "cannot start the dispatcher thread");
    }
    return 0;
}

int engine_start(struct engine **out, const struct cofi_config *cfg, const char *instance_id,
                 struct cofi_err *err)
{
    struct engine *e = calloc(1, sizeof *e);
    if (e == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    e->cfg = cfg;
    snprintf(e->instance, sizeof e->instance, "%s", instance_id);
    if (gethostname(e->host, sizeof e->host) != 0) {
        snprintf(e->host, sizeof e->host, "unknown");
    }
    e->host[sizeof e->host - 1] = '\0';
    e->pid = (int)getpid();
    pthread_mutex_init(&e->mu, NULL);
    clock_cond_init(&e->cv);
    pthread_mutex_init(&e->lease_mu, NULL);
    clock_cond_init(&e->lease_cv);
    e->metrics = metrics_new();
    if (e->metrics == NULL || record_queue_init(&e->rq) != 0 || stride_init(&e->stride) != 0 ||
        engine_lease_init(e) != 0 || limiter_new(&e->limiter, cfg, e->instance) != 0 ||
        budget_new(&e->budget, cfg, e->instance) != 0) {
        cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        goto fail;
    }
    struct lane_host host = {
        .ctx = e,
        .cfg = cfg,
        .report = engine_route_report,
        .admit = host_admit,
        .inflight = host_inflight,
        .request_id = host_request_id,
        .lease_ok = host_lease_ok,
    };
    if (mediator_lane_start(&e->med, &host, err) != 0) {
        goto fail;
    }
    host.nlp_pause_ms = host_nlp_pause_ms;
    host.nlp_answer = host_nlp_answer;
    if (budget_enabled(e->budget)) {
        host.nlp_budget = host_nlp_budget;
        host.nlp_settle = host_nlp_settle;
    }
    if (llm_lane_start(&e->llm, &host, err) != 0) {
        goto fail;
    }
    if (cfg->llm_adaptive && pause_watch_start(&e->pause_watch, cfg->database_url, e->instance,
                                               engine_heard_pause, e, err) != 0) {
        goto fail;
    }
    if (start_threads(e, err) != 0) {
        goto fail;
    }
    *out = e;
    return 0;
fail:
    atomic_store(&e->stopping, true);
    pause_watch_stop(e->pause_watch);
    if (e->llm != NULL) {
        llm_lane_stop(e->llm, clock_mono_ms());
    }
    if (e->med != NULL) {
        mediator_lane_stop(e->med, clock_mono_ms());
    }
    engine_destroy(e);
    return err->code;
}

void engine_stop(struct engine *e, int grace_ms)
{
    if (e == NULL) {
        return;
    }
    log_info("engine: stopping (grace %d ms)", grace_ms);
    atomic_store(&e->stopping, true);
    int64_t deadline = clock_mono_ms() + grace_ms;
    /* Both lanes stop taking work at once (no continuation starts on one while the other
     * drains), then finish what is in flight; the lease stays renewed meanwhile. */
    mediator_lane_close(e->med);
    llm_lane_close(e->llm);
    mediator_lane_stop(e->med, deadline);
    llm_lane_stop(e->llm, deadline);
    pause_watch_stop(e->pause_watch);
    e->pause_watch = NULL;
    stop_dispatcher_thread(e);
    record_queue_stop(&e->rq);
    pthread_join(e->flusher, NULL);
    stop_lease_thread(e);

    struct cofi_err err;
    cofi_err_clear(&err);
    PGconn *c = db_connect(e->cfg->database_url, &err);
    if (c != NULL && work_unregister(c, e->instance, &err) == 0) {
        log_info("engine: claims released");
    } else {
        log_warn("engine: could not release claims (%s); they expire with the lease", err.msg);
    }
    PQfinish(c);
}

void engine_free(struct engine *e)
{
    if (e != NULL) {
        engine_destroy(e);
    }
}

/* ---- what the API reads -------------------------------------------------------------- */

void engine_wake(struct engine *e)
{
    if (e != NULL) {
        engine_wake_dispatcher(e, true);
    }
}

void engine_stage_live(struct engine *e, int stage, struct stage_live *out)
{
    memset(out, 0, sizeof *out);
    if (e == NULL || stage < 0 || stage >= STAGE_COUNT) {
        return;
    }
    if (stage_is_llm(stage)) {
        out->concurrency_limit = e->cfg->llm_concurrency;
    } else {
        for (size_t i = 0; i < e->cfg->node_count; i++) {
            out->concurrency_limit += e->cfg->nodes[i].capacity;
        }
    }
    out->in_flight = atomic_load(&e->inflight[stage]);
    metrics_read(e->metrics, stage, out);
}

void engine_llm_limit(struct engine *e, struct llm_limit_snapshot *out)
{
    limiter_snapshot(e != NULL ? e->limiter : NULL, out);
}

void engine_totals(struct engine *e, struct metrics_totals *out)
{
    metrics_totals(e != NULL ? e->metrics : NULL, out);
}

void engine_nlp_live(struct engine *e, int *in_flight, int *limit)
{
    *in_flight = e != NULL ? llm_lane_in_flight(e->llm) : 0;
    *limit = e != NULL ? llm_lane_limit(e->llm) : 0;
}

size_t engine_nodes(struct engine *e, struct node_live *out, size_t max)
{
    if (e == NULL) {
        return 0;
    }
    return mediator_lane_nodes(e->med, out, max);
}
