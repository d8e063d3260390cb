/* SQL of the work queue: registration, leases, claims, the batched flush, batch completion. */
#include "db/work_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"

int work_register(PGconn *c, const char *instance, const char *host, int pid, struct cofi_err *err)
{
    char spid[16];
    snprintf(spid, sizeof spid, "%d", pid);
    const char *p[] = {instance, host, spid};
    int rc = db_command(c,
                        "INSERT INTO instances (id, hostname, pid) VALUES ($1, $2, $3::int) "
                        "ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, "
                        "pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now(), "
                        "in_flight = '{}'",
                        3, p, err);
    if (rc == 0) {
        rc = db_command(c, "DELETE FROM instance_shares WHERE instance = $1", 1, p, err);
    }
    if (rc != 0) {
        return rc;
    }
    return db_command(c,
                      "UPDATE calls SET status = 'pending', lease_owner = NULL "
                      "WHERE lease_owner = $1 AND status = 'running'",
                      1, p, err);
}

int work_heartbeat(PGconn *c, const char *instance, const char *host, int pid, bool *recreated,
                   struct cofi_err *err)
{
    char spid[16];
    snprintf(spid, sizeof spid, "%d", pid);
    const char *p[] = {instance, host, spid};
    /* An upsert: a row another instance removed as expired comes back with this beat, with
     * no NLP share (xmax = 0 tells an inserted row from an updated one). */
    PGresult *r = db_exec(c,
                          "INSERT INTO instances (id, hostname, pid) VALUES ($1, $2, $3::int) "
                          "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now() "
                          "RETURNING (xmax = 0)",
                          3, p, err);
    if (r == NULL) {
        return err->code;
    }
    *recreated = PQntuples(r) > 0 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return 0;
}

int work_recover_expired(PGconn *c, int lease_ms, long *recovered, struct cofi_err *err)
{
    char ms[16];
    snprintf(ms, sizeof ms, "%d", lease_ms);
    const char *p[] = {ms};
    PGresult *r = db_exec(c,
                          "WITH dead AS (DELETE FROM instances "
                          "  WHERE heartbeat_at < now() - make_interval(secs => $1::int / 1000.0) "
                          "  RETURNING id) "
                          "UPDATE calls SET status = 'pending', lease_owner = NULL "
                          "WHERE status = 'running' AND (lease_owner IN (SELECT id FROM dead) "
                          "  OR lease_owner NOT IN (SELECT id FROM instances))",
                          1, p, err);
    if (r == NULL) {
        return err->code;
    }
    *recovered = atol(PQcmdTuples(r));
    PQclear(r);
    return 0;
}

int work_unregister(PGconn *c, const char *instance, struct cofi_err *err)
{
    const char *p[] = {instance};
    int rc = db_command(c,
                        "UPDATE calls SET status = 'pending', lease_owner = NULL "
                        "WHERE lease_owner = $1 AND status = 'running'",
                        1, p, err);
    if (rc != 0) {
        return rc;
    }
    return db_command(c, "DELETE FROM instances WHERE id = $1", 1, p, err);
}

PGresult *work_active_batches(PGconn *c, struct cofi_err *err)
{
    /* Prepared, as is work_finish_batches: the dispatcher runs both after every flush. */
    return db_exec_prepared(
        c, "cofi_active_batches",
        "SELECT b.id, b.mode, b.state, p.cur, coalesce(p.med, 0), coalesce(p.llm, 0) "
        "FROM batches b LEFT JOIN LATERAL ("
        "  SELECT min(p.stage) FILTER (WHERE p.status IN ('pending', 'running')) AS cur, "
        "    sum(p.n) FILTER (WHERE p.status = 'pending' AND p.stage <= 4) AS med, "
        "    sum(p.n) FILTER (WHERE p.status = 'pending' AND p.stage BETWEEN 5 AND 6) "
        "      AS llm "
        "  FROM batch_progress p WHERE p.batch_id = b.id AND p.n > 0) p ON true "
        "WHERE b.state = 'running' OR (b.state = 'cancelled' AND b.finished_at IS NULL) "
        "ORDER BY b.id",
        0, NULL, err);
}

PGresult *work_finish_batches(PGconn *c, const char *ids, struct cofi_err *err)
{
    const char *p[] = {ids};
    return db_write_prepared(
        c, "cofi_finish_batches",
        "UPDATE batches b SET finished_at = now(), state = CASE "
        "  WHEN b.state = 'cancelled' THEN 'cancelled' "
        "  WHEN EXISTS (SELECT 1 FROM batch_progress p WHERE p.batch_id = b.id "
        "               AND p.status IN ('failed', 'cancelled') AND p.n > 0) "
        "    THEN 'completed_with_errors' "
        "  ELSE 'completed' END "
        "WHERE b.id = ANY($1::bigint[]) AND b.finished_at IS NULL "
        "  AND b.state IN ('running', 'cancelled') "
        "  AND NOT EXISTS (SELECT 1 FROM batch_progress p WHERE p.batch_id = b.id "
        "                  AND p.status IN ('pending', 'running') AND p.n > 0) "
        "RETURNING b.id, b.state",
        1, p, err);
}

PGresult *work_claim(PGconn *c, const char *instance, const char *spec, int limit,
                     const char *blocked_nodes, struct cofi_err *err)
{
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *p[] = {instance, spec, lim, blocked_nodes};
    /* The claimed rows are updated through the primary key (= ANY of an array), never by a
     * join the planner may turn into a scan of every call of every batch. The earlier results
     * come as json, not jsonb: cofid parses the text either way, and json_object_agg only
     * copies each result's text where jsonb_object_agg builds and sorts a new document
     * (300 calls with 5 results each: 7.0 against 8.7-9.9 ms, output included). A call at
     * an NLP stage (5, 6) needs only lid's, stt's and llm1's results (pipeline/llm.c): the GPU
     * stages' are left out. */
    return db_exec(
        c,
        "WITH b AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS b(id bigint, lo int, hi int)), "
        "cand AS (SELECT c.id FROM b, LATERAL ("
        "    SELECT c.id FROM calls c WHERE c.batch_id = b.id AND c.status = 'pending' "
        "      AND c.stage BETWEEN b.lo AND b.hi "
        "      AND (c.not_before IS NULL OR c.not_before <= now()) "
        "      AND (c.stage = 0 OR c.stage >= 5 OR c.node IS NULL "
        "           OR NOT (c.node = ANY($4::text[]))) "
        "    LIMIT $3::int FOR UPDATE SKIP LOCKED) c "
        "  LIMIT $3::int) "
        "UPDATE calls c SET status = 'running', lease_owner = $1, "
        "  stage_started_at = coalesce(c.stage_started_at, now()) "
        "WHERE c.id = ANY (ARRAY(SELECT id FROM cand)) "
        "RETURNING c.id, c.batch_id, c.stage, c.file, c.node, c.file_name, c.attempts, "
        "  (SELECT json_object_agg((ARRAY['distribute','denoise','ivr','lid','stt','llm1',"
        "'llm2'])[s.stage + 1], s.result) FROM call_stages s "
        "   WHERE s.call_id = c.id AND s.state = 'done' AND s.stage < c.stage "
        "     AND (c.stage < 5 OR s.stage >= 3))",
        4, p, err);
}

int work_flush_session(PGconn *c, struct cofi_err *err)
{
    return db_command(c, "SET plan_cache_mode = force_generic_plan", 0, NULL, err);
}

PGresult *work_flush(PGconn *c, const char *instance, const char *calls_json, const char *ids,
                     const char *stages_json, struct cofi_err *err)
{
    const char *p[] = {instance, calls_json, stages_json, ids};
    /* The calls are found through the primary key (= ANY $4): a join on the recordset alone
     * is planned as a scan of every call (3 ms at 10,000 calls, 60 ms at 200,000, per flush).
     * Prepared, and meant for a generic plan (work_flush_session): planning it for every
     * flush took 0.4-0.9 ms of the database's CPU, as much as running a flush of a few calls.
     * The status test is written so the planner can't match it to calls_running_idx's
     * predicate ("IS TRUE"): a generic plan made while statistics still say no call is
     * running would read every call the instance is running through that index (2,000
     * calls read for 30 written, measured), not 30 through the primary key. */
    return db_write_prepared(
        c, "cofi_flush",
        "WITH r AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS r(id bigint, stage smallint, "
        "    status text, attempts int, last_error text, node text, file_name text, "
        "    started_ms bigint)), "
        "u AS (UPDATE calls c SET stage = r.stage, "
        "    status = CASE WHEN b.state = 'cancelled' AND r.status IN ('pending', 'running') "
        "                  THEN 'cancelled' ELSE r.status END, "
        "    attempts = r.attempts, last_error = r.last_error, node = r.node, "
        "    file_name = r.file_name, not_before = NULL, "
        "    stage_started_at = to_timestamp(r.started_ms / 1000.0), "
        "    lease_owner = CASE WHEN r.status = 'running' AND b.state <> 'cancelled' "
        "                       THEN c.lease_owner END "
        "  FROM r, batches b "
        "  WHERE c.id = ANY ($4::bigint[]) AND c.id = r.id AND c.lease_owner = $1 "
        "    AND (c.status = 'running') IS TRUE "
        "    AND b.id = c.batch_id "
        "  RETURNING c.id, c.batch_id, c.status), "
        "s AS (INSERT INTO call_stages AS cs (call_id, stage, state, attempts, last_error, "
        "    started_at, finished_at, result) "
        "  SELECT x.call_id, x.stage, x.state, x.attempts, x.last_error, "
        "    to_timestamp(x.started_ms / 1000.0), to_timestamp(x.finished_ms / 1000.0), x.result "
        "  FROM jsonb_to_recordset($3::jsonb) AS x(call_id bigint, stage smallint, state text, "
        "    attempts int, last_error text, started_ms bigint, finished_ms bigint, result jsonb) "
        "  WHERE x.call_id IN (SELECT id FROM u) "
        "  ON CONFLICT (call_id, stage) DO UPDATE SET state = EXCLUDED.state, "
        "    attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, "
        "    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, "
        "    result = EXCLUDED.result) "
        "SELECT id, batch_id, status FROM u",
        4, p, err);
}

int work_publish_in_flight(PGconn *c, const char *instance, const char *json, struct cofi_err *err)
{
    const char *p[] = {instance, json};
    return db_command(c, "UPDATE instances SET in_flight = $2::jsonb WHERE id = $1", 2, p, err);
}

int work_negotiate_shares(PGconn *c, const char *instance, int lease_ms, struct work_share *res,
                          size_t n, struct cofi_err *err)
{
    char ms[16];
    snprintf(ms, sizeof ms, "%d", lease_ms);
    const char *p[] = {instance, ms};
    PGresult *r = db_exec(c,
                          "SELECT count(*), count(*) FILTER (WHERE id < $1) FROM instances "
                          "WHERE heartbeat_at >= now() - make_interval(secs => $2::int / 1000.0) "
                          "   OR id = $1",
                          2, p, err);
    if (r == NULL) {
        return err->code;
    }
    int live = atoi(PQgetvalue(r, 0, 0));
    int rank = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    if (live < 1) {
        live = 1;
    }
    bool grow = false;
    for (size_t i = 0; i < n; i++) {
        struct work_share *w = &res[i];
        w->target = w->total / live + (rank < w->total % live ? 1 : 0);
        if (w->target < w->share) {
            /* Shrink only what is not in use; the rest follows as requests end. */
            int next = w->in_flight > w->target ? w->in_flight : w->target;
            if (next < w->share) {
                char sv[16];
                snprintf(sv, sizeof sv, "%d", next);
                const char *q[] = {instance, w->resource, sv};
                int rc = db_command(c,
                                    "UPDATE instance_shares SET share = $3::int "
                                    "WHERE instance = $1 AND resource = $2",
                                    3, q, err);
                if (rc != 0) {
                    return rc;
                }
                w->share = next;
            }
        } else if (w->target > w->share) {
            grow = true;
        }
    }
    if (!grow) {
        return 0;
    }
    /* Growing takes what the others leave free, under a lock so two instances can't both
     * take the same free part. */
    int rc = db_command(c, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    rc = db_command(c, "LOCK TABLE instance_shares IN SHARE ROW EXCLUSIVE MODE", 0, NULL, err);
    PGresult *o = NULL;
    if (rc == 0) {
        o = db_exec(c,
                    "SELECT resource, sum(share) FROM instance_shares WHERE instance <> $1 "
                    "GROUP BY resource",
                    1, p, err);
        rc = o == NULL ? err->code : 0;
    }
    int granted[64];
    for (size_t i = 0; rc == 0 && i < n && i < 64; i++) {
        struct work_share *w = &res[i];
        granted[i] = w->share;
        if (w->target <= w->share) {
            continue;
        }
        int others = 0;
        for (int k = 0; k < PQntuples(o); k++) {
            if (strcmp(PQgetvalue(o, k, 0), w->resource) == 0) {
                others = atoi(PQgetvalue(o, k, 1));
            }
        }
        int next = w->total - others;
        if (next > w->target) {
            next = w->target;
        }
        if (next <= w->share) {
            continue;
        }
        char sv[16];
        snprintf(sv, sizeof sv, "%d", next);
        const char *q[] = {instance, w->resource, sv};
        rc = db_command(c,
                        "INSERT INTO instance_shares (instance, resource, share) "
                        "VALUES ($1, $2, $3::int) ON CONFLICT (instance, resource) "
                        "DO UPDATE SET share = EXCLUDED.share",
                        3, q, err);
        granted[i] = next;
    }
    PQclear(o);
    if (rc == 0) {
        rc = db_command(c, "COMMIT", 0, NULL, err);
    }
    if (rc != 0) {
        struct cofi_err ignore;
        db_command(c, "ROLLBACK", 0, NULL, &ignore);
        return rc;
    }
    for (size_t i = 0; i < n && i < 64; i++) {
        res[i].share = granted[i];
    }
    return 0;
}

int work_release(PGconn *c, const char *instance, const char *ids, struct cofi_err *err)
{
    const char *p[] = {instance, ids};
    /* Runs on the flusher's connection, whose plans are generic: "IS TRUE" as in work_flush. */
    return db_command(c,
                      "UPDATE calls SET status = 'pending', lease_owner = NULL "
                      "WHERE id = ANY($2::bigint[]) AND lease_owner = $1 "
                      "  AND (status = 'running') IS TRUE",
                      2, p, err);
}
