/* The fair order of the lanes' queues (pipeline/stride.h, jobq_insert_fair). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/job.h"
#include "pipeline/stride.h"

/* Queues jobs of batches 1 (big) and 2 (small) as a lane would, then serves them in order. */
static void test_a_new_batch_goes_among_the_queued_ones(void **state)
{
    (void)state;
    struct stride s;
    assert_int_equal(stride_init(&s), 0);
    struct job jobs[130];
    memset(jobs, 0, sizeof jobs);
    struct jobq q = {0};
    for (int i = 0; i < 120; i++) {
        jobs[i].batch_id = 1;
        jobs[i].vtime = stride_tag(&s, 1, 1);
        jobq_insert_fair(&q, &jobs[i]);
    }
    for (int i = 120; i < 130; i++) {
        jobs[i].batch_id = 2;
        jobs[i].vtime = stride_tag(&s, 2, 1);
        jobq_insert_fair(&q, &jobs[i]);
    }
    /* Of the first 20 served, half are the small batch's. */
    int small = 0;
    for (int i = 0; i < 20; i++) {
        struct job *j = jobq_pop(&q);
        stride_served(&s, j->vtime);
        small += j->batch_id == 2;
    }
    assert_int_equal(small, 10);
    assert_int_equal(q.len, 110);
    stride_free(&s);
}

static void test_priority_sets_the_pace(void **state)
{
    (void)state;
    struct stride s;
    assert_int_equal(stride_init(&s), 0);
    struct job jobs[400];
    memset(jobs, 0, sizeof jobs);
    struct jobq q = {0};
    for (int i = 0; i < 400; i++) {
        jobs[i].batch_id = i % 2 ? 7 : 8;
        jobs[i].vtime = stride_tag(&s, jobs[i].batch_id, i % 2 ? 3 : 1);
        jobq_insert_fair(&q, &jobs[i]);
    }
    int heavy = 0;
    for (int i = 0; i < 100; i++) {
        struct job *j = jobq_pop(&q);
        stride_served(&s, j->vtime);
        heavy += j->batch_id == 7;
    }
    assert_true(heavy >= 73 && heavy <= 77); /* three to one */
    stride_free(&s);
}

static void test_an_idle_batch_earns_no_credit(void **state)
{
    (void)state;
    struct stride s;
    assert_int_equal(stride_init(&s), 0);
    double first = stride_tag(&s, 1, 1);
    for (int i = 0; i < 50; i++) {
        stride_served(&s, stride_tag(&s, 2, 1));
    }
    /* Batch 1 comes back: it starts at the clock, not 50 turns ahead of batch 2. */
    double back = stride_tag(&s, 1, 1);
    assert_true(back > first + 40);
    stride_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_new_batch_goes_among_the_queued_ones),
        cmocka_unit_test(test_priority_sets_the_pace),
        cmocka_unit_test(test_an_idle_batch_earns_no_credit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
