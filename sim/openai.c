/* The NLP API as an OpenAI-compatible chat-completions API: POST /v1/chat/completions. */
#include "sim/sim.h"

#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

int sim_openai_parse(struct sim_req *req, struct sim_job *job, struct sim_reply *r)
{
    const char *colon = strrchr(job->key, ':');
    size_t idlen = colon ? (size_t)(colon - job->key) : 0;
    enum sim_ep ep;
    if (colon == NULL || idlen == 0 || sim_ep_parse(colon + 1, &ep) != 0 ||
        (ep != SIM_EP_LLM1 && ep != SIM_EP_LLM2)) {
        sim_reply_error(r, 400, "Idempotency-Key must be {call_id}:llm1 or {call_id}:llm2");
        return -1;
    }
    job->ep = ep;
    memcpy(job->call_id_buf, job->key, idlen);
    job->call_id_buf[idlen] = '\0';
    job->call_id = job->call_id_buf;
    if (req->body.len == 0) {
        sim_reply_error(r, 400, "empty body: expected a JSON object");
        return -1;
    }
    json_error_t jerr;
    job->body = json_loadb(req->body.data, req->body.len, 0, &jerr);
    if (job->body == NULL) {
        sim_reply_error(r, 400, "malformed JSON: %s", jerr.text);
        return -1;
    }
    if (!json_is_object(job->body)) {
        sim_reply_error(r, 400, "body must be a JSON object");
        return -1;
    }
    return 0;
}

/* True when some message's content holds needle. */
static bool messages_hold(const json_t *messages, const char *needle)
{
    size_t i;
    const json_t *m;
    json_array_foreach(messages, i, m)
    {
        const char *content = json_string_value(json_object_get(m, "content"));
        if (content != NULL && strstr(content, needle) != NULL) {
            return true;
        }
    }
    return false;
}

int sim_openai_validate(struct sim_port *p, struct sim_job *job, struct sim_reply *r)
{
    const json_t *model = json_object_get(job->body, "model");
    const json_t *messages = json_object_get(job->body, "messages");
    if (!json_is_string(model) || json_string_length(model) == 0) {
        sim_reply_error(r, 400, "model must be a non-empty string");
        return -1;
    }
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        sim_reply_error(r, 400, "messages must be a non-empty array");
        return -1;
    }
    size_t i;
    const json_t *m;
    size_t chars = 0;
    json_array_foreach(messages, i, m)
    {
        const json_t *role = json_object_get(m, "role");
        const json_t *content = json_object_get(m, "content");
        if (!json_is_string(role) || !json_is_string(content)) {
            sim_reply_error(r, 400, "messages[%zu] must have string role and content", i);
            return -1;
        }
        chars += json_string_length(content);
    }
    job->prompt_tokens = (int64_t)(chars / 4);
    json_t *stt = sim_result_new(SIM_EP_STT, p->sim->cfg.seed, job->call_id);
    if (stt == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return -1;
    }
    bool carried = messages_hold(messages, json_string_value(json_object_get(stt, "transcript")));
    json_decref(stt);
    if (!carried) {
        sim_reply_error(r, 422, "the prompt does not carry the call's transcript");
        return -1;
    }
    return 0;
}

void sim_openai_produce(struct sim_port *p, struct sim_job *job, struct sim_reply *r)
{
    json_t *result = sim_result_new(job->ep, p->sim->cfg.seed, job->call_id);
    char *content = result ? json_dumps(result, JSON_COMPACT) : NULL;
    json_decref(result);
    if (content == NULL) {
        sim_reply_error(r, 500, "out of memory");
        return;
    }
    char id[SIM_KEY_MAX + 16];
    snprintf(id, sizeof id, "chatcmpl-%s", job->key);
    const char *model = json_string_value(json_object_get(job->body, "model"));
    json_int_t prompt = (json_int_t)job->prompt_tokens;
    json_int_t completion = SIM_COMPLETION_TOKENS;
    json_t *body =
        json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:I, s:I, s:I}}", "id", id,
                  "object", "chat.completion", "created", (json_int_t)time(NULL), "model", model,
                  "choices", "index", 0, "message", "role", "assistant", "content", content,
                  "finish_reason", "stop", "usage", "prompt_tokens", prompt, "completion_tokens",
                  completion, "total_tokens", prompt + completion);
    free(content);
    sim_reply_json(r, 200, body);
}
