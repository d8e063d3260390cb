/* The NLP API's OpenAI chat-completions form (see openai.h). Pure. */
#include "pipeline/openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/stages.h"

static const char default_llm1[] =
    "You summarise customer calls. Answer with one JSON object with the keys \"summary\" "
    "(a string), \"sentiment\" and \"topics\" (an array of strings).\n"
    "Language: {language}\nTranscript: {transcript}";

static const char default_llm2[] =
    "You classify customer calls. Answer with one JSON object with the keys \"category\", "
    "\"score\" (a number) and \"action_items\" (an array of strings).\n"
    "Language: {language}\nTranscript: {transcript}\nSummary: {llm1}";

const char *openai_template(const struct cofi_config *cfg, int stage)
{
    int i = stage == STAGE_LLM2 ? 1 : 0;
    if (cfg->llm_prompts[i] != NULL) {
        return cfg->llm_prompts[i];
    }
    return i == 1 ? default_llm2 : default_llm1;
}

char *openai_render(const char *tmpl, const char *transcript, const char *language,
                    const char *llm1_text)
{
    struct buf b;
    buf_init(&b, 64u << 20);
    int rc = 0;
    const char *p = tmpl;
    while (rc == 0 && *p != '\0') {
        const char *value = NULL;
        size_t skip = 0;
        if (strncmp(p, "{transcript}", 12) == 0) {
            value = transcript;
            skip = 12;
        } else if (strncmp(p, "{language}", 10) == 0) {
            value = language;
            skip = 10;
        } else if (strncmp(p, "{llm1}", 6) == 0) {
            value = llm1_text != NULL ? llm1_text : "";
            skip = 6;
        }
        if (skip > 0) {
            rc = buf_append(&b, value, strlen(value));
            p += skip;
        } else {
            rc = buf_append(&b, p, 1);
            p++;
        }
    }
    if (rc != 0) {
        buf_free(&b);
        return NULL;
    }
    if (b.len == 0) {
        buf_free(&b); /* may hold room for nothing */
        return strdup("");
    }
    return buf_steal(&b);
}

char *openai_body(const char *model, const char *prompt)
{
    json_t *body = json_pack("{s:s, s:[{s:s, s:s}], s:{s:s}}", "model", model, "messages", "role",
                             "user", "content", prompt, "response_format", "type", "json_object");
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return text;
}

/* usage.total_tokens, or prompt + completion; -1 when absent. */
static long long usage_of(const json_t *reply)
{
    const json_t *u = json_object_get(reply, "usage");
    const json_t *total = json_object_get(u, "total_tokens");
    if (json_is_integer(total)) {
        return (long long)json_integer_value(total);
    }
    const json_t *pt = json_object_get(u, "prompt_tokens");
    const json_t *ct = json_object_get(u, "completion_tokens");
    if (json_is_integer(pt) && json_is_integer(ct)) {
        return (long long)(json_integer_value(pt) + json_integer_value(ct));
    }
    return -1;
}

void openai_outcome(struct job_outcome *o)
{
    if (o->event != LANE_ANSWERED || o->kind != OUTCOME_OK || o->result == NULL) {
        return;
    }
    json_t *reply = o->result;
    o->usage_tokens = usage_of(reply);
    const json_t *choice = json_array_get(json_object_get(reply, "choices"), 0);
    const char *content =
        json_string_value(json_object_get(json_object_get(choice, "message"), "content"));
    json_t *result = content != NULL ? json_loads(content, 0, NULL) : NULL;
    char *text = json_is_object(result) ? strdup(content) : NULL;
    json_decref(reply);
    free(o->result_text);
    o->result = NULL;
    o->result_text = NULL;
    if (text == NULL) {
        o->kind = json_is_object(result) ? OUTCOME_RETRY : OUTCOME_PERMANENT;
        snprintf(o->error, sizeof o->error, "%s",
                 json_is_object(result) ? "out of memory"
                                        : "the model's answer (choices[0].message.content) is "
                                          "not a JSON object");
        json_decref(result);
        return;
    }
    o->result = result;
    o->result_text = text;
}
