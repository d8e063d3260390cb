/* The stage resource: GET /stages/{name}/status. */
#include "handlers/handlers.h"

#include <stdlib.h>

#include "db/stages_db.h"
#include "common/clock.h"
#include "common/stages.h"

#define NODES_ON_STACK 32

/* The limit when the engine does not know it: node capacities, or llm.concurrency. */
static int configured_limit(const struct cofi_config *cfg, int stage)
{
    if (stage_is_llm(stage)) {
        return cfg->llm_concurrency;
    }
    int sum = 0;
    for (size_t i = 0; i < cfg->node_count; i++) {
        sum += cfg->nodes[i].capacity;
    }
    return sum;
}

/* The "nodes" array: the engine's live view, or the configured nodes (unhealthy, idle)
 * when there is no engine. Returns a new reference, NULL when out of memory. */
static json_t *nodes_json(const struct cofi_app *app)
{
    struct node_live local[NODES_ON_STACK];
    struct node_live *nodes = local;
    size_t n = engine_nodes(app->engine, local, NODES_ON_STACK);
    if (n > NODES_ON_STACK) {
        nodes = calloc(n, sizeof *nodes);
        if (nodes == NULL) {
            return NULL;
        }
        n = engine_nodes(app->engine, nodes, n);
    }
    if (app->engine == NULL) {
        n = 0;
    }
    json_t *arr = json_array();
    int rc = arr != NULL ? 0 : -1;
    if (n > 0) {
        for (size_t i = 0; i < n && rc == 0; i++) {
            rc = json_array_append_new(
                arr, json_pack("{s:s, s:s, s:b, s:i, s:i}", "id", nodes[i].id, "url", nodes[i].url,
                               "healthy", nodes[i].healthy, "in_flight", nodes[i].in_flight,
                               "capacity", nodes[i].capacity));
        }
    } else {
        const struct cofi_config *cfg = app->cfg;
        for (size_t i = 0; i < cfg->node_count && rc == 0; i++) {
            rc = json_array_append_new(arr, json_pack("{s:s, s:s, s:b, s:i, s:i}", "id",
                                                      cfg->nodes[i].id, "url", cfg->nodes[i].url,
                                                      "healthy", 0, "in_flight", 0, "capacity",
                                                      cfg->nodes[i].capacity));
        }
    }
    if (nodes != local) {
        free(nodes);
    }
    if (rc != 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The "adaptive" object of an NLP stage: the cluster's limit, its bounds, the pause and the
 * last changes. Returns a new reference, NULL when out of memory. */
static json_t *adaptive_json(const struct cofi_app *app)
{
    struct llm_limit_snapshot s;
    engine_llm_limit(app->engine, &s);
    if (app->engine == NULL) {
        s.adaptive = app->cfg->llm_adaptive;
        s.limit = app->cfg->llm_concurrency;
        s.max = app->cfg->llm_concurrency;
    }
    json_t *history = json_array();
    int rc = history != NULL ? 0 : -1;
    for (int i = 0; i < s.nhistory && rc == 0; i++) {
        char at[40];
        clock_format_rfc3339(s.history[i].at_ms, at, sizeof at);
        rc = json_array_append_new(history,
                                   json_pack("{s:s, s:i, s:s}", "at", at, "limit",
                                             s.history[i].limit, "reason", s.history[i].reason));
    }
    char until[40];
    if (s.paused_until_ms > 0) {
        clock_format_rfc3339(s.paused_until_ms, until, sizeof until);
    }
    json_t *o =
        rc == 0 ? json_pack("{s:b, s:i, s:i, s:i, s:o, s:I, s:O}", "enabled", s.adaptive, "limit",
                            s.limit, "max", s.max, "ceiling", s.ceiling, "paused_until",
                            s.paused_until_ms > 0 ? json_string(until) : json_null(), "throttled",
                            (json_int_t)s.throttled_total, "history", history)
                : NULL;
    json_decref(history);
    return o;
}

void stages_split_running(int64_t pending, int64_t running, int64_t requests, int64_t *in_flight,
                          int64_t *queued)
{
    int64_t sending = requests < running ? requests : running;
    if (sending < 0) {
        sending = 0;
    }
    *in_flight = sending;
    *queued = pending + (running - sending);
}

int handle_stage_status(const struct cofi_app *app, const struct http_req *req,
                        struct http_reply *rep, struct cofi_err *err)
{
    int stage = req->param_count >= 1 ? stage_from_name(req->params[0]) : -1;
    if (stage < 0) {
        return cofi_err_set(err, COFI_E_NOT_FOUND, "no such stage");
    }
    int64_t batch_id = 0;
    const char *b = req->query(req, "batch_id");
    if (b != NULL && req_parse_id(b, &batch_id) != 0) {
        return cofi_err_set(err, COFI_E_BAD_REQUEST, "batch_id must be a positive integer");
    }

    struct stage_figures f;
    PGconn *conn = req_db_acquire(app, err);
    if (conn == NULL) {
        return err->code;
    }
    int rc =
        stages_db_figures(conn, stage, batch_id, app->instance_id, app->cfg->lease_ms, &f, err);
    db_release(app->db, conn);
    if (rc != 0) {
        return rc;
    }

    struct stage_live live;
    engine_stage_live(app->engine, stage, &live);
    int limit =
        live.concurrency_limit > 0 ? live.concurrency_limit : configured_limit(app->cfg, stage);
    int64_t in_flight;
    int64_t queued;
    stages_split_running(f.pending, f.running, (int64_t)live.in_flight + f.others_in_flight,
                         &in_flight, &queued);
    bool llm = stage_is_llm(stage);
    json_t *o = json_pack("{s:s, s:s, s:i, s:I, s:I, s:I, s:I, s:f, s:{s:f, s:f, s:f}}", "name",
                          stage_name(stage), "kind", llm ? "llm" : "mediator", "concurrency_limit",
                          limit, "in_flight", (json_int_t)in_flight, "queued", (json_int_t)queued,
                          "done", (json_int_t)f.counts.done, "failed", (json_int_t)f.counts.failed,
                          "throughput_per_s", live.throughput_per_s, "latency_ms", "p50",
                          live.p50_ms, "p95", live.p95_ms, "p99", live.p99_ms);
    if (o != NULL && llm && json_object_set_new(o, "adaptive", adaptive_json(app)) != 0) {
        json_decref(o);
        o = NULL;
    }
    if (o != NULL && !llm && json_object_set_new(o, "nodes", nodes_json(app)) != 0) {
        json_decref(o);
        o = NULL;
    }
    if (o == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    rep->status = 200;
    rep->body = o;
    return 0;
}
