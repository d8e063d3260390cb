/* The route table and the path matcher. */
#include "server/router.h"

#include <stdio.h>
#include <string.h>

static const char *const page_query[] = {"limit", "cursor", "state", NULL};
static const char *const stage_query[] = {"batch_id", NULL};

/* Every route of the API (openapi/openapi.json), in one table: method, pattern, handler,
 * public, cached (served from the status cache within status_cache_ms), query parameters. */
static const struct route routes[] = {
    {"POST", "/batches", handle_batches_create, false, false, NULL},
    {"GET", "/batches", handle_batches_list, false, false, page_query},
    {"GET", "/batches/{}", handle_batch_get, false, true, NULL},
    {"POST", "/batches/{}/run", handle_batch_run, false, false, NULL},
    {"POST", "/batches/{}/cancel", handle_batch_cancel, false, false, NULL},
    {"PATCH", "/batches/{}", handle_batch_patch, false, false, NULL},
    {"DELETE", "/batches/{}", handle_batch_delete, false, false, NULL},
    {"POST", "/batches/{}/pause", handle_batch_pause, false, false, NULL},
    {"POST", "/batches/{}/resume", handle_batch_resume, false, false, NULL},
    {"POST", "/batches/{}/retry", handle_batch_retry, false, false, NULL},
    {"GET", "/batches/{}/calls", handle_calls_list, false, false, page_query},
    {"GET", "/batches/{}/calls/{}", handle_call_get, false, false, NULL},
    {"GET", "/stages/{}/status", handle_stage_status, false, true, stage_query},
    {"GET", "/healthz", handle_healthz, true, false, NULL},
    {"GET", "/readyz", handle_readyz, true, false, NULL},
    {"GET", "/openapi.json", handle_openapi, true, false, NULL},
    {"GET", "/metrics", handle_metrics, false, false, NULL},
};

#define ROUTE_COUNT  (sizeof routes / sizeof routes[0])
#define MAX_SEGMENTS 8

/* Splits scratch ("/a/b") in place into segments. Returns their number, or -1 for an empty
 * segment or too many. */
static int split(char *scratch, char *seg[MAX_SEGMENTS])
{
    int n = 0;
    char *p = scratch + 1;
    for (;;) {
        char *slash = strchr(p, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
        if (*p == '\0' || n == MAX_SEGMENTS) {
            return -1;
        }
        seg[n++] = p;
        if (slash == NULL) {
            return n;
        }
        p = slash + 1;
    }
}

/* Matches the segments against a pattern; fills params on success. */
static bool matches(const char *pattern, char *const seg[], int nseg, struct route_match *m)
{
    const char *p = pattern + 1;
    size_t np = 0;
    for (int i = 0; i < nseg; i++) {
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == 0) {
            return false;
        }
        if (len == 2 && p[0] == '{' && p[1] == '}') {
            if (np == HTTP_MAX_PARAMS) {
                return false;
            }
            m->params[np++] = seg[i];
        } else if (strlen(seg[i]) != len || strncmp(seg[i], p, len) != 0) {
            return false;
        }
        if (end == NULL) {
            if (i != nseg - 1) {
                return false;
            }
            m->param_count = np;
            return true;
        }
        p = end + 1;
    }
    return false;
}

static void add_allow(struct route_match *m, const char *method)
{
    size_t len = strlen(m->allow);
    snprintf(m->allow + len, sizeof m->allow - len, "%s%s", len > 0 ? ", " : "", method);
}

enum route_result router_match(const char *method, const char *path, struct route_match *m)
{
    memset(m, 0, sizeof *m);
    if (strcmp(method, "HEAD") == 0) {
        method = "GET";
    }
    size_t len = strlen(path);
    if (path[0] != '/' || len >= sizeof m->scratch) {
        return ROUTE_NOT_FOUND;
    }
    memcpy(m->scratch, path, len + 1);
    char *seg[MAX_SEGMENTS];
    int nseg = split(m->scratch, seg);
    if (nseg < 0) {
        return ROUTE_NOT_FOUND;
    }
    /* The methods of the path, for Allow, in this order. */
    static const char *const methods[] = {"GET", "POST", "PATCH", "DELETE"};
    bool has[sizeof methods / sizeof methods[0]] = {false};
    bool path_known = false;
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        if (!matches(routes[i].pattern, seg, nseg, m)) {
            continue;
        }
        path_known = true;
        m->public_path = m->public_path || routes[i].public_route;
        if (strcmp(routes[i].method, method) == 0) {
            m->route = &routes[i];
            return ROUTE_FOUND;
        }
        for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
            has[k] = has[k] || strcmp(routes[i].method, methods[k]) == 0;
        }
    }
    if (!path_known) {
        m->param_count = 0;
        return ROUTE_NOT_FOUND;
    }
    for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
        if (has[k]) {
            add_allow(m, methods[k]);
        }
        if (has[k] && k == 0) {
            add_allow(m, "HEAD");
        }
    }
    m->param_count = 0;
    return ROUTE_NO_METHOD;
}

bool router_takes_query(const struct route *route, const char *name)
{
    for (size_t i = 0; route->query != NULL && route->query[i] != NULL; i++) {
        if (strcmp(route->query[i], name) == 0) {
            return true;
        }
    }
    return false;
}

size_t router_route_count(void)
{
    return ROUTE_COUNT;
}

const struct route *router_route_at(size_t i)
{
    return &routes[i];
}

size_t router_route_index(const struct route *route)
{
    return (size_t)(route - routes);
}
