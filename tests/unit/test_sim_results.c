/* cofi-sim: deterministic results, the string map, endpoint names and failure rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* The simulator is an executable, not a library: compile the pieces under test in here. */
#include "sim/map.c"
#include "sim/port.c"
#include "sim/results.c"
#include "sim/rules.c"

static void test_results_are_deterministic_per_seed_and_call(void **state)
{
    (void)state;
    for (int ep = SIM_EP_DENOISE; ep < SIM_EP_COUNT; ep++) {
        json_t *a = sim_result_new((enum sim_ep)ep, 7, "call-42");
        json_t *b = sim_result_new((enum sim_ep)ep, 7, "call-42");
        assert_non_null(a);
        assert_true(json_is_object(a));
        assert_true(json_equal(a, b));
        json_decref(a);
        json_decref(b);
    }
    int differ = 0;
    for (int i = 0; i < 50; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        json_t *a = sim_result_new(SIM_EP_STT, 1, id);
        json_t *b = sim_result_new(SIM_EP_STT, 2, id);
        differ += !json_equal(a, b);
        json_decref(a);
        json_decref(b);
    }
    assert_true(differ > 0);
}

static void test_stt_transcript_names_the_call_and_matches_lid(void **state)
{
    (void)state;
    static const char *const langs[] = {"en", "de", "fr", "es", "it"};
    json_t *lid = sim_result_new(SIM_EP_LID, 3, "abc");
    json_t *stt = sim_result_new(SIM_EP_STT, 3, "abc");
    const char *lang = json_string_value(json_object_get(lid, "language"));
    assert_non_null(lang);
    bool known = false;
    for (size_t i = 0; i < 5; i++) {
        known = known || strcmp(lang, langs[i]) == 0;
    }
    assert_true(known);
    assert_string_equal(json_string_value(json_object_get(stt, "language")), lang);
    const char *text = json_string_value(json_object_get(stt, "transcript"));
    assert_non_null(text);
    assert_int_equal(strncmp(text, "call abc: ", 10), 0);
    assert_true(json_integer_value(json_object_get(stt, "words")) >= 5);
    json_decref(lid);
    json_decref(stt);
}

static void test_upload_has_no_deterministic_result(void **state)
{
    (void)state;
    assert_null(sim_result_new(SIM_EP_UPLOAD, 1, "x"));
}

static void test_hash_unit_is_in_0_1(void **state)
{
    (void)state;
    assert_true(sim_hash_unit(0) >= 0.0);
    assert_true(sim_hash_unit(UINT64_MAX) < 1.0);
    assert_true(sim_hash(1, "k", 2, 0) != sim_hash(1, "k", 2, 1));
}

static void test_map_upsert_get_clear(void **state)
{
    (void)state;
    struct sim_map m;
    sim_map_init(&m);
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        bool created = false;
        uint64_t *v = sim_map_upsert(&m, key, &created);
        assert_non_null(v);
        assert_true(created);
        *v = (uint64_t)i;
    }
    bool created = true;
    assert_int_equal(*sim_map_upsert(&m, "k500", &created), 500);
    assert_false(created);
    assert_int_equal(*sim_map_get(&m, "k999"), 999);
    assert_null(sim_map_get(&m, "nope"));
    assert_int_equal(m.count, 1000);
    sim_map_clear(&m);
    assert_null(sim_map_get(&m, "k1"));
    sim_map_clear(NULL);
}

static void test_endpoint_names_and_distribute_alias(void **state)
{
    (void)state;
    enum sim_ep ep = SIM_EP_COUNT;
    assert_int_equal(sim_ep_parse("distribute", &ep), 0);
    assert_int_equal(ep, SIM_EP_UPLOAD);
    assert_string_equal(sim_ep_stage(SIM_EP_UPLOAD), "distribute");
    assert_string_equal(sim_ep_stage(SIM_EP_STT), "stt");
    assert_int_equal(sim_ep_parse("bogus", &ep), -1);
    assert_true(sim_ep_in_role(SIM_EP_LID, SIM_ROLE_NODE));
    assert_false(sim_ep_in_role(SIM_EP_LLM1, SIM_ROLE_NODE));
    assert_true(sim_ep_in_role(SIM_EP_LLM2, SIM_ROLE_NLP));
}

static int set_rules(struct sim_rules *rules, enum sim_role role, const char *text)
{
    json_t *body = json_loads(text, 0, NULL);
    char err[256];
    int rc = sim_rules_replace(rules, role, body, err, sizeof err);
    json_decref(body);
    return rc;
}

static void test_rules_match_call_ids_times_and_per_key(void **state)
{
    (void)state;
    struct sim_rules rules = {0};
    pthread_mutex_init(&rules.mu, NULL);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NODE,
                               "{\"rules\": [{\"endpoint\": \"ivr\", \"call_ids\": [\"17\", 18], "
                               "\"status\": 503, \"retry_after\": \"1\", \"per_key\": 2}, "
                               "{\"endpoint\": \"*\", \"call_ids\": [\"9\"], \"status\": 400, "
                               "\"times\": 1}]}"),
                     0);
    struct sim_injected inj = {0};
    assert_false(sim_rules_match(&rules, SIM_EP_IVR, "16", "16:ivr", &inj));
    assert_true(sim_rules_match(&rules, SIM_EP_IVR, "18", "18:ivr", &inj));
    assert_int_equal(inj.status, 503);
    assert_string_equal(inj.retry_after, "1");
    assert_true(sim_rules_match(&rules, SIM_EP_IVR, "18", "18:ivr", &inj));
    assert_false(sim_rules_match(&rules, SIM_EP_IVR, "18", "18:ivr", &inj));
    assert_false(sim_rules_match(&rules, SIM_EP_LID, "17", "17:lid", &inj));
    assert_true(sim_rules_match(&rules, SIM_EP_STT, "9", "9:stt", &inj));
    assert_int_equal(inj.status, 400);
    assert_string_equal(inj.retry_after, "");
    assert_false(sim_rules_match(&rules, SIM_EP_STT, "9", "9:stt", &inj));
    sim_rules_clear(&rules);
    pthread_mutex_destroy(&rules.mu);
}

static void test_rules_reject_bad_input_and_keep_old_rules(void **state)
{
    (void)state;
    struct sim_rules rules = {0};
    pthread_mutex_init(&rules.mu, NULL);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP, "{\"rules\": [{\"status\": 429}]}"), 0);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP,
                               "{\"rules\": [{\"endpoint\": \"lid\", "
                               "\"status\": 500}]}"),
                     -1);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP, "{\"rules\": [{\"status\": 99}]}"), -1);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP,
                               "{\"rules\": [{\"status\": 500, "
                               "\"bogus\": 1}]}"),
                     -1);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP, "{\"rule\": []}"), -1);
    struct sim_injected inj = {0};
    assert_true(sim_rules_match(&rules, SIM_EP_LLM1, "1", "1:llm1", &inj));
    assert_int_equal(inj.status, 429);
    sim_rules_clear(&rules);
    pthread_mutex_destroy(&rules.mu);
}

static void test_rules_bodies_verbatim_hex_and_padded(void **state)
{
    (void)state;
    struct sim_rules rules = {0};
    pthread_mutex_init(&rules.mu, NULL);
    assert_int_equal(
        set_rules(&rules, SIM_ROLE_NLP,
                  "{\"rules\": [{\"call_ids\": [\"1\"], \"status\": 400, "
                  "\"body\": \"{\\\"error\\\": \\\"\u0448\\\"}\"}, "
                  "{\"call_ids\": [\"2\"], \"status\": 400, \"body_hex\": \"7BfF00\"}, "
                  "{\"call_ids\": [\"3\"], \"status\": 200, \"body_bytes\": 5}, "
                  "{\"call_ids\": [\"4\"], \"status\": 200, "
                  "\"body_bytes\": 33554432}, "
                  "{\"call_ids\": [\"5\"], \"status\": 503}]}"),
        0);
    struct sim_injected inj = {0};
    assert_true(sim_rules_match(&rules, SIM_EP_LLM1, "1", "1:llm1", &inj));
    assert_int_equal(inj.status, 400);
    assert_int_equal(inj.body_len, strlen("{\"error\": \"\xd1\x88\"}"));
    assert_memory_equal(inj.body, "{\"error\": \"\xd1\x88\"}", inj.body_len);
    free(inj.body);

    assert_true(sim_rules_match(&rules, SIM_EP_LLM1, "2", "2:llm1", &inj));
    assert_int_equal(inj.body_len, 3);
    assert_memory_equal(inj.body, "{\xff\0", 3);
    free(inj.body);

    assert_true(sim_rules_match(&rules, SIM_EP_LLM1, "3", "3:llm1", &inj));
    assert_int_equal(inj.status, 200);
    assert_int_equal(inj.body_len, strlen("{\"pad\":\"\"}"));
    assert_memory_equal(inj.body, "{\"pad\":\"\"}", inj.body_len);
    free(inj.body);

    assert_true(sim_rules_match(&rules, SIM_EP_LLM1, "4", "4:llm1", &inj));
    assert_int_equal(inj.body_len, 33554432);
    json_error_t jerr;
    json_t *pad = json_loadb(inj.body, inj.body_len, 0, &jerr);
    assert_non_null(pad);
    assert_int_equal(json_string_length(json_object_get(pad, "pad")), 33554432 - 10);
    json_decref(pad);
    free(inj.body);

    inj.body = NULL;
    assert_true(sim_rules_match(&rules, SIM_EP_LLM1, "5", "5:llm1", &inj));
    assert_int_equal(inj.status, 503);
    assert_null(inj.body);

    assert_int_equal(
        set_rules(&rules, SIM_ROLE_NLP, "{\"rules\": [{\"status\": 400, \"body\": 1}]}"), -1);
    assert_int_equal(
        set_rules(&rules, SIM_ROLE_NLP, "{\"rules\": [{\"status\": 400, \"body_hex\": \"abc\"}]}"),
        -1);
    assert_int_equal(
        set_rules(&rules, SIM_ROLE_NLP, "{\"rules\": [{\"status\": 400, \"body_hex\": \"zz\"}]}"),
        -1);
    assert_int_equal(
        set_rules(&rules, SIM_ROLE_NLP, "{\"rules\": [{\"status\": 200, \"body_bytes\": 0}]}"), -1);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP,
                               "{\"rules\": [{\"status\": 200, \"body_bytes\": 67108865}]}"),
                     -1);
    assert_int_equal(set_rules(&rules, SIM_ROLE_NLP,
                               "{\"rules\": [{\"status\": 200, \"body\": \"{}\", "
                               "\"body_bytes\": 10}]}"),
                     -1);
    sim_rules_clear(&rules);
    pthread_mutex_destroy(&rules.mu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_results_are_deterministic_per_seed_and_call),
        cmocka_unit_test(test_stt_transcript_names_the_call_and_matches_lid),
        cmocka_unit_test(test_upload_has_no_deterministic_result),
        cmocka_unit_test(test_hash_unit_is_in_0_1),
        cmocka_unit_test(test_map_upsert_get_clear),
        cmocka_unit_test(test_endpoint_names_and_distribute_alias),
        cmocka_unit_test(test_rules_match_call_ids_times_and_per_key),
        cmocka_unit_test(test_rules_reject_bad_input_and_keep_old_rules),
        cmocka_unit_test(test_rules_bodies_verbatim_hex_and_padded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
