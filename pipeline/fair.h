/* Fair shares of a claim among batches: in proportion to their priority, what one can't use
 * going to the others. Pure. */
#ifndef COFI_FAIR_H
#define COFI_FAIR_H

#include <stddef.h>
#include <stdint.h>

/* Splits limit calls among n batches: batch i waits with waiting[i] calls and has priority
 * weight[i] (>= 1; a weight below 1 counts as 1). Each gets a part in proportion to its weight,
 * never more than it has waiting; what a batch can't use is split among the others the same
 * way; rounding leftovers go one at a time to the batch furthest behind its part. Fills
 * out[i] and returns the total handed out (min(limit, sum of waiting)). Can't fail (without memory
 * for its bookkeeping, beyond 64 batches, it hands out first come, first served). */
int64_t fair_split(int64_t limit, const int64_t *waiting, const int *weight, size_t n,
                   int64_t *out);

#endif
