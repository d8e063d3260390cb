/* The fair order of the lanes' queues: stride scheduling over batches, by priority. */
#ifndef COFI_STRIDE_H
#define COFI_STRIDE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* Every job handed to a lane gets a tag (its vtime); the lanes serve their queues in tag
 * order. A batch's tags advance by 1 / priority per job, from no earlier than the tag of the
 * job served last (the virtual clock), so batches in the queue get turns in proportion to
 * their priority, a batch that was idle gets no credit for it, and a new small batch goes
 * right among the others instead of behind everything queued. Thread-safe. */
struct stride {
    pthread_mutex_t mu;
    double now;           /* the tag of the job served last */
    struct stride_batch { /* the next tag of each batch seen lately */
        int64_t id;
        double pass;
    } * v;
    size_t n, cap;
};

/* Initialises s. Returns 0 or -1. */
int stride_init(struct stride *s);

/* Frees what s holds. */
void stride_free(struct stride *s);

/* The tag for the next job of batch (weight = its priority, below 1 counts as 1). Can't fail
 * (without memory for a new batch's entry the job is tagged with the clock). */
double stride_tag(struct stride *s, int64_t batch, int weight);

/* A job with this tag is being served: the clock moves on to it. */
void stride_served(struct stride *s, double tag);

#endif
