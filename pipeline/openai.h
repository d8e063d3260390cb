/* The NLP API's OpenAI chat-completions form (llm.protocol "openai", CONTRACTS §4): the request
 * of a stage from its prompt template, and the stage result from the completion. Pure. */
#ifndef COFI_OPENAI_H
#define COFI_OPENAI_H

#include <jansson.h>
#include <stddef.h>

#include "common/config.h"
#include "pipeline/lane.h"

/* The template of stage (STAGE_LLM1 or STAGE_LLM2): llm.prompts, or the built-in one. */
const char *openai_template(const struct cofi_config *cfg, int stage);

/* The template with {transcript}, {language} and {llm1} replaced (llm1_text may be NULL: "").
 * Returns a new string, NULL when out of memory. */
char *openai_render(const char *tmpl, const char *transcript, const char *language,
                    const char *llm1_text);

/* The request body: {"model", "messages": [{"role": "user", "content": <prompt>}],
 * "response_format": {"type": "json_object"}}. Returns new text, NULL when out of memory. */
char *openai_body(const char *model, const char *prompt);

/* Turns a successful exchange's outcome (o->result: the chat completion) into the stage's:
 * o->result becomes the JSON object that choices[0].message.content holds (its text in
 * o->result_text) and o->usage_tokens usage.total_tokens (or prompt + completion). A
 * completion without such an object is a permanent failure of the call (the model answered,
 * not in the form asked). Can't fail otherwise. */
void openai_outcome(struct job_outcome *o);

#endif
