/* The mediator lane: one thread drives every GPU node's requests with curl_multi. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/stages.h"
#include "pipeline/mediator_state.h"

/* Wakes the lane thread if it waits (or is about to). Any thread. */
static void lane_wake(struct mediator_lane *m)
{
    if (atomic_load(&m->sleeping)) {
        uint64_t one = 1;
        ssize_t n = write(m->wakefd, &one, sizeof one);
        (void)n; /* a full counter already means "wake up" */
    }
}

/* Hands every job of q back to the engine with event ev (no lock held). */
static void report_all(struct mediator_lane *m, struct jobq *q, enum lane_event ev)
{
    struct job *j = jobq_pop(q);
    while (j != NULL) {
        struct job_outcome o;
        job_outcome_init(&o, ev);
        m->host.report(m->host.ctx, j, &o);
        j = jobq_pop(q);
    }
}

/* Queues j where it belongs (mu held): its node, or distribute; a job whose node is unhealthy
 * goes to lost (for the engine to send it to distribute again). */
static void enqueue(struct mediator_lane *m, struct job *j, struct jobq *lost)
{
    if (j->stage == STAGE_DISTRIBUTE || j->node < 0) {
        jobq_insert_fair(&m->dist, j);
    } else if (!atomic_load(&m->nodes[j->node].healthy)) {
        jobq_push(lost, j);
    } else {
        jobq_insert_fair(&m->nodes[j->node].q, j);
    }
}

void mediator_lane_push_all(struct mediator_lane *m, struct jobq *q)
{
    if (q->len == 0) {
        return;
    }
    struct jobq lost = {0};
    pthread_mutex_lock(&m->mu);
    if (!m->closed) {
        struct job *j = jobq_pop(q);
        while (j != NULL) {
            enqueue(m, j, &lost);
            j = jobq_pop(q);
        }
    }
    pthread_mutex_unlock(&m->mu);
    report_all(m, q, LANE_GIVEN_BACK);
    report_all(m, &lost, LANE_NODE_LOST);
    /* One wake-up for the whole list. */
    lane_wake(m);
}

void mediator_lane_close(struct mediator_lane *m)
{
    struct jobq back = {0};
    pthread_mutex_lock(&m->mu);
    m->closed = true;
    struct job *j = jobq_pop(&m->dist);
    while (j != NULL) {
        jobq_push(&back, j);
        j = jobq_pop(&m->dist);
    }
    for (size_t i = 0; i < m->n; i++) {
        j = jobq_pop(&m->nodes[i].q);
        while (j != NULL) {
            jobq_push(&back, j);
            j = jobq_pop(&m->nodes[i].q);
        }
    }
    pthread_mutex_unlock(&m->mu);
    report_all(m, &back, LANE_GIVEN_BACK);
    lane_wake(m);
}

/* Takes jobs for every free slot of a healthy node (lane mu held); returns them in out. The
 * jobs queued for an unhealthy node go to lost, those of a node of which this instance has no
 * share any more to back (another instance may send them), and so do the uploads waiting
 * when it has no share of any node. */
static void fill(struct mediator_lane *m, struct jobq *out, struct jobq *lost, struct jobq *back)
{
    bool any_share = false;
    for (size_t k = 0; k < m->n; k++) {
        struct med_node *nd = &m->nodes[k];
        bool healthy = atomic_load(&nd->healthy);
        int limit = atomic_load(&nd->limit);
        any_share = any_share || limit > 0;
        if (!healthy || limit <= 0) {
            struct job *j = jobq_pop(&nd->q);
            while (j != NULL) {
                jobq_push(healthy ? back : lost, j);
                j = jobq_pop(&nd->q);
            }
        }
    }
    if (!any_share) {
        /* No share of any node: the uploads waiting here are for another instance. */
        struct job *j = jobq_pop(&m->dist);
        while (j != NULL) {
            jobq_push(back, j);
            j = jobq_pop(&m->dist);
        }
    }
    if (m->fenced) {
        return;
    }
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (m->rr + k) % m->n;
        struct med_node *nd = &m->nodes[i];
        if (!atomic_load(&nd->healthy)) {
            continue;
        }
        int limit = atomic_load(&nd->limit);
        while (nd->in_flight < limit) {
            struct job *j = jobq_pop(&nd->q);
            if (j == NULL) {
                j = jobq_pop(&m->dist);
                if (j == NULL) {
                    break;
                }
                j->node = (int)i;
            }
            node_slots(nd, 1);
            jobq_push(out, j);
        }
    }
    m->rr++;
}

/* Accounts the time since the last turn: every free slot of a healthy node with nothing queued
 * for it is idle time. Every 10 s logs how the slots were used: the worker's time per
 * request (curl's total: network and worker), what cofid added while the request held its
 * slot, and the share of slot time with no work for it. Lane thread only, mu held. */
static void account_slots(struct mediator_lane *m)
{
    int64_t now = clock_mono_us();
    if (m->st.since_us == 0) {
        m->st.since_us = m->st.last_us = now;
        return;
    }
    int64_t dt = now - m->st.last_us;
    m->st.last_us = now;
    for (size_t i = 0; i < m->n; i++) {
        struct med_node *nd = &m->nodes[i];
        int limit = atomic_load(&nd->limit);
        if (!atomic_load(&nd->healthy) || limit <= 0) {
            continue;
        }
        m->st.slot_us += (int64_t)limit * dt;
        if (nd->in_flight < limit) {
            m->st.idle_us += (int64_t)(limit - nd->in_flight) * dt;
        }
    }
    if (now - m->st.since_us >= 10000000) {
        if (m->st.requests > 0 && m->st.slot_us > 0) {
            double n = (double)m->st.requests;
            log_info("mediator: %ld requests in %.0f s; per request %.2f ms at the worker "
                     "(network included), %.2f ms in cofid; slots %.1f %% busy",
                     m->st.requests, (double)(now - m->st.since_us) / 1e6,
                     (double)m->st.worker_us / 1000.0 / n,
                     (double)(m->st.slot_held_us - m->st.worker_us) / 1000.0 / n,
                     100.0 * (1.0 - (double)m->st.idle_us / (double)m->st.slot_us));
        }
        m->st.since_us = now;
        m->st.requests = 0;
        m->st.worker_us = m->st.slot_held_us = m->st.slot_us = m->st.idle_us = 0;
    }
}

/* Fills every free slot from the queues and sends the requests; on stop, gives the queued
 * jobs back instead. Returns whether the lane is stopping. */
static bool start_ready(struct mediator_lane *m)
{
    struct jobq start = {0};
    struct jobq lost = {0};
    struct jobq back = {0};
    pthread_mutex_lock(&m->mu);
    bool stop = m->stop;
    if (!m->closed) {
        fill(m, &start, &lost, &back);
    }
    account_slots(m);
    pthread_mutex_unlock(&m->mu);

    report_all(m, &lost, LANE_NODE_LOST);
    report_all(m, &back, LANE_GIVEN_BACK);
    if (start.len > 0) {
        struct job *j = jobq_pop(&start);
        while (j != NULL) {
            med__start_job(m, j);
            j = jobq_pop(&start);
        }
        med__kick(m); /* the requests leave now, not on the next turn */
    }
    return stop;
}

/* True when a free slot of a healthy node has a job waiting for it (mu held). */
static bool work_ready(struct mediator_lane *m)
{
    if (m->closed) {
        return false;
    }
    bool fenced = m->fenced;
    bool any_share = false;
    for (size_t i = 0; i < m->n; i++) {
        struct med_node *nd = &m->nodes[i];
        bool healthy = atomic_load(&nd->healthy);
        int limit = atomic_load(&nd->limit);
        any_share = any_share || limit > 0;
        if (nd->q.len > 0 && (!healthy || limit <= 0)) {
            return true; /* jobs to hand back */
        }
        if (!fenced && healthy && nd->in_flight < limit && (nd->q.len > 0 || m->dist.len > 0)) {
            return true;
        }
    }
    return !any_share && m->dist.len > 0;
}

/* Waits (at most max_ms) for a socket, curl's timer or a wake-up, and lets curl act on what
 * is ready. */
static void wait_turn(struct mediator_lane *m, int64_t max_ms)
{
    int64_t wait_ms = med__timer_wait(m, max_ms);
    atomic_store(&m->sleeping, true);
    pthread_mutex_lock(&m->mu);
    if (work_ready(m)) {
        wait_ms = 0; /* pushed after the last fill, before sleeping was set */
    }
    pthread_mutex_unlock(&m->mu);
    med__poll(m, wait_ms);
}

static void *lane_main(void *arg)
{
    struct mediator_lane *m = arg;
    thread_set_name("cofi-mediator");
    for (;;) {
        bool fenced = !m->host.lease_ok(m->host.ctx);
        if (fenced != m->fenced) {
            if (fenced) {
                log_warn("mediator: the lease was not renewed in time: no new requests, those "
                         "in flight cut short");
            } else {
                log_info("mediator: the lease is current: requests may start");
            }
            m->fenced = fenced;
        }
        med__abandon_unhealthy(m);
        /* Slots first: finished transfers free theirs, waiting jobs take them and leave; only
         * then is the finished work looked at (parsing, records), so a slot never waits for
         * that. */
        struct xfer *done = med__collect_done(m);
        bool stop = start_ready(m);
        while (done != NULL) {
            struct xfer *x = done;
            done = x->next_free;
            x->next_free = NULL;
            med__finish_xfer(m, x, x->rc);
        }
        int64_t now = clock_mono_ms();
        int64_t max_wait = stop ? 50 : 100;
        if (!stop) {
            bool started = false;
            for (size_t i = 0; i < m->n; i++) {
                struct med_node *nd = &m->nodes[i];
                if (!nd->checking && now >= nd->next_check) {
                    med__start_health(m, i);
                    started = true;
                }
                if (!nd->checking && nd->next_check - now < max_wait) {
                    max_wait = nd->next_check - now < 0 ? 0 : nd->next_check - now;
                }
            }
            if (started) {
                med__kick(m);
            }
        }
        if (stop && (m->active == 0 || clock_mono_ms() >= m->deadline)) {
            break;
        }
        wait_turn(m, max_wait);
    }
    return NULL;
}

int mediator_lane_start(struct mediator_lane **out, const struct lane_host *host,
                        struct cofi_err *err)
{
    const struct cofi_config *cfg = host->cfg;
    struct mediator_lane *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    m->host = *host;
    m->cfg = cfg;
    m->n = cfg->node_count;
    m->nodes = calloc(m->n, sizeof *m->nodes);
    m->multi = curl_multi_init();
    m->epfd = epoll_create1(EPOLL_CLOEXEC);
    m->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    m->timer_due_us = -1;
    m->fenced = true; /* until the first renewal */
    pthread_mutex_init(&m->mu, NULL);
    if (m->nodes == NULL || m->multi == NULL) {
        mediator_lane_free(m);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = m->wakefd};
    if (m->epfd < 0 || m->wakefd < 0 || epoll_ctl(m->epfd, EPOLL_CTL_ADD, m->wakefd, &ev) != 0) {
        cofi_err_set(err, COFI_E_INTERNAL, "mediator lane: epoll/eventfd: %s", strerror(errno));
        mediator_lane_free(m);
        return err->code;
    }
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, med__on_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, med__on_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    long total = 0;
    for (size_t i = 0; i < m->n; i++) {
        m->nodes[i].cfg = &cfg->nodes[i];
        atomic_store(&m->nodes[i].healthy, true);
        total += cfg->nodes[i].capacity;
    }
    /* Keep one connection per slot open so every request reuses one. */
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, total + (long)m->n);
    if (pthread_create(&m->thread, NULL, lane_main, m) != 0) {
        mediator_lane_free(m);
        return cofi_err_set(err, COFI_E_INTERNAL, "cannot start the mediator thread");
    }
    m->thread_started = true;
    *out = m;
    return 0;
}

void mediator_lane_stop(struct mediator_lane *m, int64_t deadline_mono)
{
    if (m == NULL || !m->thread_started) {
        return;
    }
    mediator_lane_close(m);
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    m->deadline = deadline_mono;
    pthread_mutex_unlock(&m->mu);
    atomic_store(&m->sleeping, true); /* a spare wake-up is harmless; a lost one is not */
    lane_wake(m);
    pthread_join(m->thread, NULL);
    m->thread_started = false;
    /* Whatever is still in flight after the deadline is abandoned and given back. */
    med__abandon_all(m);
}

void mediator_lane_free(struct mediator_lane *m)
{
    if (m == NULL) {
        return;
    }
    for (int k = 0; k < XFER_KINDS; k++) {
        struct xfer *x = m->free_xfers[k];
        while (x != NULL) {
            struct xfer *next = x->next_free;
            med__xfer_destroy(x);
            x = next;
        }
    }
    struct job *j;
    while ((j = jobq_pop(&m->dist)) != NULL) {
        job_free(j);
    }
    for (size_t i = 0; m->nodes != NULL && i < m->n; i++) {
        while ((j = jobq_pop(&m->nodes[i].q)) != NULL) {
            job_free(j);
        }
    }
    if (m->multi != NULL) {
        curl_multi_cleanup(m->multi);
    }
    if (m->epfd >= 0) {
        close(m->epfd);
    }
    if (m->wakefd >= 0) {
        close(m->wakefd);
    }
    pthread_mutex_destroy(&m->mu);
    free(m->nodes);
    free(m);
}

size_t mediator_lane_nodes(struct mediator_lane *m, struct node_live *out, size_t max)
{
    for (size_t i = 0; i < m->n && i < max; i++) {
        out[i].id = m->nodes[i].cfg->id;
        out[i].url = m->nodes[i].cfg->url;
        out[i].capacity = m->nodes[i].cfg->capacity;
        out[i].healthy = atomic_load(&m->nodes[i].healthy);
        out[i].in_flight = atomic_load(&m->nodes[i].in_flight_pub);
        out[i].limit = atomic_load(&m->nodes[i].limit);
    }
    return m->n;
}

int mediator_lane_healthy_capacity(struct mediator_lane *m)
{
    int cap = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (atomic_load(&m->nodes[i].healthy)) {
            cap += atomic_load(&m->nodes[i].limit);
        }
    }
    return cap;
}

int mediator_lane_in_flight(struct mediator_lane *m)
{
    int n = 0;
    for (size_t i = 0; i < m->n; i++) {
        n += atomic_load(&m->nodes[i].in_flight_pub);
    }
    return n;
}

void mediator_lane_set_limit(struct mediator_lane *m, size_t node, int limit)
{
    if (node >= m->n) {
        return;
    }
    if (limit > m->nodes[node].cfg->capacity) {
        limit = m->nodes[node].cfg->capacity;
    }
    if (limit < 0) {
        limit = 0;
    }
    /* Under the lane's lock: a fill that read the old limit has taken its slots by now, so
     * the in-flight count read after this returns is an upper bound from then on. */
    pthread_mutex_lock(&m->mu);
    atomic_store(&m->nodes[node].limit, limit);
    pthread_mutex_unlock(&m->mu);
    lane_wake(m);
}

int mediator_lane_node_in_flight(struct mediator_lane *m, size_t node)
{
    return node < m->n ? atomic_load(&m->nodes[node].in_flight_pub) : 0;
}

int mediator_lane_node_limit(struct mediator_lane *m, size_t node)
{
    if (node >= m->n || !atomic_load(&m->nodes[node].healthy)) {
        return -1;
    }
    return atomic_load(&m->nodes[node].limit);
}
