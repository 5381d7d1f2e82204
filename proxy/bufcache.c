/* Per-thread free lists for the objects every request or connection takes
 * and gives back: read buffers, write requests, requests and connections.
 *
 * Keep-alive connections give their read buffer back between requests (an
 * idle connection should cost little), so without a list every request
 * would malloc and free 64 kB twice. A connection takes a write request for
 * each write instead of carrying one (216 bytes) while it idles. A request
 * (4 kB with its header table) is past glibc's per-thread cache, and calloc
 * never uses that cache, so both would otherwise take malloc's slow path
 * every time. Each list holds at most CACHE_MAX; what a worker holds is
 * freed when its loop ends. */
#include <stdlib.h>

#include "proxy/proxy.h"

#define CACHE_MAX 64

typedef struct {
    void *item[CACHE_MAX];
    unsigned n;
} cache_t;

static _Thread_local cache_t bufs, wreqs, reqs, conns;

static void *cache_get(cache_t *c, size_t size)
{
    return c->n ? c->item[--c->n] : malloc(size);
}

static void cache_put(cache_t *c, void *p)
{
    if (!p)
        return;
    if (c->n < CACHE_MAX)
        c->item[c->n++] = p;
    else
        free(p);
}

static void cache_clear(cache_t *c)
{
    while (c->n)
        free(c->item[--c->n]);
}

void *gh__buf_get(void) { return cache_get(&bufs, GH_BUF_SIZE); }
void gh__buf_put(void *b) { cache_put(&bufs, b); }
gh_write_req_t *gh__wreq_get(void) { return cache_get(&wreqs, sizeof(gh_write_req_t)); }
void gh__wreq_put(gh_write_req_t *w) { cache_put(&wreqs, w); }
gh_req_t *gh__req_mem_get(void) { return cache_get(&reqs, sizeof(gh_req_t)); }
void gh__req_mem_put(gh_req_t *r) { cache_put(&reqs, r); }
gh_conn_t *gh__conn_mem_get(void) { return cache_get(&conns, sizeof(gh_conn_t)); }
void gh__conn_mem_put(gh_conn_t *c) { cache_put(&conns, c); }

void gh__buf_cache_clear(void)
{
    cache_clear(&bufs);
    cache_clear(&wreqs);
    cache_clear(&reqs);
    cache_clear(&conns);
}
