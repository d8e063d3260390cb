/* What `cofi` prints for people: batches, lists, calls, progress and problems. */
#include "cli/output.h"

#include <stdlib.h>
#include <string.h>

#define BAR_WIDTH 30

/* v as a string, or dflt when it is not one. */
static const char *str_or(const json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

static long long int_of(const json_t *obj, const char *key)
{
    return (long long)json_integer_value(json_object_get(obj, key));
}

static const char *reason_phrase(long status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "";
    }
}

/* The first line of s, at most 200 bytes, into out. */
static void first_line(const char *s, char *out, size_t cap)
{
    size_t n = strcspn(s, "\r\n");
    if (n >= cap) {
        n = cap - 1;
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

void out_problem(FILE *to, long status, const char *body)
{
    char text[512] = "";
    json_t *p = body != NULL ? json_loads(body, 0, NULL) : NULL;
    const char *detail = str_or(json_object_get(p, "detail"), NULL);
    const char *title = str_or(json_object_get(p, "title"), NULL);
    if (detail != NULL || title != NULL) {
        first_line(detail != NULL ? detail : title, text, sizeof text);
    } else if (body != NULL) {
        first_line(body, text, 200);
    }
    const char *phrase = title != NULL ? title : reason_phrase(status);
    fprintf(to, "cofi: HTTP %ld%s%s%s%s\n", status, phrase[0] ? " " : "", phrase,
            text[0] && strcmp(text, phrase) != 0 ? ": " : "",
            strcmp(text, phrase) != 0 ? text : "");
    json_decref(p);
}

/* "done/total" of a stage, and the share done or failed or skipped as a fraction. */
static double stage_fraction(const json_t *stage, long long total)
{
    long long ended = int_of(stage, "done") + int_of(stage, "failed") + int_of(stage, "skipped");
    return total > 0 ? (double)ended / (double)total : 1.0;
}

static void eta_text(const json_t *batch, char *out, size_t cap)
{
    const json_t *eta = json_object_get(batch, "eta_seconds");
    if (!json_is_number(eta)) {
        snprintf(out, cap, "-");
        return;
    }
    double s = json_number_value(eta);
    if (s >= 3600) {
        snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    } else if (s >= 60) {
        snprintf(out, cap, "%dm%02ds", (int)(s / 60), (int)s % 60);
    } else {
        snprintf(out, cap, "%ds", (int)(s + 0.5));
    }
}

void out_batch(FILE *to, const json_t *batch)
{
    char eta[32];
    eta_text(batch, eta, sizeof eta);
    fprintf(to, "batch %lld  %s  state %s  mode %s  priority %lld  files %lld  eta %s\n",
            int_of(batch, "id"), str_or(json_object_get(batch, "name"), "(no name)"),
            str_or(json_object_get(batch, "state"), "?"),
            str_or(json_object_get(batch, "mode"), "?"), int_of(batch, "priority"),
            int_of(batch, "file_count"), eta);
    fprintf(to, "created %s  started %s  finished %s\n",
            str_or(json_object_get(batch, "created_at"), "-"),
            str_or(json_object_get(batch, "started_at"), "-"),
            str_or(json_object_get(batch, "finished_at"), "-"));
    fprintf(to, "%-11s %8s %8s %8s %8s %8s\n", "STAGE", "PENDING", "RUNNING", "DONE", "FAILED",
            "SKIPPED");
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(batch, "stages"), i, s)
    {
        fprintf(to, "%-11s %8lld %8lld %8lld %8lld %8lld\n",
                str_or(json_object_get(s, "name"), "?"), int_of(s, "pending"), int_of(s, "running"),
                int_of(s, "done"), int_of(s, "failed"), int_of(s, "skipped"));
    }
}

/* The last stage's done/total: how far the whole batch is. */
static void overall(const json_t *batch, char *out, size_t cap)
{
    const json_t *stages = json_object_get(batch, "stages");
    const json_t *last = json_array_get(stages, json_array_size(stages) - 1);
    snprintf(out, cap, "%lld/%lld", int_of(last, "done"), int_of(batch, "file_count"));
}

void out_batch_list(FILE *to, const json_t *page)
{
    fprintf(to, "%-8s %-22s %-9s %6s %-13s %-20s %s\n", "ID", "STATE", "MODE", "FILES", "DONE",
            "CREATED", "NAME");
    size_t i;
    const json_t *b;
    json_array_foreach(json_object_get(page, "batches"), i, b)
    {
        char done[48];
        overall(b, done, sizeof done);
        fprintf(to, "%-8lld %-22s %-9s %6lld %-13s %-20s %s\n", int_of(b, "id"),
                str_or(json_object_get(b, "state"), "?"), str_or(json_object_get(b, "mode"), "?"),
                int_of(b, "file_count"), done, str_or(json_object_get(b, "created_at"), "-"),
                str_or(json_object_get(b, "name"), ""));
    }
    const char *next = str_or(json_object_get(page, "next_cursor"), NULL);
    if (next != NULL) {
        fprintf(to, "(more: next cursor %s)\n", next);
    }
}

static void out_call_stage(FILE *to, const json_t *s)
{
    fprintf(to, "  %-10s %-9s attempts %-3lld %s -> %s\n", str_or(json_object_get(s, "name"), "?"),
            str_or(json_object_get(s, "state"), "?"), int_of(s, "attempts"),
            str_or(json_object_get(s, "started_at"), "-"),
            str_or(json_object_get(s, "finished_at"), "-"));
    const char *err = str_or(json_object_get(s, "last_error"), NULL);
    if (err != NULL) {
        fprintf(to, "             error: %s\n", err);
    }
    const json_t *result = json_object_get(s, "result");
    if (json_is_object(result)) {
        char *text = json_dumps(result, JSON_COMPACT);
        if (text != NULL) {
            fprintf(to, "             result: %s\n", text);
        }
        free(text);
    }
}

void out_call(FILE *to, const json_t *call)
{
    fprintf(to, "call %s  batch %lld  file %s\n", str_or(json_object_get(call, "id"), "?"),
            int_of(call, "batch_id"), str_or(json_object_get(call, "file"), "?"));
    fprintf(to, "state %s  at %s  node %s\n", str_or(json_object_get(call, "state"), "?"),
            str_or(json_object_get(call, "stage"), "(all done)"),
            str_or(json_object_get(call, "node"), "-"));
    const json_t *wait = json_object_get(call, "waiting_for");
    if (json_is_object(wait)) {
        char *text = json_dumps(wait, JSON_COMPACT);
        if (text != NULL) {
            fprintf(to, "waiting for: %s\n", text);
        }
        free(text);
    }
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(call, "stages"), i, s)
    {
        out_call_stage(to, s);
    }
}

void out_progress_line(FILE *to, const json_t *batch)
{
    char eta[32];
    eta_text(batch, eta, sizeof eta);
    fprintf(to, "batch %lld %s", int_of(batch, "id"), str_or(json_object_get(batch, "state"), "?"));
    long long total = int_of(batch, "file_count");
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(batch, "stages"), i, s)
    {
        fprintf(to, "  %s %lld/%lld", str_or(json_object_get(s, "name"), "?"), int_of(s, "done"),
                total);
        if (int_of(s, "failed") > 0) {
            fprintf(to, " (%lld failed)", int_of(s, "failed"));
        }
    }
    fprintf(to, "  eta %s\n", eta);
    fflush(to);
}

void out_progress_bars(FILE *to, const json_t *batch, int *drawn)
{
    if (*drawn > 0) {
        fprintf(to, "\033[%dA", *drawn); /* back to the first line drawn last time */
    }
    char eta[32];
    eta_text(batch, eta, sizeof eta);
    long long total = int_of(batch, "file_count");
    fprintf(to, "\033[2Kbatch %lld  %s  %lld files  eta %s\n", int_of(batch, "id"),
            str_or(json_object_get(batch, "state"), "?"), total, eta);
    int lines = 1;
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(batch, "stages"), i, s)
    {
        double f = stage_fraction(s, total);
        int full = (int)(f * BAR_WIDTH + 0.5);
        char bar[BAR_WIDTH + 1];
        for (int k = 0; k < BAR_WIDTH; k++) {
            bar[k] = k < full ? '#' : '.';
        }
        bar[BAR_WIDTH] = '\0';
        fprintf(to, "\033[2K%-10s [%s] %3d%%  %lld/%lld  running %lld  failed %lld\n",
                str_or(json_object_get(s, "name"), "?"), bar, (int)(f * 100), int_of(s, "done"),
                total, int_of(s, "running"), int_of(s, "failed"));
        lines++;
    }
    *drawn = lines;
    fflush(to);
}

void out_json(FILE *to, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text != NULL) {
        fprintf(to, "%s\n", text);
    }
    free(text);
    fflush(to);
}
