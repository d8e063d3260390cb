/* The threads that run request handlers, away from the HTTP I/O threads, behind a bounded queue. */
#ifndef COFI_HANDLER_POOL_H
#define COFI_HANDLER_POOL_H

#include <stddef.h>

/* A fixed set of threads taking jobs from one bounded FIFO queue: a slow handler (a large
 * POST /batches, a slow database) holds one of these threads, never an I/O thread that serves
 * other connections; when every thread is busy and the queue is full, a job is refused at
 * once (the caller answers 503 with Retry-After). Thread-safe. */
struct handler_pool;

/* Starts threads (>= 1) threads named "cofi-handler" with a queue of queue_max (>= 1) jobs.
 * Returns 0 with *out a new pool the caller ends with handler_pool_free, or -1 (out of
 * memory, no thread could start) with *out NULL. */
int handler_pool_new(struct handler_pool **out, int threads, int queue_max);

/* Queues fn(arg) to run on one of the pool's threads. Returns 0, or -1 when the queue is full
 * or the pool is stopping: then fn is never called and arg stays the caller's. */
int handler_pool_submit(struct handler_pool *pool, void (*fn)(void *arg), void *arg);

/* Runs every job already queued, then stops the threads; later submits fail (the pool stays
 * valid until handler_pool_free). Accepts NULL. Call it from one thread that is not one of the
 * pool's; a second call does nothing. */
void handler_pool_stop(struct handler_pool *pool);

/* Stops the pool (handler_pool_stop) and frees it. Accepts NULL. No submit may run meanwhile. */
void handler_pool_free(struct handler_pool *pool);

#endif
