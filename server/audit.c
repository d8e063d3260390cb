/* The access log (a line per request) and the audit trail (a line per write). */
#include "server/http_internal.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

/* The client's address as text ("127.0.0.1", "::1"), or "?" when unknown. */
static void client_address(struct MHD_Connection *conn, char *out, size_t cap)
{
    snprintf(out, cap, "?");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci == NULL || ci->client_addr == NULL) {
        return;
    }
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)cap);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)cap);
    }
}

/* The audit trail: one line for every write, answered or refused: who (the environment
 * variable of the token used, never the token; "anonymous" when the API is open,
 * "unauthenticated" when no valid token came), what (the request line, its answer and the
 * resource it made) and from where (the client's address). */
void http__audit(struct MHD_Connection *conn, const char *line, const char *who,
                 bool unauthenticated, int status, const char *created, bool completed)
{
    if (strncmp(line, "GET ", 4) == 0 || strncmp(line, "HEAD ", 5) == 0) {
        return;
    }
    char from[INET6_ADDRSTRLEN + 1];
    client_address(conn, from, sizeof from);
    const char *caller = who[0] != '\0' && !unauthenticated ? who : "unauthenticated";
    log_info("audit: %s by %s from %s: %d%s%s%s", line, caller, from, status,
             created[0] != '\0' ? " " : "", created, completed ? "" : " (connection ended early)");
}

/* The access log: one line per request at info level, with structured fields (as JSON members
 * with log_format "json"): method, route (the pattern, never the raw path), status,
 * duration_ms, bytes, token (the token's environment variable, never the token), client,
 * request_id. */
void http__access_log(struct MHD_Connection *conn, const struct http_access *a)
{
    if (!log_enabled(LOG_INFO)) {
        return;
    }
    char from[INET6_ADDRSTRLEN + 1];
    client_address(conn, from, sizeof from);
    char status[16];
    char ms[32];
    char bytes[24];
    snprintf(status, sizeof status, "%d", a->status);
    snprintf(ms, sizeof ms, "%" PRId64 ".%03d", a->duration_us / 1000,
             (int)(a->duration_us % 1000));
    snprintf(bytes, sizeof bytes, "%zu", a->bytes);
    const char *token = a->who[0] != '\0' && !a->unauthenticated ? a->who : "unauthenticated";
    const char *route = a->route != NULL ? a->route : "none";
    const char *method = a->method != NULL ? a->method : "?";
    struct log_field f[] = {
        {"method", method, false},
        {"route", route, false},
        {"status", status, true},
        {"duration_ms", ms, true},
        {"bytes", bytes, true},
        {"token", token, false},
        {"client", from, false},
        {"request_id", a->request_id, false},
        {"completed", a->completed ? "true" : "false", true},
    };
    log_fields(LOG_INFO, f, sizeof f / sizeof f[0], "access");
}
