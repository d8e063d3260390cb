/* A fixed-bucket latency histogram updated with relaxed atomics: cheap on hot paths. */
#ifndef COFI_HISTO_H
#define COFI_HISTO_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HISTO_MAX_BOUNDS 20

/* Invariants: bounds_us is ascending and static; counts[nbounds] counts what passed the last
 * bound (+Inf). Zero it with histo_init before use; no destructor. */
struct histo {
    const int64_t *bounds_us; /* borrowed: the upper bounds, in microseconds */
    size_t nbounds;           /* <= HISTO_MAX_BOUNDS */
    atomic_uint_fast64_t counts[HISTO_MAX_BOUNDS + 1];
    atomic_uint_fast64_t sum_us;
};

/* What a histogram held at one moment, in the units Prometheus wants (seconds). counts are
 * per bucket (not cumulative); count is their sum, so _count always equals the +Inf bucket. */
struct histo_snapshot {
    size_t nbounds;
    double bounds_s[HISTO_MAX_BOUNDS];
    uint64_t counts[HISTO_MAX_BOUNDS + 1];
    uint64_t count;
    double sum_s;
};

/* Prepares h with nbounds (at most HISTO_MAX_BOUNDS, more are ignored) static bounds.
 * Not thread-safe (call before sharing h); can't fail. */
void histo_init(struct histo *h, const int64_t *bounds_us, size_t nbounds);

/* Counts one observation of us microseconds (negative counts as 0). Thread-safe, lock-free;
 * can't fail. */
void histo_observe(struct histo *h, int64_t us);

/* Copies h into out. Thread-safe; can't fail. */
void histo_read(const struct histo *h, struct histo_snapshot *out);

#endif
