/* How a request starts: its head checked by the strict scanner, the
 * strings it keeps, the route, the route's plugins, then the action (an
 * answer of our own, or proxy/proxy.c for an upstream). Also the llhttp
 * callbacks that decode chunked request bodies. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf/config.h"
#include "plugins/plugin.h"
#include "proxy/admin.h"
#include "proxy/log.h"
#include "proxy/proxy.h"
#include "proxy/tunnel_edge.h"
#include "routes/router.h"

static int req_on_body(llhttp_t *p, const char *at, size_t len);
static int req_on_message_complete(llhttp_t *p);

static const llhttp_settings_t req_settings = {
    .on_body = req_on_body,
    .on_message_complete = req_on_message_complete,
};

gh_req_t *gh__req_alloc(void)
{
    gh_req_t *r = gh__req_mem_get();
    if (r) {
        memset(r, 0, offsetof(gh_req_t, head));
        r->head.nheaders = 0;
        r->head.host_index = -1;
    }
    return r;
}


/* ---- request start ---- */

static bool header_value_is(const gh_h1_header_t *h, const char *lc)
{
    size_t n = strlen(lc);
    if (h->value_len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = h->value[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch + 32);
        if (ch != lc[i])
            return false;
    }
    return true;
}

static bool request_id_ok(const char *v, size_t n)
{
    if (n == 0 || n > 40)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              ch == '-' || ch == '_' || ch == '.'))
            return false;
    }
    return true;
}

/* Splits the request target into a normalised path and a raw query, and
 * finds the host (absolute-form wins over Host, RFC 9112 3.2.2). Copies
 * everything the request needs after its head bytes are gone. */
static int request_strings(gh_req_t *r)
{
    const gh_h1_head_t *h = &r->head;
    const char *t = h->target;
    size_t tn = h->target_len;
    const char *host = NULL;
    size_t host_len = 0;

    if (h->host_index >= 0) {
        host = h->headers[h->host_index].value;
        host_len = h->headers[h->host_index].value_len;
    }
    if (tn >= 7 && (strncasecmp(t, "http://", 7) == 0 || (tn >= 8 && strncasecmp(t, "https://", 8) == 0))) {
        size_t skip = t[4] == ':' ? 7 : 8;
        const char *a = t + skip;
        const char *end = t + tn;
        const char *slash = memchr(a, '/', (size_t)(end - a));
        const char *q = memchr(a, '?', (size_t)(end - a));
        const char *ae = slash ? slash : (q ? q : end);
        if (q && q < ae)
            ae = q;
        host = a;
        host_len = (size_t)(ae - a);
        t = ae;
        tn = (size_t)(end - ae);
    }

    const char *q = memchr(t, '?', tn);
    size_t path_len = q ? (size_t)(q - t) : tn;
    size_t query_len = q ? tn - path_len - 1 : 0;
    const gh_h1_header_t *ua = NULL, *ref = NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (h->headers[i].id == GH_HN_USER_AGENT)
            ua = &h->headers[i];
        else if (h->headers[i].id == GH_HN_REFERER)
            ref = &h->headers[i];
    }
    size_t need = host_len + 1 + path_len + 2 + query_len + 1 + (ua ? ua->value_len : 0) + 1 +
                  (ref ? ref->value_len : 0) + 1 + 8;
    char *p = malloc(need);
    if (!p)
        return 500;
    r->strs = p;

    r->host = p;
    ssize_t hn = host_len ? gh_host_normalize(host, host_len, p, host_len + 1) : 0;
    if (hn < 0)
        return 400;
    p[hn] = '\0';
    p += hn + 1;

    r->path = p;
    if (path_len == 0) {
        p[0] = '/';
        p[1] = '\0';
        p += 2;
    } else if (path_len == 1 && t[0] == '*') {
        p[0] = '*';
        p[1] = '\0';
        p += 2;
    } else {
        ssize_t pn = gh_path_normalize(t, path_len, p, path_len + 1);
        if (pn < 0)
            return 400;
        p[pn] = '\0';
        p += pn + 1;
    }
    if (q) {
        r->query = p;
        memcpy(p, q + 1, query_len);
        p[query_len] = '\0';
        p += query_len + 1;
    }
    if (ua) {
        r->user_agent = p;
        memcpy(p, ua->value, ua->value_len);
        p[ua->value_len] = '\0';
        p += ua->value_len + 1;
    }
    if (ref) {
        r->referer = p;
        memcpy(p, ref->value, ref->value_len);
        p[ref->value_len] = '\0';
    }
    return 0;
}

/* Runs the route's plugins on the request. Returns 0 to go on, or the
 * status a plugin answered with. The plugins see NUL-terminated copies of
 * the headers; only routes that list plugins pay for them. */
static int run_plugins(gh_req_t *r)
{
    const gh_h1_head_t *h = &r->head;
    size_t bytes = 0;
    for (size_t i = 0; i < h->nheaders; i++)
        bytes += h->headers[i].name_len + h->headers[i].value_len + 2;
    r->preq = malloc(sizeof *r->preq);
    if (r->preq)
        gh_preq_init(r->preq); /* answers read its edits even when we fail below */
    r->preq_strs = malloc(bytes + h->nheaders * sizeof(gh_preq_header_t) + 1);
    if (!r->preq || !r->preq_strs)
        return 500;
    gh_preq_t *p = r->preq;
    gh_preq_header_t *hs = (gh_preq_header_t *)r->preq_strs;
    char *o = r->preq_strs + h->nheaders * sizeof(gh_preq_header_t);
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        hs[i].name = o;
        memcpy(o, f->name, f->name_len);
        o[f->name_len] = '\0';
        o += f->name_len + 1;
        hs[i].value = o;
        memcpy(o, f->value, f->value_len);
        o[f->value_len] = '\0';
        o += f->value_len + 1;
    }
    p->route = r->route;
    p->client_addr = (const struct sockaddr *)&r->client_addr;
    p->client_ip = r->client_ip;
    p->method = r->method;
    p->host = r->host;
    p->path = r->path;
    p->headers = hs;
    p->nheaders = h->nheaders;
    return gh_plugins_request(r->route, p, &r->plugins_ran);
}

static void start_request(gh_conn_t *c, gh_req_t *r, size_t head_len)
{
    gh_h1_head_t *h = &r->head;
    gh_config_t *cfg = r->snap->cfg;

    c->state = GH_C_REQUEST;
    c->nrequests++;
    r->phase = GH_R_ROUTING;
    r->bytes_in = head_len;
    size_t ml = h->method_len < sizeof r->method - 1 ? h->method_len : sizeof r->method - 1;
    memcpy(r->method, h->method, ml);
    r->method[ml] = '\0';
    r->http10 = h->minor_version == 0;
    r->client_keep_alive = r->http10 ? h->conn_keep_alive && !h->conn_close : !h->conn_close;
    r->head_method = strcmp(r->method, "HEAD") == 0;
    r->has_body = h->chunked || (h->has_content_length && h->content_length > 0);
    r->body_chunked = h->chunked;
    r->req_body_done = !r->has_body;
    r->upgrade = h->conn_upgrade && h->has_upgrade && !r->has_body && !r->http10;

    bool have_id = false;
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        if (f->id == GH_HN_X_REQUEST_ID && request_id_ok(f->value, f->value_len)) {
            memcpy(r->request_id, f->value, f->value_len);
            r->request_id[f->value_len] = '\0';
            have_id = true;
        } else if (f->id == GH_HN_EXPECT) {
            if (header_value_is(f, "100-continue"))
                r->expect_continue = true;
        }
    }
    if (!have_id)
        gh__request_id(r->request_id);

    /* Content-Length bodies are counted; only chunked ones need a parser.
     * llhttp is started on a minimal head of our own, so the client's head
     * (already checked by the scanner) is not parsed twice. */
    r->body_remaining = h->has_content_length ? h->content_length : 0;
    if (r->body_chunked) {
        static const char chunked_head[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        llhttp_init(&r->qparser, HTTP_REQUEST, &req_settings);
        r->qparser.data = r;
        if (llhttp_execute(&r->qparser, chunked_head, sizeof chunked_head - 1) != HPE_OK) {
            c->off += head_len;
            r->resp_close = true;
            gh__respond_error(r, 500);
            return;
        }
    }

    gh__real_client(r);
    int st = request_strings(r);
    if (st) {
        c->off += head_len;
        r->resp_close = true;
        gh__respond_error(r, st);
        return;
    }

    if (r->head.method_len == 7 && memcmp(r->head.method, "CONNECT", 7) == 0) {
        c->off += head_len;
        r->resp_close = true;
        gh__respond_error(r, 405);
        return;
    }

    if (gh__tunnel_is_upgrade(r)) {
        c->off += head_len;
        gh__tunnel_accept(r);
        return;
    }

    if (c->admin) {
        c->off += head_len;
        if (r->has_body)
            r->resp_close = true;
        gh__admin_handle(r);
        return;
    }

    /* ACME HTTP-01 challenges must stay reachable over plain http. */
    bool acme = strncmp(r->path, "/.well-known/acme-challenge/", 28) == 0;
    if (acme && cfg->tls.acme_webroot && !c->tls) {
        c->off += head_len;
        if (r->has_body)
            r->resp_close = true;
        gh__respond_acme(r);
        return;
    }
    /* Plain-HTTP listeners that only redirect to https. */
    if (c->redirect_https && !acme) {
        c->off += head_len;
        if (r->has_body)
            r->resp_close = true;
        size_t n = strlen(r->host) + strlen(r->path) + (r->query ? strlen(r->query) : 0) + 16;
        char *loc = malloc(n);
        if (!loc) {
            gh__conn_abort(c);
            return;
        }
        snprintf(loc, n, "https://%s%s%s%s", r->host, r->path, r->query ? "?" : "",
                 r->query ? r->query : "");
        gh__respond_redirect(r, loc, 308);
        free(loc);
        return;
    }

    r->route = gh_router_match_normalized(cfg->router, r->host, strlen(r->host), r->path,
                                          strlen(r->path));
    if (!r->route) {
        c->off += head_len;
        if (r->has_body)
            r->resp_close = true;
        gh__respond_error(r, 404);
        return;
    }
    if (r->route->nplugins) {
        st = run_plugins(r);
        if (st) {
            c->off += head_len;
            if (r->has_body)
                r->resp_close = true;
            gh__respond_error(r, st);
            return;
        }
    }
    if (r->route->action != GH_ACTION_UPSTREAM) {
        c->off += head_len;
        if (r->has_body)
            r->resp_close = true;
        gh__respond_route(r);
        return;
    }
    if (h->has_content_length && h->content_length > r->route->max_body_bytes) {
        c->off += head_len;
        r->resp_close = true;
        gh__respond_error(r, 413);
        return;
    }
    /* The head's bytes stay in place (the buffer is not compacted while the
     * request is routing), so the upstream head is built from its slices. */
    c->off += head_len;
    gh__proxy_start(r);
}

void gh__conn_process_head(gh_conn_t *c)
{
    gh_config_t *cfg = c->server->snap->cfg;
    size_t avail = c->len - c->off;
    if (avail == 0) {
        gh__conn_set_deadline(c, c->nrequests ? GH_T_IDLE : GH_T_HEADER);
        return;
    }
    if (c->deadline != GH_T_HEADER)
        gh__conn_set_deadline(c, GH_T_HEADER);

    gh_req_t *r = gh__req_alloc();
    if (!r) {
        gh__conn_abort(c);
        return;
    }
    int rc = gh_h1_scan_request(c->buf + c->off, avail, cfg->limits.max_header_bytes, &r->head);
    if (rc == 0) {
        gh__req_mem_put(r);
        return;
    }
    r->conn = c;
    r->snap = c->server->snap;
    gh__snapshot_retain(r->snap);
    r->start_ns = gh__now_ns();
    c->req = r;
    c->state = GH_C_REQUEST;
    if (rc < 0) {
        gh__request_id(r->request_id);
        r->resp_close = true;
        r->bytes_in = avail;
        c->off = c->len;
        gh__respond_error(r, -rc);
        return;
    }
    start_request(c, r, (size_t)rc);
}

/* ---- llhttp callbacks for request bodies ---- */

static int req_on_body(llhttp_t *p, const char *at, size_t len)
{
    gh_req_t *r = p->data;
    r->body_bytes += len;
    if (r->route && r->body_bytes > r->route->max_body_bytes) {
        r->too_large = true;
        return HPE_USER;
    }
    if (r->body_chunked) {
        /* Re-frame: one chunk per span, sized from the decoded length. */
        int n = snprintf(r->qout + r->qout_len, 20, "%zx\r\n", len);
        r->qout_len += (size_t)n;
        memcpy(r->qout + r->qout_len, at, len);
        r->qout_len += len;
        memcpy(r->qout + r->qout_len, "\r\n", 2);
        r->qout_len += 2;
    } else if (r->nqiov < sizeof r->qiov / sizeof r->qiov[0]) {
        r->qiov[r->nqiov++] = uv_buf_init((char *)at, (unsigned)len);
    } else {
        return HPE_USER; /* cannot happen: one span per execute for Content-Length */
    }
    return 0;
}

static int req_on_message_complete(llhttp_t *p)
{
    gh_req_t *r = p->data;
    if (r->body_chunked && r->qout) {
        memcpy(r->qout + r->qout_len, "0\r\n\r\n", 5);
        r->qout_len += 5;
    }
    r->req_body_done = true;
    return HPE_PAUSED;
}

