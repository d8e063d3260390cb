/* Per-port counters, the idempotency-key table and the GET /stats document. */
#include "sim/sim.h"

#include <stdio.h>

/* A key's value in the table: times seen << 1 | answered 2xx. */
#define KEY_OK 1ULL

static struct sim_key_shard *shard_of(struct sim_port *p, const char *key)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *c = (const unsigned char *)key; *c != '\0'; c++) {
        h = (h ^ *c) * 1099511628211ULL;
    }
    return &p->keys.shard[(h >> 40) % SIM_KEY_SHARDS];
}

int sim_keys_touch(struct sim_port *p, const char *key, uint64_t *seen, bool *was_ok)
{
    struct sim_key_shard *sh = shard_of(p, key);
    bool created = false;
    pthread_mutex_lock(&sh->mu);
    uint64_t *v = sim_map_upsert(&sh->map, key, &created);
    uint64_t before = v ? *v : 0;
    if (v != NULL) {
        *v = before + 2;
    }
    pthread_mutex_unlock(&sh->mu);

    *seen = before >> 1;
    *was_ok = (before & KEY_OK) != 0;
    struct sim_stats *st = &p->stats;
    if (*seen == 0) {
        atomic_fetch_add(&st->unique_keys, 1);
    } else {
        atomic_fetch_add(&st->repeated_keys_any, 1);
    }
    if (*was_ok) {
        atomic_fetch_add(&st->repeated_keys, 1);
    }
    return v ? 0 : -1;
}

void sim_keys_mark_ok(struct sim_port *p, const char *key)
{
    struct sim_key_shard *sh = shard_of(p, key);
    pthread_mutex_lock(&sh->mu);
    uint64_t *v = sim_map_get(&sh->map, key);
    if (v != NULL) {
        *v |= KEY_OK;
    }
    pthread_mutex_unlock(&sh->mu);
}

void sim_stats_max(atomic_int *max, int v)
{
    int cur = atomic_load(max);
    while (cur < v && !atomic_compare_exchange_weak(max, &cur, v)) {
    }
}

void sim_stats_response(struct sim_port *p, enum sim_ep ep, int status)
{
    if (status >= 0 && status < SIM_STATUS_MAX) {
        atomic_fetch_add(&p->stats.responses[status], 1);
    }
    if (status >= 200 && status < 300 && ep < SIM_EP_COUNT) {
        atomic_fetch_add(&p->stats.ok[ep], 1);
    }
}

void sim_stats_reset(struct sim_port *p)
{
    struct sim_stats *st = &p->stats;
    for (int i = 0; i < SIM_EP_COUNT; i++) {
        atomic_store(&st->requests[i], 0);
        atomic_store(&st->ok[i], 0);
        atomic_store(&st->ep_max_in_flight[i], atomic_load(&st->ep_in_flight[i]));
    }
    for (int i = 0; i < SIM_STATUS_MAX; i++) {
        atomic_store(&st->responses[i], 0);
    }
    atomic_store(&st->max_in_flight, atomic_load(&st->in_flight));
    atomic_store(&st->max_queued, atomic_load(&st->queued));
    atomic_store(&st->max_concurrent, atomic_load(&st->concurrent));
    for (int i = 0; i < SIM_KEY_SHARDS; i++) {
        pthread_mutex_lock(&p->keys.shard[i].mu);
        sim_map_clear(&p->keys.shard[i].map);
        pthread_mutex_unlock(&p->keys.shard[i].mu);
    }
    atomic_store(&st->unique_keys, 0);
    atomic_store(&st->repeated_keys, 0);
    atomic_store(&st->repeated_keys_any, 0);
}

/* Sets o[name] to a new integer; returns -1 when out of memory. */
static int set_int(json_t *o, const char *name, json_int_t v)
{
    return json_object_set_new(o, name, json_integer(v));
}

json_t *sim_stats_json(struct sim_port *p)
{
    struct sim_stats *st = &p->stats;
    json_t *o = json_object();
    json_t *requests = json_object();
    json_t *ok = json_object();
    json_t *responses = json_object();
    json_t *ep_max = json_object();
    json_t *ep_now = json_object();
    if (o == NULL || requests == NULL || ok == NULL || responses == NULL || ep_max == NULL ||
        ep_now == NULL) {
        goto fail;
    }
    int rc = 0;
    for (int i = 0; i < SIM_EP_COUNT; i++) {
        if (!sim_ep_in_role((enum sim_ep)i, p->role)) {
            continue;
        }
        const char *name = sim_ep_name((enum sim_ep)i);
        rc |= set_int(requests, name, (json_int_t)atomic_load(&st->requests[i]));
        rc |= set_int(ok, name, (json_int_t)atomic_load(&st->ok[i]));
        rc |= set_int(ep_max, name, atomic_load(&st->ep_max_in_flight[i]));
        rc |= set_int(ep_now, name, atomic_load(&st->ep_in_flight[i]));
    }
    for (int i = 0; i < SIM_STATUS_MAX; i++) {
        uint64_t n = atomic_load(&st->responses[i]);
        if (n > 0) {
            char code[8];
            snprintf(code, sizeof code, "%d", i);
            rc |= set_int(responses, code, (json_int_t)n);
        }
    }
    enum sim_mode mode = (enum sim_mode)atomic_load(&p->mode);
    rc |= json_object_set_new(o, "role", json_string(p->role == SIM_ROLE_NODE ? "node" : "nlp"));
    rc |= json_object_set_new(o, "id", json_string(p->id));
    rc |= set_int(o, "port", p->port);
    rc |= set_int(o, "capacity", p->capacity);
    rc |= json_object_set(o, "requests", requests);
    rc |= json_object_set(o, "ok", ok);
    rc |= json_object_set(o, "responses", responses);
    rc |= set_int(o, "in_flight", atomic_load(&st->in_flight));
    rc |= set_int(o, "max_in_flight", atomic_load(&st->max_in_flight));
    rc |= json_object_set(o, "in_flight_by_endpoint", ep_now);
    rc |= json_object_set(o, "max_in_flight_by_endpoint", ep_max);
    rc |= set_int(o, "queued", atomic_load(&st->queued));
    rc |= set_int(o, "max_queued", atomic_load(&st->max_queued));
    rc |= set_int(o, "concurrent", atomic_load(&st->concurrent));
    rc |= set_int(o, "max_concurrent", atomic_load(&st->max_concurrent));
    rc |= set_int(o, "unique_keys", (json_int_t)atomic_load(&st->unique_keys));
    rc |= set_int(o, "repeated_keys", (json_int_t)atomic_load(&st->repeated_keys));
    rc |= set_int(o, "repeated_keys_any", (json_int_t)atomic_load(&st->repeated_keys_any));
    rc |= json_object_set_new(o, "down", json_boolean(mode != SIM_MODE_UP));
    rc |= json_object_set_new(o, "down_mode",
                              mode == SIM_MODE_UP ? json_null() : json_string(sim_mode_name(mode)));
    if (p->role == SIM_ROLE_NLP) {
        rc |= sim_meter_json(&p->sim->meter, o); /* capacity: the current one */
        rc |= json_object_set_new(
            o, "protocol",
            json_string(p->sim->cfg.nlp_protocol == SIM_PROTO_OPENAI ? "openai" : "cofi"));
    }
    if (p->role == SIM_ROLE_NODE) {
        pthread_mutex_lock(&p->files_mu);
        size_t files = p->files.count;
        pthread_mutex_unlock(&p->files_mu);
        rc |= set_int(o, "files", (json_int_t)files);
    }
    if (rc != 0) {
        goto fail;
    }
    json_decref(requests);
    json_decref(ok);
    json_decref(responses);
    json_decref(ep_max);
    json_decref(ep_now);
    return o;

fail:
    json_decref(o);
    json_decref(requests);
    json_decref(ok);
    json_decref(responses);
    json_decref(ep_max);
    json_decref(ep_now);
    return NULL;
}
