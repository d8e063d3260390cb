/* One HTTP exchange with a worker (mediator or NLP API): headers, capped reply, outcome. */
#ifndef COFI_WORKER_HTTP_H
#define COFI_WORKER_HTTP_H

#include <curl/curl.h>
#include <stdbool.h>

#include "common/buf.h"
#include "pipeline/lane.h"

/* The largest worker reply cofi accepts. */
#define WORKER_REPLY_LIMIT (16u << 20)

/* State of one exchange; lives as long as the transfer. */
struct exchange {
    struct buf reply;     /* the body received, capped at WORKER_REPLY_LIMIT */
    bool reply_too_large; /* the reply passed WORKER_REPLY_LIMIT (the transfer was ended) */
    bool reply_no_memory; /* no memory to keep the reply (the transfer was ended) */
    char retry_after[64]; /* the Retry-After header's value, or "" */
    char errbuf[CURL_ERROR_SIZE];
    struct curl_slist *headers; /* owned */
    char *body;                 /* owned request body, or NULL */
    int64_t start_us;
};

/* Resets x for a new exchange (frees what it held, clears the reply flags). Can't fail. */
void exchange_reset(struct exchange *x);

/* Prepares easy for a POST to url of the given stage of call j (Idempotency-Key, X-Request-Id,
 * plus Authorization when bearer is not NULL). With json_body not NULL the body is sent
 * as JSON (x takes ownership of it); otherwise the caller attaches a mime body. Returns 0
 * or -1 (out of memory). */
int exchange_prepare(CURL *easy, struct exchange *x, const char *url, const struct job *j,
                     const char *request_id, char *json_body, const char *bearer, int timeout_ms);

/* The exchange's CURLOPT_WRITEFUNCTION (arg is the struct exchange): appends the chunk to
 * x->reply and returns its size; when the chunk would take the reply past
 * WORKER_REPLY_LIMIT it sets x->reply_too_large, when memory runs out x->reply_no_memory,
 * keeps nothing of the chunk and returns 0 (curl then ends the transfer with
 * CURLE_WRITE_ERROR). Set by exchange_prepare; declared here for the tests. */
size_t exchange_on_body(char *p, size_t size, size_t n, void *arg);

/* Turns a finished transfer into an outcome: classification (retry_classify), the parsed result (a
 * new reference in o->result on success, and the reply's text, taken from x, in o->result_text),
 * Retry-After. A reply over WORKER_REPLY_LIMIT is OUTCOME_PERMANENT ("reply too large (over
 * 16777216 bytes)"), whatever the status. o->error is always valid UTF-8 without control
 * characters: the worker's words (an excerpt of at most 159 bytes of its reply) and curl's go
 * through utf8_sanitize. Can't fail. */
void exchange_outcome(CURL *easy, CURLcode rc, struct exchange *x, struct job_outcome *o);

#endif
