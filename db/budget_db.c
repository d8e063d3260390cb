/* The cluster's NLP budgets in PostgreSQL (see budget_db.h). */
#include "db/budget_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "db/db.h"

/* An arbitrary constant: the advisory lock that serialises grants across instances. */
#define BUDGET_LOCK "7385021964"

/* The grant statement, under the lock: what is left of each budget over the window, capped by
 * what is wanted ($2 tokens, $3 requests; $4, $5 the budgets, 0 = none; $6 the window), and
 * nothing at all unless $7 tokens and a request are left. */
static const char grant_sql[] =
    "WITH used AS (SELECT coalesce(sum(tokens), 0) AS t, coalesce(sum(requests), 0) AS r"
    " FROM nlp_budget_grants"
    " WHERE at >= clock_timestamp() - $6::int * interval '1 millisecond'),"
    " g AS (SELECT CASE WHEN $4::bigint = 0 THEN $2::bigint"
    " ELSE least($2::bigint, greatest(0, $4::bigint - used.t)) END AS t,"
    " CASE WHEN $5::int = 0 THEN $3::int"
    " ELSE least($3::int, greatest(0, $5::int - used.r))::int END AS r FROM used) "
    "INSERT INTO nlp_budget_grants (instance, tokens, requests) "
    "SELECT $1, g.t, g.r FROM g"
    " WHERE g.t >= $7::bigint AND ($5::int = 0 OR $3::int = 0 OR g.r >= 1) "
    "RETURNING tokens, requests";

int budget_db_grant(PGconn *c, const char *instance, struct budget_grant *g, struct cofi_err *err)
{
    char wt[24];
    char wr[16];
    char bt[24];
    char br[16];
    char win[16];
    char mint[24];
    snprintf(mint, sizeof mint, "%" PRId64, g->min_tokens);
    snprintf(wt, sizeof wt, "%" PRId64, g->want_tokens);
    snprintf(wr, sizeof wr, "%d", g->want_requests);
    snprintf(bt, sizeof bt, "%" PRId64, g->tokens_per_window);
    snprintf(br, sizeof br, "%d", g->requests_per_window);
    snprintf(win, sizeof win, "%d", g->window_ms);
    g->got_tokens = 0;
    g->got_requests = 0;
    int rc = db_command(c, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    const char *lock[] = {BUDGET_LOCK};
    rc = db_command(c, "SELECT pg_advisory_xact_lock($1::bigint)", 1, lock, err);
    const char *old[] = {win};
    if (rc == 0) {
        rc = db_command(c,
                        "DELETE FROM nlp_budget_grants"
                        " WHERE at < clock_timestamp() - $1::int * interval '1 millisecond'",
                        1, old, err);
    }
    const char *p[] = {instance, wt, wr, bt, br, win, mint};
    PGresult *r = rc == 0 ? db_exec(c, grant_sql, 7, p, err) : NULL;
    if (r == NULL && rc == 0) {
        rc = err->code;
    }
    if (rc == 0) {
        if (PQntuples(r) == 1) {
            g->got_tokens = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            g->got_requests = atoi(PQgetvalue(r, 0, 1));
        }
        rc = db_command(c, "COMMIT", 0, NULL, err);
    } else {
        PQclear(PQexec(c, "ROLLBACK"));
    }
    PQclear(r);
    if (rc != 0) {
        g->got_tokens = 0;
        g->got_requests = 0;
    }
    return rc;
}
