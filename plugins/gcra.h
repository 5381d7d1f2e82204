/* The Generic Cell Rate Algorithm as pure arithmetic on integer nanoseconds,
 * with no clock and no locking, so that tests can drive it with any time.
 *
 * A key's whole state is its TAT, the theoretical arrival time: when the key
 * would be back to an empty bucket if it sent nothing more. With the emission
 * interval T = 1/rate and the tolerance tau = (burst - 1) * T, a request at
 * time t conforms when max(TAT, t) - t <= tau, and then moves TAT to
 * max(TAT, t) + T. A fresh key (TAT <= t) can therefore send `burst` requests
 * at once (the k-th sees a backlog of (k - 1) * T), and after that one every
 * T: exactly `rate` per second. A rejected request does not move TAT. */
#ifndef GH_GCRA_H
#define GH_GCRA_H

#include <stdbool.h>
#include <stdint.h>

#define GH_NS_PER_S 1000000000ull

typedef struct gh__gcra {
    uint64_t interval_ns;   /* T, at least 1 */
    uint64_t tolerance_ns;  /* tau = (burst - 1) * T */
    uint32_t burst;
} gh__gcra_t;

/* What a decision tells the client, in the units of the headers. */
typedef struct gh__gcra_result {
    bool allowed;
    uint32_t limit;         /* RateLimit-Limit: the burst */
    uint32_t remaining;     /* RateLimit-Remaining: requests that would pass now */
    uint64_t reset_s;       /* RateLimit-Reset: seconds until back to a full burst */
    uint64_t retry_after_s; /* Retry-After when rejected (>= 1), else 0 */
} gh__gcra_result_t;

/* Largest burst accepted: keeps tau well inside 64 bits for the slowest
 * rate the config can express (1/h, T = 3.6e12 ns). */
#define GH_GCRA_MAX_BURST 1000000u

/* rate in requests per second (> 0), burst in 1..GH_GCRA_MAX_BURST.
 * Returns 0, or -1 for values out of range. */
int gh__gcra_init(gh__gcra_t *g, double rate_per_s, uint32_t burst);

/* Decides a request at now for the key whose TAT is *tat (0 for a new key),
 * updates *tat when it is allowed, and fills res. Returns res->allowed. */
bool gh__gcra_update(const gh__gcra_t *g, uint64_t *tat, uint64_t now,
                     gh__gcra_result_t *res);

#endif
