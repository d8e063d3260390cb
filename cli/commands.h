/* The commands of `cofi`, one function each. Each takes the parsed arguments and the client
 * in ctx (borrowed) and returns the process's exit status (CLI_EXIT_*). */
#ifndef COFI_CLI_COMMANDS_H
#define COFI_CLI_COMMANDS_H

#include "cli/api.h"

/* commands.c: the batch operations and reads. */
int cmd_ls(const struct cli_ctx *ctx);
int cmd_show(const struct cli_ctx *ctx);
int cmd_run(const struct cli_ctx *ctx);
int cmd_simple_op(const struct cli_ctx *ctx); /* cancel, pause, resume */
int cmd_retry(const struct cli_ctx *ctx);
int cmd_results(const struct cli_ctx *ctx);

/* submit.c: files and folders into POST /batches (and /run). */
int cmd_submit(const struct cli_ctx *ctx);

/* watch.c: GET /batches/{id} until the batch ends. */
int cmd_watch(const struct cli_ctx *ctx);

#endif
