/* One request of the mediator lane: its transfer, its body, its start and its outcome. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stages.h"
#include "common/utf8.h"
#include "pipeline/input_file.h"
#include "pipeline/mediator_state.h"

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

void med__xfer_destroy(struct xfer *x)
{
    curl_mime_free(x->mime);
    exchange_reset(&x->x);
    buf_free(&x->x.reply);
    curl_easy_cleanup(x->easy);
    free(x);
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
void med__start_job(struct mediator_lane *m, struct job *j)
{
    const struct cofi_config *cfg = m->cfg;
    const struct cofi_node_cfg *nd = &cfg->nodes[j->node];
    struct job_outcome o;
    if (!m->host.admit(m->host.ctx, j)) {
        pthread_mutex_lock(&m->mu);
        node_slots(&m->nodes[j->node], -1);
        pthread_mutex_unlock(&m->mu);
        job_outcome_init(&o, LANE_NOT_VALID);
        m->host.report(m->host.ctx, j, &o);
        return;
    }
    job_outcome_init(&o, LANE_ANSWERED);
    j->attempts++;
    m->host.inflight(m->host.ctx, j->stage, 1);

    struct xfer *x = xfer_get(m, j->stage == STAGE_DISTRIBUTE ? XFER_UPLOAD : XFER_JSON);
    char url[1200];
    char rid[200];
    m->host.request_id(m->host.ctx, j, rid, sizeof rid);
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
        /* Streamed by curl from the descriptor opened beneath input_root: never read whole. */
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
    m->host.inflight(m->host.ctx, j->stage, -1);
    m->host.report(m->host.ctx, j, &o);
}

void med__start_health(struct mediator_lane *m, size_t i)
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
void med__finish_xfer(struct mediator_lane *m, struct xfer *x, CURLcode rc)
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
    if (o.kind == OUTCOME_RETRY && node_failing && !o.not_counted) {
        /* The node is gone: this is not the call's fault, start over elsewhere. */
        o.event = LANE_NODE_LOST;
    }
    m->host.report(m->host.ctx, j, &o);
}

/* Abandons the requests in flight on nodes that turned unhealthy (a node that hangs would
 * otherwise hold them for the whole timeout) and sends their calls to distribute again.
 * Lane thread only, outside curl_multi_info_read processing. */
void med__abandon_unhealthy(struct mediator_lane *m)
{
    bool fenced = m->fenced;
    struct xfer *x = m->active_list;
    while (x != NULL) {
        struct xfer *next = x->next_active;
        if (x->job != NULL && (fenced || !atomic_load(&m->nodes[x->node].healthy))) {
            struct job *j = x->job;
            struct med_node *nd = &m->nodes[x->node];
            curl_multi_remove_handle(m->multi, x->easy);
            active_remove(m, x);
            xfer_put(m, x);
            m->host.inflight(m->host.ctx, j->stage, -1);
            pthread_mutex_lock(&m->mu);
            node_slots(nd, -1);
            pthread_mutex_unlock(&m->mu);
            struct job_outcome o;
            if (fenced) {
                /* Cut short by cofid itself: the attempt does not count against the call. */
                job_outcome_init(&o, LANE_ANSWERED);
                o.kind = OUTCOME_RETRY;
                o.not_counted = true;
                snprintf(o.error, sizeof o.error, "request cut short: lease not renewed in time");
            } else {
                job_outcome_init(&o, LANE_NODE_LOST);
                snprintf(o.error, sizeof o.error, "node %s unhealthy", nd->cfg->id);
            }
            m->host.report(m->host.ctx, j, &o);
        }
        x = next;
    }
}

/* Takes every finished transfer out of the multi handle and frees its node slot at once;
 * returns them (oldest first) for finish_xfer. */
struct xfer *med__collect_done(struct mediator_lane *m)
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
                m->host.inflight(m->host.ctx, x->job->stage, -1);
            }
        }
        pthread_mutex_unlock(&m->mu);
    }
    return head;
}

void med__abandon_all(struct mediator_lane *m)
{
    while (m->active_list != NULL) {
        struct xfer *x = m->active_list;
        active_remove(m, x);
        curl_multi_remove_handle(m->multi, x->easy);
        if (x->job != NULL) {
            m->host.inflight(m->host.ctx, x->job->stage, -1);
            log_warn("call %s: request at %s abandoned at shutdown", x->job->call_id_str,
                     stage_name(x->job->stage));
            struct job_outcome o;
            job_outcome_init(&o, LANE_GIVEN_BACK);
            m->host.report(m->host.ctx, x->job, &o);
        }
        x->job = NULL;
        med__xfer_destroy(x);
    }
}
