/* headers: fixed edits of the request going upstream and of the response
 * going to the client.
 *
 *   type: headers
 *   request_set: { X-Env: prod }
 *   request_remove: [ X-Debug ]
 *   response_set: { Strict-Transport-Security: "max-age=31536000" }
 *   response_remove: [ Server ]
 *
 * Headers that frame the message or belong to one hop (Content-Length,
 * Transfer-Encoding, Connection, Host, ...) are the proxy's to write and
 * are refused here: a plugin must not be able to desynchronise framing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "conf/config.h"
#include "conf/node.h"
#include "plugins/builtin.h"

enum { REQ_SET, REQ_REMOVE, RESP_SET, RESP_REMOVE, NLISTS };

static const char *const list_names[NLISTS] = {
    "request_set", "request_remove", "response_set", "response_remove",
};

typedef struct headers {
    gh_preq_header_t *v[NLISTS];    /* value NULL in the remove lists */
    size_t n[NLISTS];
} headers_t;

bool gh__header_name_ok(const char *s)
{
    /* RFC 9110 5.6.2 token */
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (!*s)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(extra, c)))
            return false;
    }
    return true;
}

bool gh__header_value_ok(const char *s)
{
    size_t n = strlen(s);
    if (n && (s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static bool managed(const char *name)
{
    static const char *const names[] = {
        "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "TE",
        "Trailer", "Upgrade", "Content-Length", "Host",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(name, names[i]) == 0)
            return true;
    return false;
}

static void hd_free(headers_t *h)
{
    if (!h)
        return;
    for (int l = 0; l < NLISTS; l++) {
        for (size_t i = 0; i < h->n[l]; i++) {
            free((char *)h->v[l][i].name);
            free((char *)h->v[l][i].value);
        }
        free(h->v[l]);
    }
    free(h);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        abort();
    return p;
}

static int name_ok(const gh_node_t *n, gh_errors_t *errs, const char **out)
{
    if (gh_node_string(errs, n, out) < 0)
        return -1;
    if (!gh__header_name_ok(*out)) {
        gh_node_error(errs, n, "invalid header name '%s'", *out);
        return -1;
    }
    if (managed(*out)) {
        gh_node_error(errs, n, "header '%s' is managed by gatehouse and cannot be changed",
                      *out);
        return -1;
    }
    return 0;
}

/* One list: a mapping name -> value for the set lists, a list of names for
 * the remove lists. */
static int decode_list(const gh_node_t *n, int l, gh_errors_t *errs, headers_t *h)
{
    bool set = l == REQ_SET || l == RESP_SET;
    if (gh_node_expect(errs, n, set ? GH_NODE_MAP : GH_NODE_SEQ) < 0)
        return -1;
    if (n->n > GH_PREQ_MAX_EDITS) {
        gh_node_error(errs, n, "at most %d headers in %s", GH_PREQ_MAX_EDITS, list_names[l]);
        return -1;
    }
    h->v[l] = calloc(n->n ? n->n : 1, sizeof(*h->v[l]));
    if (!h->v[l])
        abort();
    int rc = 0;
    for (size_t i = 0; i < n->n; i++) {
        const gh_node_t *k = set ? n->items[2 * i] : n->items[i];
        const char *name, *value = NULL;
        if (name_ok(k, errs, &name) < 0) {
            rc = -1;
            continue;
        }
        if (set) {
            const gh_node_t *v = n->items[2 * i + 1];
            if (gh_node_string(errs, v, &value) < 0) {
                rc = -1;
                continue;
            }
            if (!gh__header_value_ok(value)) {
                gh_node_error(errs, v, "invalid header value (control characters, or "
                                       "spaces at either end)");
                rc = -1;
                continue;
            }
        }
        for (size_t j = 0; j < h->n[l]; j++) {
            if (strcasecmp(h->v[l][j].name, name) == 0) {
                gh_node_error(errs, k, "header '%s' is listed twice in %s", name,
                              list_names[l]);
                rc = -1;
            }
        }
        gh_preq_header_t *e = &h->v[l][h->n[l]++];
        e->name = xstrdup(name);
        e->value = value ? xstrdup(value) : NULL;
    }
    return rc;
}

static headers_t *decode(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    static const char *const keys[] = { "type", "request_set", "request_remove",
                                        "response_set", "response_remove", NULL };
    char where[160];
    snprintf(where, sizeof(where), "plugin '%s'", pc->name);
    headers_t *h = calloc(1, sizeof(*h));
    if (!h)
        abort();
    int rc = gh_node_check_keys(errs, pc->node, keys, where);
    bool any = false;
    for (int l = 0; l < NLISTS; l++) {
        const gh_node_t *n = gh_node_get(pc->node, list_names[l]);
        any |= n != NULL;
        if (n && decode_list(n, l, errs, h) < 0)
            rc = -1;
    }
    if (!any) {
        gh_errors_add(errs, &pc->loc, "plugin '%s' needs request_set, request_remove, "
                                      "response_set or response_remove", pc->name);
        rc = -1;
    }
    if (rc < 0) {
        hd_free(h);
        return NULL;
    }
    return h;
}

static int hd_check(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    headers_t *h = decode(pc, errs);
    hd_free(h);
    return h ? 0 : -1;
}

static void *hd_create(const gh_plugin_conf_t *pc, void *previous, gh_errors_t *errs)
{
    return decode(pc, errs);
}

static void hd_destroy(void *inst)
{
    hd_free(inst);
}

static int hd_request(void *inst, gh_preq_t *req)
{
    const headers_t *h = inst;
    /* All or nothing: a response header such as HSTS silently missing is
     * worse than an error. */
    if (GH_PREQ_MAX_EDITS - req->nreq_set < h->n[REQ_SET] ||
        GH_PREQ_MAX_EDITS - req->nreq_remove < h->n[REQ_REMOVE] ||
        GH_PREQ_MAX_EDITS - req->nresp_set < h->n[RESP_SET] ||
        GH_PREQ_MAX_EDITS - req->nresp_remove < h->n[RESP_REMOVE])
        return 500;
    for (size_t i = 0; i < h->n[REQ_REMOVE]; i++)
        gh_preq_remove_request_header(req, h->v[REQ_REMOVE][i].name);
    for (size_t i = 0; i < h->n[REQ_SET]; i++)
        gh_preq_set_request_header(req, h->v[REQ_SET][i].name, h->v[REQ_SET][i].value);
    for (size_t i = 0; i < h->n[RESP_REMOVE]; i++)
        gh_preq_remove_response_header(req, h->v[RESP_REMOVE][i].name);
    for (size_t i = 0; i < h->n[RESP_SET]; i++)
        gh_preq_set_response_header(req, h->v[RESP_SET][i].name, h->v[RESP_SET][i].value);
    return GH_PLUGIN_PASS;
}

const gh_plugin_ops_t gh__headers_ops = {
    .type = "headers",
    .check = hd_check,
    .create = hd_create,
    .destroy = hd_destroy,
    .on_request = hd_request,
};
