/* Fixed-bucket histograms with atomic counters. */
#include "common/histo.h"

#include <string.h>

void histo_init(struct histo *h, const int64_t *bounds_us, size_t nbounds)
{
    h->bounds_us = bounds_us;
    h->nbounds = nbounds > HISTO_MAX_BOUNDS ? HISTO_MAX_BOUNDS : nbounds;
    for (size_t i = 0; i <= HISTO_MAX_BOUNDS; i++) {
        atomic_init(&h->counts[i], 0);
    }
    atomic_init(&h->sum_us, 0);
}

void histo_observe(struct histo *h, int64_t us)
{
    if (us < 0) {
        us = 0;
    }
    size_t i = 0;
    while (i < h->nbounds && us > h->bounds_us[i]) {
        i++;
    }
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint_fast64_t)us, memory_order_relaxed);
}

void histo_read(const struct histo *h, struct histo_snapshot *out)
{
    memset(out, 0, sizeof *out);
    out->nbounds = h->nbounds;
    for (size_t i = 0; i < h->nbounds; i++) {
        out->bounds_s[i] = (double)h->bounds_us[i] / 1e6;
    }
    for (size_t i = 0; i <= h->nbounds; i++) {
        out->counts[i] = atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        out->count += out->counts[i];
    }
    out->sum_s = (double)atomic_load_explicit(&h->sum_us, memory_order_relaxed) / 1e6;
}
