/* The HTTP client of `cofi`: one libcurl easy handle, the base URL and the bearer token,
 * requests with a JSON body or none, replies kept in memory or streamed to a FILE. */
#ifndef COFI_CLI_HTTP_H
#define COFI_CLI_HTTP_H

#include <stdio.h>
#include <stddef.h>

struct cli_http;

/* A reply kept in memory. `body` is owned (NUL-terminated, may be NULL when empty): free it
 * with cli_reply_free(). */
struct cli_reply {
    long status;
    char *body;
    size_t len;
    char content_type[128];
};

/* A new client for base_url (borrowed; no trailing path) sending token (borrowed, may be
 * NULL) as Authorization: Bearer. Returns NULL when out of memory or libcurl fails. */
struct cli_http *cli_http_new(const char *base_url, const char *token);

/* Frees the client. Accepts NULL. */
void cli_http_free(struct cli_http *h);

/* Sends METHOD base_url+path with json_body (may be NULL: no body) and the optional extra
 * header line ("Name: value", may be NULL); fills *out with the reply (capped at 64 MiB,
 * within 120 s).
 * Returns 0 when a reply arrived (whatever its status); -1 with a message in err (cap bytes)
 * when none did (connection refused, timeout, too big). */
int cli_http_request(struct cli_http *h, const char *method, const char *path,
                     const char *json_body, const char *extra_header, struct cli_reply *out,
                     char *err, size_t cap);

/* GET base_url+path with `Accept: accept`; a 2xx body is written to `to` as it arrives, any
 * other reply is kept in *out (status and body) instead. Returns as cli_http_request. */
int cli_http_stream(struct cli_http *h, const char *path, const char *accept, FILE *to,
                    struct cli_reply *out, char *err, size_t cap);

/* Frees the body and resets *r. Accepts NULL. */
void cli_reply_free(struct cli_reply *r);

#endif
