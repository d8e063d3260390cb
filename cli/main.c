/* `cofi`, the command-line client of cofid: parses the command line, sets up the HTTP client
 * and runs the command. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/args.h"
#include "cli/commands.h"

static int dispatch(const struct cli_ctx *ctx)
{
    switch (ctx->args->cmd) {
    case CLI_CMD_SUBMIT:
        return cmd_submit(ctx);
    case CLI_CMD_WATCH:
        return cmd_watch(ctx);
    case CLI_CMD_LS:
        return cmd_ls(ctx);
    case CLI_CMD_SHOW:
        return cmd_show(ctx);
    case CLI_CMD_RUN:
        return cmd_run(ctx);
    case CLI_CMD_CANCEL:
    case CLI_CMD_PAUSE:
    case CLI_CMD_RESUME:
        return cmd_simple_op(ctx);
    case CLI_CMD_RETRY:
        return cmd_retry(ctx);
    case CLI_CMD_RESULTS:
        return cmd_results(ctx);
    default:
        return CLI_EXIT_BAD_USAGE;
    }
}

int main(int argc, char **argv)
{
    struct cli_args args;
    char err[512];
    int rc = cli_args_parse(argc, argv, getenv("COFI_URL"), getenv("COFI_TOKEN"), &args, err,
                            sizeof err);
    if (rc != 0) {
        if (args.cmd != CLI_CMD_NONE) {
            fprintf(stderr, "cofi: %s\n(try 'cofi %s --help')\n", err, cli_cmd_name(args.cmd));
        } else {
            fprintf(stderr, "cofi: %s\n(try 'cofi --help')\n", err);
        }
        cli_args_free(&args);
        return rc;
    }
    if (args.help) {
        fputs(cli_help(args.cmd), stdout);
        cli_args_free(&args);
        return CLI_EXIT_OK;
    }
    if (args.version) {
        printf("cofi 0.1.0\n");
        cli_args_free(&args);
        return CLI_EXIT_OK;
    }
    curl_global_init(CURL_GLOBAL_ALL);
    struct cli_http *http = cli_http_new(args.url, args.token);
    if (http == NULL) {
        fprintf(stderr, "cofi: cannot set up the HTTP client\n");
        rc = CLI_EXIT_ERROR;
    } else {
        struct cli_ctx ctx = {.args = &args, .http = http, .out = stdout, .err = stderr};
        rc = dispatch(&ctx);
    }
    cli_http_free(http);
    curl_global_cleanup();
    cli_args_free(&args);
    return rc;
}
