/* Mediator node endpoints: POST /upload (multipart, streamed) and denoise/ivr/lid/stt. */
#include "sim/sim.h"

#include <string.h>

/* The last path component of an uploaded file's name ("" when there is none). */
static const char *base_name(const char *path)
{
    const char *base = path;
    for (const char *c = path; *c != '\0'; c++) {
        if (*c == '/' || *c == '\\') {
            base = c + 1;
        }
    }
    return base;
}

/* True when s is valid UTF-8 (jansson refuses anything else). */
static bool is_utf8(const char *s)
{
    json_t *t = json_string(s);
    json_decref(t);
    return t != NULL;
}

static int validate_upload(struct sim_req *req, struct sim_job *job, struct sim_reply *r)
{
    if (req->form_unsupported) {
        sim_reply_error(r, 415, "expected a multipart/form-data body");
        return -1;
    }
    if (req->form_bad) {
        sim_reply_error(r, 400, "malformed multipart/form-data body (or call_id given twice)");
        return -1;
    }
    if (!req->have_file) {
        sim_reply_error(r, 400, "missing field 'file'");
        return -1;
    }
    if (req->file_unnamed || req->filename.data == NULL ||
        base_name(req->filename.data)[0] == '\0') {
        sim_reply_error(r, 400, "field 'file' needs a filename");
        return -1;
    }
    if (!req->have_call_id || req->call_id.len == 0) {
        sim_reply_error(r, 400, "missing field 'call_id'");
        return -1;
    }
    if (strlen(req->call_id.data) != req->call_id.len || !is_utf8(req->call_id.data) ||
        !is_utf8(req->filename.data)) {
        sim_reply_error(r, 400, "call_id and the filename must be UTF-8 text");
        return -1;
    }
    job->call_id = req->call_id.data;
    return 0;
}

static bool file_known(struct sim_port *p, const char *file_name)
{
    pthread_mutex_lock(&p->files_mu);
    bool known = sim_map_get(&p->files, file_name) != NULL;
    pthread_mutex_unlock(&p->files_mu);
    return known;
}

static int validate_stage(struct sim_port *p, struct sim_job *job, struct sim_reply *r)
{
    const json_t *b = job->body;
    const json_t *batch_id = json_object_get(b, "batch_id");
    const json_t *file_name = json_object_get(b, "file_name");
    const json_t *stage = json_object_get(b, "stage");
    const json_t *previous = json_object_get(b, "previous");
    if (!json_is_integer(batch_id)) {
        sim_reply_error(r, 400, "batch_id must be an integer");
        return -1;
    }
    if (!json_is_string(file_name)) {
        sim_reply_error(r, 400, "file_name must be a string");
        return -1;
    }
    if (!json_is_string(stage)) {
        sim_reply_error(r, 400, "stage must be a string");
        return -1;
    }
    if (!json_is_object(previous)) {
        sim_reply_error(r, 400, "previous must be a JSON object");
        return -1;
    }
    const char *want = sim_ep_name(job->ep);
    if (strcmp(json_string_value(stage), want) != 0) {
        sim_reply_error(r, 400, "stage must be '%s' on /%s", want, want);
        return -1;
    }
    const char *name = json_string_value(file_name);
    if (!file_known(p, name)) {
        sim_reply_error(r, 404, "unknown file");
        return -1;
    }
    size_t idlen = strlen(job->call_id);
    if (strncmp(name, job->call_id, idlen) != 0 || name[idlen] != '-') {
        sim_reply_error(r, 400, "file_name was uploaded for another call");
        return -1;
    }
    for (int e = SIM_EP_DENOISE; e < (int)job->ep; e++) {
        const char *earlier = sim_ep_name((enum sim_ep)e);
        if (!json_is_object(json_object_get(previous, earlier))) {
            sim_reply_error(r, 400, "previous.%s must be the %s result (a JSON object)", earlier,
                            earlier);
            return -1;
        }
    }
    return 0;
}

int sim_node_validate(struct sim_port *p, struct sim_req *req, struct sim_job *job,
                      struct sim_reply *r)
{
    if (job->ep == SIM_EP_UPLOAD) {
        return validate_upload(req, job, r);
    }
    return validate_stage(p, job, r);
}

/* Stores the upload's file name on the node and answers 201 {"file_name": ...}. */
static void produce_upload(struct sim_port *p, struct sim_req *req, struct sim_job *job,
                           struct sim_reply *r)
{
    struct buf name;
    buf_init(&name, 2 * SIM_FIELD_MAX + 2);
    if (buf_printf(&name, "%s-%s", job->call_id, base_name(req->filename.data)) != 0) {
        buf_free(&name);
        sim_reply_error(r, 500, "out of memory");
        return;
    }
    bool created = false;
    pthread_mutex_lock(&p->files_mu);
    uint64_t *slot = sim_map_upsert(&p->files, name.data, &created);
    pthread_mutex_unlock(&p->files_mu);
    if (slot == NULL) {
        buf_free(&name);
        sim_reply_error(r, 500, "out of memory");
        return;
    }
    log_debug("%s: stored %s (%llu bytes)", p->id, name.data, (unsigned long long)req->file_bytes);
    sim_reply_json(r, 201, json_pack("{s:s}", "file_name", name.data));
    buf_free(&name);
}

void sim_node_produce(struct sim_port *p, struct sim_req *req, struct sim_job *job,
                      struct sim_reply *r)
{
    if (job->ep == SIM_EP_UPLOAD) {
        produce_upload(p, req, job, r);
        return;
    }
    json_t *result = sim_result_new(job->ep, p->sim->cfg.seed, job->call_id);
    if (result == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return;
    }
    sim_reply_json(r, 200, result);
}
