/* Builds the JSON text of a flush from records (no jansson tree: the results are text). */
#include "pipeline/flush_text.h"

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/stages.h"

/* Appends a string literal. */
#define buf_lit(b, lit) buf_append((b), (lit), sizeof(lit) - 1)

/* Appends one call's position (the "calls" member) and its id. */
static int add_call(const struct cofi_config *cfg, const struct record *r, bool first,
                    struct buf *calls, struct buf *ids)
{
    int rc = buf_printf(ids, "%s%lld", first ? "" : ",", (long long)r->call_id);
    if (rc == 0) {
        rc = buf_printf(calls,
                        "%s{\"id\":%lld,\"token\":%lld,\"stage\":%d,\"status\":\"%s\","
                        "\"attempts\":%d,\"last_error\":",
                        first ? "" : ",", (long long)r->call_id, (long long)r->token, r->stage,
                        call_status_name(r->status), r->attempts);
    }
    if (rc == 0) {
        rc = buf_json_string(calls, r->last_error);
    }
    if (rc == 0) {
        rc = buf_lit(calls, ",\"node\":");
    }
    if (rc == 0) {
        bool has_node = r->node >= 0 && (size_t)r->node < cfg->node_count;
        rc = buf_json_string(calls, has_node ? cfg->nodes[r->node].id : NULL);
    }
    if (rc == 0) {
        rc = buf_lit(calls, ",\"file_name\":");
    }
    if (rc == 0) {
        rc = buf_json_string(calls, r->file_name);
    }
    if (rc == 0 && r->retry_at_ms > 0) {
        rc = buf_printf(calls, ",\"retry_at_ms\":%lld", (long long)r->retry_at_ms);
    }
    if (rc == 0 && r->started_ms >= 0) {
        rc = buf_printf(calls, ",\"started_ms\":%lld}", (long long)r->started_ms);
    } else if (rc == 0) {
        rc = buf_lit(calls, ",\"started_ms\":null}");
    }
    return rc;
}

/* Appends one stage row. */
static int add_row(const struct record *r, bool first, struct buf *stages)
{
    int rc = buf_printf(stages,
                        "%s{\"call_id\":%lld,\"stage\":%d,\"state\":\"%s\",\"attempts\":%d,"
                        "\"started_ms\":%lld,\"finished_ms\":%lld,\"last_error\":",
                        first ? "" : ",", (long long)r->call_id, r->row_stage,
                        r->row_failed ? "failed" : "done", r->row_attempts,
                        (long long)r->row_started_ms, (long long)r->row_finished_ms);
    if (rc == 0) {
        rc = buf_json_string(stages, r->row_error);
    }
    if (rc == 0) {
        rc = buf_lit(stages, ",\"result\":");
    }
    if (rc == 0 && r->row_result != NULL) {
        rc = buf_append(stages, r->row_result, strlen(r->row_result));
    } else if (rc == 0) {
        rc = buf_lit(stages, "null");
    }
    if (rc == 0) {
        rc = buf_lit(stages, "}");
    }
    return rc;
}

/* True when a later record of recs[i]'s call (sorted by call, then seq) has a row of the same
 * stage: that one wins. */
static bool row_superseded(const struct record *recs, size_t n, size_t i)
{
    for (size_t k = i + 1; k < n && recs[k].call_id == recs[i].call_id; k++) {
        if (recs[k].has_row && recs[k].row_stage == recs[i].row_stage) {
            return true;
        }
    }
    return false;
}

int flush_text_build(const struct cofi_config *cfg, const struct record *recs, size_t n,
                     struct flush_text *out)
{
    memset(out, 0, sizeof *out);
    struct buf calls;
    struct buf ids;
    struct buf stages;
    buf_init(&calls, (size_t)1 << 30);
    buf_init(&ids, (size_t)1 << 30);
    buf_init(&stages, (size_t)1 << 30);
    int rc = buf_lit(&calls, "[");
    if (rc == 0) {
        rc = buf_lit(&ids, "{");
    }
    if (rc == 0) {
        rc = buf_lit(&stages, "[");
    }
    bool first_call = true;
    bool first_row = true;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const struct record *r = &recs[i];
        if (r->has_row && !row_superseded(recs, n, i)) {
            rc = add_row(r, first_row, &stages);
            first_row = false;
        }
        bool last_of_call = i + 1 == n || recs[i + 1].call_id != r->call_id;
        if (rc == 0 && last_of_call) {
            rc = add_call(cfg, r, first_call, &calls, &ids);
            first_call = false;
        }
    }
    if (rc == 0) {
        rc = buf_lit(&calls, "]");
    }
    if (rc == 0) {
        rc = buf_lit(&ids, "}");
    }
    if (rc == 0) {
        rc = buf_lit(&stages, "]");
    }
    if (rc != 0) {
        buf_free(&calls);
        buf_free(&ids);
        buf_free(&stages);
        return -1;
    }
    out->calls = buf_steal(&calls);
    out->ids = buf_steal(&ids);
    out->stages = buf_steal(&stages);
    return 0;
}

void flush_text_free(struct flush_text *t)
{
    free(t->calls);
    free(t->ids);
    free(t->stages);
    memset(t, 0, sizeof *t);
}

char *flush_text_claims(const struct record *recs, size_t n)
{
    struct buf b;
    buf_init(&b, (size_t)64 << 20);
    int rc = buf_lit(&b, "[");
    bool first = true;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (i + 1 < n && recs[i + 1].call_id == recs[i].call_id) {
            continue;
        }
        rc = buf_printf(&b, "%s{\"id\":%lld,\"token\":%lld}", first ? "" : ",",
                        (long long)recs[i].call_id, (long long)recs[i].token);
        first = false;
    }
    if (rc == 0) {
        rc = buf_lit(&b, "]");
    }
    if (rc != 0) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}
