/* Failure rules: injected answers for chosen endpoints and calls (POST /admin/rules). */
#include "sim/sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void rule_free(struct sim_rule *r)
{
    for (size_t i = 0; i < r->ncall_ids; i++) {
        free(r->call_ids[i]);
    }
    free(r->call_ids);
    r->call_ids = NULL;
    r->ncall_ids = 0;
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    sim_map_clear(&r->key_counts);
}

static void rules_free(struct sim_rule *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rule_free(&v[i]);
    }
    free(v);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads an optional non-negative integer member; -1 when absent. Returns 0, or -1 with err. */
static int opt_count(const json_t *o, const char *name, int64_t *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, name);
    *out = -1;
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(err, errlen, "%s must be a non-negative integer", name);
        return -1;
    }
    *out = (int64_t)json_integer_value(v);
    return 0;
}

/* A header value we are willing to send: printable ASCII, no CR/LF. */
static bool header_safe(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) {
            return false;
        }
    }
    return true;
}

static int parse_call_ids(const json_t *v, struct sim_rule *r, char *err, size_t errlen)
{
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) > SIM_MAX_RULE_CALLS) {
        snprintf(err, errlen, "call_ids must be an array of at most %d strings",
                 SIM_MAX_RULE_CALLS);
        return -1;
    }
    size_t n = json_array_size(v);
    r->call_ids = calloc(n ? n : 1, sizeof *r->call_ids);
    if (r->call_ids == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(v, i);
        char num[32];
        const char *s = NULL;
        if (json_is_string(c)) {
            s = json_string_value(c);
        } else if (json_is_integer(c)) {
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(c));
            s = num;
        } else {
            snprintf(err, errlen, "call_ids[%zu] must be a string", i);
            return -1;
        }
        r->call_ids[i] = strdup(s);
        if (r->call_ids[i] == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        r->ncall_ids = i + 1;
    }
    qsort(r->call_ids, r->ncall_ids, sizeof *r->call_ids, cmp_str);
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Reads the optional answer body: "body" (text sent verbatim), "body_hex" (bytes as hex) or
 * "body_bytes" (a JSON object of at least that many bytes), at most one of them. */
static int parse_body(const json_t *o, struct sim_rule *r, char *err, size_t errlen)
{
    const json_t *text = json_object_get(o, "body");
    const json_t *hex = json_object_get(o, "body_hex");
    const json_t *bytes = json_object_get(o, "body_bytes");
    if ((text != NULL) + (hex != NULL) + (bytes != NULL) > 1) {
        snprintf(err, errlen, "at most one of body, body_hex and body_bytes");
        return -1;
    }
    if (text != NULL) {
        if (!json_is_string(text)) {
            snprintf(err, errlen, "body must be a string");
            return -1;
        }
        size_t len = json_string_length(text);
        r->body = malloc(len ? len : 1);
        if (r->body == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        memcpy(r->body, json_string_value(text), len);
        r->body_len = len;
    }
    if (hex != NULL) {
        const char *s = json_is_string(hex) ? json_string_value(hex) : NULL;
        size_t len = s != NULL ? strlen(s) : 1;
        if (s == NULL || len % 2 != 0) {
            snprintf(err, errlen, "body_hex must be a string of hex digit pairs");
            return -1;
        }
        r->body = malloc(len / 2 ? len / 2 : 1);
        if (r->body == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < len / 2; i++) {
            int hi = hex_digit(s[2 * i]);
            int lo = hex_digit(s[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                snprintf(err, errlen, "body_hex must be a string of hex digit pairs");
                return -1;
            }
            r->body[i] = (char)(hi * 16 + lo);
        }
        r->body_len = len / 2;
    }
    if (bytes != NULL) {
        if (!json_is_integer(bytes) || json_integer_value(bytes) < 1 ||
            json_integer_value(bytes) > SIM_RULE_BYTES_MAX) {
            snprintf(err, errlen, "body_bytes must be an integer from 1 to %d", SIM_RULE_BYTES_MAX);
            return -1;
        }
        r->body_bytes = (size_t)json_integer_value(bytes);
    }
    return 0;
}

/* A new {"pad":"xx...x"} of max(n, its shortest form) bytes in *len; NULL when out of memory. */
static char *pad_body_new(size_t n, size_t *len)
{
    static const char head[] = "{\"pad\":\"";
    static const char tail[] = "\"}";
    size_t fixed = sizeof head - 1 + sizeof tail - 1;
    size_t total = n > fixed ? n : fixed;
    char *b = malloc(total);
    if (b == NULL) {
        return NULL;
    }
    memcpy(b, head, sizeof head - 1);
    memset(b + sizeof head - 1, 'x', total - fixed);
    memcpy(b + total - (sizeof tail - 1), tail, sizeof tail - 1);
    *len = total;
    return b;
}

static int parse_rule(const json_t *o, enum sim_role role, struct sim_rule *r, char *err,
                      size_t errlen)
{
    static const char *const known[] = {"endpoint", "call_ids", "status",   "retry_after", "times",
                                        "per_key",  "body",     "body_hex", "body_bytes"};
    if (!json_is_object(o)) {
        snprintf(err, errlen, "a rule must be a JSON object");
        return -1;
    }
    const char *name = NULL;
    const json_t *member = NULL;
    json_object_foreach((json_t *)o, name, member)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
            ok = ok || strcmp(name, known[i]) == 0;
        }
        if (!ok) {
            snprintf(err, errlen, "unknown rule member '%.64s'", name);
            return -1;
        }
    }

    const json_t *ep = json_object_get(o, "endpoint");
    r->ep = -1;
    if (ep != NULL && !json_is_string(ep)) {
        snprintf(err, errlen, "endpoint must be a string");
        return -1;
    }
    if (ep != NULL && strcmp(json_string_value(ep), "*") != 0) {
        enum sim_ep e;
        if (sim_ep_parse(json_string_value(ep), &e) != 0 || !sim_ep_in_role(e, role)) {
            snprintf(err, errlen, "endpoint '%.64s' is not served on this port",
                     json_string_value(ep));
            return -1;
        }
        r->ep = (int)e;
    }

    const json_t *status = json_object_get(o, "status");
    if (!json_is_integer(status) || json_integer_value(status) < 200 ||
        json_integer_value(status) >= SIM_STATUS_MAX) {
        snprintf(err, errlen, "status must be an integer from 200 to %d", SIM_STATUS_MAX - 1);
        return -1;
    }
    r->status = (int)json_integer_value(status);

    const json_t *ra = json_object_get(o, "retry_after");
    r->retry_after[0] = '\0';
    if (json_is_integer(ra)) {
        snprintf(r->retry_after, sizeof r->retry_after, "%" JSON_INTEGER_FORMAT,
                 json_integer_value(ra));
    } else if (json_is_string(ra)) {
        const char *s = json_string_value(ra);
        if (strlen(s) >= sizeof r->retry_after || !header_safe(s)) {
            snprintf(err, errlen, "retry_after must be short printable text");
            return -1;
        }
        snprintf(r->retry_after, sizeof r->retry_after, "%s", s);
    } else if (ra != NULL && !json_is_null(ra)) {
        snprintf(err, errlen, "retry_after must be a string or an integer");
        return -1;
    }

    if (opt_count(o, "times", &r->times_left, err, errlen) != 0 ||
        opt_count(o, "per_key", &r->per_key, err, errlen) != 0 ||
        parse_body(o, r, err, errlen) != 0) {
        return -1;
    }
    return parse_call_ids(json_object_get(o, "call_ids"), r, err, errlen);
}

int sim_rules_replace(struct sim_rules *rules, enum sim_role role, const json_t *body, char *err,
                      size_t errlen)
{
    const json_t *list = json_is_object(body) ? json_object_get(body, "rules") : NULL;
    if (!json_is_array(list)) {
        snprintf(err, errlen, "body must be {\"rules\": [...]}");
        return -1;
    }
    size_t n = json_array_size(list);
    if (n > SIM_MAX_RULES) {
        snprintf(err, errlen, "at most %d rules", SIM_MAX_RULES);
        return -1;
    }
    struct sim_rule *v = calloc(n ? n : 1, sizeof *v);
    if (v == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        sim_map_init(&v[i].key_counts);
        char why[200];
        if (parse_rule(json_array_get(list, i), role, &v[i], why, sizeof why) != 0) {
            snprintf(err, errlen, "rules[%zu]: %s", i, why);
            rules_free(v, i + 1);
            return -1;
        }
    }

    pthread_mutex_lock(&rules->mu);
    struct sim_rule *old = rules->rule;
    size_t old_n = rules->n;
    rules->rule = v;
    rules->n = n;
    atomic_store(&rules->active, n);
    pthread_mutex_unlock(&rules->mu);
    rules_free(old, old_n);
    return 0;
}

void sim_rules_clear(struct sim_rules *rules)
{
    pthread_mutex_lock(&rules->mu);
    struct sim_rule *old = rules->rule;
    size_t old_n = rules->n;
    rules->rule = NULL;
    rules->n = 0;
    atomic_store(&rules->active, 0);
    pthread_mutex_unlock(&rules->mu);
    rules_free(old, old_n);
}

/* True when rule r applies to (ep, call_id); does not look at budgets. */
static bool rule_selects(const struct sim_rule *r, enum sim_ep ep, const char *call_id)
{
    if (r->ep >= 0 && r->ep != (int)ep) {
        return false;
    }
    if (r->call_ids == NULL) {
        return true;
    }
    return bsearch(&call_id, r->call_ids, r->ncall_ids, sizeof *r->call_ids, cmp_str) != NULL;
}

bool sim_rules_match(struct sim_rules *rules, enum sim_ep ep, const char *call_id, const char *key,
                     struct sim_injected *out)
{
    if (atomic_load(&rules->active) == 0) {
        return false;
    }
    bool fired = false;
    char *body = NULL;
    size_t body_len = 0;
    size_t pad = 0;
    pthread_mutex_lock(&rules->mu);
    for (size_t i = 0; i < rules->n && !fired; i++) {
        struct sim_rule *r = &rules->rule[i];
        if (r->times_left == 0 || !rule_selects(r, ep, call_id)) {
            continue;
        }
        if (r->per_key >= 0) {
            bool created = false;
            uint64_t *count = sim_map_upsert(&r->key_counts, key, &created);
            if (count == NULL) {
                continue;
            }
            uint64_t before = (*count)++;
            if (before >= (uint64_t)r->per_key) {
                continue;
            }
        }
        if (r->times_left > 0) {
            r->times_left--;
        }
        out->status = r->status;
        snprintf(out->retry_after, sizeof out->retry_after, "%s", r->retry_after);
        if (r->body != NULL) {
            body = malloc(r->body_len ? r->body_len : 1);
            if (body != NULL) {
                memcpy(body, r->body, r->body_len);
                body_len = r->body_len;
            }
        }
        pad = r->body_bytes;
        fired = true;
    }
    pthread_mutex_unlock(&rules->mu);
    if (fired && pad > 0) {
        body = pad_body_new(pad, &body_len); /* tens of MiB: built outside the lock */
    }
    if (fired) {
        out->body = body;
        out->body_len = body_len;
    }
    return fired;
}
