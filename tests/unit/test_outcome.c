/* What an outcome means for the call (pipeline/outcome.h): one place decides it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/outcome.h"

static const struct cofi_worker_cfg W = {
    .timeout_ms = 1000,
    .max_attempts = 3,
    .backoff_base_ms = 100,
    .backoff_max_ms = 1000,
    .retry_after_max_ms = 5000,
};

static struct decision decide(const struct job_outcome *o, int attempts, bool valid, bool stopping)
{
    uint64_t seed = 42;
    struct decide_in in = {
        .o = o, .attempts = attempts, .w = &W, .valid = valid, .stopping = stopping, .seed = &seed};
    struct decision d;
    outcome_decide(&in, &d);
    return d;
}

static struct job_outcome answered(enum outcome_kind kind, const char *error)
{
    struct job_outcome o;
    job_outcome_init(&o, LANE_ANSWERED);
    o.kind = kind;
    snprintf(o.error, sizeof o.error, "%s", error);
    return o;
}

static void test_success_advances_and_permanent_fails(void **state)
{
    (void)state;
    struct job_outcome ok = answered(OUTCOME_OK, "");
    assert_int_equal(decide(&ok, 1, true, false).action, ACTION_ADVANCE);
    struct job_outcome bad = answered(OUTCOME_PERMANENT, "HTTP 400: no");
    struct decision d = decide(&bad, 1, true, false);
    assert_int_equal(d.action, ACTION_FAIL);
    assert_string_equal(d.why, "HTTP 400: no");
}

static void test_retryable_retries_until_max_attempts(void **state)
{
    (void)state;
    struct job_outcome o = answered(OUTCOME_RETRY, "HTTP 503");
    struct decision d = decide(&o, 2, true, false);
    assert_int_equal(d.action, ACTION_RETRY);
    assert_true(d.delay_ms >= 100 && d.delay_ms <= 1000);
    d = decide(&o, 3, true, false);
    assert_int_equal(d.action, ACTION_FAIL);
    assert_string_equal(d.why, "gave up after 3 attempts: HTTP 503");
}

static void test_retry_after_is_capped(void **state)
{
    (void)state;
    struct job_outcome o = answered(OUTCOME_RETRY, "HTTP 429");
    o.retry_after_ms = 86400000;
    struct decision d = decide(&o, 1, true, false);
    assert_int_equal(d.action, ACTION_RETRY);
    assert_true(d.delay_ms >= 5000 && d.delay_ms <= 5600);
}

static void test_cut_short_does_not_count(void **state)
{
    (void)state;
    struct job_outcome o = answered(OUTCOME_RETRY, "request cut short");
    o.not_counted = true;
    struct decision d = decide(&o, 3, true, false);
    assert_int_equal(d.action, ACTION_RETRY);
    assert_true(d.uncount);
}

static void test_lost_claims_and_stops_release(void **state)
{
    (void)state;
    struct job_outcome ok = answered(OUTCOME_OK, "");
    assert_int_equal(decide(&ok, 1, false, false).action, ACTION_RELEASE);
    struct job_outcome retry = answered(OUTCOME_RETRY, "x");
    assert_int_equal(decide(&retry, 1, true, true).action, ACTION_RELEASE);
    struct job_outcome lost;
    job_outcome_init(&lost, LANE_NODE_LOST);
    assert_int_equal(decide(&lost, 1, true, false).action, ACTION_REDISTRIBUTE);
    assert_int_equal(decide(&lost, 1, true, true).action, ACTION_RELEASE);
    struct job_outcome back;
    job_outcome_init(&back, LANE_GIVEN_BACK);
    assert_int_equal(decide(&back, 0, true, false).action, ACTION_RELEASE);
    struct job_outcome stale;
    job_outcome_init(&stale, LANE_NOT_VALID);
    assert_int_equal(decide(&stale, 0, true, false).action, ACTION_RELEASE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_advances_and_permanent_fails),
        cmocka_unit_test(test_retryable_retries_until_max_attempts),
        cmocka_unit_test(test_retry_after_is_capped),
        cmocka_unit_test(test_cut_short_does_not_count),
        cmocka_unit_test(test_lost_claims_and_stops_release),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
