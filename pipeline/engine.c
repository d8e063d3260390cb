/* The engine: claims calls from PostgreSQL, routes them to the lanes, records every outcome. */
#include "pipeline/engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "db/db.h"
#include "db/work_db.h"
#include "pipeline/engine_internal.h"
#include "pipeline/metrics.h"
#include "common/stages.h"
#include "pipeline/worker_http.h"

/* A batch the engine works on, as last read from the database. */
struct batch_info {
    int64_t id;
    bool staged;
    bool cancelled;
    int cur_stage;       /* lowest stage with pending or running calls, -1 when none */
    int64_t pending_med; /* calls waiting at stages 0..4 */
    int64_t pending_llm; /* calls waiting at stages 5..6 */
};

/* One transition to write: the call's new position, and optionally the record of the stage
 * it just finished or failed. */
struct record {
    uint64_t seq;
    int64_t call_id;
    int stage;
    int status;
    int attempts;
    char *last_error; /* owned */
    int node;
    char *file_name;    /* owned */
    int64_t started_ms; /* wall ms the current stage started, or -1 */
    bool has_row;
    int row_stage;
    bool row_failed;
    int row_attempts;
    char *row_error; /* owned */
    int64_t row_started_ms, row_finished_ms;
    char *row_result; /* the result as JSON text (owned), or NULL */
    struct job *cont; /* owned: submitted once this record is written (status running) */
};

struct engine {
    const struct cofi_config *cfg;
    char instance[160];
    char host[128];
    int pid;
    struct stage_metrics *metrics;
    struct mediator_lane *med;
    struct llm_lane *llm;
    atomic_bool stopping;
    atomic_int med_in_hand;
    atomic_int llm_in_hand;
    atomic_int inflight[STAGE_COUNT];
    atomic_uint_fast64_t req_counter;

    /* Dispatcher state. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop_dispatcher;
    bool wake_refresh;       /* refresh the batch list at once */
    bool wake_claim;         /* capacity or work may be there */
    bool flushed;            /* records were written since the last refresh */
    bool dispatcher_waiting; /* the dispatcher sleeps on cv: a wake-up is worth a signal */
    struct batch_info *batches;
    size_t nbatches;
    struct jobq delayed; /* retries waiting for their time, unordered */
    pthread_t dispatcher;

    /* Records waiting for the flusher. */
    pthread_mutex_t rec_mu;
    pthread_cond_t rec_cv;
    struct record *recs;
    size_t nrecs, caprecs;
    uint64_t rec_seq;
    bool stop_flusher;
    bool flushing;     /* the flusher holds records not yet written */
    bool flusher_idle; /* the flusher sleeps on rec_cv */
    pthread_t flusher;
};

/* ---- jobs ------------------------------------------------------------------------------ */

void jobq_push(struct jobq *q, struct job *j)
{
    j->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = j;
    } else {
        q->head = j;
    }
    q->tail = j;
    q->len++;
}

struct job *jobq_pop(struct jobq *q)
{
    struct job *j = q->head;
    if (j != NULL) {
        q->head = j->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        q->len--;
        j->next = NULL;
    }
    return j;
}

void job_free(struct job *j)
{
    if (j == NULL) {
        return;
    }
    free(j->file);
    free(j->file_name);
    free(j->last_error);
    json_decref(j->prev);
    buf_free(&j->prev_text);
    free(j);
}

/* Every stage's result at its largest, and room for the names. */
#define PREV_TEXT_LIMIT ((size_t)STAGE_COUNT * (WORKER_REPLY_LIMIT + 64))

/* Empties j's prev_text (and marks it usable). */
static void job_prev_text_reset(struct job *j)
{
    buf_free(&j->prev_text);
    buf_init(&j->prev_text, PREV_TEXT_LIMIT);
    j->prev_text_ok = true;
}

/* Appends `"name":result_json` to j's prev_text; on failure marks it unusable. */
static void job_prev_text_add(struct job *j, const char *name, const char *result_json, size_t len)
{
    if (!j->prev_text_ok) {
        return;
    }
    int rc = j->prev_text.len > 0 ? buf_append(&j->prev_text, ",", 1) : 0;
    rc = rc == 0 ? buf_json_string(&j->prev_text, name) : rc;
    rc = rc == 0 ? buf_append(&j->prev_text, ":", 1) : rc;
    rc = rc == 0 ? buf_append(&j->prev_text, result_json, len) : rc;
    if (rc != 0) {
        buf_free(&j->prev_text);
        j->prev_text_ok = false;
    }
}

/* Sets j's prev_text from the text of a JSON object of results (as the claim returns it):
 * what lies between its outer braces. */
static void job_prev_text_from_object(struct job *j, const char *obj)
{
    job_prev_text_reset(j);
    const char *a = strchr(obj, '{');
    const char *b = strrchr(obj, '}');
    if (a == NULL || b == NULL || b <= a) {
        j->prev_text_ok = false;
        return;
    }
    a++;
    while (a < b && (*a == ' ' || *a == '\n' || *a == '\t' || *a == '\r')) {
        a++;
    }
    if (a < b && buf_append(&j->prev_text, a, (size_t)(b - a)) != 0) {
        buf_free(&j->prev_text);
        j->prev_text_ok = false;
    }
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src != NULL ? strdup(src) : NULL;
}

/* ---- services for the lanes ------------------------------------------------------------ */

const struct cofi_config *engine__cfg(struct engine *e)
{
    return e->cfg;
}

const char *engine__instance(struct engine *e)
{
    return e->instance;
}

bool engine__stopping(struct engine *e)
{
    return atomic_load(&e->stopping);
}

void engine__request_id(struct engine *e, char *out, size_t outlen)
{
    unsigned long long n = (unsigned long long)atomic_fetch_add(&e->req_counter, 1);
    snprintf(out, outlen, "%s-%llu", e->instance, n);
}

void engine__inflight(struct engine *e, int stage, int delta)
{
    if (stage >= 0 && stage < STAGE_COUNT) {
        atomic_fetch_add(&e->inflight[stage], delta);
    }
}

static void in_hand_add(struct engine *e, int stage, int delta)
{
    if (stage_is_llm(stage)) {
        atomic_fetch_add(&e->llm_in_hand, delta);
    } else if (stage < STAGE_COUNT) {
        atomic_fetch_add(&e->med_in_hand, delta);
    }
}

static void wake_dispatcher(struct engine *e, bool refresh)
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

/* Queues a record for the flusher; takes ownership of its strings and result. */
static void push_record(struct engine *e, struct record *r)
{
    pthread_mutex_lock(&e->rec_mu);
    if (e->nrecs == e->caprecs) {
        size_t cap = e->caprecs ? e->caprecs * 2 : 1024;
        struct record *p = realloc(e->recs, cap * sizeof *p);
        if (p == NULL) {
            /* Without memory the record can't be kept; the call stays claimed in the
             * database and is taken up again when this instance's lease is recovered. */
            pthread_mutex_unlock(&e->rec_mu);
            log_error("out of memory: dropping a record of call %lld", (long long)r->call_id);
            free(r->last_error);
            free(r->file_name);
            free(r->row_error);
            free(r->row_result);
            return;
        }
        e->recs = p;
        e->caprecs = cap;
    }
    r->seq = e->rec_seq++;
    e->recs[e->nrecs++] = *r;
    if (e->flusher_idle) {
        pthread_cond_signal(&e->rec_cv);
    }
    pthread_mutex_unlock(&e->rec_mu);
}

/* A record of where job j is now (status at j->stage). */
static struct record record_of(const struct job *j, int status)
{
    struct record r;
    memset(&r, 0, sizeof r);
    r.call_id = j->call_id;
    r.stage = j->stage;
    r.status = status;
    r.attempts = j->attempts;
    r.last_error = j->last_error != NULL ? strdup(j->last_error) : NULL;
    r.node = j->node;
    r.file_name = j->file_name != NULL ? strdup(j->file_name) : NULL;
    r.started_ms = status == CALL_RUNNING ? j->stage_started_wall : -1;
    return r;
}

static void submit(struct engine *e, struct job *j)
{
    if (stage_is_llm(j->stage)) {
        llm_lane_push(e->llm, j);
    } else {
        mediator_lane_push(e->med, j);
    }
}

/* Submits every job of q (left empty), one lock and wake-up per lane. */
static void submit_all(struct engine *e, struct jobq *q)
{
    struct jobq med = {0};
    struct jobq llm = {0};
    struct job *j;
    while ((j = jobq_pop(q)) != NULL) {
        jobq_push(stage_is_llm(j->stage) ? &llm : &med, j);
    }
    mediator_lane_push_all(e->med, &med);
    llm_lane_push_all(e->llm, &llm);
}

/* Looks up what the engine knows of a batch; copies it into *out. */
static bool batch_lookup(struct engine *e, int64_t id, struct batch_info *out)
{
    bool found = false;
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->nbatches; i++) {
        if (e->batches[i].id == id) {
            *out = e->batches[i];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return found;
}

void engine__release(struct engine *e, struct job *j)
{
    struct record r = record_of(j, CALL_PENDING);
    push_record(e, &r);
    in_hand_add(e, j->stage, -1);
    job_free(j);
    wake_dispatcher(e, false);
}

void engine__redistribute(struct engine *e, struct job *j)
{
    log_debug("call %s: node %s unavailable at %s, distributing again", j->call_id_str,
              j->node >= 0 ? e->cfg->nodes[j->node].id : "-", stage_name(j->stage));
    in_hand_add(e, j->stage, -1);
    j->stage = STAGE_DISTRIBUTE;
    in_hand_add(e, j->stage, 1);
    j->node = -1;
    set_str(&j->file_name, NULL);
    j->attempts = 0;
    json_decref(j->prev);
    j->prev = json_object();
    job_prev_text_reset(j);
    j->stage_started_wall = clock_wall_ms();
    struct record r = record_of(j, CALL_RUNNING);
    push_record(e, &r);
}

static void finish_failed(struct engine *e, struct job *j, const char *why)
{
    set_str(&j->last_error, why);
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
    push_record(e, &r);
    in_hand_add(e, j->stage, -1);
    job_free(j);
    wake_dispatcher(e, false);
}

void engine__job_done(struct engine *e, struct job *j, struct job_outcome *o)
{
    metrics_record(e->metrics, j->stage, o->latency_us);
    if (o->kind != OUTCOME_OK) {
        free(o->result_text);
        o->result_text = NULL;
    }
    const struct cofi_worker_cfg *w = stage_is_llm(j->stage) ? &e->cfg->llm : &e->cfg->mediator;

    if (o->kind == OUTCOME_RETRY && j->attempts >= w->max_attempts) {
        char why[320];
        snprintf(why, sizeof why, "gave up after %d attempts: %s", j->attempts, o->error);
        finish_failed(e, j, why);
        return;
    }
    if (o->kind == OUTCOME_PERMANENT) {
        finish_failed(e, j, o->error);
        return;
    }
    if (o->kind == OUTCOME_RETRY) {
        set_str(&j->last_error, o->error);
        struct record r = record_of(j, CALL_RUNNING);
        push_record(e, &r);
        if (atomic_load(&e->stopping)) {
            engine__release(e, j);
            return;
        }
        uint64_t seed = (uint64_t)j->call_id * 0x9E3779B97F4A7C15ULL + (uint64_t)clock_mono_us();
        if (seed == 0) {
            seed = 1;
        }
        int64_t delay = retry_delay_ms(w, j->attempts, o->retry_after_ms, &seed);
        log_debug("call %s: %s attempt %d failed (%s); retrying in %lld ms", j->call_id_str,
                  stage_name(j->stage), j->attempts, o->error, (long long)delay);
        j->due_mono = clock_mono_ms() + delay;
        pthread_mutex_lock(&e->mu);
        jobq_push(&e->delayed, j);
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        return;
    }

    /* Success: keep the result for later stages and record it. */
    int done_stage = j->stage;
    int64_t now = clock_wall_ms();
    /* The record gets the result as text (the worker's own when the lane kept it, else made
     * here in the lane's thread): the tree itself stays with the job (jansson's reference
     * counts are no safe way to share one tree between threads). */
    char *text = o->result_text != NULL ? o->result_text : json_dumps(o->result, JSON_COMPACT);
    o->result_text = NULL;
    struct record r;
    memset(&r, 0, sizeof r);
    r.has_row = true;
    r.row_stage = done_stage;
    r.row_attempts = j->attempts;
    r.row_started_ms = j->stage_started_wall;
    r.row_finished_ms = now;
    r.row_result = text;
    if (text != NULL) {
        job_prev_text_add(j, stage_name(done_stage), text, strlen(text));
    } else {
        j->prev_text_ok = false;
    }
    json_object_set_new(j->prev, stage_name(done_stage), o->result);
    o->result = NULL;

    j->stage = done_stage + 1;
    j->attempts = 0;
    set_str(&j->last_error, NULL);
    j->stage_started_wall = now;
    in_hand_add(e, done_stage, -1);

    if (j->stage == STAGE_COUNT) {
        struct record fin = record_of(j, CALL_DONE);
        r.call_id = fin.call_id;
        r.stage = fin.stage;
        r.status = fin.status;
        r.node = fin.node;
        r.file_name = fin.file_name;
        r.started_ms = -1;
        push_record(e, &r);
        job_free(j);
        wake_dispatcher(e, false);
        return;
    }
    struct batch_info bi;
    bool keep = !atomic_load(&e->stopping) && batch_lookup(e, j->batch_id, &bi) && !bi.cancelled &&
                !bi.staged;
    struct record pos = record_of(j, keep ? CALL_RUNNING : CALL_PENDING);
    r.call_id = pos.call_id;
    r.stage = pos.stage;
    r.status = pos.status;
    r.attempts = 0;
    r.node = pos.node;
    r.file_name = pos.file_name;
    r.started_ms = pos.started_ms;
    free(pos.last_error);
    if (keep) {
        /* The next request starts only once this result is in the database: a crash then
         * repeats at most the one request each call has in flight. */
        in_hand_add(e, j->stage, 1);
        r.cont = j;
        push_record(e, &r);
    } else {
        push_record(e, &r);
        job_free(j);
        wake_dispatcher(e, false);
    }
}

/* ---- flusher --------------------------------------------------------------------------- */

static int cmp_call_seq(const void *a, const void *b)
{
    const struct record *x = *(const struct record *const *)a;
    const struct record *y = *(const struct record *const *)b;
    if (x->call_id != y->call_id) {
        return x->call_id < y->call_id ? -1 : 1;
    }
    return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

static int cmp_row_seq(const void *a, const void *b)
{
    const struct record *x = *(const struct record *const *)a;
    const struct record *y = *(const struct record *const *)b;
    if (x->call_id != y->call_id) {
        return x->call_id < y->call_id ? -1 : 1;
    }
    if (x->row_stage != y->row_stage) {
        return x->row_stage - y->row_stage;
    }
    return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

/* Builds the two JSON arrays of work_flush from n records: the last position of every call,
 * and the last row of every (call, stage). Written as text directly: the results are
 * already text. Returns 0 or -1 (out of memory). */
/* Appends a string literal. */
#define buf_lit(b, lit) buf_append((b), (lit), sizeof(lit) - 1)

static int build_flush(struct engine *e, struct record *recs, size_t n, char **calls_out,
                       char **ids_out, char **stages_out)
{
    struct record **idx = malloc((n ? n : 1) * sizeof *idx);
    struct buf calls;
    struct buf ids;
    struct buf stages;
    buf_init(&calls, (size_t)1 << 30);
    buf_init(&ids, (size_t)1 << 30);
    buf_init(&stages, (size_t)1 << 30);
    if (idx == NULL) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        idx[i] = &recs[i];
    }
    qsort(idx, n, sizeof *idx, cmp_call_seq);
    int rc = buf_lit(&calls, "[");
    rc = rc == 0 ? buf_lit(&ids, "{") : rc;
    bool first = true;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i + 1 < n && idx[i + 1]->call_id == idx[i]->call_id) {
            continue; /* a later record of the same call wins */
        }
        const struct record *r = idx[i];
        rc = buf_printf(&ids, "%s%lld", first ? "" : ",", (long long)r->call_id);
        rc = rc == 0 ? buf_printf(&calls,
                                  "%s{\"id\":%lld,\"stage\":%d,\"status\":\"%s\",\"attempts\":%d,"
                                  "\"last_error\":",
                                  first ? "" : ",", (long long)r->call_id, r->stage,
                                  call_status_name(r->status), r->attempts)
                     : rc;
        first = false;
        rc = rc == 0 ? buf_json_string(&calls, r->last_error) : rc;
        rc = rc == 0 ? buf_lit(&calls, ",\"node\":") : rc;
        rc =
            rc == 0 ? buf_json_string(&calls, r->node >= 0 ? e->cfg->nodes[r->node].id : NULL) : rc;
        rc = rc == 0 ? buf_lit(&calls, ",\"file_name\":") : rc;
        rc = rc == 0 ? buf_json_string(&calls, r->file_name) : rc;
        if (rc == 0 && r->started_ms >= 0) {
            rc = buf_printf(&calls, ",\"started_ms\":%lld}", (long long)r->started_ms);
        } else if (rc == 0) {
            rc = buf_lit(&calls, ",\"started_ms\":null}");
        }
    }
    rc = rc == 0 ? buf_lit(&calls, "]") : rc;
    rc = rc == 0 ? buf_lit(&ids, "}") : rc;

    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].has_row) {
            idx[m++] = &recs[i];
        }
    }
    qsort(idx, m, sizeof *idx, cmp_row_seq);
    rc = rc == 0 ? buf_lit(&stages, "[") : rc;
    first = true;
    for (size_t i = 0; rc == 0 && i < m; i++) {
        if (i + 1 < m && idx[i + 1]->call_id == idx[i]->call_id &&
            idx[i + 1]->row_stage == idx[i]->row_stage) {
            continue;
        }
        const struct record *r = idx[i];
        rc = buf_printf(&stages,
                        "%s{\"call_id\":%lld,\"stage\":%d,\"state\":\"%s\",\"attempts\":%d,"
                        "\"started_ms\":%lld,\"finished_ms\":%lld,\"last_error\":",
                        first ? "" : ",", (long long)r->call_id, r->row_stage,
                        r->row_failed ? "failed" : "done", r->row_attempts,
                        (long long)r->row_started_ms, (long long)r->row_finished_ms);
        first = false;
        rc = rc == 0 ? buf_json_string(&stages, r->row_error) : rc;
        rc = rc == 0 ? buf_lit(&stages, ",\"result\":") : rc;
        if (rc == 0 && r->row_result != NULL) {
            rc = buf_append(&stages, r->row_result, strlen(r->row_result));
        } else if (rc == 0) {
            rc = buf_lit(&stages, "null");
        }
        rc = rc == 0 ? buf_lit(&stages, "}") : rc;
    }
    rc = rc == 0 ? buf_lit(&stages, "]") : rc;
    free(idx);
    if (rc != 0) {
        buf_free(&calls);
        buf_free(&ids);
        buf_free(&stages);
        return -1;
    }
    *calls_out = buf_steal(&calls);
    *ids_out = buf_steal(&ids);
    *stages_out = buf_steal(&stages);
    return 0;
}

static void free_records(struct engine *e, struct record *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (recs[i].cont != NULL) {
            in_hand_add(e, recs[i].cont->stage, -1);
            job_free(recs[i].cont);
            recs[i].cont = NULL;
        }
        free(recs[i].last_error);
        free(recs[i].file_name);
        free(recs[i].row_error);
        free(recs[i].row_result);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* After a flush: every parked job whose call was written and is still running (not
 * cancelled, lease still ours) goes on to its next stage; the others are dropped. */
static void continue_jobs(struct engine *e, PGresult *res, struct record *recs, size_t n)
{
    int rows = PQntuples(res);
    int64_t *running = malloc(((size_t)rows + 1) * sizeof *running);
    size_t nrun = 0;
    for (int i = 0; running != NULL && i < rows; i++) {
        if (strcmp(PQgetvalue(res, i, 2), "running") == 0) {
            running[nrun++] = atoll(PQgetvalue(res, i, 0));
        }
    }
    if (running != NULL) {
        qsort(running, nrun, sizeof *running, cmp_i64);
    }
    struct jobq go = {0};
    int64_t now = clock_wall_ms();
    for (size_t i = 0; i < n; i++) {
        struct job *j = recs[i].cont;
        if (j == NULL) {
            continue;
        }
        recs[i].cont = NULL;
        if (running != NULL && bsearch(&j->call_id, running, nrun, sizeof *running, cmp_i64)) {
            j->stage_started_wall = now;
            jobq_push(&go, j);
        } else {
            log_debug("call %s: not continued (cancelled or claim lost)", j->call_id_str);
            in_hand_add(e, j->stage, -1);
            job_free(j);
        }
    }
    free(running);
    submit_all(e, &go);
}

/* Below this many queued records the flusher waits FLUSH_LINGER_MS for more. */
#define FLUSH_LINGER_BELOW 64
#define FLUSH_LINGER_MS    2

struct flush_stats {
    long flushes;
    long records;
    int64_t us;
    int64_t since_us;
};

/* Counts one flush; every 10 s logs how many records took how many statements. */
static void log_flush_stats(struct flush_stats *st, size_t records, int64_t us)
{
    st->flushes++;
    st->records += (long)records;
    st->us += us;
    int64_t now = clock_mono_us();
    if (now - st->since_us < 10000000) {
        return;
    }
    if (st->records > 0) {
        log_info("flusher: %ld records in %ld statements over %.0f s, %.1f ms each", st->records,
                 st->flushes, (double)(now - st->since_us) / 1e6,
                 (double)st->us / 1000.0 / (double)st->flushes);
    }
    *st = (struct flush_stats){.since_us = now};
}

/* Returns the calls of records that could not be written to pending (best effort). */
static void release_calls(struct engine *e, PGconn *c, const struct record *recs, size_t n)
{
    struct buf ids;
    buf_init(&ids, (size_t)64 << 20);
    buf_lit(&ids, "{");
    for (size_t i = 0; i < n; i++) {
        buf_printf(&ids, "%s%lld", i ? "," : "", (long long)recs[i].call_id);
    }
    buf_lit(&ids, "}");
    struct cofi_err err;
    if (ids.data == NULL || work_release(c, e->instance, ids.data, &err) != 0) {
        log_error("could not return %zu calls to the queue (%s); they come back when this "
                  "instance stops",
                  n, ids.data == NULL ? "out of memory" : err.msg);
    }
    buf_free(&ids);
}

static void *flusher_main(void *arg)
{
    struct engine *e = arg;
    thread_set_name("cofi-flusher");
    PGconn *c = NULL;
    struct record *batch = NULL;
    size_t nbatch = 0;
    int64_t backoff = 50;
    struct flush_stats stats = {.since_us = clock_mono_us()};
    for (;;) {
        pthread_mutex_lock(&e->rec_mu);
        while (e->nrecs == 0 && nbatch == 0 && !e->stop_flusher) {
            e->flusher_idle = true;
            pthread_cond_wait(&e->rec_cv, &e->rec_mu);
            e->flusher_idle = false;
        }
        if (e->nrecs == 0 && nbatch == 0 && e->stop_flusher) {
            pthread_mutex_unlock(&e->rec_mu);
            break;
        }
        if (nbatch == 0 && e->nrecs < FLUSH_LINGER_BELOW && !e->stop_flusher) {
            /* A few records: wait a moment for more, so one statement carries many (the
             * statement's fixed cost dominates small flushes). Only stop wakes this early. */
            struct timespec dl = clock_deadline_ms(FLUSH_LINGER_MS);
            pthread_cond_timedwait(&e->rec_cv, &e->rec_mu, &dl);
        }
        if (nbatch == 0) {
            /* Take everything queued: one statement writes it all. */
            batch = e->recs;
            nbatch = e->nrecs;
            e->recs = NULL;
            e->nrecs = 0;
            e->caprecs = 0;
        }
        e->flushing = true;
        bool stopping = e->stop_flusher;
        pthread_mutex_unlock(&e->rec_mu);

        struct cofi_err err;
        cofi_err_clear(&err);
        if (!db_conn_ok(c)) {
            PQfinish(c);
            c = db_connect(e->cfg->database_url, &err);
            if (c != NULL && work_flush_session(c, &err) != 0) {
                log_warn("flush: %s; every flush is planned anew", err.msg);
                cofi_err_clear(&err);
            }
        }
        char *calls = NULL;
        char *ids = NULL;
        char *stages = NULL;
        PGresult *res = NULL;
        int64_t t0 = clock_mono_us();
        if (c != NULL) {
            if (build_flush(e, batch, nbatch, &calls, &ids, &stages) == 0) {
                res = work_flush(c, e->instance, calls, ids, stages, &err);
            } else {
                cofi_err_set(&err, COFI_E_NOMEM, "out of memory building a flush");
            }
        }
        log_flush_stats(&stats, nbatch, clock_mono_us() - t0);
        free(calls);
        free(ids);
        free(stages);
        if (res != NULL) {
            int written = PQntuples(res);
            if ((size_t)written < nbatch) {
                log_debug("flush: %zu records, %d calls written", nbatch, written);
            }
            continue_jobs(e, res, batch, nbatch);
            PQclear(res);
            free_records(e, batch, nbatch);
            free(batch);
            batch = NULL;
            nbatch = 0;
            backoff = 50;
            pthread_mutex_lock(&e->rec_mu);
            e->flushing = false;
            pthread_cond_broadcast(&e->rec_cv);
            pthread_mutex_unlock(&e->rec_mu);
            pthread_mutex_lock(&e->mu);
            e->flushed = true;
            e->wake_claim = true;
            if (e->dispatcher_waiting) {
                pthread_cond_signal(&e->cv);
            }
            pthread_mutex_unlock(&e->mu);
            continue;
        }
        if (err.code != COFI_E_UNAVAILABLE && c != NULL) {
            /* Not a lost connection: the records themselves can't be written. Their calls
             * go back to the queue (taken up again from their last recorded stage) rather
             * than stay claimed by this live instance forever. */
            log_error("flush of %zu records failed: %s; returning their calls to the queue", nbatch,
                      err.msg);
            release_calls(e, c, batch, nbatch);
            free_records(e, batch, nbatch);
            free(batch);
            batch = NULL;
            nbatch = 0;
            continue;
        }
        log_warn("flush: %s; retrying in %lld ms", err.msg, (long long)backoff);
        if (stopping && backoff >= 2000) {
            log_error("database still unreachable at shutdown: %zu records not written (their "
                      "calls will be taken up again)",
                      nbatch);
            free_records(e, batch, nbatch);
            free(batch);
            batch = NULL;
            nbatch = 0;
            continue;
        }
        clock_sleep_ms(backoff);
        backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    }
    PQfinish(c);
    return NULL;
}

/* ---- dispatcher ------------------------------------------------------------------------ */

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

/* Reads the active batches into e->batches and ends those with nothing left. */
static int refresh_batches(struct engine *e, PGconn *c, struct cofi_err *err)
{
    PGresult *r = work_active_batches(c, err);
    if (r == NULL) {
        return err->code;
    }
    int n = PQntuples(r);
    struct batch_info *list = calloc((size_t)(n > 0 ? n : 1), sizeof *list);
    struct buf ids;
    buf_init(&ids, 1 << 20);
    buf_lit(&ids, "{");
    for (int i = 0; i < n && list != NULL; i++) {
        list[i].id = atoll(PQgetvalue(r, i, 0));
        list[i].staged = strcmp(PQgetvalue(r, i, 1), "staged") == 0;
        list[i].cancelled = strcmp(PQgetvalue(r, i, 2), "cancelled") == 0;
        list[i].cur_stage = PQgetisnull(r, i, 3) ? -1 : atoi(PQgetvalue(r, i, 3));
        list[i].pending_med = atoll(PQgetvalue(r, i, 4));
        list[i].pending_llm = atoll(PQgetvalue(r, i, 5));
        buf_printf(&ids, "%s%lld", i ? "," : "", (long long)list[i].id);
    }
    buf_lit(&ids, "}");
    PQclear(r);
    if (list == NULL) {
        buf_free(&ids);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    pthread_mutex_lock(&e->mu);
    free(e->batches);
    e->batches = list;
    e->nbatches = (size_t)n;
    pthread_mutex_unlock(&e->mu);

    if (n > 0 && ids.data != NULL) {
        PGresult *fin = work_finish_batches(c, ids.data, err);
        if (fin == NULL) {
            buf_free(&ids);
            return err->code;
        }
        for (int i = 0; i < PQntuples(fin); i++) {
            log_info("batch %s finished: %s", PQgetvalue(fin, i, 0), PQgetvalue(fin, i, 1));
        }
        PQclear(fin);
    }
    buf_free(&ids);
    return 0;
}

/* Claims up to limit calls in stages [lo, hi] of the active batches and submits them. */
static int claim(struct engine *e, PGconn *c, int lo, int hi, int limit, int *claimed,
                 struct cofi_err *err)
{
    *claimed = 0;
    json_t *spec = json_array();
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->nbatches; i++) {
        const struct batch_info *b = &e->batches[i];
        if (b->cancelled || b->cur_stage < 0) {
            continue;
        }
        int blo = b->staged ? b->cur_stage : lo;
        int bhi = b->staged ? b->cur_stage : hi;
        if (blo < lo) {
            blo = lo;
        }
        if (bhi > hi) {
            bhi = hi;
        }
        /* Nothing waits in that range (as of the last refresh): no query. */
        int64_t waiting = lo > STAGE_STT ? b->pending_llm : b->pending_med;
        if (blo > bhi || waiting == 0) {
            continue;
        }
        json_array_append_new(
            spec, json_pack("{s:I, s:i, s:i}", "id", (json_int_t)b->id, "lo", blo, "hi", bhi));
    }
    pthread_mutex_unlock(&e->mu);
    if (json_array_size(spec) == 0) {
        json_decref(spec);
        return 0;
    }
    char *s = json_dumps(spec, JSON_COMPACT);
    json_decref(spec);
    if (s == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    /* Nodes that are healthy but of which this instance has no share. */
    struct buf blocked;
    buf_init(&blocked, 1 << 16);
    buf_lit(&blocked, "{");
    bool first = true;
    for (size_t i = 0; i < e->cfg->node_count; i++) {
        if (mediator_lane_node_limit(e->med, i) == 0) {
            buf_printf(&blocked, "%s\"%s\"", first ? "" : ",", e->cfg->nodes[i].id);
            first = false;
        }
    }
    buf_lit(&blocked, "}");
    PGresult *r = work_claim(c, e->instance, s, limit, blocked.data, err);
    buf_free(&blocked);
    free(s);
    if (r == NULL) {
        return err->code;
    }
    int n = PQntuples(r);
    int64_t now = clock_wall_ms();
    struct jobq claimed_jobs = {0};
    for (int i = 0; i < n; i++) {
        struct job *j = calloc(1, sizeof *j);
        if (j == NULL) {
            break; /* the rest stay claimed; recovered with the lease */
        }
        j->call_id = atoll(PQgetvalue(r, i, 0));
        snprintf(j->call_id_str, sizeof j->call_id_str, "%lld", (long long)j->call_id);
        j->batch_id = atoll(PQgetvalue(r, i, 1));
        j->stage = atoi(PQgetvalue(r, i, 2));
        j->file = strdup(PQgetvalue(r, i, 3));
        j->node = PQgetisnull(r, i, 4) ? -1 : node_index(e->cfg, PQgetvalue(r, i, 4));
        j->file_name = PQgetisnull(r, i, 5) ? NULL : strdup(PQgetvalue(r, i, 5));
        j->attempts = atoi(PQgetvalue(r, i, 6));
        j->prev = PQgetisnull(r, i, 7) ? NULL : json_loads(PQgetvalue(r, i, 7), 0, NULL);
        if (j->prev == NULL) {
            j->prev = json_object();
            job_prev_text_reset(j);
        } else {
            job_prev_text_from_object(j, PQgetvalue(r, i, 7));
        }
        j->stage_started_wall = now;
        in_hand_add(e, j->stage, 1);
        if (j->stage > STAGE_DISTRIBUTE && j->stage <= STAGE_STT &&
            (j->node < 0 || j->file_name == NULL)) {
            engine__redistribute(e, j);
        }
        jobq_push(&claimed_jobs, j);
    }
    PQclear(r);
    submit_all(e, &claimed_jobs);
    *claimed = n;
    return 0;
}

/* Submits every delayed job whose time has come; returns ms until the next one (or 1000). */
static int64_t run_delayed(struct engine *e)
{
    struct jobq due = {0};
    int64_t now = clock_mono_ms();
    int64_t next = 1000;
    pthread_mutex_lock(&e->mu);
    struct jobq keep = {0};
    struct job *j;
    while ((j = jobq_pop(&e->delayed)) != NULL) {
        if (j->due_mono <= now) {
            jobq_push(&due, j);
        } else {
            if (j->due_mono - now < next) {
                next = j->due_mono - now;
            }
            jobq_push(&keep, j);
        }
    }
    e->delayed = keep;
    pthread_mutex_unlock(&e->mu);
    bool stopping = atomic_load(&e->stopping);
    while ((j = jobq_pop(&due)) != NULL) {
        j->stage_started_wall = j->stage_started_wall > 0 ? j->stage_started_wall : clock_wall_ms();
        if (stopping) {
            engine__release(e, j);
        } else {
            submit(e, j);
        }
    }
    return next;
}

/* Renews the lease, takes back the calls of dead instances, publishes what is in flight and
 * negotiates this instance's shares of the NLP API and of every node (shares[0] is the NLP
 * API, shares[1 + i] node i). Returns 0 or a negative status. */
static int heartbeat(struct engine *e, PGconn *c, struct work_share *shares, size_t nshares,
                     struct cofi_err *err)
{
    const struct cofi_config *cfg = e->cfg;
    bool recreated = false;
    long recovered = 0;
    if (work_heartbeat(c, e->instance, e->host, e->pid, &recreated, err) != 0) {
        return err->code;
    }
    if (recreated) {
        /* Another instance thought this one dead: its shares are gone. */
        log_warn("engine: lease had expired; negotiating shares again");
        for (size_t i = 0; i < nshares; i++) {
            shares[i].share = 0;
        }
        llm_lane_set_limit(e->llm, 0);
        for (size_t i = 0; i + 1 < nshares; i++) {
            mediator_lane_set_limit(e->med, i, 0);
        }
    }
    if (work_recover_expired(c, cfg->lease_ms, &recovered, err) != 0) {
        return err->code;
    }
    if (recovered > 0) {
        log_warn("engine: took back %ld calls from expired instances", recovered);
        pthread_mutex_lock(&e->mu);
        e->wake_refresh = true;
        pthread_mutex_unlock(&e->mu);
    }
    char json[256];
    int n = snprintf(json, sizeof json, "{");
    for (int s = 0; s < STAGE_COUNT; s++) {
        n += snprintf(json + n, sizeof json - (size_t)n, "%s\"%s\": %d", s ? ", " : "",
                      stage_name(s), atomic_load(&e->inflight[s]));
    }
    snprintf(json + n, sizeof json - (size_t)n, "}");
    if (work_publish_in_flight(c, e->instance, json, err) != 0) {
        return err->code;
    }
    int before[65];
    for (size_t i = 0; i < nshares; i++) {
        before[i] = shares[i].share;
        shares[i].in_flight =
            i == 0 ? llm_lane_in_flight(e->llm) : mediator_lane_node_in_flight(e->med, i - 1);
    }
    if (work_negotiate_shares(c, e->instance, cfg->lease_ms, shares, nshares, err) != 0) {
        return err->code;
    }
    for (size_t i = 0; i < nshares; i++) {
        /* Never above the grant; while shrinking, already at the target so requests drain. */
        int limit = shares[i].share < shares[i].target ? shares[i].share : shares[i].target;
        if (i == 0) {
            llm_lane_set_limit(e->llm, limit);
        } else {
            mediator_lane_set_limit(e->med, i - 1, limit);
        }
        if (shares[i].share != before[i]) {
            log_info("engine: share of %s now %d of %d (fair share %d)", shares[i].resource,
                     shares[i].share, shares[i].total, shares[i].target);
        }
    }
    return 0;
}

static void *dispatcher_main(void *arg)
{
    struct engine *e = arg;
    thread_set_name("cofi-dispatch");
    const struct cofi_config *cfg = e->cfg;
    PGconn *c = NULL;
    bool registered = false;
    int64_t next_beat = 0;
    int64_t next_refresh = 0;
    int64_t last_refresh = 0;
    int64_t backoff = 100;
    /* The resources shared with other instances: the NLP API, then every node. */
    size_t nshares = cfg->node_count + 1 <= 64 ? cfg->node_count + 1 : 64;
    struct work_share shares[64];
    char names[64][80];
    for (size_t i = 0; i < nshares; i++) {
        if (i == 0) {
            snprintf(names[i], sizeof names[i], "nlp");
        } else {
            snprintf(names[i], sizeof names[i], "node:%s", cfg->nodes[i - 1].id);
        }
        shares[i] = (struct work_share){.resource = names[i],
                                        .total = i == 0 ? cfg->llm_concurrency
                                                        : cfg->nodes[i - 1].capacity};
    }
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
        int64_t now = clock_mono_ms();

        if (!db_conn_ok(c)) {
            PQfinish(c);
            c = db_connect(cfg->database_url, &err);
            if (c == NULL) {
                if (!down_logged) {
                    log_warn("engine: %s; retrying with backoff", err.msg);
                    down_logged = true;
                }
                wait_ms = backoff;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
                goto wait;
            }
            if (down_logged) {
                log_info("engine: database reachable again");
                down_logged = false;
            }
            backoff = 100;
        }
        if (!registered) {
            if (work_register(c, e->instance, e->host, e->pid, &err) != 0) {
                log_warn("engine: cannot register instance: %s; retrying in %lld ms", err.msg,
                         (long long)backoff);
                wait_ms = backoff;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
                goto wait;
            }
            registered = true;
            log_info("engine: instance %s registered", e->instance);
        }
        if (now >= next_beat) {
            if (heartbeat(e, c, shares, nshares, &err) != 0) {
                log_warn("engine: heartbeat: %s", err.msg);
                goto wait;
            }
            next_beat = now + (cfg->lease_ms / 3 < 1000 ? cfg->lease_ms / 3 : 1000);
        }
        /* Progress (stage barriers, batch ends) is re-read soon after writes, at most every
         * 20 ms, and every 250 ms regardless. */
        if (refresh_now || now >= next_refresh || (flushed && now >= last_refresh + 20)) {
            pthread_mutex_lock(&e->mu);
            e->flushed = false;
            pthread_mutex_unlock(&e->mu);
            if (refresh_batches(e, c, &err) != 0) {
                log_warn("engine: reading batches: %s", err.msg);
                goto wait;
            }
            last_refresh = now;
            next_refresh = now + 250;
        } else if (flushed && wait_ms > last_refresh + 20 - now) {
            wait_ms = last_refresh + 20 - now;
        }
        if (!atomic_load(&e->stopping)) {
            int cap = mediator_lane_healthy_capacity(e->med);
            int med_target = cap * 16 > 64 ? cap * 16 : 64;
            /* Enough in hand that the lane never drains while a claim (tens of ms for a few
             * hundred calls, earlier results included) is on its way: claims start at 3/4. */
            int llm_target = cfg->llm_concurrency * 8;
            int med = atomic_load(&e->med_in_hand);
            int llm = atomic_load(&e->llm_in_hand);
            int got = 0;
            if (cap > 0 && med <= med_target / 2) {
                if (claim(e, c, STAGE_DISTRIBUTE, STAGE_STT, med_target - med, &got, &err) != 0) {
                    log_warn("engine: claim: %s", err.msg);
                    goto wait;
                }
                if (got == med_target - med) {
                    wait_ms = 0; /* there is more */
                }
            }
            if (llm <= llm_target * 3 / 4) {
                if (claim(e, c, STAGE_LLM1, STAGE_LLM2, llm_target - llm, &got, &err) != 0) {
                    log_warn("engine: claim: %s", err.msg);
                    goto wait;
                }
                if (got == llm_target - llm) {
                    wait_ms = 0;
                }
            }
        }
    wait:
        /* At work the loop turns at least every 50 ms; a back-off is kept whole. */
        if (wait_ms > 50 && registered && db_conn_ok(c)) {
            wait_ms = 50;
        }
        if (wait_ms <= 0) {
            continue;
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
    /* Retries still waiting go back to the database. */
    pthread_mutex_lock(&e->mu);
    struct jobq rest = e->delayed;
    memset(&e->delayed, 0, sizeof e->delayed);
    pthread_mutex_unlock(&e->mu);
    struct job *j;
    while ((j = jobq_pop(&rest)) != NULL) {
        engine__release(e, j);
    }
    PQfinish(c);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------------ */

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
    e->metrics = metrics_new();
    pthread_mutex_init(&e->mu, NULL);
    clock_cond_init(&e->cv);
    pthread_mutex_init(&e->rec_mu, NULL);
    clock_cond_init(&e->rec_cv);
    if (e->metrics == NULL) {
        cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        goto fail;
    }
    if (mediator_lane_start(&e->med, e, err) != 0) {
        goto fail;
    }
    if (llm_lane_start(&e->llm, e, err) != 0) {
        goto fail;
    }
    if (pthread_create(&e->flusher, NULL, flusher_main, e) != 0) {
        cofi_err_set(err, COFI_E_INTERNAL, "cannot start the flusher thread");
        goto fail;
    }
    if (pthread_create(&e->dispatcher, NULL, dispatcher_main, e) != 0) {
        cofi_err_set(err, COFI_E_INTERNAL, "cannot start the dispatcher thread");
        pthread_mutex_lock(&e->rec_mu);
        e->stop_flusher = true;
        pthread_cond_signal(&e->rec_cv);
        pthread_mutex_unlock(&e->rec_mu);
        pthread_join(e->flusher, NULL);
        goto fail;
    }
    *out = e;
    return 0;
fail:
    atomic_store(&e->stopping, true);
    if (e->llm != NULL) {
        llm_lane_stop(e->llm, clock_mono_ms());
    }
    if (e->med != NULL) {
        mediator_lane_stop(e->med, clock_mono_ms());
    }
    llm_lane_free(e->llm);
    mediator_lane_free(e->med);
    metrics_free(e->metrics);
    free_records(e, e->recs, e->nrecs);
    free(e->recs);
    free(e);
    return err->code;
}

void engine_wake(struct engine *e)
{
    if (e != NULL) {
        wake_dispatcher(e, true);
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

size_t engine_nodes(struct engine *e, struct node_live *out, size_t max)
{
    if (e == NULL) {
        return 0;
    }
    return mediator_lane_nodes(e->med, out, max);
}

void engine_stop(struct engine *e, int grace_ms)
{
    if (e == NULL) {
        return;
    }
    log_info("engine: stopping (grace %d ms)", grace_ms);
    atomic_store(&e->stopping, true);
    int64_t deadline = clock_mono_ms() + grace_ms;
    /* The lanes finish what is in flight; the dispatcher keeps the lease alive meanwhile. */
    mediator_lane_stop(e->med, deadline);
    llm_lane_stop(e->llm, deadline);
    pthread_mutex_lock(&e->mu);
    e->stop_dispatcher = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->dispatcher, NULL);
    pthread_mutex_lock(&e->rec_mu);
    e->stop_flusher = true;
    pthread_cond_signal(&e->rec_cv);
    pthread_mutex_unlock(&e->rec_mu);
    pthread_join(e->flusher, NULL);

    struct cofi_err err;
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
    if (e == NULL) {
        return;
    }
    mediator_lane_free(e->med);
    llm_lane_free(e->llm);
    metrics_free(e->metrics);
    free_records(e, e->recs, e->nrecs);
    free(e->recs);
    free(e->batches);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->rec_mu);
    pthread_cond_destroy(&e->rec_cv);
    free(e);
}
