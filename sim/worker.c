/* The path of every worker request: down modes, headers, keys, failures, capacity, latency. */
#include "sim/sim.h"

#include "common/clock.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

enum { SALT_FAIL = 101, SALT_JITTER = 102 };

enum sim_mode sim_worker_wait_hang(struct sim_port *p)
{
    enum sim_mode mode = (enum sim_mode)atomic_load(&p->mode);
    if (mode != SIM_MODE_HANG) {
        return mode;
    }
    struct timespec deadline = clock_deadline_ms(SIM_HANG_MAX_MS);
    pthread_mutex_lock(&p->mu);
    mode = (enum sim_mode)atomic_load(&p->mode);
    while (mode == SIM_MODE_HANG) {
        int rc = pthread_cond_timedwait(&p->state_cv, &p->mu, &deadline);
        mode = (enum sim_mode)atomic_load(&p->mode);
        if (rc == ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return mode;
}

/* Reads the two headers every worker request must carry. Returns 0, or -1 with r filled. */
static int read_headers(struct sim_req *req, struct sim_job *job, struct sim_reply *r)
{
    const char *key = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Idempotency-Key");
    const char *rid = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Request-Id");
    if (key == NULL || key[0] == '\0') {
        sim_reply_error(r, 400, "missing Idempotency-Key header");
        return -1;
    }
    if (rid == NULL || rid[0] == '\0') {
        sim_reply_error(r, 400, "missing X-Request-Id header");
        return -1;
    }
    if (strlen(key) > SIM_KEY_MAX || strlen(rid) > SIM_KEY_MAX) {
        sim_reply_error(r, 400, "Idempotency-Key and X-Request-Id must be at most %d bytes",
                        SIM_KEY_MAX);
        return -1;
    }
    job->key = key;
    return 0;
}

/* Parses a JSON worker body: an object with a non-empty string call_id. */
static int parse_json_body(struct sim_req *req, struct sim_job *job, struct sim_reply *r)
{
    if (req->body.len == 0) {
        sim_reply_error(r, 400, "empty body: expected a JSON object");
        return -1;
    }
    json_error_t jerr;
    job->body = json_loadb(req->body.data, req->body.len, 0, &jerr);
    if (job->body == NULL) {
        sim_reply_error(r, 400, "malformed JSON: %s", jerr.text);
        return -1;
    }
    if (!json_is_object(job->body)) {
        sim_reply_error(r, 400, "body must be a JSON object");
        return -1;
    }
    const json_t *call_id = json_object_get(job->body, "call_id");
    if (!json_is_string(call_id) || json_string_length(call_id) == 0) {
        sim_reply_error(r, 400, "call_id must be a non-empty string");
        return -1;
    }
    job->call_id = json_string_value(call_id);
    return 0;
}

/* Checks Idempotency-Key == "{call_id}:{stage}". Returns 0, or -1 with r filled. */
static int check_key(const struct sim_job *job, struct sim_reply *r)
{
    const char *colon = strrchr(job->key, ':');
    if (colon == NULL) {
        sim_reply_error(r, 400, "Idempotency-Key must be {call_id}:{stage}");
        return -1;
    }
    size_t idlen = (size_t)(colon - job->key);
    if (strlen(job->call_id) != idlen || memcmp(job->call_id, job->key, idlen) != 0) {
        sim_reply_error(r, 400, "Idempotency-Key does not name call_id");
        return -1;
    }
    if (strcmp(colon + 1, sim_ep_stage(job->ep)) != 0) {
        sim_reply_error(r, 400, "Idempotency-Key must end with ':%s'", sim_ep_stage(job->ep));
        return -1;
    }
    return 0;
}

/* Takes a node slot, queueing while all are taken. Returns 0, or -1 when the port is refused
 * (stopped) meanwhile. */
static int node_slot_take(struct sim_port *p, bool *waited_out)
{
    struct sim_stats *st = &p->stats;
    bool waited = false;
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    while (p->slots_used >= p->capacity && atomic_load(&p->mode) != SIM_MODE_REFUSE) {
        if (!waited) {
            waited = true;
            sim_stats_max(&st->max_queued, atomic_fetch_add(&st->queued, 1) + 1);
        }
        pthread_cond_wait(&p->slot_cv, &p->mu);
    }
    if (atomic_load(&p->mode) == SIM_MODE_REFUSE) {
        rc = -1;
    } else {
        p->slots_used++;
    }
    pthread_mutex_unlock(&p->mu);
    if (waited) {
        atomic_fetch_sub(&st->queued, 1);
    }
    *waited_out = waited;
    return rc;
}

static void node_slot_give(struct sim_port *p)
{
    pthread_mutex_lock(&p->mu);
    p->slots_used--;
    pthread_cond_signal(&p->slot_cv);
    pthread_mutex_unlock(&p->mu);
}

/* The configured latency of the job's endpoint, spread by the jitter (a deterministic draw). */
static int64_t latency_us(const struct sim_port *p, const struct sim_job *job, uint64_t seen)
{
    const struct sim_config *cfg = &p->sim->cfg;
    int64_t us = cfg->latency_us[job->ep];
    if (us <= 0 || cfg->jitter_pct <= 0) {
        return us;
    }
    double u = sim_hash_unit(sim_hash(cfg->seed, job->key, SALT_JITTER, seen)) * 2.0 - 1.0;
    double v = (double)us * (1.0 + u * cfg->jitter_pct / 100.0);
    return v < 0 ? 0 : (int64_t)v;
}

/* Works until us microseconds after start_us (CLOCK_MONOTONIC): the request's latency counts
 * from its arrival, or from when it got its slot if it queued, so the time spent parsing and
 * checking it is part of the latency, not added to it. Returns 0, or -1 when the port is
 * refused (stopped) meanwhile. */
static int work(struct sim_port *p, int64_t start_us, int64_t us)
{
    if (us <= 0) {
        return 0;
    }
    int64_t end_us = start_us + us;
    struct timespec deadline = {.tv_sec = (time_t)(end_us / 1000000),
                                .tv_nsec = (long)(end_us % 1000000) * 1000L};
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->mode) != SIM_MODE_REFUSE) {
        if (pthread_cond_timedwait(&p->state_cv, &p->mu, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    int rc = atomic_load(&p->mode) == SIM_MODE_REFUSE ? -1 : 0;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static void in_flight_enter(struct sim_stats *st, enum sim_ep ep)
{
    sim_stats_max(&st->max_in_flight, atomic_fetch_add(&st->in_flight, 1) + 1);
    sim_stats_max(&st->ep_max_in_flight[ep], atomic_fetch_add(&st->ep_in_flight[ep], 1) + 1);
}

static void in_flight_leave(struct sim_stats *st, enum sim_ep ep)
{
    atomic_fetch_sub(&st->ep_in_flight[ep], 1);
    atomic_fetch_sub(&st->in_flight, 1);
}

/* Validates the request (both halves: common and role). Returns 0, or -1 with r filled. */
static int validate(struct sim_port *p, struct sim_req *req, struct sim_job *job,
                    struct sim_reply *r)
{
    if (read_headers(req, job, r) != 0) {
        return -1;
    }
    if (p->role == SIM_ROLE_NLP && p->sim->cfg.nlp_protocol == SIM_PROTO_OPENAI) {
        if (sim_openai_parse(req, job, r) != 0) {
            return -1;
        }
        if (job->ep != req->ep) { /* counted as the stage the key names */
            atomic_fetch_sub(&p->stats.requests[req->ep], 1);
            atomic_fetch_add(&p->stats.requests[job->ep], 1);
            req->ep = job->ep;
        }
        return sim_openai_validate(p, job, r);
    }
    if (job->ep != SIM_EP_UPLOAD && parse_json_body(req, job, r) != 0) {
        return -1;
    }
    int rc =
        p->role == SIM_ROLE_NODE ? sim_node_validate(p, req, job, r) : sim_nlp_validate(p, job, r);
    if (rc != 0) {
        return -1;
    }
    return check_key(job, r);
}

/* Works a validated request within the port's capacity and fills r. */
static void run(struct sim_port *p, struct sim_req *req, struct sim_job *job, uint64_t seen,
                struct sim_reply *r)
{
    struct sim_stats *st = &p->stats;
    int64_t start_us = req->arrival_us;
    if (p->role == SIM_ROLE_NODE) {
        bool waited = false;
        if (node_slot_take(p, &waited) != 0) {
            r->status = 0;
            return;
        }
        if (waited) {
            start_us = clock_mono_us();
        }
    } else {
        bool over_tokens = false;
        int64_t wait_s = sim_meter_admit(&p->sim->meter, job->prompt_tokens + SIM_COMPLETION_TOKENS,
                                         &over_tokens);
        if (wait_s > 0) {
            sim_reply_error(r, 429, "%s",
                            over_tokens ? "tokens per minute exceeded" : "too many requests");
            snprintf(r->retry_after, sizeof r->retry_after, "%lld", (long long)wait_s);
            return;
        }
    }
    in_flight_enter(st, job->ep);
    if (work(p, start_us, latency_us(p, job, seen)) != 0) {
        r->status = 0;
    } else if (p->role == SIM_ROLE_NODE) {
        sim_node_produce(p, req, job, r);
    } else if (p->sim->cfg.nlp_protocol == SIM_PROTO_OPENAI) {
        sim_openai_produce(p, job, r);
    } else {
        sim_nlp_produce(p, job, r);
    }
    if (r->status >= 200 && r->status < 300) {
        sim_keys_mark_ok(p, job->key);
    }
    in_flight_leave(st, job->ep);
    if (p->role == SIM_ROLE_NODE) {
        node_slot_give(p);
    } else {
        sim_meter_leave(&p->sim->meter, r->status >= 200 && r->status < 300);
    }
}

void sim_worker_serve(struct sim_port *p, struct sim_req *req, struct sim_reply *r)
{
    const struct sim_config *cfg = &p->sim->cfg;
    struct sim_job job = {.ep = req->ep};
    atomic_fetch_add(&p->stats.requests[req->ep], 1);
    if (req->too_big) {
        sim_reply_error(r, 413, "request body over %d bytes", SIM_JSON_BODY_MAX);
        return;
    }

    enum sim_mode mode = sim_worker_wait_hang(p);
    if (mode == SIM_MODE_REFUSE || mode == SIM_MODE_HANG) {
        r->status = 0;
        return;
    }
    if (mode == SIM_MODE_ERROR) {
        sim_reply_error(r, 503, "%s is down", p->id);
        return;
    }
    if (validate(p, req, &job, r) != 0) {
        goto out;
    }

    uint64_t seen = 0;
    bool was_ok = false;
    sim_keys_touch(p, job.key, &seen, &was_ok);

    struct sim_injected inj = {0};
    if (sim_rules_match(&p->rules, job.ep, job.call_id, job.key, &inj)) {
        sim_reply_error(r, inj.status, "injected");
        if (p->role == SIM_ROLE_NLP) {
            sim_meter_injected(&p->sim->meter, inj.status);
        }
        if (inj.body != NULL) {
            json_decref(r->body);
            r->body = NULL;
            r->raw = inj.body;
            r->raw_len = inj.body_len;
        }
        snprintf(r->retry_after, sizeof r->retry_after, "%s", inj.retry_after);
        if (inj.status >= 200 && inj.status < 300) {
            sim_keys_mark_ok(p, job.key);
        }
        goto out;
    }
    if (cfg->fail_rate > 0 &&
        sim_hash_unit(sim_hash(cfg->seed, job.key, SALT_FAIL, seen)) < cfg->fail_rate) {
        sim_reply_error(r, 503, "simulated transient failure");
        goto out;
    }
    run(p, req, &job, seen, r);

out:
    json_decref(job.body);
}
