/* A few read buffers kept for reuse. Keep-alive connections give their
 * buffer back between requests (an idle connection should cost little), so
 * without this every request would malloc and free 64 kB twice. */
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

void gh__buf_cache_clear(void)
{
    while (ncache)
        free(cache[--ncache]);
}
