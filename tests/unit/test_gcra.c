/* GCRA arithmetic (plugins/gcra.c) and the rate-limit key table
 * (plugins/rltable.c), driven by a fake clock: time is whatever number the
 * test passes. */
#include <pthread.h>
#include <stdint.h>
#include "plugins/gcra.h"
#include "plugins/rltable.h"
#include "tests/unit/test.h"

#define MS 1000000ull
#define S GH_NS_PER_S

/* Requests a client sending at every step (ns) gets through in [0, end]. */
static int flood(const gh__gcra_t *g, uint64_t step, uint64_t end, bool inclusive)
{
    uint64_t tat = 0;
    int ok = 0;
    gh__gcra_result_t r;
    for (uint64_t t = 0; inclusive ? t <= end : t < end; t += step) {
        /* as fast as it can: keep sending while requests pass */
        while (gh__gcra_update(g, &tat, t, &r))
            ok++;
    }
    return ok;
}

static void test_init(void)
{
    gh__gcra_t g;
    CHECK_INT(gh__gcra_init(&g, 10.0, 20), 0);
    CHECK_INT(g.interval_ns, 100 * MS);
    CHECK_INT(g.tolerance_ns, 19 * 100 * MS);
    CHECK_INT(g.burst, 20);
    CHECK_INT(gh__gcra_init(&g, 10000.0 / 3600.0, 1), 0);
    CHECK_INT(g.interval_ns, 360 * MS);
    CHECK_INT(g.tolerance_ns, 0);
    CHECK_INT(gh__gcra_init(&g, 1.0 / 3600.0, GH_GCRA_MAX_BURST), 0);    /* slowest */
    CHECK_INT(gh__gcra_init(&g, 1e12, 1), 0);
    CHECK_INT(g.interval_ns, 1);
    CHECK_INT(gh__gcra_init(&g, 0, 1), -1);
    CHECK_INT(gh__gcra_init(&g, 10, 0), -1);
    CHECK_INT(gh__gcra_init(&g, 10, GH_GCRA_MAX_BURST + 1), -1);
    CHECK_INT(gh__gcra_init(&g, 1.0 / 7200.0, 1), -1);
}

static void test_flood(void)
{
    gh__gcra_t g;
    gh__gcra_init(&g, 10.0, 20);
    /* The contract: 3 s at full speed with rate 10/s, burst 20 gives 20 + 30,
     * give or take one. Burst at t=0, then one every 100 ms: t = 0.1 .. 2.9
     * within [0, 3 s), and t = 3.0 too when it is included. */
    CHECK_INT(flood(&g, 1 * MS, 3 * S, true), 50);
    CHECK_INT(flood(&g, 1 * MS, 3 * S, false), 49);
    CHECK_INT(flood(&g, 100000, 3 * S, true), 50);
    /* The burst passes at once, and not one more. */
    CHECK_INT(flood(&g, 1 * MS, 0, true), 20);
    CHECK_INT(flood(&g, 1 * MS, 99 * MS, true), 20);
    CHECK_INT(flood(&g, 1 * MS, 100 * MS, true), 21);

    /* A rate that is not a whole number of ns: 7/s over 10 s, burst 3. */
    gh__gcra_init(&g, 7.0, 3);
    int n = flood(&g, 1 * MS, 10 * S, true);
    CHECK(n >= 72 && n <= 74);
    /* 600/m is 10/s. */
    gh__gcra_init(&g, 600.0 / 60.0, 20);
    CHECK_INT(flood(&g, 1 * MS, 3 * S, true), 50);
    /* A steady client below the rate is never refused. */
    gh__gcra_init(&g, 10.0, 1);
    uint64_t tat = 0;
    gh__gcra_result_t r;
    int refused = 0;
    for (uint64_t t = 0; t < 10 * S; t += 100 * MS)
        refused += !gh__gcra_update(&g, &tat, t, &r);
    CHECK_INT(refused, 0);
}

static void test_headers(void)
{
    gh__gcra_t g;
    gh__gcra_result_t r;
    uint64_t tat = 0;
    gh__gcra_init(&g, 10.0, 20);
    CHECK(gh__gcra_update(&g, &tat, 0, &r));
    CHECK_INT(r.limit, 20);
    CHECK_INT(r.remaining, 19);
    CHECK_INT(r.reset_s, 1);            /* 0.1 s, rounded up */
    CHECK_INT(r.retry_after_s, 0);
    for (int i = 0; i < 18; i++)
        gh__gcra_update(&g, &tat, 0, &r);
    CHECK_INT(r.remaining, 1);
    CHECK(gh__gcra_update(&g, &tat, 0, &r));    /* the 20th */
    CHECK_INT(r.remaining, 0);
    CHECK_INT(r.reset_s, 2);            /* 20 * 0.1 s */
    CHECK(!gh__gcra_update(&g, &tat, 0, &r));
    CHECK_INT(r.remaining, 0);
    CHECK_INT(r.retry_after_s, 1);      /* 0.1 s, rounded up */
    CHECK_INT(r.reset_s, 2);
    CHECK_INT(tat, 2 * S);              /* a refusal moves nothing */
    /* 50 ms later one slot is 50 ms away: still refused, Retry-After 1. */
    CHECK(!gh__gcra_update(&g, &tat, 50 * MS, &r));
    CHECK_INT(r.retry_after_s, 1);
    CHECK(gh__gcra_update(&g, &tat, 100 * MS, &r));
    CHECK_INT(r.remaining, 0);
    /* Idle for long: a full burst again. */
    CHECK(gh__gcra_update(&g, &tat, 60 * S, &r));
    CHECK_INT(r.remaining, 19);

    /* 1/m, burst 3. */
    tat = 0;
    gh__gcra_init(&g, 1.0 / 60.0, 3);
    for (int i = 0; i < 3; i++)
        CHECK(gh__gcra_update(&g, &tat, 0, &r));
    CHECK_INT(r.reset_s, 180);
    CHECK(!gh__gcra_update(&g, &tat, 0, &r));
    CHECK_INT(r.retry_after_s, 60);
    CHECK_INT(r.reset_s, 180);
    CHECK(!gh__gcra_update(&g, &tat, 59 * S + 500 * MS, &r));
    CHECK_INT(r.retry_after_s, 1);
    CHECK(gh__gcra_update(&g, &tat, 60 * S, &r));
    CHECK_INT(r.remaining, 0);
    CHECK_INT(r.reset_s, 180);
}

static void test_siphash(void)
{
    /* The reference vectors of the SipHash paper: key 00..0f, messages
     * 00..(n-1). */
    uint64_t k0 = 0x0706050403020100ull, k1 = 0x0f0e0d0c0b0a0908ull;
    uint8_t msg[16];
    for (int i = 0; i < 16; i++)
        msg[i] = (uint8_t)i;
    CHECK(gh__siphash24(k0, k1, msg, 0) == 0x726fdb47dd0e0e31ull);
    CHECK(gh__siphash24(k0, k1, msg, 1) == 0x74f839c593dc67fdull);
    CHECK(gh__siphash24(k0, k1, msg, 8) == 0x93f5f5799a932462ull);
    CHECK(gh__siphash24(k0, k1, msg, 15) == 0xa129ca6149be45e5ull);
}

static void test_table_bound(void)
{
    gh__rl_table_t *t = gh__rl_table_new(4, 1);
    gh__gcra_t slow, fast;
    gh__gcra_init(&slow, 1.0 / 3600.0, 1);
    gh__gcra_init(&fast, 1000.0, 1);
    gh__gcra_result_t r;
    gh__rl_entry_t *slot;
    char key[16];
    /* 100 keys at once, none expired: the table stays at its bound. */
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "k%d", i);
        CHECK_INT(gh__rl_take(t, gh__rl_hash(t, 'i', key, (size_t)n), &slow, 0, 0, &r, &slot),
                  GH__RL_ALLOWED);
        CHECK(gh__rl_count(t) <= 4);
    }
    gh__rl_table_free(t);

    /* Expired entries go first, even when not the least recently used. */
    t = gh__rl_table_new(4, 1);
    uint64_t b = gh__rl_hash(t, 'i', "b", 1), a = gh__rl_hash(t, 'i', "a", 1);
    uint64_t c = gh__rl_hash(t, 'i', "c", 1), d = gh__rl_hash(t, 'i', "d", 1);
    uint64_t e = gh__rl_hash(t, 'i', "e", 1);
    gh__rl_take(t, b, &slow, 0, 0, &r, &slot);
    gh__rl_take(t, a, &fast, 0, 0, &r, &slot);     /* TAT 1 ms */
    gh__rl_take(t, c, &slow, 0, 0, &r, &slot);
    gh__rl_take(t, d, &slow, 0, 0, &r, &slot);
    CHECK_INT(gh__rl_count(t), 4);
    CHECK_INT(gh__rl_take(t, e, &slow, 0, 10 * MS, &r, &slot), GH__RL_ALLOWED);
    CHECK_INT(gh__rl_count(t), 4);
    /* b, c and d kept their state (the slow rate refuses a second one). */
    CHECK_INT(gh__rl_take(t, b, &slow, 0, 10 * MS, &r, &slot), GH__RL_RATE);
    CHECK_INT(gh__rl_take(t, c, &slow, 0, 10 * MS, &r, &slot), GH__RL_RATE);
    CHECK_INT(gh__rl_take(t, d, &slow, 0, 10 * MS, &r, &slot), GH__RL_RATE);
    CHECK_INT(r.retry_after_s, 3600);
    /* Once their TATs pass, idle entries are dropped as they age out. */
    for (int i = 0; i < 3; i++)
        gh__rl_take(t, e, &slow, 0, 2 * 3600 * S, &r, &slot);
    CHECK_INT(gh__rl_count(t), 1);
    gh__rl_table_free(t);
}

static void test_concurrency(void)
{
    gh__rl_table_t *t = gh__rl_table_new(1, 1);
    gh__gcra_t g;
    gh__gcra_init(&g, 1.0, 2);
    gh__gcra_result_t r;
    gh__rl_entry_t *s1, *s2, *s3;
    uint64_t k = gh__rl_hash(t, 'k', "n8n", 3);
    CHECK_INT(gh__rl_take(t, k, &g, 1, 0, &r, &s1), GH__RL_ALLOWED);
    CHECK(s1 != NULL);
    CHECK_INT(gh__rl_inflight(t, k), 1);
    CHECK_INT(gh__rl_take(t, k, &g, 1, 0, &r, &s2), GH__RL_CONCURRENCY);
    CHECK(s2 == NULL);
    CHECK_INT(r.retry_after_s, 1);
    CHECK_INT(r.remaining, 0);
    CHECK_INT(r.limit, 2);
    CHECK_INT(r.reset_s, 1);            /* the one request sent: 1 s at 1/s */
    /* An entry with a request in flight is never evicted: the table grows
     * past its bound of 1 instead. */
    uint64_t other = gh__rl_hash(t, 'k', "other", 5);
    CHECK_INT(gh__rl_take(t, other, &g, 0, 0, &r, &s3), GH__RL_ALLOWED);
    CHECK_INT(gh__rl_count(t), 2);
    CHECK_INT(gh__rl_inflight(t, k), 1);
    gh__rl_release(t, s1);
    CHECK_INT(gh__rl_inflight(t, k), 0);
    /* The refusal for concurrency took no token: the second of the burst of
     * 2 still passes, the third does not. */
    CHECK_INT(gh__rl_take(t, k, &g, 1, 0, &r, &s1), GH__RL_ALLOWED);
    gh__rl_release(t, s1);
    CHECK_INT(gh__rl_take(t, k, &g, 1, 0, &r, &s1), GH__RL_RATE);
    CHECK(s1 == NULL);
    gh__rl_release(t, NULL);
    gh__rl_table_free(t);
}

/* Threads take and release slots of a few shared keys; every slot comes
 * back, whatever the interleaving. */
static gh__rl_table_t *shared;

static void *worker(void *arg)
{
    gh__gcra_t g;
    gh__gcra_init(&g, 1e9, GH_GCRA_MAX_BURST);
    uintptr_t id = (uintptr_t)arg;
    for (unsigned i = 0; i < 20000; i++) {
        char key[8];
        int n = snprintf(key, sizeof(key), "k%u", (unsigned)((i + id) % 7));
        gh__gcra_result_t r;
        gh__rl_entry_t *slot;
        if (gh__rl_take(shared, gh__rl_hash(shared, 'i', key, (size_t)n), &g, 1000, i, &r,
                        &slot) == GH__RL_ALLOWED)
            gh__rl_release(shared, slot);
    }
    return NULL;
}

static void test_threads(void)
{
    shared = gh__rl_table_new(64, 4);
    pthread_t th[4];
    for (uintptr_t i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 7; i++) {
        char key[8];
        int n = snprintf(key, sizeof(key), "k%d", i);
        CHECK_INT(gh__rl_inflight(shared, gh__rl_hash(shared, 'i', key, (size_t)n)), 0);
    }
    CHECK(gh__rl_count(shared) <= 7);
    gh__rl_table_free(shared);
}

int main(void)
{
    test_init();
    test_flood();
    test_headers();
    test_siphash();
    test_table_bound();
    test_concurrency();
    test_threads();
    TEST_MAIN_END();
}
