/* The mediator lane: one thread drives every GPU node's requests with curl_multi. */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "pipeline/engine_internal.h"
#include "pipeline/stages.h"
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

struct xfer {
    CURL *easy;
    struct job *job; /* NULL for a health check */
    int node;
    curl_mime *mime;
    struct exchange x;
    struct xfer *next_free;
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
    struct xfer *free_xfers;  /* lane thread only */
    struct xfer *active_list; /* transfers in the multi handle (lane thread only) */
    int active;
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

static struct xfer *xfer_get(struct mediator_lane *m)
{
    struct xfer *x = m->free_xfers;
    if (x != NULL) {
        m->free_xfers = x->next_free;
        curl_easy_reset(x->easy);
        return x;
    }
    x = calloc(1, sizeof *x);
    if (x == NULL) {
        return NULL;
    }
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
    x->next_free = m->free_xfers;
    m->free_xfers = x;
}

static void xfer_destroy(struct xfer *x)
{
    curl_mime_free(x->mime);
    exchange_reset(&x->x);
    buf_free(&x->x.reply);
    curl_easy_cleanup(x->easy);
    free(x);
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
    curl_multi_wakeup(m->multi);
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

    struct xfer *x = xfer_get(m);
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
    if (j->stage == STAGE_DISTRIBUTE) {
        char path[PATH_MAX + 2];
        snprintf(path, sizeof path, "%s/%s", cfg->input_root, j->file);
        if (access(path, R_OK) != 0) {
            o.kind = OUTCOME_PERMANENT;
            snprintf(o.error, sizeof o.error, "cannot read %s", j->file);
            goto local_fail;
        }
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
        curl_mime_filedata(part, path);
        curl_mime_filename(part, base);
        curl_mime_type(part, "application/octet-stream");
        part = curl_mime_addpart(x->mime);
        curl_mime_name(part, "call_id");
        curl_mime_data(part, j->call_id_str, CURL_ZERO_TERMINATED);
        curl_easy_setopt(x->easy, CURLOPT_MIMEPOST, x->mime);
    } else {
        json_t *body = json_pack("{s:s, s:I, s:s, s:s, s:O}", "call_id", j->call_id_str, "batch_id",
                                 (json_int_t)j->batch_id, "file_name",
                                 j->file_name != NULL ? j->file_name : "", "stage",
                                 stage_name(j->stage), "previous", j->prev);
        char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
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
    m->nodes[j->node].in_flight--;
    atomic_store(&m->nodes[j->node].in_flight_pub, m->nodes[j->node].in_flight);
    pthread_mutex_unlock(&m->mu);
    engine__inflight(e, j->stage, -1);
    engine__job_done(e, j, &o);
}

static void start_health(struct mediator_lane *m, size_t i)
{
    struct xfer *x = xfer_get(m);
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

static void finish_xfer(struct mediator_lane *m, struct xfer *x, CURLcode rc)
{
    curl_multi_remove_handle(m->multi, x->easy);
    active_remove(m, x);
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
    pthread_mutex_lock(&m->mu);
    nd->in_flight--;
    atomic_store(&nd->in_flight_pub, nd->in_flight);
    pthread_mutex_unlock(&m->mu);
    engine__inflight(m->e, j->stage, -1);

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
        }
    }
    /* A call whose node is unhealthy, or whose last try failed on a node that is failing its
     * health checks, starts over elsewhere instead of failing: not the call's fault. */
    bool node_failing = !atomic_load(&nd->healthy) ||
                        (nd->fails > 0 && j->attempts >= m->cfg->mediator.max_attempts);
    if (o.kind == OUTCOME_RETRY && node_failing && !engine__stopping(m->e)) {
        /* The node is gone: this is not the call's fault, start over elsewhere. */
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
            nd->in_flight--;
            atomic_store(&nd->in_flight_pub, nd->in_flight);
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
            nd->in_flight++;
            atomic_store(&nd->in_flight_pub, nd->in_flight);
            jobq_push(out, j);
        }
    }
    m->rr++;
}

static void *lane_main(void *arg)
{
    struct mediator_lane *m = arg;
    for (;;) {
        struct jobq start = {0};
        struct jobq give_back = {0};
        abandon_unhealthy(m);
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
        pthread_mutex_unlock(&m->mu);

        struct job *j;
        while ((j = jobq_pop(&give_back)) != NULL) {
            engine__release(m->e, j);
        }
        while ((j = jobq_pop(&start)) != NULL) {
            start_job(m, j);
        }
        int64_t now = clock_mono_ms();
        if (!stop) {
            for (size_t i = 0; i < m->n; i++) {
                if (!m->nodes[i].checking && now >= m->nodes[i].next_check) {
                    start_health(m, i);
                }
            }
        }

        int running = 0;
        curl_multi_perform(m->multi, &running);
        CURLMsg *msg;
        int left = 0;
        while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            struct xfer *x = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            finish_xfer(m, x, msg->data.result);
        }
        if (stop) {
            if (m->active == 0) {
                break;
            }
            if (clock_mono_ms() >= m->deadline) {
                break;
            }
        }
        curl_multi_poll(m->multi, NULL, 0, stop ? 50 : 100, NULL);
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
    pthread_mutex_init(&m->mu, NULL);
    if (m->nodes == NULL || m->multi == NULL) {
        mediator_lane_free(m);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
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
    curl_multi_wakeup(m->multi);
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
    struct xfer *x = m->free_xfers;
    while (x != NULL) {
        struct xfer *next = x->next_free;
        xfer_destroy(x);
        x = next;
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
        curl_multi_wakeup(m->multi);
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
