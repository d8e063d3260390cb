/* SQL of the stage resource; every statement is parameterised. */
#include "db/stages_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"

/* Rows "p" (stage, status, n) from stage_progress (over all batches: the sums of
 * batch_progress the triggers of migration 008 keep), and one row "i" with the in-flight sum of
 * the other live instances. Progress rows of stages before $1 only ever count as pending or
 * skipped there, which the stage status does not report: they are left out. */
#define SQL_IN_FLIGHT                                                                              \
    "SELECT 'i', NULL::smallint, NULL::text, "                                                     \
    "coalesce(sum((i.in_flight ->> $2::text)::bigint), 0)::bigint FROM instances i "               \
    "WHERE i.id IS DISTINCT FROM $3::text "                                                        \
    "AND i.heartbeat_at >= now() - make_interval(secs => $4::integer / 1000.0)"

#define SQL_FIGURES_ALL                                                                            \
    "SELECT 'p', p.stage, p.status, p.n FROM stage_progress p "                                    \
    "WHERE p.stage >= $1::smallint AND p.n <> 0 "                                                  \
    "UNION ALL " SQL_IN_FLIGHT

/* For one batch: a row "b" per progress row of the batch (stage NULL when it has none), so
 * no "b" row means no such batch. */
#define SQL_FIGURES_BATCH                                                                          \
    "SELECT 'b', p.stage, p.status, p.n FROM batches b LEFT JOIN batch_progress p "                \
    "ON p.batch_id = b.id AND p.stage >= $1::smallint AND p.n <> 0 WHERE b.id = $5::bigint "       \
    "UNION ALL " SQL_IN_FLIGHT

int stages_db_figures(PGconn *conn, int stage, int64_t batch_id, const char *instance_id,
                      int lease_ms, struct stage_figures *out, struct cofi_err *err)
{
    char stage_text[8];
    char lease_text[16];
    char id_text[24];
    snprintf(stage_text, sizeof stage_text, "%d", stage);
    snprintf(lease_text, sizeof lease_text, "%d", lease_ms);
    snprintf(id_text, sizeof id_text, "%" PRId64, batch_id);
    const char *params[5] = {stage_text, stage_name(stage), instance_id, lease_text, id_text};
    PGresult *r =
        batch_id == 0
            ? db_exec_prepared(conn, "cofi_stage_all", SQL_FIGURES_ALL, 4, params, err)
            : db_exec_prepared(conn, "cofi_stage_batch", SQL_FIGURES_BATCH, 5, params, err);
    if (r == NULL) {
        return err->code;
    }
    struct stage_counts all[STAGE_COUNT];
    memset(all, 0, sizeof all);
    struct stage_figures f;
    memset(&f, 0, sizeof f);
    bool batch_seen = false;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *kind = PQgetvalue(r, i, 0);
        int64_t n = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        if (kind[0] == 'i') {
            f.others_in_flight = n;
            continue;
        }
        batch_seen = true;
        if (PQgetisnull(r, i, 1)) {
            continue;
        }
        int cs = atoi(PQgetvalue(r, i, 1));
        int st = call_status_from_name(PQgetvalue(r, i, 2));
        stage_counts_add(all, cs, st, n);
        if (cs == stage && st == CALL_PENDING) {
            f.pending += n;
        } else if (cs == stage && st == CALL_RUNNING) {
            f.running += n;
        }
    }
    PQclear(r);
    if (batch_id != 0 && !batch_seen) {
        return cofi_err_set(err, COFI_E_NOT_FOUND, "no batch %s", id_text);
    }
    f.counts = all[stage];
    *out = f;
    return 0;
}
