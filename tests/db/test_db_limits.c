/* The API's database limits: a pool wait that ends (503), and a statement timeout (503). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "common/clock.h"
#include "db/db.h"

static void conninfo(char *out, size_t len)
{
    const char *user = getenv("COFI_TEST_PGUSER");
    snprintf(out, len, "host=%s port=%s user=%s dbname=postgres", getenv("COFI_TEST_PGHOST"),
             getenv("COFI_TEST_PGPORT"), user != NULL ? user : "postgres");
}

static void test_pool_wait_ends_busy(void **state)
{
    (void)state;
    char ci[512];
    conninfo(ci, sizeof ci);
    struct db_pool *pool;
    struct cofi_err err;
    assert_int_equal(db_pool_open(&pool, ci, 1, &err), 0);
    db_pool_set_limits(pool, 200, 0);
    PGconn *held = db_acquire(pool, &err);
    assert_non_null(held);
    int64_t t0 = clock_mono_ms();
    cofi_err_clear(&err);
    assert_null(db_acquire(pool, &err));
    int64_t waited = clock_mono_ms() - t0;
    assert_int_equal(err.code, COFI_E_BUSY);
    assert_true(waited >= 150 && waited < 5000);
    db_release(pool, held);
    PGconn *again = db_acquire(pool, &err);
    assert_non_null(again);
    db_release(pool, again);
    db_pool_close(pool);
}

static void test_statement_timeout_is_busy(void **state)
{
    (void)state;
    char ci[512];
    conninfo(ci, sizeof ci);
    struct db_pool *pool;
    struct cofi_err err;
    assert_int_equal(db_pool_open(&pool, ci, 1, &err), 0);
    db_pool_set_limits(pool, 1000, 100);
    PGconn *c = db_acquire(pool, &err);
    assert_non_null(c);
    int64_t t0 = clock_mono_ms();
    cofi_err_clear(&err);
    PGresult *r = db_exec(c, "SELECT pg_sleep(5)", 0, NULL, &err);
    assert_null(r);
    assert_int_equal(err.code, COFI_E_BUSY);
    assert_string_equal(err.sqlstate, "57014");
    assert_true(clock_mono_ms() - t0 < 4000);
    /* The connection is still good for the next statement. */
    r = db_exec(c, "SELECT 1", 0, NULL, &err);
    assert_non_null(r);
    PQclear(r);
    db_release(pool, c);
    db_pool_close(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_wait_ends_busy),
        cmocka_unit_test(test_statement_timeout_is_busy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
