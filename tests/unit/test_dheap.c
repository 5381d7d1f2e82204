/* proxy/dheap.c: the deadline heap, against a plain array of the same
 * entries. Random sets (earlier, later, new), removals and pops; after each
 * step every parent is due no later than its children, every entry knows
 * its place, and the top is the earliest entry of the array. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "proxy/dheap.h"
#include "proxy/proxy-t.h"
#include "test.h"

#define N 600

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int check(const gh_dheap_t *h, gh_conn_t *conns, size_t n)
{
    uint32_t in = 0;
    gh_conn_t *earliest = NULL;
    for (size_t i = 0; i < n; i++) {
        gh_conn_t *c = &conns[i];
        if (c->heap_idx == 0)
            continue;
        in++;
        if (c->heap_idx > h->n || h->item[c->heap_idx - 1] != c)
            return 0;
        if (!earliest || c->timer_at < earliest->timer_at)
            earliest = c;
    }
    if (in != h->n)
        return 0;
    for (uint32_t i = 1; i < h->n; i++)
        if (h->item[(i - 1) / 2]->timer_at > h->item[i]->timer_at)
            return 0;
    gh_conn_t *top = gh_dheap_top(h);
    return earliest ? top && top->timer_at == earliest->timer_at : top == NULL;
}

static void test_random_operations(void)
{
    gh_conn_t *conns = calloc(N, sizeof *conns);
    gh_dheap_t h = { 0 };
    CHECK(conns != NULL);
    CHECK(gh_dheap_reserve(&h, N));
    CHECK(h.cap >= N);
    int bad = 0;
    for (int step = 0; step < 20000; step++) {
        gh_conn_t *c = &conns[next() % N];
        switch (next() % 4) {
        case 0: /* later or new */
            gh_dheap_set(&h, c, c->timer_at + next() % 5000);
            break;
        case 1: /* earlier (a request whose next deadline is nearer) */
            gh_dheap_set(&h, c, c->timer_at > 3000 ? c->timer_at - next() % 3000 : 0);
            break;
        case 2:
            gh_dheap_remove(&h, c);
            break;
        case 3: { /* the timer fires: pop what is due at the top's time */
            gh_conn_t *top = gh_dheap_top(&h);
            if (top) {
                uint64_t now = top->timer_at;
                uint64_t last = 0;
                for (gh_conn_t *t; (t = gh_dheap_top(&h)) != NULL && t->timer_at <= now;) {
                    if (t->timer_at < last)
                        bad++;
                    last = t->timer_at;
                    gh_dheap_remove(&h, t);
                }
            }
            break;
        }
        }
        if (!check(&h, conns, N))
            bad++;
    }
    CHECK_INT(bad, 0);

    /* drained in order */
    uint64_t last = 0;
    int out_of_order = 0;
    for (gh_conn_t *t; (t = gh_dheap_top(&h)) != NULL;) {
        if (t->timer_at < last)
            out_of_order++;
        last = t->timer_at;
        gh_dheap_remove(&h, t);
    }
    CHECK_INT(out_of_order, 0);
    CHECK_INT(h.n, 0);
    gh_dheap_free(&h);
    free(conns);
}

static void test_remove_absent_and_reserve(void)
{
    gh_dheap_t h = { 0 };
    gh_conn_t a = { 0 }, b = { 0 };
    CHECK(gh_dheap_top(&h) == NULL);
    CHECK(gh_dheap_reserve(&h, 1));
    uint32_t cap = h.cap;
    CHECK(gh_dheap_reserve(&h, cap));
    CHECK_INT(h.cap, cap);                  /* enough already: unchanged */
    CHECK(gh_dheap_reserve(&h, cap + 1));
    CHECK(h.cap > cap);
    gh_dheap_remove(&h, &a);                /* not in: nothing happens */
    CHECK_INT(h.n, 0);
    gh_dheap_set(&h, &a, 50);
    gh_dheap_set(&h, &b, 70);
    CHECK(gh_dheap_top(&h) == &a);
    gh_dheap_set(&h, &b, 10);               /* moved earlier: now the top */
    CHECK(gh_dheap_top(&h) == &b);
    gh_dheap_set(&h, &b, 90);               /* moved later: a again */
    CHECK(gh_dheap_top(&h) == &a);
    gh_dheap_remove(&h, &a);
    CHECK(gh_dheap_top(&h) == &b && a.heap_idx == 0 && b.heap_idx == 1);
    gh_dheap_remove(&h, &b);
    CHECK(gh_dheap_top(&h) == NULL && h.n == 0);
    gh_dheap_free(&h);
}

int main(void)
{
    test_random_operations();
    test_remove_absent_and_reserve();
    TEST_MAIN_END();
}
