/* Re-renders aged cached status answers in the background: a poll never waits for the database. */
#include "server/http_internal.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "server/router.h"

/* Re-renderings waiting for the refresher thread (more: the entry is dropped instead). */
#define REFRESH_QUEUE 16

/* A cached answer to re-render in the background: the request, copied. */
struct refresh_job {
    struct status_cache_ticket ticket;
    char key[STATUS_CACHE_KEY_MAX];
    size_t key_len;
    char path[ROUTE_PATH_MAX];
    size_t nquery;
    const char *qname[REFRESH_QUERY_MAX]; /* into qbuf */
    const char *qvalue[REFRESH_QUERY_MAX];
    char qbuf[STATUS_CACHE_KEY_MAX];
    size_t qlen;
};

/* One thread that re-renders cached answers that aged out while polls are served the previous
 * answer: a steady poll never waits for the database. */
struct refresher {
    const struct cofi_app *app;
    struct status_cache *cache;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    struct refresh_job jobs[REFRESH_QUEUE]; /* a ring: len jobs from head */
    size_t head, len;
};

static enum MHD_Result add_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct refresh_job *job = cls;
    size_t kl = strlen(key) + 1;
    size_t vl = value != NULL ? strlen(value) + 1 : 0;
    if (job->nquery == REFRESH_QUERY_MAX || job->qlen + kl + vl > sizeof job->qbuf) {
        job->nquery = REFRESH_QUERY_MAX + 1; /* does not fit */
        return MHD_NO;
    }
    char *name = job->qbuf + job->qlen;
    memcpy(name, key, kl);
    job->qlen += kl;
    const char *val = NULL;
    if (value != NULL) {
        char *v = job->qbuf + job->qlen;
        memcpy(v, value, vl);
        job->qlen += vl;
        val = v;
    }
    job->qname[job->nquery] = name;
    job->qvalue[job->nquery] = val;
    job->nquery++;
    return MHD_YES;
}

/* The job's copy of the request's query, for http_req.query. */
static const char *job_query(const struct http_req *req, const char *name)
{
    const struct refresh_job *job = req->query_ctx;
    for (size_t i = 0; i < job->nquery; i++) {
        if (strcmp(job->qname[i], name) == 0) {
            return job->qvalue[i];
        }
    }
    return NULL;
}

void refresher_enqueue(struct refresher *r, struct MHD_Connection *conn, const char *url,
                       const char *key, size_t key_len, const struct status_cache_ticket *ticket)
{
    size_t path_len = strlen(url);
    bool queued = false;
    pthread_mutex_lock(&r->mu);
    if (!r->stop && r->len < REFRESH_QUEUE && path_len < sizeof r->jobs[0].path &&
        key_len <= sizeof r->jobs[0].key) {
        struct refresh_job *job = &r->jobs[(r->head + r->len) % REFRESH_QUEUE];
        job->ticket = *ticket;
        memcpy(job->key, key, key_len);
        job->key_len = key_len;
        memcpy(job->path, url, path_len + 1);
        job->nquery = 0;
        job->qlen = 0;
        MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_query_arg, job);
        if (job->nquery <= REFRESH_QUERY_MAX) {
            r->len++;
            queued = true;
            pthread_cond_signal(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (!queued) {
        status_cache_drop(r->cache, key, key_len, ticket);
    }
}

/* Runs the handler of job's request and stores its answer when it is a 200 (as a poll that
 * rendered it would); anything else removes the entry, so the next poll gets the error. */
static void refresh_one(struct refresher *r, struct refresh_job *job)
{
    struct route_match m;
    if (router_match("GET", job->path, &m) != ROUTE_FOUND || !m.route->cached) {
        status_cache_drop(r->cache, job->key, job->key_len, &job->ticket);
        return;
    }
    struct http_req req = {
        .method = "GET",
        .path = job->path,
        .param_count = m.param_count,
        .query = job_query,
        .query_ctx = job,
    };
    for (size_t i = 0; i < m.param_count; i++) {
        req.params[i] = m.params[i];
    }
    struct http_reply rep = HTTP_REPLY_INIT;
    struct cofi_err err;
    cofi_err_clear(&err);
    /* The answer is as old as the moment its handler starts (the generation stays the one of
     * the lookup: a write since then keeps this answer out of the cache). */
    job->ticket.start_us = clock_mono_us();
    int rc = m.route->handler(r->app, &req, &rep, &err);
    char *text = NULL;
    if (rc == 0 && (rep.status == 0 || rep.status == 200) && rep.raw == NULL) {
        text = http__reply_text(&rep);
    }
    struct status_cache_answer *answer = NULL;
    if (text != NULL) {
        /* What is cached is the body's text (see http__answer_and_store in
         * server/http_answer.c). */
        answer = status_cache_answer_new(text, strlen(text), free);
        if (answer == NULL) {
            free(text);
        }
    }
    if (answer != NULL) {
        status_cache_put(r->cache, job->key, job->key_len, &job->ticket, answer);
        status_cache_answer_release(answer);
    } else {
        if (rc != 0) {
            log_debug("status cache: re-rendering %s failed: %s", job->path, err.msg);
        }
        status_cache_drop(r->cache, job->key, job->key_len, &job->ticket);
    }
    http_reply_free(&rep);
}

static void *refresher_main(void *arg)
{
    struct refresher *r = arg;
    thread_set_name("cofi-refresh");
    struct refresh_job *job = malloc(sizeof *job);
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (r->len == 0 && !r->stop) {
            pthread_cond_wait(&r->cv, &r->mu);
        }
        if (r->stop) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        bool have = job != NULL;
        if (have) {
            *job = r->jobs[r->head];
        }
        r->head = (r->head + 1) % REFRESH_QUEUE;
        r->len--;
        pthread_mutex_unlock(&r->mu);
        if (have) {
            refresh_one(r, job);
        }
    }
    free(job);
    return NULL;
}

int refresher_start(struct refresher **out, const struct cofi_app *app, struct status_cache *cache)
{
    *out = NULL;
    struct refresher *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return -1;
    }
    r->app = app;
    r->cache = cache;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (pthread_create(&r->thread, NULL, refresher_main, r) != 0) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return -1;
    }
    *out = r;
    return 0;
}

void refresher_stop(struct refresher *r)
{
    if (r == NULL) {
        return;
    }
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
