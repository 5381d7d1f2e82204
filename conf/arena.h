/* A bump allocator whose blocks are all freed at once. Used for config
 * snapshots, which are built once and never changed. Allocation failure
 * aborts: a config that cannot be allocated cannot be served. */
#ifndef GH_ARENA_H
#define GH_ARENA_H

#include <stddef.h>

typedef struct gh_arena gh_arena_t;

gh_arena_t *gh_arena_new(void);
void gh_arena_free(gh_arena_t *a);
void *gh_arena_alloc(gh_arena_t *a, size_t n);           /* zeroed, 16-aligned */
char *gh_arena_strdup(gh_arena_t *a, const char *s);
char *gh_arena_strndup(gh_arena_t *a, const char *s, size_t n);

#endif
