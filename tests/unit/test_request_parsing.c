/* handlers/request.c: ids, paging parameters, content types, bodies, idempotency keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "handlers/handlers.h"

static void test_ids(void **state)
{
    (void)state;
    int64_t id = -1;
    assert_int_equal(req_parse_id("1", &id), 0);
    assert_int_equal(id, 1);
    assert_int_equal(req_parse_id("9223372036854775807", &id), 0);
    assert_int_equal(id, INT64_MAX);
    id = 5;
    assert_int_equal(req_parse_id("9223372036854775808", &id), -1);
    assert_int_equal(req_parse_id("99999999999999999999", &id), -1);
    assert_int_equal(req_parse_id("0", &id), -1);
    assert_int_equal(req_parse_id("", &id), -1);
    assert_int_equal(req_parse_id(NULL, &id), -1);
    assert_int_equal(req_parse_id("-1", &id), -1);
    assert_int_equal(req_parse_id("+1", &id), -1);
    assert_int_equal(req_parse_id(" 1", &id), -1);
    assert_int_equal(req_parse_id("1a", &id), -1);
    assert_int_equal(req_parse_id("1.0", &id), -1);
    assert_int_equal(id, 5);
}

static void test_limits(void **state)
{
    (void)state;
    struct cofi_err err;
    int limit = 0;
    assert_int_equal(req_parse_limit(NULL, &limit, &err), 0);
    assert_int_equal(limit, 50);
    assert_int_equal(req_parse_limit("1", &limit, &err), 0);
    assert_int_equal(limit, 1);
    assert_int_equal(req_parse_limit("1000", &limit, &err), 0);
    assert_int_equal(limit, 1000);
    assert_int_equal(req_parse_limit("1001", &limit, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_parse_limit("0", &limit, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_parse_limit("", &limit, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_parse_limit("ten", &limit, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_parse_limit("-5", &limit, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(limit, 1000);
}

static void test_cursors(void **state)
{
    (void)state;
    struct cofi_err err;
    int64_t c = -1;
    assert_int_equal(req_parse_cursor(NULL, &c, &err), 0);
    assert_int_equal(c, 0);
    assert_int_equal(req_parse_cursor("42", &c, &err), 0);
    assert_int_equal(c, 42);
    assert_int_equal(req_parse_cursor("abc", &c, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_parse_cursor("0", &c, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_parse_cursor("", &c, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(c, 42);
}

static void test_json_content_types(void **state)
{
    (void)state;
    assert_true(req_is_json_type("application/json"));
    assert_true(req_is_json_type("application/json; charset=utf-8"));
    assert_true(req_is_json_type("Application/JSON;charset=UTF-8"));
    assert_true(req_is_json_type(" application/json "));
    assert_false(req_is_json_type(NULL));
    assert_false(req_is_json_type(""));
    assert_false(req_is_json_type("text/plain"));
    assert_false(req_is_json_type("application/jsonx"));
    assert_false(req_is_json_type("application/x-www-form-urlencoded"));
}

static struct http_req body_req(const char *body, const char *ctype)
{
    struct http_req r;
    memset(&r, 0, sizeof r);
    r.method = "POST";
    r.body = body;
    r.body_len = body != NULL ? strlen(body) : 0;
    r.content_type = ctype;
    return r;
}

static void test_json_bodies(void **state)
{
    (void)state;
    struct cofi_err err;
    json_t *v = (json_t *)1;
    struct http_req r = body_req(NULL, NULL);
    assert_int_equal(req_json_body(&r, false, &v, &err), 0);
    assert_null(v);
    assert_int_equal(req_json_body(&r, true, &v, &err), COFI_E_BAD_REQUEST);
    r = body_req("{}", "text/plain");
    assert_int_equal(req_json_body(&r, true, &v, &err), COFI_E_MEDIA_TYPE);
    r = body_req("{}", NULL);
    assert_int_equal(req_json_body(&r, true, &v, &err), COFI_E_MEDIA_TYPE);
    r = body_req("{\"a\":", "application/json");
    assert_int_equal(req_json_body(&r, true, &v, &err), COFI_E_BAD_REQUEST);
    r = body_req("{\"a\":1,\"a\":2}", "application/json");
    assert_int_equal(req_json_body(&r, true, &v, &err), COFI_E_BAD_REQUEST);
    r = body_req("{\"a\":[1]}", "application/json");
    assert_int_equal(req_json_body(&r, true, &v, &err), 0);
    assert_true(json_is_object(v));
    json_decref(v);
}

static void test_action_bodies(void **state)
{
    (void)state;
    struct cofi_err err;
    const char *mode = "x";
    struct http_req r = body_req(NULL, NULL);
    assert_int_equal(req_parse_action_body(&r, &mode, &err), 0);
    assert_null(mode);
    r = body_req("{}", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), 0);
    assert_null(mode);
    r = body_req("{\"mode\":\"staged\"}", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), 0);
    assert_string_equal(mode, "staged");
    r = body_req("{\"mode\":\"pipelined\"}", "application/json; charset=utf-8");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), 0);
    assert_string_equal(mode, "pipelined");
    r = body_req("{\"mode\":\"fast\"}", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), COFI_E_INVALID);
    r = body_req("{\"mode\":1}", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), COFI_E_BAD_REQUEST);
    r = body_req("{\"mode\":null}", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), COFI_E_BAD_REQUEST);
    r = body_req("{\"other\":1}", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), COFI_E_BAD_REQUEST);
    assert_non_null(strstr(err.msg, "other"));
    r = body_req("[]", "application/json");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), COFI_E_BAD_REQUEST);
    r = body_req("mode=staged", "application/x-www-form-urlencoded");
    assert_int_equal(req_parse_action_body(&r, &mode, &err), COFI_E_MEDIA_TYPE);
}

static void test_idempotency_keys(void **state)
{
    (void)state;
    struct cofi_err err;
    char key[257];
    memset(key, 'k', sizeof key);
    key[255] = '\0';
    assert_int_equal(req_check_idempotency_key(key, &err), 0);
    key[255] = 'k';
    key[256] = '\0';
    assert_int_equal(req_check_idempotency_key(key, &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_check_idempotency_key("", &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_check_idempotency_key("a b~!", &err), 0);
    assert_int_equal(req_check_idempotency_key("tab\there", &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_check_idempotency_key("caf\xc3\xa9", &err), COFI_E_BAD_REQUEST);
    /* Surrounding spaces would make "k" and "k " two keys. */
    assert_int_equal(req_check_idempotency_key("k ", &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_check_idempotency_key(" k", &err), COFI_E_BAD_REQUEST);
    assert_int_equal(req_check_idempotency_key(" ", &err), COFI_E_BAD_REQUEST);
}

static void test_nul_detection(void **state)
{
    (void)state;
    json_error_t je;
    json_t *ok = json_loads("{\"a\":[\"x\",{\"b\":\"y\"}]}", 0, &je);
    json_t *deep = json_loads("{\"a\":[\"x\",{\"b\":\"y\\u0000\"}]}", JSON_ALLOW_NUL, &je);
    json_t *key = json_loads("{\"a\\u0000\":1}", JSON_ALLOW_NUL, &je);
    assert_false(req_json_has_nul(ok));
    assert_true(req_json_has_nul(deep));
    assert_null(key); /* jansson refuses NUL in keys: a 400 */
    json_decref(ok);
    json_decref(deep);
    json_decref(key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_cursors),
        cmocka_unit_test(test_json_content_types),
        cmocka_unit_test(test_json_bodies),
        cmocka_unit_test(test_action_bodies),
        cmocka_unit_test(test_idempotency_keys),
        cmocka_unit_test(test_nul_detection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
