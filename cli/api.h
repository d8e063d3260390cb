/* One API exchange of `cofi`: the request, the status it expects, the JSON reply decoded or
 * the problem printed. What every command goes through. */
#ifndef COFI_CLI_API_H
#define COFI_CLI_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "cli/args.h"
#include "cli/http.h"

/* What a command works with: its arguments, the client and where it prints. All borrowed. */
struct cli_ctx {
    const struct cli_args *args;
    struct cli_http *http;
    FILE *out;
    FILE *err;
};

/* METHOD path with body (a JSON value, borrowed, or NULL) and the optional extra header.
 * A 2xx reply's JSON is returned in *reply (a new reference; NULL for an empty body) and,
 * with --json, printed on ctx->out as it came. Otherwise the problem (or the transport
 * error) is printed as one line on ctx->err. Returns CLI_EXIT_OK or CLI_EXIT_ERROR. */
int api_call(const struct cli_ctx *ctx, const char *method, const char *path, const json_t *body,
             const char *extra_header, json_t **reply);

/* As api_call, but prints nothing on success, even with --json. */
int api_call_quiet(const struct cli_ctx *ctx, const char *method, const char *path,
                   const json_t *body, const char *extra_header, json_t **reply);

#endif
