/* The command line of `cofi`: commands, options, operands and help texts. */
#include "cli/args.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIT(c)   (1u << (c))
#define ALL_CMDS 0xffffu
#define BATCH_CMDS                                                                                 \
    (BIT(CLI_CMD_WATCH) | BIT(CLI_CMD_SHOW) | BIT(CLI_CMD_RUN) | BIT(CLI_CMD_CANCEL) |             \
     BIT(CLI_CMD_PAUSE) | BIT(CLI_CMD_RESUME) | BIT(CLI_CMD_RETRY) | BIT(CLI_CMD_RESULTS))

struct cmd_def {
    enum cli_cmd cmd;
    const char *name;
    const char *help;
};

static const char top_help[] =
    "Usage: cofi [--url URL] [--json] COMMAND [ARGS...]\n"
    "\n"
    "The command-line client of cofid, the call-processing service.\n"
    "\n"
    "Commands:\n"
    "  submit PATH...     create a batch from files or folders (--run starts it)\n"
    "  watch ID           follow a batch until it ends; exit code by its final state\n"
    "  ls                 list batches, newest first\n"
    "  show ID [CALL_ID]  one batch with its stages, or one of its calls\n"
    "  run ID             start (or resume) a batch\n"
    "  cancel ID          stop dispatching a batch's work\n"
    "  pause ID           no new requests for a batch; resume ID goes on\n"
    "  resume ID\n"
    "  retry ID           failed calls back to pending at the stage they failed\n"
    "  results ID         every call with every stage's result (NDJSON, or --csv)\n"
    "\n"
    "Options (every command):\n"
    "  --url URL   cofid's base URL (default $COFI_URL, else " CLI_DEFAULT_URL ")\n"
    "  --json      print the API's JSON as it came\n"
    "  --help      this help; `cofi COMMAND --help` for a command's\n"
    "  --version   print the version\n"
    "\n"
    "Environment: COFI_URL (base URL), COFI_TOKEN (sent as Authorization: Bearer).\n"
    "Exit status: 0 success, 1 an error (the API's problem is printed on stderr),\n"
    "64 a bad command line; watch: 2 completed_with_errors, 3 cancelled.\n";

static const struct cmd_def cmds[] = {
    {CLI_CMD_SUBMIT, "submit",
     "Usage: cofi submit [OPTIONS] PATH...\n"
     "\n"
     "Creates a batch of the files named; a folder stands for every file under it (hidden\n"
     "names skipped, sorted). Paths are sent as given, or relative to --root.\n"
     "\n"
     "  --root DIR              send paths relative to DIR (cofid's input_root here)\n"
     "  --name NAME             the batch's name\n"
     "  --idempotency-key KEY   a retry with the same key returns the same batch\n"
     "  --priority N            share of every resource, N >= 1 (default 1)\n"
     "  --metadata JSON         a JSON object stored with the batch\n"
     "  --run                   start the batch once created\n"
     "  --mode pipelined|staged how --run runs it\n"
     "  --json                  print the API's batch object\n"},
    {CLI_CMD_WATCH, "watch",
     "Usage: cofi watch [--interval MS] ID\n"
     "\n"
     "Follows a batch until it ends: progress bars per stage on a terminal, one line per\n"
     "change otherwise (--json: the batch object per change), with the ETA.\n"
     "Exit status: 0 completed, 2 completed_with_errors, 3 cancelled, 1 an error.\n"
     "\n"
     "  --interval MS   time between polls (default 1000)\n"},
    {CLI_CMD_LS, "ls",
     "Usage: cofi ls [--state STATE] [--limit N]\n"
     "\n"
     "Lists batches, newest first.\n"
     "\n"
     "  --state STATE   created, running, paused, completed, completed_with_errors, cancelled\n"
     "  --limit N       at most N batches (1..1000; default the server's, 50)\n"},
    {CLI_CMD_SHOW, "show",
     "Usage: cofi show ID [CALL_ID]\n"
     "\n"
     "Shows a batch with its per-stage counts, or one call with every stage's state,\n"
     "attempts, last error and result.\n"},
    {CLI_CMD_RUN, "run",
     "Usage: cofi run [--mode pipelined|staged] ID\n"
     "\n"
     "Starts (or resumes) a batch.\n"},
    {CLI_CMD_CANCEL, "cancel",
     "Usage: cofi cancel ID\n"
     "\n"
     "Stops dispatching new work for a batch; requests in flight finish.\n"},
    {CLI_CMD_PAUSE, "pause",
     "Usage: cofi pause ID\n"
     "\n"
     "No new requests for a running batch (in-flight ones finish); `cofi resume ID` goes on.\n"},
    {CLI_CMD_RESUME, "resume",
     "Usage: cofi resume ID\n"
     "\n"
     "Goes on with a paused batch.\n"},
    {CLI_CMD_RETRY, "retry",
     "Usage: cofi retry [--stages S1,S2] [--calls C1,C2] ID\n"
     "\n"
     "Puts the batch's failed calls back to pending at the stage they failed.\n"
     "\n"
     "  --stages LIST   only calls that failed at these stages (comma-separated names)\n"
     "  --calls LIST    only these calls (comma-separated call ids)\n"},
    {CLI_CMD_RESULTS, "results",
     "Usage: cofi results [--csv] ID\n"
     "\n"
     "Writes every call of the batch with every stage's result to stdout, as the API\n"
     "streams it: one JSON object per line (NDJSON), or CSV with --csv.\n"
     "\n"
     "  --csv   ask for text/csv\n"},
};

#define CMD_COUNT (sizeof cmds / sizeof cmds[0])

enum opt_id {
    OPT_HELP,
    OPT_VERSION,
    OPT_JSON,
    OPT_URL,
    OPT_ROOT,
    OPT_NAME,
    OPT_IDEM,
    OPT_PRIORITY,
    OPT_METADATA,
    OPT_RUN,
    OPT_MODE,
    OPT_STATE,
    OPT_LIMIT,
    OPT_STAGES,
    OPT_CALLS,
    OPT_CSV,
    OPT_INTERVAL,
};

struct opt_def {
    enum opt_id id;
    const char *name;
    bool takes_value;
    unsigned cmds; /* BIT()s of the commands that take it */
};

static const struct opt_def opts[] = {
    {OPT_HELP, "--help", false, ALL_CMDS},
    {OPT_HELP, "-h", false, ALL_CMDS},
    {OPT_VERSION, "--version", false, ALL_CMDS},
    {OPT_JSON, "--json", false, ALL_CMDS},
    {OPT_URL, "--url", true, ALL_CMDS},
    {OPT_ROOT, "--root", true, BIT(CLI_CMD_SUBMIT)},
    {OPT_NAME, "--name", true, BIT(CLI_CMD_SUBMIT)},
    {OPT_IDEM, "--idempotency-key", true, BIT(CLI_CMD_SUBMIT)},
    {OPT_PRIORITY, "--priority", true, BIT(CLI_CMD_SUBMIT)},
    {OPT_METADATA, "--metadata", true, BIT(CLI_CMD_SUBMIT)},
    {OPT_RUN, "--run", false, BIT(CLI_CMD_SUBMIT)},
    {OPT_MODE, "--mode", true, BIT(CLI_CMD_SUBMIT) | BIT(CLI_CMD_RUN)},
    {OPT_STATE, "--state", true, BIT(CLI_CMD_LS)},
    {OPT_LIMIT, "--limit", true, BIT(CLI_CMD_LS)},
    {OPT_STAGES, "--stages", true, BIT(CLI_CMD_RETRY)},
    {OPT_CALLS, "--calls", true, BIT(CLI_CMD_RETRY)},
    {OPT_CSV, "--csv", false, BIT(CLI_CMD_RESULTS)},
    {OPT_INTERVAL, "--interval", true, BIT(CLI_CMD_WATCH)},
};

#define OPT_COUNT (sizeof opts / sizeof opts[0])

static int bad(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int bad(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return CLI_EXIT_BAD_USAGE;
}

const char *cli_cmd_name(enum cli_cmd cmd)
{
    for (size_t i = 0; i < CMD_COUNT; i++) {
        if (cmds[i].cmd == cmd) {
            return cmds[i].name;
        }
    }
    return "cofi";
}

const char *cli_help(enum cli_cmd cmd)
{
    for (size_t i = 0; i < CMD_COUNT; i++) {
        if (cmds[i].cmd == cmd) {
            return cmds[i].help;
        }
    }
    return top_help;
}

static enum cli_cmd find_cmd(const char *name)
{
    for (size_t i = 0; i < CMD_COUNT; i++) {
        if (strcmp(cmds[i].name, name) == 0) {
            return cmds[i].cmd;
        }
    }
    return CLI_CMD_NONE;
}

/* The option named by arg (its part before any '='), or NULL. */
static const struct opt_def *find_opt(const char *arg)
{
    size_t n = strcspn(arg, "=");
    for (size_t i = 0; i < OPT_COUNT; i++) {
        if (strlen(opts[i].name) == n && strncmp(opts[i].name, arg, n) == 0) {
            return &opts[i];
        }
    }
    return NULL;
}

/* Parses v as a decimal integer in [lo, hi]. Returns 0 or -1. */
static int parse_int(const char *v, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (v[0] == '\0' || *end != '\0' || errno != 0 || n < lo || n > hi) {
        return -1;
    }
    *out = (int)n;
    return 0;
}

static bool all_digits(const char *s)
{
    if (s[0] == '\0' || strlen(s) > 18) {
        return false;
    }
    return strspn(s, "0123456789") == strlen(s);
}

static bool one_of(const char *v, const char *const *set)
{
    for (size_t i = 0; set[i] != NULL; i++) {
        if (strcmp(v, set[i]) == 0) {
            return true;
        }
    }
    return false;
}

static const char *const modes[] = {"pipelined", "staged", NULL};
static const char *const states[] = {
    "created", "running", "paused", "completed", "cancelled", "completed_with_errors", NULL};

/* Stores the value v of option o in a. Returns 0 or CLI_EXIT_BAD_USAGE. */
static int set_value(struct cli_args *a, const struct opt_def *o, const char *v, char *err,
                     size_t cap)
{
    switch (o->id) {
    case OPT_URL:
        if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0) {
            return bad(err, cap, "--url must start with http:// or https://");
        }
        a->url = v;
        return 0;
    case OPT_ROOT:
        a->root = v;
        return 0;
    case OPT_NAME:
        a->name = v;
        return 0;
    case OPT_IDEM:
        if (v[0] == '\0') {
            return bad(err, cap, "--idempotency-key must not be empty");
        }
        a->idempotency_key = v;
        return 0;
    case OPT_PRIORITY:
        if (parse_int(v, 1, 2147483647L, &a->priority) != 0) {
            return bad(err, cap, "--priority must be an integer >= 1, not '%s'", v);
        }
        return 0;
    case OPT_METADATA:
        a->metadata = v;
        return 0;
    case OPT_MODE:
        if (!one_of(v, modes)) {
            return bad(err, cap, "--mode must be pipelined or staged, not '%s'", v);
        }
        a->mode = v;
        return 0;
    case OPT_STATE:
        if (!one_of(v, states)) {
            return bad(err, cap, "--state '%s' is not a batch state", v);
        }
        a->state = v;
        return 0;
    case OPT_LIMIT:
        if (parse_int(v, 1, 1000, &a->limit) != 0) {
            return bad(err, cap, "--limit must be an integer in 1..1000, not '%s'", v);
        }
        return 0;
    case OPT_STAGES:
        a->stages = v;
        return 0;
    case OPT_CALLS:
        a->calls = v;
        return 0;
    case OPT_INTERVAL:
        if (parse_int(v, 50, 3600000L, &a->interval_ms) != 0) {
            return bad(err, cap, "--interval must be milliseconds in 50..3600000, not '%s'", v);
        }
        return 0;
    default:
        return bad(err, cap, "%s takes no value", o->name);
    }
}

static void set_flag(struct cli_args *a, enum opt_id id)
{
    if (id == OPT_HELP) {
        a->help = true;
    } else if (id == OPT_VERSION) {
        a->version = true;
    } else if (id == OPT_JSON) {
        a->json = true;
    } else if (id == OPT_RUN) {
        a->run = true;
    } else if (id == OPT_CSV) {
        a->csv = true;
    }
}

/* Handles argv[*i], an option. Returns 0 or CLI_EXIT_BAD_USAGE. */
static int take_option(struct cli_args *a, int argc, char **argv, int *i, char *err, size_t cap)
{
    const char *arg = argv[*i];
    const struct opt_def *o = find_opt(arg);
    const char *where = a->cmd == CLI_CMD_NONE ? "" : " for ";
    const char *cmd = a->cmd == CLI_CMD_NONE ? "" : cli_cmd_name(a->cmd);
    if (o == NULL) {
        return bad(err, cap, "unknown option '%s'%s%s", arg, where, cmd);
    }
    /* Before the command only the options of every command are known. */
    unsigned allowed = a->cmd == CLI_CMD_NONE ? ALL_CMDS : BIT(a->cmd);
    if ((o->cmds & allowed) != allowed) {
        if (a->cmd == CLI_CMD_NONE) {
            return bad(err, cap, "option %s goes after its command", o->name);
        }
        return bad(err, cap, "%s takes no option %s", cmd, o->name);
    }
    const char *eq = strchr(arg, '=');
    if (!o->takes_value) {
        if (eq != NULL) {
            return bad(err, cap, "%s takes no value", o->name);
        }
        set_flag(a, o->id);
        return 0;
    }
    const char *v = NULL;
    if (eq != NULL) {
        v = eq + 1;
    } else if (*i + 1 < argc) {
        *i += 1;
        v = argv[*i];
    } else {
        return bad(err, cap, "%s needs a value", o->name);
    }
    return set_value(a, o, v, err, cap);
}

/* Handles an operand: the command, then its ids or paths. Returns 0 or CLI_EXIT_BAD_USAGE. */
static int take_operand(struct cli_args *a, const char *arg, char *err, size_t cap)
{
    if (a->cmd == CLI_CMD_NONE) {
        a->cmd = find_cmd(arg);
        if (a->cmd == CLI_CMD_NONE) {
            return bad(err, cap, "unknown command '%s'", arg);
        }
        return 0;
    }
    if (a->cmd == CLI_CMD_SUBMIT) {
        a->paths[a->path_count++] = arg;
        return 0;
    }
    if (a->cmd == CLI_CMD_LS) {
        return bad(err, cap, "ls takes no operand ('%s')", arg);
    }
    if (a->id == NULL) {
        if (!all_digits(arg)) {
            return bad(err, cap, "the batch id must be a number, not '%s'", arg);
        }
        a->id = arg;
        return 0;
    }
    if (a->cmd == CLI_CMD_SHOW && a->call_id == NULL) {
        if (!all_digits(arg)) {
            return bad(err, cap, "the call id must be a number, not '%s'", arg);
        }
        a->call_id = arg;
        return 0;
    }
    return bad(err, cap, "unexpected operand '%s'", arg);
}

/* What every command needs once the whole line is read. */
static int check_complete(const struct cli_args *a, char *err, size_t cap)
{
    if (a->help || a->version) {
        return 0;
    }
    if (a->cmd == CLI_CMD_NONE) {
        return bad(err, cap, "a command is required");
    }
    if (a->cmd == CLI_CMD_SUBMIT) {
        if (a->path_count == 0) {
            return bad(err, cap, "submit needs at least one file or folder");
        }
        if (a->mode != NULL && !a->run) {
            return bad(err, cap, "--mode goes with --run");
        }
        return 0;
    }
    if (a->cmd != CLI_CMD_LS && a->id == NULL) {
        return bad(err, cap, "%s needs a batch id", cli_cmd_name(a->cmd));
    }
    return 0;
}

int cli_args_parse(int argc, char **argv, const char *url_env, const char *token_env,
                   struct cli_args *out, char *err, size_t cap)
{
    memset(out, 0, sizeof *out);
    err[0] = '\0';
    out->url = (url_env != NULL && url_env[0] != '\0') ? url_env : CLI_DEFAULT_URL;
    out->token = (token_env != NULL && token_env[0] != '\0') ? token_env : NULL;
    out->interval_ms = 1000;
    out->paths = calloc((size_t)(argc > 0 ? argc : 1), sizeof *out->paths);
    if (out->paths == NULL) {
        return bad(err, cap, "out of memory");
    }
    bool operands_only = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int rc;
        if (!operands_only && strcmp(arg, "--") == 0) {
            operands_only = true;
            continue;
        }
        if (!operands_only && arg[0] == '-' && arg[1] != '\0') {
            rc = take_option(out, argc, argv, &i, err, cap);
        } else {
            rc = take_operand(out, arg, err, cap);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return check_complete(out, err, cap);
}

void cli_args_free(struct cli_args *a)
{
    if (a == NULL) {
        return;
    }
    free(a->paths);
    a->paths = NULL;
    a->path_count = 0;
}
