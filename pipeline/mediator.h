/* The mediator lane: one thread drives every GPU node's requests with curl_multi. */
#ifndef COFI_MEDIATOR_H
#define COFI_MEDIATOR_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "pipeline/lane.h"

struct mediator_lane;

/* Live view of one mediator node, as seen by this instance. Strings are borrowed from the
 * configuration and live as long as it does. */
struct node_live {
    const char *id;
    const char *url;
    int capacity;
    bool healthy;
    int in_flight; /* requests this instance has in flight to the node */
    int limit;     /* this instance's limit of the node (its share of capacity) */
};

/* Starts the lane's thread. host is copied; host->cfg must outlive the lane. Returns 0 or a
 * negative status; *out is owned by the caller (mediator_lane_stop, then _free). */
int mediator_lane_start(struct mediator_lane **out, const struct lane_host *host,
                        struct cofi_err *err);

/* Queues every job of q (left empty) with one lock and one wake-up; steals them. A lane that
 * is closed gives them back at once (LANE_GIVEN_BACK). */
void mediator_lane_push_all(struct mediator_lane *m, struct jobq *q);

/* Stops taking jobs: gives queued ones back and refuses new ones; requests in flight go on.
 * Thread-safe, can't fail. */
void mediator_lane_close(struct mediator_lane *m);

/* Closes the lane, waits for in-flight requests (until deadline_mono, then aborts them and
 * gives their jobs back) and joins the lane's thread. */
void mediator_lane_stop(struct mediator_lane *m, int64_t deadline_mono);

/* Frees a stopped lane. Accepts NULL. */
void mediator_lane_free(struct mediator_lane *m);

/* Copies up to max nodes into out and returns the number of configured nodes. Thread-safe. */
size_t mediator_lane_nodes(struct mediator_lane *m, struct node_live *out, size_t max);

/* The sum of this instance's limits of the healthy nodes. Thread-safe. */
int mediator_lane_healthy_capacity(struct mediator_lane *m);

/* Sets how many requests this instance may have in flight to node (its share; never above
 * the capacity). When it returns, no request beyond the new limit starts any more, so
 * mediator_lane_node_in_flight read afterwards is an upper bound from then on. A node whose
 * limit is 0 hands its queued jobs back (LANE_GIVEN_BACK) on the lane's next turn.
 * Thread-safe. */
void mediator_lane_set_limit(struct mediator_lane *m, size_t node, int limit);

/* This instance's limit of a healthy node, or -1 when the node is unhealthy. Thread-safe. */
int mediator_lane_node_limit(struct mediator_lane *m, size_t node);

/* This instance's requests in flight to node (slots taken, sent or about to be). Thread-safe. */
int mediator_lane_node_in_flight(struct mediator_lane *m, size_t node);

#endif
