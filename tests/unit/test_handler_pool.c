/* The handler pool: jobs run on its threads, a full queue refuses at once, stop runs what is
 * queued. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "common/clock.h"
#include "server/handler_pool.h"

static atomic_int ran;
static atomic_int release; /* blocking jobs wait for this */

static void count_job(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
}

static void blocking_job(void *arg)
{
    (void)arg;
    while (atomic_load(&release) == 0) {
        clock_sleep_ms(1);
    }
    atomic_fetch_add(&ran, 1);
}

static void test_jobs_run(void **state)
{
    (void)state;
    atomic_store(&ran, 0);
    struct handler_pool *p;
    assert_int_equal(handler_pool_new(&p, 3, 100), 0);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(handler_pool_submit(p, count_job, NULL), 0);
    }
    handler_pool_free(p); /* runs what is queued */
    assert_int_equal(atomic_load(&ran), 50);
}

static void test_full_queue_refuses(void **state)
{
    (void)state;
    atomic_store(&ran, 0);
    atomic_store(&release, 0);
    struct handler_pool *p;
    assert_int_equal(handler_pool_new(&p, 1, 2), 0);
    assert_int_equal(handler_pool_submit(p, blocking_job, NULL), 0);
    /* Wait until the thread holds it, then fill the queue of 2. */
    int64_t deadline = clock_mono_ms() + 10000;
    int queued = 0;
    while (queued < 2 && clock_mono_ms() < deadline) {
        if (handler_pool_submit(p, blocking_job, NULL) == 0) {
            queued++;
        } else {
            clock_sleep_ms(1);
        }
    }
    assert_int_equal(queued, 2);
    assert_int_equal(handler_pool_submit(p, count_job, NULL), -1);
    atomic_store(&release, 1);
    handler_pool_stop(p);
    assert_int_equal(atomic_load(&ran), 3);
    assert_int_equal(handler_pool_submit(p, count_job, NULL), -1); /* stopped */
    handler_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_run),
        cmocka_unit_test(test_full_queue_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
