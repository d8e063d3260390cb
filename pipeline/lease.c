/* The lease: registration, heartbeats on the database's clock, expiry of dead instances, the
 * published in-flight counts and the negotiation of shares, on a thread and connection of
 * their own, so a slow claim or batch read never stretches the lease. */
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/thread.h"
#include "db/db.h"
#include "pipeline/engine_state.h"
#include "pipeline/shares.h"

bool engine_lease_current(struct engine *e)
{
    return clock_mono_ms() < (int64_t)atomic_load(&e->lease_deadline);
}

int engine_lease_init(struct engine *e)
{
    const struct cofi_config *cfg = e->cfg;
    e->nshares = cfg->node_count + 1;
    e->shares = calloc(e->nshares, sizeof *e->shares);
    if (e->shares == NULL) {
        return -1;
    }
    for (size_t i = 0; i < e->nshares; i++) {
        struct buf b;
        buf_init(&b, 4096);
        int rc = i == 0 ? buf_printf(&b, "nlp") : buf_printf(&b, "node:%s", cfg->nodes[i - 1].id);
        if (rc != 0) {
            buf_free(&b);
            return -1;
        }
        e->shares[i].resource = buf_steal(&b);
        e->shares[i].total = i == 0 ? cfg->llm_concurrency : cfg->nodes[i - 1].capacity;
    }
    return 0;
}

void engine_lease_free(struct engine *e)
{
    for (size_t i = 0; e->shares != NULL && i < e->nshares; i++) {
        free(e->shares[i].resource);
    }
    free(e->shares);
    e->shares = NULL;
}

/* Sets the lane limit of share i. */
static void set_lane_limit(struct engine *e, size_t i, int limit)
{
    if (i == 0) {
        llm_lane_set_limit(e->llm, limit);
    } else {
        mediator_lane_set_limit(e->med, i - 1, limit);
    }
}

/* The requests in flight of share i (an upper bound once its lane limit was set). */
static int lane_in_flight(struct engine *e, size_t i)
{
    return i == 0 ? llm_lane_in_flight(e->llm) : mediator_lane_node_in_flight(e->med, i - 1);
}

/* Negotiates every share under the table lock (see pipeline/shares.h): a lane's limit is
 * lowered before a lower share is published, and raised only once a higher one is committed. */
static int negotiate(struct engine *e, PGconn *c, struct cofi_err *err)
{
    struct work_share_view v;
    int rc = work_shares_begin(c, e->instance, e->cfg->lease_ms, &v, err);
    if (rc != 0) {
        return rc;
    }
    int *next = calloc(e->nshares, sizeof *next);
    int *want = calloc(e->nshares, sizeof *want);
    if (next == NULL || want == NULL) {
        rc = cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < e->nshares; i++) {
        struct lease_share *s = &e->shares[i];
        int fair = shares_fair(s->total, v.live, v.rank);
        want[i] = shares_want(s->total, fair, work_share_others(&v, s->resource));
        if (want[i] < s->share) {
            set_lane_limit(e, i, want[i]);
        }
        next[i] = shares_next(s->share, want[i], lane_in_flight(e, i));
        if (next[i] != s->share) {
            rc = work_share_set(c, e->instance, s->resource, next[i], err);
        }
    }
    int end = work_shares_end(c, rc == 0, &v, err);
    if (rc == 0) {
        rc = end;
    }
    for (size_t i = 0; rc == 0 && i < e->nshares; i++) {
        struct lease_share *s = &e->shares[i];
        if (next[i] != s->share) {
            log_info("engine: share of %s now %d of %d (wanted %d)", s->resource, next[i], s->total,
                     want[i]);
        }
        s->share = next[i];
        set_lane_limit(e, i, shares_lane_limit(s->share, want[i]));
    }
    free(next);
    free(want);
    return rc;
}

/* The cluster's NLP limit for this beat (pipeline/limiter.h): the total that the shares of
 * "nlp" split. A failure keeps the total of the last beat. */
static void adapt_nlp_total(struct engine *e, PGconn *c)
{
    struct cofi_err err;
    cofi_err_clear(&err);
    int limit = limiter_beat(e->limiter, c, llm_lane_take_limited(e->llm), &err);
    if (limit < 0) {
        log_warn("engine: NLP limiter: %s", err.msg);
        return;
    }
    e->shares[0].total = limit;
    if (budget_beat(e->budget, c, &err) != 0) {
        log_warn("engine: NLP budget: %s", err.msg);
    }
}

/* Publishes the requests in flight per stage. */
static int publish_in_flight(struct engine *e, PGconn *c, struct cofi_err *err)
{
    char json[512];
    size_t n = (size_t)snprintf(json, sizeof json, "{");
    for (int s = 0; s < STAGE_COUNT && n < sizeof json; s++) {
        n += (size_t)snprintf(json + n, sizeof json - n, "%s\"%s\": %d", s ? ", " : "",
                              stage_name(s), atomic_load(&e->inflight[s]));
    }
    if (n < sizeof json) {
        snprintf(json + n, sizeof json - n, "}");
    }
    return work_publish_in_flight(c, e->instance, json, err);
}

/* The lease was lost (another instance expired this one): every job of earlier claims is let
 * go before anything is claimed again, and the shares start over from nothing. */
static void lease_lost(struct engine *e)
{
    atomic_fetch_add(&e->epoch, 1);
    for (size_t i = 0; i < e->nshares; i++) {
        set_lane_limit(e, i, 0);
        e->shares[i].share = 0;
    }
    log_warn("engine: this instance's lease had expired and its calls were taken back; its "
             "jobs of those claims are let go");
    engine_wake_dispatcher(e, true);
}

/* One beat: renew (register first), expire dead instances, publish, negotiate. */
static int beat(struct engine *e, PGconn *c, struct cofi_err *err)
{
    const struct cofi_config *cfg = e->cfg;
    int64_t sent = clock_mono_ms();
    if (!atomic_load(&e->registered)) {
        int rc = work_register(c, e->instance, e->host, e->pid, err);
        if (rc != 0) {
            return rc;
        }
        log_info("engine: instance %s registered", e->instance);
        atomic_store(&e->registered, true);
    } else {
        bool lost = false;
        int rc = work_heartbeat(c, e->instance, e->host, e->pid, &lost, err);
        if (rc != 0) {
            return rc;
        }
        if (lost) {
            lease_lost(e);
        }
    }
    /* The others see this lease expire lease_ms after the heartbeat's time on the database's
     * clock, which is after `sent`: the lease ends here first. */
    atomic_store(&e->lease_deadline, sent + cfg->lease_ms);
    long recovered = 0;
    int rc = work_recover_expired(c, e->instance, cfg->lease_ms, cfg->lease_ms, &recovered, err);
    if (rc != 0) {
        return rc;
    }
    if (recovered > 0) {
        log_warn("engine: took back %ld calls from expired instances", recovered);
        engine_wake_dispatcher(e, true);
    }
    rc = publish_in_flight(e, c, err);
    if (rc != 0) {
        return rc;
    }
    adapt_nlp_total(e, c);
    return negotiate(e, c, err);
}

/* Sleeps up to ms unless stopped. Returns true when asked to stop. */
static bool lease_sleep(struct engine *e, int64_t ms)
{
    pthread_mutex_lock(&e->lease_mu);
    if (!e->stop_lease && ms > 0) {
        struct timespec dl = clock_deadline_ms(ms);
        pthread_cond_timedwait(&e->lease_cv, &e->lease_mu, &dl);
    }
    bool stop = e->stop_lease;
    pthread_mutex_unlock(&e->lease_mu);
    return stop;
}

void *engine_lease_main(void *arg)
{
    struct engine *e = arg;
    thread_set_name("cofi-lease");
    const struct cofi_config *cfg = e->cfg;
    int64_t period = cfg->lease_ms / 3 < 1000 ? cfg->lease_ms / 3 : 1000;
    int64_t backoff = 100;
    PGconn *c = NULL;
    bool down_logged = false;
    for (;;) {
        struct cofi_err err;
        cofi_err_clear(&err);
        int64_t wait = period;
        if (!db_conn_ok(c)) {
            PQfinish(c);
            c = db_connect(cfg->database_url, &err);
        }
        if (c == NULL) {
            if (!down_logged) {
                log_warn("engine: lease: %s; retrying with backoff", err.msg);
                down_logged = true;
            }
            wait = backoff;
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
        } else {
            backoff = 100;
            down_logged = false;
            int64_t t0 = clock_mono_ms();
            if (beat(e, c, &err) != 0) {
                log_warn("engine: heartbeat: %s", err.msg);
                wait = period / 4;
            } else {
                int64_t due = limiter_due_ms(e->limiter);
                wait = due >= 0 && due < wait ? due : wait;
            }
            int64_t took = clock_mono_ms() - t0;
            if (took > cfg->lease_ms / 2) {
                log_warn("engine: a heartbeat took %lld ms (lease %d ms)", (long long)took,
                         cfg->lease_ms);
            }
        }
        if (lease_sleep(e, wait)) {
            break;
        }
    }
    PQfinish(c);
    return NULL;
}
