/* Answering one request of cofid's HTTP server: problems, replies and cached answers, queued at
 * once or kept for an I/O thread when the request was handled on a handler thread. */
#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "server/http.h"
#include "server/http_internal.h"
#include "server/problem.h"
#include "server/request_id.h"
#include "server/status_cache.h"

/* Answers resp (stolen: the caller's reference is dropped, MHD holds its own until the answer
 * is sent; never a response shared with other requests: the request's X-Request-Id is added
 * to it) with a body of bytes bytes: queued at once, or, for a request handled on a handler
 * thread, kept until an I/O thread queues it. Returns MHD_NO when resp is NULL. */
enum MHD_Result http__queue(struct http_request *rq, int status, struct MHD_Response *resp,
                            size_t bytes)
{
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, REQUEST_ID_HEADER, rq->rid);
    rq->bytes = bytes;
    if (rq->deferred) {
        rq->ready_resp = resp;
        rq->ready_status = status;
        return MHD_YES;
    }
    enum MHD_Result ret = MHD_queue_response(rq->conn, (unsigned int)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Answers with the problem for err; ext (stolen) adds members; allow adds an Allow header. */
enum MHD_Result http__answer_problem_ex(struct http_request *rq, const struct cofi_err *err,
                                        json_t *ext, const char *allow, bool close)
{
    int status = problem_http_status(err->code);
    json_t *p = problem_new(err, ext);
    char *text = p != NULL ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    struct MHD_Response *resp;
    size_t bytes = text != NULL ? strlen(text) : 0;
    if (text != NULL) {
        resp = MHD_create_response_from_buffer(bytes, text, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL) {
            free(text);
        }
    } else {
        static const char oom[] = "{\"type\":\"https://cofi.dev/problems/internal\","
                                  "\"title\":\"Internal Server Error\",\"status\":500}";
        status = 500;
        bytes = sizeof oom - 1;
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    }
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, PROBLEM_CONTENT_TYPE);
    if (status == 401) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    }
    if (allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (status == 503) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, PROBLEM_RETRY_AFTER_S);
    }
    if (close) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    http__final_headers(resp);
    return http__queue(rq, status, resp, bytes);
}

enum MHD_Result http__answer_problem(struct http_request *rq, const struct cofi_err *err,
                                     json_t *ext, const char *allow)
{
    return http__answer_problem_ex(rq, err, ext, allow, /* close= */ false);
}

/* Answers a JSON success body: text (length len, stolen) with location as the Location
 * header when not empty. */
static enum MHD_Result answer_json(struct http_request *rq, int status, char *text, size_t len,
                                   const char *location)
{
    return http__queue(rq, status, http__json_response(text, len, location), len);
}

static enum MHD_Result answer_out_of_memory(struct http_request *rq)
{
    struct cofi_err err;
    cofi_err_set(&err, COFI_E_NOMEM, "out of memory while encoding a reply");
    return http__answer_problem(rq, &err, NULL, NULL);
}

enum MHD_Result http__answer_reply(struct http_request *rq, struct http_reply *rep)
{
    int status = rep->status != 0 ? rep->status : 200;
    if (rep->stream.next != NULL) {
        struct MHD_Response *resp =
            http__stream_response(rq->conn, rq->srv->handlers, &rep->stream, rep->content_type);
        return resp != NULL ? http__queue(rq, status, resp, 0) : answer_out_of_memory(rq);
    }
    if (rep->raw != NULL || rep->text != NULL) {
        /* A body served as it is: static (raw), or the reply's own text, which MHD frees. */
        bool own = rep->raw == NULL;
        size_t len = own ? rep->text_len : rep->raw_len;
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(len, own ? rep->text : (void *)rep->raw,
                                            own ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            return MHD_NO;
        }
        if (own) {
            rep->text = NULL;
        }
        const char *type = rep->content_type != NULL ? rep->content_type : HTTP_JSON_TYPE;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        if (strcmp(type, HTTP_HTML_TYPE) == 0) {
            http__page_headers(resp);
        }
        http__final_headers(resp);
        return http__queue(rq, status, resp, len);
    }
    if (status == 204) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp == NULL) {
            return MHD_NO;
        }
        http__final_headers(resp);
        return http__queue(rq, status, resp, 0);
    }
    char *text = http__reply_text(rep);
    if (text == NULL) {
        return answer_out_of_memory(rq);
    }
    return answer_json(rq, status, text, strlen(text), rep->location);
}

/* Answers a successful reply of a cached route and gives the ticket back: a 200 is stored
 * in the cache, anything else is not. What is stored is the JSON text of the body, which
 * every hit serves in a response of its own (http__cached_response: its own X-Request-Id,
 * the body shared, not copied). Its size in the cache is the body's. */
enum MHD_Result http__answer_and_store(struct status_cache *cache, struct http_request *rq,
                                       const char *key, size_t key_len,
                                       const struct status_cache_ticket *ticket,
                                       struct http_reply *rep)
{
    bool storable = (rep->status == 0 || rep->status == 200) && rep->raw == NULL &&
                    rep->text == NULL && rep->location[0] == '\0';
    char *text = storable ? http__reply_text(rep) : NULL;
    if (text == NULL) {
        status_cache_drop(cache, key, key_len, ticket);
        return http__answer_reply(rq, rep);
    }
    size_t len = strlen(text);
    struct status_cache_answer *answer = status_cache_answer_new(text, len, free);
    if (answer == NULL) {
        status_cache_drop(cache, key, key_len, ticket);
        return answer_json(rq, 200, text, len, NULL);
    }
    status_cache_put(cache, key, key_len, ticket, answer);
    /* The response takes our reference to the answer. */
    return http__queue(rq, 200, http__cached_response(answer), len);
}
