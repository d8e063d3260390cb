/* A call this instance holds a claim on, as it travels between the engine and the lanes. */
#ifndef COFI_JOB_H
#define COFI_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"

/* A call this instance holds a claim on, at one stage. Owned by exactly one of: the
 * dispatcher, a lane queue, a transfer in flight, the delayed list, or a record waiting for
 * the flusher (as its continuation). */
struct job {
    struct job *next; /* intrusive link for queues */
    int64_t call_id;
    int64_t batch_id;
    char call_id_str[24];
    int64_t token;              /* the claim's fencing token: every write of the call names it */
    uint64_t epoch;             /* the instance's lease epoch when claimed (see lease.c) */
    int stage;                  /* the stage to run next (0..6) */
    int attempts;               /* requests made at this stage so far */
    char *file;                 /* as submitted, relative to input_root (owned) */
    int node;                   /* index into cfg->nodes, or -1 before distribute */
    char *file_name;            /* the node's name for the file (owned), or NULL */
    json_t *prev;               /* results of earlier stages by name (owned reference) */
    char *last_error;           /* owned, or NULL */
    int64_t stage_started_wall; /* wall ms when the current stage started */
    int64_t due_mono;           /* for the delayed list: when to try again */
    double vtime;               /* its place in the fair order of the lanes (see stride.h) */
    /* The results of prev as the members of a mediator request's "previous" object, ready to
     * send: `"distribute":{...},"denoise":{...}` (no braces; empty before any), so a request
     * is not serialised anew from the tree every time. prev_text_ok is false when it could
     * not be kept (memory): the request is then built from prev. */
    struct buf prev_text;
    bool prev_text_ok;
};

/* A FIFO of jobs. Not thread-safe by itself. */
struct jobq {
    struct job *head, *tail;
    size_t len;
};

/* Appends j (not in any queue). Can't fail. */
void jobq_push(struct jobq *q, struct job *j);

/* Inserts j after every job whose vtime is not above its own (FIFO among equals): a lane's
 * queue kept this way serves the batches in their fair order. O(1) when j goes last. */
void jobq_insert_fair(struct jobq *q, struct job *j);

/* Removes and returns the first job, or NULL when q is empty. */
struct job *jobq_pop(struct jobq *q);

/* Frees a job and everything it owns. Accepts NULL. */
void job_free(struct job *j);

/* Empties j's kept text of earlier results (and marks it usable). Can't fail. */
void job_prev_text_reset(struct job *j);

/* Appends `"name":result_json` to j's kept text; on failure marks it unusable. */
void job_prev_text_add(struct job *j, const char *name, const char *result_json, size_t len);

/* Sets j's kept text from the text of a JSON object of results (as a claim returns it): what
 * lies between its outer braces. On failure marks it unusable. */
void job_prev_text_from_object(struct job *j, const char *obj);

/* Sends j back to distribute: no node, no file name, no earlier results, attempts 0. */
void job_restart(struct job *j);

/* Replaces *dst by a copy of src (NULL allowed); on failure *dst is NULL. */
void job_set_str(char **dst, const char *src);

#endif
