/* The hot queries cost what they claim or read, not the size of calls: each runs as cofid runs
 * it (through db/), its plan captured with auto_explain (JSON, sent to this client as a
 * notice), and the test asserts which index it uses and that it never scans calls. And the
 * stage counters (stage_progress, migration 008) equal a full recount after a sequence of
 * transitions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "db/calls_db.h"
#include "db/db.h"
#include "db/stages_db.h"
#include "db/work_db.h"
#include "tests/db/support.h"

#define CALLS 30000

/* The plans of every statement run since the last plans_reset, while capturing. */
static struct buf plans;
static bool capturing;

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    if (capturing) {
        (void)buf_append(&plans, message, strlen(message));
    }
}

/* Stops keeping plans (the connection may still send them) and frees them. */
static void plans_done(void)
{
    capturing = false;
    buf_free(&plans);
}

static void plans_reset(void)
{
    plans.len = 0;
    (void)buf_append(&plans, "", 0);
}

/* Plans of statements from now on come to this connection as notices. */
static void capture_plans(PGconn *c)
{
    buf_init(&plans, 64 << 20);
    capturing = true;
    plans_reset();
    PQsetNoticeProcessor(c, on_notice, NULL);
    db_test_exec(c, "LOAD 'auto_explain'");
    db_test_exec(c, "SET auto_explain.log_min_duration = 0");
    db_test_exec(c, "SET auto_explain.log_format = json");
    db_test_exec(c, "SET auto_explain.log_level = notice");
    db_test_exec(c, "SET auto_explain.log_nested_statements = on");
    db_test_exec(c, "SET client_min_messages = notice");
}

/* True when a plan scans calls sequentially (auto_explain's JSON has "Node Type" before
 * "Relation Name" in each node). */
static bool seq_scans_calls(void)
{
    const char *p = plans.data;
    while ((p = strstr(p, "\"Node Type\": \"Seq Scan\"")) != NULL) {
        const char *rel = strstr(p, "\"Relation Name\": \"");
        const char *next = strstr(p + 1, "\"Node Type\"");
        if (rel != NULL && (next == NULL || rel < next) &&
            strncmp(rel + strlen("\"Relation Name\": \""), "calls\"", 6) == 0) {
            return true;
        }
        p++;
    }
    return false;
}

static bool uses_index(const char *index)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\"Index Name\": \"%s\"", index);
    return strstr(plans.data, needle) != NULL;
}

/* Batch 1, running: CALLS calls; the first 30 % waiting at llm1 ahead of the rest at stage 0
 * (the GPU claim must not read past them), 200 failed at ivr, 100 running for instance
 * "gone" (expired) and 100 for "me". */
static void big_batch(PGconn *c)
{
    char sql[512];
    db_test_exec(c, "INSERT INTO batches (id, name, state, file_count) VALUES (1, 'b', 'running', "
                    "30000)");
    snprintf(sql, sizeof sql,
             "INSERT INTO calls (batch_id, seq, file) SELECT 1, g, 'f' || g "
             "FROM generate_series(0, %d) g",
             CALLS - 1);
    db_test_exec(c, sql);
    snprintf(sql, sizeof sql, "UPDATE calls SET stage = 5 WHERE seq < %d", CALLS * 3 / 10);
    db_test_exec(c, sql);
    db_test_exec(c, "UPDATE calls SET stage = 2, status = 'failed', last_error = 'x' "
                    "WHERE seq % 100 = 99");
    db_test_exec(c, "INSERT INTO instances (id, hostname, pid) VALUES ('me', 'h', 1), "
                    "('gone', 'h', 2)");
    db_test_exec(c, "UPDATE instances SET heartbeat_at = now() - interval '1 hour' "
                    "WHERE id = 'gone'");
    snprintf(sql, sizeof sql,
             "UPDATE calls SET status = 'running', lease_owner = CASE WHEN seq %% 2 = 0 "
             "THEN 'gone' ELSE 'me' END, claim_token = seq WHERE seq BETWEEN %d AND %d",
             CALLS - 200, CALLS - 1);
    db_test_exec(c, sql);
    db_test_exec(c, "ANALYZE calls");
    db_test_exec(c, "ANALYZE batches");
}

static void test_gpu_claim_reads_what_it_claims(void **state)
{
    struct fixture *f = *state;
    big_batch(f->c);
    capture_plans(f->c);
    struct work_claimed *v = NULL;
    size_t n = 0;
    struct cofi_err err;
    if (work_claim(f->c, "me", "[{\"id\": 1, \"lo\": 0, \"hi\": 4, \"lim\": 8}]", 8, "[]", &v, &n,
                   &err) != 0) {
        fail_msg("claim: %s", err.msg);
    }
    assert_int_equal(n, 8);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(v[i].stage, 0);
    }
    work_claimed_free(v, n);
    assert_true(uses_index("calls_pending_idx"));
    if (seq_scans_calls()) {
        fail_msg("the claim scans calls: %s", plans.data);
    }
    /* The stage range is in the index's key: the calls waiting at llm1 are not read. */
    assert_non_null(strstr(plans.data, "\"Index Cond\": \"((batch_id = b.id) AND (stage >= b.lo) "
                                       "AND (stage <= b.hi))\""));
    plans_done();
}

static void test_recovery_reads_nothing_when_none_expired(void **state)
{
    struct fixture *f = *state;
    big_batch(f->c);
    db_test_exec(f->c, "UPDATE instances SET heartbeat_at = now()");
    capture_plans(f->c);
    long recovered = -1;
    struct cofi_err err;
    assert_int_equal(work_recover_expired(f->c, "me", 10000, 10000, &recovered, &err), 0);
    assert_int_equal(recovered, 0);
    /* Only instances was read. */
    assert_null(strstr(plans.data, "\"Relation Name\": \"calls\""));
    plans_done();
}

static void test_recovery_reads_only_the_expired_calls(void **state)
{
    struct fixture *f = *state;
    big_batch(f->c);
    capture_plans(f->c);
    long recovered = -1;
    struct cofi_err err;
    assert_int_equal(work_recover_expired(f->c, "me", 10000, 10000, &recovered, &err), 0);
    assert_int_equal(recovered, 100);
    assert_true(uses_index("calls_running_idx"));
    if (seq_scans_calls()) {
        fail_msg("the recovery scans calls: %s", plans.data);
    }
    plans_done();
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE lease_owner = 'gone'"),
                     0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE lease_owner = 'me'"),
                     100);
}

static void test_failed_calls_page_through_their_index(void **state)
{
    struct fixture *f = *state;
    big_batch(f->c);
    capture_plans(f->c);
    struct cofi_err err;
    /* More runs than libpq's custom plans (5): the generic plan must use the index too. */
    for (int i = 0; i < 7; i++) {
        plans_reset();
        json_t *page = NULL;
        if (calls_db_list(f->c, 1, 500, 50, "failed", &page, &err) != 0) {
            fail_msg("list: %s", err.msg);
        }
        json_t *calls = json_object_get(page, "calls");
        assert_int_equal(json_array_size(calls), 50);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(calls, 0), "seq")), 599);
        json_decref(page);
        assert_true(uses_index("calls_ended_idx"));
        if (seq_scans_calls()) {
            fail_msg("the page scans calls: %s", plans.data);
        }
    }
    plans_done();
}

static void test_stage_status_reads_the_counters(void **state)
{
    struct fixture *f = *state;
    big_batch(f->c);
    capture_plans(f->c);
    struct stage_figures fig;
    struct cofi_err err;
    for (int i = 0; i < 7; i++) {
        plans_reset();
        assert_int_equal(stages_db_figures(f->c, 5, 0, "me", 10000, &fig, &err), 0);
        assert_int_equal(fig.pending, CALLS * 3 / 10 - CALLS * 3 / 1000);
        assert_null(strstr(plans.data, "\"Relation Name\": \"calls\""));
        assert_null(strstr(plans.data, "\"Relation Name\": \"batch_progress\""));
        assert_non_null(strstr(plans.data, "\"Relation Name\": \"stage_progress\""));
    }
    plans_done();
}

/* stage_progress minus a recount of calls: rows that differ (0 when they agree). */
static long counter_drift(PGconn *c)
{
    return db_test_long(c,
                        "SELECT count(*) FROM ("
                        "  (SELECT stage, status, n FROM stage_progress WHERE n <> 0 "
                        "   EXCEPT SELECT stage, status, count(*) FROM calls GROUP BY 1, 2) "
                        "  UNION ALL "
                        "  (SELECT stage, status, count(*) FROM calls GROUP BY 1, 2 "
                        "   EXCEPT SELECT stage, status, n FROM stage_progress WHERE n <> 0)) d");
}

static void test_stage_counters_equal_a_recount(void **state)
{
    struct fixture *f = *state;
    big_batch(f->c);
    assert_int_equal(counter_drift(f->c), 0);
    db_test_exec(f->c, "INSERT INTO batches (id, name, state, file_count) VALUES (2, 'c', "
                       "'running', 500)");
    db_test_exec(f->c, "INSERT INTO calls (batch_id, seq, file) SELECT 2, g, 'g' || g "
                       "FROM generate_series(0, 499) g");
    struct work_claimed *v = NULL;
    size_t n = 0;
    struct cofi_err err;
    assert_int_equal(work_claim(f->c, "me",
                                "[{\"id\": 1, \"lo\": 0, \"hi\": 6, \"lim\": 50}, "
                                "{\"id\": 2, \"lo\": 0, \"hi\": 6, \"lim\": 50}]",
                                100, "[]", &v, &n, &err),
                     0);
    assert_int_equal(n, 100);
    work_claimed_free(v, n);
    assert_int_equal(counter_drift(f->c), 0);
    /* Moves of stage and status in one statement, across two batches. */
    db_test_exec(f->c, "UPDATE calls SET stage = stage + 1 WHERE status = 'running' AND stage < 6");
    db_test_exec(f->c,
                 "UPDATE calls SET status = 'done', stage = 7 WHERE batch_id = 2 AND seq < 100");
    db_test_exec(f->c, "UPDATE calls SET status = 'failed' WHERE batch_id = 2 AND seq >= 400");
    long recovered;
    assert_int_equal(work_recover_expired(f->c, "me", 10000, 10000, &recovered, &err), 0);
    assert_int_equal(counter_drift(f->c), 0);
    /* A deleted batch leaves the sums. */
    db_test_exec(f->c, "DELETE FROM calls WHERE batch_id = 2");
    db_test_exec(f->c, "DELETE FROM batch_progress WHERE batch_id = 2");
    assert_int_equal(counter_drift(f->c), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM ("
                                        "SELECT stage, status, sum(n) FROM batch_progress "
                                        "GROUP BY 1, 2 HAVING sum(n) <> 0 EXCEPT "
                                        "SELECT stage, status, n FROM stage_progress) d"),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_gpu_claim_reads_what_it_claims, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_recovery_reads_nothing_when_none_expired,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_recovery_reads_only_the_expired_calls, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_failed_calls_page_through_their_index, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_stage_status_reads_the_counters, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_stage_counters_equal_a_recount, db_test_setup,
                                        db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
