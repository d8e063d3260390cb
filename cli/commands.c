/* The batch commands of `cofi` that are one request each: ls, show, run, cancel, pause,
 * resume, retry and results. */
#include "cli/commands.h"

#include <stdlib.h>
#include <string.h>

#include "cli/output.h"

int cmd_ls(const struct cli_ctx *ctx)
{
    const struct cli_args *a = ctx->args;
    char path[256];
    int n = snprintf(path, sizeof path, "/batches");
    const char *sep = "?";
    if (a->limit > 0) {
        n += snprintf(path + n, sizeof path - (size_t)n, "%slimit=%d", sep, a->limit);
        sep = "&";
    }
    if (a->state != NULL) {
        snprintf(path + n, sizeof path - (size_t)n, "%sstate=%s", sep, a->state);
    }
    json_t *page = NULL;
    int rc = api_call(ctx, "GET", path, NULL, NULL, &page);
    if (rc == CLI_EXIT_OK && !a->json) {
        out_batch_list(ctx->out, page);
    }
    json_decref(page);
    return rc;
}

int cmd_show(const struct cli_ctx *ctx)
{
    const struct cli_args *a = ctx->args;
    char path[128];
    if (a->call_id != NULL) {
        snprintf(path, sizeof path, "/batches/%s/calls/%s", a->id, a->call_id);
    } else {
        snprintf(path, sizeof path, "/batches/%s", a->id);
    }
    json_t *v = NULL;
    int rc = api_call(ctx, "GET", path, NULL, NULL, &v);
    if (rc == CLI_EXIT_OK && !a->json) {
        if (a->call_id != NULL) {
            out_call(ctx->out, v);
        } else {
            out_batch(ctx->out, v);
        }
    }
    json_decref(v);
    return rc;
}

/* POST /batches/{id}/{op} with body (borrowed, may be NULL); prints the batch's new state. */
static int post_op(const struct cli_ctx *ctx, const char *op, const json_t *body)
{
    char path[128];
    snprintf(path, sizeof path, "/batches/%s/%s", ctx->args->id, op);
    json_t *batch = NULL;
    int rc = api_call(ctx, "POST", path, body, NULL, &batch);
    if (rc == CLI_EXIT_OK && !ctx->args->json) {
        fprintf(ctx->out, "batch %s: %s\n", ctx->args->id,
                json_string_value(json_object_get(batch, "state")));
    }
    json_decref(batch);
    return rc;
}

int cmd_run(const struct cli_ctx *ctx)
{
    json_t *body = NULL;
    if (ctx->args->mode != NULL) {
        body = json_pack("{ss}", "mode", ctx->args->mode);
    }
    int rc = post_op(ctx, "run", body);
    json_decref(body);
    return rc;
}

int cmd_simple_op(const struct cli_ctx *ctx)
{
    return post_op(ctx, cli_cmd_name(ctx->args->cmd), NULL);
}

/* "a,b,c" -> ["a","b","c"] (empty items skipped). Returns a new reference or NULL. */
static json_t *split_list(const char *list)
{
    json_t *arr = json_array();
    const char *p = list;
    while (arr != NULL && *p != '\0') {
        size_t n = strcspn(p, ",");
        if (n > 0) {
            json_array_append_new(arr, json_stringn(p, n));
        }
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    return arr;
}

int cmd_retry(const struct cli_ctx *ctx)
{
    const struct cli_args *a = ctx->args;
    json_t *body = NULL;
    if (a->stages != NULL || a->calls != NULL) {
        body = json_object();
        if (a->stages != NULL) {
            json_object_set_new(body, "stages", split_list(a->stages));
        }
        if (a->calls != NULL) {
            json_object_set_new(body, "calls", split_list(a->calls));
        }
    }
    int rc = post_op(ctx, "retry", body);
    json_decref(body);
    return rc;
}

int cmd_results(const struct cli_ctx *ctx)
{
    char path[128];
    snprintf(path, sizeof path, "/batches/%s/results", ctx->args->id);
    const char *accept = ctx->args->csv ? "text/csv" : "application/x-ndjson";
    struct cli_reply r;
    char err[512];
    if (cli_http_stream(ctx->http, path, accept, ctx->out, &r, err, sizeof err) != 0) {
        fprintf(ctx->err, "cofi: %s\n", err);
        return CLI_EXIT_ERROR;
    }
    int rc = CLI_EXIT_OK;
    if (r.status < 200 || r.status > 299) {
        out_problem(ctx->err, r.status, r.body);
        rc = CLI_EXIT_ERROR;
    }
    cli_reply_free(&r);
    fflush(ctx->out);
    return rc;
}
