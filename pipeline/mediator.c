/* The mediator lane: one thread drives every GPU node's requests with curl_multi. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "pipeline/engine_internal.h"
#include "pipeline/input_file.h"
#include "common/stages.h"
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
    struct engine *e;
    const struct cofi_config *cfg;
    CURLM *multi;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* guards dist, node queues and in_flight, stop, closed */
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

static void active_add(struct mediator_lane *m, struct xfer *x)
{
    x->prev_active = NULL;
    x->next_active = m->active_list;
    if (m->active_list != NULL) {
        m->active_list->prev_active = x;
    }
    m->active_list = x;
    m->active++;
}

static void active_remove(struct mediator_lane *m, struct xfer *x)
{
    if (x->prev_active != NULL) {
        x->prev_active->next_active = x->next_active;
    } else {
        m->active_list = x->next_active;
    }
    if (x->next_active != NULL) {
        x->next_active->prev_active = x->prev_active;
    }
    x->prev_active = x->next_active = NULL;
    m->active--;
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static struct xfer *xfer_get(struct mediator_lane *m, enum xfer_kind kind)
{
    struct xfer *x = m->free_xfers[kind];
    if (x != NULL) {
        m->free_xfers[kind] = x->next_free;
        x->next_free = NULL;
        return x;
    }
    x = calloc(1, sizeof *x);
    if (x == NULL) {
        return NULL;
    }
    x->kind = kind;
    x->easy = curl_easy_init();
    if (x->easy == NULL) {
        free(x);
        return NULL;
    }
    buf_init(&x->x.reply, WORKER_REPLY_LIMIT);
    return x;
}

static void xfer_put(struct mediator_lane *m, struct xfer *x)
{
    curl_mime_free(x->mime);
    x->mime = NULL;
    x->job = NULL;
    exchange_reset(&x->x);
    x->next_free = m->free_xfers[x->kind];
    m->free_xfers[x->kind] = x;
}

static void xfer_destroy(struct xfer *x)
{
    curl_mime_free(x->mime);
    exchange_reset(&x->x);
    buf_free(&x->x.reply);
    curl_easy_cleanup(x->easy);
    free(x);
}

/* Counts requests taking (+1) or leaving (-1) a slot of nd and publishes the count (mu held). */
static void node_slots(struct med_node *nd, int delta)
{
    nd->in_flight += delta;
    atomic_store(&nd->in_flight_pub, nd->in_flight);
}

/* Wakes the lane thread if it waits (or is about to). Any thread. */
static void lane_wake(struct mediator_lane *m)
{
    if (atomic_load(&m->sleeping)) {
        uint64_t one = 1;
        ssize_t n = write(m->wakefd, &one, sizeof one);
        (void)n; /* a full counter already means "wake up" */
    }
}

/* Queues j where it belongs (mu held): its node, or distribute. */
static void enqueue(struct mediator_lane *m, struct job *j)
{
    if (j->stage == STAGE_DISTRIBUTE || j->node < 0) {
        jobq_push(&m->dist, j);
    } else if (!atomic_load(&m->nodes[j->node].healthy)) {
        engine__redistribute(m->e, j);
        jobq_push(&m->dist, j);
    } else {
        jobq_push(&m->nodes[j->node].q, j);
    }
}

void mediator_lane_push_all(struct mediator_lane *m, struct jobq *q)
{
    if (q->len == 0) {
        return;
    }
    pthread_mutex_lock(&m->mu);
    bool closed = m->closed;
    struct job *j;
    while (!closed && (j = jobq_pop(q)) != NULL) {
        enqueue(m, j);
    }
    pthread_mutex_unlock(&m->mu);
    while ((j = jobq_pop(q)) != NULL) {
        engine__release(m->e, j);
    }
    /* One wake-up for the whole list. */
    lane_wake(m);
}

void mediator_lane_push(struct mediator_lane *m, struct job *j)
{
    struct jobq q = {0};
    jobq_push(&q, j);
    mediator_lane_push_all(m, &q);
}

/* Marks node i healthy or not, logging transitions. Lane thread only. */
static void node_health(struct mediator_lane *m, size_t i, bool ok, const char *why)
{
    struct med_node *nd = &m->nodes[i];
    if (ok) {
        nd->fails = 0;
        if (!atomic_load(&nd->healthy)) {
            atomic_store(&nd->healthy, true);
            log_info("node %s is healthy again", nd->cfg->id);
        }
        return;
    }
    nd->fails++;
    if (nd->fails >= NODE_FAILS_UNHEALTHY && atomic_load(&nd->healthy)) {
        atomic_store(&nd->healthy, false);
        log_warn("node %s is unhealthy (%s): no new work; its calls are distributed again",
                 nd->cfg->id, why);
    }
}

/* The JSON body of a request at a GPU stage after distribute (CONTRACTS §3), or NULL when
 * memory runs out. "previous" is copied from the job's kept text, not serialised anew. */
static char *request_body(const struct job *j)
{
    if (!j->prev_text_ok) {
        json_t *body = json_pack("{s:s, s:I, s:s, s:s, s:O}", "call_id", j->call_id_str, "batch_id",
                                 (json_int_t)j->batch_id, "file_name",
                                 j->file_name != NULL ? j->file_name : "", "stage",
                                 stage_name(j->stage), "previous", j->prev);
        char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        return text;
    }
    struct buf b;
    buf_init(&b, j->prev_text.len + 1024 + 6 * (j->file_name != NULL ? strlen(j->file_name) : 0));
    int rc = buf_printf(&b, "{\"call_id\":\"%s\",\"batch_id\":%lld,\"file_name\":", j->call_id_str,
                        (long long)j->batch_id);
    rc = rc == 0 ? buf_json_string(&b, j->file_name != NULL ? j->file_name : "") : rc;
    rc = rc == 0 ? buf_printf(&b, ",\"stage\":\"%s\",\"previous\":{", stage_name(j->stage)) : rc;
    if (rc == 0 && j->prev_text.len > 0) {
        rc = buf_append(&b, j->prev_text.data, j->prev_text.len);
    }
    rc = rc == 0 ? buf_append(&b, "}}", 2) : rc;
    if (rc != 0) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

/* Starts a request for j on its node; on a local failure reports the outcome at once. */
static void start_job(struct mediator_lane *m, struct job *j)
{
    struct engine *e = m->e;
    const struct cofi_config *cfg = m->cfg;
    const struct cofi_node_cfg *nd = &cfg->nodes[j->node];
    struct job_outcome o;
    memset(&o, 0, sizeof o);
    o.retry_after_ms = -1;
    j->attempts++;
    engine__inflight(e, j->stage, 1);

    struct xfer *x = xfer_get(m, j->stage == STAGE_DISTRIBUTE ? XFER_UPLOAD : XFER_JSON);
    char url[1200];
    char rid[200];
    engine__request_id(e, rid, sizeof rid);
    if (x == NULL) {
        o.kind = OUTCOME_RETRY;
        snprintf(o.error, sizeof o.error, "out of memory");
        goto local_fail;
    }
    x->job = j;
    x->node = j->node;
    x->slot_us = clock_mono_us();
    if (j->stage == STAGE_DISTRIBUTE) {
        snprintf(url, sizeof url, "%s/upload", nd->url);
        if (exchange_prepare(x->easy, &x->x, url, j, rid, NULL, NULL, cfg->mediator.timeout_ms) !=
            0) {
            o.kind = OUTCOME_RETRY;
            snprintf(o.error, sizeof o.error, "out of memory");
            goto local_fail;
        }
        const char *base = strrchr(j->file, '/');
        base = base != NULL ? base + 1 : j->file;
        x->mime = curl_mime_init(x->easy);
        curl_mimepart *part = curl_mime_addpart(x->mime);
        /* Streamed from disk by curl as it sends: the file is never read whole. */
        curl_mime_name(part, "file");
        int in = input_file_attach(part, cfg->input_root, j->file, o.error, sizeof o.error);
        if (in != 0) {
            o.kind = in == -1 ? OUTCOME_PERMANENT : OUTCOME_RETRY;
            goto local_fail;
        }
        curl_mime_filename(part, base);
        curl_mime_type(part, "application/octet-stream");
        part = curl_mime_addpart(x->mime);
        curl_mime_name(part, "call_id");
        curl_mime_data(part, j->call_id_str, CURL_ZERO_TERMINATED);
        curl_easy_setopt(x->easy, CURLOPT_MIMEPOST, x->mime);
    } else {
        char *text = request_body(j);
        snprintf(url, sizeof url, "%s/%s", nd->url, stage_name(j->stage));
        if (text == NULL || exchange_prepare(x->easy, &x->x, url, j, rid, text, NULL,
                                             cfg->mediator.timeout_ms) != 0) {
            o.kind = OUTCOME_RETRY;
            snprintf(o.error, sizeof o.error, "out of memory");
            goto local_fail;
        }
    }
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    if (curl_multi_add_handle(m->multi, x->easy) != CURLM_OK) {
        o.kind = OUTCOME_RETRY;
        snprintf(o.error, sizeof o.error, "curl_multi_add_handle failed");
        goto local_fail;
    }
    active_add(m, x);
    return;

local_fail:
    if (x != NULL) {
        xfer_put(m, x);
    }
    pthread_mutex_lock(&m->mu);
    node_slots(&m->nodes[j->node], -1);
    pthread_mutex_unlock(&m->mu);
    engine__inflight(e, j->stage, -1);
    engine__job_done(e, j, &o);
}

static void start_health(struct mediator_lane *m, size_t i)
{
    struct xfer *x = xfer_get(m, XFER_HEALTH);
    if (x == NULL) {
        return;
    }
    struct med_node *nd = &m->nodes[i];
    char url[1200];
    snprintf(url, sizeof url, "%s/health", nd->cfg->url);
    exchange_reset(&x->x);
    x->job = NULL;
    x->node = (int)i;
    /* A healthy node answers /health at once: wait no longer than one interval (0.2-2 s). */
    long timeout = m->cfg->health_interval_ms;
    if (timeout < 200) {
        timeout = 200;
    }
    if (timeout > 2000) {
        timeout = 2000;
    }
    curl_easy_setopt(x->easy, CURLOPT_URL, url);
    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (curl_multi_add_handle(m->multi, x->easy) != CURLM_OK) {
        xfer_put(m, x);
        return;
    }
    nd->checking = true;
    active_add(m, x);
}

/* Works out the outcome of a finished transfer (already out of the multi handle, its slot
 * already free: see collect_done) and hands the job on. */
static void finish_xfer(struct mediator_lane *m, struct xfer *x, CURLcode rc)
{
    struct med_node *nd = &m->nodes[x->node];
    if (x->job == NULL) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        nd->checking = false;
        nd->next_check = clock_mono_ms() + m->cfg->health_interval_ms;
        char why[96];
        snprintf(why, sizeof why, "%s",
                 rc != CURLE_OK ? curl_easy_strerror(rc) : "health check failed");
        node_health(m, (size_t)x->node, rc == CURLE_OK && status == 200, why);
        xfer_put(m, x);
        return;
    }
    struct job *j = x->job;
    struct job_outcome o;
    exchange_outcome(x->easy, rc, &x->x, &o);
    xfer_put(m, x);

    bool transport = rc != CURLE_OK && o.kind == OUTCOME_RETRY;
    if (transport && rc != CURLE_OPERATION_TIMEDOUT) {
        node_health(m, (size_t)j->node, false, o.error);
    } else if (o.kind == OUTCOME_OK) {
        nd->fails = 0; /* it works; only health checks bring an unhealthy node back */
    }
    if (o.kind == OUTCOME_OK && j->stage == STAGE_DISTRIBUTE) {
        json_t *fn = json_object_get(o.result, "file_name");
        if (!json_is_string(fn) || json_string_length(fn) == 0) {
            json_decref(o.result);
            o.result = NULL;
            o.kind = OUTCOME_PERMANENT;
            snprintf(o.error, sizeof o.error, "upload reply has no file_name");
        } else {
            free(j->file_name);
            j->file_name = strdup(json_string_value(fn));
            json_t *res =
                json_pack("{s:s, s:s}", "node", nd->cfg->id, "file_name", json_string_value(fn));
            json_decref(o.result);
            o.result = res;
            free(o.result_text); /* what is stored is the node and name, not the reply */
            o.result_text = NULL;
        }
    }
    /* A call whose node is unhealthy, or whose last try failed on a node that is failing its
     * health checks, starts over elsewhere instead of failing: not the call's fault. */
    bool node_failing = !atomic_load(&nd->healthy) ||
                        (nd->fails > 0 && j->attempts >= m->cfg->mediator.max_attempts);
    if (o.kind == OUTCOME_RETRY && node_failing && !engine__stopping(m->e)) {
        /* The node is gone: this is not the call's fault, start over elsewhere. */
        free(o.result_text);
        engine__redistribute(m->e, j);
        pthread_mutex_lock(&m->mu);
        jobq_push(&m->dist, j);
        pthread_mutex_unlock(&m->mu);
        return;
    }
    engine__job_done(m->e, j, &o);
}

/* Abandons the requests in flight on nodes that turned unhealthy (a node that hangs would
 * otherwise hold them for the whole timeout) and sends their calls to distribute again.
 * Lane thread only, outside curl_multi_info_read processing. */
static void abandon_unhealthy(struct mediator_lane *m)
{
    struct xfer *x = m->active_list;
    while (x != NULL) {
        struct xfer *next = x->next_active;
        if (x->job != NULL && !atomic_load(&m->nodes[x->node].healthy)) {
            struct job *j = x->job;
            struct med_node *nd = &m->nodes[x->node];
            curl_multi_remove_handle(m->multi, x->easy);
            active_remove(m, x);
            xfer_put(m, x);
            engine__inflight(m->e, j->stage, -1);
            pthread_mutex_lock(&m->mu);
            node_slots(nd, -1);
            engine__redistribute(m->e, j);
            jobq_push(&m->dist, j);
            pthread_mutex_unlock(&m->mu);
        }
        x = next;
    }
}

/* Takes jobs for every free slot of a healthy node (lane mu held); returns them in out. */
static void fill(struct mediator_lane *m, struct jobq *out)
{
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (m->rr + k) % m->n;
        struct med_node *nd = &m->nodes[i];
        if (!atomic_load(&nd->healthy)) {
            struct job *j;
            while ((j = jobq_pop(&nd->q)) != NULL) {
                engine__redistribute(m->e, j);
                jobq_push(&m->dist, j);
            }
        }
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

/* curl's socket callback: keeps the epoll set in step with what curl waits for. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct mediator_lane *m = userp;
    if (what == CURL_POLL_REMOVE) {
        /* curl forgets socketp with it: the next call for fd (a reused connection) adds. */
        epoll_ctl(m->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data.fd = fd;
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
    /* socketp (set below) says whether fd is in the epoll set: one system call per change, not
     * a failing MOD before every ADD. The fallbacks keep it right if the two ever disagree. */
    int op = socketp != NULL ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    int rc = epoll_ctl(m->epfd, op, fd, &ev);
    if (rc != 0 && op == EPOLL_CTL_MOD && errno == ENOENT) {
        rc = epoll_ctl(m->epfd, EPOLL_CTL_ADD, fd, &ev);
    } else if (rc != 0 && op == EPOLL_CTL_ADD && errno == EEXIST) {
        rc = epoll_ctl(m->epfd, EPOLL_CTL_MOD, fd, &ev);
    }
    if (rc != 0) {
        log_error("mediator: epoll_ctl: %s", strerror(errno));
        return -1;
    }
    if (socketp == NULL) {
        curl_multi_assign(m->multi, fd, m);
    }
    return 0;
}

/* curl's timer callback: when to call curl_multi_socket_action(CURL_SOCKET_TIMEOUT). */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct mediator_lane *m = userp;
    m->timer_due_us = timeout_ms < 0 ? -1 : clock_mono_us() + (int64_t)timeout_ms * 1000;
    return 0;
}

/* Lets curl act on every transfer whose time has come (new ones included). */
static void kick(struct mediator_lane *m)
{
    int running = 0;
    m->timer_due_us = -1;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

/* Takes every finished transfer out of the multi handle and frees its node slot at once;
 * returns them (oldest first) for finish_xfer. */
static struct xfer *collect_done(struct mediator_lane *m)
{
    struct xfer *head = NULL;
    struct xfer **tail = &head;
    CURLMsg *msg;
    int left = 0;
    int freed = 0;
    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        struct xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        x->rc = msg->data.result;
        if (x->job != NULL) {
            curl_off_t total = 0;
            curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &total);
            m->st.requests++;
            m->st.worker_us += (int64_t)total;
            m->st.slot_held_us += clock_mono_us() - x->slot_us;
        }
        curl_multi_remove_handle(m->multi, x->easy);
        active_remove(m, x);
        x->next_free = NULL;
        *tail = x;
        tail = &x->next_free;
        freed += x->job != NULL;
    }
    if (freed > 0) {
        pthread_mutex_lock(&m->mu);
        for (struct xfer *x = head; x != NULL; x = x->next_free) {
            if (x->job != NULL) {
                node_slots(&m->nodes[x->node], -1);
                engine__inflight(m->e, x->job->stage, -1);
            }
        }
        pthread_mutex_unlock(&m->mu);
    }
    return head;
}

/* Fills every free slot from the queues and sends the requests; on stop, gives the queued
 * jobs back instead. Returns whether the lane is stopping. */
static bool start_ready(struct mediator_lane *m)
{
    struct jobq start = {0};
    struct jobq give_back = {0};
    pthread_mutex_lock(&m->mu);
    bool stop = m->stop;
    if (stop && !m->closed) {
        m->closed = true;
        struct job *j;
        while ((j = jobq_pop(&m->dist)) != NULL) {
            jobq_push(&give_back, j);
        }
        for (size_t i = 0; i < m->n; i++) {
            while ((j = jobq_pop(&m->nodes[i].q)) != NULL) {
                jobq_push(&give_back, j);
            }
        }
    }
    if (!stop) {
        fill(m, &start);
    }
    account_slots(m);
    pthread_mutex_unlock(&m->mu);

    struct job *j;
    while ((j = jobq_pop(&give_back)) != NULL) {
        engine__release(m->e, j);
    }
    if (start.len > 0) {
        while ((j = jobq_pop(&start)) != NULL) {
            start_job(m, j);
        }
        kick(m); /* the requests leave now, not on the next turn */
    }
    return stop;
}

/* True when a free slot of a healthy node has a job waiting for it (mu held). */
static bool work_ready(struct mediator_lane *m)
{
    if (m->stop && !m->closed) {
        return true;
    }
    for (size_t i = 0; i < m->n; i++) {
        struct med_node *nd = &m->nodes[i];
        if (atomic_load(&nd->healthy) && nd->in_flight < atomic_load(&nd->limit) &&
            (nd->q.len > 0 || m->dist.len > 0)) {
            return true;
        }
    }
    return false;
}

/* Waits (at most max_ms) for a socket, curl's timer or a wake-up, and lets curl act on what
 * is ready. */
static void wait_and_act(struct mediator_lane *m, int64_t max_ms)
{
    int64_t now = clock_mono_us();
    int64_t wait_ms = max_ms;
    if (m->timer_due_us >= 0) {
        int64_t t = (m->timer_due_us - now + 999) / 1000;
        wait_ms = t < 0 ? 0 : (t < wait_ms ? t : wait_ms);
    }
    atomic_store(&m->sleeping, true);
    pthread_mutex_lock(&m->mu);
    if (work_ready(m)) {
        wait_ms = 0; /* pushed after the last fill, before sleeping was set */
    }
    pthread_mutex_unlock(&m->mu);
    struct epoll_event evs[64];
    int n = epoll_wait(m->epfd, evs, 64, (int)wait_ms);
    atomic_store(&m->sleeping, false);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == m->wakefd) {
            uint64_t v;
            ssize_t r = read(m->wakefd, &v, sizeof v);
            (void)r;
            continue;
        }
        int flags = 0;
        flags |= (evs[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0;
        flags |= (evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0;
        flags |= (evs[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0;
        int running = 0;
        curl_multi_socket_action(m->multi, fd, flags, &running);
    }
    if (m->timer_due_us >= 0 && clock_mono_us() >= m->timer_due_us) {
        kick(m);
    }
}

static void *lane_main(void *arg)
{
    struct mediator_lane *m = arg;
    thread_set_name("cofi-mediator");
    for (;;) {
        abandon_unhealthy(m);
        /* Slots first: finished transfers free theirs, waiting jobs take them and leave; only
         * then is the finished work looked at (parsing, records), so a slot never waits for
         * that. */
        struct xfer *done = collect_done(m);
        bool stop = start_ready(m);
        while (done != NULL) {
            struct xfer *x = done;
            done = x->next_free;
            x->next_free = NULL;
            finish_xfer(m, x, x->rc);
        }
        int64_t now = clock_mono_ms();
        int64_t max_wait = stop ? 50 : 100;
        if (!stop) {
            bool started = false;
            for (size_t i = 0; i < m->n; i++) {
                struct med_node *nd = &m->nodes[i];
                if (!nd->checking && now >= nd->next_check) {
                    start_health(m, i);
                    started = true;
                }
                if (!nd->checking && nd->next_check - now < max_wait) {
                    max_wait = nd->next_check - now < 0 ? 0 : nd->next_check - now;
                }
            }
            if (started) {
                kick(m);
            }
        }
        if (stop && (m->active == 0 || clock_mono_ms() >= m->deadline)) {
            break;
        }
        wait_and_act(m, max_wait);
    }
    return NULL;
}

int mediator_lane_start(struct mediator_lane **out, struct engine *e, struct cofi_err *err)
{
    const struct cofi_config *cfg = engine__cfg(e);
    struct mediator_lane *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    m->e = e;
    m->cfg = cfg;
    m->n = cfg->node_count;
    m->nodes = calloc(m->n, sizeof *m->nodes);
    m->multi = curl_multi_init();
    m->epfd = epoll_create1(EPOLL_CLOEXEC);
    m->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    m->timer_due_us = -1;
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
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_timer);
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
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    m->deadline = deadline_mono;
    pthread_mutex_unlock(&m->mu);
    atomic_store(&m->sleeping, true); /* a spare wake-up is harmless; a lost one is not */
    lane_wake(m);
    pthread_join(m->thread, NULL);
    m->thread_started = false;
    /* Whatever is still in flight after the deadline is abandoned and given back. */
    while (m->active_list != NULL) {
        struct xfer *x = m->active_list;
        active_remove(m, x);
        curl_multi_remove_handle(m->multi, x->easy);
        if (x->job != NULL) {
            engine__inflight(m->e, x->job->stage, -1);
            log_warn("call %s: request at %s abandoned at shutdown", x->job->call_id_str,
                     stage_name(x->job->stage));
            engine__release(m->e, x->job);
        }
        x->job = NULL;
        xfer_destroy(x);
    }
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
            xfer_destroy(x);
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
    if (node < m->n) {
        if (limit > m->nodes[node].cfg->capacity) {
            limit = m->nodes[node].cfg->capacity;
        }
        atomic_store(&m->nodes[node].limit, limit);
        lane_wake(m);
    }
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
