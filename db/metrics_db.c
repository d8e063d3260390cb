/* SQL of GET /metrics; parameterless, prepared. */
#include "db/metrics_db.h"

#include <stdlib.h>
#include <string.h>

#include "db/db.h"

const char *const metrics_db_state_names[METRICS_DB_STATES] = {
    "created", "running", "paused", "completed", "completed_with_errors", "cancelled"};

#define SQL_METRICS                                                                                \
    "SELECT 'b', b.state, count(*)::bigint FROM batches b GROUP BY b.state "                       \
    "UNION ALL "                                                                                   \
    "SELECT 'q', p.stage::text, sum(p.n)::bigint FROM batch_progress p "                           \
    "JOIN batches b ON b.id = p.batch_id AND b.state = 'running' "                                 \
    "WHERE p.status = 'pending' AND p.n > 0 GROUP BY p.stage"

int metrics_db_figures(PGconn *conn, struct metrics_db_figures *out, struct cofi_err *err)
{
    PGresult *r = db_exec_prepared(conn, "cofi_metrics", SQL_METRICS, 0, NULL, err);
    if (r == NULL) {
        return err->code;
    }
    struct metrics_db_figures f;
    memset(&f, 0, sizeof f);
    for (int i = 0; i < PQntuples(r); i++) {
        const char *key = PQgetvalue(r, i, 1);
        int64_t n = strtoll(PQgetvalue(r, i, 2), NULL, 10);
        if (PQgetvalue(r, i, 0)[0] == 'q') {
            int stage = atoi(key);
            if (stage >= 0 && stage < STAGE_COUNT) {
                f.pending[stage] = n;
            }
            continue;
        }
        for (int k = 0; k < METRICS_DB_STATES; k++) {
            if (strcmp(key, metrics_db_state_names[k]) == 0) {
                f.batches[k] = n;
            }
        }
    }
    PQclear(r);
    *out = f;
    return 0;
}
