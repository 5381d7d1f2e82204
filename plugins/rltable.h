/* The state of a rate_limit instance: a hash table from key to GCRA TAT and
 * requests in flight, shared by all worker threads and bounded in size.
 *
 * Sharded: each shard has its own mutex, so threads only meet when their
 * keys land in the same shard. Keys are stored as a keyed 64-bit SipHash of
 * their text (random key per table): no key text is kept, entries have a
 * fixed size, and a client cannot aim keys at one chain. Two keys sharing a
 * hash would share a bucket; with at most a few 100k keys the odds are below
 * one in a billion per table, and nobody without the secret can make it so.
 *
 * Bounded: each shard holds max_keys / nshards entries. An entry whose TAT is
 * in the past and that has nothing in flight says nothing a new entry would
 * not, so entries like that are dropped as they come to the old end of the
 * shard's LRU list and are the first to go when a shard is full; failing
 * that, the least recently used idle entry goes (its key gets a fresh burst).
 * Entries with requests in flight are never dropped, as on_end must find
 * them: a shard full of those grows past its bound, by at most the number of
 * requests in flight. Memory is taken in chunks and reused, so the steady
 * state allocates nothing. */
#ifndef GH_RLTABLE_H
#define GH_RLTABLE_H

#include <stddef.h>
#include <stdint.h>
#include "plugins/gcra.h"

typedef struct gh__rl_table gh__rl_table_t;
typedef struct gh__rl_entry gh__rl_entry_t;

typedef enum {
    GH__RL_ALLOWED,
    GH__RL_RATE,            /* over the rate: Retry-After from the GCRA */
    GH__RL_CONCURRENCY,     /* too many in flight: Retry-After 1 */
} gh__rl_verdict_t;

#define GH__RL_DEFAULT_MAX_KEYS 100000
#define GH__RL_DEFAULT_SHARDS 64

/* NULL when out of memory. */
gh__rl_table_t *gh__rl_table_new(size_t max_keys, unsigned nshards);
void gh__rl_table_free(gh__rl_table_t *t);

/* The table's hash of a key; kind separates namespaces ('i' client IP,
 * 'k' key id, ...) so "1.2.3.4" as a key id is not the client 1.2.3.4. */
uint64_t gh__rl_hash(const gh__rl_table_t *t, char kind, const char *key, size_t len);

/* SipHash-2-4 of data under the 128-bit key (k0, k1); exposed for its test
 * vectors. */
uint64_t gh__siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len);

/* Decides one request of the key with that hash at now (ns): the concurrency
 * limit first (0: none), then the GCRA g. On GH__RL_ALLOWED with a
 * concurrency limit, *slot is the entry to give to gh__rl_release when the
 * request ends (else NULL). res is filled for every verdict; for
 * GH__RL_CONCURRENCY remaining is 0 and retry_after_s 1. Under memory
 * pressure a key that cannot get an entry is let through. */
gh__rl_verdict_t gh__rl_take(gh__rl_table_t *t, uint64_t hash, const gh__gcra_t *g,
                             uint32_t concurrency, uint64_t now, gh__gcra_result_t *res,
                             gh__rl_entry_t **slot);
void gh__rl_release(gh__rl_table_t *t, gh__rl_entry_t *slot);

/* Entries held now (all shards), and the in-flight count of a key; for
 * tests and status. */
size_t gh__rl_count(gh__rl_table_t *t);
uint32_t gh__rl_inflight(gh__rl_table_t *t, uint64_t hash);

#endif
