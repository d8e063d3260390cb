/* A cancelled batch always ends: a call released after the cancel is cancelled, not pending,
 * and a call left pending in a cancelled batch anyway (an outcome written on a state read just
 * before the cancel committed) is cancelled by the dispatcher's finish, so the batch ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "db/db.h"
#include "db/work_db.h"
#include "tests/db/support.h"

/* A running batch 1 of n pending calls, and instance "a" registered. */
static void one_batch(PGconn *c, int n)
{
    char sql[256];
    db_test_exec(c, "INSERT INTO batches (id, name, state, file_count) VALUES (1, 'b', 'running', "
                    "10)");
    snprintf(sql, sizeof sql,
             "INSERT INTO calls (batch_id, seq, file) SELECT 1, g, 'f' || g "
             "FROM generate_series(1, %d) g",
             n);
    db_test_exec(c, sql);
    struct cofi_err err;
    assert_int_equal(work_register(c, "a", "h", 1, &err), 0);
}

/* Claims one call of batch 1 for "a"; returns its id and token. */
static void claim_one(PGconn *c, int64_t *id, int64_t *token)
{
    struct work_claimed *v = NULL;
    size_t n = 0;
    struct cofi_err err;
    if (work_claim(c, "a", "[{\"id\": 1, \"lo\": 0, \"hi\": 4}]", 1, "[]", &v, &n, &err) != 0) {
        fail_msg("claim: %s", err.msg);
    }
    assert_int_equal(n, 1);
    *id = v[0].id;
    *token = v[0].token;
    work_claimed_free(v, n);
}

static size_t finish(PGconn *c)
{
    struct work_finished *fin = NULL;
    size_t n = 0;
    struct cofi_err err;
    if (work_finish_batches(c, "{1}", &fin, &n, &err) != 0) {
        fail_msg("finish: %s", err.msg);
    }
    free(fin);
    return n;
}

static void test_a_call_released_after_the_cancel_is_cancelled(void **state)
{
    struct fixture *f = *state;
    one_batch(f->c, 3);
    int64_t id;
    int64_t token;
    claim_one(f->c, &id, &token);
    /* The cancel (as batches_db_cancel): pending calls cancelled, the claimed one still runs. */
    db_test_exec(f->c, "UPDATE batches SET state = 'cancelled' WHERE id = 1");
    db_test_exec(f->c, "UPDATE calls SET status = 'cancelled' WHERE status = 'pending'");
    char rel[128];
    snprintf(rel, sizeof rel, "[{\"id\": %lld, \"token\": %lld}]", (long long)id, (long long)token);
    struct cofi_err err;
    assert_int_equal(work_release(f->c, "a", rel, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE status <> 'cancelled'"),
                     0);
    assert_int_equal(finish(f->c), 1);
    assert_int_equal(
        db_test_long(f->c, "SELECT count(*) FROM batches WHERE finished_at IS NOT NULL"), 1);
}

static void test_a_release_in_a_running_batch_is_pending(void **state)
{
    struct fixture *f = *state;
    one_batch(f->c, 2);
    int64_t id;
    int64_t token;
    claim_one(f->c, &id, &token);
    char rel[128];
    snprintf(rel, sizeof rel, "[{\"id\": %lld, \"token\": %lld}]", (long long)id, (long long)token);
    struct cofi_err err;
    assert_int_equal(work_release(f->c, "a", rel, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE status = 'pending' "
                                        "AND lease_owner IS NULL AND claim_token IS NULL"),
                     2);
}

static void test_a_call_left_pending_in_a_cancelled_batch_is_swept(void **state)
{
    struct fixture *f = *state;
    one_batch(f->c, 4);
    db_test_exec(f->c, "UPDATE batches SET state = 'cancelled' WHERE id = 1");
    db_test_exec(f->c, "UPDATE calls SET status = 'cancelled' WHERE seq > 1");
    /* seq 1 stayed pending: the first pass cancels it, the next one ends the batch. */
    assert_int_equal(finish(f->c), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE status = 'pending'"), 0);
    assert_int_equal(finish(f->c), 1);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM batches WHERE state = 'cancelled' "
                                        "AND finished_at IS NOT NULL"),
                     1);
    /* A running batch's pending calls are left alone. */
    db_test_exec(f->c, "INSERT INTO batches (id, name, state, file_count) VALUES (2, 'r', "
                       "'running', 1)");
    db_test_exec(f->c, "INSERT INTO calls (batch_id, seq, file) VALUES (2, 1, 'x')");
    struct work_finished *fin = NULL;
    size_t n = 0;
    struct cofi_err err;
    assert_int_equal(work_finish_batches(f->c, "{1,2}", &fin, &n, &err), 0);
    free(fin);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE batch_id = 2 AND "
                                        "status = 'pending'"),
                     1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_call_released_after_the_cancel_is_cancelled,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_release_in_a_running_batch_is_pending, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_call_left_pending_in_a_cancelled_batch_is_swept,
                                        db_test_setup, db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
