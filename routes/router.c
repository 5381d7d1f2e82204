/* The host and path table (SPEC.md section 3, "Routing").
 *
 * Three host levels: exact names, wildcard suffixes ("*.example.com" is kept
 * under "example.com") and the catch-all "*". Each level holds host entries;
 * each entry holds its routes in a hash keyed by the route path without one
 * trailing slash ("/v1/" and "/v1" are the key "/v1", "/" is the key "").
 *
 * Host keys are hashed from their last byte to their first, so one
 * right-to-left pass over a request host yields the hash of every dot-suffix
 * ("b.example.com", "example.com", "com") and of the whole host, one probe
 * each. Path keys are hashed left to right, so one pass over the request path
 * yields the hash of every segment prefix ("", "/v1", "/v1/x"); probing them
 * shortest first and keeping the last hit gives the longest prefix without
 * ever comparing the path against a list of routes. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "conf/arena.h"
#include "routes/router.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* A host is at most 255 bytes (the buffer in gh_router_match), so it has at
 * most that many dots and as many wildcard candidates. */
#define HOST_MAX 256

typedef struct path_slot {
    uint64_t hash;
    const char *key;
    size_t klen;
    const gh_route_conf_t *route;   /* NULL: empty slot */
} path_slot_t;

typedef struct host_ent {
    uint64_t hash;
    const char *key;
    size_t klen;
    size_t nroutes;                 /* counted before the path table exists */
    size_t mask;                    /* path table size - 1 */
    path_slot_t *paths;
    size_t max_depth;               /* most '/' in any path key: deeper prefixes cannot hit */
} host_ent_t;

typedef struct host_tab {
    size_t mask;
    host_ent_t **slots;
} host_tab_t;

struct gh_router {
    host_tab_t exact;
    host_tab_t wild;
    host_ent_t *any;
};

static uint64_t fnv_step(uint64_t h, unsigned char c)
{
    return (h ^ c) * FNV_PRIME;
}

/* FNV-1a spreads its entropy badly into the low bits that pick a slot, and
 * keys like "h1.example.com", "h2.example.com" differ in one byte; a final
 * avalanche (murmur3's fmix64) keeps probe chains short. */
static size_t slot_of(uint64_t h, size_t mask)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (size_t)h & mask;
}

static uint64_t host_hash(const char *s, size_t n)
{
    uint64_t h = FNV_OFFSET;
    while (n > 0)
        h = fnv_step(h, (unsigned char)s[--n]);
    return h;
}

static uint64_t path_hash(const char *s, size_t n)
{
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = fnv_step(h, (unsigned char)s[i]);
    return h;
}

/* Smallest power of two >= 2 * n (and >= 4), so tables stay at most half
 * full and linear probing stays short. */
static size_t table_size(size_t n)
{
    size_t cap = 4;
    while (cap < 2 * n)
        cap *= 2;
    return cap;
}

static host_ent_t *host_find(const host_tab_t *t, const char *key, size_t klen, uint64_t h)
{
    if (t->slots == NULL)
        return NULL;
    for (size_t i = slot_of(h, t->mask);; i = (i + 1) & t->mask) {
        host_ent_t *e = t->slots[i];
        if (e == NULL)
            return NULL;
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    }
}

static host_ent_t *host_add(gh_arena_t *a, host_tab_t *t, const char *key, size_t klen)
{
    uint64_t h = host_hash(key, klen);
    size_t i = slot_of(h, t->mask);

    for (;; i = (i + 1) & t->mask) {
        host_ent_t *e = t->slots[i];
        if (e == NULL)
            break;
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    }
    host_ent_t *e = gh_arena_alloc(a, sizeof(*e));
    e->hash = h;
    e->key = key;
    e->klen = klen;
    t->slots[i] = e;
    return e;
}

static const gh_route_conf_t *path_find(const host_ent_t *e, const char *key, size_t klen,
                                        uint64_t h)
{
    for (size_t i = slot_of(h, e->mask);; i = (i + 1) & e->mask) {
        const path_slot_t *s = &e->paths[i];
        if (s->route == NULL)
            return NULL;
        if (s->hash == h && s->klen == klen && memcmp(s->key, key, klen) == 0)
            return s->route;
    }
}

/* The first route with a key wins: the loader rejects "/v1" next to "/v1/"
 * for one host, and if one slips through the order of the file decides. */
static void path_add(host_ent_t *e, const gh_route_conf_t *route, const char *key, size_t klen)
{
    uint64_t h = path_hash(key, klen);
    size_t depth = 0;

    for (size_t i = slot_of(h, e->mask);; i = (i + 1) & e->mask) {
        path_slot_t *s = &e->paths[i];
        if (s->route == NULL) {
            s->hash = h;
            s->key = key;
            s->klen = klen;
            s->route = route;
            break;
        }
        if (s->hash == h && s->klen == klen && memcmp(s->key, key, klen) == 0)
            return;
    }
    for (size_t i = 0; i < klen; i++)
        depth += key[i] == '/';
    if (depth > e->max_depth)
        e->max_depth = depth;
}

/* The route's host key and the level it goes to. Hosts arrive lower-cased
 * from the loader and are used in place (they live in the same arena); one
 * with upper case is copied lower-cased rather than silently never matching.
 * That copy is made in both build passes, a waste only a broken caller pays. */
typedef enum { LEVEL_EXACT, LEVEL_WILD, LEVEL_ANY } level_t;

static level_t route_host(gh_arena_t *a, const gh_route_conf_t *route,
                          const char **key, size_t *klen)
{
    const char *h = route->host;

    if (h == NULL || strcmp(h, "*") == 0) {
        *key = "";
        *klen = 0;
        return LEVEL_ANY;
    }
    level_t level = LEVEL_EXACT;
    if (h[0] == '*' && h[1] == '.') {
        level = LEVEL_WILD;
        h += 2;
    }
    size_t n = strlen(h);
    bool upper = false;
    for (size_t i = 0; i < n; i++)
        upper |= h[i] >= 'A' && h[i] <= 'Z';
    *key = h;
    *klen = n;
    if (upper) {
        char *copy = gh_arena_strndup(a, h, n);
        for (size_t i = 0; i < n; i++)
            if (copy[i] >= 'A' && copy[i] <= 'Z')
                copy[i] = (char)(copy[i] + ('a' - 'A'));
        *key = copy;
    }
    return level;
}

static void route_path(const gh_route_conf_t *route, const char **key, size_t *klen)
{
    const char *p = route->path ? route->path : "/";
    size_t n = strlen(p);

    if (n > 0 && p[n - 1] == '/')
        n--;
    *key = p;
    *klen = n;
}

static host_ent_t *ent_for(gh_arena_t *a, gh_router_t *r, level_t level,
                           const char *key, size_t klen, bool create)
{
    switch (level) {
    case LEVEL_ANY:
        if (r->any == NULL && create) {
            r->any = gh_arena_alloc(a, sizeof(*r->any));
            r->any->key = key;
        }
        return r->any;
    case LEVEL_WILD:
        return create ? host_add(a, &r->wild, key, klen)
                      : host_find(&r->wild, key, klen, host_hash(key, klen));
    case LEVEL_EXACT:
    default:
        return create ? host_add(a, &r->exact, key, klen)
                      : host_find(&r->exact, key, klen, host_hash(key, klen));
    }
}

gh_router_t *gh_router_build(struct gh_arena *arena, gh_route_conf_t *routes, size_t n)
{
    gh_router_t *r = gh_arena_alloc(arena, sizeof(*r));
    size_t nexact = 0, nwild = 0;

    for (size_t i = 0; i < n; i++) {
        const char *h = routes[i].host;
        if (h != NULL && h[0] == '*' && h[1] == '.')
            nwild++;
        else if (h != NULL && strcmp(h, "*") != 0)
            nexact++;
    }
    r->exact.mask = table_size(nexact) - 1;
    r->exact.slots = gh_arena_alloc(arena, (r->exact.mask + 1) * sizeof(host_ent_t *));
    r->wild.mask = table_size(nwild) - 1;
    r->wild.slots = gh_arena_alloc(arena, (r->wild.mask + 1) * sizeof(host_ent_t *));

    /* Path tables are sized per host, so hosts are counted first; the
     * second pass finds each entry again rather than keeping a temporary
     * route-to-entry array that the arena could never give back. */
    for (size_t i = 0; i < n; i++) {
        const char *key;
        size_t klen;
        level_t level = route_host(arena, &routes[i], &key, &klen);
        ent_for(arena, r, level, key, klen, true)->nroutes++;
    }
    for (size_t i = 0; i < n; i++) {
        const char *hkey, *pkey;
        size_t hlen, plen;
        level_t level = route_host(arena, &routes[i], &hkey, &hlen);
        host_ent_t *e = ent_for(arena, r, level, hkey, hlen, false);
        if (e->paths == NULL) {
            size_t cap = table_size(e->nroutes);
            e->mask = cap - 1;
            e->paths = gh_arena_alloc(arena, cap * sizeof(path_slot_t));
        }
        route_path(&routes[i], &pkey, &plen);
        path_add(e, &routes[i], pkey, plen);
    }
    return r;
}

/* Longest route path of e that is a segment prefix of path. Prefixes are the
 * root, path cut before each '/', and the whole path when it does not end in
 * '/' (a trailing slash adds no segment: "/v1/" is looked up as "/v1"). */
static const gh_route_conf_t *match_path(const host_ent_t *e, const char *path, size_t len)
{
    const gh_route_conf_t *best = path_find(e, "", 0, FNV_OFFSET), *hit;
    uint64_t h = FNV_OFFSET;
    size_t slashes = 0;

    for (size_t i = 0; i < len; i++) {
        if (path[i] == '/') {
            if (i > 0) {
                if (slashes > e->max_depth)
                    return best;
                if ((hit = path_find(e, path, i, h)) != NULL)
                    best = hit;
            }
            slashes++;
        }
        h = fnv_step(h, (unsigned char)path[i]);
    }
    if (len > 0 && path[len - 1] != '/' && slashes <= e->max_depth &&
        (hit = path_find(e, path, len, h)) != NULL)
        best = hit;
    return best;
}

const gh_route_conf_t *gh_router_match(const gh_router_t *r,
                                       const char *host, size_t host_len,
                                       const char *path, size_t path_len)
{
    char buf[HOST_MAX];

    /* No Host at all (HTTP/1.0) can only mean the catch-all; a Host that is
     * present but invalid or too long matches nothing. */
    if (host != NULL && host_len > 0) {
        ssize_t n = gh_host_normalize(host, host_len, buf, sizeof(buf));
        if (n < 0)
            return NULL;
        host = buf;
        host_len = (size_t)n;
    }
    return gh_router_match_normalized(r, host, host_len, path, path_len);
}

const gh_route_conf_t *gh_router_match_normalized(const gh_router_t *r,
                                                  const char *buf, size_t hl,
                                                  const char *path, size_t path_len)
{
    const host_ent_t *wild[HOST_MAX];
    const gh_route_conf_t *route;
    size_t nwild = 0;

    if (r == NULL)
        return NULL;
    if (path == NULL)
        path_len = 0;
    if (buf != NULL && hl >= HOST_MAX)
        return NULL;
    /* (a config with no host but "*" has nothing to look up here) */
    if (buf != NULL && hl > 0 && (r->exact.slots != NULL || r->wild.slots != NULL)) {
        /* Right to left: at each dot h covers the suffix after it. A dot at
         * 0 has an empty label before it, which "*." does not stand for. */
        uint64_t h = FNV_OFFSET;
        for (size_t i = hl; i-- > 0;) {
            if (buf[i] == '.' && i > 0) {
                const host_ent_t *e = host_find(&r->wild, buf + i + 1, hl - i - 1, h);
                if (e != NULL)
                    wild[nwild++] = e;
            }
            h = fnv_step(h, (unsigned char)buf[i]);
        }

        const host_ent_t *e = host_find(&r->exact, buf, hl, h);
        if (e != NULL && (route = match_path(e, path, path_len)) != NULL)
            return route;
        /* Found shortest suffix first; the longest is the most specific. */
        while (nwild > 0)
            if ((route = match_path(wild[--nwild], path, path_len)) != NULL)
                return route;
    }
    if (r->any != NULL)
        return match_path(r->any, path, path_len);
    return NULL;
}
