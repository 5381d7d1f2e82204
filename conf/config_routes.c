/* The routes section (SPEC.md section 2). Routes come last in decoding: they
 * refer to upstreams, plugins and tunnels by name. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include "conf/config.h"
#include "conf/decode.h"
#include "routes/router.h"

/* Lower-cases host into out (cap >= strlen + 1), drops one trailing dot, and
 * checks its form: "*", "*.name", "name", or "[v6]". */
static int normalize_host(const char *in, char *out, size_t cap)
{
    size_t n = strlen(in);
    if (n >= cap)
        return -1;
    for (size_t i = 0; i < n; i++)
        out[i] = (in[i] >= 'A' && in[i] <= 'Z') ? (char)(in[i] - 'A' + 'a') : in[i];
    out[n] = '\0';
    if (n > 1 && out[n - 1] == '.')
        out[--n] = '\0';
    if (strcmp(out, "*") == 0)
        return 0;
    if (out[0] == '[') {
        unsigned char tmp[16];
        char inner[64];
        if (n < 3 || out[n - 1] != ']' || n - 2 >= sizeof(inner))
            return -1;
        memcpy(inner, out + 1, n - 2);
        inner[n - 2] = '\0';
        return inet_pton(AF_INET6, inner, tmp) == 1 ? 0 : -1;
    }
    const char *name = strncmp(out, "*.", 2) == 0 ? out + 2 : out;
    size_t len = strlen(name), label = 0;
    if (len == 0 || len > 253)
        return -1;
    for (size_t i = 0; i <= len; i++) {
        char ch = name[i];
        if (ch == '.' || ch == '\0') {
            if (label == 0 || label > 63)
                return -1;
            label = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                   ch == '_') {
            label++;
        } else {
            return -1;
        }
    }
    return 0;
}

/* The placeholders a redirect template may hold (routes/ expands them). */
static int check_redirect(gh__decoder_t *d, const gh_node_t *n, const char *s)
{
    static const char *const names[] = { "{path}", "{query}", "{uri}", "{host}" };
    for (const char *p = strchr(s, '{'); p; p = strchr(p + 1, '{')) {
        const char *end = strchr(p, '}');
        bool known = false;
        for (size_t i = 0; end && i < 4 && !known; i++)
            known = (size_t)(end - p + 1) == strlen(names[i]) &&
                    strncmp(p, names[i], strlen(names[i])) == 0;
        if (!known) {
            int len = end ? (int)(end - p + 1) : (int)strlen(p);
            gh_node_error(d->errs, n,
                          "unknown placeholder '%.*s' in redirect (use {path}, {query}, {uri} or {host})",
                          len, p);
            return -1;
        }
    }
    return 0;
}

/* Routes find what they name through these tables, not by scanning. */
typedef struct lookup {
    gh__strmap_t upstreams;     /* named ones by name, inline ones by URL */
    gh__strmap_t plugins;
    gh__strmap_t tunnels;
} lookup_t;

typedef enum { KIND_UPSTREAM, KIND_PLUGIN, KIND_TUNNEL } kind_t;

/* "undefined KIND 'name'", with a did-you-mean among the defined names or
 * else extra. Only on the error path, so the list is built here. */
static void undefined(gh__decoder_t *d, const gh_node_t *at, const char *name, kind_t kind,
                      const char *extra)
{
    static const char *const kinds[] = { "upstream", "plugin", "tunnel" };
    gh_config_t *c = d->cfg;
    size_t count = kind == KIND_UPSTREAM ? c->nupstreams
                 : kind == KIND_PLUGIN   ? c->nplugins : c->ntunnels;
    const char **names = malloc((count + 1) * sizeof(*names));
    if (!names)
        abort();
    for (size_t i = 0; i < count; i++)
        names[i] = kind == KIND_UPSTREAM ? (c->upstreams[i]->is_inline ? NULL : c->upstreams[i]->name)
                 : kind == KIND_PLUGIN   ? c->plugins[i]->name : c->tunnels[i].name;
    const char *hint = gh_did_you_mean(name, names, count);
    if (hint)
        gh_node_error(d->errs, at, "undefined %s '%s' (did you mean '%s'?)", kinds[kind], name,
                      hint);
    else
        gh_node_error(d->errs, at, "undefined %s '%s'%s", kinds[kind], name, extra ? extra : "");
    free(names);
}

static gh_upstream_conf_t *inline_upstream(gh__decoder_t *d, lookup_t *lk, const gh_node_t *n)
{
    gh_config_t *c = d->cfg;
    gh_server_conf_t s;
    if (gh__parse_server(d, n, true, &s) < 0)
        return NULL;
    if (s.scheme == GH_SCHEME_HTTPS)
        gh__feature(d, GH_FEAT_HTTPS_SERVER, n);
    if (s.scheme == GH_SCHEME_TUNNEL) {
        gh__feature(d, GH_FEAT_TUNNEL_UPSTREAM, n);
        if (!gh__strmap_get(&lk->tunnels, s.host)) {
            undefined(d, n, s.host, KIND_TUNNEL, NULL);
            return NULL;
        }
    }

    /* One upstream per distinct URL, shared by every route that writes it. */
    gh_upstream_conf_t *u = gh__strmap_get(&lk->upstreams, n->str);
    if (u)
        return u;
    u = gh_arena_alloc(d->arena, sizeof(*u));
    u->name = n->str;
    u->is_inline = true;
    u->servers = gh_arena_alloc(d->arena, sizeof(*u->servers));
    u->servers[0] = s;
    u->nservers = 1;
    u->balance = GH_BALANCE_ROUND_ROBIN;
    u->keepalive = 32;
    u->tls.verify = true;
    u->loc = n->loc;
    u->index = c->nupstreams;
    c->upstreams[c->nupstreams++] = u;
    gh__strmap_put(&lk->upstreams, u->name, u);
    return u;
}

static gh_upstream_conf_t *route_upstream(gh__decoder_t *d, lookup_t *lk, const gh_node_t *n)
{
    const char *s;
    if (gh_node_string(d->errs, n, &s) < 0)
        return NULL;
    /* Upstream names cannot hold "://", so one table serves both kinds. */
    if (strstr(s, "://"))
        return inline_upstream(d, lk, n);
    gh_upstream_conf_t *u = gh__strmap_get(&lk->upstreams, s);
    if (!u)
        undefined(d, n, s, KIND_UPSTREAM,
                  strchr(s, ':') ? " (an inline upstream needs a scheme, e.g. http://)" : NULL);
    return u;
}

static void route_plugins(gh__decoder_t *d, lookup_t *lk, const gh_node_t *key,
                          const gh_node_t *v, gh_route_conf_t *r)
{
    gh__feature(d, GH_FEAT_ROUTE_PLUGINS, key);
    if (gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    r->plugins = gh_arena_alloc(d->arena, v->n * sizeof(*r->plugins));
    for (size_t i = 0; i < v->n; i++) {
        const gh_node_t *n = v->items[i];
        const char *s;
        if (gh_node_string(d->errs, n, &s) < 0)
            continue;
        gh_plugin_conf_t *p = gh__strmap_get(&lk->plugins, s);
        if (!p) {
            undefined(d, n, s, KIND_PLUGIN, NULL);
            continue;
        }
        bool twice = false;
        for (size_t j = 0; j < r->nplugins; j++)
            twice |= r->plugins[j] == p;
        if (twice) {
            gh_node_error(d->errs, n, "plugin '%s' is listed twice", s);
            continue;
        }
        r->plugins[r->nplugins++] = p;
    }
}

static void respond(gh__decoder_t *d, const gh_node_t *v, gh_route_conf_t *r)
{
    static const char *const keys[] = { "status", "body", "content_type", NULL };
    r->action = GH_ACTION_RESPOND;
    r->respond_status = 200;
    r->respond_body = "";
    r->respond_content_type = "text/plain; charset=utf-8";
    if (!gh__map(d, v, keys, "respond"))
        return;
    const gh_node_t *n;
    const char *s;
    uint64_t x;
    if ((n = gh_node_get(v, "status")) && gh_node_uint(d->errs, n, 200, 599, &x) == 0)
        r->respond_status = (int)x;
    /* The body may be empty and, written with "\0", hold NUL bytes: keep len. */
    if ((n = gh_node_get(v, "body")) && gh_node_expect(d->errs, n, GH_NODE_SCALAR) == 0 &&
        !gh__node_poisoned(n)) {
        r->respond_body = n->str;
        r->respond_body_len = n->len;
    }
    if ((n = gh_node_get(v, "content_type")) && gh_node_string(d->errs, n, &s) == 0)
        r->respond_content_type = (char *)s;
}

/* Fills r from the route mapping m; returns -1 when the route is unusable. */
static int decode_route(gh__decoder_t *d, lookup_t *lk, const gh_node_t *m,
                        gh_route_conf_t *r)
{
    static const char *const keys[] = { "host", "path", "upstream", "redirect", "status",
                                        "respond", "max_body_bytes", "plugins", NULL };
    static const char *const actions[] = { "upstream", "redirect", "respond" };
    gh_config_t *c = d->cfg;
    if (!gh__map(d, m, keys, "route"))
        return -1;
    int rc = 0;
    memset(r, 0, sizeof(*r));
    r->loc = m->loc;
    r->max_body_bytes = c->limits.max_body_bytes;
    r->redirect_status = 308;

    const gh_node_t *n;
    const char *s;
    if (!(n = gh_node_get(m, "host"))) {
        gh_node_error(d->errs, m, "missing 'host' in route");
        rc = -1;
    } else if (gh_node_string(d->errs, n, &s) < 0) {
        rc = -1;
    } else {
        r->host = gh_arena_alloc(d->arena, n->len + 1);
        if (normalize_host(s, r->host, n->len + 1) < 0) {
            gh_node_error(d->errs, n,
                          "invalid route host '%s' (expected a name, *.domain or *)", s);
            rc = -1;
        }
    }

    r->path = "/";
    if ((n = gh_node_get(m, "path"))) {
        if (gh_node_string(d->errs, n, &s) < 0) {
            rc = -1;
        } else if (s[0] != '/') {
            gh_node_error(d->errs, n, "route path must start with '/'");
            rc = -1;
        } else {
            char *out = gh_arena_alloc(d->arena, n->len + 1);
            ssize_t len = gh_path_normalize(s, n->len, out, n->len + 1);
            if (len < 0) {
                gh_node_error(d->errs, n, "invalid route path '%s'", s);
                rc = -1;
            } else {
                out[len] = '\0';
                r->path = out;
            }
        }
    }

    /* Exactly one action; a second one is reported at its key. */
    const gh_node_t *first = NULL;
    for (size_t i = 0; i < 3; i++) {
        const gh_node_t *k = gh_node_get_key(m, actions[i]);
        if (!k)
            continue;
        if (first) {
            gh_node_error(d->errs, k, "a route takes only one of upstream, redirect and respond");
            rc = -1;
            continue;
        }
        first = k;
        n = gh_node_get(m, actions[i]);
        if (i == 0) {
            r->action = GH_ACTION_UPSTREAM;
            if (!(r->upstream = route_upstream(d, lk, n)))
                rc = -1;
        } else if (i == 1) {
            r->action = GH_ACTION_REDIRECT;
            if (gh_node_string(d->errs, n, &s) < 0 || check_redirect(d, n, s) < 0)
                rc = -1;
            else
                r->redirect = (char *)s;
        } else {
            respond(d, n, r);
        }
    }
    if (!first) {
        gh_node_error(d->errs, m, "a route needs one of upstream, redirect or respond");
        rc = -1;
    }

    if ((n = gh_node_get(m, "status"))) {
        uint64_t x;
        if (!first) {
            /* no action: already reported */
        } else if (r->action != GH_ACTION_REDIRECT) {
            gh_node_error(d->errs, gh_node_get_key(m, "status"),
                          "status is only allowed with redirect (respond has its own)");
        } else if (gh_node_uint(d->errs, n, 0, 999, &x) == 0) {
            if (x != 301 && x != 302 && x != 307 && x != 308)
                gh_node_error(d->errs, n, "redirect status must be 301, 302, 307 or 308");
            else
                r->redirect_status = (int)x;
        }
    }
    if ((n = gh_node_get(m, "max_body_bytes")))
        gh_node_size(d->errs, n, &r->max_body_bytes);
    if ((n = gh_node_get(m, "plugins")))
        route_plugins(d, lk, gh_node_get_key(m, "plugins"), n, r);

    if (rc == 0) {
        size_t hl = strlen(r->host), pl = strlen(r->path);
        r->name = gh_arena_alloc(d->arena, hl + pl + 1);
        memcpy(r->name, r->host, hl);
        memcpy(r->name + hl, r->path, pl);
    }
    return rc;
}

/* Routes compare equal when host and path are the same, taking "/v1" and
 * "/v1/" as one path: the router matches both the same way. */
static int route_cmp(const gh_route_conf_t *a, const gh_route_conf_t *b)
{
    int h = strcmp(a->host, b->host);
    if (h)
        return h;
    size_t la = strlen(a->path), lb = strlen(b->path);
    if (la > 1 && a->path[la - 1] == '/')
        la--;
    if (lb > 1 && b->path[lb - 1] == '/')
        lb--;
    int p = memcmp(a->path, b->path, la < lb ? la : lb);
    if (p)
        return p;
    return la < lb ? -1 : la > lb;
}

static int route_order(const void *x, const void *y)
{
    const gh_route_conf_t *a = *(const gh_route_conf_t *const *)x;
    const gh_route_conf_t *b = *(const gh_route_conf_t *const *)y;
    int r = route_cmp(a, b);
    return r ? r : (a->index > b->index) - (a->index < b->index);
}

/* Sorted, equal routes sit together with the earliest first; errors are then
 * reported in file order. */
static void check_duplicates(gh__decoder_t *d)
{
    gh_config_t *c = d->cfg;
    if (c->nroutes < 2)
        return;
    gh_route_conf_t **sorted = malloc(c->nroutes * sizeof(*sorted));
    const gh_route_conf_t **first = calloc(c->nroutes, sizeof(*first));
    if (!sorted || !first)
        abort();
    for (size_t i = 0; i < c->nroutes; i++)
        sorted[i] = &c->routes[i];
    qsort(sorted, c->nroutes, sizeof(*sorted), route_order);
    for (size_t i = 1, g = 0; i < c->nroutes; i++) {
        if (route_cmp(sorted[g], sorted[i]) == 0)
            first[sorted[i]->index] = sorted[g];
        else
            g = i;
    }
    for (size_t i = 0; i < c->nroutes; i++)
        if (first[i])
            gh_errors_add(d->errs, &c->routes[i].loc,
                          "duplicate route '%s' (already defined at line %u)",
                          c->routes[i].name, (unsigned)first[i]->loc.line);
    free(sorted);
    free(first);
}

void gh__decode_routes(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    gh_config_t *c = d->cfg;
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    /* Room for one inline upstream per route after the named ones. */
    gh_upstream_conf_t **ups = gh_arena_alloc(d->arena, (c->nupstreams + v->n) * sizeof(*ups));
    if (c->nupstreams)
        memcpy(ups, c->upstreams, c->nupstreams * sizeof(*ups));
    c->upstreams = ups;

    lookup_t lk;
    gh__strmap_init(&lk.upstreams, c->nupstreams + v->n);
    gh__strmap_init(&lk.plugins, c->nplugins);
    gh__strmap_init(&lk.tunnels, c->ntunnels);
    for (size_t i = 0; i < c->nupstreams; i++)
        gh__strmap_put(&lk.upstreams, c->upstreams[i]->name, c->upstreams[i]);
    for (size_t i = 0; i < c->nplugins; i++)
        gh__strmap_put(&lk.plugins, c->plugins[i]->name, c->plugins[i]);
    for (size_t i = 0; i < c->ntunnels; i++)
        gh__strmap_put(&lk.tunnels, c->tunnels[i].name, &c->tunnels[i]);

    c->routes = gh_arena_alloc(d->arena, v->n * sizeof(*c->routes));
    for (size_t i = 0; i < v->n; i++) {
        gh_route_conf_t *r = &c->routes[c->nroutes];
        if (decode_route(d, &lk, v->items[i], r) == 0) {
            r->index = c->nroutes;
            c->nroutes++;
        }
    }
    gh__strmap_free(&lk.upstreams);
    gh__strmap_free(&lk.plugins);
    gh__strmap_free(&lk.tunnels);
    check_duplicates(d);
}
