/* What `cofi` prints: batches, lists, calls, progress bars and problems, for people. The JSON
 * values are borrowed; nothing here talks to the network. */
#ifndef COFI_CLI_OUTPUT_H
#define COFI_CLI_OUTPUT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

/* One line on `to` for an API error: "cofi: HTTP 409 Conflict: <detail>" from a problem+json
 * body (or the first line of any other body). body may be NULL. */
void out_problem(FILE *to, long status, const char *body);

/* A batch: one header line and a table of its stages' counts. */
void out_batch(FILE *to, const json_t *batch);

/* One line per batch of a GET /batches page, under a header; then the next cursor if any. */
void out_batch_list(FILE *to, const json_t *page);

/* One call: its file, node, state, what it waits for, and a line per stage (state, attempts,
 * times, last error) with its result on the next line. */
void out_call(FILE *to, const json_t *call);

/* Progress of a batch in one plain line: "batch 7 running  distribute 10/10 ... eta 12s". */
void out_progress_line(FILE *to, const json_t *batch);

/* Progress bars, one per stage, for a terminal. *drawn is how many lines the last call
 * drew (0 at first): they are overwritten. */
void out_progress_bars(FILE *to, const json_t *batch, int *drawn);

/* The compact JSON of v and a newline (the --json form). */
void out_json(FILE *to, const json_t *v);

#endif
