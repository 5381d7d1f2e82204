/* The gh_preq_* helpers of plugins/plugin.h. They keep the edit lists in a
 * shape the proxy can apply blindly (remove the named headers, then add the
 * set ones) and still get what the plugins did, in the order they did it:
 * a name is never listed twice, and a remove cancels an earlier set of the
 * same name. Nothing here allocates. */
#include "plugins/plugin.h"

#include <string.h>
#include <strings.h>

void gh_preq_init(gh_preq_t *req)
{
    memset(req, 0, sizeof(*req));
}

const char *gh_preq_header(const gh_preq_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

static void add_remove(const char **list, size_t *n, gh_preq_header_t *set, size_t *nset,
                       const char *name)
{
    for (size_t i = 0; i < *nset; i++) {
        if (strcasecmp(set[i].name, name) == 0) {
            memmove(&set[i], &set[i + 1], (*nset - i - 1) * sizeof(*set));
            (*nset)--;
            break;
        }
    }
    for (size_t i = 0; i < *n; i++)
        if (strcasecmp(list[i], name) == 0)
            return;
    if (*n < GH_PREQ_MAX_EDITS)
        list[(*n)++] = name;
}

static void add_set(gh_preq_header_t *set, size_t *nset, const char *name, const char *value)
{
    for (size_t i = 0; i < *nset; i++) {
        if (strcasecmp(set[i].name, name) == 0) {
            set[i].value = value;
            return;
        }
    }
    if (*nset < GH_PREQ_MAX_EDITS) {
        set[*nset].name = name;
        set[*nset].value = value;
        (*nset)++;
    }
}

void gh_preq_remove_request_header(gh_preq_t *req, const char *name)
{
    add_remove(req->req_remove, &req->nreq_remove, req->req_set, &req->nreq_set, name);
}

void gh_preq_set_request_header(gh_preq_t *req, const char *name, const char *value)
{
    add_set(req->req_set, &req->nreq_set, name, value);
}

void gh_preq_remove_response_header(gh_preq_t *req, const char *name)
{
    add_remove(req->resp_remove, &req->nresp_remove, req->resp_set, &req->nresp_set, name);
}

void gh_preq_set_response_header(gh_preq_t *req, const char *name, const char *value)
{
    add_set(req->resp_set, &req->nresp_set, name, value);
}

const char *gh_preq_strdup(gh_preq_t *req, const char *s)
{
    size_t n = strlen(s) + 1;
    if (req->scratch_len > sizeof(req->scratch) || sizeof(req->scratch) - req->scratch_len < n)
        return NULL;
    char *p = req->scratch + req->scratch_len;
    memcpy(p, s, n);
    req->scratch_len += n;
    return p;
}
