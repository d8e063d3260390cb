/* The command line of `cofi`: its grammar (commands, their options and operands) and the help
 * text of each command. Pure: reads argv and the environment values it is given, prints
 * nothing, so it can be unit-tested. */
#ifndef COFI_CLI_ARGS_H
#define COFI_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>

/* Exit statuses of `cofi` (sysexits.h's EX_USAGE for a bad command line). */
#define CLI_EXIT_OK        0
#define CLI_EXIT_ERROR     1
#define CLI_EXIT_WITH_ERRS 2 /* watch: the batch ended completed_with_errors */
#define CLI_EXIT_CANCELLED 3 /* watch: the batch ended cancelled */
#define CLI_EXIT_BAD_USAGE 64

#define CLI_DEFAULT_URL "http://127.0.0.1:8080"

enum cli_cmd {
    CLI_CMD_NONE = 0,
    CLI_CMD_SUBMIT,
    CLI_CMD_WATCH,
    CLI_CMD_LS,
    CLI_CMD_SHOW,
    CLI_CMD_RUN,
    CLI_CMD_CANCEL,
    CLI_CMD_PAUSE,
    CLI_CMD_RESUME,
    CLI_CMD_RETRY,
    CLI_CMD_RESULTS,
};

/* What the command line asks for. Every string is borrowed from argv or the environment
 * (never owned), except `paths`, an array the parser allocates: free it with
 * cli_args_free(). Unset strings are NULL, unset numbers 0. */
struct cli_args {
    enum cli_cmd cmd;
    bool help;         /* --help / -h: print the (command's) help and exit 0 */
    bool version;      /* --version */
    bool json;         /* --json: print the API's JSON as it came */
    const char *url;   /* --url, else COFI_URL, else CLI_DEFAULT_URL */
    const char *token; /* COFI_TOKEN, or NULL */
    const char *id;    /* the batch id (digits), for every command but submit and ls */
    const char *call_id;
    /* submit */
    const char **paths; /* owned array of borrowed strings */
    size_t path_count;
    const char *root;
    const char *name;
    const char *idempotency_key;
    const char *metadata; /* a JSON object, checked by the submit command */
    int priority;         /* 0: not given */
    bool run;
    const char *mode; /* "pipelined" | "staged", for submit --run and run */
    /* ls */
    const char *state;
    int limit; /* 0: the server's default */
    /* retry: comma-separated lists */
    const char *stages;
    const char *calls;
    /* results */
    bool csv;
    /* watch */
    int interval_ms;
};

/* Parses argv (argv[0] is the program) into *out, with url_env and token_env the values of
 * COFI_URL and COFI_TOKEN (or NULL). Returns 0; or CLI_EXIT_BAD_USAGE with a one-line message
 * in err (cap bytes) and *out holding what was parsed so far (cmd set when known, so the
 * caller can name the command's help). Free *out with cli_args_free() in both cases. */
int cli_args_parse(int argc, char **argv, const char *url_env, const char *token_env,
                   struct cli_args *out, char *err, size_t cap);

/* Frees what the parser allocated in *a. Accepts NULL. */
void cli_args_free(struct cli_args *a);

/* The command's name ("submit"), or "cofi" for CLI_CMD_NONE. Never NULL. */
const char *cli_cmd_name(enum cli_cmd cmd);

/* The help text of a command (CLI_CMD_NONE: the top-level help). Static, never NULL. */
const char *cli_help(enum cli_cmd cmd);

#endif
