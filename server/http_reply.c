/* Building cofid's HTTP answers: JSON success bodies and the headers every answer ends with. */
#include "server/http_internal.h"

#include <stdlib.h>
#include <string.h>

/* Adds the header every answer ends with, after the builder's own: nothing we answer may be
 * kept by a client or a proxy. */
void http__final_headers(struct MHD_Response *resp)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
}

/* A finished response (a new reference) of a JSON success body: text (length len, stolen:
 * freed with the response) with location as the Location header when not empty. Returns
 * NULL when out of memory (text is freed). */
struct MHD_Response *http__json_response(char *text, size_t len, const char *location)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, HTTP_JSON_TYPE);
    if (location != NULL && location[0] != '\0') {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
    }
    http__final_headers(resp);
    return resp;
}

/* The JSON text of a reply's body (not of a raw one): a new string the caller frees, or
 * NULL when out of memory. */
char *http__reply_text(const struct http_reply *rep)
{
    /* 15 significant digits print 4.1 as "4.1", not "4.0999999999999996". */
    return json_dumps(rep->body != NULL ? rep->body : json_null(),
                      JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
}

/* MHD's free callback of a cached response: lets go of its reference to the answer. */
static void release_answer(void *cls)
{
    status_cache_answer_release(cls);
}

struct MHD_Response *http__cached_response(struct status_cache_answer *answer)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(
        status_cache_answer_size(answer), status_cache_answer_value(answer), release_answer,
        answer);
    if (resp == NULL) {
        status_cache_answer_release(answer);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, HTTP_JSON_TYPE);
    http__final_headers(resp);
    return resp;
}
