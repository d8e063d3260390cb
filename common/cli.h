/* Command-line helpers of cofi's tools (cofi-sim, cofi-poll): a flag's value parsed and range
 * checked, or a message on stderr that names the flag. */
#ifndef COFI_CLI_H
#define COFI_CLI_H

#include <stddef.h>

/* The exit status of a bad command line. */
#define CLI_EXIT_USAGE 2

/* Names the program in the messages ("cofi-sim"); call it once, before the others. */
void cli_program(const char *name);

/* Prints "PROGRAM: FLAG: MESSAGE" and "(try PROGRAM --help)" on stderr. Returns
 * CLI_EXIT_USAGE. */
int cli_bad(const char *flag, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Splits argv[*i], a flag, into its name (copied into flag, cap bytes) and its value (*value):
 * what follows '=' in "--flag=value", else the next argument, which *i then moves past.
 * Returns 0, or CLI_EXIT_USAGE after saying the flag needs a value. */
int cli_flag_value(int argc, char **argv, int *i, char *flag, size_t cap, const char **value);

/* Parses v, the value of flag, as a decimal integer in [lo, hi] into *out. Returns 0, or
 * CLI_EXIT_USAGE after saying what was expected. */
int cli_int(const char *flag, const char *v, long lo, long hi, int *out);

/* Parses v, the value of flag, as a finite number in [lo, hi] into *out. Returns 0, or
 * CLI_EXIT_USAGE after saying what was expected. */
int cli_double(const char *flag, const char *v, double lo, double hi, double *out);

#endif
