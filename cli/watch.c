/* `cofi watch`: polls GET /batches/{id} until the batch ends, drawing its progress (bars on a
 * terminal, a line per change otherwise, the batch object per change with --json); the exit
 * status says how it ended. */
#include "cli/commands.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/output.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* The exit status of a batch that has ended, or -1 while it goes on. A batch is over when
 * its state is final and nothing of it is in flight any more (finished_at set). */
static int final_status(const json_t *batch)
{
    const char *state = json_string_value(json_object_get(batch, "state"));
    if (state == NULL || json_is_null(json_object_get(batch, "finished_at"))) {
        return -1;
    }
    if (strcmp(state, "completed") == 0) {
        return CLI_EXIT_OK;
    }
    if (strcmp(state, "completed_with_errors") == 0) {
        return CLI_EXIT_WITH_ERRS;
    }
    if (strcmp(state, "cancelled") == 0) {
        return CLI_EXIT_CANCELLED;
    }
    return -1;
}

/* What a change is judged by: the state and the stage counts (not the ETA). A new string. */
static char *fingerprint(const json_t *batch)
{
    json_t *key = json_pack("{sOsO}", "state", json_object_get(batch, "state"), "stages",
                            json_object_get(batch, "stages"));
    char *text = key != NULL ? json_dumps(key, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(key);
    return text;
}

/* Shows one snapshot; *last is the fingerprint shown last (replaced). */
static void show(const struct cli_ctx *ctx, const json_t *batch, bool tty, char **last, int *drawn)
{
    if (tty) {
        out_progress_bars(ctx->out, batch, drawn);
        return;
    }
    char *now = fingerprint(batch);
    if (now != NULL && *last != NULL && strcmp(now, *last) == 0) {
        free(now);
        return;
    }
    free(*last);
    *last = now;
    if (ctx->args->json) {
        out_json(ctx->out, batch);
    } else {
        out_progress_line(ctx->out, batch);
    }
}

int cmd_watch(const struct cli_ctx *ctx)
{
    const struct cli_args *a = ctx->args;
    bool tty = !a->json && isatty(fileno(ctx->out));
    char path[64];
    snprintf(path, sizeof path, "/batches/%s", a->id);
    char *last = NULL;
    int drawn = 0;
    int rc = -1;
    while (rc < 0) {
        json_t *batch = NULL;
        if (api_call_quiet(ctx, "GET", path, NULL, NULL, &batch) != CLI_EXIT_OK) {
            rc = CLI_EXIT_ERROR;
            break;
        }
        show(ctx, batch, tty, &last, &drawn);
        rc = final_status(batch);
        if (rc >= 0 && !a->json) {
            fprintf(ctx->out, "batch %s ended %s\n", a->id,
                    json_string_value(json_object_get(batch, "state")));
        }
        json_decref(batch);
        if (rc < 0) {
            sleep_ms(a->interval_ms);
        }
    }
    free(last);
    return rc;
}
