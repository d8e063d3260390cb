/* The text of a flush: the JSON that work_flush and work_release take, built from records. */
#ifndef COFI_FLUSH_TEXT_H
#define COFI_FLUSH_TEXT_H

#include <stddef.h>

#include "common/config.h"
#include "pipeline/record.h"

/* The three parameters of work_flush, new strings owned by the caller (flush_text_free). */
struct flush_text {
    char *calls;  /* [{"id","token","stage","status",...}]: the last position of every call */
    char *ids;    /* "{1,2}": those calls' ids */
    char *stages; /* [{"call_id","stage","state",...}]: the last row of every (call, stage) */
};

/* Builds the text of n records sorted by call, then queuing order (as record_queue_take hands
 * them): of several records of one call the last gives its position, of several rows of one
 * (call, stage) the last wins. Results are copied as the text they are. Returns 0, or -1 when
 * memory runs out (then *out holds nothing). */
int flush_text_build(const struct cofi_config *cfg, const struct record *recs, size_t n,
                     struct flush_text *out);

/* Frees what t holds. Accepts an empty one. */
void flush_text_free(struct flush_text *t);

/* The claims of n records sorted by call, as work_release takes them: [{"id","token"}], one per
 * call. Returns a new string, or NULL when memory runs out. */
char *flush_text_claims(const struct record *recs, size_t n);

#endif
