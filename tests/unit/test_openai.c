/* The OpenAI chat-completions form of the NLP API (pipeline/openai.c): templates, the request
 * body, and the stage result from a completion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/stages.h"
#include "pipeline/openai.h"

static void test_render_replaces_placeholders(void **state)
{
    (void)state;
    char *s = openai_render("T={transcript} L={language} X={llm1} {other} {\"a\": 1}", "hi there",
                            "en", "{\"summary\":\"s\"}");
    assert_string_equal(s, "T=hi there L=en X={\"summary\":\"s\"} {other} {\"a\": 1}");
    free(s);
    s = openai_render("{llm1}", "t", "l", NULL);
    assert_string_equal(s, "");
    free(s);
}

static void test_templates_default_and_configured(void **state)
{
    (void)state;
    struct cofi_config cfg;
    memset(&cfg, 0, sizeof cfg);
    assert_non_null(strstr(openai_template(&cfg, STAGE_LLM1), "{transcript}"));
    assert_non_null(strstr(openai_template(&cfg, STAGE_LLM2), "{llm1}"));
    char mine[] = "mine {transcript}";
    cfg.llm_prompts[1] = mine;
    assert_string_equal(openai_template(&cfg, STAGE_LLM2), mine);
}

static void test_body(void **state)
{
    (void)state;
    char *text = openai_body("m-1", "say \"hi\"");
    json_t *b = json_loads(text, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(b, "model")), "m-1");
    json_t *m = json_array_get(json_object_get(b, "messages"), 0);
    assert_string_equal(json_string_value(json_object_get(m, "role")), "user");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "say \"hi\"");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(b, "response_format"), "type")),
        "json_object");
    json_decref(b);
    free(text);
}

static void outcome_of(const char *reply, struct job_outcome *o)
{
    job_outcome_init(o, LANE_ANSWERED);
    o->kind = OUTCOME_OK;
    o->result = json_loads(reply, 0, NULL);
    o->result_text = strdup(reply);
    openai_outcome(o);
}

static void test_outcome_takes_the_content_object(void **state)
{
    (void)state;
    struct job_outcome o;
    outcome_of("{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": "
               "\"{\\\"summary\\\": \\\"ok\\\"}\"}}], \"usage\": {\"prompt_tokens\": 30, "
               "\"completion_tokens\": 20, \"total_tokens\": 50}}",
               &o);
    assert_int_equal(o.kind, OUTCOME_OK);
    assert_string_equal(json_string_value(json_object_get(o.result, "summary")), "ok");
    assert_string_equal(o.result_text, "{\"summary\": \"ok\"}");
    assert_int_equal(o.usage_tokens, 50);
    json_decref(o.result);
    free(o.result_text);
    outcome_of("{\"choices\": [{\"message\": {\"content\": \"{}\"}}], \"usage\": "
               "{\"prompt_tokens\": 7, \"completion_tokens\": 3}}",
               &o);
    assert_int_equal(o.usage_tokens, 10);
    json_decref(o.result);
    free(o.result_text);
}

static void test_outcome_without_an_object_is_permanent(void **state)
{
    (void)state;
    static const char *const replies[] = {
        "{\"choices\": [{\"message\": {\"content\": \"I think it went well.\"}}]}",
        "{\"choices\": [{\"message\": {\"content\": \"[1, 2]\"}}]}",
        "{\"choices\": []}",
        "{\"object\": \"chat.completion\"}",
    };
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        struct job_outcome o;
        outcome_of(replies[i], &o);
        assert_int_equal(o.kind, OUTCOME_PERMANENT);
        assert_null(o.result);
        assert_null(o.result_text);
        assert_non_null(strstr(o.error, "not a JSON object"));
        assert_int_equal(o.usage_tokens, -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_replaces_placeholders),
        cmocka_unit_test(test_templates_default_and_configured),
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_outcome_takes_the_content_object),
        cmocka_unit_test(test_outcome_without_an_object_is_permanent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
