/* The arithmetic of shares: how much of a resource's limit one instance may hold. Pure. */
#ifndef COFI_SHARES_H
#define COFI_SHARES_H

/* Every limited resource (the NLP API, each node) has a total of requests in flight that all
 * instances together must never exceed. Each instance holds a share of it in instance_shares;
 * it negotiates under a table lock, so it sees every other instance's share (a dead instance's
 * included, held while its requests may still run) and no one changes them meanwhile. The
 * invariant: the shares of a resource add up to at most its total, and no instance has more
 * requests in flight than its share. These functions keep it; none can fail. */

/* The fair share of total for the instance of rank `rank` (0-based, by id) among `live`
 * instances (live < 1 counts as 1): total / live, plus one for each of the first
 * total % live ranks. */
int shares_fair(int total, int live, int rank);

/* What the instance wants to hold: its fair share, but no more than what the others leave
 * (total - others, never below 0). */
int shares_want(int total, int fair, int others);

/* The share to publish next, from the one held, the one wanted and the requests in flight
 * read AFTER the lane's limit was lowered to `want` (so they can only fall): growing takes
 * want at once (it is free); shrinking gives up only what is not in use — never below
 * min(held, in_flight) — and the rest on a later negotiation. */
int shares_next(int held, int want, int in_flight);

/* The lane's limit to go with a published share: min(share, want), never below 0. */
int shares_lane_limit(int share, int want);

#endif
