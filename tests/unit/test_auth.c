/* server/auth.c: bearer tokens, scopes, public routes, constant-time comparison. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "server/auth.h"

static struct cofi_token_cfg tokens[] = {
    {"COFI_TOKEN_OPS", "ops-secret", true},
    {"COFI_TOKEN_DASH", "dash-secret", false},
};

static struct cofi_config with_tokens(void)
{
    struct cofi_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.tokens = tokens;
    cfg.token_count = 2;
    return cfg;
}

static void test_open_api_without_tokens(void **state)
{
    (void)state;
    struct cofi_config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct cofi_err err;
    assert_int_equal(auth_check(&cfg, NULL, false, true, &err), 0);
}

static void test_public_routes_need_no_token(void **state)
{
    (void)state;
    struct cofi_config cfg = with_tokens();
    struct cofi_err err;
    assert_int_equal(auth_check(&cfg, NULL, true, false, &err), 0);
}

static void test_missing_or_unknown_token_is_401(void **state)
{
    (void)state;
    struct cofi_config cfg = with_tokens();
    struct cofi_err err;
    assert_int_equal(auth_check(&cfg, NULL, false, false, &err), COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Bearer nope", false, false, &err), COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Bearer ops-secre", false, false, &err), COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Bearer ops-secrets", false, false, &err),
                     COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Basic b3BzOg==", false, false, &err), COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Bearer", false, false, &err), COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Bearer   ", false, false, &err), COFI_E_UNAUTHORIZED);
    assert_int_equal(auth_check(&cfg, "Bearerops-secret", false, false, &err), COFI_E_UNAUTHORIZED);
    assert_null(strstr(err.msg, "secret"));
}

static void test_scopes(void **state)
{
    (void)state;
    struct cofi_config cfg = with_tokens();
    struct cofi_err err;
    assert_int_equal(auth_check(&cfg, "Bearer ops-secret", false, true, &err), 0);
    assert_int_equal(auth_check(&cfg, "bearer  ops-secret ", false, false, &err), 0);
    assert_int_equal(auth_check(&cfg, "Bearer dash-secret", false, false, &err), 0);
    assert_int_equal(auth_check(&cfg, "Bearer dash-secret", false, true, &err), COFI_E_FORBIDDEN);
}

static void test_constant_time_equal(void **state)
{
    (void)state;
    assert_true(auth_equal_ct("abc", 3, "abc", 3));
    assert_false(auth_equal_ct("abd", 3, "abc", 3));
    assert_false(auth_equal_ct("ab", 2, "abc", 3));
    assert_false(auth_equal_ct("abcd", 4, "abc", 3));
    assert_false(auth_equal_ct("", 0, "abc", 3));
    assert_true(auth_equal_ct("", 0, "", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_api_without_tokens),
        cmocka_unit_test(test_public_routes_need_no_token),
        cmocka_unit_test(test_missing_or_unknown_token_is_401),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_constant_time_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
