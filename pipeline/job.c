/* Jobs: queues of them, their lifetime, and the text of their earlier results. */
#include "pipeline/job.h"

#include <stdlib.h>
#include <string.h>

#include "common/stages.h"
#include "pipeline/worker_http.h"

void jobq_push(struct jobq *q, struct job *j)
{
    j->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = j;
    } else {
        q->head = j;
    }
    q->tail = j;
    q->len++;
}

void jobq_insert_fair(struct jobq *q, struct job *j)
{
    if (q->tail == NULL || q->tail->vtime <= j->vtime) {
        jobq_push(q, j);
        return;
    }
    struct job **at = &q->head;
    while (*at != NULL && (*at)->vtime <= j->vtime) {
        at = &(*at)->next;
    }
    j->next = *at;
    *at = j;
    q->len++;
}

struct job *jobq_pop(struct jobq *q)
{
    struct job *j = q->head;
    if (j != NULL) {
        q->head = j->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        q->len--;
        j->next = NULL;
    }
    return j;
}

void job_free(struct job *j)
{
    if (j == NULL) {
        return;
    }
    free(j->file);
    free(j->file_name);
    free(j->last_error);
    json_decref(j->prev);
    buf_free(&j->prev_text);
    free(j);
}

/* Every stage's result at its largest, and room for the names. */
#define PREV_TEXT_LIMIT ((size_t)STAGE_COUNT * (WORKER_REPLY_LIMIT + 64))

void job_prev_text_reset(struct job *j)
{
    buf_free(&j->prev_text);
    buf_init(&j->prev_text, PREV_TEXT_LIMIT);
    j->prev_text_ok = true;
}

void job_prev_text_add(struct job *j, const char *name, const char *result_json, size_t len)
{
    if (!j->prev_text_ok) {
        return;
    }
    int rc = 0;
    if (j->prev_text.len > 0) {
        rc = buf_append(&j->prev_text, ",", 1);
    }
    if (rc == 0) {
        rc = buf_json_string(&j->prev_text, name);
    }
    if (rc == 0) {
        rc = buf_append(&j->prev_text, ":", 1);
    }
    if (rc == 0) {
        rc = buf_append(&j->prev_text, result_json, len);
    }
    if (rc != 0) {
        buf_free(&j->prev_text);
        j->prev_text_ok = false;
    }
}

void job_prev_text_from_object(struct job *j, const char *obj)
{
    job_prev_text_reset(j);
    const char *a = strchr(obj, '{');
    const char *b = strrchr(obj, '}');
    if (a == NULL || b == NULL || b <= a) {
        j->prev_text_ok = false;
        return;
    }
    a++;
    while (a < b && (*a == ' ' || *a == '\n' || *a == '\t' || *a == '\r')) {
        a++;
    }
    if (a < b && buf_append(&j->prev_text, a, (size_t)(b - a)) != 0) {
        buf_free(&j->prev_text);
        j->prev_text_ok = false;
    }
}

void job_restart(struct job *j)
{
    j->stage = STAGE_DISTRIBUTE;
    j->node = -1;
    job_set_str(&j->file_name, NULL);
    j->attempts = 0;
    json_decref(j->prev);
    j->prev = json_object();
    job_prev_text_reset(j);
}

void job_set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src != NULL ? strdup(src) : NULL;
}
