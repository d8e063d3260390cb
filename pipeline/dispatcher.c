/* The dispatcher: reads the active batches, ends finished ones, claims calls when the lanes
 * run low, and resubmits retries whose back-off is over. */
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "db/db.h"
#include "pipeline/engine_state.h"
#include "pipeline/fair.h"
#include "pipeline/metrics.h"

/* Appends a string literal. */
#define buf_lit(b, lit) buf_append((b), (lit), sizeof(lit) - 1)

/* Reads the active batches into e->batches and ends those with nothing left. */
static int refresh_batches(struct engine *e, PGconn *c, struct cofi_err *err)
{
    struct work_batch *list = NULL;
    size_t n = 0;
    int rc = work_active_batches(c, &list, &n, err);
    if (rc != 0) {
        return rc;
    }
    struct buf ids;
    buf_init(&ids, 1 << 20);
    rc = buf_lit(&ids, "{");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = buf_printf(&ids, "%s%lld", i ? "," : "", (long long)list[i].id);
    }
    if (rc == 0) {
        rc = buf_lit(&ids, "}");
    }
    pthread_mutex_lock(&e->mu);
    free(e->batches);
    e->batches = list;
    e->nbatches = n;
    pthread_mutex_unlock(&e->mu);
    if (n == 0 || rc != 0) {
        buf_free(&ids);
        return 0;
    }
    struct work_finished *fin = NULL;
    size_t nfin = 0;
    rc = work_finish_batches(c, ids.data, &fin, &nfin, err);
    buf_free(&ids);
    for (size_t i = 0; rc == 0 && i < nfin; i++) {
        log_info("batch %lld finished: %s", (long long)fin[i].id, fin[i].state);
    }
    free(fin);
    return rc;
}

static int node_index(const struct cofi_config *cfg, const char *id)
{
    if (id == NULL) {
        return -1;
    }
    for (size_t i = 0; i < cfg->node_count; i++) {
        if (strcmp(cfg->nodes[i].id, id) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* The claim's spec: a JSON array of {"id","lo","hi","lim"} of the batches with work waiting in
 * stages [lo, hi], each with its fair part of limit (by priority; what one can't use goes to
 * the others); NULL when none has any (or memory ran out). With skip_pipelined, pipelined
 * batches are left out (their NLP backlog is full). */
static char *claim_spec(struct engine *e, int lo, int hi, int limit, bool skip_pipelined)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->nbatches;
    int64_t *waiting = calloc(n + 1, sizeof *waiting);
    int *weight = calloc(n + 1, sizeof *weight);
    int64_t *part = calloc(n + 1, sizeof *part);
    int *blo = calloc(n + 1, sizeof *blo);
    int *bhi = calloc(n + 1, sizeof *bhi);
    bool ok = waiting != NULL && weight != NULL && part != NULL && blo != NULL && bhi != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        const struct work_batch *b = &e->batches[i];
        blo[i] = b->staged ? b->cur_stage : lo;
        bhi[i] = b->staged ? b->cur_stage : hi;
        blo[i] = blo[i] < lo ? lo : blo[i];
        bhi[i] = bhi[i] > hi ? hi : bhi[i];
        bool skip =
            b->cancelled || b->cur_stage < 0 || blo[i] > bhi[i] || (skip_pipelined && !b->staged);
        /* Nothing waits in that range (as of the last refresh): no share, no query. */
        waiting[i] = skip ? 0 : (lo > STAGE_STT ? b->pending_llm : b->pending_med);
        weight[i] = b->priority;
    }
    struct buf spec;
    buf_init(&spec, 1 << 20);
    int rc = ok ? buf_lit(&spec, "[") : -1;
    bool any = false;
    if (rc == 0) {
        fair_split(limit, waiting, weight, n, part);
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (part[i] <= 0) {
            continue;
        }
        rc = buf_printf(&spec, "%s{\"id\":%lld,\"lo\":%d,\"hi\":%d,\"lim\":%lld}", any ? "," : "",
                        (long long)e->batches[i].id, blo[i], bhi[i], (long long)part[i]);
        any = true;
    }
    pthread_mutex_unlock(&e->mu);
    free(waiting);
    free(weight);
    free(part);
    free(blo);
    free(bhi);
    if (rc == 0) {
        rc = buf_lit(&spec, "]");
    }
    if (rc != 0 || !any) {
        buf_free(&spec);
        return NULL;
    }
    return buf_steal(&spec);
}

/* The nodes that are healthy but of which this instance has no share, as a JSON array. */
static char *blocked_nodes(struct engine *e)
{
    struct buf b;
    buf_init(&b, (size_t)1 << 20);
    int rc = buf_lit(&b, "[");
    bool first = true;
    for (size_t i = 0; rc == 0 && i < e->cfg->node_count; i++) {
        if (mediator_lane_node_limit(e->med, i) == 0) {
            rc = first ? 0 : buf_lit(&b, ",");
            if (rc == 0) {
                rc = buf_json_string(&b, e->cfg->nodes[i].id);
            }
            first = false;
        }
    }
    if (rc == 0) {
        rc = buf_lit(&b, "]");
    }
    if (rc != 0) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

/* A job for claimed row w (its strings taken), or NULL when memory runs out. */
static struct job *job_of_claim(struct engine *e, struct work_claimed *w, uint64_t epoch,
                                int64_t now)
{
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        return NULL;
    }
    j->call_id = w->id;
    snprintf(j->call_id_str, sizeof j->call_id_str, "%lld", (long long)w->id);
    j->batch_id = w->batch_id;
    j->token = w->token;
    j->epoch = epoch;
    j->stage = w->stage;
    j->attempts = w->attempts;
    j->file = w->file;
    w->file = NULL;
    j->node = node_index(e->cfg, w->node);
    j->file_name = w->file_name;
    w->file_name = NULL;
    j->prev = w->prev != NULL ? json_loads(w->prev, 0, NULL) : NULL;
    if (j->prev == NULL) {
        j->prev = json_object();
        job_prev_text_reset(j);
    } else {
        job_prev_text_from_object(j, w->prev);
    }
    j->stage_started_wall = now;
    if (j->file == NULL || j->prev == NULL) {
        job_free(j);
        return NULL;
    }
    return j;
}

/* Gives back the claims of rows [from, n) that could not become jobs (memory). */
static void release_rows(struct engine *e, PGconn *c, const struct work_claimed *v, size_t from,
                         size_t n)
{
    struct buf b;
    buf_init(&b, (size_t)64 << 20);
    int rc = buf_lit(&b, "[");
    for (size_t i = from; rc == 0 && i < n; i++) {
        rc = buf_printf(&b, "%s{\"id\":%lld,\"token\":%lld}", i > from ? "," : "",
                        (long long)v[i].id, (long long)v[i].token);
    }
    if (rc == 0) {
        rc = buf_lit(&b, "]");
    }
    struct cofi_err err;
    if (rc != 0 || work_release(c, e->instance, b.data, &err) != 0) {
        log_error("out of memory: %zu claimed calls could not be given back; they stay claimed "
                  "until this instance stops",
                  n - from);
    } else {
        log_warn("out of memory: %zu claimed calls given back", n - from);
    }
    buf_free(&b);
}

/* Claims up to limit calls in stages [lo, hi] of the active batches and submits them;
 * *claimed is how many it kept. NLP-stage calls count in the backlog as they come, unless
 * nlp_reserved: their places were taken before (engine_nlp_reserve_up_to). */
static int claim(struct engine *e, PGconn *c, int lo, int hi, int limit, bool skip_pipelined,
                 bool nlp_reserved, int *claimed, struct cofi_err *err)
{
    *claimed = 0;
    char *spec = claim_spec(e, lo, hi, limit, skip_pipelined);
    if (spec == NULL) {
        return 0;
    }
    char *blocked = blocked_nodes(e);
    if (blocked == NULL) {
        free(spec);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    /* The epoch before the claim: if the lease is found lost meanwhile, these jobs count as
     * older than the loss and are let go (their release is fenced by the token). */
    uint64_t epoch = atomic_load(&e->epoch);
    struct work_claimed *v = NULL;
    size_t n = 0;
    int64_t t0 = clock_mono_us();
    int rc = work_claim(c, e->instance, spec, limit, blocked, &v, &n, err);
    if (rc == 0) {
        metrics_observe_claim(e->metrics, clock_mono_us() - t0);
    }
    free(spec);
    free(blocked);
    if (rc != 0) {
        return rc;
    }
    int64_t now = clock_wall_ms();
    struct jobq jobs = {0};
    struct jobq restart = {0};
    size_t i = 0;
    for (; i < n; i++) {
        struct job *j = job_of_claim(e, &v[i], epoch, now);
        if (j == NULL) {
            break;
        }
        if (!(nlp_reserved && stage_is_llm(j->stage))) {
            engine_in_hand(e, j->stage, 1);
        }
        bool lost_node = j->stage > STAGE_DISTRIBUTE && j->stage <= STAGE_STT &&
                         (j->node < 0 || j->file_name == NULL);
        jobq_push(lost_node ? &restart : &jobs, j);
    }
    if (i < n) {
        release_rows(e, c, v, i, n);
    }
    work_claimed_free(v, n);
    struct job *j = jobq_pop(&restart);
    while (j != NULL) {
        engine_redistribute_job(e, j);
        j = jobq_pop(&restart);
    }
    engine_submit_all(e, &jobs);
    *claimed = (int)i;
    return 0;
}

/* Submits every delayed job whose time has come; returns ms until the next one (or 1000). */
static int64_t run_delayed(struct engine *e)
{
    struct jobq due = {0};
    struct jobq keep = {0};
    int64_t now = clock_mono_ms();
    int64_t next = 1000;
    pthread_mutex_lock(&e->mu);
    struct job *j = jobq_pop(&e->delayed);
    while (j != NULL) {
        if (j->due_mono <= now) {
            jobq_push(&due, j);
        } else {
            next = j->due_mono - now < next ? j->due_mono - now : next;
            jobq_push(&keep, j);
        }
        j = jobq_pop(&e->delayed);
    }
    e->delayed = keep;
    pthread_mutex_unlock(&e->mu);
    if (atomic_load(&e->stopping)) {
        j = jobq_pop(&due);
        while (j != NULL) {
            engine_release_job(e, j);
            j = jobq_pop(&due);
        }
    } else {
        engine_submit_all(e, &due);
    }
    return next;
}

/* Claims for both lanes when they run low. The NLP backlog is bounded: at most
 * NLP_BACKLOG_PER_PERMIT calls per permit of this instance's NLP share are held at the NLP
 * stages, and while they are, pipelined batches get no GPU claims (their calls would only
 * queue for the NLP API in this process's memory). Returns 0 or a negative status; *more is
 * true when a claim came back full (there is more to take). */
static int claim_for_lanes(struct engine *e, PGconn *c, bool *more, struct cofi_err *err)
{
    *more = false;
    int cap = mediator_lane_healthy_capacity(e->med);
    int med_target = cap * 16 > 64 ? cap * 16 : 64;
    /* Enough in hand that the lane never drains while a claim (tens of ms for a few hundred
     * calls, earlier results included) is on its way: claims start at 3/4. */
    int llm_target = engine_nlp_backlog_bound(e);
    int med = atomic_load(&e->med_in_hand);
    int llm = atomic_load(&e->llm_in_hand);
    bool nlp_full = llm >= llm_target;
    int got = 0;
    if (cap > 0 && med <= med_target / 2) {
        int rc =
            claim(e, c, STAGE_DISTRIBUTE, STAGE_STT, med_target - med, nlp_full, false, &got, err);
        if (rc != 0) {
            return rc;
        }
        *more = got == med_target - med;
    }
    if (llm <= llm_target * 3 / 4) {
        /* The places first: a stt -> llm1 continuation may take one while the claim reads. */
        int places = engine_nlp_reserve_up_to(e, llm_target - llm);
        got = 0;
        int rc =
            places > 0 ? claim(e, c, STAGE_LLM1, STAGE_LLM2, places, false, true, &got, err) : 0;
        atomic_fetch_sub(&e->llm_in_hand, places - (rc == 0 ? got : 0));
        if (rc != 0) {
            return rc;
        }
        *more = *more || (places > 0 && got == places);
    }
    if (llm > llm_target) {
        /* The share shrank: what waits beyond the bound goes back, for whoever has room. */
        llm_lane_give_back(e->llm, (size_t)(llm - llm_target));
    }
    return 0;
}

/* Sleeps up to wait_ms unless woken. */
static void dispatcher_wait(struct engine *e, int64_t wait_ms)
{
    if (wait_ms <= 0) {
        return;
    }
    pthread_mutex_lock(&e->mu);
    if (!e->stop_dispatcher && !e->wake_claim && !e->wake_refresh) {
        struct timespec dl = clock_deadline_ms(wait_ms);
        e->dispatcher_waiting = true;
        pthread_cond_timedwait(&e->cv, &e->mu, &dl);
        e->dispatcher_waiting = false;
    }
    pthread_mutex_unlock(&e->mu);
}

/* One turn with a working connection: refresh when due, claim. Returns 0 or a negative status
 * and lowers *wait_ms to when the next turn is due. */
static int dispatch_turn(struct engine *e, PGconn *c, int64_t *wait_ms, int64_t *next_refresh,
                         int64_t *last_refresh, bool refresh_now, bool flushed,
                         struct cofi_err *err)
{
    int64_t now = clock_mono_ms();
    /* Progress (stage barriers, batch ends) is re-read soon after writes, at most every
     * 20 ms, and every 250 ms regardless. */
    if (refresh_now || now >= *next_refresh || (flushed && now >= *last_refresh + 20)) {
        pthread_mutex_lock(&e->mu);
        e->flushed = false;
        pthread_mutex_unlock(&e->mu);
        int rc = refresh_batches(e, c, err);
        if (rc != 0) {
            return rc;
        }
        *last_refresh = now;
        *next_refresh = now + 250;
    } else if (flushed && *wait_ms > *last_refresh + 20 - now) {
        *wait_ms = *last_refresh + 20 - now;
    }
    if (atomic_load(&e->stopping) || !engine_lease_current(e)) {
        return 0; /* no claim without a current lease */
    }
    bool more = false;
    int rc = claim_for_lanes(e, c, &more, err);
    if (rc == 0 && more) {
        *wait_ms = 0;
    }
    return rc;
}

void *engine_dispatcher_main(void *arg)
{
    struct engine *e = arg;
    thread_set_name("cofi-dispatch");
    PGconn *c = NULL;
    int64_t next_refresh = 0;
    int64_t last_refresh = 0;
    int64_t backoff = 100;
    bool down_logged = false;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        bool stop = e->stop_dispatcher;
        bool refresh_now = e->wake_refresh;
        bool flushed = e->flushed;
        e->wake_refresh = false;
        e->wake_claim = false;
        pthread_mutex_unlock(&e->mu);
        if (stop) {
            break;
        }
        int64_t wait_ms = run_delayed(e);
        struct cofi_err err;
        cofi_err_clear(&err);
        if (!atomic_load(&e->registered)) {
            dispatcher_wait(e, 50); /* the lease thread registers this instance first */
            continue;
        }
        if (!db_conn_ok(c)) {
            PQfinish(c);
            c = db_connect(e->cfg->database_url, &err);
            if (c == NULL) {
                if (!down_logged) {
                    log_warn("engine: %s; retrying with backoff", err.msg);
                    down_logged = true;
                }
                dispatcher_wait(e, backoff);
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
                continue;
            }
            if (down_logged) {
                log_info("engine: database reachable again");
                down_logged = false;
            }
            backoff = 100;
        }
        if (dispatch_turn(e, c, &wait_ms, &next_refresh, &last_refresh, refresh_now, flushed,
                          &err) != 0) {
            log_warn("engine: %s", err.msg);
        }
        /* At work the loop turns at least every 50 ms. */
        dispatcher_wait(e, wait_ms > 50 ? 50 : wait_ms);
    }
    /* Retries still waiting go back to the database. */
    pthread_mutex_lock(&e->mu);
    struct jobq rest = e->delayed;
    memset(&e->delayed, 0, sizeof e->delayed);
    pthread_mutex_unlock(&e->mu);
    struct job *j = jobq_pop(&rest);
    while (j != NULL) {
        engine_release_job(e, j);
        j = jobq_pop(&rest);
    }
    PQfinish(c);
    return NULL;
}
