/* Worker HTTP exchanges: request headers, capped reply buffers, outcome classification. */
#include "pipeline/worker_http.h"

#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/stages.h"
#include "common/utf8.h"

size_t exchange_on_body(char *p, size_t size, size_t n, void *arg)
{
    struct exchange *x = arg;
    size_t len = size * n;
    int rc = buf_append(&x->reply, p, len);
    if (rc == -1) {
        x->reply_too_large = true;
        return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
    }
    if (rc != 0) {
        x->reply_no_memory = true;
        return 0;
    }
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct exchange *x = arg;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
        size_t vlen = len - (sizeof name - 1);
        if (vlen >= sizeof x->retry_after) {
            vlen = sizeof x->retry_after - 1;
        }
        memcpy(x->retry_after, p + sizeof name - 1, vlen);
        x->retry_after[vlen] = '\0';
        x->retry_after[strcspn(x->retry_after, "\r\n")] = '\0';
    }
    return len;
}

void exchange_reset(struct exchange *x)
{
    buf_free(&x->reply);
    buf_init(&x->reply, WORKER_REPLY_LIMIT);
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    free(x->body);
    x->body = NULL;
    x->reply_too_large = false;
    x->reply_no_memory = false;
    x->retry_after[0] = '\0';
    x->errbuf[0] = '\0';
    x->start_us = 0;
}

int exchange_prepare(CURL *easy, struct exchange *x, const char *url, const struct job *j,
                     const char *request_id, char *json_body, const char *bearer, int timeout_ms)
{
    exchange_reset(x);
    x->body = json_body;
    char line[320];
    struct curl_slist *h = NULL;
    snprintf(line, sizeof line, "Idempotency-Key: %s:%s", j->call_id_str, stage_name(j->stage));
    h = curl_slist_append(h, line);
    snprintf(line, sizeof line, "X-Request-Id: %s", request_id);
    h = h != NULL ? curl_slist_append(h, line) : NULL;
    h = h != NULL ? curl_slist_append(h, "Expect:") : NULL;
    if (h != NULL && json_body != NULL) {
        h = curl_slist_append(h, "Content-Type: application/json");
    }
    if (h != NULL && bearer != NULL) {
        char auth[1100];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        h = curl_slist_append(h, auth);
    }
    if (h == NULL) {
        return -1;
    }
    x->headers = h;
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(timeout_ms < 10000 ? timeout_ms : 10000));
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, exchange_on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (json_body != NULL) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, json_body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)strlen(json_body));
    }
    x->start_us = clock_mono_us();
    return 0;
}

void exchange_outcome(CURL *easy, CURLcode rc, struct exchange *x, struct job_outcome *o)
{
    memset(o, 0, sizeof *o);
    o->retry_after_ms = -1;
    o->usage_tokens = -1;
    o->latency_us = clock_mono_us() - x->start_us;
    if (x->reply_too_large) {
        o->kind = OUTCOME_PERMANENT;
        utf8_snprintf(o->error, sizeof o->error, "reply too large (over %u bytes)",
                      WORKER_REPLY_LIMIT);
        return;
    }
    if (rc != CURLE_OK) {
        o->kind = OUTCOME_RETRY;
        const char *why = x->errbuf[0] != '\0' ? x->errbuf : curl_easy_strerror(rc);
        if (x->reply_no_memory) {
            why = "out of memory for the reply";
        }
        utf8_sanitize(o->error, sizeof o->error, why, strlen(why));
        return;
    }
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    o->http_status = (int)status;
    json_t *body = NULL;
    if (x->reply.len > 0) {
        body = json_loadb(x->reply.data, x->reply.len, 0, NULL);
    }
    o->kind = retry_classify(false, status, json_is_object(body));
    if (o->kind == OUTCOME_OK) {
        /* The text jansson accepted is what gets stored: no second serialisation. */
        o->result = body;
        o->result_text = buf_steal(&x->reply);
        return;
    }
    if (x->retry_after[0] != '\0') {
        int64_t ms;
        if (retry_parse_after(x->retry_after, clock_wall_ms(), &ms) == 0) {
            o->retry_after_ms = ms;
        }
    }
    if (status >= 200 && status < 300) {
        snprintf(o->error, sizeof o->error, "HTTP %ld with a reply that is not a JSON object",
                 status);
    } else {
        /* Keep a short excerpt of the worker's own words, as text fit for last_error. */
        char excerpt[160] = "";
        size_t elen = 0;
        if (x->reply.data != NULL) {
            elen = utf8_sanitize(excerpt, sizeof excerpt, x->reply.data, x->reply.len);
        }
        utf8_snprintf(o->error, sizeof o->error, "HTTP %ld%s%s", status, elen > 0 ? ": " : "",
                      excerpt);
    }
    json_decref(body);
}
