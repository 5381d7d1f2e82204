/* A string-keyed hash table for name lookups while decoding (conf/decode.h):
 * routes find upstreams, plugins and tunnels by name without a scan, so a
 * config with thousands of routes loads in linear time. Open addressing with
 * linear probing, sized once for the most keys it will hold. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "conf/decode.h"

struct gh__strmap_slot {
    const char *key;
    void *value;
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603u;      /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211u;
    }
    return h;
}

void gh__strmap_init(gh__strmap_t *m, size_t max_items)
{
    size_t cap = 8;
    while (cap < max_items * 2 + 1) {
        if (cap > SIZE_MAX / 4)
            abort();
        cap *= 2;
    }
    m->slots = calloc(cap, sizeof(*m->slots));
    if (!m->slots)
        abort();
    m->mask = cap - 1;
}

void gh__strmap_free(gh__strmap_t *m)
{
    free(m->slots);
    m->slots = NULL;
}

static struct gh__strmap_slot *find(const gh__strmap_t *m, const char *key)
{
    size_t i = (size_t)hash(key) & m->mask;
    while (m->slots[i].key && strcmp(m->slots[i].key, key) != 0)
        i = (i + 1) & m->mask;
    return &m->slots[i];
}

void *gh__strmap_get(const gh__strmap_t *m, const char *key)
{
    return find(m, key)->value;
}

void gh__strmap_put(gh__strmap_t *m, const char *key, void *value)
{
    struct gh__strmap_slot *s = find(m, key);
    s->key = key;
    s->value = value;
}
