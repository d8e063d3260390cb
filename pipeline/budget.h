/* The cluster's NLP budgets on this instance (llm.tokens_per_minute, llm.requests_per_minute):
 * a pool of tokens and requests granted from PostgreSQL (db/budget_db.h) by the lease thread,
 * spent by the NLP threads before each request.
 *
 * Why grants and not a request-by-request check: the NLP threads have no database connection
 * and send hundreds of requests a second. The lease thread takes a grant of about 1/20 of a
 * minute's budget at a time (at least what the request waiting for it needs); a grant is spent
 * within BUDGET_GRANT_TTL_MS of being asked for, or dropped (its rest stays counted). The
 * database grants only what the budget leaves over the last minute plus that TTL, every
 * instance's grants counted, so the tokens and requests spent over ANY minute never pass the
 * budget. A request reserves its transcript's bytes / 4 plus llm.completion_tokens (the §4
 * protocol reports no usage: the reservation stands; the OpenAI form's `usage` settles it). */
#ifndef COFI_BUDGET_H
#define COFI_BUDGET_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/error.h"

#define BUDGET_GRANT_TTL_MS 3000
#define BUDGET_WINDOW_MS    (60000 + BUDGET_GRANT_TTL_MS)
#define BUDGET_CHUNKS       20

struct nlp_budget;

/* A new budget (instance is copied). Returns 0 or -1 (memory). */
int budget_new(struct nlp_budget **out, const struct cofi_config *cfg, const char *instance);

/* Frees b. Accepts NULL. */
void budget_free(struct nlp_budget *b);

/* True when a token or request budget is configured. */
bool budget_enabled(const struct nlp_budget *b);

/* The reservation of a request whose transcript has `bytes` bytes. */
int64_t budget_estimate(const struct nlp_budget *b, size_t bytes);

/* Takes est tokens and one request from the pool. Returns true when taken; false when the pool
 * lacks them (the request waits and asks again): *wake is then true when the lease thread
 * should be asked for a grant now (at most every 250 ms). Any thread. */
bool budget_take(struct nlp_budget *b, int64_t est, uint64_t *grant, bool *wake);

/* Settles a request that took est tokens from grant `grant` once the API said it used `used`
 * (-1: unknown, the reservation stands): what it did not use goes back to the pool while that
 * grant is still the pool's; what it used beyond est is recorded as a grant of its own at the
 * next beat (the budget counts it, though it could not be held back). Any thread. */
void budget_settle(struct nlp_budget *b, int64_t est, uint64_t grant, long long used);

/* The lease beat's step: takes a new grant (replacing the pool) when a request waits for one.
 * Returns 0 or a negative status. Lease thread only. */
int budget_beat(struct nlp_budget *b, PGconn *c, struct cofi_err *err);

#endif
