/* The share arithmetic (pipeline/shares.h): fair parts, what may be taken, how a share shrinks,
 * and the invariant under instances joining, leaving and dying while requests are in flight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/shares.h"

static void test_fair_parts_add_up_to_the_total(void **state)
{
    (void)state;
    for (int total = 0; total <= 13; total++) {
        for (int live = 1; live <= 5; live++) {
            int sum = 0;
            for (int rank = 0; rank < live; rank++) {
                sum += shares_fair(total, live, rank);
            }
            assert_int_equal(sum, total);
        }
    }
    /* The lower ids take the remainder: two instances, capacity 1. */
    assert_int_equal(shares_fair(1, 2, 0), 1);
    assert_int_equal(shares_fair(1, 2, 1), 0);
    assert_int_equal(shares_fair(5, 0, 0), 5);
}

static void test_want_never_takes_what_others_hold(void **state)
{
    (void)state;
    assert_int_equal(shares_want(10, 5, 0), 5);
    assert_int_equal(shares_want(10, 5, 7), 3);
    assert_int_equal(shares_want(10, 5, 12), 0);
}

static void test_shrinking_keeps_what_is_in_flight(void **state)
{
    (void)state;
    assert_int_equal(shares_next(8, 4, 6), 6); /* 6 still in flight */
    assert_int_equal(shares_next(8, 4, 2), 4);
    assert_int_equal(shares_next(8, 4, 9), 8); /* never above what is held */
    assert_int_equal(shares_next(2, 5, 2), 5); /* growing takes the free part at once */
    assert_int_equal(shares_lane_limit(6, 4), 4);
    assert_int_equal(shares_lane_limit(3, 4), 3);
    assert_int_equal(shares_lane_limit(0, -1), 0);
}

/* One instance in the simulation: its published share, its lane limit and its requests in
 * flight (never above the lane limit when they start). */
struct sim_inst {
    bool alive;  /* its row is there (others count it live) */
    bool exists; /* its shares are there (alive, or dead but held) */
    int share, limit, in_flight;
};

/* One negotiation of instance k as lease.c does it, under the lock. */
static void negotiate(struct sim_inst *v, int n, int k, int total)
{
    int live = 0;
    int rank = 0;
    int others = 0;
    for (int i = 0; i < n; i++) {
        if (v[i].alive) {
            live++;
            rank += i < k;
        }
        if (i != k && v[i].exists) {
            others += v[i].share;
        }
    }
    int want = shares_want(total, shares_fair(total, live, rank), others);
    if (want < v[k].share) {
        v[k].limit = want; /* lowered before anything is published */
    }
    int next = shares_next(v[k].share, want, v[k].in_flight);
    v[k].share = next;
    v[k].limit = shares_lane_limit(next, want);
}

static void test_invariant_under_joins_deaths_and_traffic(void **state)
{
    (void)state;
    srand(7);
    for (int round = 0; round < 200; round++) {
        enum { N = 4 };
        struct sim_inst v[N];
        memset(v, 0, sizeof v);
        int total = 1 + rand() % 9;
        for (int step = 0; step < 400; step++) {
            int k = rand() % N;
            int what = rand() % 10;
            if (what == 0 && !v[k].exists) {
                v[k] = (struct sim_inst){.alive = true, .exists = true}; /* joins */
            } else if (what == 1 && v[k].alive) {
                v[k].alive = false; /* expired by another: shares held, requests may run */
            } else if (what == 2 && !v[k].alive && v[k].exists && v[k].in_flight == 0) {
                v[k].exists = false; /* its hold is over: nothing of it runs any more */
                v[k].share = 0;
            } else if (what == 3 && v[k].exists && !v[k].alive) {
                v[k].alive = true; /* came back: its held shares are its own again */
            } else if (what < 6 && v[k].alive) {
                negotiate(v, N, k, total);
            } else if (what < 8 && v[k].alive && v[k].in_flight < v[k].limit) {
                v[k].in_flight++; /* a request starts within the lane's limit */
            } else if (v[k].in_flight > 0) {
                v[k].in_flight--; /* one ends (also for a dead instance, or cut short) */
            }
            int sum = 0;
            int running = 0; /* requests of every instance, a dead one's included */
            for (int i = 0; i < N; i++) {
                running += v[i].in_flight;
                if (v[i].exists) {
                    sum += v[i].share;
                    assert_true(v[i].in_flight <= v[i].share);
                }
            }
            assert_true(sum <= total);
            assert_true(running <= total);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fair_parts_add_up_to_the_total),
        cmocka_unit_test(test_want_never_takes_what_others_hold),
        cmocka_unit_test(test_shrinking_keeps_what_is_in_flight),
        cmocka_unit_test(test_invariant_under_joins_deaths_and_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
