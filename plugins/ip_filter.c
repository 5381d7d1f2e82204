/* ip_filter: answers 403 by client address.
 *
 *   type: ip_filter
 *   allow: ["10.0.0.0/8", "fd00::/8"]    # if given, only these pass
 *   deny:  ["10.9.0.0/16"]               # these never pass
 *
 * deny wins over allow. The address is the real client one (trusted proxies
 * applied by the proxy); a request whose address is unknown matches no
 * entry, so it passes a deny-only filter and fails one with allow. */
#include <stdio.h>
#include <stdlib.h>
#include "conf/config.h"
#include "conf/node.h"
#include "plugins/builtin.h"

typedef struct ip_filter {
    gh_cidr_t *allow, *deny;
    size_t nallow, ndeny;
    bool has_allow;
} ip_filter_t;

static void ipf_free(ip_filter_t *f)
{
    if (!f)
        return;
    free(f->allow);
    free(f->deny);
    free(f);
}

static int decode_list(const gh_node_t *n, gh_errors_t *errs, gh_cidr_t **out, size_t *count)
{
    if (gh_node_expect(errs, n, GH_NODE_SEQ) < 0)
        return -1;
    if (n->n == 0) {
        gh_node_error(errs, n, "expected a non-empty list");
        return -1;
    }
    *out = calloc(n->n, sizeof(**out));
    if (!*out)
        abort();
    int rc = 0;
    for (size_t i = 0; i < n->n; i++) {
        const char *s;
        if (gh_node_string(errs, n->items[i], &s) < 0) {
            rc = -1;
        } else if (gh_cidr_parse(s, &(*out)[*count]) < 0) {
            gh_node_error(errs, n->items[i],
                          "invalid CIDR '%s' (expected e.g. 10.0.0.0/8 or ::1/128)", s);
            rc = -1;
        } else {
            (*count)++;
        }
    }
    return rc;
}

static ip_filter_t *decode(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    static const char *const keys[] = { "type", "allow", "deny", NULL };
    char where[160];
    snprintf(where, sizeof(where), "plugin '%s'", pc->name);
    ip_filter_t *f = calloc(1, sizeof(*f));
    if (!f)
        abort();
    int rc = gh_node_check_keys(errs, pc->node, keys, where);
    const gh_node_t *allow = gh_node_get(pc->node, "allow");
    const gh_node_t *deny = gh_node_get(pc->node, "deny");
    if (!allow && !deny) {
        gh_errors_add(errs, &pc->loc, "plugin '%s' needs allow or deny", pc->name);
        rc = -1;
    }
    if (allow && decode_list(allow, errs, &f->allow, &f->nallow) < 0)
        rc = -1;
    if (deny && decode_list(deny, errs, &f->deny, &f->ndeny) < 0)
        rc = -1;
    f->has_allow = allow != NULL;
    if (rc < 0) {
        ipf_free(f);
        return NULL;
    }
    return f;
}

static int ipf_check(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    ip_filter_t *f = decode(pc, errs);
    ipf_free(f);
    return f ? 0 : -1;
}

static void *ipf_create(const gh_plugin_conf_t *pc, void *previous, gh_errors_t *errs)
{
    return decode(pc, errs);
}

static void ipf_destroy(void *inst)
{
    ipf_free(inst);
}

static int ipf_request(void *inst, gh_preq_t *req)
{
    const ip_filter_t *f = inst;
    const struct sockaddr *sa = req->client_addr;
    if (sa && gh_cidr_match_any(f->deny, f->ndeny, sa))
        return 403;
    if (f->has_allow && !(sa && gh_cidr_match_any(f->allow, f->nallow, sa)))
        return 403;
    return GH_PLUGIN_PASS;
}

const gh_plugin_ops_t gh__ip_filter_ops = {
    .type = "ip_filter",
    .check = ipf_check,
    .create = ipf_create,
    .destroy = ipf_destroy,
    .on_request = ipf_request,
};
