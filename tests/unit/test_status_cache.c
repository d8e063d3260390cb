/* The status cache: served within the window, never across a write, one refresher at a time,
 * bounded in entries and bytes, keys that never collide. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/clock.h"
#include "server/status_cache.h"

#define LONG_WINDOW_MS 60000

static bool get(struct status_cache *c, const char *key, char **body, size_t *len,
                struct status_cache_ticket *t)
{
    return status_cache_get(c, key, strlen(key), body, len, t);
}

static void put(struct status_cache *c, const char *key, const struct status_cache_ticket *t,
                const char *body)
{
    status_cache_put(c, key, strlen(key), t, body, strlen(body));
}

/* Asserts that key is served with exactly `want`. */
static void assert_served(struct status_cache *c, const char *key, const char *want)
{
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    assert_true(get(c, key, &body, &len, &t));
    assert_int_equal(len, strlen(want));
    assert_memory_equal(body, want, len);
    free(body);
}

static void assert_missed(struct status_cache *c, const char *key)
{
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    assert_false(get(c, key, &body, &len, &t));
    status_cache_drop(c, key, strlen(key), &t);
}

static void test_served_until_a_write(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    assert_false(get(c, "/batches/1", &body, &len, &t));
    assert_false(t.refresher); /* nothing to refresh yet */
    put(c, "/batches/1", &t, "{\"state\":\"created\"}");
    assert_served(c, "/batches/1", "{\"state\":\"created\"}");
    assert_served(c, "/batches/1", "{\"state\":\"created\"}");
    assert_missed(c, "/batches/2");

    status_cache_invalidate(c);
    assert_false(get(c, "/batches/1", &body, &len, &t));
    assert_true(t.refresher);
    /* Nobody else gets the answer of before the write while it is re-rendered. */
    struct status_cache_ticket t2;
    assert_false(get(c, "/batches/1", &body, &len, &t2));
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
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    assert_false(get(c, "k", &body, &len, &t));
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
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket slow;
    struct status_cache_ticket fast;
    assert_false(get(c, "k", &body, &len, &slow));
    clock_sleep_ms(2);
    assert_false(get(c, "k", &body, &len, &fast));
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
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    assert_false(get(c, "k", &body, &len, &t));
    put(c, "k", &t, "v1");
    assert_served(c, "k", "v1");
    clock_sleep_ms(110); /* past the window */
    struct status_cache_ticket refresh;
    assert_false(get(c, "k", &body, &len, &refresh));
    assert_true(refresh.refresher);
    /* While it refreshes, the others get the previous answer... */
    assert_served(c, "k", "v1");
    /* ...but not once it is two windows old. */
    clock_sleep_ms(100);
    struct status_cache_ticket other;
    assert_false(get(c, "k", &body, &len, &other));
    assert_false(other.refresher);
    status_cache_drop(c, "k", 1, &other);
    /* A failed refresh removes the entry: the error is not hidden. */
    status_cache_drop(c, "k", 1, &refresh);
    assert_false(get(c, "k", &body, &len, &t));
    assert_false(t.refresher);
    put(c, "k", &t, "v2");
    assert_served(c, "k", "v2");
    status_cache_free(c);
}

static void test_least_used_entry_goes_first(void **state)
{
    (void)state;
    struct status_cache *c;
    assert_int_equal(status_cache_new(&c, LONG_WINDOW_MS), 0);
    char key[32];
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    for (int i = 0; i < STATUS_CACHE_ENTRIES; i++) {
        snprintf(key, sizeof key, "/batches/%d", i);
        assert_false(get(c, key, &body, &len, &t));
        put(c, key, &t, key);
    }
    clock_sleep_ms(1);
    assert_served(c, "/batches/0", "/batches/0"); /* now /batches/1 is the least used */
    clock_sleep_ms(1);
    assert_false(get(c, "/batches/new", &body, &len, &t));
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
    char *body_in = malloc(big + 1);
    assert_non_null(body_in);
    memset(body_in, 'x', big + 1);
    char *body = NULL;
    size_t len = 0;
    struct status_cache_ticket t;
    /* Over the limit of one answer: not stored. */
    assert_false(get(c, "huge", &body, &len, &t));
    status_cache_put(c, "huge", 4, &t, body_in, big + 1);
    assert_missed(c, "huge");
    /* Twice as many largest answers as the total allows: the oldest went. */
    size_t n = 2 * STATUS_CACHE_BYTES_MAX / big;
    char key[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "k%zu", i);
        assert_false(get(c, key, &body, &len, &t));
        status_cache_put(c, key, strlen(key), &t, body_in, big);
        clock_sleep_ms(1);
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "k%zu", i);
        struct status_cache_ticket t2;
        if (get(c, key, &body, &len, &t2)) {
            assert_int_equal(len, big);
            free(body);
            kept++;
            assert_true(i >= n - STATUS_CACHE_BYTES_MAX / big);
        }
    }
    assert_int_equal(kept, STATUS_CACHE_BYTES_MAX / big);
    free(body_in);
    status_cache_free(c);
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
        cmocka_unit_test(test_least_used_entry_goes_first),
        cmocka_unit_test(test_bytes_are_bounded),
        cmocka_unit_test(test_key_parts_never_collide),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
