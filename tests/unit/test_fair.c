/* Fair shares of a claim among batches (pipeline/fair.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "pipeline/fair.h"

static void test_equal_priorities_split_evenly(void **state)
{
    (void)state;
    int64_t waiting[] = {2000, 10};
    int weight[] = {1, 1};
    int64_t out[2];
    assert_int_equal(fair_split(100, waiting, weight, 2, out), 100);
    /* The small batch gets all it has; the big one the rest. */
    assert_int_equal(out[1], 10);
    assert_int_equal(out[0], 90);
    int64_t many[] = {1000, 1000};
    assert_int_equal(fair_split(100, many, weight, 2, out), 100);
    assert_int_equal(out[0], 50);
    assert_int_equal(out[1], 50);
}

static void test_priority_weighs(void **state)
{
    (void)state;
    int64_t waiting[] = {1000, 1000, 1000};
    int weight[] = {1, 3, 0};
    int64_t out[3];
    assert_int_equal(fair_split(100, waiting, weight, 3, out), 100);
    assert_int_equal(out[0], 20);
    assert_int_equal(out[1], 60);
    assert_int_equal(out[2], 20); /* a weight below 1 counts as 1 */
}

static void test_alone_a_batch_takes_everything_and_nothing_is_lost(void **state)
{
    (void)state;
    int64_t waiting[] = {0, 7, 1000};
    int weight[] = {5, 1, 1};
    int64_t out[3];
    assert_int_equal(fair_split(64, waiting, weight, 3, out), 64);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 7);
    assert_int_equal(out[2], 57);
    assert_int_equal(fair_split(5000, waiting, weight, 3, out), 1007);
    assert_int_equal(fair_split(0, waiting, weight, 3, out), 0);
}

static void test_random_splits_keep_their_promises(void **state)
{
    (void)state;
    srand(3);
    for (int round = 0; round < 2000; round++) {
        size_t n = 1 + (size_t)(rand() % 8);
        int64_t waiting[8];
        int weight[8];
        int64_t out[8];
        int64_t sum_waiting = 0;
        for (size_t i = 0; i < n; i++) {
            waiting[i] = rand() % 3 == 0 ? 0 : rand() % 200;
            weight[i] = 1 + rand() % 5;
            sum_waiting += waiting[i];
        }
        int64_t limit = rand() % 400;
        int64_t total = fair_split(limit, waiting, weight, n, out);
        assert_int_equal(total, limit < sum_waiting ? limit : sum_waiting);
        for (size_t i = 0; i < n; i++) {
            assert_true(out[i] >= 0 && out[i] <= waiting[i]);
            /* No batch that is short got less than its proportional part, less one. */
            if (out[i] < waiting[i]) {
                for (size_t k = 0; k < n; k++) {
                    if (out[k] > 0) {
                        assert_true((out[i] + 1) * weight[k] >= (out[k] - 1) * weight[i]);
                    }
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_priorities_split_evenly),
        cmocka_unit_test(test_priority_weighs),
        cmocka_unit_test(test_alone_a_batch_takes_everything_and_nothing_is_lost),
        cmocka_unit_test(test_random_splits_keep_their_promises),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
