/* Answers that gatehouse writes itself: errors as small JSON bodies
 * (SPEC.md section 3), `respond:` and `redirect:` routes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "plugins/plugin.h"
#include "proxy/log.h"
#include "proxy/proxy.h"

static const struct {
    int status;
    const char *reason;
    const char *error;
} statuses[] = {
    { 100, "Continue", NULL },
    { 101, "Switching Protocols", NULL },
    { 103, "Early Hints", NULL },
    { 200, "OK", NULL },
    { 201, "Created", NULL },
    { 202, "Accepted", NULL },
    { 204, "No Content", NULL },
    { 206, "Partial Content", NULL },
    { 301, "Moved Permanently", NULL },
    { 302, "Found", NULL },
    { 303, "See Other", NULL },
    { 304, "Not Modified", NULL },
    { 307, "Temporary Redirect", NULL },
    { 308, "Permanent Redirect", NULL },
    { 400, "Bad Request", "bad request" },
    { 401, "Unauthorized", "unauthorized" },
    { 403, "Forbidden", "forbidden" },
    { 404, "Not Found", "no route for this host and path" },
    { 405, "Method Not Allowed", "method not allowed" },
    { 406, "Not Acceptable", "not acceptable" },
    { 409, "Conflict", "conflict" },
    { 410, "Gone", "gone" },
    { 412, "Precondition Failed", "precondition failed" },
    { 415, "Unsupported Media Type", "unsupported media type" },
    { 416, "Range Not Satisfiable", "range not satisfiable" },
    { 422, "Unprocessable Content", "unprocessable content" },
    { 408, "Request Timeout", "request header timeout" },
    { 413, "Content Too Large", "request body too large" },
    { 414, "URI Too Long", "request URI too long" },
    { 429, "Too Many Requests", "rate limited" },
    { 431, "Request Header Fields Too Large", "request header fields too large" },
    { 500, "Internal Server Error", "internal error" },
    { 501, "Not Implemented", "transfer-encoding not implemented" },
    { 502, "Bad Gateway", "bad gateway" },
    { 503, "Service Unavailable", "no upstream server available" },
    { 504, "Gateway Timeout", "upstream timeout" },
    { 505, "HTTP Version Not Supported", "HTTP version not supported" },
};

const char *gh__status_reason(int status)
{
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
        if (statuses[i].status == status)
            return statuses[i].reason;
    return status < 200 ? "Informational" : status < 300 ? "OK" : status < 400 ? "Redirect"
         : status < 500 ? "Client Error" : "Server Error";
}

static const char *status_error(int status)
{
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
        if (statuses[i].status == status && statuses[i].error)
            return statuses[i].error;
    return "error";
}

static void respond_written(gh_write_req_t *w, int status)
{
    gh_conn_t *c = w->data;
    gh__wreq_put(w);
    if (c->req)
        c->req->client_writing = false;
    if (status < 0) {
        gh__conn_abort(c);
        return;
    }
    gh__conn_request_done(c);
}

void gh__respond(gh_req_t *r, int status, const char *content_type, const char *extra_headers,
                 const char *body, size_t body_len)
{
    gh_conn_t *c = r->conn;
    r->phase = GH_R_LOCAL;
    r->status = status;
    /* Framing errors leave the stream position unknown: never read on. */
    if (status == 400 || status == 408 || status == 413 || status == 414 || status == 431 ||
        status == 501 || status == 505)
        r->resp_close = true;
    bool close = r->resp_close || !r->client_keep_alive || !r->req_body_done || c->server->stopping;
    if (close)
        r->resp_close = true;
    bool send_body = !r->head_method;
    /* Headers plugins asked for (WWW-Authenticate, Retry-After, RateLimit-*)
     * go on local answers too. */
    char plug[2048];
    size_t plen = 0;
    plug[0] = '\0';
    if (r->preq) {
        for (size_t i = 0; i < r->preq->nresp_set; i++) {
            int n = snprintf(plug + plen, sizeof plug - plen, "%s: %s\r\n",
                             r->preq->resp_set[i].name, r->preq->resp_set[i].value);
            if (n < 0 || (size_t)n >= sizeof plug - plen) {
                plug[plen] = '\0';
                break;
            }
            plen += (size_t)n;
        }
    }
    size_t cap = 512 + plen + (extra_headers ? strlen(extra_headers) : 0) + (send_body ? body_len : 0);
    char *buf = malloc(cap);
    if (!buf) {
        gh__conn_abort(c);
        return;
    }
    int n = snprintf(buf, cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Request-ID: %s\r\n"
                     "%s%s%s\r\n",
                     status, gh__status_reason(status), content_type, body_len, r->request_id,
                     close ? "Connection: close\r\n" : (r->http10 ? "Connection: keep-alive\r\n" : ""),
                     extra_headers ? extra_headers : "", plug);
    if (n < 0 || (size_t)n >= cap) {
        free(buf);
        gh__conn_abort(c);
        return;
    }
    size_t len = (size_t)n;
    if (send_body && body_len) {
        memcpy(buf + len, body, body_len);
        len += body_len;
    }
    free(r->rhead);
    r->rhead = buf;
    r->rhead_len = len;
    r->bytes_out += len;
    r->client_writing = true;
    uv_buf_t b = uv_buf_init(buf, (unsigned)len);
    if (gh__conn_write(c, &b, 1, respond_written) != 0) {
        r->client_writing = false;
        gh__conn_abort(c);
        return;
    }
    gh__conn_update_read(c);
}

void gh__respond_error(gh_req_t *r, int status)
{
    char body[160];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"request_id\":\"%s\"}\n",
                     status_error(status), r->request_id);
    gh__respond(r, status, "application/json", NULL, body, (size_t)n);
}

void gh__respond_redirect(gh_req_t *r, const char *location, int status)
{
    size_t n = strlen(location) + 16;
    char *hdr = malloc(n);
    if (!hdr) {
        gh__conn_abort(r->conn);
        return;
    }
    snprintf(hdr, n, "Location: %s\r\n", location);
    gh__respond(r, status, "text/plain; charset=utf-8", hdr, "", 0);
    free(hdr);
}

/* Appends s to the growing buffer; returns -1 when it would not fit. */
static int put(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    if (*len + n >= cap)
        return -1;
    memcpy(out + *len, s, n);
    *len += n;
    return 0;
}

/* Expands {path} {query} {uri} {host} in a redirect template. When the
 * template says nothing of the query and has no '?', the request's query
 * is appended, so redirects never lose it. */
static char *expand_redirect(gh_req_t *r, const char *tpl)
{
    size_t cap = strlen(tpl) + 3 * (strlen(r->path) + strlen(r->host) +
                                    (r->query ? strlen(r->query) : 0)) + 8;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t len = 0;
    bool query_used = strchr(tpl, '?') != NULL;
    const char *q = r->query ? r->query : "";
    for (const char *p = tpl; *p;) {
        int rc = 0;
        if (strncmp(p, "{path}", 6) == 0) {
            rc = put(out, cap, &len, r->path, strlen(r->path));
            p += 6;
        } else if (strncmp(p, "{query}", 7) == 0) {
            rc = put(out, cap, &len, q, strlen(q));
            query_used = true;
            p += 7;
        } else if (strncmp(p, "{uri}", 5) == 0) {
            rc = put(out, cap, &len, r->path, strlen(r->path));
            if (!rc && r->query) {
                rc = put(out, cap, &len, "?", 1);
                if (!rc)
                    rc = put(out, cap, &len, q, strlen(q));
            }
            query_used = true;
            p += 5;
        } else if (strncmp(p, "{host}", 6) == 0) {
            rc = put(out, cap, &len, r->host, strlen(r->host));
            p += 6;
        } else {
            rc = put(out, cap, &len, p, 1);
            p++;
        }
        if (rc) {
            free(out);
            return NULL;
        }
    }
    if (!query_used && r->query && (put(out, cap, &len, "?", 1) || put(out, cap, &len, q, strlen(q)))) {
        free(out);
        return NULL;
    }
    out[len] = '\0';
    return out;
}

void gh__respond_route(gh_req_t *r)
{
    const gh_route_conf_t *rt = r->route;
    if (rt->action == GH_ACTION_REDIRECT) {
        char *loc = expand_redirect(r, rt->redirect);
        if (!loc) {
            gh__respond_error(r, 500);
            return;
        }
        /* A Location with CR or LF would split the response. */
        if (strpbrk(loc, "\r\n")) {
            free(loc);
            gh__respond_error(r, 400);
            return;
        }
        gh__respond_redirect(r, loc, rt->redirect_status ? rt->redirect_status : 308);
        free(loc);
        return;
    }
    gh__respond(r, rt->respond_status ? rt->respond_status : 200,
                rt->respond_content_type ? rt->respond_content_type : "text/plain; charset=utf-8",
                NULL, rt->respond_body ? rt->respond_body : "", rt->respond_body_len);
}

/* Serves /.well-known/acme-challenge/TOKEN from tls.acme_webroot, so
 * `certbot --webroot` can renew certificates while gatehouse runs. Tokens
 * are base64url (RFC 8555 section 8.3): anything else is 404, which also
 * keeps the request inside the directory. */
void gh__respond_acme(gh_req_t *r)
{
    static const char prefix[] = "/.well-known/acme-challenge/";
    const char *root = r->snap->cfg->tls.acme_webroot;
    const char *tok = r->path + sizeof prefix - 1;
    size_t n = strlen(tok);
    bool ok = root && n > 0 && n <= 128;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = tok[i];
        ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '_';
    }
    char path[4096], body[4096];
    ssize_t len = -1;
    if (ok && (size_t)snprintf(path, sizeof path, "%s/.well-known/acme-challenge/%s", root, tok) <
                  sizeof path) {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0 && (size_t)snprintf(path, sizeof path, "%s/%s", root, tok) < sizeof path)
            fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
            len = read(fd, body, sizeof body);
            close(fd);
        }
    }
    if (len < 0) {
        gh__respond_error(r, 404);
        return;
    }
    gh__respond(r, 200, "text/plain", NULL, body, (size_t)len);
}
