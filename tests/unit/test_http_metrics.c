/* HTTP request counts: by the route's pattern (never the raw path), "none" without a route,
 * each known status its own series, others "other"; series never counted are not written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "server/http_metrics.h"

static void test_counts_by_route_pattern_and_status(void **state)
{
    (void)state;
    struct http_metrics *m = http_metrics_new();
    assert_non_null(m);
    struct route_match match;
    assert_int_equal(router_match("GET", "/batches/42", &match), ROUTE_FOUND);
    http_metrics_count(m, match.route, 200);
    http_metrics_count(m, match.route, 200);
    http_metrics_count(m, match.route, 404);
    assert_int_equal(router_match("HEAD", "/metrics", &match), ROUTE_FOUND);
    http_metrics_count(m, match.route, 200);
    http_metrics_count(m, NULL, 404);
    http_metrics_count(m, NULL, 418);

    struct buf b;
    buf_init(&b, 1 << 16);
    struct prom p;
    prom_init(&p, &b);
    http_metrics_render(m, &p);
    assert_int_equal(p.rc, 0);
    assert_non_null(strstr(b.data, "# TYPE cofi_http_requests_total counter\n"));
    assert_non_null(strstr(
        b.data, "cofi_http_requests_total{method=\"GET\",route=\"/batches/{}\",code=\"200\"} 2\n"));
    assert_non_null(strstr(
        b.data, "cofi_http_requests_total{method=\"GET\",route=\"/batches/{}\",code=\"404\"} 1\n"));
    assert_non_null(strstr(
        b.data, "cofi_http_requests_total{method=\"GET\",route=\"/metrics\",code=\"200\"} 1\n"));
    assert_non_null(strstr(
        b.data, "cofi_http_requests_total{method=\"none\",route=\"none\",code=\"404\"} 1\n"));
    assert_non_null(strstr(
        b.data, "cofi_http_requests_total{method=\"none\",route=\"none\",code=\"other\"} 1\n"));
    assert_null(strstr(b.data, "42"));
    assert_null(strstr(b.data, "/healthz"));
    buf_free(&b);
    http_metrics_free(m);
    http_metrics_free(NULL);
    http_metrics_count(NULL, NULL, 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_by_route_pattern_and_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
