/* The NLP API's meter: its capacity over time (a schedule, POST /admin/capacity), a token
 * bucket of --nlp-tokens-per-minute, and a per-second history of what it saw (GET /stats). */
#include "sim/sim.h"

#include "common/clock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How often the sampler applies the schedule and records the in-flight count. */
#define SAMPLE_MS 20

int sim_schedule_parse(const char *s, struct sim_cap_step *out, int max, char *err, size_t errlen)
{
    char copy[1024];
    if (strlen(s) >= sizeof copy) {
        snprintf(err, errlen, "list too long");
        return -1;
    }
    snprintf(copy, sizeof copy, "%s", s);
    int n = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        char *end1 = NULL;
        char *end2 = NULL;
        double at = eq ? strtod(item, &end1) : -1;
        long cap = eq ? strtol(eq + 1, &end2, 10) : -1;
        if (eq == NULL || end1 != eq || end2 == eq + 1 || *end2 != '\0' || !(at >= 0) ||
            at > 86400 || cap < 1 || cap > 100000) {
            snprintf(err, errlen, "expected SECONDS=CAPACITY (0..86400, 1..100000), got '%.64s'",
                     item);
            return -1;
        }
        if (n == max) {
            snprintf(err, errlen, "at most %d steps", max);
            return -1;
        }
        if (n > 0 && at < out[n - 1].at_s) {
            snprintf(err, errlen, "steps must be in time order");
            return -1;
        }
        out[n].at_s = at;
        out[n].capacity = (int)cap;
        n++;
    }
    if (n == 0) {
        snprintf(err, errlen, "empty schedule");
        return -1;
    }
    return n;
}

int sim_schedule_due(const struct sim_cap_step *steps, int n, int next, double elapsed_s,
                     int *capacity)
{
    while (next < n && steps[next].at_s <= elapsed_s) {
        *capacity = steps[next].capacity;
        next++;
    }
    return next;
}

int64_t sim_bucket_take(struct sim_bucket *b, int64_t now_us, int64_t want)
{
    if (b->per_minute <= 0) {
        return 0;
    }
    double rate = (double)b->per_minute / 60e6; /* tokens per microsecond */
    if (now_us > b->last_us) {
        b->level += (double)(now_us - b->last_us) * rate;
        if (b->level > (double)b->per_minute) {
            b->level = (double)b->per_minute;
        }
        b->last_us = now_us;
    }
    double need = (double)want;
    if (need > (double)b->per_minute) {
        need = (double)b->per_minute; /* a request over the whole budget waits for a full one */
    }
    if (b->level >= need) {
        b->level -= (double)want;
        return 0;
    }
    double wait_us = (need - b->level) / rate;
    int64_t s = (int64_t)ceil(wait_us / 1e6);
    return s < 1 ? 1 : s;
}

/* The bucket of second `sec`, reset when it held an older second. Under m->mu. */
static struct sim_second *second_of(struct sim_meter *m, int64_t sec)
{
    struct sim_second *b = &m->series[sec % SIM_SERIES_SECONDS];
    if (b->sec != sec) {
        memset(b, 0, sizeof *b);
        b->sec = sec;
        b->capacity = m->capacity;
        b->max_in_flight = m->busy;
    }
    return b;
}

/* Applies the schedule's due steps and returns the current second's bucket. Under m->mu. */
static struct sim_second *meter_now(struct sim_meter *m, int64_t now_us)
{
    int64_t since = now_us - m->start_us;
    int cap = m->capacity;
    int next = sim_schedule_due(m->steps, m->nsteps, m->next_step, (double)since / 1e6, &cap);
    if (next != m->next_step) {
        m->next_step = next;
        if (cap != m->capacity) {
            log_info("nlp: capacity %d -> %d (schedule)", m->capacity, cap);
        }
        m->capacity = cap;
    }
    struct sim_second *b = second_of(m, since / 1000000);
    if (m->capacity < b->capacity) {
        b->capacity = m->capacity;
    }
    if (m->busy > b->max_in_flight) {
        b->max_in_flight = m->busy;
    }
    return b;
}

int sim_meter_init(struct sim_meter *m, const struct sim_config *cfg)
{
    memset(m, 0, sizeof *m);
    m->series = calloc(SIM_SERIES_SECONDS, sizeof *m->series);
    if (m->series == NULL || pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m->series);
        m->series = NULL;
        return -1;
    }
    for (int i = 0; i < SIM_SERIES_SECONDS; i++) {
        m->series[i].sec = -1;
    }
    m->start_us = clock_mono_us();
    m->capacity = cfg->nlp_capacity;
    memcpy(m->steps, cfg->schedule, sizeof m->steps);
    m->nsteps = cfg->nschedule;
    m->bucket.per_minute = cfg->nlp_tokens_per_minute;
    m->bucket.level = (double)cfg->nlp_tokens_per_minute;
    m->bucket.last_us = m->start_us;
    m->ready = true;
    return 0;
}

void sim_meter_free(struct sim_meter *m)
{
    if (!m->ready) {
        return;
    }
    pthread_mutex_destroy(&m->mu);
    free(m->series);
    m->series = NULL;
    m->ready = false;
}

int64_t sim_meter_admit(struct sim_meter *m, int64_t tokens, bool *over_tokens)
{
    int64_t now = clock_mono_us();
    pthread_mutex_lock(&m->mu);
    struct sim_second *b = meter_now(m, now);
    b->arrivals++;
    int64_t wait_s = 0;
    *over_tokens = false;
    if (m->busy >= m->capacity) {
        wait_s = 1;
        m->rejected_capacity++;
    } else {
        wait_s = sim_bucket_take(&m->bucket, now, tokens);
        if (wait_s > 0) {
            *over_tokens = true;
            m->rejected_tokens++;
        }
    }
    if (wait_s > 0) {
        b->rejected++;
    } else {
        m->busy++;
        b->admitted++;
        b->tokens += tokens;
        m->tokens_total += tokens;
        if (m->busy > b->max_in_flight) {
            b->max_in_flight = m->busy;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return wait_s;
}

void sim_meter_injected(struct sim_meter *m, int status)
{
    pthread_mutex_lock(&m->mu);
    struct sim_second *b = meter_now(m, clock_mono_us());
    b->arrivals++;
    if (status == 429) {
        b->rejected++;
    }
    pthread_mutex_unlock(&m->mu);
}

void sim_meter_leave(struct sim_meter *m, bool ok)
{
    int64_t now = clock_mono_us();
    pthread_mutex_lock(&m->mu);
    struct sim_second *b = meter_now(m, now);
    m->busy--;
    if (ok) {
        b->ok++;
    }
    pthread_mutex_unlock(&m->mu);
}

void sim_meter_set_capacity(struct sim_meter *m, int capacity)
{
    pthread_mutex_lock(&m->mu);
    struct sim_second *b = meter_now(m, clock_mono_us());
    log_info("nlp: capacity %d -> %d (admin)", m->capacity, capacity);
    m->capacity = capacity;
    if (capacity < b->capacity) {
        b->capacity = capacity;
    }
    pthread_mutex_unlock(&m->mu);
}

void sim_meter_sample(struct sim_meter *m)
{
    pthread_mutex_lock(&m->mu);
    meter_now(m, clock_mono_us());
    pthread_mutex_unlock(&m->mu);
}

void sim_meter_reset(struct sim_meter *m)
{
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < SIM_SERIES_SECONDS; i++) {
        m->series[i].sec = -1;
    }
    m->rejected_capacity = 0;
    m->rejected_tokens = 0;
    m->tokens_total = 0;
    pthread_mutex_unlock(&m->mu);
}

/* One second of the series as a JSON object, or NULL when out of memory. */
static json_t *second_json(const struct sim_second *b)
{
    return json_pack("{s:I, s:i, s:i, s:i, s:i, s:i, s:i, s:I}", "t", (json_int_t)b->sec,
                     "max_in_flight", b->max_in_flight, "capacity", b->capacity, "arrivals",
                     b->arrivals, "admitted", b->admitted, "rejected", b->rejected, "ok", b->ok,
                     "tokens", (json_int_t)b->tokens);
}

int sim_meter_json(struct sim_meter *m, json_t *o)
{
    json_t *series = json_array();
    if (series == NULL) {
        return -1;
    }
    pthread_mutex_lock(&m->mu);
    struct sim_second *cur = meter_now(m, clock_mono_us());
    int64_t first = cur->sec - (SIM_SERIES_SECONDS - 1);
    int rc = 0;
    for (int64_t s = first < 0 ? 0 : first; s <= cur->sec && rc == 0; s++) {
        const struct sim_second *b = &m->series[s % SIM_SERIES_SECONDS];
        if (b->sec == s) {
            rc = json_array_append_new(series, second_json(b));
        }
    }
    rc |= json_object_set_new(o, "capacity", json_integer(m->capacity));
    rc |= json_object_set_new(o, "rejected_capacity", json_integer(m->rejected_capacity));
    rc |= json_object_set_new(o, "rejected_tokens", json_integer(m->rejected_tokens));
    rc |= json_object_set_new(o, "tokens", json_integer(m->tokens_total));
    rc |= json_object_set_new(o, "tokens_per_minute", json_integer(m->bucket.per_minute));
    rc |=
        json_object_set_new(o, "seconds", json_real((double)(clock_mono_us() - m->start_us) / 1e6));
    pthread_mutex_unlock(&m->mu);
    rc |= json_object_set_new(o, "series", series);
    return rc == 0 ? 0 : -1;
}

static void *sampler_main(void *arg)
{
    struct sim *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->ctl_mu);
        bool quit = s->sampler_stop;
        if (!quit) {
            struct timespec dl = clock_deadline_ms(SAMPLE_MS);
            pthread_cond_timedwait(&s->sampler_cv, &s->ctl_mu, &dl);
            quit = s->sampler_stop;
        }
        pthread_mutex_unlock(&s->ctl_mu);
        if (quit) {
            return NULL;
        }
        sim_meter_sample(&s->meter);
    }
}

int sim_sampler_start(struct sim *s)
{
    s->sampler_stop = false;
    if (clock_cond_init(&s->sampler_cv) != 0) {
        return -1;
    }
    if (pthread_create(&s->sampler, NULL, sampler_main, s) != 0) {
        pthread_cond_destroy(&s->sampler_cv);
        return -1;
    }
    s->sampler_running = true;
    return 0;
}

void sim_sampler_stop(struct sim *s)
{
    if (!s->sampler_running) {
        return;
    }
    pthread_mutex_lock(&s->ctl_mu);
    s->sampler_stop = true;
    pthread_cond_broadcast(&s->sampler_cv);
    pthread_mutex_unlock(&s->ctl_mu);
    pthread_join(s->sampler, NULL);
    pthread_cond_destroy(&s->sampler_cv);
    s->sampler_running = false;
}
