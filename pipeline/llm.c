/* The NLP lane: llm.concurrency threads behind a counting semaphore, one request each. */
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/stages.h"
#include "pipeline/llm.h"
#include "pipeline/openai.h"
#include "pipeline/worker_http.h"

/* The threads do little but wait on sockets: a small stack keeps 100 of them cheap. */
#define LLM_STACK_BYTES (256u * 1024u)

struct llm_lane {
    struct lane_host host;
    const struct cofi_config *cfg;
    int n;
    pthread_t *threads;
    int started;
    pthread_mutex_t mu; /* guards q, stop, closed */
    sem_t jobs;         /* counts jobs in q (plus wake-ups at stop) */
    struct jobq q;
    bool stop;
    bool closed;
    atomic_bool abort; /* set at the deadline: transfers in progress end at once */
    atomic_int in_flight;
    pthread_cond_t permit_cv; /* signalled when active drops or limit grows */
    int limit;                /* this instance's share of the NLP API (under mu) */
    atomic_int limit_pub;     /* the same, for readers without the lock */
    int active;               /* requests holding a permit (under mu): what the share covers */
    atomic_bool limited;      /* a thread waited with every permit in use */
};

/* Hands every job of q back with event ev (no lock held). */
static void report_all(struct llm_lane *l, struct jobq *q, enum lane_event ev)
{
    struct job *j = jobq_pop(q);
    while (j != NULL) {
        struct job_outcome o;
        job_outcome_init(&o, ev);
        l->host.report(l->host.ctx, j, &o);
        j = jobq_pop(q);
    }
}

void llm_lane_set_limit(struct llm_lane *l, int limit)
{
    pthread_mutex_lock(&l->mu);
    l->limit = limit < l->n ? limit : l->n;
    if (l->limit < 0) {
        l->limit = 0;
    }
    atomic_store(&l->limit_pub, l->limit);
    pthread_cond_broadcast(&l->permit_cv);
    pthread_mutex_unlock(&l->mu);
}

void llm_lane_push_all(struct llm_lane *l, struct jobq *q)
{
    size_t n = 0;
    pthread_mutex_lock(&l->mu);
    if (!l->closed) {
        struct job *j = jobq_pop(q);
        while (j != NULL) {
            jobq_insert_fair(&l->q, j);
            n++;
            j = jobq_pop(q);
        }
    }
    pthread_mutex_unlock(&l->mu);
    report_all(l, q, LANE_GIVEN_BACK);
    for (size_t i = 0; i < n; i++) {
        sem_post(&l->jobs);
    }
}

void llm_lane_close(struct llm_lane *l)
{
    pthread_mutex_lock(&l->mu);
    l->closed = true;
    struct jobq rest = l->q;
    memset(&l->q, 0, sizeof l->q);
    pthread_mutex_unlock(&l->mu);
    report_all(l, &rest, LANE_GIVEN_BACK);
}

/* Cuts the request short at shutdown, or when the lease is not renewed in time unless the
 * answer has begun to arrive (the API's work is done then; the flush's fence decides whether
 * it counts). */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)ut;
    (void)un;
    struct llm_lane *l = arg;
    if (atomic_load(&l->abort)) {
        return 1;
    }
    return dn == 0 && !l->host.lease_ok(l->host.ctx) ? 1 : 0;
}

/* The OpenAI form's body for j: its stage's prompt with the call's values in it. */
static char *openai_request(const struct cofi_config *cfg, const struct job *j,
                            const json_t *transcript, const json_t *language, const json_t *llm1)
{
    char *llm1_text = llm1 != NULL ? json_dumps(llm1, JSON_COMPACT) : NULL;
    char *prompt = openai_render(openai_template(cfg, j->stage), json_string_value(transcript),
                                 json_string_value(language), llm1_text);
    char *text = prompt != NULL ? openai_body(cfg->llm_model, prompt) : NULL;
    free(llm1_text);
    free(prompt);
    return text;
}

/* Builds the request body for j (§4, or the OpenAI form), or fills o with a permanent failure
 * and returns NULL. */
static char *llm_body(const struct cofi_config *cfg, const struct job *j, struct job_outcome *o)
{
    json_t *stt = json_object_get(j->prev, "stt");
    json_t *lid = json_object_get(j->prev, "lid");
    json_t *transcript = json_object_get(stt, "transcript");
    json_t *language = json_object_get(lid, "language");
    if (!json_is_string(transcript)) {
        o->kind = OUTCOME_PERMANENT;
        snprintf(o->error, sizeof o->error, "the stt result has no transcript");
        return NULL;
    }
    if (!json_is_string(language)) {
        o->kind = OUTCOME_PERMANENT;
        snprintf(o->error, sizeof o->error, "the lid result has no language");
        return NULL;
    }
    json_t *llm1 = json_object_get(j->prev, "llm1");
    if (j->stage == STAGE_LLM2 && !json_is_object(llm1)) {
        o->kind = OUTCOME_PERMANENT;
        snprintf(o->error, sizeof o->error, "no llm1 result to send to llm2");
        return NULL;
    }
    if (j->stage != STAGE_LLM2) {
        llm1 = NULL;
    }
    char *text = NULL;
    if (cfg->llm_openai) {
        text = openai_request(cfg, j, transcript, language, llm1);
    } else {
        json_t *body =
            json_pack("{s:s, s:I, s:O, s:O}", "call_id", j->call_id_str, "batch_id",
                      (json_int_t)j->batch_id, "language", language, "transcript", transcript);
        if (body != NULL && llm1 != NULL) {
            json_object_set(body, "llm1", llm1);
        }
        text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
    }
    if (text == NULL) {
        o->kind = OUTCOME_RETRY;
        snprintf(o->error, sizeof o->error, "out of memory");
    }
    return text;
}

/* True once the lane stops, aborts or may not send (lease). */
static bool lane_halted(struct llm_lane *l)
{
    pthread_mutex_lock(&l->mu);
    bool stop = l->stop;
    pthread_mutex_unlock(&l->mu);
    return stop || atomic_load(&l->abort) || !l->host.lease_ok(l->host.ctx);
}

/* Waits for j's share of the cluster's NLP budgets (holding j's permit). Returns false when
 * the lane halted meanwhile (j is to be given back). */
static bool wait_budget(struct llm_lane *l, const struct job *j, int64_t ticket[2])
{
    if (l->host.nlp_budget == NULL) {
        return true;
    }
    json_t *t = json_object_get(json_object_get(j->prev, "stt"), "transcript");
    size_t bytes = json_is_string(t) ? json_string_length(t) : 0;
    while (!l->host.nlp_budget(l->host.ctx, bytes, ticket)) {
        if (lane_halted(l)) {
            return false;
        }
        clock_sleep_ms(20);
    }
    return true;
}

static void run_one(struct llm_lane *l, CURL *easy, struct exchange *x, struct job *j)
{
    const struct cofi_config *cfg = l->cfg;
    struct job_outcome o;
    int64_t ticket[2] = {0, 0};
    if (!wait_budget(l, j, ticket)) {
        job_outcome_init(&o, LANE_GIVEN_BACK);
        l->host.report(l->host.ctx, j, &o);
        return;
    }
    if (!l->host.admit(l->host.ctx, j)) {
        job_outcome_init(&o, LANE_NOT_VALID);
        l->host.report(l->host.ctx, j, &o);
        return;
    }
    job_outcome_init(&o, LANE_ANSWERED);
    j->attempts++;
    l->host.inflight(l->host.ctx, j->stage, 1);
    atomic_fetch_add(&l->in_flight, 1);
    int64_t counted_us = clock_mono_us();
    char *body = llm_body(cfg, j, &o);
    if (body != NULL) {
        char url[1200];
        char rid[200];
        snprintf(url, sizeof url, "%s/%s", cfg->llm_url,
                 cfg->llm_openai ? "v1/chat/completions" : stage_name(j->stage));
        l->host.request_id(l->host.ctx, j, rid, sizeof rid);
        /* No curl_easy_reset: every request of this thread is the same kind of POST and
         * exchange_prepare sets every option that differs (a reset throws away the
         * handle's settings only for them to be set again). */
        if (exchange_prepare(easy, x, url, j, rid, body, cfg->nlp_api_key, cfg->llm.timeout_ms) !=
            0) {
            o.kind = OUTCOME_RETRY;
            snprintf(o.error, sizeof o.error, "out of memory");
        } else {
            curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
            curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
            curl_easy_setopt(easy, CURLOPT_XFERINFODATA, l);
            CURLcode rc = curl_easy_perform(easy);
            exchange_outcome(easy, rc, x, &o);
            if (cfg->llm_openai) {
                openai_outcome(&o);
            }
            if (l->host.nlp_settle != NULL) {
                l->host.nlp_settle(l->host.ctx, ticket, o.usage_tokens);
            }
            if (l->host.nlp_answer != NULL) {
                l->host.nlp_answer(l->host.ctx, &o, atomic_load(&l->in_flight), counted_us);
            }
            if (rc == CURLE_ABORTED_BY_CALLBACK && !atomic_load(&l->abort)) {
                o.not_counted = true;
                snprintf(o.error, sizeof o.error, "request cut short: lease not renewed in time");
            }
        }
        exchange_reset(x);
    }
    atomic_fetch_sub(&l->in_flight, 1);
    l->host.inflight(l->host.ctx, j->stage, -1);
    l->host.report(l->host.ctx, j, &o);
}

/* How long no request may start yet (a Retry-After seen by any instance), in ms. */
static int64_t pause_ms(struct llm_lane *l)
{
    return l->host.nlp_pause_ms != NULL ? l->host.nlp_pause_ms(l->host.ctx) : 0;
}

static void *worker_main(void *arg)
{
    struct llm_lane *l = arg;
    thread_set_name("cofi-llm");
    CURL *easy = curl_easy_init();
    struct exchange x;
    memset(&x, 0, sizeof x);
    buf_init(&x.reply, WORKER_REPLY_LIMIT);
    for (;;) {
        while (sem_wait(&l->jobs) != 0) {
        }
        /* A job is waiting; take a permit of this instance's share before taking it. */
        pthread_mutex_lock(&l->mu);
        bool lease_ok = l->host.lease_ok(l->host.ctx);
        int64_t pause = pause_ms(l);
        while ((l->active >= l->limit || !lease_ok || pause > 0) && !l->stop) {
            if (lease_ok && pause == 0) {
                if (l->limit > 0) {
                    atomic_store(&l->limited, true);
                }
                pthread_cond_wait(&l->permit_cv, &l->mu);
            } else {
                /* Fenced or paused: look again shortly (no one signals the end of either). */
                struct timespec dl = clock_deadline_ms(pause > 0 && pause < 100 ? pause : 100);
                pthread_cond_timedwait(&l->permit_cv, &l->mu, &dl);
            }
            lease_ok = l->host.lease_ok(l->host.ctx);
            pause = pause_ms(l);
        }
        struct job *j = jobq_pop(&l->q);
        bool stop = l->stop;
        if (j != NULL) {
            l->active++;
        }
        pthread_mutex_unlock(&l->mu);
        if (j == NULL) {
            if (stop) {
                break;
            }
            continue;
        }
        if (easy == NULL) {
            easy = curl_easy_init();
        }
        if (easy == NULL) {
            struct job_outcome o;
            job_outcome_init(&o, LANE_ANSWERED);
            o.kind = OUTCOME_RETRY;
            o.not_counted = true;
            snprintf(o.error, sizeof o.error, "out of memory");
            l->host.report(l->host.ctx, j, &o);
            pthread_mutex_lock(&l->mu);
            l->active--;
            pthread_cond_signal(&l->permit_cv);
            pthread_mutex_unlock(&l->mu);
            continue;
        }
        run_one(l, easy, &x, j);
        pthread_mutex_lock(&l->mu);
        l->active--;
        pthread_cond_signal(&l->permit_cv);
        pthread_mutex_unlock(&l->mu);
    }
    exchange_reset(&x);
    buf_free(&x.reply);
    curl_easy_cleanup(easy);
    return NULL;
}

int llm_lane_start(struct llm_lane **out, const struct lane_host *host, struct cofi_err *err)
{
    const struct cofi_config *cfg = host->cfg;
    struct llm_lane *l = calloc(1, sizeof *l);
    if (l == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    l->host = *host;
    l->cfg = cfg;
    l->n = cfg->llm_concurrency;
    l->threads = calloc((size_t)l->n, sizeof *l->threads);
    pthread_mutex_init(&l->mu, NULL);
    clock_cond_init(&l->permit_cv);
    sem_init(&l->jobs, 0, 0);
    if (l->threads == NULL) {
        llm_lane_free(l);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, LLM_STACK_BYTES);
    for (int i = 0; i < l->n; i++) {
        if (pthread_create(&l->threads[i], &attr, worker_main, l) != 0) {
            pthread_attr_destroy(&attr);
            llm_lane_stop(l, clock_mono_ms());
            llm_lane_free(l);
            return cofi_err_set(err, COFI_E_INTERNAL, "cannot start NLP thread %d of %d", i + 1,
                                cfg->llm_concurrency);
        }
        l->started++;
    }
    pthread_attr_destroy(&attr);
    *out = l;
    return 0;
}

void llm_lane_stop(struct llm_lane *l, int64_t deadline_mono)
{
    if (l == NULL || l->started == 0) {
        return;
    }
    llm_lane_close(l);
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->permit_cv);
    pthread_mutex_unlock(&l->mu);
    while (atomic_load(&l->in_flight) > 0 && clock_mono_ms() < deadline_mono) {
        clock_sleep_ms(10);
    }
    if (atomic_load(&l->in_flight) > 0) {
        log_warn("NLP lane: %d requests still in flight at the deadline, abandoning them",
                 atomic_load(&l->in_flight));
        atomic_store(&l->abort, true);
    }
    for (int i = 0; i < l->started; i++) {
        sem_post(&l->jobs);
    }
    for (int i = 0; i < l->started; i++) {
        pthread_join(l->threads[i], NULL);
    }
    l->started = 0;
}

void llm_lane_free(struct llm_lane *l)
{
    if (l == NULL) {
        return;
    }
    struct job *j;
    while ((j = jobq_pop(&l->q)) != NULL) {
        job_free(j);
    }
    sem_destroy(&l->jobs);
    pthread_cond_destroy(&l->permit_cv);
    pthread_mutex_destroy(&l->mu);
    free(l->threads);
    free(l);
}

int llm_lane_requests(struct llm_lane *l)
{
    return atomic_load(&l->in_flight);
}

int llm_lane_in_flight(struct llm_lane *l)
{
    /* The permits, not the transfers: a thread counts against the share from the moment it
     * takes its permit, before its request is sent. */
    pthread_mutex_lock(&l->mu);
    int n = l->active;
    pthread_mutex_unlock(&l->mu);
    return n;
}

bool llm_lane_take_limited(struct llm_lane *l)
{
    return atomic_exchange(&l->limited, false);
}

int llm_lane_limit(struct llm_lane *l)
{
    return atomic_load(&l->limit_pub);
}

void llm_lane_give_back(struct llm_lane *l, size_t n)
{
    struct jobq back = {0};
    pthread_mutex_lock(&l->mu);
    while (back.len < n && l->q.len > 0) {
        jobq_push(&back, jobq_pop(&l->q));
    }
    pthread_mutex_unlock(&l->mu);
    /* The semaphore still counts them: a thread that wakes for one finds the queue shorter and
     * waits again. */
    report_all(l, &back, LANE_GIVEN_BACK);
}
