/* The Prometheus text format: HELP/TYPE lines, escaping, histograms, the cap as an error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/histo.h"
#include "common/prom.h"

static void test_family_lines_and_help_escaping(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 4096);
    struct prom p;
    prom_init(&p, &b);
    prom_family(&p, "cofi_x_total", "counter", "a \\ b\nc \"q\"");
    prom_sample_u64(&p, "cofi_x_total", NULL, 0, 18446744073709551615ULL);
    assert_int_equal(p.rc, 0);
    assert_string_equal(b.data, "# HELP cofi_x_total a \\\\ b\\nc \"q\"\n"
                                "# TYPE cofi_x_total counter\n"
                                "cofi_x_total 18446744073709551615\n");
    buf_free(&b);
}

static void test_label_values_are_escaped(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 4096);
    struct prom p;
    prom_init(&p, &b);
    struct prom_label l[] = {{"node", "gpu\"1\\\n"}, {"stage", "stt"}};
    prom_sample(&p, "cofi_g", l, 2, 3);
    prom_sample(&p, "cofi_g", l, 1, 0.25);
    assert_int_equal(p.rc, 0);
    assert_string_equal(b.data, "cofi_g{node=\"gpu\\\"1\\\\\\n\",stage=\"stt\"} 3\n"
                                "cofi_g{node=\"gpu\\\"1\\\\\\n\"} 0.25\n");
    buf_free(&b);
}

static void test_special_values(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 4096);
    struct prom p;
    prom_init(&p, &b);
    prom_sample(&p, "a", NULL, 0, 1.0 / 0.0);
    prom_sample(&p, "b", NULL, 0, -1.0 / 0.0);
    prom_sample(&p, "c", NULL, 0, 0.0 / 0.0);
    prom_sample(&p, "d", NULL, 0, 1783000000.5);
    prom_sample(&p, "e", NULL, 0, 0.1);
    assert_string_equal(b.data, "a +Inf\nb -Inf\nc NaN\nd 1783000000.5\ne 0.1\n");
    buf_free(&b);
}

static void test_histogram_is_cumulative_with_sum_and_count(void **state)
{
    (void)state;
    static const int64_t bounds[] = {1000, 500000};
    struct histo h;
    histo_init(&h, bounds, 2);
    histo_observe(&h, 200);     /* <= 1 ms */
    histo_observe(&h, 1000);    /* on the bound: in it */
    histo_observe(&h, 300000);  /* <= 0.5 s */
    histo_observe(&h, 2000000); /* +Inf */
    struct histo_snapshot s;
    histo_read(&h, &s);
    assert_int_equal(s.count, 4);

    struct buf b;
    buf_init(&b, 4096);
    struct prom p;
    prom_init(&p, &b);
    struct prom_label l[] = {{"stage", "stt"}};
    prom_family(&p, "lat_seconds", "histogram", "latency");
    prom_histogram(&p, "lat_seconds", l, 1, &s);
    assert_int_equal(p.rc, 0);
    assert_string_equal(b.data, "# HELP lat_seconds latency\n"
                                "# TYPE lat_seconds histogram\n"
                                "lat_seconds_bucket{stage=\"stt\",le=\"0.001\"} 2\n"
                                "lat_seconds_bucket{stage=\"stt\",le=\"0.5\"} 3\n"
                                "lat_seconds_bucket{stage=\"stt\",le=\"+Inf\"} 4\n"
                                "lat_seconds_sum{stage=\"stt\"} 2.3012\n"
                                "lat_seconds_count{stage=\"stt\"} 4\n");
    buf_free(&b);
}

static void test_the_cap_sticks_as_an_error(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    struct prom p;
    prom_init(&p, &b);
    prom_family(&p, "cofi_something_long", "gauge", "help text");
    assert_int_equal(p.rc, -1);
    size_t len = b.len;
    prom_sample(&p, "x", NULL, 0, 1);
    assert_int_equal(p.rc, -1);
    assert_int_equal(b.len, len);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_lines_and_help_escaping),
        cmocka_unit_test(test_label_values_are_escaped),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_histogram_is_cumulative_with_sum_and_count),
        cmocka_unit_test(test_the_cap_sticks_as_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
