/* Completion webhooks: the thread that sends the deliveries queued in the outbox
 * (db/webhooks_db.h) when a batch ends, signed, retried with back-off (README "Webhooks"). */
#ifndef COFI_WEBHOOK_H
#define COFI_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/error.h"

/* One attempt waits at most this long for the whole exchange. */
#define WEBHOOK_TIMEOUT_MS 10000
/* A claimed delivery is this instance's for this long (an instance that dies mid-attempt
 * leaves it to the others after it). */
#define WEBHOOK_LEASE_MS 60000
/* Waits between attempts: "equal jitter" around BASE * 2^(attempts-1), capped at MAX. */
#define WEBHOOK_BACKOFF_BASE_MS 1000
#define WEBHOOK_BACKOFF_MAX_MS  300000

/* The "X-Cofi-Signature" value: "sha256=" + 64 hex digits + NUL. */
#define WEBHOOK_SIGNATURE_LEN 72

struct webhook_sender;

/* Starts the thread `cofi-webhook` with a connection of its own to cfg->database_url, when
 * cfg->webhook_secret is set; without it *out is NULL (nothing is sent: POST /batches refuses
 * a callback_url, and deliveries queued earlier wait). cfg and instance are borrowed and must
 * outlive the sender. Returns 0, or a negative status with err filled (*out NULL). */
int webhook_start(struct webhook_sender **out, const struct cofi_config *cfg, const char *instance,
                  struct cofi_err *err);

/* Stops the thread (an attempt in flight is cut short and its delivery released, due again at
 * once for any instance), and frees the sender. Accepts NULL. */
void webhook_stop(struct webhook_sender *w);

/* The signature of body (len bytes) sent with X-Cofi-Timestamp `timestamp`: "sha256=" and the
 * hex HMAC-SHA256, keyed with secret, of "<timestamp>.<body>", into out. Returns 0 or -1. */
int webhook_sign(const char *secret, const char *timestamp, const char *body, size_t len,
                 char out[WEBHOOK_SIGNATURE_LEN]);

/* The wait before the next attempt after `attempts` failed ones (>= 1), in ms: at least half
 * and at most all of min(WEBHOOK_BACKOFF_BASE_MS * 2^(attempts-1), WEBHOOK_BACKOFF_MAX_MS).
 * *seed is a random state (not 0), advanced. */
int64_t webhook_retry_ms(int attempts, uint64_t *seed);

#endif
