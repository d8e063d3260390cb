/* The cluster's adaptive NLP limit in PostgreSQL (db/limiter_db.c, migration 010): the row is
 * created at the limit's maximum, a change lands only from the value it was read as and only
 * as often as its rate limit allows (two instances deciding at once change it once), the pause
 * is kept on the database's clock, the history is capped, a lone instance starts afresh, and
 * the instances' reports of a refusal add up (migration 011). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "db/limiter_db.h"
#include "db/work_db.h"
#include "support.h"

static bool change(PGconn *c, const char *who, int from, int to, int min_age_ms)
{
    struct limiter_step s = {.from = from,
                             .to = to,
                             .ceiling = from,
                             .probes_refused = 0,
                             .min_age_ms = min_age_ms,
                             .reason = to < from ? "throttled" : "increase"};
    bool applied = false;
    struct cofi_err err;
    assert_int_equal(limiter_db_change(c, who, 100, &s, &applied, &err), 0);
    return applied;
}

static void test_row_starts_at_max_and_changes_by_compare(void **state)
{
    struct fixture *f = *state;
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.limit, 100);
    assert_int_equal(row.ceiling, 0);
    assert_int_equal(row.pause_left_ms, 0);
    assert_int_equal(row.nhistory, 0);
    /* Read as 90 by someone: the row says 100, nothing lands. */
    assert_false(change(f->c, "a", 90, 63, 0));
    assert_true(change(f->c, "a", 100, 70, 0));
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.limit, 70);
    assert_int_equal(row.ceiling, 100);
    assert_int_equal(row.nhistory, 1);
    assert_int_equal(row.history[0].limit, 70);
    assert_string_equal(row.history[0].reason, "throttled");
    assert_true(row.history[0].at_ms > 0);
}

static void test_two_instances_decrease_once_per_second(void **state)
{
    struct fixture *f = *state;
    PGconn *other = db_test_connect(f);
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    /* Both read 100 and saw the same storm: one decrease lands. */
    int landed = change(f->c, "a", 100, 70, 0) + change(other, "b", 100, 70, 0);
    assert_int_equal(landed, 1);
    /* A second decrease within a second does not land, from anyone. */
    assert_false(change(other, "b", 70, 49, 0));
    /* An increase right after a change waits for its own age. */
    assert_false(change(other, "b", 70, 80, 500));
    db_test_exec(f->c, "UPDATE nlp_limiter SET changed_at = changed_at - interval '2 s',"
                       " decreased_at = decreased_at - interval '2 s'");
    assert_true(change(other, "b", 70, 49, 0));
    db_test_exec(f->c, "UPDATE nlp_limiter SET changed_at = changed_at - interval '600 ms'");
    /* Old enough for an increase, but a decrease of the last window says the API refused
     * someone a moment ago. */
    assert_false(change(f->c, "a", 49, 59, 500));
    db_test_exec(f->c, "UPDATE nlp_limiter SET decreased_at = decreased_at - interval '1 s'");
    assert_false(change(f->c, "a", 49, 50, 3000)); /* a probe waits longer */
    assert_true(change(f->c, "a", 49, 59, 500));
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.limit, 59);
    PQfinish(other);
}

static void test_pause_on_the_database_clock(void **state)
{
    struct fixture *f = *state;
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(limiter_db_pause(f->c, "a", 5000, &err), 0);
    assert_int_equal(limiter_db_pause(f->c, "b", 1000, &err), 0); /* never shortens it */
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_true(row.pause_left_ms > 4000 && row.pause_left_ms <= 5000);
    assert_true(row.pause_until_ms > 0);
    assert_int_equal(row.nhistory, 2);
    assert_string_equal(row.history[1].reason, "retry_after 5000 ms");
}

static void test_no_increase_until_a_window_after_a_pause(void **state)
{
    struct fixture *f = *state;
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_true(change(f->c, "a", 100, 70, 0));
    db_test_exec(f->c, "UPDATE nlp_limiter SET changed_at = changed_at - interval '5 s',"
                       " decreased_at = decreased_at - interval '5 s'");
    /* Another instance was refused: its Retry-After holds the cluster for a second. Whoever
     * saw a clean window meanwhile does not raise the limit until a window after it. */
    assert_int_equal(limiter_db_pause(f->c, "b", 1000, &err), 0);
    assert_false(change(f->c, "a", 70, 85, 500));
    db_test_exec(f->c,
                 "UPDATE nlp_limiter SET pause_until = clock_timestamp() - interval '500 ms'");
    assert_false(change(f->c, "a", 70, 85, 500));
    db_test_exec(f->c,
                 "UPDATE nlp_limiter SET pause_until = clock_timestamp() - interval '1100 ms'");
    assert_true(change(f->c, "a", 70, 85, 500));
}

static void test_a_pause_is_announced_to_listeners(void **state)
{
    struct fixture *f = *state;
    PGconn *other = db_test_connect(f);
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(limiter_db_listen(other, &err), 0);
    struct limiter_pause_note note;
    bool got = true;
    assert_int_equal(limiter_db_wait_pause(other, 0, &note, &got, &err), 0);
    assert_false(got); /* nothing yet */
    assert_int_equal(limiter_db_pause(f->c, "vm:1", 5000, &err), 0);
    /* Delivered at the writer's commit; a deadline, not a fixed wait. */
    for (int i = 0; i < 100 && !got; i++) {
        assert_int_equal(limiter_db_wait_pause(other, 100, &note, &got, &err), 0);
    }
    assert_true(got);
    assert_int_equal(note.ms, 5000);
    assert_string_equal(note.instance, "vm:1");
    /* Someone else's word on the channel is not a pause. */
    db_test_exec(f->c, "NOTIFY " LIMITER_PAUSE_CHANNEL ", 'hello'");
    got = false;
    for (int i = 0; i < 10 && !got; i++) {
        assert_int_equal(limiter_db_wait_pause(other, 100, &note, &got, &err), 0);
    }
    assert_false(got);
    PQfinish(other);
}

static void test_history_is_capped(void **state)
{
    struct fixture *f = *state;
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    for (int i = 0; i < LIMITER_HISTORY_MAX + 5; i++) {
        assert_int_equal(limiter_db_pause(f->c, "a", 10, &err), 0);
    }
    assert_true(change(f->c, "a", 100, 70, 0));
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.nhistory, LIMITER_HISTORY_MAX);
    assert_int_equal(row.history[0].limit, 70);
    assert_int_equal(db_test_long(f->c, "SELECT jsonb_array_length(history) FROM nlp_limiter"),
                     LIMITER_HISTORY_MAX);
}

static void test_a_lone_instance_starts_afresh(void **state)
{
    struct fixture *f = *state;
    struct limiter_row row;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_true(change(f->c, "a", 100, 70, 0));
    assert_int_equal(limiter_db_pause(f->c, "a", 5000, &err), 0);
    /* Another instance is alive: what the cluster learned stands. */
    assert_int_equal(work_register(f->c, "b", "h", 2, &err), 0);
    bool reset = true;
    assert_int_equal(limiter_db_restart(f->c, "a", 100, 15000, &reset, &err), 0);
    assert_false(reset);
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.limit, 70);
    /* Alone: back to the maximum, no ceiling, no pause. */
    db_test_exec(f->c, "UPDATE instances SET heartbeat_at = heartbeat_at - interval '1 min'");
    assert_int_equal(limiter_db_restart(f->c, "a", 100, 15000, &reset, &err), 0);
    assert_true(reset);
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.limit, 100);
    assert_int_equal(row.ceiling, 0);
    assert_int_equal(row.pause_left_ms, 0);
    assert_string_equal(row.history[0].reason, "restart");
}

static void test_refusal_reports_add_up(void **state)
{
    struct fixture *f = *state;
    PGconn *other = db_test_connect(f);
    struct limiter_row row;
    struct limiter_est est;
    struct cofi_err err;
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(work_register(f->c, "a", "h", 1, &err), 0);
    assert_int_equal(work_register(f->c, "b", "h", 2, &err), 0);
    assert_true(change(f->c, "a", 100, 70, 0));
    /* The first report of a refusal: one of the two live instances. */
    assert_int_equal(limiter_db_report(f->c, 22, 15000, &est, &err), 0);
    assert_int_equal(est.sum, 22);
    assert_int_equal(est.n, 1);
    assert_int_equal(est.live, 2);
    assert_int_equal(est.limit, 70);
    assert_int_equal(est.probe_ago_ms, -1); /* no increase in the history */
    /* The other's, from its own connection, adds up. */
    assert_int_equal(limiter_db_report(other, 18, 15000, &est, &err), 0);
    assert_int_equal(est.sum, 40);
    assert_int_equal(est.n, 2);
    /* The refinement of a decrease is not held back by the decrease a moment ago. */
    struct limiter_step s = {.from = 70,
                             .to = 40,
                             .ceiling = 41,
                             .probes_refused = 0,
                             .refine = true,
                             .reason = "accepted 40"};
    bool applied = false;
    assert_int_equal(limiter_db_change(f->c, "b", 100, &s, &applied, &err), 0);
    assert_true(applied);
    assert_int_equal(limiter_db_read(f->c, 100, &row, &err), 0);
    assert_int_equal(row.limit, 40);
    assert_int_equal(row.ceiling, 41);
    assert_string_equal(row.history[0].reason, "accepted 40");
    /* A report after the window is the first of another refusal. */
    db_test_exec(f->c, "UPDATE nlp_limiter SET est_at = est_at - interval '600 ms'");
    assert_int_equal(limiter_db_report(other, 5, 15000, &est, &err), 0);
    assert_int_equal(est.sum, 5);
    assert_int_equal(est.n, 1);
    assert_int_equal(est.limit, 40);
    /* After a probe, the report says how long ago it came; after another increase, -1. */
    db_test_exec(f->c, "UPDATE nlp_limiter SET changed_at = changed_at - interval '2 s',"
                       " decreased_at = decreased_at - interval '2 s'");
    struct limiter_step probe = {
        .from = 40, .to = 41, .ceiling = 41, .min_age_ms = 500, .reason = "probe"};
    assert_int_equal(limiter_db_change(f->c, "a", 100, &probe, &applied, &err), 0);
    assert_true(applied);
    assert_int_equal(limiter_db_report(other, 20, 15000, &est, &err), 0);
    assert_true(est.probe_ago_ms >= 0 && est.probe_ago_ms < 1000);
    db_test_exec(f->c, "UPDATE nlp_limiter SET changed_at = changed_at - interval '1 s'");
    assert_true(change(f->c, "a", 41, 61, 500));
    assert_int_equal(limiter_db_report(other, 20, 15000, &est, &err), 0);
    assert_int_equal(est.probe_ago_ms, -1);
    PQfinish(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_row_starts_at_max_and_changes_by_compare,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_two_instances_decrease_once_per_second, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_pause_on_the_database_clock, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_no_increase_until_a_window_after_a_pause,
                                        db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_pause_is_announced_to_listeners, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_history_is_capped, db_test_setup, db_test_teardown),
        cmocka_unit_test_setup_teardown(test_refusal_reports_add_up, db_test_setup,
                                        db_test_teardown),
        cmocka_unit_test_setup_teardown(test_a_lone_instance_starts_afresh, db_test_setup,
                                        db_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
