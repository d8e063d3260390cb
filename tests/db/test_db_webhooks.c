/* The webhook outbox against a real PostgreSQL: a delivery is queued by the statement that ends
 * a batch (dispatcher and cancel), two instances never hold one delivery at once (lease, SKIP
 * LOCKED, fencing token), and a delete keeps the body of a delivery not sent yet. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "db/batch_ops_db.h"
#include "db/db.h"
#include "db/webhooks_db.h"
#include "db/work_db.h"
#include "tests/db/support.h"

/* Batch id in state `state` with n calls done (stage 7), and a callback_url when url is set. */
static void ended_calls_batch(PGconn *c, int id, const char *state, int n, const char *url)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO batches (id, name, state, file_count, callback_url) "
             "VALUES (%d, 'b', '%s', %d, %s%s%s)",
             id, state, n, url != NULL ? "'" : "", url != NULL ? url : "NULL",
             url != NULL ? "'" : "");
    db_test_exec(c, sql);
    snprintf(sql, sizeof sql,
             "INSERT INTO calls (batch_id, seq, file, stage, status) "
             "SELECT %d, g, 'f' || g, 7, 'done' FROM generate_series(1, %d) g",
             id, n);
    db_test_exec(c, sql);
}

static void test_ending_a_batch_queues_its_delivery_once(void **state)
{
    struct fixture *f = *state;
    ended_calls_batch(f->c, 1, "running", 3, "http://127.0.0.1:9/hook");
    ended_calls_batch(f->c, 2, "running", 2, NULL);
    struct work_finished *fin = NULL;
    size_t n = 0;
    struct cofi_err err;
    assert_int_equal(work_finish_batches(f->c, "{1,2}", &fin, &n, &err), 0);
    assert_int_equal(n, 2);
    free(fin);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries"), 1);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries WHERE "
                                        "batch_id = 1 AND url = 'http://127.0.0.1:9/hook' "
                                        "AND body IS NULL AND delivered_at IS NULL"),
                     1);
    /* Ended already: nothing ends again, nothing is queued again. */
    assert_int_equal(work_finish_batches(f->c, "{1,2}", &fin, &n, &err), 0);
    assert_int_equal(n, 0);
    free(fin);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries"), 1);
}

static void test_a_cancel_that_ends_the_batch_queues_its_delivery(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "INSERT INTO batches (id, state, file_count, callback_url) "
                       "VALUES (5, 'created', 1, 'http://127.0.0.1:9/c')");
    db_test_exec(f->c, "INSERT INTO calls (batch_id, seq, file) VALUES (5, 0, 'a')");
    json_t *b = NULL;
    struct cofi_err err;
    assert_int_equal(batches_db_cancel(f->c, 5, &b, &err), 0);
    assert_string_equal(json_string_value(json_object_get(b, "state")), "cancelled");
    assert_false(json_is_null(json_object_get(b, "finished_at")));
    json_t *cb = json_object_get(b, "callback");
    assert_string_equal(json_string_value(json_object_get(cb, "state")), "pending");
    assert_string_equal(json_string_value(json_object_get(cb, "url")), "http://127.0.0.1:9/c");
    json_decref(b);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries "
                                        "WHERE batch_id = 5"),
                     1);
}

/* Claims for instance; returns whether one was found (its row in *d, owned by the caller). */
static bool claim(PGconn *c, const char *instance, struct webhook_delivery *d)
{
    int found = 0;
    struct cofi_err err;
    if (webhooks_db_claim(c, instance, 60000, d, &found, &err) != 0) {
        fail_msg("claim: %s", err.msg);
    }
    return found != 0;
}

static void test_two_instances_never_hold_one_delivery(void **state)
{
    struct fixture *f = *state;
    PGconn *other = db_test_connect(f);
    db_test_exec(f->c, "INSERT INTO webhook_deliveries (batch_id, url) VALUES (1, 'http://h/')");
    struct webhook_delivery a;
    struct webhook_delivery b;
    assert_true(claim(f->c, "a", &a));
    assert_false(claim(other, "b", &b)); /* under a's lease */

    /* A row locked by a claim in progress is skipped, not waited for. */
    webhooks_db_delivery_free(&a);
    db_test_exec(f->c, "UPDATE webhook_deliveries SET lease_until = NULL");
    db_test_exec(f->c, "BEGIN");
    db_test_exec(f->c, "SELECT id FROM webhook_deliveries FOR UPDATE");
    assert_false(claim(other, "b", &b));
    db_test_exec(f->c, "ROLLBACK");

    /* The lease ran out (a dead instance): b takes it with a new token; a's late record of an
     * attempt writes nothing. */
    assert_true(claim(f->c, "a", &a));
    db_test_exec(f->c, "UPDATE webhook_deliveries SET lease_until = clock_timestamp() - "
                       "interval '1 second'");
    assert_true(claim(other, "b", &b));
    assert_string_equal(a.id, b.id);
    assert_true(b.token != a.token);
    struct cofi_err err;
    assert_int_equal(webhooks_db_record(f->c, &a, 200, NULL, 0, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries WHERE "
                                        "delivered_at IS NULL AND attempts = 0 AND lease_owner = "
                                        "'b'"),
                     1);

    /* b's failed attempt: counted, not due again before its back-off. */
    assert_int_equal(webhooks_db_record(other, &b, 500, "HTTP 500", 60000, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries WHERE "
                                        "attempts = 1 AND last_status = 500 AND last_error = "
                                        "'HTTP 500' AND lease_owner IS NULL AND next_at > now()"),
                     1);
    webhooks_db_delivery_free(&a);
    assert_false(claim(f->c, "a", &a));

    /* Due again: a 2xx ends it for good. */
    webhooks_db_delivery_free(&b);
    db_test_exec(f->c, "UPDATE webhook_deliveries SET next_at = clock_timestamp()");
    assert_true(claim(f->c, "a", &a));
    assert_int_equal(a.attempts, 1);
    assert_int_equal(webhooks_db_record(f->c, &a, 204, NULL, 0, &err), 0);
    webhooks_db_delivery_free(&a);
    db_test_exec(f->c, "UPDATE webhook_deliveries SET next_at = clock_timestamp()");
    assert_false(claim(other, "b", &b));
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries WHERE "
                                        "attempts = 2 AND delivered_at IS NOT NULL AND "
                                        "last_error IS NULL"),
                     1);
    PQfinish(other);
}

static void test_a_restart_under_the_same_id_frees_its_claims_at_once(void **state)
{
    struct fixture *f = *state;
    db_test_exec(f->c, "INSERT INTO webhook_deliveries (batch_id, url) VALUES (1, 'http://h/'), "
                       "(2, 'http://h/')");
    struct webhook_delivery a;
    struct webhook_delivery b;
    assert_true(claim(f->c, "a", &a));
    assert_true(claim(f->c, "b", &b));
    struct cofi_err err;
    assert_int_equal(webhooks_db_release_mine(f->c, "a", &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries WHERE "
                                        "lease_owner IS NULL"),
                     1);
    struct webhook_delivery again;
    assert_true(claim(f->c, "a", &again));
    assert_string_equal(again.id, a.id);
    webhooks_db_delivery_free(&again);
    webhooks_db_delivery_free(&a);
    webhooks_db_delivery_free(&b);
}

static void test_delete_keeps_the_body_of_a_delivery_not_sent(void **state)
{
    struct fixture *f = *state;
    ended_calls_batch(f->c, 3, "running", 2, "http://127.0.0.1:9/d");
    struct work_finished *fin = NULL;
    size_t n = 0;
    struct cofi_err err;
    assert_int_equal(work_finish_batches(f->c, "{3}", &fin, &n, &err), 0);
    free(fin);
    assert_int_equal(batches_db_delete(f->c, 3, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM batches"), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM webhook_deliveries WHERE "
                                        "(body::jsonb)->>'id' = '3' AND "
                                        "(body::jsonb)->>'state' = 'completed'"),
                     1);
    /* The sender sends the kept body, whatever it is told to render now. */
    struct webhook_delivery d;
    assert_true(claim(f->c, "a", &d));
    assert_non_null(d.body);
    assert_int_equal(webhooks_db_set_body(f->c, &d, NULL, &err), 0);
    assert_non_null(strstr(d.body, "\"completed\""));
    webhooks_db_delivery_free(&d);
}

int main(void)
{
    if (getenv("COFI_TEST_PGHOST") == NULL || getenv("COFI_TEST_PGPORT") == NULL) {
        fprintf(stderr, "test_db_webhooks: set COFI_TEST_PGHOST and COFI_TEST_PGPORT to a "
                        "running PostgreSQL (scripts/pg.sh env)\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ending_a_batch_queues_its_delivery_once, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_cancel_that_ends_the_batch_queues_its_delivery,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_two_instances_never_hold_one_delivery, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_restart_under_the_same_id_frees_its_claims_at_once,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_delete_keeps_the_body_of_a_delivery_not_sent,
                                        db_test_setup, db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
