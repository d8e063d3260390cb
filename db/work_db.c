/* SQL of the work queue: registration, leases, fenced claims, the batched flush, shares. */
#include "db/work_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/db.h"
#include "db/webhooks_db.h"

/* A copy of a result field, or NULL for SQL NULL (and when memory runs out: callers check
 * the fields they need). */
static char *field_dup(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col)) {
        return NULL;
    }
    return strdup(PQgetvalue(r, row, col));
}

int work_register(PGconn *c, const char *instance, const char *host, int pid, struct cofi_err *err)
{
    char spid[16];
    snprintf(spid, sizeof spid, "%d", pid);
    const char *p[] = {instance, host, spid};
    int rc = db_command(c,
                        "INSERT INTO instances (id, hostname, pid, heartbeat_at) "
                        "VALUES ($1, $2, $3::int, clock_timestamp()) "
                        "ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, "
                        "pid = EXCLUDED.pid, started_at = now(), heartbeat_at = clock_timestamp(), "
                        "in_flight = '{}'",
                        3, p, err);
    if (rc == 0) {
        rc = db_command(c, "DELETE FROM instance_shares WHERE instance = $1", 1, p, err);
    }
    if (rc == 0) {
        rc = db_command(
            c,
            "UPDATE calls SET status = 'pending', lease_owner = NULL, claim_token = NULL "
            "WHERE lease_owner = $1 AND status = 'running'",
            1, p, err);
    }
    if (rc != 0) {
        return rc;
    }
    /* Calls of an owner that has no row (left by a version before fenced claims): once, at
     * start-up, not on every heartbeat. */
    return db_command(
        c,
        "UPDATE calls c SET status = 'pending', lease_owner = NULL, claim_token = NULL "
        "WHERE c.status = 'running' AND c.lease_owner IS NOT NULL "
        "  AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = c.lease_owner)",
        0, NULL, err);
}

int work_heartbeat(PGconn *c, const char *instance, const char *host, int pid, bool *lost,
                   struct cofi_err *err)
{
    char spid[16];
    snprintf(spid, sizeof spid, "%d", pid);
    const char *p[] = {instance, host, spid};
    /* An upsert: a row another instance removed as expired comes back with this beat
     * (xmax = 0 tells an inserted row from an updated one). */
    PGresult *r = db_exec(c,
                          "INSERT INTO instances (id, hostname, pid, heartbeat_at) "
                          "VALUES ($1, $2, $3::int, clock_timestamp()) "
                          "ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp() "
                          "RETURNING (xmax = 0)",
                          3, p, err);
    if (r == NULL) {
        return err->code;
    }
    *lost = PQntuples(r) > 0 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!*lost) {
        return 0;
    }
    /* The shares held for it while it was thought dead are its own again. */
    return db_command(c, "UPDATE instance_shares SET held_until = NULL WHERE instance = $1", 1, p,
                      err);
}

int work_recover_expired(PGconn *c, const char *instance, int lease_ms, int hold_ms,
                         long *recovered, struct cofi_err *err)
{
    char ms[16];
    char hold[16];
    snprintf(ms, sizeof ms, "%d", lease_ms);
    snprintf(hold, sizeof hold, "%d", hold_ms);
    const char *p[] = {instance, ms, hold};
    *recovered = 0;
    /* Runs on every heartbeat: when no instance expired (nearly always) it reads the few rows
     * of instances and nothing else. */
    PGresult *r = db_exec_prepared(
        c, "cofi_expired_any",
        "SELECT EXISTS (SELECT 1 FROM instances WHERE id <> $1 "
        "  AND heartbeat_at < clock_timestamp() - make_interval(secs => $2::int / 1000.0))",
        2, p, err);
    if (r == NULL) {
        return err->code;
    }
    bool any = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!any) {
        return 0;
    }
    /* Then only the calls the expired instances held, through calls_running_idx (lease_owner
     * = ANY of the array of their ids), not a join over every running call. */
    r = db_exec(
        c,
        "WITH dead AS (DELETE FROM instances "
        "  WHERE id <> $1 "
        "    AND heartbeat_at < clock_timestamp() - make_interval(secs => $2::int / 1000.0) "
        "  RETURNING id), "
        "held AS (UPDATE instance_shares "
        "  SET held_until = clock_timestamp() + make_interval(secs => $3::int / 1000.0) "
        "  WHERE instance IN (SELECT id FROM dead)) "
        "UPDATE calls SET status = 'pending', lease_owner = NULL, claim_token = NULL "
        "WHERE status = 'running' AND lease_owner = ANY (ARRAY(SELECT id FROM dead))",
        3, p, err);
    if (r == NULL) {
        return err->code;
    }
    *recovered = atol(PQcmdTuples(r));
    PQclear(r);
    return 0;
}

int work_publish_in_flight(PGconn *c, const char *instance, const char *json, struct cofi_err *err)
{
    const char *p[] = {instance, json};
    return db_command(c, "UPDATE instances SET in_flight = $2::jsonb WHERE id = $1", 2, p, err);
}

static void share_view_clear(struct work_share_view *v)
{
    for (size_t i = 0; i < v->nres; i++) {
        free(v->resource[i]);
    }
    free(v->resource);
    free(v->others);
    memset(v, 0, sizeof *v);
}

/* Reads the live instances, this one's rank and the others' shares into v. */
static int share_view_read(PGconn *c, const char *instance, int lease_ms, struct work_share_view *v,
                           struct cofi_err *err)
{
    char ms[16];
    snprintf(ms, sizeof ms, "%d", lease_ms);
    const char *p[] = {instance, ms};
    PGresult *r = db_exec(c,
                          "SELECT count(*), count(*) FILTER (WHERE id < $1) FROM instances "
                          "WHERE heartbeat_at >= clock_timestamp() - "
                          "  make_interval(secs => $2::int / 1000.0) OR id = $1",
                          2, p, err);
    if (r == NULL) {
        return err->code;
    }
    v->live = atoi(PQgetvalue(r, 0, 0));
    v->rank = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    r = db_exec(c,
                "SELECT resource, sum(share)::int FROM instance_shares WHERE instance <> $1 "
                "GROUP BY resource",
                1, p, err);
    if (r == NULL) {
        return err->code;
    }
    int n = PQntuples(r);
    v->resource = calloc((size_t)n + 1, sizeof *v->resource);
    v->others = calloc((size_t)n + 1, sizeof *v->others);
    if (v->resource == NULL || v->others == NULL) {
        PQclear(r);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        v->resource[i] = strdup(PQgetvalue(r, i, 0));
        v->others[i] = atoi(PQgetvalue(r, i, 1));
        v->nres++;
        if (v->resource[i] == NULL) {
            PQclear(r);
            return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
        }
    }
    PQclear(r);
    return 0;
}

int work_shares_begin(PGconn *c, const char *instance, int lease_ms, struct work_share_view *v,
                      struct cofi_err *err)
{
    memset(v, 0, sizeof *v);
    int rc = db_command(c, "BEGIN", 0, NULL, err);
    if (rc != 0) {
        return rc;
    }
    /* One negotiation at a time: two instances can't both take the same free part. */
    rc = db_command(c, "LOCK TABLE instance_shares IN SHARE ROW EXCLUSIVE MODE", 0, NULL, err);
    if (rc == 0) {
        rc = db_command(c,
                        "DELETE FROM instance_shares s WHERE (s.held_until IS NULL "
                        "  OR s.held_until < clock_timestamp()) "
                        "  AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = s.instance)",
                        0, NULL, err);
    }
    if (rc == 0) {
        rc = share_view_read(c, instance, lease_ms, v, err);
    }
    if (rc != 0) {
        struct cofi_err ignore;
        db_command(c, "ROLLBACK", 0, NULL, &ignore);
        share_view_clear(v);
    }
    return rc;
}

int work_share_others(const struct work_share_view *v, const char *resource)
{
    for (size_t i = 0; i < v->nres; i++) {
        if (strcmp(v->resource[i], resource) == 0) {
            return v->others[i];
        }
    }
    return 0;
}

int work_share_set(PGconn *c, const char *instance, const char *resource, int share,
                   struct cofi_err *err)
{
    char sv[16];
    snprintf(sv, sizeof sv, "%d", share);
    const char *q[] = {instance, resource, sv};
    return db_command(c,
                      "INSERT INTO instance_shares (instance, resource, share) "
                      "VALUES ($1, $2, $3::int) ON CONFLICT (instance, resource) "
                      "DO UPDATE SET share = EXCLUDED.share, held_until = NULL",
                      3, q, err);
}

int work_shares_end(PGconn *c, bool commit, struct work_share_view *v, struct cofi_err *err)
{
    share_view_clear(v);
    int rc = commit ? db_command(c, "COMMIT", 0, NULL, err) : -1;
    if (rc != 0) {
        struct cofi_err ignore;
        db_command(c, "ROLLBACK", 0, NULL, &ignore);
    }
    return commit ? rc : 0;
}

void work_claimed_free(struct work_claimed *v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++) {
        free(v[i].file);
        free(v[i].node);
        free(v[i].file_name);
        free(v[i].prev);
    }
    free(v);
}

int work_claim(PGconn *c, const char *instance, const char *spec, int limit,
               const char *blocked_nodes, struct work_claimed **out, size_t *n,
               struct cofi_err *err)
{
    *out = NULL;
    *n = 0;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *p[] = {instance, spec, lim, blocked_nodes};
    /* The claimed rows are updated through the primary key (= ANY of an array), never by a
     * join the planner may turn into a scan of every call of every batch. The earlier results
     * come as json, not jsonb: cofid parses the text either way, and json_object_agg only
     * copies each result's text where jsonb_object_agg builds and sorts a new document
     * (300 calls with 5 results each: 7.0 against 8.7-9.9 ms, output included). A call at
     * an NLP stage (5, 6) needs only lid's, stt's and llm1's results (pipeline/llm.c): the GPU
     * stages' are left out. Every call claimed gets a fencing token of its own. */
    PGresult *r =
        db_exec(c,
                "WITH b AS (SELECT * FROM jsonb_to_recordset($2::jsonb) "
                "  AS b(id bigint, lo int, hi int, lim int)), "
                "blocked AS (SELECT ARRAY(SELECT jsonb_array_elements_text($4::jsonb)) AS ids), "
                "cand AS (SELECT c.id FROM b, blocked, LATERAL ("
                "    SELECT c.id FROM calls c WHERE c.batch_id = b.id AND c.status = 'pending' "
                "      AND c.stage BETWEEN b.lo AND b.hi "
                "      AND (c.not_before IS NULL OR c.not_before <= now()) "
                "      AND (c.stage = 0 OR c.stage >= 5 OR c.node IS NULL "
                "           OR NOT (c.node = ANY (blocked.ids))) "
                "    LIMIT least(b.lim, $3::int) FOR UPDATE SKIP LOCKED) c "
                "  LIMIT $3::int) "
                "UPDATE calls c SET status = 'running', lease_owner = $1, "
                "  claim_token = nextval('claim_token_seq'), "
                "  stage_started_at = coalesce(c.stage_started_at, now()) "
                "WHERE c.id = ANY (ARRAY(SELECT id FROM cand)) "
                "RETURNING c.id, c.batch_id, c.stage, c.file, c.node, c.file_name, c.attempts, "
                "  c.claim_token, "
                "  (SELECT json_object_agg((ARRAY['distribute','denoise','ivr','lid','stt','llm1',"
                "'llm2'])[s.stage + 1], s.result) FROM call_stages s "
                "   WHERE s.call_id = c.id AND s.state = 'done' AND s.stage < c.stage "
                "     AND (c.stage < 5 OR s.stage >= 3))",
                4, p, err);
    if (r == NULL) {
        return err->code;
    }
    int rows = PQntuples(r);
    if (rows == 0) {
        PQclear(r);
        return 0;
    }
    struct work_claimed *v = calloc((size_t)rows, sizeof *v);
    if (v == NULL) {
        PQclear(r);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory: %d calls claimed", rows);
    }
    for (int i = 0; i < rows; i++) {
        v[i].id = atoll(PQgetvalue(r, i, 0));
        v[i].batch_id = atoll(PQgetvalue(r, i, 1));
        v[i].stage = atoi(PQgetvalue(r, i, 2));
        v[i].file = field_dup(r, i, 3);
        v[i].node = field_dup(r, i, 4);
        v[i].file_name = field_dup(r, i, 5);
        v[i].attempts = atoi(PQgetvalue(r, i, 6));
        v[i].token = atoll(PQgetvalue(r, i, 7));
        v[i].prev = field_dup(r, i, 8);
    }
    PQclear(r);
    *out = v;
    *n = (size_t)rows;
    return 0;
}

int work_active_batches(PGconn *c, struct work_batch **out, size_t *n, struct cofi_err *err)
{
    *out = NULL;
    *n = 0;
    /* Prepared, as is work_finish_batches: the dispatcher runs both after every flush. */
    PGresult *r = db_exec_prepared(
        c, "cofi_active_batches",
        "SELECT b.id, b.mode, b.state, p.cur, coalesce(p.med, 0), coalesce(p.llm, 0), "
        "  b.priority "
        "FROM batches b LEFT JOIN LATERAL ("
        "  SELECT min(p.stage) FILTER (WHERE p.status IN ('pending', 'running')) AS cur, "
        "    sum(p.n) FILTER (WHERE p.status = 'pending' AND p.stage <= 4) AS med, "
        "    sum(p.n) FILTER (WHERE p.status = 'pending' AND p.stage BETWEEN 5 AND 6) "
        "      AS llm "
        "  FROM batch_progress p WHERE p.batch_id = b.id AND p.n > 0) p ON true "
        "WHERE b.state = 'running' OR (b.state = 'cancelled' AND b.finished_at IS NULL) "
        "ORDER BY b.id",
        0, NULL, err);
    if (r == NULL) {
        return err->code;
    }
    int rows = PQntuples(r);
    struct work_batch *v = calloc((size_t)rows + 1, sizeof *v);
    if (v == NULL) {
        PQclear(r);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < rows; i++) {
        v[i].id = atoll(PQgetvalue(r, i, 0));
        v[i].staged = strcmp(PQgetvalue(r, i, 1), "staged") == 0;
        v[i].cancelled = strcmp(PQgetvalue(r, i, 2), "cancelled") == 0;
        v[i].cur_stage = PQgetisnull(r, i, 3) ? -1 : atoi(PQgetvalue(r, i, 3));
        v[i].pending_med = atoll(PQgetvalue(r, i, 4));
        v[i].pending_llm = atoll(PQgetvalue(r, i, 5));
        v[i].priority = atoi(PQgetvalue(r, i, 6));
    }
    PQclear(r);
    *out = v;
    *n = (size_t)rows;
    return 0;
}

int work_finish_batches(PGconn *c, const char *ids, struct work_finished **out, size_t *n,
                        struct cofi_err *err)
{
    *out = NULL;
    *n = 0;
    const char *p[] = {ids};
    /* stray: a call left pending in a cancelled batch (a worker's outcome or a release that
     * read the batch's state just before the cancel committed) is cancelled here, or nothing
     * would ever claim it and its batch would never end. The batch ends at the next pass: the
     * main statement does not see what its WITH part changed. f: the batches that end, and q
     * their webhook deliveries: one statement, one commit. */
    PGresult *r = db_write_prepared(
        c, "cofi_finish_batches",
        "WITH stray AS (UPDATE calls k SET status = 'cancelled' FROM batches x "
        "  WHERE x.id = ANY($1::bigint[]) AND x.state = 'cancelled' AND x.finished_at IS NULL "
        "    AND k.batch_id = x.id AND k.status = 'pending' RETURNING k.id), "
        "f AS (UPDATE batches b SET finished_at = now(), state = CASE "
        "  WHEN b.state = 'cancelled' THEN 'cancelled' "
        "  WHEN EXISTS (SELECT 1 FROM batch_progress p WHERE p.batch_id = b.id "
        "               AND p.status IN ('failed', 'cancelled') AND p.n > 0) "
        "    THEN 'completed_with_errors' "
        "  ELSE 'completed' END "
        "WHERE b.id = ANY($1::bigint[]) AND b.finished_at IS NULL "
        "  AND b.state IN ('running', 'cancelled') "
        "  AND NOT EXISTS (SELECT 1 FROM batch_progress p WHERE p.batch_id = b.id "
        "                  AND p.status IN ('pending', 'running') AND p.n > 0) "
        "RETURNING b.id, b.state, b.callback_url), "
        "q AS (" WEBHOOKS_DB_QUEUE_FROM("f") ") "
                                             "SELECT id, state FROM f",
        1, p, err);
    if (r == NULL) {
        return err->code;
    }
    int rows = PQntuples(r);
    struct work_finished *v = calloc((size_t)rows + 1, sizeof *v);
    if (v == NULL) {
        PQclear(r);
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < rows; i++) {
        v[i].id = atoll(PQgetvalue(r, i, 0));
        snprintf(v[i].state, sizeof v[i].state, "%s", PQgetvalue(r, i, 1));
    }
    PQclear(r);
    *out = v;
    *n = (size_t)rows;
    return 0;
}

int work_flush_session(PGconn *c, struct cofi_err *err)
{
    return db_command(c, "SET plan_cache_mode = force_generic_plan", 0, NULL, err);
}

int work_flush(PGconn *c, const char *instance, const char *calls_json, const char *ids,
               const char *stages_json, struct work_written **out, size_t *n, struct cofi_err *err)
{
    *out = NULL;
    *n = 0;
    const char *p[] = {instance, calls_json, stages_json, ids};
    /* The calls are found through the primary key (= ANY $4): a join on the recordset alone
     * is planned as a scan of every call (3 ms at 10,000 calls, 60 ms at 200,000, per flush).
     * Prepared, and meant for a generic plan (work_flush_session): planning it for every
     * flush took 0.4-0.9 ms of the database's CPU, as much as running a flush of a few calls.
     * The status test is written so the planner can't match it to calls_running_idx's
     * predicate ("IS TRUE"): a generic plan made while statistics still say no call is
     * running would read every call the instance is running through that index (2,000
     * calls read for 30 written, measured), not 30 through the primary key.
     * The fence: a call is written only while this instance holds it under the record's
     * claim token. */
    PGresult *r = db_write_prepared(
        c, "cofi_flush_fenced",
        "WITH r AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS r(id bigint, token bigint, "
        "    stage smallint, status text, attempts int, last_error text, node text, "
        "    file_name text, started_ms bigint, retry_at_ms bigint)), "
        "u AS (UPDATE calls c SET stage = r.stage, "
        "    status = CASE WHEN b.state = 'cancelled' AND r.status IN ('pending', 'running') "
        "                  THEN 'cancelled' "
        "                  WHEN b.state = 'paused' AND r.status = 'running' THEN 'pending' "
        "                  ELSE r.status END, "
        "    attempts = r.attempts, last_error = r.last_error, node = r.node, "
        "    file_name = r.file_name, not_before = to_timestamp(r.retry_at_ms / 1000.0), "
        "    stage_started_at = to_timestamp(r.started_ms / 1000.0), "
        "    lease_owner = CASE WHEN r.status = 'running' "
        "                       AND b.state NOT IN ('cancelled', 'paused') "
        "                       THEN c.lease_owner END, "
        "    claim_token = CASE WHEN r.status = 'running' "
        "                       AND b.state NOT IN ('cancelled', 'paused') "
        "                       THEN c.claim_token END "
        "  FROM r, batches b "
        "  WHERE c.id = ANY ($4::bigint[]) AND c.id = r.id AND c.lease_owner = $1 "
        "    AND c.claim_token = r.token "
        "    AND (c.status = 'running') IS TRUE "
        "    AND b.id = c.batch_id "
        "  RETURNING c.id, c.status), "
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
        "SELECT id, status FROM u",
        4, p, err);
    if (r == NULL) {
        return err->code;
    }
    int rows = PQntuples(r);
    struct work_written *v = calloc((size_t)rows + 1, sizeof *v);
    if (v == NULL) {
        PQclear(r);
        /* Written and committed: only the list is lost. The calls' jobs are not continued
         * (their next stage waits for a claim once released with the instance's claims). */
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory reading a flush's result");
    }
    for (int i = 0; i < rows; i++) {
        v[i].id = atoll(PQgetvalue(r, i, 0));
        v[i].running = strcmp(PQgetvalue(r, i, 1), "running") == 0;
    }
    PQclear(r);
    *out = v;
    *n = (size_t)rows;
    return 0;
}

int work_release(PGconn *c, const char *instance, const char *claims, struct cofi_err *err)
{
    const char *p[] = {instance, claims};
    /* Runs on the flusher's connection, whose plans are generic: "IS TRUE" as in work_flush,
     * and the calls found through the primary key. A call of a cancelled batch is cancelled,
     * not pending: nothing would ever claim it, and its batch would never end. The batch rows
     * are read FOR SHARE, so a cancel in progress is waited for (and a cancel that comes later
     * sees these calls pending and cancels them itself). */
    return db_command(
        c,
        "WITH r AS (SELECT * FROM jsonb_to_recordset($2::jsonb) "
        "  AS r(id bigint, token bigint)), "
        "b AS (SELECT b.id, b.state FROM batches b WHERE b.id IN "
        "  (SELECT k.batch_id FROM calls k WHERE k.id = ANY (ARRAY(SELECT id FROM r))) "
        "  FOR SHARE OF b) "
        "UPDATE calls c SET lease_owner = NULL, claim_token = NULL, "
        "  status = CASE WHEN b.state = 'cancelled' THEN 'cancelled' "
        "           ELSE 'pending' END "
        "FROM r, b WHERE c.id = ANY (ARRAY(SELECT id FROM r)) AND c.id = r.id "
        "  AND b.id = c.batch_id "
        "  AND c.lease_owner = $1 AND c.claim_token = r.token "
        "  AND (c.status = 'running') IS TRUE",
        2, p, err);
}

int work_unregister(PGconn *c, const char *instance, struct cofi_err *err)
{
    const char *p[] = {instance};
    int rc =
        db_command(c,
                   "UPDATE calls SET status = 'pending', lease_owner = NULL, claim_token = NULL "
                   "WHERE lease_owner = $1 AND status = 'running'",
                   1, p, err);
    if (rc == 0) {
        rc = db_command(c, "DELETE FROM instance_shares WHERE instance = $1", 1, p, err);
    }
    if (rc != 0) {
        return rc;
    }
    return db_command(c, "DELETE FROM instances WHERE id = $1", 1, p, err);
}
