/* HTTP requests by route and status, counted with relaxed atomics. */
#include "server/http_metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* The statuses cofid answers, each counted on its own; anything else is "other". */
static const int codes[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409,
                            411, 413, 414, 415, 422, 429, 431, 500, 501, 503, 505};
#define NCODES (sizeof codes / sizeof codes[0] + 1)

struct http_metrics {
    size_t nroutes;               /* the router's routes, plus one for "none" */
    atomic_uint_fast64_t *counts; /* nroutes * NCODES */
};

struct http_metrics *http_metrics_new(void)
{
    struct http_metrics *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return NULL;
    }
    m->nroutes = router_route_count() + 1;
    m->counts = calloc(m->nroutes * NCODES, sizeof *m->counts);
    if (m->counts == NULL) {
        free(m);
        return NULL;
    }
    for (size_t i = 0; i < m->nroutes * NCODES; i++) {
        atomic_init(&m->counts[i], 0);
    }
    return m;
}

void http_metrics_free(struct http_metrics *m)
{
    if (m != NULL) {
        free(m->counts);
        free(m);
    }
}

static size_t code_slot(int status)
{
    for (size_t i = 0; i < NCODES - 1; i++) {
        if (codes[i] == status) {
            return i;
        }
    }
    return NCODES - 1;
}

void http_metrics_count(struct http_metrics *m, const struct route *route, int status)
{
    if (m == NULL) {
        return;
    }
    size_t r = route != NULL ? router_route_index(route) : m->nroutes - 1;
    if (r >= m->nroutes) {
        r = m->nroutes - 1;
    }
    atomic_fetch_add_explicit(&m->counts[r * NCODES + code_slot(status)], 1, memory_order_relaxed);
}

void http_metrics_render(const void *ctx, struct prom *p)
{
    const struct http_metrics *m = ctx;
    prom_family(p, "cofi_http_requests_total", "counter",
                "HTTP requests answered by this instance, by method and route pattern (never the "
                "raw path; \"none\" when no route matched) and status code.");
    for (size_t r = 0; r < m->nroutes; r++) {
        const struct route *route = r + 1 < m->nroutes ? router_route_at(r) : NULL;
        for (size_t c = 0; c < NCODES; c++) {
            uint64_t n = atomic_load_explicit(&m->counts[r * NCODES + c], memory_order_relaxed);
            if (n == 0) {
                continue;
            }
            char code[8];
            snprintf(code, sizeof code, "%d", codes[c < NCODES - 1 ? c : 0]);
            struct prom_label l[] = {
                {"method", route != NULL ? route->method : "none"},
                {"route", route != NULL ? route->pattern : "none"},
                {"code", c < NCODES - 1 ? code : "other"},
            };
            prom_sample_u64(p, "cofi_http_requests_total", l, 3, n);
        }
    }
}
