/* The host and path table (SPEC.md section 3, "Routing").
 * Host: exact (hash table), then the longest wildcard suffix ("*.example.com"
 * matches any depth below example.com, not example.com itself), then "*".
 * Within a host, the longest path prefix on segment boundaries: "/v1" and
 * "/v1/" both match "/v1", "/v1/" and "/v1/x", never "/v10". When no path of
 * the most specific host matches, the next less specific host is tried, so a
 * "*" catch-all answers for every path no other route takes.
 * Lookup cost does not grow with the number of routes: one hash probe per
 * label of the host, then one probe per path segment. */
#ifndef GH_ROUTER_H
#define GH_ROUTER_H

#include <stddef.h>
#include <sys/types.h>
#include "conf/config-t.h"

struct gh_arena;
typedef struct gh_router gh_router_t;

/* Builds the table over routes[0..n). Everything is allocated in arena and
 * freed with it. Routes must already be checked (no duplicate host+path). */
gh_router_t *gh_router_build(struct gh_arena *arena, gh_route_conf_t *routes, size_t n);

/* host: the raw Host header value (any case, may carry ":port" or a trailing
 * dot, may be "[v6]:port"); path: an already normalised path without query.
 * Returns the route, or NULL (404).
 * host_len 0 (no Host header, HTTP/1.0) is answered by "*" only; a Host that
 * gh_host_normalize rejects, or longer than 255 bytes after it, gives NULL,
 * so the caller should answer 400 for an invalid Host before matching.
 * The route hosts and paths are referenced, not copied: the routes must live
 * as long as the router (they share the config arena). */
const gh_route_conf_t *gh_router_match(const gh_router_t *r,
                                       const char *host, size_t host_len,
                                       const char *path, size_t path_len);

/* The same for a host that gh_host_normalize already returned (the proxy
 * normalises it once for logs, redirects and routing). */
const gh_route_conf_t *gh_router_match_normalized(const gh_router_t *r,
                                                  const char *host, size_t host_len,
                                                  const char *path, size_t path_len);

/* Normalises the path part of a request target (no query) into out:
 * percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) are decoded,
 * other percent-escapes are kept with upper-case hex, dot-segments are
 * removed (RFC 3986 5.2.4; ".." never climbs above "/"), "." and ".." are
 * recognised also when written as %2E. Needs outcap >= in_len + 1.
 * Returns the output length, or -1 when the path does not start with '/',
 * has a malformed or NUL (%00) escape, or holds a byte not allowed in a path.
 * Allowed bytes are RFC 3986 pchar and '/': '?', '#', space, controls, raw
 * non-ASCII and '"' '<' '>' '\\' '^' '`' '{' '|' '}' '[' ']' are rejected.
 * Empty segments are kept ("//a" stays "//a"). out is NUL-terminated. */
ssize_t gh_path_normalize(const char *in, size_t in_len, char *out, size_t outcap);

/* Lower-cases host into out (cap bytes), dropping ":port" and one trailing
 * dot; keeps "[v6]" brackets. Returns the length or -1 if it does not fit or
 * is not a valid host. The port must be digits (possibly none: "a.b:");
 * names may hold only unreserved and sub-delim bytes ('*' included, so route
 * hosts like "*.a.b" normalise too), no '%'; "[...]" only hex, ':' and '.'.
 * out is NUL-terminated, so the longest host that fits is cap - 1 bytes. */
ssize_t gh_host_normalize(const char *in, size_t in_len, char *out, size_t cap);

#endif
