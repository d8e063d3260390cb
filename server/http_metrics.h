/* Counts of the HTTP requests answered, by route pattern and status, for GET /metrics. */
#ifndef COFI_HTTP_METRICS_H
#define COFI_HTTP_METRICS_H

#include "common/prom.h"
#include "server/router.h"

struct http_metrics;

/* A new set of zero counters for every route of server/router.c, or NULL when out of memory.
 * Free with http_metrics_free. */
struct http_metrics *http_metrics_new(void);

/* Frees m. Accepts NULL. */
void http_metrics_free(struct http_metrics *m);

/* Counts one answered request: route (NULL when none matched: counted as route "none"),
 * status (100..599; others count as "other"). Thread-safe, lock-free; accepts m NULL. */
void http_metrics_count(struct http_metrics *m, const struct route *route, int status);

/* Writes cofi_http_requests_total{method,route,code} (ctx: the struct http_metrics) into p:
 * the series counted so far. Matches struct cofi_app's http_metrics. Thread-safe. */
void http_metrics_render(const void *ctx, struct prom *p);

#endif
