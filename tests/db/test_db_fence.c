/* The fence of the work queue against a real PostgreSQL: claim tokens, leases on the
 * database's clock, expiry that never takes the instance that runs it, and shares held for an
 * expired instance while its requests may still run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include <cmocka.h>

#include "db/db.h"
#include "db/work_db.h"
#include "tests/db/support.h"

/* One running batch of n pending calls. */
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
}

/* Claims up to limit calls of batch 1 at stage 0 for instance; returns how many, first in *w. */
static size_t claim(PGconn *c, const char *instance, int limit, struct work_claimed *first)
{
    struct work_claimed *v = NULL;
    size_t n = 0;
    struct cofi_err err;
    if (work_claim(c, instance, "[{\"id\": 1, \"lo\": 0, \"hi\": 4}]", limit, "[]", &v, &n, &err) !=
        0) {
        fail_msg("claim: %s", err.msg);
    }
    if (n > 0 && first != NULL) {
        *first = v[0];
        first->file = first->node = first->file_name = first->prev = NULL;
    }
    work_claimed_free(v, n);
    return n;
}

/* Flushes call id to stage 1 (running) with a distribute row under token; returns the calls
 * written. */
static size_t flush(PGconn *c, const char *instance, int64_t id, int64_t token)
{
    char calls[512];
    char stages[512];
    char ids[32];
    snprintf(calls, sizeof calls,
             "[{\"id\": %lld, \"token\": %lld, \"stage\": 1, \"status\": \"running\", "
             "\"attempts\": 0, \"last_error\": null, \"node\": \"n\", \"file_name\": \"x\", "
             "\"started_ms\": 1700000000000}]",
             (long long)id, (long long)token);
    snprintf(stages, sizeof stages,
             "[{\"call_id\": %lld, \"stage\": 0, \"state\": \"done\", \"attempts\": 1, "
             "\"last_error\": null, \"started_ms\": 1700000000000, \"finished_ms\": "
             "1700000000010, \"result\": {\"node\": \"n\", \"file_name\": \"x\"}}]",
             (long long)id);
    snprintf(ids, sizeof ids, "{%lld}", (long long)id);
    struct work_written *w = NULL;
    size_t n = 0;
    struct cofi_err err;
    if (work_flush(c, instance, calls, ids, stages, &w, &n, &err) != 0) {
        fail_msg("flush: %s", err.msg);
    }
    free(w);
    return n;
}

static void test_a_stale_claim_token_writes_nothing(void **state)
{
    struct fixture *f = *state;
    one_batch(f->c, 1);
    struct cofi_err err;
    assert_int_equal(work_register(f->c, "a", "h", 1, &err), 0);
    assert_int_equal(work_register(f->c, "b", "h", 2, &err), 0);
    struct work_claimed first;
    assert_int_equal(claim(f->c, "a", 10, &first), 1);
    int64_t stale = first.token;
    /* a's claim is taken back (as an expiry does) and b claims the call anew. */
    db_test_exec(f->c, "UPDATE calls SET status = 'pending', lease_owner = NULL, claim_token = "
                       "NULL");
    assert_int_equal(claim(f->c, "b", 10, &first), 1);
    assert_true(first.token != stale);
    /* Even under a's name again (a stale copy of the claim), the old token writes nothing. */
    db_test_exec(f->c, "UPDATE calls SET lease_owner = 'a'");
    assert_int_equal(flush(f->c, "a", first.id, stale), 0);
    char rel[128];
    snprintf(rel, sizeof rel, "[{\"id\": %lld, \"token\": %lld}]", (long long)first.id,
             (long long)stale);
    assert_int_equal(work_release(f->c, "a", rel, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE status = 'running'"), 1);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM call_stages"), 0);
    /* The current token writes, once. */
    assert_int_equal(flush(f->c, "a", first.id, first.token), 1);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM call_stages"), 1);
}

static void test_expiry_never_takes_the_instance_that_runs_it(void **state)
{
    struct fixture *f = *state;
    one_batch(f->c, 3);
    struct cofi_err err;
    assert_int_equal(work_register(f->c, "a", "h", 1, &err), 0);
    assert_int_equal(claim(f->c, "a", 3, NULL), 3);
    db_test_exec(f->c, "UPDATE instances SET heartbeat_at = now() - interval '1 hour'");
    long recovered = -1;
    assert_int_equal(work_recover_expired(f->c, "a", 1000, 1000, &recovered, &err), 0);
    assert_int_equal(recovered, 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM instances WHERE id = 'a'"), 1);
    assert_int_equal(work_register(f->c, "b", "h", 2, &err), 0);
    assert_int_equal(work_recover_expired(f->c, "b", 1000, 1000, &recovered, &err), 0);
    assert_int_equal(recovered, 3);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM calls WHERE status = 'pending' "
                                        "AND claim_token IS NULL AND lease_owner IS NULL"),
                     3);
}

static void test_heartbeat_is_on_the_clock_not_the_transaction_start(void **state)
{
    struct fixture *f = *state;
    struct cofi_err err;
    assert_int_equal(work_register(f->c, "a", "h", 1, &err), 0);
    /* A heartbeat sent 1.2 s into a transaction (as a commit that waits makes it look): its
     * time is when it ran. */
    db_test_exec(f->c, "BEGIN");
    db_test_exec(f->c, "CREATE TEMP TABLE t0 AS SELECT now() AS at");
    db_test_exec(f->c, "SELECT pg_sleep(1.2)");
    bool lost = true;
    assert_int_equal(work_heartbeat(f->c, "a", "h", 1, &lost, &err), 0);
    assert_false(lost);
    db_test_exec(f->c, "COMMIT");
    assert_int_equal(db_test_long(f->c, "SELECT (heartbeat_at - (SELECT at FROM t0) "
                                        ">= interval '1 second')::int FROM instances"),
                     1);
}

static void test_an_expired_instances_shares_are_held(void **state)
{
    struct fixture *f = *state;
    struct cofi_err err;
    assert_int_equal(work_register(f->c, "a", "h", 1, &err), 0);
    assert_int_equal(work_register(f->c, "b", "h", 2, &err), 0);
    assert_int_equal(work_share_set(f->c, "a", "nlp", 6, &err), 0);
    db_test_exec(f->c, "UPDATE instances SET heartbeat_at = now() - interval '1 hour' "
                       "WHERE id = 'a'");
    long recovered = 0;
    assert_int_equal(work_recover_expired(f->c, "b", 1000, 60000, &recovered, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM instances WHERE id = 'a'"), 0);
    /* Held: b still counts them. */
    struct work_share_view v;
    assert_int_equal(work_shares_begin(f->c, "b", 1000, &v, &err), 0);
    assert_int_equal(v.live, 1);
    assert_int_equal(work_share_others(&v, "nlp"), 6);
    assert_int_equal(work_shares_end(f->c, true, &v, &err), 0);
    /* a comes back: its lease was lost, its shares are its own again. */
    bool lost = false;
    assert_int_equal(work_heartbeat(f->c, "a", "h", 1, &lost, &err), 0);
    assert_true(lost);
    assert_int_equal(
        db_test_long(f->c, "SELECT count(*) FROM instance_shares WHERE held_until IS NULL"), 1);
    /* Expired again, and its hold over: b forgets them. */
    db_test_exec(f->c, "UPDATE instances SET heartbeat_at = now() - interval '1 hour' "
                       "WHERE id = 'a'");
    assert_int_equal(work_recover_expired(f->c, "b", 1000, 60000, &recovered, &err), 0);
    db_test_exec(f->c, "UPDATE instance_shares SET held_until = now() - interval '1 second'");
    assert_int_equal(work_shares_begin(f->c, "b", 1000, &v, &err), 0);
    assert_int_equal(work_share_others(&v, "nlp"), 0);
    assert_int_equal(work_shares_end(f->c, true, &v, &err), 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM instance_shares"), 0);
}

int main(void)
{
    if (getenv("COFI_TEST_PGHOST") == NULL || getenv("COFI_TEST_PGPORT") == NULL) {
        fprintf(stderr, "test_db_fence: set COFI_TEST_PGHOST and COFI_TEST_PGPORT to a running "
                        "PostgreSQL (scripts/pg.sh env)\n");
        return 1;
    }
    srand((unsigned int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_stale_claim_token_writes_nothing, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_expiry_never_takes_the_instance_that_runs_it,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_is_on_the_clock_not_the_transaction_start,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_an_expired_instances_shares_are_held, db_test_setup,
                                        db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
