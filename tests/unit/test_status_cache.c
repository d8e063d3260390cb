/* The status cache: served within the window, never across a write, one refresher at a time,
 * bounded in entries and bytes, keys that never collide, answers shared by reference that
 * outlive their entries. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/clock.h"
#include "server/status_cache.h"

#define LONG_WINDOW_MS 60000

/* The clock of the caches whose tests are about time: it moves only when a test says so, so
 * a machine too busy to run the test on time can't make it fail. */
static _Atomic int64_t fake_us = 1000000;

static int64_t fake_now(void)
{
    return atomic_load(&fake_us);
}

static void advance_ms(int ms)
{
    atomic_fetch_add(&fake_us, (int64_t)ms * 1000);
}

/* Values freed so far by text_free, to check that every answer is freed exactly once. */
static atomic_long texts_freed;

static void text_free(void *value)
{
    atomic_fetch_add(&texts_freed, 1);
    free(value);
}

static void nothing_free(void *value)
{
    (void)value;
}

/* A new answer (one reference, the caller's) whose value is a copy of text. */
static struct status_cache_answer *text_answer(const char *text)
{
    char *copy = strdup(text);
    assert_non_null(copy);
    struct status_cache_answer *a = status_cache_answer_new(copy, strlen(text), text_free);
    assert_non_null(a);
    return a;
}

static bool get(struct status_cache *c, const char *key, struct status_cache_answer **a,
                struct status_cache_ticket *t)
{
    return status_cache_get(c, key, strlen(key), a, t);
}

static void put(struct status_cache *c, const char *key, const struct status_cache_ticket *t,
                const char *body)
{
    struct status_cache_answer *a = text_answer(body);
    status_cache_put(c, key, strlen(key), t, a);
    status_cache_answer_release(a);
}

/* Asserts that key is served with exactly `want`. */
static void assert_served(struct status_cache *c, const char *key, const char *want)
{
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_true(get(c, key, &a, &t));
    assert_string_equal(status_cache_answer_value(a), want);
    status_cache_answer_release(a);
}

static void assert_missed(struct status_cache *c, const char *key)
{
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get(c, key, &a, &t));
    status_cache_drop(c, key, strlen(key), &t);
}

static void test_served_until_a_write(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get(c, "/batches/1", &a, &t));
    assert_false(t.refresher); /* nothing to refresh yet */
    put(c, "/batches/1", &t, "{\"state\":\"created\"}");
    assert_served(c, "/batches/1", "{\"state\":\"created\"}");
    assert_served(c, "/batches/1", "{\"state\":\"created\"}");
    assert_missed(c, "/batches/2");

    status_cache_invalidate(c);
    assert_false(get(c, "/batches/1", &a, &t));
    assert_true(t.refresher);
    /* Nobody else gets the answer of before the write while it is re-rendered. */
    struct status_cache_ticket t2;
    assert_false(get(c, "/batches/1", &a, &t2));
    assert_false(t2.refresher);
    put(c, "/batches/1", &t, "{\"state\":\"running\"}");
    put(c, "/batches/1", &t2, "{\"state\":\"running\"}");
    assert_served(c, "/batches/1", "{\"state\":\"running\"}");
    status_cache_invalidate(NULL);
    status_cache_free(c);
    status_cache_free(NULL);
}

static void test_answer_rendered_before_a_write_is_not_stored(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get(c, "k", &a, &t));
    status_cache_invalidate(c); /* the write commits while the handler reads */
    put(c, "k", &t, "old");
    assert_missed(c, "k");
    status_cache_free(c);
}

static void test_older_answer_does_not_replace_a_newer_one(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    status_cache_set_clock(c, fake_now);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket slow;
    struct status_cache_ticket fast;
    assert_false(get(c, "k", &a, &slow));
    advance_ms(2);
    assert_false(get(c, "k", &a, &fast));
    put(c, "k", &fast, "new");
    put(c, "k", &slow, "old");
    assert_served(c, "k", "new");
    status_cache_free(c);
}

static void test_window_then_one_refresher_then_stale_limit(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, 100), 0);
    status_cache_set_clock(c, fake_now);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get(c, "k", &a, &t));
    put(c, "k", &t, "v1");
    assert_served(c, "k", "v1");
    advance_ms(110); /* past the window */
    struct status_cache_ticket refresh;
    assert_false(get(c, "k", &a, &refresh));
    assert_true(refresh.refresher);
    /* While it refreshes, the others get the previous answer... */
    assert_served(c, "k", "v1");
    /* ...but not once it is two windows old. */
    advance_ms(100);
    struct status_cache_ticket other;
    assert_false(get(c, "k", &a, &other));
    assert_false(other.refresher);
    status_cache_drop(c, "k", 1, &other);
    /* A failed refresh removes the entry: the error is not hidden. */
    status_cache_drop(c, "k", 1, &refresh);
    assert_false(get(c, "k", &a, &t));
    assert_false(t.refresher);
    put(c, "k", &t, "v2");
    assert_served(c, "k", "v2");
    status_cache_free(c);
}

static bool get_stale(struct status_cache *c, const char *key, struct status_cache_answer **a,
                      struct status_cache_ticket *t)
{
    return status_cache_get_stale(c, key, strlen(key), a, t);
}

/* Asserts that get_stale serves key with exactly `want`; returns whether the caller was made
 * the refresher. */
static bool stale_served(struct status_cache *c, const char *key, const char *want,
                         struct status_cache_ticket *t)
{
    struct status_cache_answer *a = NULL;
    assert_true(get_stale(c, key, &a, t));
    assert_non_null(a);
    assert_string_equal((const char *)status_cache_answer_value(a), want);
    status_cache_answer_release(a);
    return t->refresher;
}

static void test_stale_lookup_serves_the_old_answer_while_one_refreshes(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, 100), 0);
    status_cache_set_clock(c, fake_now);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get_stale(c, "k", &a, &t)); /* a miss is rendered by the caller */
    assert_false(t.refresher);
    put(c, "k", &t, "v1");
    assert_false(stale_served(c, "k", "v1", &t)); /* fresh: nothing to do */
    advance_ms(110);                              /* past the window */
    struct status_cache_ticket refresh;
    assert_true(stale_served(c, "k", "v1", &refresh)); /* old answer, and refresh it */
    assert_false(stale_served(c, "k", "v1", &t));      /* one refresher at a time */
    put(c, "k", &refresh, "v2");
    assert_false(stale_served(c, "k", "v2", &t));
    /* Two windows old: no longer served, the caller renders (and refreshes) it. */
    advance_ms(210);
    assert_false(get_stale(c, "k", &a, &t));
    assert_true(t.refresher);
    put(c, "k", &t, "v3");
    assert_false(stale_served(c, "k", "v3", &t));
    /* After a write nothing old is served, not even by a stale lookup. */
    status_cache_invalidate(c);
    assert_false(get_stale(c, "k", &a, &t));
    assert_true(t.refresher);
    /* A refresh that fails removes the entry. */
    status_cache_drop(c, "k", 1, &t);
    assert_false(get_stale(c, "k", &a, &t));
    assert_false(t.refresher);
    status_cache_drop(c, "k", 1, &t);
    status_cache_free(c);
}

/* A background refresh that started before a write is not stored. */
static void test_stale_refresh_across_a_write_is_not_stored(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, 100), 0);
    status_cache_set_clock(c, fake_now);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get_stale(c, "k", &a, &t));
    put(c, "k", &t, "v1");
    advance_ms(110);
    struct status_cache_ticket refresh;
    assert_true(stale_served(c, "k", "v1", &refresh));
    status_cache_invalidate(c);
    put(c, "k", &refresh, "rendered before the write");
    assert_false(get_stale(c, "k", &a, &t));
    status_cache_drop(c, "k", 1, &t);
    status_cache_free(c);
}

static void test_least_used_entry_goes_first(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    status_cache_set_clock(c, fake_now);
    char key[32];
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    for (int i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        snprintf(key, sizeof key, "/batches/%d", i);
        assert_false(get(c, key, &a, &t));
        put(c, key, &t, key);
    }
    advance_ms(1);
    assert_served(c, "/batches/0", "/batches/0"); /* now /batches/1 is the least used */
    advance_ms(1);
    assert_false(get(c, "/batches/new", &a, &t));
    put(c, "/batches/new", &t, "new");
    assert_served(c, "/batches/new", "new");
    assert_served(c, "/batches/0", "/batches/0");
    assert_missed(c, "/batches/1");
    assert_served(c, "/batches/2", "/batches/2");
    status_cache_free(c);
}

static void test_bytes_are_bounded(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    size_t big = STATUS_CACHE_BODY_MAX;
    static char body_in[1]; /* the value does not matter, the size does */
    struct status_cache_answer *huge = status_cache_answer_new(body_in, big + 1, nothing_free);
    struct status_cache_answer *largest = status_cache_answer_new(body_in, big, nothing_free);
    assert_non_null(huge);
    assert_non_null(largest);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    /* Over the limit of one answer: not stored. */
    assert_false(get(c, "huge", &a, &t));
    status_cache_put(c, "huge", 4, &t, huge);
    assert_missed(c, "huge");
    /* Twice as many largest answers as the total allows: the oldest went. */
    size_t n = 2 * STATUS_CACHE_BYTES_MAX / big;
    char key[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "k%zu", i);
        assert_false(get(c, key, &a, &t));
        status_cache_put(c, key, strlen(key), &t, largest); /* one answer in many entries */
        clock_sleep_ms(1);
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "k%zu", i);
        struct status_cache_ticket t2;
        if (get(c, key, &a, &t2)) {
            assert_ptr_equal(a, largest);
            status_cache_answer_release(a);
            kept++;
            assert_true(i >= n - STATUS_CACHE_BYTES_MAX / big);
        }
    }
    assert_int_equal(kept, STATUS_CACHE_BYTES_MAX / big);
    status_cache_answer_release(huge);
    status_cache_answer_release(largest);
    status_cache_free(c);
}

static void test_answer_outlives_its_entry(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    struct status_cache_answer *a = NULL;
    struct status_cache_ticket t;
    assert_false(get(c, "k", &a, &t));
    put(c, "k", &t, "v1");
    struct status_cache_answer *held = NULL;
    assert_true(get(c, "k", &held, &t));
    long freed = atomic_load(&texts_freed);
    /* Replaced, dropped and the cache gone: the answer held is still whole... */
    status_cache_invalidate(c);
    assert_false(get(c, "k", &a, &t));
    put(c, "k", &t, "v2");
    status_cache_drop(c, "k", 1, &t);
    status_cache_free(c);
    assert_int_equal(atomic_load(&texts_freed), freed + 1); /* v2 only */
    assert_string_equal(status_cache_answer_value(held), "v1");
    /* ...and freed with its last reference. */
    status_cache_answer_release(held);
    assert_int_equal(atomic_load(&texts_freed), freed + 2);
    status_cache_answer_release(NULL);
}

#define SHARING_THREADS 4
#define SHARING_ROUNDS  20000
#define SHARING_KEYS    3

static atomic_long texts_made;
static atomic_long answers_served;
static atomic_long answers_torn; /* served with another key's text: cmocka can't fail a thread */

/* One thread of test_threads_share_answers: serves, renders, drops and writes in turn. */
static void *share_answers(void *arg)
{
    struct status_cache *c = arg;
    char key[16];
    char text[32];
    for (int i = 0; i < SHARING_ROUNDS; i++) {
        snprintf(key, sizeof key, "k%d", i % SHARING_KEYS);
        struct status_cache_answer *a = NULL;
        struct status_cache_ticket t;
        if (get(c, key, &a, &t)) {
            /* Whatever another thread does meanwhile, the answer served is whole. */
            const char *v = status_cache_answer_value(a);
            if (strncmp(v, key, strlen(key)) != 0 || v[strlen(key)] != '=') {
                atomic_fetch_add(&answers_torn, 1);
            }
            atomic_fetch_add(&answers_served, 1);
            status_cache_answer_release(a);
        } else if (i % 7 == 0) {
            status_cache_drop(c, key, strlen(key), &t);
        } else {
            snprintf(text, sizeof text, "%s=%d", key, i);
            atomic_fetch_add(&texts_made, 1);
            put(c, key, &t, text);
        }
        if (i % 101 == 0) {
            status_cache_invalidate(c);
        }
    }
    return NULL;
}

static void test_threads_share_answers(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, 1), 0);
    long freed = atomic_load(&texts_freed);
    atomic_store(&texts_made, 0);
    atomic_store(&answers_served, 0);
    atomic_store(&answers_torn, 0);
    pthread_t threads[SHARING_THREADS];
    for (int i = 0; i < SHARING_THREADS; i++) {
        assert_int_equal(pthread_create(&threads[i], NULL, share_answers, c), 0);
    }
    for (int i = 0; i < SHARING_THREADS; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    }
    status_cache_free(c);
    assert_true(atomic_load(&answers_served) > 0);
    assert_int_equal(atomic_load(&answers_torn), 0);
    /* Every answer made was freed, once. */
    assert_int_equal(atomic_load(&texts_freed) - freed, atomic_load(&texts_made));
}

static void test_key_parts_never_collide(void **state)
{
    (void)state;
    char a[64];
    char b[64];
    size_t alen = 0;
    size_t blen = 0;
    /* "?x=1&batch_id=5" against one argument whose value holds the rest. */
    assert_int_equal(status_cache_key_part(a, sizeof a, &alen, "/stages/llm1/status"), 0);
    assert_int_equal(status_cache_key_part(a, sizeof a, &alen, "x"), 0);
    assert_int_equal(status_cache_key_part(a, sizeof a, &alen, "1"), 0);
    assert_int_equal(status_cache_key_part(a, sizeof a, &alen, "batch_id"), 0);
    assert_int_equal(status_cache_key_part(a, sizeof a, &alen, "5"), 0);
    assert_int_equal(status_cache_key_part(b, sizeof b, &blen, "/stages/llm1/status"), 0);
    assert_int_equal(status_cache_key_part(b, sizeof b, &blen, "x"), 0);
    assert_int_equal(status_cache_key_part(b, sizeof b, &blen, "11:8:batch_id1:5"), 0);
    assert_false(alen == blen && memcmp(a, b, alen) == 0);
    /* A missing value is not an empty one. */
    size_t n1 = 0;
    size_t n2 = 0;
    assert_int_equal(status_cache_key_part(a, sizeof a, &n1, NULL), 0);
    assert_int_equal(status_cache_key_part(b, sizeof b, &n2, ""), 0);
    assert_false(n1 == n2 && memcmp(a, b, n1) == 0);
    /* The length in decimal, then ':' and the bytes. */
    char exact[32];
    size_t elen = 0;
    assert_int_equal(status_cache_key_part(exact, sizeof exact, &elen, "11:8:batch_id1:5"), 0);
    assert_int_equal(elen, 19);
    assert_memory_equal(exact, "16:11:8:batch_id1:5", 19);
    /* Too long: -1, nothing changed. */
    char small[8];
    size_t used = 0;
    assert_int_equal(status_cache_key_part(small, sizeof small, &used, "abc"), 0);
    assert_int_equal(used, 5);
    assert_int_equal(status_cache_key_part(small, sizeof small, &used, "abc"), -1);
    assert_int_equal(used, 5);
    assert_memory_equal(small, "3:abc", 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_served_until_a_write),
        cmocka_unit_test(test_answer_rendered_before_a_write_is_not_stored),
        cmocka_unit_test(test_older_answer_does_not_replace_a_newer_one),
        cmocka_unit_test(test_window_then_one_refresher_then_stale_limit),
        cmocka_unit_test(test_stale_lookup_serves_the_old_answer_while_one_refreshes),
        cmocka_unit_test(test_stale_refresh_across_a_write_is_not_stored),
        cmocka_unit_test(test_least_used_entry_goes_first),
        cmocka_unit_test(test_bytes_are_bounded),
        cmocka_unit_test(test_answer_outlives_its_entry),
        cmocka_unit_test(test_threads_share_answers),
        cmocka_unit_test(test_key_parts_never_collide),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
