/* Transitions waiting to be written, and the queue that hands them to the flusher. */
#ifndef COFI_RECORD_H
#define COFI_RECORD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline/job.h"

/* One transition to write: the call's new position, and optionally the row of the stage it
 * just finished or failed. Every string is owned. */
struct record {
    uint64_t seq; /* order of queuing: of two records of one call, the later wins */
    int64_t call_id;
    int64_t token; /* the claim's fencing token */
    int stage;
    int status; /* enum call_status */
    int attempts;
    char *last_error;
    int node;
    char *file_name;
    int64_t started_ms;  /* wall ms the current stage started, or -1 */
    int64_t retry_at_ms; /* a call waiting to try again: the wall ms of its next try, else 0 */
    bool has_row;
    int row_stage;
    bool row_failed;
    int row_attempts;
    char *row_error;
    int64_t row_started_ms, row_finished_ms;
    char *row_result; /* the result as JSON text, or NULL */
    struct job *cont; /* submitted once this record is written (status running), or NULL */
};

/* A record of where j is now (status at j->stage), without a stage row. On failure to copy a
 * string the field is NULL (a NULL last_error or file_name is written as SQL NULL). */
struct record record_of(const struct job *j, int status);

/* Frees what r owns except its continuation, which it returns (NULL when none). */
struct job *record_clear(struct record *r);

/* The queue from every thread that reports outcomes to the one flusher. */
struct record_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct record *recs;
    size_t n, cap;
    uint64_t seq;
    bool stop;
    bool idle; /* the flusher sleeps on cv */
};

/* Initialises q. Returns 0 or -1. */
int record_queue_init(struct record_queue *q);

/* Frees q and every record still in it (their continuations go to *orphans). */
void record_queue_destroy(struct record_queue *q, struct jobq *orphans);

/* Queues *r (its contents are stolen). Never loses a record: when memory runs out it waits and
 * tries again (logging it), since a lost record would leave its call claimed by a live
 * instance. Thread-safe. */
void record_queue_push(struct record_queue *q, struct record *r);

/* Waits until records are queued or the queue is stopped; with fewer than linger_below queued,
 * waits up to linger_ms more for others, so one statement carries many. Takes every queued
 * record into *out (a new array of *n, sorted by call, then queuing order). Returns false once
 * the queue is stopped and empty. *stopping tells whether stop was asked. */
bool record_queue_take(struct record_queue *q, size_t linger_below, int linger_ms,
                       struct record **out, size_t *n, bool *stopping);

/* Asks the flusher to end once the queue is empty. Thread-safe. */
void record_queue_stop(struct record_queue *q);

#endif
