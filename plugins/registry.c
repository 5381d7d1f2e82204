/* The table of plugin types and what runs them (plugins/plugin.h): checking
 * a config, building instances (and keeping unchanged ones across a
 * reload), running a route's instances in order, and metrics.
 *
 * cfg->plugins[i]->instance does not point at the plugin's own instance but
 * at a small reference-counted holder: an unchanged instance is shared by
 * the old and the new config after a reload, requests still running on the
 * old one keep using it (a rate_limit's concurrency slots are released into
 * the same table they were taken from), and it is destroyed when the last
 * config holding it goes. */
#include "plugins/plugin.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "conf/config.h"
#include "conf/node.h"
#include "plugins/builtin.h"

#define GH__TABLE_ENTRY(name) &gh__##name##_ops,
static const gh_plugin_ops_t *const builtin[] = { GH_BUILTIN_PLUGINS(GH__TABLE_ENTRY) };
#undef GH__TABLE_ENTRY
#define NBUILTIN (sizeof(builtin) / sizeof(builtin[0]))

typedef struct holder {
    const gh_plugin_ops_t *ops;
    void *inst;
    atomic_uint refs;       /* configs whose plugin conf points here */
} holder_t;

static void oom(void)
{
    fputs("gatehouse: out of memory\n", stderr);
    abort();
}

uint64_t gh__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const gh_plugin_ops_t *gh_plugin_find(const char *type)
{
    for (size_t i = 0; type && i < NBUILTIN; i++)
        if (strcmp(builtin[i]->type, type) == 0)
            return builtin[i];
    return NULL;
}

bool gh__node_equal(const gh_node_t *a, const gh_node_t *b)
{
    if (a == b)
        return true;
    if (!a || !b || a->type != b->type || a->n != b->n)
        return false;
    switch (a->type) {
    case GH_NODE_SCALAR:
        return a->len == b->len && a->quoted == b->quoted && memcmp(a->str, b->str, a->len) == 0;
    case GH_NODE_SEQ:
        for (size_t i = 0; i < a->n; i++)
            if (!gh__node_equal(a->items[i], b->items[i]))
                return false;
        return true;
    case GH_NODE_MAP:
        /* Keys are unique (the parser drops duplicates), so "every pair of
         * a is in b" with equal counts is equality. */
        for (size_t i = 0; i < a->n; i++) {
            bool found = false;
            for (size_t j = 0; j < b->n && !found; j++)
                found = gh__node_equal(a->items[2 * i], b->items[2 * j]) &&
                        gh__node_equal(a->items[2 * i + 1], b->items[2 * j + 1]);
            if (!found)
                return false;
        }
        return true;
    }
    return false;
}

static void unknown_type(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    const char *names[NBUILTIN];
    char list[256];
    size_t len = 0;
    for (size_t i = 0; i < NBUILTIN; i++) {
        names[i] = builtin[i]->type;
        const char *sep = i == 0 ? "" : i + 1 == NBUILTIN ? " or " : ", ";
        int w = snprintf(list + len, sizeof(list) - len, "%s%s", sep, names[i]);
        if (w > 0 && (size_t)w < sizeof(list) - len)
            len += (size_t)w;
    }
    const char *hint = gh_did_you_mean(pc->type, names, NBUILTIN);
    const gh_node_t *t = gh_node_get(pc->node, "type");
    gh_loc_t loc = t ? t->loc : pc->loc;
    if (hint)
        gh_errors_add(errs, &loc, "unknown plugin type '%s' (did you mean '%s'?)", pc->type, hint);
    else
        gh_errors_add(errs, &loc, "unknown plugin type '%s' (expected %s)", pc->type, list);
}

/* What no single plugin can see: how routes combine them. */
static int check_routes(const gh_config_t *cfg, gh_errors_t *errs)
{
    int rc = 0;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gh_route_conf_t *r = &cfg->routes[i];
        if (r->nplugins > GH_PREQ_MAX_PLUGINS) {
            gh_errors_add(errs, &r->loc, "a route can list at most %d plugins",
                          GH_PREQ_MAX_PLUGINS);
            rc = -1;
        }
        bool have_key = false;
        for (size_t j = 0; j < r->nplugins; j++) {
            const gh_plugin_conf_t *p = r->plugins[j];
            if (p->type && strcmp(p->type, "api_key") == 0) {
                have_key = true;
            } else if (!have_key && gh__rate_limit_wants_key_id(p)) {
                /* It would key every request by client IP instead: say so
                 * rather than limit something else than the user meant. */
                gh_errors_add(errs, &r->loc,
                              "rate_limit plugin '%s' has by: api_key but no api_key "
                              "plugin comes before it on this route", p->name);
                rc = -1;
            }
        }
    }
    return rc;
}

int gh_plugins_check(const gh_config_t *cfg, gh_errors_t *errs)
{
    int rc = 0;
    for (size_t i = 0; i < cfg->nplugins; i++) {
        const gh_plugin_conf_t *pc = cfg->plugins[i];
        /* No type: the loader has reported it (missing or not a string). */
        if (!pc->type || !pc->node)
            continue;
        const gh_plugin_ops_t *ops = gh_plugin_find(pc->type);
        if (!ops) {
            unknown_type(pc, errs);
            rc = -1;
        } else if (ops->check(pc, errs) < 0) {
            rc = -1;
        }
    }
    if (check_routes(cfg, errs) < 0)
        rc = -1;
    return rc;
}

/* The holder of the instance named like pc in prev, when its definition is
 * the same. */
static holder_t *unchanged(const gh_config_t *prev, const gh_plugin_conf_t *pc)
{
    for (size_t i = 0; prev && i < prev->nplugins; i++) {
        const gh_plugin_conf_t *old = prev->plugins[i];
        if (old->instance && old->type && strcmp(old->name, pc->name) == 0 &&
            strcmp(old->type, pc->type) == 0 && gh__node_equal(old->node, pc->node))
            return old->instance;
    }
    return NULL;
}

int gh_plugins_create(gh_config_t *cfg, gh_config_t *prev, gh_errors_t *errs)
{
    for (size_t i = 0; i < cfg->nplugins; i++) {
        gh_plugin_conf_t *pc = cfg->plugins[i];
        const gh_plugin_ops_t *ops = gh_plugin_find(pc->type);
        if (!ops) {
            gh_errors_add(errs, &pc->loc, "plugin '%s' has no usable type", pc->name);
            goto fail;
        }
        holder_t *old = unchanged(prev, pc);
        size_t before = errs->n;
        void *inst = ops->create(pc, old ? old->inst : NULL, errs);
        if (!inst) {
            if (errs->n == before)
                gh_errors_add(errs, &pc->loc, "plugin '%s' could not be created", pc->name);
            goto fail;
        }
        if (old && inst == old->inst) {
            atomic_fetch_add(&old->refs, 1);
            pc->instance = old;
            continue;
        }
        holder_t *h = malloc(sizeof(*h));
        if (!h)
            oom();
        h->ops = ops;
        h->inst = inst;
        atomic_init(&h->refs, 1);
        pc->instance = h;
    }
    return 0;
fail:
    /* prev keeps serving: undo only what this call did. */
    gh_plugins_destroy(cfg);
    return -1;
}

void gh_plugins_destroy(gh_config_t *cfg)
{
    for (size_t i = 0; cfg && i < cfg->nplugins; i++) {
        holder_t *h = cfg->plugins[i]->instance;
        cfg->plugins[i]->instance = NULL;
        if (h && atomic_fetch_sub(&h->refs, 1) == 1) {
            h->ops->destroy(h->inst);
            free(h);
        }
    }
}

void *gh__plugin_instance(const gh_plugin_conf_t *pc)
{
    const holder_t *h = pc->instance;
    return h ? h->inst : NULL;
}

int gh_plugins_request(const gh_route_conf_t *route, gh_preq_t *req, size_t *ran)
{
    *ran = 0;
    if (route->nplugins > GH_PREQ_MAX_PLUGINS)
        return 500;     /* refused by gh_plugins_check; never skip a plugin */
    for (size_t i = 0; i < route->nplugins; i++) {
        const holder_t *h = route->plugins[i]->instance;
        if (!h)
            return 500; /* gh_plugins_create was not run: fail closed */
        req->current = i;
        *ran = i + 1;
        int status = h->ops->on_request(h->inst, req);
        if (status != GH_PLUGIN_PASS)
            return status;
    }
    return GH_PLUGIN_PASS;
}

void gh_plugins_response(const gh_route_conf_t *route, gh_preq_t *req, size_t ran, int status)
{
    for (size_t i = 0; i < ran && i < route->nplugins; i++) {
        const holder_t *h = route->plugins[i]->instance;
        if (h && h->ops->on_response) {
            req->current = i;
            h->ops->on_response(h->inst, req, status);
        }
    }
}

void gh_plugins_end(const gh_route_conf_t *route, gh_preq_t *req, size_t ran)
{
    for (size_t i = 0; i < ran && i < route->nplugins; i++) {
        const holder_t *h = route->plugins[i]->instance;
        if (h && h->ops->on_end) {
            req->current = i;
            h->ops->on_end(h->inst, req);
        }
    }
}

/* Puts "# TYPE NAME counter" before the lines at out[start..*len) when their
 * family is a counter (its name ends in _total); drops them when there is no
 * room, so that no line is ever cut. */
static void type_line(char *out, size_t cap, size_t start, size_t *len)
{
    const char *s = out + start;
    size_t n = 0, body = *len - start;
    while (n < body && s[n] != '{' && s[n] != ' ')
        n++;
    if (n < 6 || memcmp(s + n - 6, "_total", 6) != 0)
        return;
    char head[160];
    int w = snprintf(head, sizeof(head), "# TYPE %.*s counter\n", (int)n, s);
    if (w < 0 || (size_t)w >= sizeof(head) || cap - *len < (size_t)w) {
        *len = start;
        return;
    }
    memmove(out + start + (size_t)w, out + start, body);
    memcpy(out + start, head, (size_t)w);
    *len += (size_t)w;
}

size_t gh_plugins_metrics(const gh_config_t *cfg, char *out, size_t cap)
{
    size_t len = 0;
    /* One type at a time: Prometheus wants a family's lines together. */
    for (size_t t = 0; t < NBUILTIN; t++) {
        if (!builtin[t]->metrics)
            continue;
        size_t start = len;
        for (size_t i = 0; i < cfg->nplugins; i++) {
            const gh_plugin_conf_t *pc = cfg->plugins[i];
            const holder_t *h = pc->instance;
            if (h && h->ops == builtin[t])
                len += h->ops->metrics(h->inst, pc, out + len, cap - len);
        }
        if (len > start)
            type_line(out, cap, start, &len);
    }
    return len;
}
