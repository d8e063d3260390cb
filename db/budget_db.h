/* The cluster's NLP budgets in PostgreSQL (migration 010, nlp_budget_grants): grants taken
 * under one lock so that what was granted within any window never passes the budget. */
#ifndef COFI_BUDGET_DB_H
#define COFI_BUDGET_DB_H

#include <libpq-fe.h>
#include <stdint.h>

#include "common/error.h"

/* A request for a grant, and what was granted. A budget of 0 is no budget: all is granted. */
struct budget_grant {
    int64_t want_tokens;
    int want_requests;
    int64_t tokens_per_window; /* 0 = no token budget */
    int requests_per_window;   /* 0 = no request budget */
    int window_ms;
    int64_t min_tokens; /* grant nothing unless at least this many tokens (and, with a request
                           budget, one request) are left: a part too small is no use */
    int64_t got_tokens;
    int got_requests;
};

/* Grants as much of what g wants as the budgets leave over the last window (every instance's
 * grants counted), records it and fills g->got_*. One transaction under an advisory lock, so
 * two instances never both take the same remainder; grants older than the window are
 * deleted. Returns 0 or a negative status (nothing granted). */
int budget_db_grant(PGconn *c, const char *instance, struct budget_grant *g, struct cofi_err *err);

#endif
