/* cofi-sim: declarations shared by the simulator's files (GPU mediator nodes and the NLP API). */
#ifndef COFI_SIM_H
#define COFI_SIM_H

#include "common/buf.h"
#include "common/log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;
struct MHD_Daemon;
struct MHD_PostProcessor;

/* ------------------------------------------------------------------------------------------
 * Limits. Every buffer the simulator fills from the network is capped by one of these.
 */
#define SIM_MAX_NODES         1024
#define SIM_JSON_BODY_MAX     (1024 * 1024) /* JSON request bodies; uploads are streamed */
#define SIM_KEY_MAX           512           /* longest Idempotency-Key / X-Request-Id accepted */
#define SIM_FIELD_MAX         1024          /* longest call_id form field or upload file name */
#define SIM_KEY_SHARDS        64            /* shards of the per-port idempotency-key table */
#define SIM_MAX_RULES         256           /* failure rules per port */
#define SIM_MAX_RULE_CALLS    100000        /* call ids per failure rule */
#define SIM_HANG_MAX_MS       60000         /* longest a request waits on a "hang" node */
#define SIM_STATUS_MAX        600           /* HTTP statuses counted: 0..599 */
#define SIM_RULE_BYTES_MAX    (64 * 1024 * 1024) /* largest body_bytes of a failure rule */
#define SIM_HOST_MAX          64
#define SIM_SCHEDULE_MAX      64   /* steps of --nlp-capacity-schedule */
#define SIM_SERIES_SECONDS    3600 /* seconds of NLP history kept for GET /stats */
#define SIM_COMPLETION_TOKENS 20   /* tokens of every NLP answer (the completion), fixed */

/* ------------------------------------------------------------------------------------------
 * Worker endpoints. Nodes serve UPLOAD..STT, the NLP API LLM1 and LLM2.
 */
enum sim_ep {
    SIM_EP_UPLOAD = 0,
    SIM_EP_DENOISE,
    SIM_EP_IVR,
    SIM_EP_LID,
    SIM_EP_STT,
    SIM_EP_LLM1,
    SIM_EP_LLM2,
    SIM_EP_COUNT
};

enum sim_role { SIM_ROLE_NODE, SIM_ROLE_NLP };

/* How the NLP API is spoken: cofi's §4 (/llm1, /llm2) or OpenAI chat completions. */
enum sim_protocol { SIM_PROTO_COFI = 0, SIM_PROTO_OPENAI };

/* The endpoint's path segment and stats key: "upload", "denoise", ... Static string. */
const char *sim_ep_name(enum sim_ep ep);

/* The pipeline stage the endpoint serves, as used in Idempotency-Key: "distribute" for upload,
 * otherwise the endpoint name. Static string. */
const char *sim_ep_stage(enum sim_ep ep);

/* Parses an endpoint or stage name ("distribute" is an alias of "upload"). Returns 0, or -1 and
 * leaves *out unchanged. */
int sim_ep_parse(const char *name, enum sim_ep *out);

/* True when ports of `role` serve `ep`. */
bool sim_ep_in_role(enum sim_ep ep, enum sim_role role);

/* ------------------------------------------------------------------------------------------
 * Configuration: filled once from the command line, immutable afterwards.
 */
struct sim_config {
    int nodes;
    int base_port;
    int node_capacity;
    int nlp_port;
    int nlp_capacity;
    int64_t latency_us[SIM_EP_COUNT]; /* per endpoint, before jitter */
    double jitter_pct;                /* 0..100: latency is spread uniformly by +-jitter_pct% */
    double fail_rate;                 /* 0..1: share of worker requests answered 503 */
    uint64_t seed;
    char host[SIM_HOST_MAX];
    struct sim_cap_step {
        double at_s;  /* seconds from start */
        int capacity; /* the NLP capacity from then on */
    } schedule[SIM_SCHEDULE_MAX];
    int nschedule;
    int64_t nlp_tokens_per_minute; /* 0 = not metered */
    enum sim_protocol nlp_protocol;
};

/* ------------------------------------------------------------------------------------------
 * The NLP API's meter (meter.c): capacity over time, tokens per minute, per-second history.
 */

/* Parses T1=K1[,T2=K2...] (seconds from start, capacity), in time order, into out (at most
 * max). Returns the number of steps, or -1 with a message in err. Pure. */
int sim_schedule_parse(const char *s, struct sim_cap_step *out, int max, char *err, size_t errlen);

/* Applies the steps from index next whose time has come at elapsed_s: *capacity gets the last
 * one's. Returns the index of the first step still to come. Pure. */
int sim_schedule_due(const struct sim_cap_step *steps, int n, int next, double elapsed_s,
                     int *capacity);

/* A token bucket: per_minute tokens, refilled continuously, holding at most per_minute. */
struct sim_bucket {
    int64_t per_minute; /* 0 = unlimited */
    double level;
    int64_t last_us;
};

/* Takes `want` tokens at now_us: returns 0 when taken, else the seconds (>= 1) after which
 * they would be there (the Retry-After), taking nothing. A request larger than the whole
 * budget is let through once the bucket is full (the level goes negative). Pure. */
int64_t sim_bucket_take(struct sim_bucket *b, int64_t now_us, int64_t want);

/* One second of NLP history. */
struct sim_second {
    int64_t sec;       /* seconds from start; -1 = unused */
    int max_in_flight; /* the most requests worked on at once during it */
    int capacity;      /* the lowest capacity during it */
    int arrivals;      /* worker requests that reached the capacity check */
    int admitted;      /* ... and were taken (started) */
    int rejected;      /* ... and were answered 429 (capacity or tokens) */
    int ok;            /* requests that ended 2xx */
    int64_t tokens;    /* tokens of the admitted requests */
};

struct sim_meter {
    bool ready;
    pthread_mutex_t mu; /* guards everything below */
    int64_t start_us;
    int capacity;
    int busy; /* requests being worked on */
    struct sim_cap_step steps[SIM_SCHEDULE_MAX];
    int nsteps;
    int next_step;
    struct sim_bucket bucket;
    int64_t tokens_total;
    int64_t rejected_capacity;
    int64_t rejected_tokens;
    struct sim_second *series; /* owned, SIM_SERIES_SECONDS */
};

/* Sets up m from cfg. Returns 0 or -1 (out of memory). */
int sim_meter_init(struct sim_meter *m, const struct sim_config *cfg);

/* Frees m. Accepts an m that was never set up. */
void sim_meter_free(struct sim_meter *m);

/* Takes a slot for a request of `tokens`: returns 0 when taken (the caller calls
 * sim_meter_leave later), else the Retry-After in seconds (*over_tokens tells whether the
 * token budget, not the capacity, refused it). Thread-safe. */
int64_t sim_meter_admit(struct sim_meter *m, int64_t tokens, bool *over_tokens);

/* Counts a request answered by a failure rule (an arrival; a 429 is a rejection). */
void sim_meter_injected(struct sim_meter *m, int status);

/* Gives the slot back; ok: the answer is 2xx. Thread-safe. */
void sim_meter_leave(struct sim_meter *m, bool ok);

/* Sets the capacity now (POST /admin/capacity). Thread-safe. */
void sim_meter_set_capacity(struct sim_meter *m, int capacity);

/* Applies the schedule and records the in-flight count (the sampler, every 20 ms). */
void sim_meter_sample(struct sim_meter *m);

/* Clears the history and the counters (POST /stats/reset). */
void sim_meter_reset(struct sim_meter *m);

/* Adds capacity, rejected_capacity, rejected_tokens, tokens, tokens_per_minute, seconds and
 * series to o. Returns 0 or -1 (out of memory). */
int sim_meter_json(struct sim_meter *m, json_t *o);

/* ------------------------------------------------------------------------------------------
 * Deterministic hashing and results (results.c). Thread-safe; no state.
 */

/* A 64-bit hash of (seed, s, salt, n), well mixed. Can't fail. */
uint64_t sim_hash(uint64_t seed, const char *s, uint64_t salt, uint64_t n);

/* Maps a hash to a double uniform in [0, 1). Can't fail. */
double sim_hash_unit(uint64_t h);

/* The result a worker returns for `call_id` at stage `ep` (DENOISE..LLM2) under `seed`: a new
 * reference to a JSON object. The NLP side calls it too, to check that cofi carried the stt,
 * lid and llm1 results unchanged. Returns NULL for SIM_EP_UPLOAD (its answer depends on the
 * file name) or when out of memory. `call_id` must be UTF-8. */
json_t *sim_result_new(enum sim_ep ep, uint64_t seed, const char *call_id);

/* ------------------------------------------------------------------------------------------
 * A string -> uint64 hash map (map.c). Not thread-safe: callers lock.
 */
struct sim_map_entry;
struct sim_map {
    struct sim_map_entry **buckets; /* owned; NULL until the first insert */
    size_t nbuckets;
    size_t count;
};

/* Prepares an empty map. Can't fail (memory is allocated on the first insert). */
void sim_map_init(struct sim_map *m);

/* Returns a borrowed pointer to key's value (valid until the next upsert or clear), or NULL
 * when the key is absent. */
uint64_t *sim_map_get(struct sim_map *m, const char *key);

/* Returns a borrowed pointer to key's value, inserting the key with value 0 when absent
 * (*created says which). Returns NULL when out of memory; nothing is inserted then. */
uint64_t *sim_map_upsert(struct sim_map *m, const char *key, bool *created);

/* Removes every key and frees the memory; the map stays usable. Accepts NULL. */
void sim_map_clear(struct sim_map *m);

/* ------------------------------------------------------------------------------------------
 * Per-port counters (stats.c). All counters are atomics: no lock on the hot path.
 */
struct sim_stats {
    atomic_uint_fast64_t requests[SIM_EP_COUNT]; /* worker requests received */
    atomic_uint_fast64_t ok[SIM_EP_COUNT];       /* 2xx answers */
    atomic_uint_fast64_t responses[SIM_STATUS_MAX];
    atomic_int in_flight; /* holding a capacity slot: being worked on */
    atomic_int max_in_flight;
    atomic_int ep_in_flight[SIM_EP_COUNT];
    atomic_int ep_max_in_flight[SIM_EP_COUNT];
    atomic_int queued; /* waiting for a node slot */
    atomic_int max_queued;
    atomic_int concurrent; /* worker requests between arrival and answer, whatever their fate */
    atomic_int max_concurrent;
    atomic_uint_fast64_t unique_keys;
    atomic_uint_fast64_t repeated_keys;     /* key answered 2xx before */
    atomic_uint_fast64_t repeated_keys_any; /* key seen before at all */
};

/* The idempotency keys seen on one port: key -> (times seen, answered 2xx). Sharded locks. */
struct sim_key_shard {
    pthread_mutex_t mu;
    struct sim_map map;
};
struct sim_keys {
    struct sim_key_shard shard[SIM_KEY_SHARDS];
};

/* ------------------------------------------------------------------------------------------
 * Failure rules (rules.c), replaced as a whole by POST /admin/rules.
 */
struct sim_rule {
    int ep;          /* an enum sim_ep, or -1 for "*" */
    char **call_ids; /* owned, sorted; NULL = any call */
    size_t ncall_ids;
    int status;           /* the injected answer */
    char retry_after[64]; /* "" = no Retry-After header */
    int64_t times_left;   /* -1 = unlimited */
    int64_t per_key;      /* -1 = unlimited; else inject on the first per_key requests of a key */
    char *body;           /* owned: the answer's body verbatim ("body", "body_hex"), or NULL */
    size_t body_len;
    size_t body_bytes;         /* > 0: the answer is {"pad":"xx..."} of at least this many bytes */
    struct sim_map key_counts; /* per idempotency key: requests this rule matched */
};
struct sim_rules {
    pthread_mutex_t mu;
    struct sim_rule *rule; /* owned, under mu */
    size_t n;
    atomic_size_t active; /* == n; read without the lock to skip rule matching entirely */
};

/* Parses a POST /admin/rules body and replaces the rules of a port of `role`. Returns 0, or -1
 * with a message in err (the old rules are kept then). */
int sim_rules_replace(struct sim_rules *rules, enum sim_role role, const json_t *body, char *err,
                      size_t errlen);

/* Removes every rule. Can't fail. */
void sim_rules_clear(struct sim_rules *rules);

/* The answer a fired rule makes. */
struct sim_injected {
    int status;
    char retry_after[64]; /* "" = no Retry-After header */
    char *body;           /* new (malloc): the body to send verbatim; NULL = {"error":"injected"} */
    size_t body_len;
};

/* Matches one worker request against the rules. When a rule fires, consumes its budget, fills
 * *out (the caller frees out->body) and returns true; otherwise returns false and leaves *out
 * unchanged. A rule whose body cannot be allocated answers without one. Thread-safe. */
bool sim_rules_match(struct sim_rules *rules, enum sim_ep ep, const char *call_id, const char *key,
                     struct sim_injected *out);

/* ------------------------------------------------------------------------------------------
 * Ports: one HTTP daemon each, a node or the NLP API.
 */
enum sim_mode {
    SIM_MODE_UP = 0,
    SIM_MODE_REFUSE, /* daemon stopped: connections are refused */
    SIM_MODE_HANG,   /* worker endpoints and /health wait until up (at most SIM_HANG_MAX_MS) */
    SIM_MODE_ERROR   /* worker endpoints and /health answer 503 */
};

/* Parses "refuse", "hang" or "error". Returns 0, or -1 and leaves *out unchanged. */
int sim_mode_parse(const char *s, enum sim_mode *out);

/* "up", "refuse", "hang", "error". Static string. */
const char *sim_mode_name(enum sim_mode mode);

struct sim;

struct sim_port {
    struct sim *sim; /* borrowed back pointer */
    enum sim_role role;
    int index; /* node index, or -1 for the NLP API */
    char id[32];
    int port;
    int capacity;
    struct MHD_Daemon *daemon; /* set by the main thread only, under mu */
    atomic_bool listening;     /* daemon != NULL, readable from any thread */
    atomic_int quiesced_fd;    /* listening socket shut by sim_http_quiesce, or -1 */
    atomic_int mode;           /* enum sim_mode; written under mu */

    pthread_mutex_t mu;      /* guards slots_used and the waits below */
    pthread_cond_t slot_cv;  /* a node slot was freed, or the mode changed */
    pthread_cond_t state_cv; /* the mode changed */
    int slots_used;          /* node: requests worked on; under mu */

    struct sim_stats stats;
    struct sim_keys keys;
    struct sim_rules rules;
    pthread_mutex_t files_mu; /* node: the file names uploaded here */
    struct sim_map files;
};

/* The whole simulator. ports[0..nodes-1] are the nodes, ports[nodes] the NLP API. */
struct sim {
    struct sim_config cfg; /* immutable once ports exist */
    struct sim_port *ports;
    int nports;

    /* Control channel to the main thread, which alone starts and stops daemons. */
    int ctl_pipe[2];
    pthread_mutex_t ctl_mu;
    pthread_cond_t ctl_cv;
    uint64_t ctl_next_seq; /* under ctl_mu */
    uint64_t ctl_done_seq; /* under ctl_mu */
    bool quitting;         /* under ctl_mu */

    struct sim_meter meter; /* the NLP API's */
    pthread_t sampler;
    pthread_cond_t sampler_cv; /* with ctl_mu */
    bool sampler_stop;         /* under ctl_mu */
    bool sampler_running;
};

/* Starts / stops the thread that applies the capacity schedule and samples the NLP series. */
int sim_sampler_start(struct sim *s);
void sim_sampler_stop(struct sim *s);

/* Allocates and initialises every port of s (after s->cfg is set). Returns 0 or -1. */
int sim_ports_init(struct sim *s);

/* Frees what sim_ports_init allocated (daemons must be stopped). Accepts a partly set up s. */
void sim_ports_free(struct sim *s);

/* ------------------------------------------------------------------------------------------
 * One HTTP request as the handlers see it (http.c owns it).
 */
enum sim_route {
    SIM_R_NONE = 0,
    SIM_R_WORKER, /* ep tells which */
    SIM_R_HEALTH,
    SIM_R_STATS,
    SIM_R_STATS_ALL,
    SIM_R_STATS_RESET,
    SIM_R_ADMIN_DOWN, /* target: this port or another one */
    SIM_R_ADMIN_UP,
    SIM_R_ADMIN_RULES,
    SIM_R_ADMIN_CAPACITY
};

struct sim_req {
    struct MHD_Connection *conn; /* borrowed, valid during the handler call */
    enum sim_route route;
    enum sim_ep ep;          /* for SIM_R_WORKER */
    const char *method;      /* borrowed from MHD */
    struct sim_port *target; /* for admin down/up: the port acted on */
    struct buf body;         /* JSON body, capped at SIM_JSON_BODY_MAX */
    bool too_big;

    /* multipart upload, streamed: the file's bytes are counted, not kept */
    struct MHD_PostProcessor *pp;
    bool form_unsupported; /* not multipart/form-data: no post processor */
    bool form_bad;         /* the post processor choked */
    struct buf call_id;    /* the call_id field, capped at SIM_FIELD_MAX */
    bool have_call_id;
    bool have_file;
    bool file_unnamed;
    struct buf filename; /* the file field's filename, capped at SIM_FIELD_MAX */
    uint64_t file_bytes;

    int64_t arrival_us; /* mono us when its headers had arrived: where latency starts */
    bool in_concurrent; /* counted in stats.concurrent and not yet uncounted */
    bool stop_after;    /* after the answer is sent, tell the main thread to stop this port */
};

/* The answer to a request, turned into HTTP in exactly one place (http.c). */
struct sim_reply {
    int status;   /* 0: drop the connection without answering */
    json_t *body; /* new reference or NULL (no body) */
    char *raw;    /* owned (malloc) or NULL: sent verbatim as the JSON body instead */
    size_t raw_len;
    char retry_after[64]; /* "" = no Retry-After header */
    const char *allow;    /* static Allow header for 405, or NULL */
};

/* Sets the answer to status with body {"error": <formatted message>}. Can't fail (the body is
 * left NULL when out of memory). */
void sim_reply_error(struct sim_reply *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets the answer to status with `body` (stolen). A NULL body (out of memory) makes it a 500. */
void sim_reply_json(struct sim_reply *r, int status, json_t *body);

/* ------------------------------------------------------------------------------------------
 * HTTP daemons (http.c).
 */

/* Starts p's daemon on cfg.host:p->port. Returns 0, or -1 after logging why. Main thread only. */
int sim_http_start(struct sim_port *p);

/* Stops p's daemon (closing every connection) if it runs. Main thread only. */
void sim_http_stop(struct sim_port *p);

/* From one of p's own request threads: sets p's mode to "refuse" and shuts p's listening socket
 * at once, so new connections are refused before the main thread stops the daemon (which this
 * thread cannot do: stopping joins it). Does nothing when p already refuses. */
void sim_http_quiesce(struct sim_port *p);

/* ------------------------------------------------------------------------------------------
 * Worker requests (worker.c): the path every upload/stage/llm request takes.
 */

/* What a worker request is about, once parsed. */
struct sim_job {
    enum sim_ep ep;
    json_t *body;                      /* parsed JSON body (owned), NULL for uploads */
    const char *call_id;               /* borrowed from body or from the request's form field */
    const char *key;                   /* the Idempotency-Key header (borrowed) */
    char call_id_buf[SIM_KEY_MAX + 1]; /* OpenAI protocol: the call id, from the key */
    int64_t prompt_tokens;             /* NLP: the request's prompt, in tokens (length / 4) */
};

/* Serves a worker request whose body is complete; fills r (status 0 = drop). */
void sim_worker_serve(struct sim_port *p, struct sim_req *req, struct sim_reply *r);

/* Blocks while p is in "hang" mode, at most SIM_HANG_MAX_MS. Returns the mode afterwards;
 * SIM_MODE_HANG means it timed out. */
enum sim_mode sim_worker_wait_hang(struct sim_port *p);

/* Role-specific halves, called by sim_worker_serve: validate before any capacity is taken
 * (returns 0, or -1 with r filled), produce after the latency (fills r). */
int sim_node_validate(struct sim_port *p, struct sim_req *req, struct sim_job *job,
                      struct sim_reply *r);
void sim_node_produce(struct sim_port *p, struct sim_req *req, struct sim_job *job,
                      struct sim_reply *r);
int sim_nlp_validate(struct sim_port *p, struct sim_job *job, struct sim_reply *r);
void sim_nlp_produce(struct sim_port *p, struct sim_job *job, struct sim_reply *r);

/* The OpenAI chat-completions form of the NLP API (openai.c). The stage comes from the
 * Idempotency-Key ({call_id}:llm1|llm2). Parse: fills job (ep, call_id, body) or r. */
int sim_openai_parse(struct sim_req *req, struct sim_job *job, struct sim_reply *r);
int sim_openai_validate(struct sim_port *p, struct sim_job *job, struct sim_reply *r);
void sim_openai_produce(struct sim_port *p, struct sim_job *job, struct sim_reply *r);

/* ------------------------------------------------------------------------------------------
 * Stats and keys (stats.c).
 */

/* Records one more request with `key` on p. Returns in *seen how many times the key was seen
 * before and in *was_ok whether it had been answered 2xx; updates the key counters. Returns 0,
 * or -1 when out of memory (counted as a new key). */
int sim_keys_touch(struct sim_port *p, const char *key, uint64_t *seen, bool *was_ok);

/* Marks key as answered 2xx on p. Can't fail (an absent key is ignored). */
void sim_keys_mark_ok(struct sim_port *p, const char *key);

/* Raises *max to at least v. Can't fail. */
void sim_stats_max(atomic_int *max, int v);

/* Counts one answer of a worker request. */
void sim_stats_response(struct sim_port *p, enum sim_ep ep, int status);

/* Zeroes every counter and forgets the keys; gauges (in_flight, queued, concurrent) are kept
 * and the maxima restart from them. Stored files are kept. */
void sim_stats_reset(struct sim_port *p);

/* The GET /stats object of p: a new reference, NULL when out of memory. */
json_t *sim_stats_json(struct sim_port *p);

/* ------------------------------------------------------------------------------------------
 * Admin routes (admin.c) and the control channel to the main thread (control.c).
 */

/* Serves /admin/down, /admin/up, /admin/nodes/{i}/..., /admin/nlp/..., /admin/rules. */
void sim_admin_serve(struct sim_port *p, struct sim_req *req, struct sim_reply *r);

/* Creates the control channel. Returns 0 or -1. */
int sim_control_init(struct sim *s);

/* Frees the control channel. Accepts a partly set up s. */
void sim_control_free(struct sim *s);

/* Asks the main thread to put target in mode and waits until it did. Returns 0; -1 when the
 * simulator is stopping, `from` goes down meanwhile, or the port could not be bound again. */
int sim_control_set_mode(struct sim *s, struct sim_port *from, struct sim_port *target,
                         enum sim_mode mode);

/* Asks the main thread to put target in mode, without waiting. */
void sim_control_post(struct sim *s, struct sim_port *target, enum sim_mode mode);

/* Makes SIGTERM and SIGINT ask the main thread to stop, and ignores SIGPIPE. Returns 0 or -1. */
int sim_control_install_signals(struct sim *s);

/* The main thread's loop: applies mode changes until asked to quit. Returns 0. */
int sim_control_run(struct sim *s);

/* Sets the mode of p and wakes every request waiting on p. Thread-safe; starting and stopping
 * the daemon is left to the main thread (sim_control_*). */
void sim_port_set_mode(struct sim_port *p, enum sim_mode mode);

#endif
