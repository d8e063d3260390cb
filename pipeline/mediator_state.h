/* The mediator lane's own state, shared by its three files and no one else: mediator.c (the
 * lane: queues, slots, the loop), mediator_xfer.c (one request: its transfer and outcome) and
 * mediator_poll.c (curl's sockets and timer on epoll). Lane thread only unless marked. */
#ifndef COFI_MEDIATOR_STATE_H
#define COFI_MEDIATOR_STATE_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pipeline/mediator.h"
#include "pipeline/worker_http.h"

/* Consecutive failed checks (or connection failures) that make a node unhealthy. */
#define NODE_FAILS_UNHEALTHY 2

struct med_node {
    const struct cofi_node_cfg *cfg;
    struct jobq q; /* jobs at stages 1..4 waiting for a slot on this node */
    int in_flight; /* work requests in flight (under lane mu) */
    atomic_int in_flight_pub;
    atomic_bool healthy;
    atomic_int limit;   /* this instance's share of the node's capacity */
    int fails;          /* consecutive failures (lane thread only) */
    int64_t next_check; /* mono ms */
    bool checking;
};

/* What an easy handle was last set up for: a handle is reused for the same kind without
 * curl_easy_reset (the options that differ are set for every request). */
enum xfer_kind { XFER_HEALTH, XFER_UPLOAD, XFER_JSON, XFER_KINDS };

struct xfer {
    CURL *easy;
    enum xfer_kind kind;
    struct job *job; /* NULL for a health check */
    int node;
    curl_mime *mime;
    struct exchange x;
    CURLcode rc;                            /* once done */
    int64_t slot_us;                        /* mono us when the request took its slot */
    struct xfer *next_free;                 /* free list, or list of finished transfers */
    struct xfer *prev_active, *next_active; /* list of transfers in the multi handle */
};

struct mediator_lane {
    struct lane_host host;
    const struct cofi_config *cfg;
    CURLM *multi;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* guards dist, node queues and in_flight, stop, closed */
    bool fenced;        /* lane thread only: the lease is not current (host->lease_ok) */
    struct jobq dist;   /* jobs waiting to be uploaded to any node */
    struct med_node *nodes;
    size_t n;
    size_t rr;
    bool stop;
    bool closed;
    int64_t deadline;
    struct xfer *free_xfers[XFER_KINDS]; /* lane thread only */
    struct xfer *active_list;            /* transfers in the multi handle (lane thread only) */
    int active;
    /* The lane waits in epoll_wait on curl's sockets and on wakefd; curl's sockets are driven
     * with curl_multi_socket_action, so a turn costs what its ready sockets cost, not what
     * every connection costs. */
    int epfd;
    int wakefd;
    atomic_bool sleeping; /* the lane is (about to be) in epoll_wait: wakefd is worth a write */
    int64_t timer_due_us; /* when curl wants CURL_SOCKET_TIMEOUT, -1 for never (lane thread) */
    /* Lane thread only: what the periodic log line reports. */
    struct {
        int64_t since_us, last_us;
        long requests;
        int64_t worker_us;    /* sum over requests of curl's total time (network + worker) */
        int64_t slot_held_us; /* sum over requests of the time they held their slot */
        int64_t slot_us;      /* slot time of healthy nodes */
        int64_t idle_us;      /* slot time free with no job ready for it */
    } st;
};

/* Counts requests taking (+1) or leaving (-1) a slot of nd and publishes the count (mu held). */
static inline void node_slots(struct med_node *nd, int delta)
{
    nd->in_flight += delta;
    atomic_store(&nd->in_flight_pub, nd->in_flight);
}

/* ---- mediator_xfer.c ---- */

/* Starts a request for j on its node (its slot already taken); on a local failure reports the
 * outcome at once. */
void med__start_job(struct mediator_lane *m, struct job *j);

/* Starts a health check of node i. */
void med__start_health(struct mediator_lane *m, size_t i);

/* Takes every finished transfer out of the multi handle and frees its node slot at once;
 * returns them (oldest first, linked by next_free) for med__finish_xfer. */
struct xfer *med__collect_done(struct mediator_lane *m);

/* Works out the outcome of a finished transfer and hands the job back. */
void med__finish_xfer(struct mediator_lane *m, struct xfer *x, CURLcode rc);

/* Abandons the requests in flight on unhealthy nodes, or all of them while fenced. */
void med__abandon_unhealthy(struct mediator_lane *m);

/* At shutdown, after the deadline: abandons every transfer still in flight and gives its job
 * back. */
void med__abandon_all(struct mediator_lane *m);

/* Frees a transfer and its handle. */
void med__xfer_destroy(struct xfer *x);

/* ---- mediator_poll.c ---- */

/* curl's socket and timer callbacks (userp is the lane). */
int med__on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp);
int med__on_timer(CURLM *multi, long timeout_ms, void *userp);

/* Lets curl act on every transfer whose time has come (new ones included). */
void med__kick(struct mediator_lane *m);

/* max_ms, or less when curl's timer is due sooner. */
int64_t med__timer_wait(const struct mediator_lane *m, int64_t max_ms);

/* Waits up to wait_ms for a socket or a wake-up (m->sleeping already set; cleared here), and
 * lets curl act on what is ready and on its timer. */
void med__poll(struct mediator_lane *m, int64_t wait_ms);

#endif
