/* The arithmetic of shares (see shares.h for the invariant it keeps). */
#include "pipeline/shares.h"

int shares_fair(int total, int live, int rank)
{
    if (total <= 0) {
        return 0;
    }
    if (live < 1) {
        live = 1;
    }
    if (rank < 0) {
        rank = 0;
    }
    return total / live + (rank < total % live ? 1 : 0);
}

int shares_want(int total, int fair, int others)
{
    int free_part = total - others;
    if (free_part < 0) {
        free_part = 0;
    }
    return fair < free_part ? fair : free_part;
}

int shares_next(int held, int want, int in_flight)
{
    if (want >= held) {
        return want;
    }
    int busy = in_flight < held ? in_flight : held;
    return busy > want ? busy : want;
}

int shares_lane_limit(int share, int want)
{
    int limit = share < want ? share : want;
    return limit > 0 ? limit : 0;
}
