/* A binary min-heap of client connections by the time their deadline entry
 * falls due (gh_conn_t.timer_at), one per worker: the worker keeps one libuv
 * timer for the earliest entry instead of a uv_timer_t in every connection.
 * Each connection knows its place (heap_idx, 1-based; 0 when not in the
 * heap), so moving or removing it is O(log n). */
#ifndef GH_DHEAP_H
#define GH_DHEAP_H

#include <stdbool.h>
#include <stdint.h>

typedef struct gh_conn gh_conn_t;

typedef struct gh_dheap {
    gh_conn_t **item;
    uint32_t n, cap;
} gh_dheap_t;

/* Room for want entries; false if memory ran out. Setting an entry never
 * allocates, so a caller that reserves for every connection it admits
 * never sees a failure later. */
bool gh_dheap_reserve(gh_dheap_t *h, uint32_t want);
/* Puts c in the heap at `at`, or moves it there if it is in already. The
 * room must have been reserved. */
void gh_dheap_set(gh_dheap_t *h, gh_conn_t *c, uint64_t at);
/* Takes c out; nothing if it is not in. */
void gh_dheap_remove(gh_dheap_t *h, gh_conn_t *c);
/* The entry that falls due first, or NULL. */
gh_conn_t *gh_dheap_top(const gh_dheap_t *h);
void gh_dheap_free(gh_dheap_t *h);

#endif
