/* cofi-sim's NLP meter: the capacity schedule and the token bucket (pure parts). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* The simulator is an executable, not a library: compile the piece under test in here. */
#include "sim/meter.c"

static void test_schedule_parses_steps_in_order(void **state)
{
    (void)state;
    struct sim_cap_step st[4];
    char err[160];
    assert_int_equal(sim_schedule_parse("10=40,20.5=100", st, 4, err, sizeof err), 2);
    assert_true(st[0].at_s == 10.0);
    assert_int_equal(st[0].capacity, 40);
    assert_true(st[1].at_s == 20.5);
    assert_int_equal(st[1].capacity, 100);
    assert_int_equal(sim_schedule_parse("20=1,10=2", st, 4, err, sizeof err), -1);
    assert_non_null(strstr(err, "time order"));
    assert_int_equal(sim_schedule_parse("10", st, 4, err, sizeof err), -1);
    assert_int_equal(sim_schedule_parse("10=0", st, 4, err, sizeof err), -1);
    assert_int_equal(sim_schedule_parse("-1=5", st, 4, err, sizeof err), -1);
    assert_int_equal(sim_schedule_parse("x=5", st, 4, err, sizeof err), -1);
    assert_int_equal(sim_schedule_parse("1=5x", st, 4, err, sizeof err), -1);
    assert_int_equal(sim_schedule_parse("", st, 4, err, sizeof err), -1);
    assert_int_equal(sim_schedule_parse("1=1,2=2,3=3,4=4,5=5", st, 4, err, sizeof err), -1);
}

static void test_schedule_due_applies_passed_steps_only(void **state)
{
    (void)state;
    struct sim_cap_step st[3] = {{5, 40}, {10, 100}, {10, 60}};
    int cap = 100;
    assert_int_equal(sim_schedule_due(st, 3, 0, 4.99, &cap), 0);
    assert_int_equal(cap, 100);
    assert_int_equal(sim_schedule_due(st, 3, 0, 5.0, &cap), 1);
    assert_int_equal(cap, 40);
    /* Two steps at once: the last one wins. */
    assert_int_equal(sim_schedule_due(st, 3, 1, 11, &cap), 3);
    assert_int_equal(cap, 60);
    cap = 7; /* an admin change after the last step stays */
    assert_int_equal(sim_schedule_due(st, 3, 3, 100, &cap), 3);
    assert_int_equal(cap, 7);
}

static void test_bucket_meters_tokens_per_minute(void **state)
{
    (void)state;
    struct sim_bucket b = {.per_minute = 600, .level = 600, .last_us = 0};
    assert_int_equal(sim_bucket_take(&b, 0, 500), 0);
    /* 100 left; 200 more need 100 refilled at 10 tokens/s: 10 s. */
    assert_int_equal(sim_bucket_take(&b, 0, 200), 10);
    assert_int_equal(sim_bucket_take(&b, 5000000, 200), 5); /* 150 there after 5 s */
    assert_int_equal(sim_bucket_take(&b, 10000000, 200), 0);
    /* Never more than a minute's worth in the bucket. */
    assert_int_equal(sim_bucket_take(&b, 3600000000LL, 600), 0);
    assert_int_equal(sim_bucket_take(&b, 3600000000LL, 1), 1);
    /* A request over the whole budget passes once the bucket is full. */
    assert_int_equal(sim_bucket_take(&b, 3700000000LL, 1000), 0);
    assert_true(b.level < 0);
    /* Unmetered. */
    struct sim_bucket free_b = {0};
    assert_int_equal(sim_bucket_take(&free_b, 0, 1000000), 0);
}

static void test_bucket_never_exceeds_budget_over_a_minute(void **state)
{
    (void)state;
    struct sim_bucket b = {.per_minute = 1000, .level = 1000, .last_us = 0};
    /* Requests of 37 tokens every 100 ms for 5 minutes: any 60 s holds at most 2 minutes'
     * worth (a full bucket plus a minute's refill), and the long-run rate is the budget. */
    int64_t taken[3000] = {0};
    for (int i = 0; i < 3000; i++) {
        taken[i] = sim_bucket_take(&b, (int64_t)i * 100000, 37) == 0 ? 37 : 0;
    }
    int64_t total = 0;
    for (int i = 600; i < 3000; i++) {
        total += taken[i];
    }
    assert_true(total <= 4 * 1000 + 37);
    assert_true(total >= 4 * 1000 - 2 * 37);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_parses_steps_in_order),
        cmocka_unit_test(test_schedule_due_applies_passed_steps_only),
        cmocka_unit_test(test_bucket_meters_tokens_per_minute),
        cmocka_unit_test(test_bucket_never_exceeds_budget_over_a_minute),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
