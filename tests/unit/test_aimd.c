/* The adaptive NLP limit's rule (pipeline/aimd.c): decreases on refusals and queueing,
 * fast recovery below the last refusal, slow probing near it, bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "pipeline/aimd.h"

static struct aimd_in window(int limit, int ceiling, int answers, int throttled, bool limited)
{
    struct aimd_in in = {.limit = limit,
                         .max = 100,
                         .ceiling = ceiling,
                         .answers = answers,
                         .throttled = throttled,
                         .mean_ms = 100,
                         .floor_ms = 100,
                         .limited = limited};
    return in;
}

static void test_refusal_far_from_ceiling_drops_by_beta(void **state)
{
    (void)state;
    struct aimd_in in = window(100, 0, 500, 3, true);
    struct aimd_out out;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_THROTTLED);
    assert_int_equal(out.limit, 70);
    assert_int_equal(out.ceiling, 100);
    assert_int_equal(out.clean_streak, 0);
    in = window(70, 100, 300, 9, true); /* still refused well under the old ceiling */
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 49);
    assert_int_equal(out.ceiling, 70);
}

static void test_refusal_near_ceiling_backs_off_gently(void **state)
{
    (void)state;
    struct aimd_in in = window(41, 43, 400, 1, true);
    struct aimd_out out;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_THROTTLED);
    assert_int_equal(out.limit, 38); /* 41 x 0.95 */
    assert_int_equal(out.ceiling, 41);
}

static void test_never_below_one(void **state)
{
    (void)state;
    struct aimd_in in = window(1, 0, 10, 10, true);
    struct aimd_out out;
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 1);
    assert_int_equal(out.reason, AIMD_HOLD);
}

static void test_fast_recovery_stops_under_the_ceiling(void **state)
{
    (void)state;
    struct aimd_out out = {0};
    /* Bisection between the limit that passes and the ceiling that was refused. */
    static const int steps[][2] = {{30, 37}, {37, 40}, {40, 42}, {42, 43}};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct aimd_in in = window(steps[i][0], 44, 300, 0, true);
        aimd_next(&in, &out);
        assert_int_equal(out.reason, AIMD_INCREASE);
        assert_int_equal(out.limit, steps[i][1]);
        assert_int_equal(out.last_clean, steps[i][0]);
    }
    struct aimd_in in = window(43, 44, 300, 0, true); /* one under: +1 every third window */
    for (int w = 0; w < 2; w++) {
        in.clean_streak = out.clean_streak;
        aimd_next(&in, &out);
        assert_int_equal(out.reason, AIMD_HOLD);
        assert_int_equal(out.limit, 43);
    }
    in.clean_streak = out.clean_streak;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_PROBE);
    assert_int_equal(out.limit, 44);
    assert_int_equal(out.clean_streak, 0);
}

static void test_refusal_falls_back_to_last_clean(void **state)
{
    (void)state;
    struct aimd_out out;
    struct aimd_in in = window(41, 49, 300, 2, true);
    in.last_clean = 34;
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 34); /* not 41 x 0.7 = 28: 34 passed a moment ago */
    assert_int_equal(out.ceiling, 41);
    in.last_clean = 50; /* stale: above the limit refused */
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 28);
}

static void test_refused_probes_wait_longer(void **state)
{
    (void)state;
    struct aimd_out out;
    struct aimd_in in = window(41, 41, 300, 1, true); /* a probe to the ceiling, refused */
    in.last_clean = 40;
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 40);
    assert_int_equal(out.failed_probes, 1);
    in = window(40, 41, 300, 0, true);
    in.failed_probes = out.failed_probes;
    int windows = 0;
    do {
        in.clean_streak = out.clean_streak;
        aimd_next(&in, &out);
        windows++;
    } while (out.reason == AIMD_HOLD && windows < 100);
    assert_int_equal(windows, 6);
    assert_int_equal(out.reason, AIMD_PROBE);
    in.failed_probes = 7; /* the wait stops doubling at 12 windows */
    in.clean_streak = 11;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_PROBE);
}

static void test_clean_above_ceiling_forgets_it(void **state)
{
    (void)state;
    struct aimd_out out;
    struct aimd_in in = window(44, 44, 300, 0, true); /* the refused level passes now */
    aimd_next(&in, &out);
    assert_int_equal(out.ceiling, 0);
    assert_int_equal(out.limit, 66); /* no ceiling: max(100 / 10, 44 / 2) */
    in = window(12, 0, 300, 0, true);
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 22);
    in = window(95, 0, 300, 0, true);
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 100); /* never above max */
    in = window(100, 0, 300, 0, true);
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_HOLD);
    assert_int_equal(out.limit, 100);
}

static void test_no_increase_when_not_limited_or_idle(void **state)
{
    (void)state;
    struct aimd_out out;
    struct aimd_in in = window(50, 0, 300, 0, false);
    in.clean_streak = 2;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_HOLD);
    assert_int_equal(out.limit, 50);
    assert_int_equal(out.clean_streak, 0);
    in = window(50, 0, 0, 0, true); /* paused: nothing answered */
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 50);
}

static void test_latency_well_above_floor_decreases(void **state)
{
    (void)state;
    struct aimd_out out;
    struct aimd_in in = window(80, 0, 300, 0, true);
    in.floor_ms = 40;
    in.mean_ms = 3 * 40 + 50 + 1;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_LATENCY);
    assert_int_equal(out.limit, 72);
    in.mean_ms = 3 * 40 + 50 - 1; /* within the slack: an increase */
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_INCREASE);
    in.answers = AIMD_MIN_ANSWERS - 1; /* too few to judge the latency by */
    in.mean_ms = 1000;
    aimd_next(&in, &out);
    assert_int_equal(out.reason, AIMD_INCREASE);
}

/* The API takes 40 for a while: the limit settles at it, refused rarely. */
static void test_settles_under_a_capacity(void **state)
{
    (void)state;
    struct aimd_in in = window(100, 0, 0, 0, true);
    int refusals = 0;
    int sum = 0;
    for (int w = 0; w < 60; w++) {
        in.answers = 400;
        in.throttled = in.limit > 40 ? 5 : 0;
        refusals += in.throttled > 0;
        struct aimd_out out;
        aimd_next(&in, &out);
        in.limit = out.limit;
        in.ceiling = out.ceiling;
        in.clean_streak = out.clean_streak;
        if (w >= 20) {
            sum += in.limit < 40 ? in.limit : 40;
        }
    }
    assert_true(refusals <= 15);
    assert_true(sum >= 40 * 40 * 85 / 100); /* at least 85 % of the capacity used */
    assert_true(in.limit <= 41);
}

static void test_refusal_after_an_increase_returns_to_it(void **state)
{
    (void)state;
    struct aimd_in in = window(46, 49, 200, 3, true);
    in.raised_from = 39; /* the cluster went 39 -> 46 a moment ago */
    struct aimd_out out;
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 39);
    assert_int_equal(out.ceiling, 46);
    assert_int_equal(out.failed_probes, 0);
    in = window(41, 46, 200, 1, true); /* one step above what passed: a refused probe */
    in.raised_from = 40;
    aimd_next(&in, &out);
    assert_int_equal(out.limit, 40);
    assert_int_equal(out.ceiling, 41);
    assert_int_equal(out.failed_probes, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusal_far_from_ceiling_drops_by_beta),
        cmocka_unit_test(test_refusal_near_ceiling_backs_off_gently),
        cmocka_unit_test(test_never_below_one),
        cmocka_unit_test(test_fast_recovery_stops_under_the_ceiling),
        cmocka_unit_test(test_refusal_falls_back_to_last_clean),
        cmocka_unit_test(test_refused_probes_wait_longer),
        cmocka_unit_test(test_clean_above_ceiling_forgets_it),
        cmocka_unit_test(test_no_increase_when_not_limited_or_idle),
        cmocka_unit_test(test_latency_well_above_floor_decreases),
        cmocka_unit_test(test_settles_under_a_capacity),
        cmocka_unit_test(test_refusal_after_an_increase_returns_to_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
