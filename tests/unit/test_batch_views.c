/* db/batch_create_db.c, db/batch_row.c and db/calls_db.c pure parts: COPY lines, progress counts,
 * eta, the per-stage view of a call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "db/batch_create_db.h"
#include "db/batch_row.h"
#include "db/calls_db.h"
#include "handlers/handlers.h"

static void test_copy_line_escapes(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1 << 20);
    const char weird[] = "we\"ird\\na\tme\n\\N";
    assert_int_equal(batches_db_copy_line(&b, "7", 0, "a.wav", 5), 0);
    assert_int_equal(batches_db_copy_line(&b, "7", 1, weird, sizeof weird - 1), 0);
    assert_string_equal(b.data, "7\t0\ta.wav\n7\t1\twe\"ird\\\\na\\011me\\012\\\\N\n");
    buf_free(&b);

    buf_init(&b, 4);
    assert_int_equal(batches_db_copy_line(&b, "7", 0, "abcdef", 6), -2);
    buf_free(&b);
}

static void test_progress_text_becomes_counts(void **state)
{
    (void)state;
    struct stage_counts c[STAGE_COUNT];
    memset(c, 0, sizeof c);
    /* 3 at distribute pending, 2 running at stt, 4 done, 1 failed at lid, 1 cancelled at 0. */
    assert_int_equal(
        batches_db_parse_progress("0 pending 3,4 running 2,7 done 4,3 failed 1,0 cancelled 1", c),
        0);
    for (int s = 0; s < STAGE_COUNT; s++) {
        int64_t sum = c[s].pending + c[s].running + c[s].done + c[s].failed + c[s].skipped;
        assert_int_equal(sum, 11);
    }
    assert_int_equal(c[STAGE_DISTRIBUTE].pending, 3);
    assert_int_equal(c[STAGE_DISTRIBUTE].done, 7);
    assert_int_equal(c[STAGE_DISTRIBUTE].skipped, 1);
    assert_int_equal(c[STAGE_LID].failed, 1);
    assert_int_equal(c[STAGE_STT].running, 2);
    assert_int_equal(c[STAGE_LLM2].pending, 5);
    assert_int_equal(c[STAGE_LLM2].done, 4);
    assert_int_equal(c[STAGE_LLM2].skipped, 2);

    memset(c, 0, sizeof c);
    assert_int_equal(batches_db_parse_progress(NULL, c), 0);
    assert_int_equal(batches_db_parse_progress("", c), 0);
    assert_int_equal(batches_db_parse_progress("0 bogus 3", c), -1);
    assert_int_equal(batches_db_parse_progress("x pending 3", c), -1);
    assert_int_equal(batches_db_parse_progress("9 pending 3", c), -1);
}

static void test_eta(void **state)
{
    (void)state;
    struct stage_counts llm2 = {.pending = 6, .running = 2, .done = 2};
    json_t *eta = batches_db_eta(false, 10, &llm2, 10.0);
    assert_true(json_is_null(eta));
    eta = batches_db_eta(true, 10, &llm2, 10.0);
    assert_true(json_is_real(eta));
    assert_true(json_real_value(eta) > 39.99 && json_real_value(eta) < 40.01);
    json_decref(eta);
    struct stage_counts none = {.pending = 10};
    eta = batches_db_eta(true, 10, &none, 10.0);
    assert_true(json_is_null(eta));
}

static void test_stages_array_in_pipeline_order(void **state)
{
    (void)state;
    struct stage_counts c[STAGE_COUNT];
    memset(c, 0, sizeof c);
    stage_counts_add(c, 2, CALL_RUNNING, 5);
    json_t *a = batches_db_stages_json(c);
    assert_int_equal(json_array_size(a), 7);
    assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "name")),
                        "distribute");
    assert_string_equal(json_string_value(json_object_get(json_array_get(a, 6), "name")), "llm2");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(a, 2), "running")), 5);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(a, 1), "done")), 5);
    json_decref(a);
}

static void test_stage_status_splits_claimed_calls(void **state)
{
    (void)state;
    int64_t in_flight = -1;
    int64_t queued = -1;
    /* 78 claimed, 20 requests out: 58 wait for a slot. */
    stages_split_running(5, 78, 20, &in_flight, &queued);
    assert_int_equal(in_flight, 20);
    assert_int_equal(queued, 63);
    /* Published figures can lag: never more in flight than claimed. */
    stages_split_running(0, 3, 10, &in_flight, &queued);
    assert_int_equal(in_flight, 3);
    assert_int_equal(queued, 0);
    stages_split_running(2, 0, 0, &in_flight, &queued);
    assert_int_equal(in_flight, 0);
    assert_int_equal(queued, 2);
}

static const char *state_at(json_t *stages, int s)
{
    return json_string_value(json_object_get(json_array_get(stages, (size_t)s), "state"));
}

static void test_call_view_running(void **state)
{
    (void)state;
    json_t *recs = json_loads("[[0,\"done\",1,null,\"2026-01-01T00:00:00.000Z\","
                              "\"2026-01-01T00:00:01.000Z\",{\"node\":\"g1\"}],"
                              "[1,\"done\",2,\"timeout\",null,\"2026-01-01T00:00:02.000Z\",{}]]",
                              0, NULL);
    json_t *st = calls_db_stages_json(2, CALL_RUNNING, 3, "HTTP 503", "2026-01-01T00:00:03.000Z",
                                      recs, true);
    assert_int_equal(json_array_size(st), 7);
    assert_string_equal(state_at(st, 0), "done");
    assert_string_equal(state_at(st, 1), "done");
    assert_string_equal(state_at(st, 2), "running");
    assert_string_equal(state_at(st, 3), "pending");
    json_t *s0 = json_array_get(st, 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(s0, "result"), "node")),
                        "g1");
    json_t *s1 = json_array_get(st, 1);
    assert_int_equal(json_integer_value(json_object_get(s1, "attempts")), 2);
    assert_string_equal(json_string_value(json_object_get(s1, "last_error")), "timeout");
    json_t *s2 = json_array_get(st, 2);
    assert_int_equal(json_integer_value(json_object_get(s2, "attempts")), 3);
    assert_string_equal(json_string_value(json_object_get(s2, "last_error")), "HTTP 503");
    assert_string_equal(json_string_value(json_object_get(s2, "started_at")),
                        "2026-01-01T00:00:03.000Z");
    assert_true(json_is_null(json_object_get(s2, "finished_at")));
    assert_true(json_is_null(json_object_get(s2, "result")));
    json_decref(st);

    st = calls_db_stages_json(2, CALL_RUNNING, 3, NULL, NULL, recs, false);
    assert_null(json_object_get(json_array_get(st, 0), "result"));
    json_decref(st);
    json_decref(recs);
}

static void test_call_view_failed_and_cancelled(void **state)
{
    (void)state;
    json_t *recs = json_loads("[[0,\"done\",1,null,null,\"t\",null],"
                              "[1,\"failed\",5,\"HTTP 400\",null,\"t\",null]]",
                              0, NULL);
    json_t *st = calls_db_stages_json(1, CALL_FAILED, 5, "HTTP 400", NULL, recs, true);
    assert_string_equal(state_at(st, 0), "done");
    assert_string_equal(state_at(st, 1), "failed");
    assert_string_equal(json_string_value(json_object_get(json_array_get(st, 1), "last_error")),
                        "HTTP 400");
    for (int s = 2; s < 7; s++) {
        assert_string_equal(state_at(st, s), "skipped");
    }
    json_decref(st);

    st = calls_db_stages_json(1, CALL_CANCELLED, 2, "timeout", NULL, recs, false);
    assert_string_equal(state_at(st, 1), "skipped");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(st, 1), "attempts")), 2);
    assert_string_equal(state_at(st, 6), "skipped");
    json_decref(st);

    st = calls_db_stages_json(7, CALL_DONE, 0, NULL, NULL, NULL, false);
    for (int s = 0; s < 7; s++) {
        assert_string_equal(state_at(st, s), "done");
    }
    json_decref(st);
    json_decref(recs);
}

/* Checks that waiting_for of w dumps (compact, sorted keys) as expected. */
static void assert_waiting(const struct call_wait *w, const char *expected)
{
    json_t *o = calls_db_waiting_json(w);
    assert_non_null(o);
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, expected);
    free(text);
    json_decref(o);
}

static void test_waiting_for_first_match_wins(void **state)
{
    (void)state;
    struct call_wait w = {CALL_RUNNING, 2, "gpu-1", NULL, "paused", NULL, 5};
    assert_waiting(&w, "{\"reason\":\"in_flight\"}");
    /* Held by the engine until its next try. */
    w.retry_at = "2026-12-02T20:00:00.000Z";
    w.last_error = "HTTP 503";
    assert_waiting(&w, "{\"at\":\"2026-12-02T20:00:00.000Z\",\"reason\":\"retry\","
                       "\"why\":\"HTTP 503\"}");
    w.retry_at = NULL;
    w.last_error = NULL;
    w.status = CALL_PENDING;
    assert_waiting(&w, "{\"reason\":\"paused\"}");
    w.batch_state = "created";
    assert_waiting(&w, "{\"reason\":\"not_started\"}");
    w.batch_state = "running";
    w.retry_at = "2026-12-02T20:00:00.000Z";
    w.last_error = "HTTP 503";
    assert_waiting(&w, "{\"at\":\"2026-12-02T20:00:00.000Z\",\"reason\":\"retry\","
                       "\"why\":\"HTTP 503\"}");
    w.retry_at = NULL;
    assert_waiting(&w, "{\"ahead\":5,\"node\":\"gpu-1\",\"reason\":\"node\"}");
    w.ahead = -1;
    assert_waiting(&w, "{\"node\":\"gpu-1\",\"reason\":\"node\"}");
    w.stage = STAGE_LLM1;
    w.ahead = 0;
    assert_waiting(&w, "{\"ahead\":0,\"reason\":\"nlp_limit\"}");
    w.stage = STAGE_DISTRIBUTE;
    w.node = NULL;
    assert_waiting(&w, "{\"ahead\":0,\"reason\":\"queued\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_line_escapes),
        cmocka_unit_test(test_progress_text_becomes_counts),
        cmocka_unit_test(test_eta),
        cmocka_unit_test(test_stages_array_in_pipeline_order),
        cmocka_unit_test(test_stage_status_splits_claimed_calls),
        cmocka_unit_test(test_call_view_running),
        cmocka_unit_test(test_call_view_failed_and_cancelled),
        cmocka_unit_test(test_waiting_for_first_match_wins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
