/* Strict HTTP: request targets, header lines and framing that cofid refuses before routing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/http_strict.h"

static int target(const char *raw, bool *too_many)
{
    struct cofi_err err;
    cofi_err_clear(&err);
    return http_strict_target(raw, too_many, &err);
}

static void test_targets(void **state)
{
    (void)state;
    bool many = false;
    assert_int_equal(target("/batches/1", &many), 0);
    assert_int_equal(target("/batches?limit=5&cursor=9", &many), 0);
    assert_int_equal(target("/batches/a%20b", &many), 0);
    /* An encoded '/' would route /batches%2F1 as /batches/1; an encoded NUL cuts values. */
    assert_int_equal(target("/batches%2F1", &many), COFI_E_BAD_REQUEST);
    assert_int_equal(target("/batches%2f1", &many), COFI_E_BAD_REQUEST);
    assert_int_equal(target("/batches/1%00", &many), COFI_E_BAD_REQUEST);
    assert_int_equal(target("/batches?limit=1%00", &many), COFI_E_BAD_REQUEST);
    assert_false(many);
    /* %2F in a query value is data, not a path separator. */
    assert_int_equal(target("/batches?cursor=%2F", &many), 0);
    /* Short escapes at the end are not read past the string. */
    assert_int_equal(target("/batches%2", &many), 0);
    assert_int_equal(target("/batches?x=%0", &many), 0);
}

static void test_too_many_query_arguments(void **state)
{
    (void)state;
    char raw[4096];
    size_t n = (size_t)snprintf(raw, sizeof raw, "/batches?");
    for (int i = 0; i < HTTP_QUERY_ARGS_MAX; i++) {
        n += (size_t)snprintf(raw + n, sizeof raw - n, "%sa%d=1", i > 0 ? "&" : "", i);
    }
    bool many = true;
    assert_int_equal(target(raw, &many), 0);
    assert_false(many);
    snprintf(raw + n, sizeof raw - n, "&one=more");
    assert_int_equal(target(raw, &many), COFI_E_BAD_REQUEST);
    assert_true(many);
}

static int hdr(const char *name, const char *value, size_t value_len)
{
    struct cofi_err err;
    cofi_err_clear(&err);
    return http_strict_header(name, strlen(name), value, value_len, &err);
}

static void test_header_lines(void **state)
{
    (void)state;
    assert_int_equal(hdr("Content-Type", "application/json", 16), 0);
    assert_int_equal(hdr("X-Tab", "a\tb", 3), 0);
    assert_int_equal(hdr("Bad Name", "v", 1), COFI_E_BAD_REQUEST);
    assert_int_equal(hdr("Bad:Name", "v", 1), COFI_E_BAD_REQUEST);
    assert_int_equal(hdr("", "v", 1), COFI_E_BAD_REQUEST);
    assert_int_equal(hdr("X-A", "a\0b", 3), COFI_E_BAD_REQUEST);
    assert_int_equal(hdr("X-A", "a\rb", 3), COFI_E_BAD_REQUEST);
    assert_int_equal(hdr("X-A", "a\nb", 3), COFI_E_BAD_REQUEST);
    assert_int_equal(hdr("X-A", "a\x7f", 2), COFI_E_BAD_REQUEST);
    /* The name in the message is escaped. */
    struct cofi_err err;
    assert_int_equal(http_strict_header("X\n", 2, "v", 1, &err), COFI_E_BAD_REQUEST);
    assert_null(strchr(err.msg, '\n'));
}

static void test_framing(void **state)
{
    (void)state;
    struct cofi_err err;
    assert_int_equal(http_strict_framing(0, NULL, 0, NULL, &err), 0);
    assert_int_equal(http_strict_framing(1, "15", 0, NULL, &err), 0);
    assert_int_equal(http_strict_framing(0, NULL, 1, "chunked", &err), 0);
    assert_int_equal(http_strict_framing(0, NULL, 1, "Chunked", &err), 0);
    assert_int_equal(http_strict_framing(2, "15", 0, NULL, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(http_strict_framing(1, "+15", 0, NULL, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(http_strict_framing(1, "", 0, NULL, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(http_strict_framing(1, "15", 1, "chunked", &err), COFI_E_BAD_REQUEST);
    assert_int_equal(http_strict_framing(0, NULL, 2, "chunked", &err), COFI_E_BAD_REQUEST);
    assert_int_equal(http_strict_framing(0, NULL, 1, "gzip", &err), COFI_E_NOT_IMPLEMENTED);
    assert_int_equal(http_strict_framing(0, NULL, 1, "gzip, chunked", &err),
                     COFI_E_NOT_IMPLEMENTED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_too_many_query_arguments),
        cmocka_unit_test(test_header_lines),
        cmocka_unit_test(test_framing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
