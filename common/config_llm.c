/* The configuration's "llm" object: the NLP API, its limits, protocol and prompts. */
#include "common/config_parse.h"

#include <string.h>

/* Checks a prompt template: only {transcript}, {language} and (llm2) {llm1} placeholders. */
static int check_template(const char *name, const char *t, bool llm2, struct cofi_err *err)
{
    for (const char *p = strchr(t, '{'); p != NULL; p = strchr(p + 1, '{')) {
        size_t n = strspn(p + 1, "abcdefghijklmnopqrstuvwxyz0123456789_");
        if (n == 0 || p[1 + n] != '}') {
            continue; /* not a placeholder: literal text (a JSON example, say) */
        }
        if ((n == 10 && strncmp(p, "{transcript}", 12) == 0) ||
            (n == 8 && strncmp(p, "{language}", 10) == 0) ||
            (llm2 && n == 4 && strncmp(p, "{llm1}", 6) == 0)) {
            continue;
        }
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"llm.prompts.%s\" has an unknown placeholder "
                            "(use {transcript}, {language}%s)",
                            name, llm2 ? ", {llm1}" : "");
    }
    return 0;
}

/* Reads llm.protocol, llm.model and llm.prompts. */
static int parse_protocol(json_t *llm, struct cofi_config *cfg, struct cofi_err *err)
{
    json_t *proto = json_object_get(llm, "protocol");
    if (proto != NULL) {
        const char *s = json_string_value(proto);
        if (s == NULL || (strcmp(s, "cofi") != 0 && strcmp(s, "openai") != 0)) {
            return cofi_err_set(err, COFI_E_INVALID,
                                "configuration key \"llm.protocol\" must be \"cofi\" or "
                                "\"openai\"");
        }
        cfg->llm_openai = strcmp(s, "openai") == 0;
    }
    int rc = cfg_get_str(llm, "llm.", "model", &cfg->llm_model, err);
    if (rc == 0 && cfg->llm_openai && cfg->llm_model == NULL) {
        rc = cofi_err_set(err, COFI_E_INVALID,
                          "configuration key \"llm.model\" is required with \"llm.protocol\": "
                          "\"openai\"");
    }
    json_t *prompts = json_object_get(llm, "prompts");
    if (rc != 0 || prompts == NULL) {
        return rc;
    }
    static const char *const names[] = {"llm1", "llm2", NULL};
    if (!json_is_object(prompts)) {
        return cofi_err_set(err, COFI_E_INVALID,
                            "configuration key \"llm.prompts\" must be an object");
    }
    rc = cfg_check_keys(prompts, "llm.prompts.", names, err);
    for (int i = 0; rc == 0 && i < 2; i++) {
        rc = cfg_get_str(prompts, "llm.prompts.", names[i], &cfg->llm_prompts[i], err);
        if (rc == 0 && cfg->llm_prompts[i] != NULL) {
            rc = check_template(names[i], cfg->llm_prompts[i], i == 1, err);
        }
    }
    return rc;
}

/* Reads the integer keys of the "llm" object (but the worker's). */
static int parse_llm_limits(json_t *llm, struct cofi_config *cfg, struct cofi_err *err)
{
    int rc = cfg_get_int(llm, "llm.", "tokens_per_minute", 1, 1000000000000LL,
                         &cfg->llm_tokens_per_minute, err);
    if (rc == 0) {
        rc = cfg_get_int32(llm, "llm.", "requests_per_minute", 1, 100000000,
                           &cfg->llm_requests_per_minute, err);
    }
    if (rc == 0) {
        rc = cfg_get_int32(llm, "llm.", "completion_tokens", 0, 10000000,
                           &cfg->llm_completion_tokens, err);
    }
    return rc;
}

int cfg_parse_llm(json_t *root, struct cofi_config *cfg, struct cofi_err *err)
{
    static const char *const known[] = {"url",
                                        "concurrency",
                                        "timeout_ms",
                                        "max_attempts",
                                        "backoff_base_ms",
                                        "backoff_max_ms",
                                        "retry_after_max_ms",
                                        "adaptive",
                                        "tokens_per_minute",
                                        "requests_per_minute",
                                        "completion_tokens",
                                        "protocol",
                                        "model",
                                        "prompts",
                                        NULL};
    json_t *llm = json_object_get(root, "llm");
    if (llm == NULL) {
        return 0;
    }
    if (!json_is_object(llm)) {
        return cofi_err_set(err, COFI_E_INVALID, "configuration key \"llm\" must be an object");
    }
    int rc = cfg_check_keys(llm, "llm.", known, err);
    if (rc == 0) {
        rc = cfg_get_str(llm, "llm.", "url", &cfg->llm_url, err);
    }
    if (rc == 0) {
        rc = cfg_get_int32(llm, "llm.", "concurrency", 1, 10000, &cfg->llm_concurrency, err);
    }
    if (rc == 0) {
        rc = cfg_get_bool(llm, "llm.", "adaptive", &cfg->llm_adaptive, err);
    }
    if (rc == 0) {
        rc = cfg_parse_worker(llm, "llm.", &cfg->llm, err);
    }
    if (rc == 0) {
        rc = parse_llm_limits(llm, cfg, err);
    }
    if (rc == 0) {
        rc = parse_protocol(llm, cfg, err);
    }
    return rc;
}
