/* The engine's own state, shared by its files (engine, route, dispatcher, flusher, lease) and
 * by no one else: the lanes see only pipeline/lane.h. */
#ifndef COFI_ENGINE_STATE_H
#define COFI_ENGINE_STATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/stages.h"
#include "db/work_db.h"
#include "pipeline/engine.h"
#include "pipeline/budget.h"
#include "pipeline/job.h"
#include "pipeline/limiter.h"
#include "pipeline/llm.h"
#include "pipeline/mediator.h"
#include "pipeline/record.h"
#include "pipeline/stride.h"

struct stage_metrics;

/* One resource whose limit the instances share: shares[0] is the NLP API, shares[1 + i]
 * node i. Lease thread only. */
struct lease_share {
    char *resource; /* "nlp" or "node:<id>" (owned) */
    int total;      /* the resource's limit */
    int share;      /* this instance's share as published */
};

struct engine {
    const struct cofi_config *cfg;
    char instance[160];
    char host[128];
    int pid;
    struct stage_metrics *metrics;
    struct mediator_lane *med;
    struct llm_lane *llm;
    struct nlp_limiter *limiter;     /* the cluster's adaptive NLP limit, this instance's side */
    struct pause_watch *pause_watch; /* the other instances' Retry-After (llm.adaptive) */
    struct nlp_budget *budget;       /* the cluster's NLP token and request budgets, this side */
    atomic_bool stopping;
    atomic_int med_in_hand; /* jobs this instance holds at stages 0..4 */
    atomic_int llm_in_hand; /* jobs this instance holds at stages 5..6 */
    atomic_int inflight[STAGE_COUNT];
    atomic_uint_fast64_t req_counter;

    /* The lease (lease.c's thread writes, everyone reads). */
    atomic_int_fast64_t lease_deadline; /* mono ms until which the lease is current; 0: never */
    atomic_uint_fast64_t epoch;         /* bumped when the lease was lost: older jobs are not
                                           this instance's any more */
    atomic_bool registered;
    pthread_mutex_t lease_mu;
    pthread_cond_t lease_cv;
    bool stop_lease; /* under lease_mu */
    struct lease_share *shares;
    size_t nshares;
    pthread_t lease_thread;

    /* Dispatcher state. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop_dispatcher;
    bool wake_refresh;       /* refresh the batch list at once */
    bool wake_claim;         /* capacity or work may be there */
    bool flushed;            /* records were written since the last refresh */
    bool dispatcher_waiting; /* the dispatcher sleeps on cv: a wake-up is worth a signal */
    struct work_batch *batches;
    size_t nbatches;
    struct jobq delayed; /* retries waiting for their time, unordered */
    pthread_t dispatcher;

    /* The fair order of the lanes' queues across batches. */
    struct stride stride;

    /* Records waiting for the flusher. */
    struct record_queue rq;
    pthread_t flusher;
};

/* Wakes the dispatcher (refresh: re-read the batches too). Any thread, no lock held. */
static inline void engine_wake_dispatcher(struct engine *e, bool refresh)
{
    pthread_mutex_lock(&e->mu);
    e->wake_claim = true;
    if (refresh) {
        e->wake_refresh = true;
    }
    /* A running dispatcher sees the flags on its next turn: signal only a sleeping one. */
    if (e->dispatcher_waiting) {
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

/* Counts jobs taken into (+1) or leaving (-1) this instance's hands at stage. */
static inline void engine_in_hand(struct engine *e, int stage, int delta)
{
    if (stage_is_llm(stage)) {
        atomic_fetch_add(&e->llm_in_hand, delta);
    } else if (stage >= 0 && stage < STAGE_COUNT) {
        atomic_fetch_add(&e->med_in_hand, delta);
    }
}

/* Calls per permit of this instance's NLP share that may wait at the NLP stages in its
 * memory: enough that the lane never drains while a claim is on its way (claims start at 3/4
 * of it), and no more, so a batch's size never shows in the process's memory and an instance
 * that joins finds NLP work to claim. */
#define NLP_BACKLOG_PER_PERMIT 8

/* How many calls this instance may hold at the NLP stages now. Any thread. */
static inline int engine_nlp_backlog_bound(struct engine *e)
{
    return NLP_BACKLOG_PER_PERMIT * llm_lane_limit(e->llm);
}

/* Takes one place in the NLP backlog if one is free, atomically (two threads can't both
 * take the last one). Returns whether it did. Any thread. */
static inline bool engine_nlp_reserve(struct engine *e)
{
    int bound = engine_nlp_backlog_bound(e);
    int cur = atomic_load(&e->llm_in_hand);
    while (cur < bound) {
        if (atomic_compare_exchange_weak(&e->llm_in_hand, &cur, cur + 1)) {
            return true;
        }
    }
    return false;
}

/* Takes up to n places in the NLP backlog at once (as many as are free), atomically against
 * engine_nlp_reserve: a claim takes its places before it reads the database, so continuations
 * arriving meanwhile cannot take the same ones. Returns how many it took. Any thread. */
static inline int engine_nlp_reserve_up_to(struct engine *e, int n)
{
    int bound = engine_nlp_backlog_bound(e);
    int cur = atomic_load(&e->llm_in_hand);
    while (cur < bound) {
        int k = bound - cur < n ? bound - cur : n;
        if (atomic_compare_exchange_weak(&e->llm_in_hand, &cur, cur + k)) {
            return k;
        }
    }
    return 0;
}

/* True while this instance holds as many calls at the NLP stages as it may. Any thread. */
static inline bool engine_nlp_backlog_full(struct engine *e)
{
    return atomic_load(&e->llm_in_hand) >= engine_nlp_backlog_bound(e);
}

/* True while the lease is current (lease.c keeps the deadline). Any thread. */
bool engine_lease_current(struct engine *e);

/* ---- route.c: jobs to the lanes, and the lanes' reports to what outcome.c decided ---- */

/* The lane_host report function: executes the decision for j (steals j and o's result). */
void engine_route_report(void *ctx, struct job *j, struct job_outcome *o);

/* Hands every job of q (left empty) to its lane, one lock and wake-up per lane. */
void engine_submit_all(struct engine *e, struct jobq *q);

/* Gives j's claim back (a pending record with its token) and frees it. */
void engine_release_job(struct engine *e, struct job *j);

/* Sends j back to distribute (recorded) and to the mediator lane. */
void engine_redistribute_job(struct engine *e, struct job *j);

/* ---- the threads ---- */

void *engine_dispatcher_main(void *arg); /* dispatcher.c */
void *engine_flusher_main(void *arg);    /* flusher.c */
void *engine_lease_main(void *arg);      /* lease.c */

/* lease.c: builds e->shares from the configuration. Returns 0 or -1 (memory). */
int engine_lease_init(struct engine *e);

/* lease.c: frees e->shares. */
void engine_lease_free(struct engine *e);

#endif
