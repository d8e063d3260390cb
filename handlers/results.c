/* GET /batches/{id}/results: every call of a batch with every stage's result, streamed a page
 * at a time as NDJSON or CSV. */
#include "handlers/handlers.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "db/db.h"
#include "db/results_db.h"

/* Calls read per statement: the memory of a stream is one page of rows plus one piece. */
#define RESULTS_PAGE_CALLS 200
/* A piece handed to the HTTP layer ends after the call that takes it past this size. */
#define RESULTS_PIECE_BYTES (256u * 1024u)

#define NDJSON_TYPE "application/x-ndjson"
#define CSV_TYPE    "text/csv; charset=utf-8; header=present"

/* ---- content negotiation ---- */

/* The weight of a media range's parameters (";q=0.5;x=y", len bytes): 1 without q, -1 when
 * q is malformed. */
static double range_weight(const char *params, size_t len)
{
    double q = 1.0;
    size_t i = 0;
    while (i < len) {
        size_t n = strcspn(params + i, ";");
        if (n > len - i) {
            n = len - i;
        }
        const char *p = params + i;
        size_t lead = strspn(p, " \t");
        if (lead + 2 <= n && (p[lead] == 'q' || p[lead] == 'Q') && p[lead + 1] == '=') {
            char num[8] = {0};
            size_t digits = n - lead - 2;
            if (digits == 0 || digits >= sizeof num) {
                return -1.0;
            }
            memcpy(num, p + lead + 2, digits);
            char *stop = NULL;
            q = strtod(num, &stop);
            if (stop == num || q < 0.0 || q > 1.0) {
                return -1.0;
            }
        }
        i += n + 1;
    }
    return q;
}

/* How specifically range (type/subtype, len bytes) matches mime ("text/csv"): 3 exactly, 2
 * as "text/x", 1 as "x/x", 0 not at all. */
static int range_match(const char *range, size_t len, const char *mime)
{
    size_t mlen = strlen(mime);
    if (len == mlen && strncasecmp(range, mime, len) == 0) {
        return 3;
    }
    const char *slash = strchr(mime, '/');
    size_t tlen = (size_t)(slash - mime) + 1;
    if (len == tlen + 1 && strncasecmp(range, mime, tlen) == 0 && range[tlen] == '*') {
        return 2;
    }
    return len == 3 && strncmp(range, "*/*", 3) == 0 ? 1 : 0;
}

/* The weight accept gives mime: that of its most specific matching range, 0 without one. */
static double accept_weight(const char *accept, const char *mime)
{
    int best = 0;
    double q = 0.0;
    const char *p = accept;
    while (*p != '\0') {
        size_t item = strcspn(p, ",");
        const char *start = p;
        while (start < p + item && (*start == ' ' || *start == '\t')) {
            start++;
        }
        size_t type_len = strcspn(start, ";,");
        while (type_len > 0 && isspace((unsigned char)start[type_len - 1])) {
            type_len--;
        }
        size_t params_len = (size_t)(p + item - start) - strcspn(start, ";,");
        int m = range_match(start, type_len, mime);
        double w = range_weight(start + strcspn(start, ";,"), params_len);
        if (m > best && w >= 0.0) {
            best = m;
            q = w;
        }
        p += item;
        if (*p == ',') {
            p++;
        }
    }
    return q;
}

enum results_format results_pick_format(const char *accept)
{
    if (accept == NULL || accept[strspn(accept, " \t")] == '\0') {
        return RESULTS_NDJSON;
    }
    double ndjson = accept_weight(accept, "application/x-ndjson");
    double csv = accept_weight(accept, "text/csv");
    if (ndjson <= 0.0 && csv <= 0.0) {
        return RESULTS_NONE;
    }
    return csv > ndjson ? RESULTS_CSV : RESULTS_NDJSON;
}

/* ---- one call as text ---- */

int results_csv_field(struct buf *out, const char *s)
{
    if (s == NULL) {
        return 0;
    }
    if (strpbrk(s, ",\"\r\n") == NULL) {
        return buf_append(out, s, strlen(s));
    }
    int rc = buf_append(out, "\"", 1);
    for (const char *p = s; rc == 0 && *p != '\0'; p++) {
        size_t run = strcspn(p, "\"");
        rc = buf_append(out, p, run);
        p += run;
        if (rc == 0 && *p == '"') {
            rc = buf_append(out, "\"\"", 2);
        }
        if (*p == '\0') {
            break;
        }
    }
    return rc == 0 ? buf_append(out, "\"", 1) : rc;
}

/* A stage's result as a JSON value (a new reference): its text parsed (integers past 64 bits
 * as reals), JSON null for none, NULL when out of memory. Written back with 15 significant
 * digits, as every answer of the API (server/http_reply.c). */
static json_t *result_value(const char *text)
{
    if (text == NULL) {
        return json_null();
    }
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    if (v == NULL) {
        v = json_loads(text, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
    }
    return v != NULL ? v : json_string(text);
}

static json_t *string_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* The NDJSON object of a call (a new reference), or NULL when out of memory. */
static json_t *call_json(int64_t batch_id, const struct results_call *c)
{
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, c->id);
    json_t *stages = json_array();
    for (int s = 0; s < STAGE_COUNT && stages != NULL; s++) {
        const struct results_stage *st = &c->stages[s];
        json_t *o = json_pack("{s:s, s:s, s:I, s:o, s:o}", "name", stage_name(s), "state",
                              st->state, "attempts", (json_int_t)st->attempts, "last_error",
                              string_or_null(st->last_error), "result", result_value(st->result));
        if (json_array_append_new(stages, o) != 0) {
            json_decref(stages);
            stages = NULL;
        }
    }
    const char *state = call_status_name(c->status);
    return json_pack("{s:s, s:I, s:I, s:s, s:s, s:o, s:o}", "id", id, "batch_id",
                     (json_int_t)batch_id, "seq", (json_int_t)c->seq, "file", c->file, "state",
                     state != NULL ? state : "pending", "node", string_or_null(c->node), "stages",
                     stages);
}

static int append_ndjson(struct buf *out, int64_t batch_id, const struct results_call *c)
{
    json_t *o = call_json(batch_id, c);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(o);
    int rc = text != NULL ? buf_append(out, text, strlen(text)) : -2;
    free(text);
    return rc == 0 ? buf_append(out, "\n", 1) : rc;
}

static int append_csv_header(struct buf *out)
{
    int rc = buf_printf(out, "id,file,state,node");
    for (int s = 0; s < STAGE_COUNT && rc == 0; s++) {
        const char *n = stage_name(s);
        rc = buf_printf(out, ",%s_state,%s_error,%s_result", n, n, n);
    }
    return rc == 0 ? buf_append(out, "\r\n", 2) : rc;
}

/* A stage's result as compact JSON text (a new string), "" for none; NULL when out of memory. */
static char *result_text(const char *text)
{
    if (text == NULL) {
        return strdup("");
    }
    json_t *v = result_value(text);
    char *t =
        v != NULL ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(v);
    return t;
}

static int append_csv(struct buf *out, const struct results_call *c)
{
    const char *state = call_status_name(c->status);
    int rc = buf_printf(out, "%" PRId64 ",", c->id);
    rc = rc == 0 ? results_csv_field(out, c->file) : rc;
    rc = rc == 0 ? buf_printf(out, ",%s,", state != NULL ? state : "pending") : rc;
    rc = rc == 0 ? results_csv_field(out, c->node) : rc;
    for (int s = 0; s < STAGE_COUNT && rc == 0; s++) {
        const struct results_stage *st = &c->stages[s];
        char *result = result_text(st->result);
        rc = result != NULL ? buf_printf(out, ",%s,", st->state) : -2;
        rc = rc == 0 ? results_csv_field(out, st->last_error) : rc;
        rc = rc == 0 ? buf_append(out, ",", 1) : rc;
        rc = rc == 0 ? results_csv_field(out, result) : rc;
        free(result);
    }
    return rc == 0 ? buf_append(out, "\r\n", 2) : rc;
}

/* ---- the stream ---- */

struct results_stream {
    const struct cofi_app *app; /* borrowed: outlives the HTTP server */
    int64_t batch_id;
    enum results_format format;
    struct results_page page; /* owned: the page being written */
    size_t written;           /* calls of page already written */
    bool header_done;         /* the CSV header line is written */
};

static void stream_free(void *ctx)
{
    struct results_stream *st = ctx;
    if (st != NULL) {
        results_page_free(&st->page);
        free(st);
    }
}

/* Reads the page after st->page, with a pool connection held for that one statement. */
static int fetch_next_page(struct results_stream *st, struct cofi_err *err)
{
    int64_t from = st->page.next_seq;
    results_page_free(&st->page);
    st->written = 0;
    PGconn *conn = req_db_acquire(st->app, err);
    if (conn == NULL) {
        return err->code;
    }
    int rc = results_db_page(conn, st->batch_id, from, RESULTS_PAGE_CALLS, &st->page, err);
    db_release(st->app->db, conn);
    return rc;
}

/* struct http_stream's next: the header line (CSV), then calls until the piece is large
 * enough or the page ends; the next page is read when this one is all written. */
static int stream_next(void *ctx, struct buf *out, struct cofi_err *err)
{
    struct results_stream *st = ctx;
    if (st->written == st->page.count && st->page.more) {
        int rc = fetch_next_page(st, err);
        if (rc != 0) {
            return rc;
        }
    }
    int rc = 0;
    if (st->format == RESULTS_CSV && !st->header_done) {
        rc = append_csv_header(out);
        st->header_done = true;
    }
    while (rc == 0 && st->written < st->page.count && out->len < RESULTS_PIECE_BYTES) {
        const struct results_call *c = &st->page.calls[st->written++];
        rc = st->format == RESULTS_CSV ? append_csv(out, c) : append_ndjson(out, st->batch_id, c);
    }
    if (rc != 0) {
        return cofi_err_set(err, COFI_E_NOMEM,
                            "out of memory writing the results of batch %" PRId64, st->batch_id);
    }
    /* More follows only after a call was written now, so a piece that says so is not empty. */
    return st->written < st->page.count || st->page.more ? 1 : 0;
}

int handle_batch_results(const struct cofi_app *app, const struct http_req *req,
                         struct http_reply *rep, struct cofi_err *err)
{
    int64_t batch_id;
    int rc = req_batch_id(req, &batch_id, err);
    if (rc != 0) {
        return rc;
    }
    enum results_format format = results_pick_format(req->accept);
    if (format == RESULTS_NONE) {
        return cofi_err_set(err, COFI_E_NOT_ACCEPTABLE,
                            "the results come as application/x-ndjson or text/csv");
    }
    struct results_stream *st = calloc(1, sizeof *st);
    if (st == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    st->app = app;
    st->batch_id = batch_id;
    st->format = format;
    /* The first page is read here, so that an unknown batch is a 404, not an empty 200. */
    PGconn *conn = req_db_acquire(app, err);
    rc = conn != NULL ? results_db_page(conn, batch_id, 0, RESULTS_PAGE_CALLS, &st->page, err)
                      : err->code;
    db_release(app->db, conn);
    if (rc != 0) {
        stream_free(st);
        return rc;
    }
    rep->status = 200;
    rep->content_type = format == RESULTS_CSV ? CSV_TYPE : NDJSON_TYPE;
    rep->stream = (struct http_stream){stream_next, stream_free, st};
    return 0;
}
