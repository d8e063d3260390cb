/* Command-line helpers shared by cofi-sim and cofi-poll. */
#include "common/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *program = "cofi";

void cli_program(const char *name)
{
    program = name;
}

int cli_bad(const char *flag, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s: %s\n(try %s --help)\n", program, flag, msg, program);
    return CLI_EXIT_USAGE;
}

int cli_flag_value(int argc, char **argv, int *i, char *flag, size_t cap, const char **value)
{
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    *value = NULL;
    if (eq != NULL) {
        snprintf(flag, cap, "%.*s", (int)(eq - arg), arg);
        *value = eq + 1;
    } else {
        snprintf(flag, cap, "%s", arg);
        if (*i + 1 < argc) {
            *value = argv[++*i];
        }
    }
    return *value != NULL ? 0 : cli_bad(flag, "needs a value");
}

int cli_int(const char *flag, const char *v, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < lo || n > hi) {
        return cli_bad(flag, "expected an integer from %ld to %ld, got '%s'", lo, hi, v);
    }
    *out = (int)n;
    return 0;
}

int cli_double(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double d = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !isfinite(d) || d < lo || d > hi) {
        return cli_bad(flag, "expected a number from %g to %g, got '%s'", lo, hi, v);
    }
    *out = d;
    return 0;
}
