/* server/router.c: path patterns, parameters, 404 and 405 with Allow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "server/router.h"

static void test_every_route_is_found(void **state)
{
    (void)state;
    struct route_match m;
    assert_int_equal(router_match("POST", "/batches", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batches_create);
    assert_int_equal(router_match("GET", "/batches", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batches_list);
    assert_int_equal(router_match("GET", "/batches/12", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_get);
    assert_int_equal(m.param_count, 1);
    assert_string_equal(m.params[0], "12");
    assert_int_equal(router_match("POST", "/batches/12/run", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_run);
    assert_int_equal(router_match("POST", "/batches/12/cancel", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_cancel);
    assert_int_equal(router_match("PATCH", "/batches/12", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_patch);
    assert_int_equal(router_match("DELETE", "/batches/12", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_delete);
    assert_int_equal(router_match("POST", "/batches/12/pause", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_pause);
    assert_int_equal(router_match("POST", "/batches/12/resume", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_resume);
    assert_int_equal(router_match("POST", "/batches/12/retry", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_retry);
    assert_int_equal(router_match("GET", "/batches/12/calls", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_calls_list);
    assert_int_equal(router_match("GET", "/batches/12/calls/345", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_call_get);
    assert_int_equal(m.param_count, 2);
    assert_string_equal(m.params[0], "12");
    assert_string_equal(m.params[1], "345");
    assert_int_equal(router_match("GET", "/batches/12/results", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_batch_results);
    assert_false(m.route->public_route);
    assert_int_equal(router_match("GET", "/stages/stt/status", &m), ROUTE_FOUND);
    assert_string_equal(m.params[0], "stt");
    assert_int_equal(router_match("GET", "/healthz", &m), ROUTE_FOUND);
    assert_true(m.route->public_route);
    assert_int_equal(router_match("GET", "/readyz", &m), ROUTE_FOUND);
    assert_int_equal(router_match("GET", "/openapi.json", &m), ROUTE_FOUND);
    assert_int_equal(router_match("HEAD", "/batches/1", &m), ROUTE_FOUND);
    assert_false(router_match("GET", "/batches/1", &m) == ROUTE_FOUND && m.route->public_route);
}

static void test_dashboard_is_public_at_root_and_ui(void **state)
{
    (void)state;
    struct route_match m;
    assert_int_equal(router_match("GET", "/", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_dashboard);
    assert_true(m.route->public_route);
    assert_int_equal(m.param_count, 0);
    assert_int_equal(router_match("GET", "/ui", &m), ROUTE_FOUND);
    assert_ptr_equal(m.route->handler, handle_dashboard);
    assert_int_equal(router_match("POST", "/", &m), ROUTE_NO_METHOD);
    assert_string_equal(m.allow, "GET, HEAD");
}

static void test_unknown_paths(void **state)
{
    (void)state;
    struct route_match m;
    assert_int_equal(router_match("GET", "//", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "/ui/", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "/batches/", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "//batches", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "/batches/1/2", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "/batches/1/calls/2/3", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "/stages/stt", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "/healthzz", &m), ROUTE_NOT_FOUND);
    assert_int_equal(router_match("GET", "batches", &m), ROUTE_NOT_FOUND);
    char longpath[2000];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    assert_int_equal(router_match("GET", longpath, &m), ROUTE_NOT_FOUND);
}

static void test_wrong_method_lists_allowed_ones(void **state)
{
    (void)state;
    struct route_match m;
    assert_int_equal(router_match("DELETE", "/batches", &m), ROUTE_NO_METHOD);
    assert_string_equal(m.allow, "GET, HEAD, POST");
    assert_int_equal(router_match("GET", "/batches/1/run", &m), ROUTE_NO_METHOD);
    assert_string_equal(m.allow, "POST");
    assert_int_equal(router_match("POST", "/healthz", &m), ROUTE_NO_METHOD);
    assert_string_equal(m.allow, "GET, HEAD");
    assert_true(m.public_path);
    assert_int_equal(router_match("PUT", "/batches/1", &m), ROUTE_NO_METHOD);
    assert_false(m.public_path);
    assert_string_equal(m.allow, "GET, HEAD, PATCH, DELETE");
    assert_int_equal(router_match("GET", "/batches/1/retry", &m), ROUTE_NO_METHOD);
    assert_string_equal(m.allow, "POST");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_route_is_found),
        cmocka_unit_test(test_dashboard_is_public_at_root_and_ui),
        cmocka_unit_test(test_unknown_paths),
        cmocka_unit_test(test_wrong_method_lists_allowed_ones),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
