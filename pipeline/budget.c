/* The cluster's NLP budgets on this instance (see budget.h). */
#include "pipeline/budget.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "db/budget_db.h"

struct nlp_budget {
    const struct cofi_config *cfg;
    char instance[160];
    pthread_mutex_t mu; /* guards the pool */
    int64_t tokens;
    int requests;
    int64_t expires_mono; /* ms: the pool is spent by then, or dropped */
    int64_t need;         /* the largest reservation that found the pool short, 0 = none */
    uint64_t grant;       /* which grant the pool is (each new one counts up) */
    int64_t overrun;      /* tokens used beyond reservations, to record */
    atomic_llong woke_mono;
};

int budget_new(struct nlp_budget **out, const struct cofi_config *cfg, const char *instance)
{
    struct nlp_budget *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return -1;
    }
    b->cfg = cfg;
    snprintf(b->instance, sizeof b->instance, "%s", instance);
    pthread_mutex_init(&b->mu, NULL);
    *out = b;
    return 0;
}

void budget_free(struct nlp_budget *b)
{
    if (b != NULL) {
        pthread_mutex_destroy(&b->mu);
        free(b);
    }
}

bool budget_enabled(const struct nlp_budget *b)
{
    return b != NULL && (b->cfg->llm_tokens_per_minute > 0 || b->cfg->llm_requests_per_minute > 0);
}

int64_t budget_estimate(const struct nlp_budget *b, size_t bytes)
{
    int64_t est = (int64_t)(bytes / 4) + b->cfg->llm_completion_tokens;
    int64_t tpm = b->cfg->llm_tokens_per_minute;
    /* A request larger than the whole budget waits for all of it. */
    return tpm > 0 && est > tpm ? tpm : est;
}

bool budget_take(struct nlp_budget *b, int64_t est, uint64_t *grant, bool *wake)
{
    *wake = false;
    *grant = 0;
    if (!budget_enabled(b)) {
        return true;
    }
    const struct cofi_config *cfg = b->cfg;
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&b->mu);
    bool live = now < b->expires_mono;
    bool ok = live && (cfg->llm_tokens_per_minute == 0 || b->tokens >= est) &&
              (cfg->llm_requests_per_minute == 0 || b->requests >= 1);
    if (ok) {
        b->tokens -= est;
        b->requests -= 1;
        *grant = b->grant;
    } else if (est > b->need) {
        b->need = est;
    }
    pthread_mutex_unlock(&b->mu);
    if (!ok) {
        long long woke = atomic_load(&b->woke_mono);
        *wake = now - woke >= 250 &&
                atomic_compare_exchange_strong(&b->woke_mono, &woke, (long long)now);
    }
    return ok;
}

void budget_settle(struct nlp_budget *b, int64_t est, uint64_t grant, long long used)
{
    if (!budget_enabled(b) || used < 0 || b->cfg->llm_tokens_per_minute == 0) {
        return;
    }
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&b->mu);
    if (used > est) {
        b->overrun += used - est;
    } else if (grant == b->grant && now < b->expires_mono) {
        b->tokens += est - used;
    }
    pthread_mutex_unlock(&b->mu);
}

/* Records the tokens used beyond reservations as a grant of their own. */
static int record_overrun(struct nlp_budget *b, PGconn *c, struct cofi_err *err)
{
    pthread_mutex_lock(&b->mu);
    int64_t over = b->overrun;
    b->overrun = 0;
    pthread_mutex_unlock(&b->mu);
    if (over == 0) {
        return 0;
    }
    struct budget_grant g = {.want_tokens = over, .window_ms = BUDGET_WINDOW_MS};
    int rc = budget_db_grant(c, b->instance, &g, err);
    if (rc != 0) {
        pthread_mutex_lock(&b->mu);
        b->overrun += over;
        pthread_mutex_unlock(&b->mu);
    }
    return rc;
}

int budget_beat(struct nlp_budget *b, PGconn *c, struct cofi_err *err)
{
    if (!budget_enabled(b)) {
        return 0;
    }
    int orc = record_overrun(b, c, err);
    if (orc != 0) {
        return orc;
    }
    const struct cofi_config *cfg = b->cfg;
    int64_t chunk_t = cfg->llm_tokens_per_minute / BUDGET_CHUNKS;
    int chunk_r = cfg->llm_requests_per_minute / BUDGET_CHUNKS;
    int64_t asked = clock_mono_ms();
    pthread_mutex_lock(&b->mu);
    int64_t need = b->need;
    pthread_mutex_unlock(&b->mu);
    if (need == 0) {
        return 0; /* grants only for requests that wait: an idle instance takes none */
    }
    struct budget_grant g = {
        .want_tokens = cfg->llm_tokens_per_minute > 0 ? (chunk_t > need ? chunk_t : need) : 0,
        .want_requests = cfg->llm_requests_per_minute > 0 ? (chunk_r > 1 ? chunk_r : 1) : 0,
        .tokens_per_window = cfg->llm_tokens_per_minute,
        .requests_per_window = cfg->llm_requests_per_minute,
        .window_ms = BUDGET_WINDOW_MS,
        .min_tokens = cfg->llm_tokens_per_minute > 0 ? (need > 0 ? need : 1) : 0,
    };
    int rc = budget_db_grant(c, b->instance, &g, err);
    if (rc != 0 || (g.got_tokens == 0 && g.got_requests == 0)) {
        return rc; /* nothing left this minute: the pool keeps what it has until it expires */
    }
    /* The old pool is dropped, never stretched: each grant is spent within its TTL of being
     * asked for (its database time is later still). */
    pthread_mutex_lock(&b->mu);
    b->tokens = g.got_tokens;
    b->requests = g.got_requests;
    b->expires_mono = asked + BUDGET_GRANT_TTL_MS;
    b->need = 0;
    b->grant++;
    pthread_mutex_unlock(&b->mu);
    return 0;
}
