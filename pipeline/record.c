/* Records of transitions and the queue that hands them to the flusher. */
#include "pipeline/record.h"

#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stages.h"

struct record record_of(const struct job *j, int status)
{
    struct record r;
    memset(&r, 0, sizeof r);
    r.call_id = j->call_id;
    r.token = j->token;
    r.stage = j->stage;
    r.status = status;
    r.attempts = j->attempts;
    r.last_error = j->last_error != NULL ? strdup(j->last_error) : NULL;
    r.node = j->node;
    r.file_name = j->file_name != NULL ? strdup(j->file_name) : NULL;
    r.started_ms = status == CALL_RUNNING ? j->stage_started_wall : -1;
    return r;
}

struct job *record_clear(struct record *r)
{
    struct job *cont = r->cont;
    free(r->last_error);
    free(r->file_name);
    free(r->row_error);
    free(r->row_result);
    memset(r, 0, sizeof *r);
    return cont;
}

int record_queue_init(struct record_queue *q)
{
    memset(q, 0, sizeof *q);
    if (pthread_mutex_init(&q->mu, NULL) != 0) {
        return -1;
    }
    if (clock_cond_init(&q->cv) != 0) {
        pthread_mutex_destroy(&q->mu);
        return -1;
    }
    return 0;
}

void record_queue_destroy(struct record_queue *q, struct jobq *orphans)
{
    for (size_t i = 0; i < q->n; i++) {
        struct job *cont = record_clear(&q->recs[i]);
        if (cont != NULL) {
            jobq_push(orphans, cont);
        }
    }
    free(q->recs);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
}

void record_queue_push(struct record_queue *q, struct record *r)
{
    bool logged = false;
    pthread_mutex_lock(&q->mu);
    while (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 1024;
        struct record *p = realloc(q->recs, cap * sizeof *p);
        if (p != NULL) {
            q->recs = p;
            q->cap = cap;
            break;
        }
        if (!logged) {
            log_error("out of memory queuing a record of call %lld; waiting for memory",
                      (long long)r->call_id);
            logged = true;
        }
        pthread_mutex_unlock(&q->mu);
        clock_sleep_ms(10);
        pthread_mutex_lock(&q->mu);
    }
    r->seq = q->seq++;
    q->recs[q->n++] = *r;
    memset(r, 0, sizeof *r);
    if (q->idle) {
        pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
}

static int cmp_call_seq(const void *a, const void *b)
{
    const struct record *x = a;
    const struct record *y = b;
    if (x->call_id != y->call_id) {
        return x->call_id < y->call_id ? -1 : 1;
    }
    return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

bool record_queue_take(struct record_queue *q, size_t linger_below, int linger_ms,
                       struct record **out, size_t *n, bool *stopping)
{
    pthread_mutex_lock(&q->mu);
    while (q->n == 0 && !q->stop) {
        q->idle = true;
        pthread_cond_wait(&q->cv, &q->mu);
        q->idle = false;
    }
    if (q->n == 0) {
        *stopping = true;
        pthread_mutex_unlock(&q->mu);
        return false;
    }
    if (q->n < linger_below && !q->stop) {
        /* A few records: wait a moment for more, so one statement carries many (the
         * statement's fixed cost dominates small flushes). Only stop wakes this early. */
        struct timespec dl = clock_deadline_ms(linger_ms);
        pthread_cond_timedwait(&q->cv, &q->mu, &dl);
    }
    *out = q->recs;
    *n = q->n;
    *stopping = q->stop;
    q->recs = NULL;
    q->n = 0;
    q->cap = 0;
    pthread_mutex_unlock(&q->mu);
    qsort(*out, *n, sizeof **out, cmp_call_seq);
    return true;
}

void record_queue_stop(struct record_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->stop = true;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}
