/* GCRA decisions (plugins/gcra.h). Everything is integer nanoseconds: a rate
 * such as 10/s is T = 100000000 ns exactly, and the counts the tests expect
 * (burst at once, then rate per second) hold without float drift. */
#include "plugins/gcra.h"


static uint64_t ceil_s(uint64_t ns)
{
    return ns / GH_NS_PER_S + (ns % GH_NS_PER_S ? 1 : 0);
}

int gh__gcra_init(gh__gcra_t *g, double rate_per_s, uint32_t burst)
{
    if (!(rate_per_s > 0) || burst < 1 || burst > GH_GCRA_MAX_BURST)
        return -1;
    double t = (double)GH_NS_PER_S / rate_per_s + 0.5;     /* rounded below */
    /* Slower than 1/h is not expressible in config; faster than 1/ns is
     * "no limit" in practice and T = 1 keeps the arithmetic sane. */
    if (t > 3.6e12 + 1)
        return -1;
    g->interval_ns = t < 1 ? 1 : (uint64_t)t;
    g->tolerance_ns = (uint64_t)(burst - 1) * g->interval_ns;
    g->burst = burst;
    return 0;
}

bool gh__gcra_update(const gh__gcra_t *g, uint64_t *tat, uint64_t now,
                     gh__gcra_result_t *res)
{
    uint64_t start = *tat > now ? *tat : now;
    uint64_t backlog = start - now;     /* time the key is "ahead" of its rate */
    res->limit = g->burst;
    if (backlog > g->tolerance_ns) {
        res->allowed = false;
        res->remaining = 0;
        res->reset_s = ceil_s(backlog);
        /* The next request conforms once the backlog is down to tau. */
        res->retry_after_s = ceil_s(backlog - g->tolerance_ns);
        return false;
    }
    *tat = start + g->interval_ns;
    res->allowed = true;
    /* After this one the backlog is backlog + T; k more pass now while
     * backlog + k * T <= tau, i.e. k = floor((tau - backlog) / T). */
    res->remaining = (uint32_t)((g->tolerance_ns - backlog) / g->interval_ns);
    res->reset_s = ceil_s(backlog + g->interval_ns);
    res->retry_after_s = 0;
    return true;
}
