/* Capped buffers: the cap is an error, not a crash; JSON string literals are escaped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/buf.h"

static void test_cap_is_an_error_and_changes_nothing(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_append(&b, "12345", 5), 0);
    assert_int_equal(buf_append(&b, "6789", 4), -1);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "12345");
    assert_int_equal(buf_printf(&b, "%d", 123), 0);
    assert_int_equal(buf_printf(&b, "%d", 1), -1);
    assert_string_equal(b.data, "12345123");
    buf_free(&b);
}

static void test_json_string_round_trips(void **state)
{
    (void)state;
    const char *cases[] = {"plain", "quote \" and backslash \\", "tab\tnew\nline\x01", "", "é ü"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf b;
        buf_init(&b, 1024);
        assert_int_equal(buf_json_string(&b, cases[i]), 0);
        json_error_t err;
        json_t *v = json_loads(b.data, JSON_DECODE_ANY, &err);
        assert_non_null(v);
        assert_string_equal(json_string_value(v), cases[i]);
        json_decref(v);
        buf_free(&b);
    }
    struct buf b;
    buf_init(&b, 16);
    assert_int_equal(buf_json_string(&b, NULL), 0);
    assert_string_equal(b.data, "null");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_is_an_error_and_changes_nothing),
        cmocka_unit_test(test_json_string_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
