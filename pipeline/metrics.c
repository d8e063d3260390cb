/* Sliding-window latency percentiles and throughput per stage; totals and histograms. */
#include "pipeline/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/stages.h"

#define RING      4096
#define WINDOW_MS 10000
#define CACHE_MS  200

struct ring {
    pthread_mutex_t mu;
    int64_t at_ms[RING];
    int32_t lat_us[RING];
    uint64_t next;
    int64_t cached_at;
    struct stage_live cached;
};

/* Worker latency: 5 ms to 10 min (a GPU stage may take minutes). */
static const int64_t worker_bounds_us[] = {5000,     10000,    25000,    50000,     100000,
                                           250000,   500000,   1000000,  2500000,   5000000,
                                           10000000, 30000000, 60000000, 120000000, 600000000};
/* Flushes and claims: 0.5 ms to 10 s. */
static const int64_t db_bounds_us[] = {500,    1000,   2500,   5000,    10000,   25000,   50000,
                                       100000, 250000, 500000, 1000000, 2500000, 10000000};

#define NBOUNDS(a) (sizeof(a) / sizeof((a)[0]))

struct stage_metrics {
    struct ring r[STAGE_COUNT];
    atomic_uint_fast64_t requests[STAGE_COUNT];
    atomic_uint_fast64_t outcomes[STAGE_COUNT][3];
    struct histo latency[STAGE_COUNT];
    struct histo flush;
    struct histo claim;
};

struct stage_metrics *metrics_new(void)
{
    struct stage_metrics *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return NULL;
    }
    for (int i = 0; i < STAGE_COUNT; i++) {
        pthread_mutex_init(&m->r[i].mu, NULL);
        m->r[i].cached_at = -CACHE_MS - 1;
        atomic_init(&m->requests[i], 0);
        for (int k = 0; k < 3; k++) {
            atomic_init(&m->outcomes[i][k], 0);
        }
        histo_init(&m->latency[i], worker_bounds_us, NBOUNDS(worker_bounds_us));
    }
    histo_init(&m->flush, db_bounds_us, NBOUNDS(db_bounds_us));
    histo_init(&m->claim, db_bounds_us, NBOUNDS(db_bounds_us));
    return m;
}

void metrics_free(struct stage_metrics *m)
{
    if (m == NULL) {
        return;
    }
    for (int i = 0; i < STAGE_COUNT; i++) {
        pthread_mutex_destroy(&m->r[i].mu);
    }
    free(m);
}

void metrics_record(struct stage_metrics *m, int stage, int64_t latency_us)
{
    if (m == NULL || stage < 0 || stage >= STAGE_COUNT) {
        return;
    }
    atomic_fetch_add_explicit(&m->requests[stage], 1, memory_order_relaxed);
    histo_observe(&m->latency[stage], latency_us);
    struct ring *r = &m->r[stage];
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&r->mu);
    size_t i = (size_t)(r->next % RING);
    r->at_ms[i] = now;
    r->lat_us[i] = latency_us > INT32_MAX ? INT32_MAX : (int32_t)latency_us;
    r->next++;
    pthread_mutex_unlock(&r->mu);
}

void metrics_count(struct stage_metrics *m, int stage, enum metrics_outcome outcome)
{
    if (m != NULL && stage >= 0 && stage < STAGE_COUNT && (int)outcome >= 0 && (int)outcome < 3) {
        atomic_fetch_add_explicit(&m->outcomes[stage][outcome], 1, memory_order_relaxed);
    }
}

void metrics_observe_flush(struct stage_metrics *m, int64_t us)
{
    if (m != NULL) {
        histo_observe(&m->flush, us);
    }
}

void metrics_observe_claim(struct stage_metrics *m, int64_t us)
{
    if (m != NULL) {
        histo_observe(&m->claim, us);
    }
}

void metrics_totals(struct stage_metrics *m, struct metrics_totals *out)
{
    memset(out, 0, sizeof *out);
    if (m == NULL) {
        return;
    }
    for (int i = 0; i < STAGE_COUNT; i++) {
        out->requests[i] = atomic_load_explicit(&m->requests[i], memory_order_relaxed);
        for (int k = 0; k < 3; k++) {
            out->outcomes[i][k] = atomic_load_explicit(&m->outcomes[i][k], memory_order_relaxed);
        }
        histo_read(&m->latency[i], &out->latency[i]);
    }
    histo_read(&m->flush, &out->flush);
    histo_read(&m->claim, &out->claim);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a;
    int32_t y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void metrics_read(struct stage_metrics *m, int stage, struct stage_live *out)
{
    out->throughput_per_s = 0;
    out->p50_ms = out->p95_ms = out->p99_ms = 0;
    if (m == NULL || stage < 0 || stage >= STAGE_COUNT) {
        return;
    }
    struct ring *r = &m->r[stage];
    int64_t now = clock_mono_ms();
    static _Thread_local int32_t lat[RING];
    pthread_mutex_lock(&r->mu);
    if (now - r->cached_at <= CACHE_MS) {
        out->throughput_per_s = r->cached.throughput_per_s;
        out->p50_ms = r->cached.p50_ms;
        out->p95_ms = r->cached.p95_ms;
        out->p99_ms = r->cached.p99_ms;
        pthread_mutex_unlock(&r->mu);
        return;
    }
    size_t n = 0;
    uint64_t count = r->next < RING ? r->next : RING;
    int64_t oldest = now;
    for (uint64_t k = 0; k < count; k++) {
        size_t i = (size_t)((r->next - 1 - k) % RING);
        if (now - r->at_ms[i] > WINDOW_MS) {
            break;
        }
        lat[n++] = r->lat_us[i];
        oldest = r->at_ms[i];
    }
    pthread_mutex_unlock(&r->mu);

    if (n > 0) {
        qsort(lat, n, sizeof lat[0], cmp_i32);
        /* When the ring holds less than the window, rate over the span it covers. */
        int64_t span = (n == RING) ? (now - oldest) : WINDOW_MS;
        if (span <= 0) {
            span = 1;
        }
        out->throughput_per_s = (double)n * 1000.0 / (double)span;
        out->p50_ms = lat[(n - 1) * 50 / 100] / 1000.0;
        out->p95_ms = lat[(n - 1) * 95 / 100] / 1000.0;
        out->p99_ms = lat[(n - 1) * 99 / 100] / 1000.0;
    }
    pthread_mutex_lock(&r->mu);
    r->cached_at = now;
    r->cached = *out;
    pthread_mutex_unlock(&r->mu);
}
