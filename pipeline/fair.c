/* Fair shares of a claim among batches, by priority: water-filling to one level. */
#include "pipeline/fair.h"

#include <stdbool.h>
#include <stdlib.h>

static int64_t weight_of(const int *weight, size_t i)
{
    return weight[i] > 1 ? weight[i] : 1;
}

/* The batch not yet settled whose waiting / weight is lowest (it fills up first), or n. */
static size_t lowest_ratio(const int64_t *waiting, const int *weight, size_t n, const bool *settled)
{
    size_t best = n;
    for (size_t i = 0; i < n; i++) {
        if (settled[i]) {
            continue;
        }
        if (best == n ||
            waiting[i] * weight_of(weight, best) < waiting[best] * weight_of(weight, i)) {
            best = i;
        }
    }
    return best;
}

int64_t fair_split(int64_t limit, const int64_t *waiting, const int *weight, size_t n, int64_t *out)
{
    bool settled_small[64];
    bool *settled = n <= 64 ? settled_small : malloc(n * sizeof *settled);
    int64_t left = limit > 0 ? limit : 0;
    int64_t total_weight = 0;
    for (size_t i = 0; i < n; i++) {
        out[i] = 0;
        if (settled != NULL) {
            settled[i] = waiting[i] <= 0;
        }
        total_weight += waiting[i] > 0 ? weight_of(weight, i) : 0;
    }
    if (settled == NULL) {
        /* No memory for the bookkeeping: first come, first served. */
        for (size_t i = 0; i < n && left > 0; i++) {
            out[i] = waiting[i] < left ? (waiting[i] > 0 ? waiting[i] : 0) : left;
            left -= out[i];
        }
        return (limit > 0 ? limit : 0) - left;
    }
    /* Batches whose whole wait fits under the common level take all of it. */
    for (;;) {
        size_t i = lowest_ratio(waiting, weight, n, settled);
        if (i == n || waiting[i] * total_weight > left * weight_of(weight, i)) {
            break;
        }
        out[i] = waiting[i];
        left -= waiting[i];
        total_weight -= weight_of(weight, i);
        settled[i] = true;
    }
    /* The others share what is left by weight (floored)... */
    int64_t share_of = left;
    for (size_t i = 0; i < n && total_weight > 0; i++) {
        if (!settled[i]) {
            out[i] = share_of * weight_of(weight, i) / total_weight;
            left -= out[i];
        }
    }
    /* ...and the rounding leftovers go one at a time to the batch furthest behind its part. */
    while (left > 0) {
        size_t best = n;
        for (size_t i = 0; i < n; i++) {
            if (out[i] >= waiting[i]) {
                continue;
            }
            if (best == n ||
                (out[i] + 1) * weight_of(weight, best) < (out[best] + 1) * weight_of(weight, i)) {
                best = i;
            }
        }
        if (best == n) {
            break;
        }
        out[best]++;
        left--;
    }
    if (settled != settled_small) {
        free(settled);
    }
    return (limit > 0 ? limit : 0) - left;
}
