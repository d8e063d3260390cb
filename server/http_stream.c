/* Streamed answers: a handler's struct http_stream sent as an MHD response, each piece made on a
 * handler thread while the connection is suspended, so no I/O thread waits for the database. */
#include "server/http_internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "server/handler_pool.h"

/* The block MHD asks the callback to fill at most. */
#define STREAM_BLOCK_BYTES (64u * 1024u)
/* The largest piece a source may make (one call's results must fit). */
#define STREAM_PIECE_MAX ((size_t)256 << 20)

/* One streamed answer. Between a piece's request and its making the connection is suspended,
 * so the I/O thread (the callback) and a handler thread (the job) never touch it at once. */
struct stream {
    struct http_stream src; /* owned */
    struct buf piece;       /* the piece being sent */
    size_t sent;            /* bytes of piece already handed to MHD */
    int rc;                 /* the last src.next: 1 more follows, 0 it was the last, < 0 failed */
    struct MHD_Connection *conn;
    struct handler_pool *pool; /* borrowed; NULL: pieces are made on the I/O thread */
};

/* Makes the next piece. */
static void produce(struct stream *st)
{
    buf_free(&st->piece);
    st->sent = 0;
    struct cofi_err err;
    cofi_err_clear(&err);
    st->rc = st->src.next(st->src.ctx, &st->piece, &err);
    if (st->rc < 0) {
        log_warn("http: a streamed answer is cut short: %s", err.msg);
    }
}

/* A handler thread's job: make the piece, then give the connection back to MHD. */
static void produce_job(void *arg)
{
    struct stream *st = arg;
    struct MHD_Connection *conn = st->conn;
    produce(st);
    /* From here on st is the I/O thread's again (it may even be freed). */
    MHD_resume_connection(conn);
}

/* MHD's content reader: hands out the piece; when it is all sent, has the next one made on a
 * handler thread (the connection suspended meanwhile: 0 bytes now, called again once
 * resumed) or, when no handler thread takes it, here. */
static ssize_t read_piece(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct stream *st = cls;
    if (st->sent == st->piece.len) {
        if (st->rc == 0) {
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (st->rc < 0) {
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        MHD_suspend_connection(st->conn);
        if (st->pool != NULL && handler_pool_submit(st->pool, produce_job, st) == 0) {
            return 0;
        }
        MHD_resume_connection(st->conn);
        produce(st);
        if (st->sent == st->piece.len) {
            return st->rc < 0 ? MHD_CONTENT_READER_END_WITH_ERROR
                              : MHD_CONTENT_READER_END_OF_STREAM;
        }
    }
    size_t n = st->piece.len - st->sent;
    if (n > max) {
        n = max;
    }
    memcpy(out, st->piece.data + st->sent, n);
    st->sent += n;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    struct stream *st = cls;
    if (st->src.free_ctx != NULL) {
        st->src.free_ctx(st->src.ctx);
    }
    buf_free(&st->piece);
    free(st);
}

struct MHD_Response *http__stream_response(struct MHD_Connection *conn, struct handler_pool *pool,
                                           struct http_stream *src, const char *content_type)
{
    struct stream *st = calloc(1, sizeof *st);
    if (st == NULL) {
        if (src->free_ctx != NULL) {
            src->free_ctx(src->ctx);
        }
        memset(src, 0, sizeof *src);
        return NULL;
    }
    st->src = *src;
    memset(src, 0, sizeof *src);
    buf_init(&st->piece, STREAM_PIECE_MAX);
    st->conn = conn;
    st->pool = pool;
    /* The first piece is made now, on the thread that ran the handler. */
    produce(st);
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, STREAM_BLOCK_BYTES, read_piece, st, stream_free);
    if (resp == NULL) {
        stream_free(st);
        return NULL;
    }
    if (content_type != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    }
    http__final_headers(resp);
    return resp;
}
