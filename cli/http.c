/* The HTTP client of `cofi`, over one libcurl easy handle. */
#include "cli/http.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"

#define REPLY_LIMIT        ((size_t)64 << 20)
#define ERROR_LIMIT        ((size_t)64 << 10)
#define REQUEST_TIMEOUT_MS 120000L

struct cli_http {
    CURL *curl;
    char *base;
    char *auth; /* "Authorization: Bearer ..." or NULL */
};

/* Where a reply's body goes while it arrives. */
struct sink {
    CURL *curl;
    struct buf kept; /* the body, when kept */
    FILE *to;        /* stream 2xx bodies here (NULL: keep every body) */
    int streaming;   /* -1 undecided, 0 keep, 1 stream */
    bool failed;
};

struct cli_http *cli_http_new(const char *base_url, const char *token)
{
    struct cli_http *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return NULL;
    }
    size_t n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/') {
        n--;
    }
    h->base = strndup(base_url, n);
    h->curl = curl_easy_init();
    if (token != NULL) {
        size_t cap = strlen(token) + 32;
        h->auth = malloc(cap);
        if (h->auth != NULL) {
            snprintf(h->auth, cap, "Authorization: Bearer %s", token);
        }
    }
    if (h->base == NULL || h->curl == NULL || (token != NULL && h->auth == NULL)) {
        cli_http_free(h);
        return NULL;
    }
    return h;
}

void cli_http_free(struct cli_http *h)
{
    if (h == NULL) {
        return;
    }
    if (h->curl != NULL) {
        curl_easy_cleanup(h->curl);
    }
    free(h->base);
    free(h->auth);
    free(h);
}

void cli_reply_free(struct cli_reply *r)
{
    if (r == NULL) {
        return;
    }
    free(r->body);
    memset(r, 0, sizeof *r);
}

static size_t on_body(char *p, size_t size, size_t n, void *userdata)
{
    struct sink *s = userdata;
    size_t len = size * n;
    if (s->streaming < 0) {
        long status = 0;
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
        s->streaming = (s->to != NULL && status >= 200 && status < 300) ? 1 : 0;
    }
    if (s->streaming == 1) {
        return fwrite(p, 1, len, s->to);
    }
    if (buf_append(&s->kept, p, len) != 0) {
        s->failed = true;
        return 0;
    }
    return len;
}

/* Copies the reply's Content-Type (without parameters) into out. */
static void content_type(CURL *curl, struct cli_reply *out)
{
    char *ct = NULL;
    out->content_type[0] = '\0';
    if (curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct != NULL) {
        size_t n = strcspn(ct, "; ");
        if (n >= sizeof out->content_type) {
            n = sizeof out->content_type - 1;
        }
        memcpy(out->content_type, ct, n);
        out->content_type[n] = '\0';
    }
}

/* Sets up the handle for one request; headers are appended to *hdrs (the caller frees). */
static int prepare(struct cli_http *h, const char *method, const char *path, const char *body,
                   const char *accept, const char *extra, struct curl_slist **hdrs, struct sink *s)
{
    size_t cap = strlen(h->base) + strlen(path) + 1;
    char *url = malloc(cap);
    if (url == NULL) {
        return -1;
    }
    snprintf(url, cap, "%s%s", h->base, path);
    CURL *c = h->curl;
    curl_easy_reset(c);
    CURLcode rc = curl_easy_setopt(c, CURLOPT_URL, url); /* libcurl copies the string */
    free(url);
    if (rc != CURLE_OK) {
        return -1;
    }
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "cofi-cli/0.1.0");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    }
    *hdrs = curl_slist_append(*hdrs, accept);
    if (h->auth != NULL) {
        *hdrs = curl_slist_append(*hdrs, h->auth);
    }
    if (extra != NULL) {
        *hdrs = curl_slist_append(*hdrs, extra);
    }
    if (body != NULL) {
        *hdrs = curl_slist_append(*hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    if (*hdrs == NULL) {
        return -1;
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
    return 0;
}

static int perform(struct cli_http *h, const char *method, const char *path, const char *body,
                   const char *accept, const char *extra, FILE *to, struct cli_reply *out,
                   char *err, size_t cap)
{
    /* A reply kept in memory comes within REQUEST_TIMEOUT_MS; a stream may take its time. */
    long timeout_ms = to != NULL ? 0L : REQUEST_TIMEOUT_MS;
    memset(out, 0, sizeof *out);
    struct sink s = {.curl = h->curl, .to = to, .streaming = -1};
    buf_init(&s.kept, to != NULL ? ERROR_LIMIT : REPLY_LIMIT);
    struct curl_slist *hdrs = NULL;
    int rc = -1;
    if (prepare(h, method, path, body, accept, extra, &hdrs, &s) != 0) {
        snprintf(err, cap, "out of memory");
        goto out;
    }
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    CURLcode cc = curl_easy_perform(h->curl);
    if (cc != CURLE_OK) {
        snprintf(err, cap, "%s %s%s: %s", method, h->base, path,
                 s.failed ? "the reply is too big" : curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &out->status);
    content_type(h->curl, out);
    out->len = s.kept.len;
    out->body = buf_steal(&s.kept);
    rc = 0;
out:
    curl_slist_free_all(hdrs);
    buf_free(&s.kept);
    return rc;
}

int cli_http_request(struct cli_http *h, const char *method, const char *path,
                     const char *json_body, const char *extra_header, struct cli_reply *out,
                     char *err, size_t cap)
{
    return perform(h, method, path, json_body, "Accept: application/json", extra_header, NULL, out,
                   err, cap);
}

int cli_http_stream(struct cli_http *h, const char *path, const char *accept, FILE *to,
                    struct cli_reply *out, char *err, size_t cap)
{
    char line[160];
    snprintf(line, sizeof line, "Accept: %s", accept);
    return perform(h, "GET", path, NULL, line, NULL, to, out, err, cap);
}
