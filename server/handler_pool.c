/* A bounded queue of request-handler jobs and the threads that run them. */
#include "server/handler_pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common/thread.h"

struct pool_job {
    void (*fn)(void *arg);
    void *arg;
};

struct handler_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pool_job *jobs; /* a ring of cap jobs: len from head */
    size_t cap, head, len;
    bool stop;
    bool joined;
    pthread_t *threads;
    int nthreads; /* started */
};

static void *pool_main(void *arg)
{
    struct handler_pool *p = arg;
    thread_set_name("cofi-handler");
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->len == 0 && !p->stop) {
            pthread_cond_wait(&p->cv, &p->mu);
        }
        if (p->len == 0) {
            break; /* stopping, and nothing left to run */
        }
        struct pool_job job = p->jobs[p->head];
        p->head = (p->head + 1) % p->cap;
        p->len--;
        pthread_mutex_unlock(&p->mu);
        job.fn(job.arg);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int handler_pool_new(struct handler_pool **out, int threads, int queue_max)
{
    *out = NULL;
    struct handler_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return -1;
    }
    p->cap = (size_t)(queue_max > 0 ? queue_max : 1);
    p->jobs = calloc(p->cap, sizeof *p->jobs);
    p->threads = calloc((size_t)(threads > 0 ? threads : 1), sizeof *p->threads);
    if (p->jobs == NULL || p->threads == NULL) {
        free(p->jobs);
        free(p->threads);
        free(p);
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < (threads > 0 ? threads : 1); i++) {
        if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0) {
            break;
        }
        p->nthreads++;
    }
    if (p->nthreads == 0) {
        handler_pool_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

int handler_pool_submit(struct handler_pool *p, void (*fn)(void *arg), void *arg)
{
    int rc = -1;
    pthread_mutex_lock(&p->mu);
    if (!p->stop && p->len < p->cap) {
        p->jobs[(p->head + p->len) % p->cap] = (struct pool_job){fn, arg};
        p->len++;
        pthread_cond_signal(&p->cv);
        rc = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void handler_pool_stop(struct handler_pool *p)
{
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    bool joined = p->joined;
    p->joined = true;
    pthread_mutex_unlock(&p->mu);
    if (joined) {
        return;
    }
    for (int i = 0; i < p->nthreads; i++) {
        pthread_join(p->threads[i], NULL);
    }
}

void handler_pool_free(struct handler_pool *p)
{
    if (p == NULL) {
        return;
    }
    handler_pool_stop(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->jobs);
    free(p->threads);
    free(p);
}
