/* Bump allocator for config snapshots (conf/arena.h).
 * Memory comes from calloc'd blocks chained in a list, so every allocation is
 * already zeroed and nothing is ever freed on its own. A request bigger than a
 * quarter block gets a block of its own, so a large table does not waste the
 * tail of the current block. */
#include "conf/arena.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GH_ARENA_BLOCK (16 * 1024)
#define GH_ARENA_ALIGN 16

typedef struct gh_arena_block {
    struct gh_arena_block *next;
    size_t cap, used;
    unsigned char data[];
} gh_arena_block_t;

struct gh_arena {
    gh_arena_block_t *head;     /* the block new small allocations come from */
};

static void oom(void)
{
    fputs("gatehouse: out of memory\n", stderr);
    abort();
}

/* The block's data may start at any 8-aligned address: keep one alignment
 * unit of slack so the first allocation can always be rounded up. */
static gh_arena_block_t *block_new(size_t payload)
{
    if (payload > SIZE_MAX - sizeof(gh_arena_block_t) - GH_ARENA_ALIGN)
        oom();
    gh_arena_block_t *b = calloc(1, sizeof(*b) + payload + GH_ARENA_ALIGN);
    if (!b)
        oom();
    b->cap = payload + GH_ARENA_ALIGN;
    return b;
}

/* Returns the offset in b where n aligned bytes fit, or SIZE_MAX. */
static size_t block_fit(const gh_arena_block_t *b, size_t n)
{
    uintptr_t base = (uintptr_t)b->data;
    uintptr_t at = (base + b->used + GH_ARENA_ALIGN - 1) & ~(uintptr_t)(GH_ARENA_ALIGN - 1);
    size_t off = (size_t)(at - base);
    if (off > b->cap || b->cap - off < n)
        return SIZE_MAX;
    return off;
}

gh_arena_t *gh_arena_new(void)
{
    gh_arena_t *a = calloc(1, sizeof(*a));
    if (!a)
        oom();
    a->head = block_new(GH_ARENA_BLOCK);
    return a;
}

void gh_arena_free(gh_arena_t *a)
{
    if (!a)
        return;
    gh_arena_block_t *b = a->head;
    while (b) {
        gh_arena_block_t *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}

void *gh_arena_alloc(gh_arena_t *a, size_t n)
{
    if (n == 0)
        n = 1;      /* distinct, valid pointers even for empty arrays */
    size_t off = block_fit(a->head, n);
    if (off == SIZE_MAX) {
        gh_arena_block_t *b;
        if (n > GH_ARENA_BLOCK / 4) {
            /* Own block, linked behind the head so the head keeps serving. */
            b = block_new(n);
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b = block_new(GH_ARENA_BLOCK);
            b->next = a->head;
            a->head = b;
        }
        off = block_fit(b, n);
        if (off == SIZE_MAX)
            oom();  /* cannot happen: the block was sized for n */
        b->used = off + n;
        return b->data + off;
    }
    a->head->used = off + n;
    return a->head->data + off;
}

/* Like strndup: copies at most n bytes, stopping at a NUL. */
char *gh_arena_strndup(gh_arena_t *a, const char *s, size_t n)
{
    n = strnlen(s, n);
    if (n == SIZE_MAX)
        oom();
    char *p = gh_arena_alloc(a, n + 1);
    if (n)
        memcpy(p, s, n);
    return p;   /* already zeroed, so NUL-terminated */
}

char *gh_arena_strdup(gh_arena_t *a, const char *s)
{
    return gh_arena_strndup(a, s, strlen(s));
}
