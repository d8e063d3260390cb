/* X-Request-Id: a client's valid id is kept, anything else is replaced by a random one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "server/request_id.h"

static void test_visible_ascii_up_to_128_is_valid(void **state)
{
    (void)state;
    char longest[REQUEST_ID_MAX + 2];
    memset(longest, 'a', sizeof longest);
    longest[REQUEST_ID_MAX] = '\0';
    assert_true(request_id_valid("abc-123_x:y/z~!"));
    assert_true(request_id_valid(longest));
    longest[REQUEST_ID_MAX] = 'a';
    longest[REQUEST_ID_MAX + 1] = '\0';
    assert_false(request_id_valid(longest));
    assert_false(request_id_valid(NULL));
    assert_false(request_id_valid(""));
    assert_false(request_id_valid("has space"));
    assert_false(request_id_valid("tab\there"));
    assert_false(request_id_valid("new\nline"));
    assert_false(request_id_valid("del\x7f"));
    assert_false(request_id_valid("caf\xc3\xa9"));
}

static void test_made_ids_are_32_hex_and_differ(void **state)
{
    (void)state;
    char a[40];
    char b[40];
    request_id_make(a, sizeof a);
    request_id_make(b, sizeof b);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    assert_string_not_equal(a, b);
    char small[5];
    request_id_make(small, sizeof small);
    assert_int_equal(strlen(small), 4);
}

static void test_take_keeps_a_valid_id_and_replaces_others(void **state)
{
    (void)state;
    char out[REQUEST_ID_MAX + 1];
    request_id_take("client-id-1", out, sizeof out);
    assert_string_equal(out, "client-id-1");
    request_id_take("bad id", out, sizeof out);
    assert_int_equal(strlen(out), 32);
    request_id_take(NULL, out, sizeof out);
    assert_int_equal(strlen(out), 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_visible_ascii_up_to_128_is_valid),
        cmocka_unit_test(test_made_ids_are_32_hex_and_differ),
        cmocka_unit_test(test_take_keeps_a_valid_id_and_replaces_others),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
