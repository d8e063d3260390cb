/* NLP API endpoints: POST /llm1 and /llm2, checking that cofi carried the earlier results. */
#include "sim/sim.h"

#include <string.h>

/* Checks that language and transcript are what lid and stt answered for the call. Returns 0, or
 * -1 with r filled (422). */
static int check_carried(const struct sim_port *p, const struct sim_job *job, const char *language,
                         const char *transcript, struct sim_reply *r)
{
    json_t *stt = sim_result_new(SIM_EP_STT, p->sim->cfg.seed, job->call_id);
    if (stt == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return -1;
    }
    const char *want_text = json_string_value(json_object_get(stt, "transcript"));
    const char *want_lang = json_string_value(json_object_get(stt, "language"));
    int rc = 0;
    if (want_text == NULL || strcmp(want_text, transcript) != 0) {
        sim_reply_error(r, 422, "transcript does not match call");
        rc = -1;
    } else if (want_lang == NULL || strcmp(want_lang, language) != 0) {
        sim_reply_error(r, 422, "language does not match call");
        rc = -1;
    }
    json_decref(stt);
    return rc;
}

/* Checks that the llm1 member is what llm1 answered for the call. Returns 0, or -1 with r. */
static int check_llm1(const struct sim_port *p, const struct sim_job *job, const json_t *llm1,
                      struct sim_reply *r)
{
    json_t *want = sim_result_new(SIM_EP_LLM1, p->sim->cfg.seed, job->call_id);
    if (want == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return -1;
    }
    int rc = 0;
    if (!json_equal(want, llm1)) {
        sim_reply_error(r, 422, "llm1 does not match call");
        rc = -1;
    }
    json_decref(want);
    return rc;
}

int sim_nlp_validate(struct sim_port *p, struct sim_job *job, struct sim_reply *r)
{
    const json_t *b = job->body;
    const json_t *batch_id = json_object_get(b, "batch_id");
    const json_t *language = json_object_get(b, "language");
    const json_t *transcript = json_object_get(b, "transcript");
    const json_t *llm1 = json_object_get(b, "llm1");
    if (!json_is_integer(batch_id)) {
        sim_reply_error(r, 400, "batch_id must be an integer");
        return -1;
    }
    if (!json_is_string(language)) {
        sim_reply_error(r, 400, "language must be a string");
        return -1;
    }
    if (!json_is_string(transcript)) {
        sim_reply_error(r, 400, "transcript must be a string");
        return -1;
    }
    if (job->ep == SIM_EP_LLM2 && !json_is_object(llm1)) {
        sim_reply_error(r, 400, "llm1 must be the llm1 result (a JSON object)");
        return -1;
    }
    job->prompt_tokens = (int64_t)(json_string_length(transcript) / 4);
    if (check_carried(p, job, json_string_value(language), json_string_value(transcript), r) != 0) {
        return -1;
    }
    if (job->ep == SIM_EP_LLM2) {
        return check_llm1(p, job, llm1, r);
    }
    return 0;
}

void sim_nlp_produce(struct sim_port *p, struct sim_job *job, struct sim_reply *r)
{
    json_t *result = sim_result_new(job->ep, p->sim->cfg.seed, job->call_id);
    if (result == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return;
    }
    sim_reply_json(r, 200, result);
}
