/* A few read buffers kept for reuse. Keep-alive connections give their
 * buffer back between requests (an idle connection should cost little), so
 * without this every request would malloc and free 64 kB twice. Write
 * requests to clients are kept the same way: a connection takes one for
 * each write instead of carrying one (216 bytes) while it idles. */
#include <stdlib.h>

#include "proxy/proxy.h"

#define CACHE_MAX 64

static _Thread_local void *cache[CACHE_MAX];
static _Thread_local unsigned ncache;

void *gh__buf_get(void)
{
    if (ncache)
        return cache[--ncache];
    return malloc(GH_BUF_SIZE);
}

void gh__buf_put(void *b)
{
    if (!b)
        return;
    if (ncache < CACHE_MAX)
        cache[ncache++] = b;
    else
        free(b);
}

static _Thread_local gh_write_req_t *wcache[CACHE_MAX];
static _Thread_local unsigned nwcache;

gh_write_req_t *gh__wreq_get(void)
{
    if (nwcache)
        return wcache[--nwcache];
    return malloc(sizeof(gh_write_req_t));
}

void gh__wreq_put(gh_write_req_t *w)
{
    if (nwcache < CACHE_MAX)
        wcache[nwcache++] = w;
    else
        free(w);
}

void gh__buf_cache_clear(void)
{
    while (ncache)
        free(cache[--ncache]);
    while (nwcache)
        free(wcache[--nwcache]);
}
