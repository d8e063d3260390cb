/* Prepared statements against a real PostgreSQL (COFI_TEST_PGHOST/PORT/USER): a write runs at
 * most once, a statement missing on a connection is prepared there, and the flush keeps a
 * generic plan that finds its calls through the primary key. Each test gets its own scratch
 * database with the project's migrations applied. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "db/db.h"
#include "db/migrate.h"
#include "db/work_db.h"
#include "tests/db/support.h"

/* nextval is not undone by the statement's failure, so the sequence counts the runs. */
static void test_a_failed_write_runs_once(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "CREATE SEQUENCE runs");
    const char *sql = "SELECT nextval('runs') / $1::int";
    const char *zero[] = {"0"};
    struct cofi_err err;
    cofi_err_clear(&err);
    PGresult *r = db_write_prepared(f->c, "t_div", sql, 1, zero, &err);
    assert_null(r);
    assert_int_equal(err.code, COFI_E_INTERNAL);
    assert_string_equal(err.sqlstate, "22012");
    assert_non_null(strstr(err.msg, "division by zero"));
    assert_int_equal(db_test_long(f->c, "SELECT last_value FROM runs"), 1);

    /* Prepared once: the second call runs it once more, and it is still there. */
    r = db_write_prepared(f->c, "t_div", sql, 1, zero, &err);
    assert_null(r);
    assert_int_equal(db_test_long(f->c, "SELECT last_value FROM runs"), 2);
    assert_int_equal(
        db_test_long(f->c, "SELECT count(*) FROM pg_prepared_statements WHERE name = 't_div'"), 1);

    const char *one[] = {"1"};
    r = db_write_prepared(f->c, "t_div", sql, 1, one, &err);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "3");
    PQclear(r);
}

/* A connection that lost its statements (a new one, or after DEALLOCATE) prepares again. */
static void test_a_missing_statement_is_prepared_again(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "CREATE TABLE t (v int)");
    const char *sql = "INSERT INTO t VALUES ($1::int) RETURNING v";
    const char *p[] = {"7"};
    struct cofi_err err;
    for (int i = 0; i < 2; i++) {
        PGresult *r = db_write_prepared(f->c, "t_ins", sql, 1, p, &err);
        assert_non_null(r);
        PQclear(r);
        db_test_exec(f->c, "DEALLOCATE ALL");
    }
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM t"), 2);
}

/* A schema change that alters the statement's result columns (a newer instance's migration)
 * makes the server refuse the cached plan (0A000); the statement is prepared again and runs
 * once. */
static void test_a_changed_result_type_is_prepared_again(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "CREATE TABLE t (a int)");
    db_test_exec(f->c, "INSERT INTO t VALUES (1)");
    const char *sql = "UPDATE t SET a = a + 1 RETURNING *";
    struct cofi_err err;
    PGresult *r = db_write_prepared(f->c, "t_upd", sql, 0, NULL, &err);
    assert_non_null(r);
    assert_int_equal(PQnfields(r), 1);
    PQclear(r);
    db_test_exec(f->c, "ALTER TABLE t ADD COLUMN b int DEFAULT 7");
    r = db_write_prepared(f->c, "t_upd", sql, 0, NULL, &err);
    if (r == NULL) {
        fail_msg("after the schema change: %s", err.msg);
    }
    assert_int_equal(PQnfields(r), 2);
    assert_string_equal(PQgetvalue(r, 0, 0), "3");
    assert_string_equal(PQgetvalue(r, 0, 1), "7");
    PQclear(r);
    assert_int_equal(db_test_long(f->c, "SELECT a FROM t"), 3);
}

/* Inside a transaction a statement not prepared yet fails (and the transaction with it):
 * reported, never run. */
static void test_not_prepared_inside_a_transaction_is_an_error(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "CREATE TABLE t (v int)");
    db_test_exec(f->c, "BEGIN");
    const char *p[] = {"7"};
    struct cofi_err err;
    cofi_err_clear(&err);
    PGresult *r = db_write_prepared(f->c, "t_ins_tx", "INSERT INTO t VALUES ($1::int)", 1, p, &err);
    assert_null(r);
    assert_string_equal(err.sqlstate, "26000");
    db_test_exec(f->c, "ROLLBACK");
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM t"), 0);
}

/* The flush on a flusher connection: a generic plan, made while the statistics still say no
 * call is running, reads the calls through the primary key, not through calls_running_idx
 * (every call the instance runs). */
static void test_flush_plan_is_generic_and_by_primary_key(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "INSERT INTO batches (id, name, state, file_count) "
                       "VALUES (1, 'b', 'running', 20000)");
    db_test_exec(f->c, "INSERT INTO calls (batch_id, seq, file) "
                       "SELECT 1, g, 'f' || g FROM generate_series(1, 20000) g");
    db_test_exec(f->c, "ANALYZE calls");
    db_test_exec(f->c, "UPDATE calls SET status = 'running', lease_owner = 'i1', claim_token = id "
                       "WHERE id <= 2000");

    struct cofi_err err;
    assert_int_equal(work_flush_session(f->c, &err), 0);
    const char *calls =
        "[{\"id\": 5, \"token\": 5, \"stage\": 1, \"status\": \"running\", \"attempts\": 0, "
        "\"last_error\": null, \"node\": \"gpu-1\", \"file_name\": \"x\", "
        "\"started_ms\": 1700000000000}]";
    const char *stages = "[{\"call_id\": 5, \"stage\": 0, \"state\": \"done\", \"attempts\": 1, "
                         "\"last_error\": null, \"started_ms\": 1700000000000, "
                         "\"finished_ms\": 1700000000010, \"result\": {\"file_name\": \"x\"}}]";
    for (int i = 0; i < 3; i++) {
        struct work_written *w = NULL;
        size_t n = 0;
        if (work_flush(f->c, "i1", calls, "{5}", stages, &w, &n, &err) != 0) {
            fail_msg("flush: %s", err.msg);
        }
        assert_int_equal(n, 1);
        assert_int_equal(w[0].id, 5);
        free(w);
    }
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM call_stages WHERE call_id = 5"), 1);
    assert_int_equal(db_test_long(f->c, "SELECT custom_plans FROM pg_prepared_statements "
                                        "WHERE name = 'cofi_flush_fenced'"),
                     0);
    assert_int_equal(db_test_long(f->c, "SELECT generic_plans FROM pg_prepared_statements "
                                        "WHERE name = 'cofi_flush_fenced'"),
                     3);

    PGresult *plan = db_exec(f->c, "EXPLAIN EXECUTE cofi_flush_fenced('i1', '[]', '[]', '{6,7}')",
                             0, NULL, &err);
    assert_non_null(plan);
    bool by_pkey = false;
    for (int i = 0; i < PQntuples(plan); i++) {
        const char *line = PQgetvalue(plan, i, 0);
        assert_null(strstr(line, "calls_running_idx"));
        assert_null(strstr(line, "Seq Scan on calls"));
        by_pkey = by_pkey || strstr(line, "calls_pkey") != NULL;
    }
    PQclear(plan);
    assert_true(by_pkey);
}

int main(void)
{
    if (getenv("COFI_TEST_PGHOST") == NULL || getenv("COFI_TEST_PGPORT") == NULL) {
        fprintf(stderr, "test_db_prepared: set COFI_TEST_PGHOST and COFI_TEST_PGPORT to a "
                        "running PostgreSQL (scripts/pg.sh env)\n");
        return 1;
    }
    srand((unsigned int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_failed_write_runs_once, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_missing_statement_is_prepared_again, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_changed_result_type_is_prepared_again, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_not_prepared_inside_a_transaction_is_an_error,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_flush_plan_is_generic_and_by_primary_key,
                                        db_test_setup, db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
