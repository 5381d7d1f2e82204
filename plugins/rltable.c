/* The sharded, bounded key table of rate_limit (plugins/rltable.h). */
#include "plugins/rltable.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>
#include "plugins/builtin.h"

/* Entries taken from malloc at a time. */
#define CHUNK 64
/* Idle entries looked at, from the old end, for one that can go when a
 * shard is full: bounds the time a shard lock is held. */
#define SCAN 32
/* Expired entries dropped per call from the old end, for the same reason. */
#define EXPIRE 4

struct gh__rl_entry {
    uint64_t hash;
    uint64_t tat;           /* GCRA theoretical arrival time, ns */
    uint32_t inflight;
    uint32_t shard;
    gh__rl_entry_t *next;   /* bucket chain, or the free list */
    gh__rl_entry_t *older, *newer;  /* LRU list */
};

typedef struct chunk {
    struct chunk *next;
    gh__rl_entry_t e[CHUNK];
} chunk_t;

typedef struct shard {
    alignas(64) pthread_mutex_t lock;   /* a cache line apart from the next shard */
    gh__rl_entry_t **buckets;           /* allocated on first use */
    size_t mask;
    size_t count, cap;
    gh__rl_entry_t *oldest, *newest;
    gh__rl_entry_t *free;
    chunk_t *chunks;
} shard_t;

struct gh__rl_table {
    shard_t *shards;
    unsigned nshards;
    uint64_t k0, k1;        /* SipHash key */
};

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                            \
    do {                                                                    \
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);           \
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;                              \
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;                              \
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);           \
    } while (0)

uint64_t gh__siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    size_t left = len;
    for (; left >= 8; p += 8, left -= 8) {
        uint64_t m = 0;
        for (int i = 7; i >= 0; i--)
            m = m << 8 | p[i];
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t m = (uint64_t)(len & 0xff) << 56;
    for (size_t i = 0; i < left; i++)
        m |= (uint64_t)p[i] << (8 * i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t gh__rl_hash(const gh__rl_table_t *t, char kind, const char *key, size_t len)
{
    /* A different SipHash key per kind: independent functions. */
    return gh__siphash24(t->k0 ^ (uint8_t)kind, t->k1, key, len);
}

gh__rl_table_t *gh__rl_table_new(size_t max_keys, unsigned nshards)
{
    if (nshards == 0)
        nshards = 1;
    gh__rl_table_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->shards = aligned_alloc(alignof(shard_t), nshards * sizeof(shard_t));
    if (!t->shards) {
        free(t);
        return NULL;
    }
    memset(t->shards, 0, nshards * sizeof(shard_t));
    t->nshards = nshards;
    size_t cap = max_keys / nshards ? max_keys / nshards : 1;
    for (unsigned i = 0; i < nshards; i++) {
        pthread_mutex_init(&t->shards[i].lock, NULL);
        t->shards[i].cap = cap;
    }
    uint64_t k[2];
    if (RAND_bytes((unsigned char *)k, sizeof(k)) != 1) {
        /* Only the flooding resistance rests on this: carry on with what
         * little entropy is at hand rather than refuse to start. */
        k[0] = gh__now_ns() ^ (uint64_t)(uintptr_t)t;
        k[1] = rotl(k[0], 29) ^ 0x9e3779b97f4a7c15ull;
    }
    t->k0 = k[0];
    t->k1 = k[1];
    return t;
}

void gh__rl_table_free(gh__rl_table_t *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->nshards; i++) {
        shard_t *s = &t->shards[i];
        for (chunk_t *c = s->chunks, *next; c; c = next) {
            next = c->next;
            free(c);
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    free(t->shards);
    free(t);
}

static shard_t *shard_of(gh__rl_table_t *t, uint64_t hash)
{
    /* High bits pick the shard, low bits the bucket. */
    return &t->shards[(hash >> 32) % t->nshards];
}

static gh__rl_entry_t *lookup(shard_t *s, uint64_t hash)
{
    if (!s->buckets)
        return NULL;
    for (gh__rl_entry_t *e = s->buckets[hash & s->mask]; e; e = e->next)
        if (e->hash == hash)
            return e;
    return NULL;
}

static void lru_unlink(shard_t *s, gh__rl_entry_t *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        s->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        s->newest = e->older;
    e->older = e->newer = NULL;
}

static void lru_push(shard_t *s, gh__rl_entry_t *e)
{
    e->older = s->newest;
    e->newer = NULL;
    if (s->newest)
        s->newest->newer = e;
    else
        s->oldest = e;
    s->newest = e;
}

static void drop(shard_t *s, gh__rl_entry_t *e)
{
    gh__rl_entry_t **pp = &s->buckets[e->hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    lru_unlink(s, e);
    e->next = s->free;
    s->free = e;
    s->count--;
}

static bool idle_expired(const gh__rl_entry_t *e, uint64_t now)
{
    return e->inflight == 0 && e->tat <= now;
}

/* Makes room in a full shard; leaves it full only when every entry has a
 * request in flight. */
static void evict(shard_t *s, uint64_t now)
{
    gh__rl_entry_t *victim = NULL;
    size_t idle = 0;
    for (gh__rl_entry_t *e = s->oldest; e && idle < SCAN; e = e->newer) {
        if (e->inflight)
            continue;
        if (e->tat <= now) {
            victim = e;
            break;
        }
        if (!victim && idle == 0)
            victim = e;     /* the least recently used idle entry, if nothing better */
        idle++;
    }
    if (victim)
        drop(s, victim);
}

static gh__rl_entry_t *insert(gh__rl_table_t *t, shard_t *s, uint64_t hash, uint64_t now)
{
    if (!s->buckets) {
        size_t n = 1;
        while (n < s->cap)
            n *= 2;
        s->buckets = calloc(n, sizeof(*s->buckets));
        if (!s->buckets)
            return NULL;
        s->mask = n - 1;
    }
    if (s->count >= s->cap)
        evict(s, now);
    if (!s->free) {
        chunk_t *c = malloc(sizeof(*c));
        if (!c)
            return NULL;
        c->next = s->chunks;
        s->chunks = c;
        for (size_t i = 0; i < CHUNK; i++) {
            c->e[i].next = s->free;
            s->free = &c->e[i];
        }
    }
    gh__rl_entry_t *e = s->free;
    s->free = e->next;
    memset(e, 0, sizeof(*e));
    e->hash = hash;
    e->shard = (uint32_t)(s - t->shards);
    e->next = s->buckets[hash & s->mask];
    s->buckets[hash & s->mask] = e;
    lru_push(s, e);
    s->count++;
    return e;
}

gh__rl_verdict_t gh__rl_take(gh__rl_table_t *t, uint64_t hash, const gh__gcra_t *g,
                             uint32_t concurrency, uint64_t now, gh__gcra_result_t *res,
                             gh__rl_entry_t **slot)
{
    shard_t *s = shard_of(t, hash);
    *slot = NULL;
    pthread_mutex_lock(&s->lock);
    /* Idle entries are forgotten as they reach the old end, a few per call,
     * so a quiet table shrinks without a timer. */
    for (int i = 0; i < EXPIRE && s->oldest && idle_expired(s->oldest, now); i++)
        drop(s, s->oldest);

    gh__rl_entry_t *e = lookup(s, hash);
    if (!e)
        e = insert(t, s, hash, now);
    uint64_t tat = e ? e->tat : 0;
    gh__rl_verdict_t v;
    if (e && concurrency && e->inflight >= concurrency) {
        /* A slot frees when some request ends, which no clock predicts:
         * ask for a retry in a second. The rate state is left alone. */
        uint64_t backlog = tat > now ? tat - now : 0;
        res->allowed = false;
        res->limit = g->burst;
        res->remaining = 0;
        res->reset_s = (backlog + GH_NS_PER_S - 1) / GH_NS_PER_S;
        res->retry_after_s = 1;
        v = GH__RL_CONCURRENCY;
    } else if (gh__gcra_update(g, &tat, now, res)) {
        v = GH__RL_ALLOWED;
        if (e) {
            e->tat = tat;
            if (concurrency) {
                e->inflight++;
                *slot = e;
            }
        }
    } else {
        v = GH__RL_RATE;
    }
    if (e) {
        lru_unlink(s, e);
        lru_push(s, e);
    }
    pthread_mutex_unlock(&s->lock);
    return v;
}

void gh__rl_release(gh__rl_table_t *t, gh__rl_entry_t *slot)
{
    if (!slot)
        return;
    shard_t *s = &t->shards[slot->shard];
    pthread_mutex_lock(&s->lock);
    if (slot->inflight)
        slot->inflight--;
    pthread_mutex_unlock(&s->lock);
}

size_t gh__rl_count(gh__rl_table_t *t)
{
    size_t n = 0;
    for (unsigned i = 0; i < t->nshards; i++) {
        pthread_mutex_lock(&t->shards[i].lock);
        n += t->shards[i].count;
        pthread_mutex_unlock(&t->shards[i].lock);
    }
    return n;
}

uint32_t gh__rl_inflight(gh__rl_table_t *t, uint64_t hash)
{
    shard_t *s = shard_of(t, hash);
    pthread_mutex_lock(&s->lock);
    gh__rl_entry_t *e = lookup(s, hash);
    uint32_t n = e ? e->inflight : 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}
