/* The cluster's adaptive NLP limit on this instance (see limiter.h). */
#include "pipeline/limiter.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "pipeline/aimd.h"

/* Window means kept for the latency floor: about half a minute of beats. */
#define FLOOR_WINDOWS 30

struct nlp_limiter {
    const struct cofi_config *cfg;
    char instance[160];

    /* The window, filled by the lane threads and taken by the lease thread. */
    atomic_int answers;
    atomic_int throttled;
    atomic_llong latency_sum_us;
    atomic_llong throttled_total;
    atomic_llong pause_until_mono; /* ms: no NLP request starts before */
    atomic_bool pause_to_write;    /* a Retry-After seen here, not yet in the database */
    atomic_llong decreased_mono;   /* ms: when the limit last fell here; refusals of requests
                                      sent before it are old news */
    atomic_llong woke_mono;        /* ms: when a refusal last asked for a beat */

    /* The latest refusal as this instance counts it (LIMITER_REPORT_MS in limiter.h). */
    pthread_mutex_t ev_mu;
    int64_t ev_us;    /* µs (monotonic): when this instance learned of it, 0 = never */
    int ev_in_flight; /* its NLP requests in flight then */
    int ev_refused;   /* of them, refused since */
    bool ev_pending;  /* not reported yet */

    /* Lease thread only. */
    bool started;          /* the first beat looked whether this instance starts alone */
    int seen_limit;        /* the cluster's limit at the last beat */
    int raised_from;       /* the limit before the cluster's last increase, 0 = none */
    long long raised_mono; /* ms: when this instance saw that increase */
    int clean_streak;
    int last_clean;
    long long resumed_for; /* the pause_until_mono whose end this thread beat before */
    double floors[FLOOR_WINDOWS];
    int nfloors;
    int floor_pos;

    /* The last beat's state, for readers. */
    pthread_mutex_t mu;
    struct llm_limit_snapshot snap;
};

int limiter_new(struct nlp_limiter **out, const struct cofi_config *cfg, const char *instance)
{
    struct nlp_limiter *l = calloc(1, sizeof *l);
    if (l == NULL) {
        return -1;
    }
    l->cfg = cfg;
    snprintf(l->instance, sizeof l->instance, "%s", instance);
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->ev_mu, NULL);
    l->snap.adaptive = cfg->llm_adaptive;
    l->snap.limit = cfg->llm_concurrency;
    l->snap.max = cfg->llm_concurrency;
    *out = l;
    return 0;
}

void limiter_free(struct nlp_limiter *l)
{
    if (l == NULL) {
        return;
    }
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->ev_mu);
    free(l);
}

/* Raises an atomic to at least v. */
static void atomic_raise(atomic_llong *a, long long v)
{
    long long cur = atomic_load(a);
    while (cur < v && !atomic_compare_exchange_weak(a, &cur, v)) {
    }
}

static void limiter_hold(struct nlp_limiter *l, int64_t ms)
{
    if (!l->cfg->llm_adaptive || ms <= 0) {
        return;
    }
    if (ms > l->cfg->llm.retry_after_max_ms) {
        ms = l->cfg->llm.retry_after_max_ms;
    }
    atomic_raise(&l->pause_until_mono, clock_mono_ms() + ms);
}

/* Counts a refusal into the latest one or, when that began LIMITER_EST_WINDOW_MS ago or
 * more, starts a new one with in_flight (this instance's requests in flight now, the refused
 * one included). sent_us: when the refused request was counted in flight (µs, monotonic; -1:
 * the refusal was another instance's). */
static bool count_refusal(struct nlp_limiter *l, int64_t sent_us, int in_flight)
{
    int64_t now = clock_mono_us();
    bool opened = false;
    pthread_mutex_lock(&l->ev_mu);
    if (l->ev_us == 0 || now - l->ev_us >= LIMITER_EST_WINDOW_MS * 1000) {
        l->ev_us = now;
        l->ev_in_flight = in_flight;
        l->ev_refused = sent_us >= 0 ? 1 : 0;
        l->ev_pending = true;
        opened = true;
    } else if (l->ev_pending && sent_us >= 0 && sent_us < l->ev_us) {
        l->ev_refused++; /* it was counted in flight: the API did not hold it */
    }
    pthread_mutex_unlock(&l->ev_mu);
    return opened;
}

bool limiter_heard_pause(struct nlp_limiter *l, int64_t ms, int in_flight)
{
    if (!l->cfg->llm_adaptive || ms <= 0) {
        return false;
    }
    limiter_hold(l, ms);
    count_refusal(l, -1, in_flight);
    return true; /* the report, and the beat before the pause ends */
}

bool limiter_on_answer(struct nlp_limiter *l, const struct job_outcome *o, int in_flight,
                       int64_t counted_us)
{
    if (o->event != LANE_ANSWERED || o->http_status == 0) {
        return false; /* no answer from the API: a connection failure says nothing of its limit */
    }
    int64_t now = clock_mono_ms();
    bool throttled = o->http_status == 429 || o->http_status == 503;
    if (!l->cfg->llm_adaptive) {
        if (throttled) {
            atomic_fetch_add(&l->throttled_total, 1);
        }
        return false; /* a fixed limit: each request honours its own Retry-After */
    }
    if (o->retry_after_ms >= 0) {
        limiter_hold(l, o->retry_after_ms);
        atomic_store(&l->pause_to_write, true);
    }
    int64_t sent = now - o->latency_us / 1000;
    bool opened = false; /* a refusal to count and report: the lease thread has work */
    if (throttled) {
        atomic_fetch_add(&l->throttled_total, 1);
        opened = count_refusal(l, counted_us, in_flight);
    }
    if (throttled && sent < atomic_load(&l->decreased_mono)) {
        return opened; /* sent under the limit before its last decrease */
    }
    atomic_fetch_add(&l->answers, 1);
    atomic_fetch_add(&l->latency_sum_us, o->latency_us);
    if (!throttled) {
        return false;
    }
    atomic_fetch_add(&l->throttled, 1);
    long long woke = atomic_load(&l->woke_mono);
    bool wake = now - woke >= LIMITER_WAKE_MS &&
                atomic_compare_exchange_strong(&l->woke_mono, &woke, (long long)now);
    return wake || opened;
}

int64_t limiter_pause_ms(struct nlp_limiter *l)
{
    int64_t left = atomic_load(&l->pause_until_mono) - clock_mono_ms();
    return left > 0 ? left : 0;
}

/* The lowest window mean of the recent windows, 0 = none yet. */
static double floor_now(const struct nlp_limiter *l)
{
    double fl = 0;
    for (int i = 0; i < l->nfloors; i++) {
        if (fl == 0 || l->floors[i] < fl) {
            fl = l->floors[i];
        }
    }
    return fl;
}

/* Adds a window's mean to the floor's ring and returns the floor of the windows before it. */
static double floor_push(struct nlp_limiter *l, double mean_ms)
{
    double fl = floor_now(l);
    l->floors[l->floor_pos] = mean_ms;
    l->floor_pos = (l->floor_pos + 1) % FLOOR_WINDOWS;
    if (l->nfloors < FLOOR_WINDOWS) {
        l->nfloors++;
    }
    return fl;
}

/* The window's AIMD step against row; returns the limit from now on. */
static int adapt(struct nlp_limiter *l, PGconn *c, bool limited, const struct limiter_row *row,
                 int limit, struct cofi_err *err, int *rc)
{
    struct aimd_in in = {.limit = limit,
                         .max = l->cfg->llm_concurrency,
                         .ceiling = row->ceiling,
                         .clean_streak = l->clean_streak,
                         .limited = limited,
                         .last_clean = l->last_clean,
                         .failed_probes = row->probes_refused};
    if (clock_mono_ms() - l->raised_mono <= AIMD_RAISE_WINDOWS * LIMITER_WINDOW_MS) {
        in.raised_from = l->raised_from;
    }
    in.answers = atomic_exchange(&l->answers, 0);
    in.throttled = atomic_exchange(&l->throttled, 0);
    long long sum = atomic_exchange(&l->latency_sum_us, 0);
    if (in.answers > 0) {
        in.mean_ms = (double)sum / in.answers / 1000.0;
    }
    if (in.answers >= AIMD_MIN_ANSWERS && in.throttled == 0) {
        in.floor_ms = floor_push(l, in.mean_ms);
    }
    struct aimd_out out;
    aimd_next(&in, &out);
    l->clean_streak = out.clean_streak;
    l->last_clean = out.last_clean;
    if (out.reason == AIMD_HOLD && out.limit == limit) {
        return limit;
    }
    bool applied = false;
    struct limiter_step step = {.from = row->limit,
                                .to = out.limit,
                                .ceiling = out.ceiling,
                                .probes_refused = out.failed_probes,
                                .min_age_ms = LIMITER_INCREASE_MS,
                                .reason = aimd_reason_name(out.reason)};
    if (out.reason == AIMD_INCREASE && row->ceiling > 0 && out.ceiling == 0) {
        /* A clean window at the ceiling forgets it, but only a window after the probe: in
         * the first, an instance's share may not have taken the probe's permit yet, and a
         * window clean at its old share says nothing of the probed limit. */
        step.min_age_ms = 2 * LIMITER_WINDOW_MS;
    }
    if (out.reason == AIMD_PROBE) {
        /* The cluster probes once per wait, whichever instance asks: the windows of a probe
         * (doubled per refused one) pass on the database's clock. */
        step.min_age_ms = aimd_probe_windows(row->probes_refused) * LIMITER_WINDOW_MS;
    }
    *rc = limiter_db_change(c, l->instance, in.max, &step, &applied, err);
    if (*rc != 0 || !applied) {
        return limit;
    }
    if (out.limit < limit) {
        atomic_store(&l->decreased_mono, clock_mono_ms());
    }
    log_info("engine: NLP limit %d -> %d of %d (%s: %d answers, %d refused, mean %.0f ms, "
             "floor %.0f ms)",
             limit, out.limit, in.max, aimd_reason_name(out.reason), in.answers, in.throttled,
             in.mean_ms, in.floor_ms);
    return out.limit;
}

static void publish(struct nlp_limiter *l, const struct limiter_row *row, int limit)
{
    pthread_mutex_lock(&l->mu);
    l->snap.limit = limit;
    l->snap.ceiling = row->ceiling;
    l->snap.paused_until_ms = row->pause_left_ms > 0 ? row->pause_until_ms : 0;
    l->snap.throttled_total = atomic_load(&l->throttled_total);
    memcpy(l->snap.history, row->history, sizeof l->snap.history);
    l->snap.nhistory = row->nhistory;
    pthread_mutex_unlock(&l->mu);
}

/* Notes an increase of the cluster's limit (whoever made it) for the next refusal. */
static void see_limit(struct nlp_limiter *l, int limit)
{
    if (l->seen_limit > 0 && limit > l->seen_limit) {
        l->raised_from = l->seen_limit;
        l->raised_mono = clock_mono_ms();
    } else if (limit < l->seen_limit) {
        l->raised_from = 0;
    }
    l->seen_limit = limit;
}

int64_t limiter_due_ms(struct nlp_limiter *l)
{
    if (!l->cfg->llm_adaptive) {
        return -1;
    }
    int64_t now = clock_mono_ms();
    int64_t due = -1;
    pthread_mutex_lock(&l->ev_mu);
    if (l->ev_pending) {
        int64_t us = l->ev_us + LIMITER_REPORT_MS * 1000 - clock_mono_us();
        due = us > 0 ? (us + 999) / 1000 : 0;
    }
    pthread_mutex_unlock(&l->ev_mu);
    long long until = atomic_load(&l->pause_until_mono);
    if (until != l->resumed_for && until - LIMITER_RESUME_LEAD_MS > now) {
        int64_t resume = until - LIMITER_RESUME_LEAD_MS - now;
        due = due < 0 || resume < due ? resume : due;
    }
    return due;
}

/* This instance's count of the latest refusal, once due: true with *accepted when it should
 * be reported now (see LIMITER_REPORT_MS). */
static bool report_due(struct nlp_limiter *l, int *accepted)
{
    bool due = false;
    pthread_mutex_lock(&l->ev_mu);
    if (l->ev_pending && clock_mono_us() >= l->ev_us + LIMITER_REPORT_MS * 1000) {
        l->ev_pending = false;
        *accepted = l->ev_in_flight > l->ev_refused ? l->ev_in_flight - l->ev_refused : 0;
        due = true;
    }
    pthread_mutex_unlock(&l->ev_mu);
    return due;
}

/* Reports the latest refusal's count; the last instance to report lowers a limit above what
 * the API held to it (LIMITER_REPORT_MS). */
static int report(struct nlp_limiter *l, PGconn *c, int accepted, struct cofi_err *err)
{
    if (floor_now(l) < LIMITER_EST_MIN_LATENCY_MS) {
        log_debug("engine: NLP refusal: %d accepted here, not reported (latency floor %.0f ms)",
                  accepted, floor_now(l));
        return 0;
    }
    struct limiter_est est;
    int rc = limiter_db_report(c, accepted, l->cfg->lease_ms, &est, err);
    if (rc != 0) {
        return rc;
    }
    log_debug("engine: NLP refusal: %d accepted here; %d of %d instances reported %d; limit %d",
              accepted, est.n, est.live, est.sum, est.limit);
    /* Only a fall. A refusal that answers a probe of the last windows (one over the limit
     * that passed) is the AIMD rule's: back to the limit that passed (aimd.h), which a count
     * made while requests start and end all the time could only undercut (an instance that
     * hears of the refusal late misses what ended meanwhile); and a request or two less is
     * no fall. */
    bool answers_probe =
        est.probe_ago_ms >= 0 && est.probe_ago_ms <= AIMD_RAISE_WINDOWS * LIMITER_WINDOW_MS;
    if (est.n < est.live || est.sum < 1 || answers_probe ||
        (double)est.sum > AIMD_NEAR_CEILING * (double)est.limit) {
        return 0;
    }
    char why[48];
    snprintf(why, sizeof why, "accepted %d", est.sum);
    struct limiter_step step = {.from = est.limit,
                                .to = est.sum,
                                .ceiling = est.sum + 1,
                                .probes_refused = est.probes_refused,
                                .refine = true,
                                .reason = why};
    bool applied = false;
    rc = limiter_db_change(c, l->instance, l->cfg->llm_concurrency, &step, &applied, err);
    if (rc == 0 && applied) {
        atomic_store(&l->decreased_mono, clock_mono_ms());
        log_info("engine: NLP limit %d -> %d of %d (accepted: the API held %d requests when "
                 "it refused, counted by %d instances)",
                 est.limit, est.sum, l->cfg->llm_concurrency, est.sum, est.n);
    }
    return rc;
}

int limiter_beat(struct nlp_limiter *l, PGconn *c, bool limited, struct cofi_err *err)
{
    const int max = l->cfg->llm_concurrency;
    struct limiter_row row;
    int rc = 0;
    if (atomic_exchange(&l->pause_to_write, false)) {
        int64_t left = limiter_pause_ms(l);
        rc = left > 0 ? limiter_db_pause(c, l->instance, left, err) : 0;
        if (rc != 0) {
            atomic_store(&l->pause_to_write, true);
            return rc;
        }
    }
    int accepted = 0;
    if (l->cfg->llm_adaptive && l->started && report_due(l, &accepted)) {
        rc = report(l, c, accepted, err);
        if (rc != 0) {
            return rc;
        }
    }
    rc = limiter_db_read(c, max, &row, err);
    if (rc == 0 && !l->started) {
        bool reset = false;
        rc = limiter_db_restart(c, l->instance, max, l->cfg->lease_ms, &reset, err);
        if (rc == 0 && reset) {
            rc = limiter_db_read(c, max, &row, err);
        }
        l->started = rc == 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (row.pause_left_ms > 0 && l->cfg->llm_adaptive) {
        atomic_raise(&l->pause_until_mono, clock_mono_ms() + row.pause_left_ms);
    }
    long long until = atomic_load(&l->pause_until_mono);
    if (until - clock_mono_ms() <= LIMITER_RESUME_LEAD_MS + 10) {
        l->resumed_for = until; /* this beat is the one before the pause ends */
    }
    int limit = row.limit < max ? row.limit : max;
    if (!l->cfg->llm_adaptive) {
        limit = max;
    } else {
        see_limit(l, limit);
        int was = limit;
        limit = adapt(l, c, limited, &row, limit, err, &rc);
        if (rc == 0 && limit != was) {
            rc = limiter_db_read(c, max, &row, err);
            limit = row.limit < max ? row.limit : max;
        }
        if (rc != 0) {
            return rc;
        }
        see_limit(l, limit);
    }
    publish(l, &row, limit);
    return limit < 1 ? 1 : limit;
}

void limiter_snapshot(struct nlp_limiter *l, struct llm_limit_snapshot *out)
{
    if (l == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    pthread_mutex_lock(&l->mu);
    *out = l->snap;
    pthread_mutex_unlock(&l->mu);
}
