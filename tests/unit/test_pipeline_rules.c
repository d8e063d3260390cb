/* The state model's counts and the retry policy of CONTRACTS §5. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/retry.h"
#include "common/stages.h"

static void test_counts_add_up_for_every_position(void **state)
{
    (void)state;
    for (int cs = 0; cs <= STAGE_COUNT; cs++) {
        for (int st = 0; st < CALL_STATUS_COUNT; st++) {
            struct stage_counts c[STAGE_COUNT];
            memset(c, 0, sizeof c);
            stage_counts_add(c, cs, st, 3);
            for (int s = 0; s < STAGE_COUNT; s++) {
                assert_int_equal(
                    c[s].pending + c[s].running + c[s].done + c[s].failed + c[s].skipped, 3);
            }
        }
    }
}

static void test_failed_call_skips_later_stages(void **state)
{
    (void)state;
    struct stage_counts c[STAGE_COUNT];
    memset(c, 0, sizeof c);
    stage_counts_add(c, STAGE_IVR, CALL_FAILED, 1);
    assert_int_equal(c[STAGE_DENOISE].done, 1);
    assert_int_equal(c[STAGE_IVR].failed, 1);
    assert_int_equal(c[STAGE_LID].skipped, 1);
    assert_int_equal(c[STAGE_LLM2].skipped, 1);
}

static void test_running_call_is_pending_downstream(void **state)
{
    (void)state;
    struct stage_counts c[STAGE_COUNT];
    memset(c, 0, sizeof c);
    stage_counts_add(c, STAGE_LID, CALL_RUNNING, 2);
    assert_int_equal(c[STAGE_IVR].done, 2);
    assert_int_equal(c[STAGE_LID].running, 2);
    assert_int_equal(c[STAGE_STT].pending, 2);
}

static void test_classification_follows_contract(void **state)
{
    (void)state;
    assert_int_equal(retry_classify(true, 0, false), OUTCOME_RETRY);
    long transient[] = {408, 425, 429, 500, 502, 503, 504};
    for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++) {
        assert_int_equal(retry_classify(false, transient[i], false), OUTCOME_RETRY);
    }
    assert_int_equal(retry_classify(false, 200, true), OUTCOME_OK);
    assert_int_equal(retry_classify(false, 201, true), OUTCOME_OK);
    assert_int_equal(retry_classify(false, 200, false), OUTCOME_PERMANENT);
    assert_int_equal(retry_classify(false, 400, true), OUTCOME_PERMANENT);
    assert_int_equal(retry_classify(false, 404, true), OUTCOME_PERMANENT);
    assert_int_equal(retry_classify(false, 422, true), OUTCOME_PERMANENT);
}

static void test_retry_after_forms(void **state)
{
    (void)state;
    int64_t ms = -1;
    assert_int_equal(retry_parse_after("3", 0, &ms), 0);
    assert_int_equal(ms, 3000);
    assert_int_equal(retry_parse_after(" 0 ", 0, &ms), 0);
    assert_int_equal(ms, 0);
    /* Sun, 06 Nov 1994 08:49:37 GMT is 784111777 s after the epoch. */
    assert_int_equal(retry_parse_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111770000LL, &ms), 0);
    assert_int_equal(ms, 7000);
    assert_int_equal(retry_parse_after("soon", 0, &ms), -1);
    assert_int_equal(retry_parse_after("-1", 0, &ms), -1);
}

static void test_backoff_grows_and_is_capped(void **state)
{
    (void)state;
    struct cofi_worker_cfg w = {.backoff_base_ms = 100, .backoff_max_ms = 1000};
    uint64_t seed = 42;
    for (int i = 0; i < 100; i++) {
        int64_t d1 = retry_backoff_ms(&w, 1, &seed);
        assert_true(d1 >= 50 && d1 <= 100);
        int64_t d3 = retry_backoff_ms(&w, 3, &seed);
        assert_true(d3 >= 200 && d3 <= 400);
        int64_t d9 = retry_backoff_ms(&w, 9, &seed);
        assert_true(d9 >= 500 && d9 <= 1000);
    }
}

static void test_stage_counts_saturate(void **state)
{
    (void)state;
    struct stage_counts c[STAGE_COUNT];
    memset(c, 0, sizeof c);
    stage_counts_add(c, STAGE_COUNT, CALL_DONE, INT64_MAX);
    stage_counts_add(c, STAGE_COUNT, CALL_DONE, INT64_MAX);
    assert_true(c[0].done == INT64_MAX);
    stage_counts_add(c, 0, CALL_PENDING, INT64_MIN);
    stage_counts_add(c, 0, CALL_PENDING, INT64_MIN);
    assert_true(c[0].pending == INT64_MIN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stage_counts_saturate),
        cmocka_unit_test(test_counts_add_up_for_every_position),
        cmocka_unit_test(test_failed_call_skips_later_stages),
        cmocka_unit_test(test_running_call_is_pending_downstream),
        cmocka_unit_test(test_classification_follows_contract),
        cmocka_unit_test(test_retry_after_forms),
        cmocka_unit_test(test_backoff_grows_and_is_capped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
