/* The deadline heap (contract in dheap.h): the usual array heap, children
 * of i at 2i+1 and 2i+2, with each connection's place written back into it
 * whenever it moves. */
#include <stdlib.h>

#include "proxy/dheap.h"
#include "proxy/proxy-t.h"

static inline void put(gh_dheap_t *h, uint32_t i, gh_conn_t *c)
{
    h->item[i] = c;
    c->heap_idx = i + 1;
}

static void up(gh_dheap_t *h, uint32_t i)
{
    gh_conn_t *c = h->item[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        gh_conn_t *p = h->item[parent];
        if (p->timer_at <= c->timer_at)
            break;
        put(h, i, p);
        i = parent;
    }
    put(h, i, c);
}

static void down(gh_dheap_t *h, uint32_t i)
{
    gh_conn_t *c = h->item[i];
    for (;;) {
        uint32_t k = 2 * i + 1;
        if (k >= h->n)
            break;
        if (k + 1 < h->n && h->item[k + 1]->timer_at < h->item[k]->timer_at)
            k++;
        if (c->timer_at <= h->item[k]->timer_at)
            break;
        put(h, i, h->item[k]);
        i = k;
    }
    put(h, i, c);
}

bool gh_dheap_reserve(gh_dheap_t *h, uint32_t want)
{
    if (want <= h->cap)
        return true;
    uint32_t cap = h->cap ? h->cap : 256;
    while (cap < want) {
        if (cap > UINT32_MAX / 2 / sizeof(gh_conn_t *))
            return false;
        cap *= 2;
    }
    gh_conn_t **item = realloc(h->item, cap * sizeof *item);
    if (!item)
        return false;
    h->item = item;
    h->cap = cap;
    return true;
}

void gh_dheap_set(gh_dheap_t *h, gh_conn_t *c, uint64_t at)
{
    if (c->heap_idx == 0) {
        c->timer_at = at;
        put(h, h->n++, c);
        up(h, h->n - 1);
        return;
    }
    bool earlier = at < c->timer_at;
    c->timer_at = at;
    if (earlier)
        up(h, c->heap_idx - 1);
    else
        down(h, c->heap_idx - 1);
}

void gh_dheap_remove(gh_dheap_t *h, gh_conn_t *c)
{
    if (c->heap_idx == 0)
        return;
    uint32_t i = c->heap_idx - 1;
    c->heap_idx = 0;
    gh_conn_t *last = h->item[--h->n];
    if (last == c)
        return;
    put(h, i, last);
    if (i > 0 && h->item[(i - 1) / 2]->timer_at > last->timer_at)
        up(h, i);
    else
        down(h, i);
}

gh_conn_t *gh_dheap_top(const gh_dheap_t *h)
{
    return h->n ? h->item[0] : NULL;
}

void gh_dheap_free(gh_dheap_t *h)
{
    free(h->item);
    h->item = NULL;
    h->n = h->cap = 0;
}
