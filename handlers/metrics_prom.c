/* GET /metrics: this instance's figures in the Prometheus text format. */
#include "handlers/handlers.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/prom.h"
#include "common/stages.h"
#include "db/metrics_db.h"
#include "pipeline/metrics.h"

/* The largest body /metrics renders. */
#define METRICS_BODY_MAX ((size_t)4 << 20)

/* The database's figures are read at most once a second, whatever the scrape rate. */
#define DB_CACHE_MS 1000

#define NODES_ON_STACK 32

/* The last figures read from the database, shared by the scrapes of this process. */
static struct {
    pthread_mutex_t mu;
    int64_t read_at_ms; /* 0: never */
    struct metrics_db_figures figures;
} db_cache = {PTHREAD_MUTEX_INITIALIZER, 0, {{0}, {0}}};

/* Fills *out with the database's figures, at most DB_CACHE_MS old. Returns 0, or -1 when
 * the database can't be read (logged at debug; *out then holds the last figures read). */
static int db_figures(const struct cofi_app *app, struct metrics_db_figures *out)
{
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&db_cache.mu);
    bool fresh = db_cache.read_at_ms != 0 && now - db_cache.read_at_ms < DB_CACHE_MS;
    *out = db_cache.figures;
    pthread_mutex_unlock(&db_cache.mu);
    if (fresh) {
        return 0;
    }
    struct cofi_err err;
    cofi_err_clear(&err);
    PGconn *conn = req_db_acquire(app, &err);
    int rc = conn != NULL ? metrics_db_figures(conn, out, &err) : err.code;
    if (conn != NULL) {
        db_release(app->db, conn);
    }
    if (rc != 0) {
        log_debug("metrics: database figures not read: %s", err.msg);
        return -1;
    }
    pthread_mutex_lock(&db_cache.mu);
    db_cache.figures = *out;
    db_cache.read_at_ms = now;
    pthread_mutex_unlock(&db_cache.mu);
    return 0;
}

static void stage_counters(struct prom *p, const struct metrics_totals *t)
{
    static const char *const outcomes[] = {"succeeded", "retried", "failed"};
    prom_family(p, "cofi_stage_requests_total", "counter",
                "Requests to the workers answered (any answer), by stage.");
    for (int s = 0; s < STAGE_COUNT; s++) {
        struct prom_label l[] = {{"stage", stage_name(s)}};
        prom_sample_u64(p, "cofi_stage_requests_total", l, 1, t->requests[s]);
    }
    prom_family(p, "cofi_stage_outcomes_total", "counter",
                "What answered requests led to, by stage: succeeded (result recorded), retried "
                "(tried again later) or failed (the call failed at the stage).");
    for (int s = 0; s < STAGE_COUNT; s++) {
        for (int k = 0; k < 3; k++) {
            struct prom_label l[] = {{"stage", stage_name(s)}, {"outcome", outcomes[k]}};
            prom_sample_u64(p, "cofi_stage_outcomes_total", l, 2, t->outcomes[s][k]);
        }
    }
    prom_family(p, "cofi_stage_request_duration_seconds", "histogram",
                "Time from sending a request to a worker to its answer, by stage.");
    for (int s = 0; s < STAGE_COUNT; s++) {
        struct prom_label l[] = {{"stage", stage_name(s)}};
        prom_histogram(p, "cofi_stage_request_duration_seconds", l, 1, &t->latency[s]);
    }
}

static void stage_gauges(struct prom *p, const struct cofi_app *app,
                         const struct metrics_db_figures *db, bool db_ok)
{
    prom_family(p, "cofi_stage_in_flight", "gauge",
                "Requests this instance has in flight, by stage.");
    for (int s = 0; s < STAGE_COUNT; s++) {
        struct stage_live live;
        engine_stage_live(app->engine, s, &live);
        struct prom_label l[] = {{"stage", stage_name(s)}};
        prom_sample(p, "cofi_stage_in_flight", l, 1, live.in_flight);
    }
    if (!db_ok) {
        return;
    }
    prom_family(p, "cofi_stage_queue_depth", "gauge",
                "Calls of running batches waiting at each stage (every instance; read from the "
                "database at most once a second).");
    for (int s = 0; s < STAGE_COUNT; s++) {
        struct prom_label l[] = {{"stage", stage_name(s)}};
        prom_sample(p, "cofi_stage_queue_depth", l, 1, (double)db->pending[s]);
    }
    prom_family(p, "cofi_batches", "gauge",
                "Batches by state (every instance; read from the database at most once a "
                "second).");
    for (int k = 0; k < METRICS_DB_STATES; k++) {
        struct prom_label l[] = {{"state", metrics_db_state_names[k]}};
        prom_sample(p, "cofi_batches", l, 1, (double)db->batches[k]);
    }
}

/* One resource's three gauges, under the families written by resources(). */
static void resource_sample(struct prom *p, const char *family, const char *resource, double value)
{
    struct prom_label l[] = {{"resource", resource}};
    prom_sample(p, family, l, 1, value);
}

/* In flight, limit and capacity of the NLP API and of every node. */
static void resources(struct prom *p, const struct cofi_app *app)
{
    struct node_live local[NODES_ON_STACK];
    size_t n = engine_nodes(app->engine, local, NODES_ON_STACK);
    if (n > NODES_ON_STACK) {
        n = NODES_ON_STACK; /* more nodes than this: the first ones only */
    }
    int nlp_in_flight = 0;
    int nlp_limit = 0;
    engine_nlp_live(app->engine, &nlp_in_flight, &nlp_limit);
    static const char *const families[][2] = {
        {"cofi_resource_in_flight", "Requests this instance has in flight to the resource."},
        {"cofi_resource_limit",
         "How many requests this instance may have in flight to the resource (its share)."},
        {"cofi_resource_capacity",
         "The resource's configured limit for every instance together (node capacity, "
         "llm.concurrency)."},
    };
    for (int f = 0; f < 3; f++) {
        prom_family(p, families[f][0], "gauge", families[f][1]);
        double nlp[] = {nlp_in_flight, nlp_limit, app->cfg->llm_concurrency};
        resource_sample(p, families[f][0], "nlp", nlp[f]);
        for (size_t i = 0; i < n; i++) {
            char name[160];
            snprintf(name, sizeof name, "node:%s", local[i].id);
            double node[] = {local[i].in_flight, local[i].limit, local[i].capacity};
            resource_sample(p, families[f][0], name, node[f]);
        }
    }
    prom_family(p, "cofi_node_healthy", "gauge", "1 when the node passes its health checks.");
    for (size_t i = 0; i < n; i++) {
        struct prom_label l[] = {{"node", local[i].id}};
        prom_sample(p, "cofi_node_healthy", l, 1, local[i].healthy ? 1 : 0);
    }
}

/* The cluster's adaptive NLP limit (pipeline/limiter.h) as this instance last saw it. */
static void nlp_limiter(struct prom *p, const struct cofi_app *app)
{
    struct llm_limit_snapshot s;
    engine_llm_limit(app->engine, &s);
    prom_family(p, "cofi_nlp_limit", "gauge",
                "The NLP API's limit for every instance together now: adaptive (AIMD under "
                "llm.concurrency) or llm.concurrency.");
    prom_sample(p, "cofi_nlp_limit", NULL, 0, s.limit);
    prom_family(p, "cofi_nlp_limit_max", "gauge", "llm.concurrency: the adaptive limit's ceiling.");
    prom_sample(p, "cofi_nlp_limit_max", NULL, 0, s.max);
    prom_family(p, "cofi_nlp_paused_until_seconds", "gauge",
                "Until when a Retry-After of the NLP API holds every instance's new requests "
                "(Unix seconds; 0: not paused).");
    prom_sample(p, "cofi_nlp_paused_until_seconds", NULL, 0, (double)s.paused_until_ms / 1000.0);
    prom_family(p, "cofi_nlp_throttled_total", "counter",
                "429 and 503 answers of the NLP API this instance saw.");
    prom_sample(p, "cofi_nlp_throttled_total", NULL, 0, (double)s.throttled_total);
}

static void process_info(struct prom *p, const struct cofi_app *app, bool db_ok)
{
    prom_family(p, "cofi_build_info", "gauge", "cofid's version (always 1).");
    struct prom_label v[] = {{"version", COFI_VERSION}};
    prom_sample(p, "cofi_build_info", v, 1, 1);
    prom_family(p, "process_start_time_seconds", "gauge",
                "Start time of the process since the epoch, in seconds.");
    prom_sample(p, "process_start_time_seconds", NULL, 0, app->started_at);
    prom_family(p, "cofi_database_up", "gauge",
                "1 when this scrape could read the database's figures.");
    prom_sample(p, "cofi_database_up", NULL, 0, db_ok ? 1 : 0);
}

int handle_metrics(const struct cofi_app *app, const struct http_req *req, struct http_reply *rep,
                   struct cofi_err *err)
{
    (void)req;
    struct metrics_db_figures db;
    bool db_ok = db_figures(app, &db) == 0;
    struct metrics_totals *t = malloc(sizeof *t);
    if (t == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    engine_totals(app->engine, t);
    struct buf out;
    buf_init(&out, METRICS_BODY_MAX);
    struct prom p;
    prom_init(&p, &out);
    process_info(&p, app, db_ok);
    stage_counters(&p, t);
    stage_gauges(&p, app, &db, db_ok);
    resources(&p, app);
    nlp_limiter(&p, app);
    prom_family(&p, "cofi_flush_duration_seconds", "histogram",
                "Time of one flush: one statement writing many calls' transitions.");
    prom_histogram(&p, "cofi_flush_duration_seconds", NULL, 0, &t->flush);
    prom_family(&p, "cofi_claim_duration_seconds", "histogram",
                "Time of one claim of calls from the database.");
    prom_histogram(&p, "cofi_claim_duration_seconds", NULL, 0, &t->claim);
    free(t);
    if (app->http_metrics != NULL) {
        app->http_metrics(app->http_metrics_ctx, &p);
    }
    if (p.rc != 0) {
        buf_free(&out);
        return cofi_err_set(err, p.rc == -1 ? COFI_E_INTERNAL : COFI_E_NOMEM,
                            "the metrics did not fit in %zu bytes", METRICS_BODY_MAX);
    }
    rep->text_len = out.len;
    rep->text = buf_steal(&out);
    rep->content_type = PROM_CONTENT_TYPE;
    rep->status = 200;
    return 0;
}
