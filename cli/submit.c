/* `cofi submit`: files and folders (walked, sorted, hidden names skipped) into POST /batches,
 * paths sent as given or relative to --root, then POST /batches/{id}/run with --run. */
#include "cli/commands.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/output.h"

#define WALK_MAX_DEPTH 32

/* Hidden names and the "." and ".." entries are not walked. */
static int visible(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* dir + "/" + name, a new string (NULL when out of memory). */
static char *join(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    const char *sep = (dl > 0 && dir[dl - 1] == '/') ? "" : "/";
    size_t cap = dl + strlen(name) + 2;
    char *p = malloc(cap);
    if (p != NULL) {
        snprintf(p, cap, "%s%s%s", dir, sep, name);
    }
    return p;
}

static int walk(FILE *err, const char *dir, json_t *files, int depth);

/* One entry of a folder: a folder is walked, a regular file appended, the rest ignored. */
static int visit(FILE *err, const char *dir, const char *name, json_t *files, int depth)
{
    char *p = join(dir, name);
    if (p == NULL) {
        return -1;
    }
    struct stat st;
    int rc = 0;
    if (stat(p, &st) != 0) {
        rc = 0; /* gone meanwhile, or a dangling link: not a file to send */
    } else if (S_ISDIR(st.st_mode)) {
        rc = walk(err, p, files, depth + 1);
    } else if (S_ISREG(st.st_mode)) {
        rc = json_array_append_new(files, json_string(p));
    }
    free(p);
    return rc;
}

/* Appends every regular file under dir (sorted, depth first) to files. Returns 0, or -1 after
 * printing why on err. */
static int walk(FILE *err, const char *dir, json_t *files, int depth)
{
    if (depth > WALK_MAX_DEPTH) {
        fprintf(err, "cofi: %s: folders nested too deep\n", dir);
        return -1;
    }
    struct dirent **names = NULL;
    int n = scandir(dir, &names, visible, alphasort);
    if (n < 0) {
        fprintf(err, "cofi: cannot read folder %s\n", dir);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0) {
            rc = visit(err, dir, names[i]->d_name, files, depth);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* path relative to the real root (root_real, without a trailing slash), or NULL after saying
 * why on err. Returns a new string. */
static char *relative_to(FILE *err, const char *root_real, const char *path)
{
    char real[PATH_MAX];
    if (realpath(path, real) == NULL) {
        fprintf(err, "cofi: %s: no such file\n", path);
        return NULL;
    }
    size_t n = strlen(root_real);
    if (strcmp(root_real, "/") == 0) {
        return strdup(real + 1);
    }
    if (strncmp(real, root_real, n) != 0 || real[n] != '/') {
        fprintf(err, "cofi: %s is not under --root %s\n", path, root_real);
        return NULL;
    }
    return strdup(real + n + 1);
}

/* files made relative to --root, in place. Returns 0 or CLI_EXIT_BAD_USAGE. */
static int rebase(FILE *err, const char *root, json_t *files)
{
    char root_real[PATH_MAX];
    if (realpath(root, root_real) == NULL) {
        fprintf(err, "cofi: --root %s: no such folder\n", root);
        return CLI_EXIT_BAD_USAGE;
    }
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f)
    {
        char *rel = relative_to(err, root_real, json_string_value(f));
        if (rel == NULL) {
            return CLI_EXIT_BAD_USAGE;
        }
        json_string_set(f, rel);
        free(rel);
    }
    return 0;
}

/* The "files" array of the command line's paths. Returns 0 or an exit status. */
static int collect(const struct cli_ctx *ctx, json_t *files)
{
    const struct cli_args *a = ctx->args;
    for (size_t i = 0; i < a->path_count; i++) {
        struct stat st;
        int rc = 0;
        if (stat(a->paths[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            size_t before = json_array_size(files);
            rc = walk(ctx->err, a->paths[i], files, 0);
            if (rc == 0 && json_array_size(files) == before) {
                fprintf(ctx->err, "cofi: folder %s holds no file\n", a->paths[i]);
                rc = -1;
            }
        } else {
            rc = json_array_append_new(files, json_string(a->paths[i]));
        }
        if (rc != 0) {
            return CLI_EXIT_BAD_USAGE;
        }
    }
    return a->root != NULL ? rebase(ctx->err, a->root, files) : 0;
}

/* The POST /batches body. Returns 0 with *body a new reference, or an exit status. */
static int make_body(const struct cli_ctx *ctx, json_t **body)
{
    const struct cli_args *a = ctx->args;
    json_t *b = json_object();
    json_t *files = json_array();
    json_object_set_new(b, "files", files);
    int rc = collect(ctx, files);
    if (rc == 0 && a->metadata != NULL) {
        json_error_t jerr;
        json_t *md = json_loads(a->metadata, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(md)) {
            fprintf(ctx->err, "cofi: --metadata must be a JSON object%s%s\n",
                    md == NULL ? ": " : "", md == NULL ? jerr.text : "");
            rc = CLI_EXIT_BAD_USAGE;
        }
        json_object_set_new(b, "metadata", md != NULL ? md : json_null());
    }
    if (a->name != NULL) {
        json_object_set_new(b, "name", json_string(a->name));
    }
    if (a->priority > 0) {
        json_object_set_new(b, "priority", json_integer(a->priority));
    }
    if (rc != 0) {
        json_decref(b);
        return rc;
    }
    *body = b;
    return 0;
}

int cmd_submit(const struct cli_ctx *ctx)
{
    const struct cli_args *a = ctx->args;
    json_t *body = NULL;
    int rc = make_body(ctx, &body);
    if (rc != 0) {
        return rc;
    }
    char header[600];
    const char *extra = NULL;
    if (a->idempotency_key != NULL) {
        snprintf(header, sizeof header, "Idempotency-Key: %s", a->idempotency_key);
        extra = header;
    }
    json_t *batch = NULL;
    rc = a->run ? api_call_quiet(ctx, "POST", "/batches", body, extra, &batch)
                : api_call(ctx, "POST", "/batches", body, extra, &batch);
    json_decref(body);
    if (rc != CLI_EXIT_OK) {
        return rc;
    }
    long long id = (long long)json_integer_value(json_object_get(batch, "id"));
    if (!a->json) {
        fprintf(ctx->out, "batch %lld created: %lld files\n", id,
                (long long)json_integer_value(json_object_get(batch, "file_count")));
    }
    json_decref(batch);
    if (!a->run) {
        return CLI_EXIT_OK;
    }
    char path[64];
    snprintf(path, sizeof path, "/batches/%lld/run", id);
    json_t *run = a->mode != NULL ? json_pack("{ss}", "mode", a->mode) : NULL;
    rc = api_call(ctx, "POST", path, run, NULL, &batch);
    json_decref(run);
    if (rc == CLI_EXIT_OK && !a->json) {
        fprintf(ctx->out, "batch %lld: %s\n", id,
                json_string_value(json_object_get(batch, "state")));
    }
    json_decref(batch);
    return rc;
}
