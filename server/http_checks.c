/* The strict checks of server/http_strict.h applied to a libmicrohttpd request. */
#include "server/http_internal.h"

#include <strings.h>

#include "common/log.h"
#include "server/http_strict.h"

/* What the strict checks gather from a request's headers. */
struct strict_scan {
    struct cofi_err *err;
    int rc;
    int cl_count, te_count;
    const char *cl, *te;
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    struct strict_scan *sc = cls;
    sc->rc = http_strict_header(key, key_size, value, value_size, sc->err);
    if (sc->rc != 0) {
        return MHD_NO;
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        sc->cl = sc->cl_count++ == 0 ? value : sc->cl;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        sc->te = sc->te_count++ == 0 ? value : sc->te;
    }
    return MHD_YES;
}

/* The strict checks of a request's headers and framing (server/http_strict.h). Returns 0 or
 * a negative cofi_status with err filled. */
int http__check_headers(struct MHD_Connection *conn, struct cofi_err *err)
{
    struct strict_scan sc = {err, 0, 0, 0, NULL, NULL};
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, scan_header, &sc);
    if (sc.rc != 0) {
        return sc.rc;
    }
    return http_strict_framing(sc.cl_count, sc.cl, sc.te_count, sc.te, err);
}

struct query_scan {
    const struct route *route;
    struct cofi_err *err;
    int rc;
};

static enum MHD_Result scan_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    (void)kind;
    (void)value;
    struct query_scan *qs = cls;
    if (router_takes_query(qs->route, key)) {
        return MHD_YES;
    }
    char shown[64];
    log_escape(key, shown, sizeof shown);
    qs->rc = cofi_err_set(qs->err, COFI_E_BAD_REQUEST, "unknown query parameter \"%s\"", shown);
    return MHD_NO;
}

/* Refuses a query parameter the route does not take (it would be ignored silently). */
int http__check_query(struct MHD_Connection *conn, const struct route *route, struct cofi_err *err)
{
    struct query_scan qs = {route, err, 0};
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, scan_query, &qs);
    return qs.rc;
}
