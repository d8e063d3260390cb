/* The route table of cofid: method + path pattern → handler, in one place. */
#ifndef COFI_ROUTER_H
#define COFI_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "handlers/handlers.h"

struct route {
    const char *method;  /* "GET", "POST", "PATCH" or "DELETE" */
    const char *pattern; /* "/batches/{}/calls/{}": "{}" matches one non-empty segment */
    handler_fn handler;
    bool public_route;        /* served without a token when auth is on */
    bool cached;              /* a polled GET: answers may come from server/status_cache.h */
    const char *const *query; /* the query parameters it takes (NULL-terminated), or NULL */
};

/* The number of routes in the table. Can't fail. */
size_t router_route_count(void);

/* Route i of the table (i < router_route_count()). Can't fail. */
const struct route *router_route_at(size_t i);

/* The index in the table of route (a pointer router_match or router_route_at gave). */
size_t router_route_index(const struct route *route);

/* True when route takes the query parameter name. Thread-safe; can't fail. */
bool router_takes_query(const struct route *route, const char *name);

enum route_result {
    ROUTE_FOUND = 0,
    ROUTE_NO_METHOD, /* the path is known, the method is not: answer 405 with m->allow */
    ROUTE_NOT_FOUND,
};

#define ROUTE_PATH_MAX 512

/* The outcome of router_match; params point into scratch. */
struct route_match {
    const struct route *route;           /* with ROUTE_FOUND, else NULL */
    const char *params[HTTP_MAX_PARAMS]; /* the "{}" segments, in order */
    size_t param_count;
    bool public_path; /* a route of this path is public (no token needed) */
    char allow[64];   /* with ROUTE_NO_METHOD: e.g. "GET, HEAD, PATCH, DELETE" */
    char scratch[ROUTE_PATH_MAX];
};

/* Finds the route of method and path (the decoded path, without query). HEAD is served as
 * GET. A path longer than ROUTE_PATH_MAX - 1, with an empty segment ("//", a trailing '/')
 * or with a segment over what a pattern allows is unknown. Fills *m and returns the result.
 * Thread-safe (the table is immutable); can't fail. */
enum route_result router_match(const char *method, const char *path, struct route_match *m);

#endif
