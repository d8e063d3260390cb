/* handlers/results.c and db/results_db.c: the Accept negotiation, CSV fields, and a stage's view
 * in the streamed results. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "db/results_db.h"
#include "handlers/handlers.h"

static void test_accept_defaults_to_ndjson(void **state)
{
    (void)state;
    assert_int_equal(results_pick_format(NULL), RESULTS_NDJSON);
    assert_int_equal(results_pick_format(""), RESULTS_NDJSON);
    assert_int_equal(results_pick_format("  "), RESULTS_NDJSON);
    assert_int_equal(results_pick_format("*/*"), RESULTS_NDJSON);
    assert_int_equal(results_pick_format("application/*"), RESULTS_NDJSON);
    assert_int_equal(results_pick_format("Application/X-NDJSON"), RESULTS_NDJSON);
    assert_int_equal(results_pick_format("text/html,application/xhtml+xml,*/*;q=0.8"),
                     RESULTS_NDJSON);
}

static void test_accept_csv(void **state)
{
    (void)state;
    assert_int_equal(results_pick_format("text/csv"), RESULTS_CSV);
    assert_int_equal(results_pick_format("text/*"), RESULTS_CSV);
    assert_int_equal(results_pick_format("text/csv; charset=utf-8"), RESULTS_CSV);
    assert_int_equal(results_pick_format("application/x-ndjson;q=0.4, text/csv;q=0.5"),
                     RESULTS_CSV);
    assert_int_equal(results_pick_format("*/*;q=0.1,text/csv"), RESULTS_CSV);
    /* A tie goes to NDJSON; the most specific range decides a type's weight. */
    assert_int_equal(results_pick_format("text/csv, application/x-ndjson"), RESULTS_NDJSON);
    assert_int_equal(results_pick_format("*/*, application/x-ndjson;q=0.2"), RESULTS_CSV);
}

static void test_accept_nothing_we_have(void **state)
{
    (void)state;
    assert_int_equal(results_pick_format("application/json"), RESULTS_NONE);
    assert_int_equal(results_pick_format("image/png, text/html"), RESULTS_NONE);
    assert_int_equal(results_pick_format("text/csv;q=0"), RESULTS_NONE);
    assert_int_equal(results_pick_format("*/*;q=0"), RESULTS_NONE);
    assert_int_equal(results_pick_format("text/csv;q=2"), RESULTS_NONE);
    assert_int_equal(results_pick_format("text/csv;q=x"), RESULTS_NONE);
    assert_int_equal(results_pick_format(",,,"), RESULTS_NONE);
}

static void test_csv_fields_are_quoted_when_needed(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1024);
    assert_int_equal(results_csv_field(&b, "plain"), 0);
    assert_int_equal(results_csv_field(&b, NULL), 0);
    assert_int_equal(results_csv_field(&b, "a,b"), 0);
    assert_int_equal(results_csv_field(&b, "say \"hi\""), 0);
    assert_int_equal(results_csv_field(&b, "two\nlines\r"), 0);
    assert_int_equal(results_csv_field(&b, "\""), 0);
    assert_string_equal(b.data, "plain\"a,b\"\"say \"\"hi\"\"\"\"two\nlines\r\"\"\"\"\"");
    buf_free(&b);
}

static void test_stage_view(void **state)
{
    (void)state;
    struct results_record none = {false, NULL, 0, NULL, NULL};
    struct results_record done = {true, "done", 2, NULL, "{\"x\": 1}"};
    struct results_record failed = {true, "failed", 3, "HTTP 500", NULL};
    struct results_record v;
    results_stage_view(1, 4, CALL_RUNNING, 1, NULL, &done, &v);
    assert_string_equal(v.state, "done");
    assert_int_equal(v.attempts, 2);
    assert_string_equal(v.result, "{\"x\": 1}");
    results_stage_view(4, 4, CALL_RUNNING, 1, "slow", &none, &v);
    assert_string_equal(v.state, "running");
    assert_int_equal(v.attempts, 1);
    assert_string_equal(v.last_error, "slow");
    assert_null(v.result);
    results_stage_view(5, 4, CALL_RUNNING, 1, NULL, &none, &v);
    assert_string_equal(v.state, "pending");
    results_stage_view(4, 4, CALL_FAILED, 3, "HTTP 500", &failed, &v);
    assert_string_equal(v.state, "failed");
    assert_int_equal(v.attempts, 3);
    assert_string_equal(v.last_error, "HTTP 500");
    results_stage_view(6, 4, CALL_FAILED, 3, "HTTP 500", &none, &v);
    assert_string_equal(v.state, "skipped");
    results_stage_view(2, 2, CALL_CANCELLED, 0, NULL, &none, &v);
    assert_string_equal(v.state, "skipped");
    results_stage_view(6, 7, CALL_DONE, 0, NULL, &none, &v);
    assert_string_equal(v.state, "done");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_defaults_to_ndjson),
        cmocka_unit_test(test_accept_csv),
        cmocka_unit_test(test_accept_nothing_we_have),
        cmocka_unit_test(test_csv_fields_are_quoted_when_needed),
        cmocka_unit_test(test_stage_view),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
