/* The webhook sender: claims due deliveries, renders and signs the batch object, POSTs it and
 * records the attempt. One delivery at a time, on a thread and connection of its own. */
#include "pipeline/webhook.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/hmac.h"
#include "common/log.h"
#include "common/thread.h"
#include "db/batches_db.h"
#include "db/db.h"
#include "db/webhooks_db.h"
#include "pipeline/retry.h"

/* How often the outbox is looked at when nothing was due. */
#define POLL_MS 500

struct webhook_sender {
    const struct cofi_config *cfg; /* borrowed */
    const char *instance;          /* borrowed */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_bool stop;
    uint64_t seed;
};

int webhook_sign(const char *secret, const char *timestamp, const char *body, size_t len,
                 char out[WEBHOOK_SIGNATURE_LEN])
{
    const void *part[3] = {timestamp, ".", body};
    size_t plen[3] = {strlen(timestamp), 1, len};
    char hex[HMAC_SHA256_HEX_LEN];
    out[0] = '\0';
    if (hmac_sha256_hex(secret, strlen(secret), part, plen, 3, hex) != 0) {
        return -1;
    }
    snprintf(out, WEBHOOK_SIGNATURE_LEN, "sha256=%s", hex);
    return 0;
}

int64_t webhook_retry_ms(int attempts, uint64_t *seed)
{
    const struct cofi_worker_cfg policy = {.backoff_base_ms = WEBHOOK_BACKOFF_BASE_MS,
                                           .backoff_max_ms = WEBHOOK_BACKOFF_MAX_MS};
    return retry_backoff_ms(&policy, attempts < 1 ? 1 : attempts, seed);
}

/* Waits up to ms unless stopped. Returns true when asked to stop. */
static bool sender_sleep(struct webhook_sender *w, int64_t ms)
{
    pthread_mutex_lock(&w->mu);
    if (!atomic_load(&w->stop) && ms > 0) {
        struct timespec dl = clock_deadline_ms(ms);
        pthread_cond_timedwait(&w->cv, &w->mu, &dl);
    }
    pthread_mutex_unlock(&w->mu);
    return atomic_load(&w->stop);
}

/* The receiver's reply is not kept: only its status counts. */
static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* Cuts an attempt short when the sender stops. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    const struct webhook_sender *w = arg;
    return atomic_load(&w->stop) ? 1 : 0;
}

/* The request's headers, signed for now. Returns a new list, or NULL. */
static struct curl_slist *signed_headers(const struct webhook_sender *w,
                                         const struct webhook_delivery *d)
{
    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    char sig[WEBHOOK_SIGNATURE_LEN];
    if (webhook_sign(w->cfg->webhook_secret, ts, d->body, strlen(d->body), sig) != 0) {
        return NULL;
    }
    char line[3][128];
    snprintf(line[0], sizeof line[0], "X-Cofi-Delivery: %s", d->id);
    snprintf(line[1], sizeof line[1], "X-Cofi-Timestamp: %s", ts);
    snprintf(line[2], sizeof line[2], "X-Cofi-Signature: %s", sig);
    const char *all[] = {"Content-Type: application/json",
                         "User-Agent: cofid/0.1.0",
                         "Expect:",
                         line[0],
                         line[1],
                         line[2]};
    struct curl_slist *h = NULL;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        struct curl_slist *next = curl_slist_append(h, all[i]);
        if (next == NULL) {
            curl_slist_free_all(h);
            return NULL;
        }
        h = next;
    }
    return h;
}

/* POSTs d's body to its url. Returns the HTTP status, or 0 with why (a transport error) in
 * error. */
static long post(struct webhook_sender *w, const struct webhook_delivery *d, char *error,
                 size_t error_len)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *easy = curl_easy_init();
    struct curl_slist *headers = easy != NULL ? signed_headers(w, d) : NULL;
    if (headers == NULL) {
        curl_easy_cleanup(easy);
        snprintf(error, error_len, "out of memory or libcrypto failed");
        return 0;
    }
    curl_easy_setopt(easy, CURLOPT_URL, d->url);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(d->body));
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)WEBHOOK_TIMEOUT_MS);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)WEBHOOK_TIMEOUT_MS / 2);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, w);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(easy);
    long status = 0;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        snprintf(error, error_len, "HTTP %ld", status);
    } else {
        snprintf(error, error_len, "%s", errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(easy);
    return status;
}

/* Makes sure d has a body: the batch object as GET /batches/{id} gives it, kept in the row
 * so every attempt sends the same bytes. Returns 0 (d->body may still be NULL: the batch is
 * gone and nothing was kept) or a database error. */
static int render(PGconn *c, struct webhook_delivery *d, struct cofi_err *err)
{
    if (d->body != NULL) {
        return 0;
    }
    json_t *batch = NULL;
    int rc = batches_db_get(c, d->batch_id, &batch, err);
    if (rc != 0 && rc != COFI_E_NOT_FOUND) {
        return rc;
    }
    char *text = batch != NULL ? json_dumps(batch, JSON_COMPACT) : NULL;
    json_decref(batch);
    if (batch != NULL && text == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    rc = webhooks_db_set_body(c, d, text, err);
    free(text);
    return rc;
}

/* One attempt of a claimed delivery, recorded. Returns 0 or a database error. */
static int attempt(struct webhook_sender *w, PGconn *c, struct webhook_delivery *d,
                   struct cofi_err *err)
{
    int rc = render(c, d, err);
    if (rc != 0) {
        return rc;
    }
    char error[CURL_ERROR_SIZE + 32];
    long status = 0;
    if (d->body == NULL) {
        snprintf(error, sizeof error, "batch %" PRId64 " is gone and its object was not kept",
                 d->batch_id);
    } else {
        status = post(w, d, error, sizeof error);
    }
    if (atomic_load(&w->stop) && status == 0) {
        return webhooks_db_release(c, d, err);
    }
    bool ok = status >= 200 && status <= 299;
    int64_t retry = ok ? 0 : webhook_retry_ms(d->attempts + 1, &w->seed);
    rc = webhooks_db_record(c, d, status, ok ? NULL : error, retry, err);
    if (ok) {
        log_info("webhook: batch %" PRId64 " delivered (delivery %s, attempt %d)", d->batch_id,
                 d->id, d->attempts + 1);
    } else {
        log_warn("webhook: batch %" PRId64 ", delivery %s, attempt %d: %s; next in %" PRId64 " ms",
                 d->batch_id, d->id, d->attempts + 1, error, retry);
    }
    return rc;
}

/* One look at the outbox. Returns 0 with *sent true when a delivery was attempted. */
static int step(struct webhook_sender *w, PGconn *c, bool *sent, struct cofi_err *err)
{
    struct webhook_delivery d;
    int found = 0;
    *sent = false;
    int rc = webhooks_db_claim(c, w->instance, WEBHOOK_LEASE_MS, &d, &found, err);
    if (rc != 0 || !found) {
        return rc;
    }
    rc = attempt(w, c, &d, err);
    webhooks_db_delivery_free(&d);
    *sent = true;
    return rc;
}

static void *sender_main(void *arg)
{
    struct webhook_sender *w = arg;
    thread_set_name("cofi-webhook");
    PGconn *c = NULL;
    bool down_logged = false;
    bool released = false;
    for (;;) {
        struct cofi_err err;
        cofi_err_clear(&err);
        int64_t wait = POLL_MS;
        if (!db_conn_ok(c)) {
            PQfinish(c);
            c = db_connect(w->cfg->database_url, &err);
        }
        /* Once, first: what an earlier life under this instance id held is free again. */
        if (c != NULL && !released) {
            released = webhooks_db_release_mine(c, w->instance, &err) == 0;
        }
        bool sent = false;
        if (c == NULL || !released) {
            if (!down_logged) {
                log_warn("webhook: %s; retrying", err.msg);
                down_logged = true;
            }
        } else if (step(w, c, &sent, &err) != 0) {
            log_warn("webhook: %s", err.msg);
        } else {
            down_logged = false;
            wait = sent ? 0 : POLL_MS;
        }
        if (sender_sleep(w, wait)) {
            break;
        }
    }
    PQfinish(c);
    return NULL;
}

int webhook_start(struct webhook_sender **out, const struct cofi_config *cfg, const char *instance,
                  struct cofi_err *err)
{
    *out = NULL;
    if (cfg->webhook_secret == NULL) {
        log_info("webhook: no webhook_secret_env configured: POST /batches refuses callback_url "
                 "and this instance sends no webhook");
        return 0;
    }
    struct webhook_sender *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return cofi_err_set(err, COFI_E_NOMEM, "out of memory");
    }
    w->cfg = cfg;
    w->instance = instance;
    w->seed = (uint64_t)clock_wall_ms() * 2654435761u ^ (uint64_t)getpid();
    if (w->seed == 0) {
        w->seed = 1;
    }
    atomic_init(&w->stop, false);
    pthread_mutex_init(&w->mu, NULL);
    clock_cond_init(&w->cv);
    if (pthread_create(&w->thread, NULL, sender_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return cofi_err_set(err, COFI_E_INTERNAL, "cannot start the webhook thread");
    }
    log_info("webhook: deliveries signed with the key in $%s", cfg->webhook_secret_env);
    *out = w;
    return 0;
}

void webhook_stop(struct webhook_sender *w)
{
    if (w == NULL) {
        return;
    }
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stop, true);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
