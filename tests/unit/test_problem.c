/* server/problem.c: every cofi_status maps to its HTTP status and an RFC 9457 body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "server/problem.h"

static void test_status_of_every_code(void **state)
{
    (void)state;
    assert_int_equal(problem_http_status(COFI_OK), 200);
    assert_int_equal(problem_http_status(COFI_E_BAD_REQUEST), 400);
    assert_int_equal(problem_http_status(COFI_E_UNAUTHORIZED), 401);
    assert_int_equal(problem_http_status(COFI_E_FORBIDDEN), 403);
    assert_int_equal(problem_http_status(COFI_E_NOT_FOUND), 404);
    assert_int_equal(problem_http_status(COFI_E_METHOD), 405);
    assert_int_equal(problem_http_status(COFI_E_CONFLICT), 409);
    assert_int_equal(problem_http_status(COFI_E_TOO_LARGE), 413);
    assert_int_equal(problem_http_status(COFI_E_MEDIA_TYPE), 415);
    assert_int_equal(problem_http_status(COFI_E_INVALID), 422);
    assert_int_equal(problem_http_status(COFI_E_UNAVAILABLE), 503);
    assert_int_equal(problem_http_status(COFI_E_INTERNAL), 500);
    assert_int_equal(problem_http_status(COFI_E_NOMEM), 500);
    assert_int_equal(problem_http_status(-999), 500);
}

static void test_types_and_titles_are_stable(void **state)
{
    (void)state;
    assert_string_equal(problem_type_uri(422), "https://cofi.dev/problems/validation");
    assert_string_equal(problem_type_uri(404), "https://cofi.dev/problems/not-found");
    assert_string_equal(problem_type_uri(418), "https://cofi.dev/problems/internal");
    assert_string_equal(problem_title(413), "Content Too Large");
    assert_string_equal(problem_title(405), "Method Not Allowed");
    assert_string_equal(problem_title(418), "Error");
}

static void test_body_has_the_four_members_and_extensions(void **state)
{
    (void)state;
    struct cofi_err err;
    cofi_err_set(&err, COFI_E_INVALID, "file \"x\" does not exist");
    json_t *ext = json_pack("{s:[{s:s, s:s}], s:s}", "errors", "file", "x", "reason",
                            "does not exist", "status", "ignored");
    json_t *p = problem_new(&err, ext);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "type")),
                        "https://cofi.dev/problems/validation");
    assert_string_equal(json_string_value(json_object_get(p, "title")), "Unprocessable Content");
    assert_int_equal(json_integer_value(json_object_get(p, "status")), 422);
    assert_string_equal(json_string_value(json_object_get(p, "detail")),
                        "file \"x\" does not exist");
    assert_int_equal(json_array_size(json_object_get(p, "errors")), 1);
    json_decref(p);
}

static void test_internal_errors_hide_their_message(void **state)
{
    (void)state;
    struct cofi_err err;
    cofi_err_set(&err, COFI_E_INTERNAL, "relation \"secret_table\" does not exist");
    json_t *p = problem_new(&err, NULL);
    assert_non_null(p);
    assert_int_equal(json_integer_value(json_object_get(p, "status")), 500);
    assert_null(strstr(json_string_value(json_object_get(p, "detail")), "secret_table"));
    json_decref(p);

    cofi_err_set(&err, COFI_E_UNAVAILABLE, "could not connect to host 10.0.0.1");
    p = problem_new(&err, NULL);
    assert_int_equal(json_integer_value(json_object_get(p, "status")), 503);
    assert_null(strstr(json_string_value(json_object_get(p, "detail")), "10.0.0.1"));
    json_decref(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_of_every_code),
        cmocka_unit_test(test_types_and_titles_are_stable),
        cmocka_unit_test(test_body_has_the_four_members_and_extensions),
        cmocka_unit_test(test_internal_errors_hide_their_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
