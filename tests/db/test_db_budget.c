/* The cluster's NLP budgets in PostgreSQL (db/budget_db.c): grants never add up to more than
 * the budget over the window, whoever asks and however they interleave; a part too small is
 * not granted; grants older than the window free their share. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "db/budget_db.h"
#include "support.h"

static struct budget_grant ask(PGconn *c, const char *who, int64_t want, int64_t min, int req)
{
    struct budget_grant g = {.want_tokens = want,
                             .want_requests = req,
                             .tokens_per_window = 1000,
                             .requests_per_window = req > 0 ? 10 : 0,
                             .window_ms = 63000,
                             .min_tokens = min};
    struct cofi_err err;
    assert_int_equal(budget_db_grant(c, who, &g, &err), 0);
    return g;
}

static void test_grants_stop_at_the_budget(void **state)
{
    struct fixture *f = *state;
    PGconn *other = db_test_connect(f);
    int64_t total = 0;
    for (int i = 0; i < 30; i++) {
        struct budget_grant g = ask(i % 2 ? other : f->c, i % 2 ? "b" : "a", 70, 1, 0);
        total += g.got_tokens;
        assert_true(g.got_tokens <= 70);
    }
    assert_int_equal(total, 1000); /* 14 x 70, then the 20 left */
    assert_int_equal(ask(f->c, "a", 70, 1, 0).got_tokens, 0);
    assert_int_equal(db_test_long(f->c, "SELECT sum(tokens) FROM nlp_budget_grants"), 1000);
    PQfinish(other);
}

static void test_too_small_a_part_is_not_granted(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(ask(f->c, "a", 950, 950, 0).got_tokens, 950);
    /* 50 left: a request that needs 60 gets nothing (not 50 it cannot use). */
    struct budget_grant g = ask(f->c, "a", 100, 60, 0);
    assert_int_equal(g.got_tokens, 0);
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM nlp_budget_grants"), 1);
    assert_int_equal(ask(f->c, "a", 100, 40, 0).got_tokens, 50);
}

static void test_requests_budget(void **state)
{
    struct fixture *f = *state;
    int requests = 0;
    for (int i = 0; i < 5; i++) {
        requests += ask(f->c, "a", 10, 1, 3).got_requests;
    }
    assert_int_equal(requests, 10); /* 3 + 3 + 3 + 1, then none */
    struct budget_grant g = ask(f->c, "a", 10, 1, 3);
    assert_int_equal(g.got_requests, 0);
    assert_int_equal(g.got_tokens, 0); /* no tokens without a request to spend them */
}

static void test_the_window_slides(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(ask(f->c, "a", 1000, 1, 0).got_tokens, 1000);
    assert_int_equal(ask(f->c, "a", 10, 1, 0).got_tokens, 0);
    db_test_exec(f->c, "UPDATE nlp_budget_grants SET at = at - interval '62 s'");
    assert_int_equal(ask(f->c, "a", 10, 1, 0).got_tokens, 0); /* still inside 63 s */
    db_test_exec(f->c, "UPDATE nlp_budget_grants SET at = at - interval '2 s'");
    assert_int_equal(ask(f->c, "a", 600, 1, 0).got_tokens, 600);
    /* The grant out of the window was deleted; the new one stays. */
    assert_int_equal(db_test_long(f->c, "SELECT count(*) FROM nlp_budget_grants"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_grants_stop_at_the_budget, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_too_small_a_part_is_not_granted, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_requests_budget, db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_the_window_slides, db_test_setup, db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
