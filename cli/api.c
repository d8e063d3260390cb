/* One API exchange of `cofi`: request, expected status, decoded reply or printed problem. */
#include "cli/api.h"

#include <stdlib.h>

#include "cli/output.h"

static int exchange(const struct cli_ctx *ctx, const char *method, const char *path,
                    const json_t *body, const char *extra_header, bool print_json, json_t **reply)
{
    *reply = NULL;
    char *text = NULL;
    if (body != NULL) {
        text = json_dumps(body, JSON_COMPACT);
        if (text == NULL) {
            fprintf(ctx->err, "cofi: out of memory\n");
            return CLI_EXIT_ERROR;
        }
    }
    struct cli_reply r;
    char err[512];
    int rc = cli_http_request(ctx->http, method, path, text, extra_header, &r, err, sizeof err);
    free(text);
    if (rc != 0) {
        fprintf(ctx->err, "cofi: %s\n", err);
        return CLI_EXIT_ERROR;
    }
    if (r.status < 200 || r.status > 299) {
        out_problem(ctx->err, r.status, r.body);
        cli_reply_free(&r);
        return CLI_EXIT_ERROR;
    }
    if (r.body != NULL && r.len > 0) {
        json_error_t jerr;
        *reply = json_loadb(r.body, r.len, 0, &jerr);
        if (*reply == NULL) {
            fprintf(ctx->err, "cofi: HTTP %ld: the reply is not JSON: %s\n", r.status, jerr.text);
            cli_reply_free(&r);
            return CLI_EXIT_ERROR;
        }
        if (print_json) {
            fprintf(ctx->out, "%.*s%s", (int)r.len, r.body, r.body[r.len - 1] == '\n' ? "" : "\n");
            fflush(ctx->out);
        }
    }
    cli_reply_free(&r);
    return CLI_EXIT_OK;
}

int api_call(const struct cli_ctx *ctx, const char *method, const char *path, const json_t *body,
             const char *extra_header, json_t **reply)
{
    return exchange(ctx, method, path, body, extra_header, ctx->args->json, reply);
}

int api_call_quiet(const struct cli_ctx *ctx, const char *method, const char *path,
                   const json_t *body, const char *extra_header, json_t **reply)
{
    return exchange(ctx, method, path, body, extra_header, false, reply);
}
