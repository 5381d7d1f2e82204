/* rate_limit: GCRA per key (plugins/gcra.h) over a shared, bounded table
 * (plugins/rltable.h), with per-key overrides and a limit on requests in
 * flight.
 *
 *   type: rate_limit
 *   rate: 10/s             # required
 *   burst: 20              # default: one second's worth of rate, at least 1
 *   by: api_key            # client_ip (default) | api_key | route | header:NAME
 *   concurrency: 4         # requests in flight per key; default no limit
 *   overrides: { n8n: { rate: 2/s, burst: 5, concurrency: 1 } }
 *
 * A request without the key it is limited by (no key id, no such header) is
 * keyed by its client IP instead: a client cannot escape the limit by
 * leaving the header out. The instance holds no pointer into the config
 * that built it, because a reload with the same definition hands the
 * instance, and its table, to the next config. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "conf/config.h"
#include "conf/node.h"
#include "plugins/builtin.h"
#include "plugins/gcra.h"
#include "plugins/rltable.h"

enum by { BY_CLIENT_IP, BY_API_KEY, BY_ROUTE, BY_HEADER };

typedef struct limits {
    gh__gcra_t g;
    uint32_t concurrency;   /* 0: none */
} limits_t;

typedef struct override {
    char *key;
    limits_t lim;
} override_t;

typedef struct rate_limit {
    enum by by;
    char *header;           /* BY_HEADER */
    limits_t lim;
    override_t *ov;         /* sorted by key for bsearch */
    size_t nov;
    gh__rl_table_t *table;
    uint64_t (*now)(void);  /* gh__now_ns, or a test's fake clock */
    atomic_ullong limited;
} rate_limit_t;

static void rl_free(rate_limit_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nov; i++)
        free(r->ov[i].key);
    free(r->ov);
    free(r->header);
    gh__rl_table_free(r->table);
    free(r);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        abort();    /* config time: as conf/ does, no config without memory */
    return p;
}

/* Reads `rate`, `burst` and `concurrency` of m into lim. Missing values come
 * from base (an override), or defaults for the plugin itself (base NULL). */
static int decode_limits(const gh_node_t *m, const limits_t *base, gh_errors_t *errs,
                         limits_t *lim)
{
    const gh_node_t *n;
    int rc = 0;
    double rate = 0;
    uint64_t burst = 0, conc = 0;
    if ((n = gh_node_get(m, "rate")) && gh_node_rate(errs, n, &rate) < 0)
        rc = -1;
    if (!n && !base) {
        gh_node_error(errs, m, "missing 'rate'");
        rc = -1;
    }
    if ((n = gh_node_get(m, "burst")) && gh_node_uint(errs, n, 1, GH_GCRA_MAX_BURST, &burst) < 0)
        rc = -1;
    if ((n = gh_node_get(m, "concurrency")) && gh_node_uint(errs, n, 1, 1000000, &conc) < 0)
        rc = -1;
    if (rc < 0)
        return -1;
    if (rate == 0)
        rate = (double)GH_NS_PER_S / (double)base->g.interval_ns;
    if (burst == 0 && base)
        burst = base->g.burst;
    else if (burst == 0)    /* one second's worth, rounded up */
        burst = rate >= GH_GCRA_MAX_BURST ? GH_GCRA_MAX_BURST
                : rate > 1 ? (uint64_t)rate + ((double)(uint64_t)rate < rate) : 1;
    lim->concurrency = gh_node_get(m, "concurrency") ? (uint32_t)conc
                       : base ? base->concurrency : 0;
    if (gh__gcra_init(&lim->g, rate, (uint32_t)burst) < 0) {
        gh_node_error(errs, gh_node_get(m, "rate") ? gh_node_get(m, "rate") : m,
                      "rate and burst out of range");
        return -1;
    }
    return 0;
}

static int decode_by(const gh_node_t *n, gh_errors_t *errs, rate_limit_t *r)
{
    static const char *const names[] = { "client_ip", "api_key", "route", "header:NAME" };
    const char *s;
    if (gh_node_string(errs, n, &s) < 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            r->by = (enum by)i;
            return 0;
        }
    }
    if (strncmp(s, "header:", 7) == 0) {
        if (!gh__header_name_ok(s + 7)) {
            gh_node_error(errs, n, "invalid header name '%s' in by", s + 7);
            return -1;
        }
        r->by = BY_HEADER;
        r->header = xstrdup(s + 7);
        return 0;
    }
    const char *hint = gh_did_you_mean(s, names, 4);
    if (hint)
        gh_node_error(errs, n, "invalid by '%s' (did you mean '%s'?)", s, hint);
    else
        gh_node_error(errs, n, "invalid by '%s' (expected client_ip, api_key, route or "
                               "header:NAME)", s);
    return -1;
}

static int override_cmp(const void *a, const void *b)
{
    return strcmp(((const override_t *)a)->key, ((const override_t *)b)->key);
}

static int key_cmp(const void *key, const void *o)
{
    return strcmp(key, ((const override_t *)o)->key);
}

static int decode_overrides(const gh_plugin_conf_t *pc, const gh_node_t *m, gh_errors_t *errs,
                            rate_limit_t *r)
{
    static const char *const keys[] = { "rate", "burst", "concurrency", NULL };
    if (gh_node_expect(errs, m, GH_NODE_MAP) < 0)
        return -1;
    r->ov = calloc(m->n ? m->n : 1, sizeof(*r->ov));
    if (!r->ov)
        abort();
    char where[160];
    snprintf(where, sizeof(where), "an override of plugin '%s'", pc->name);
    int rc = 0;
    for (size_t i = 0; i < m->n; i++) {
        const gh_node_t *k = m->items[2 * i], *v = m->items[2 * i + 1];
        const char *key;
        if (gh_node_string(errs, k, &key) < 0 || gh_node_check_keys(errs, v, keys, where) < 0) {
            rc = -1;
            continue;
        }
        if (v->n == 0) {
            gh_node_error(errs, v, "an override needs rate, burst or concurrency");
            rc = -1;
            continue;
        }
        override_t *o = &r->ov[r->nov];
        if (decode_limits(v, &r->lim, errs, &o->lim) < 0) {
            rc = -1;
            continue;
        }
        o->key = xstrdup(key);
        r->nov++;
    }
    qsort(r->ov, r->nov, sizeof(*r->ov), override_cmp);
    return rc;
}

/* The whole definition into a new instance (without its table); NULL after
 * reporting every problem. */
static rate_limit_t *decode(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    static const char *const keys[] = { "type", "rate", "burst", "by", "concurrency",
                                        "overrides", NULL };
    char where[160];
    snprintf(where, sizeof(where), "plugin '%s'", pc->name);
    rate_limit_t *r = calloc(1, sizeof(*r));
    if (!r)
        abort();
    r->now = gh__now_ns;
    int rc = gh_node_check_keys(errs, pc->node, keys, where);
    if (pc->node->type == GH_NODE_MAP) {
        const gh_node_t *n;
        if (decode_limits(pc->node, NULL, errs, &r->lim) < 0)
            rc = -1;
        if ((n = gh_node_get(pc->node, "by")) && decode_by(n, errs, r) < 0)
            rc = -1;
        /* Overrides inherit from the plugin's limits: only with good ones. */
        if (rc == 0 && (n = gh_node_get(pc->node, "overrides")) &&
            decode_overrides(pc, n, errs, r) < 0)
            rc = -1;
    }
    if (rc < 0) {
        rl_free(r);
        return NULL;
    }
    return r;
}

static int rl_check(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    rate_limit_t *r = decode(pc, errs);
    rl_free(r);
    return r ? 0 : -1;
}

static void *rl_create(const gh_plugin_conf_t *pc, void *previous, gh_errors_t *errs)
{
    /* Same definition: keep the buckets and the counts in flight. */
    if (previous)
        return previous;
    rate_limit_t *r = decode(pc, errs);
    if (!r)
        return NULL;
    r->table = gh__rl_table_new(GH__RL_DEFAULT_MAX_KEYS, GH__RL_DEFAULT_SHARDS);
    if (!r->table) {
        gh_errors_add(errs, &pc->loc, "out of memory for plugin '%s'", pc->name);
        rl_free(r);
        return NULL;
    }
    atomic_init(&r->limited, 0);
    return r;
}

static void rl_destroy(void *inst)
{
    rl_free(inst);
}

bool gh__rate_limit_wants_key_id(const gh_plugin_conf_t *pc)
{
    if (!pc->type || strcmp(pc->type, "rate_limit") != 0)
        return false;
    const gh_node_t *by = gh_node_get(pc->node, "by");
    return by && by->type == GH_NODE_SCALAR && strcmp(by->str, "api_key") == 0;
}

void gh__rate_limit_set_clock(void *inst, uint64_t (*now)(void))
{
    ((rate_limit_t *)inst)->now = now;
}

static void set_number(gh_preq_t *req, const char *name, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    const char *s = gh_preq_strdup(req, buf);
    if (s)
        gh_preq_set_response_header(req, name, s);
}

static int rl_request(void *inst, gh_preq_t *req)
{
    rate_limit_t *r = inst;
    const char *key = NULL;
    char kind = 'i';
    switch (r->by) {
    case BY_CLIENT_IP:
        key = req->client_ip;
        break;
    case BY_API_KEY:
        key = req->key_id;
        kind = 'k';
        break;
    case BY_ROUTE:
        key = req->route ? req->route->name : NULL;
        kind = 'r';
        break;
    case BY_HEADER:
        key = gh_preq_header(req, r->header);
        kind = 'h';
        break;
    }
    bool fallback = !key || !key[0];
    if (fallback) {
        key = req->client_ip ? req->client_ip : "";
        kind = 'i';
    }
    /* Overrides name keys of the `by` kind, never a stand-in client IP. */
    const limits_t *lim = &r->lim;
    const override_t *o = NULL;
    if (r->nov && !(fallback && r->by != BY_CLIENT_IP))
        o = bsearch(key, r->ov, r->nov, sizeof(*r->ov), key_cmp);
    if (o)
        lim = &o->lim;

    gh__gcra_result_t res;
    gh__rl_entry_t *slot;
    uint64_t hash = gh__rl_hash(r->table, kind, key, strlen(key));
    gh__rl_verdict_t v = gh__rl_take(r->table, hash, &lim->g, lim->concurrency, r->now(), &res,
                                     &slot);
    req->state[req->current] = slot;
    set_number(req, "RateLimit-Limit", res.limit);
    set_number(req, "RateLimit-Remaining", res.remaining);
    set_number(req, "RateLimit-Reset", res.reset_s);
    if (v == GH__RL_ALLOWED)
        return GH_PLUGIN_PASS;
    set_number(req, "Retry-After", res.retry_after_s);
    atomic_fetch_add_explicit(&r->limited, 1, memory_order_relaxed);
    return 429;
}

static void rl_end(void *inst, gh_preq_t *req)
{
    rate_limit_t *r = inst;
    gh__rl_release(r->table, req->state[req->current]);
    req->state[req->current] = NULL;
}

static size_t rl_metrics(void *inst, const gh_plugin_conf_t *pc, char *out, size_t cap)
{
    rate_limit_t *r = inst;
    /* Plugin names are letters, digits, '-', '_' and '.' (conf/): no
     * escaping needed in the label. */
    int w = snprintf(out, cap, "gatehouse_rate_limited_total{plugin=\"%s\"} %llu\n", pc->name,
                     (unsigned long long)atomic_load(&r->limited));
    return w > 0 && (size_t)w < cap ? (size_t)w : 0;
}

const gh_plugin_ops_t gh__rate_limit_ops = {
    .type = "rate_limit",
    .check = rl_check,
    .create = rl_create,
    .destroy = rl_destroy,
    .on_request = rl_request,
    .on_end = rl_end,
    .metrics = rl_metrics,
};
