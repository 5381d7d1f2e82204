/* Upstream groups: choosing a server, connection pools, connecting (with
 * DNS for named hosts) and passive marking of servers that fail. */
#include <stdlib.h>
#include <string.h>

#include "conf/config.h"
#include "proxy/log.h"
#include "proxy/proxy.h"
#include "proxy/tunnel_edge.h"
#include "proxy/tunnel_session.h"
#include "tls/tls.h"

/* A server that refuses connections is skipped for a while, growing with
 * each consecutive failure, so one dead container does not cost every
 * request a connect attempt. */
#define DOWN_BASE_MS 1000
#define DOWN_MAX_MS 30000
#define DNS_TTL_MS 30000

struct gh_gai {
    uv_getaddrinfo_t req;
    gh_req_t *r;            /* NULL once the request gave up waiting */
    gh_upserver_t *srv;
    gh_uconn_ready_cb cb;
};

static void uconn_connect(gh_req_t *r, gh_upserver_t *srv, gh_uconn_ready_cb cb);
static void uconn_closed(gh_stream_t *s);

void gh__upstream_init(gh_snapshot_t *s)
{
    gh_config_t *cfg = s->cfg;
    s->ups = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof *s->ups);
    size_t shared_ix = 0;   /* into s->shared->health_down */
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        gh_upstream_t *u = &s->ups[i];
        u->conf = cfg->upstreams[i];
        u->rr = &s->shared->rr[i];
        u->n = u->conf->nservers;
        u->servers = calloc(u->n ? u->n : 1, sizeof *u->servers);
        bool https = false;
        for (size_t j = 0; j < u->n; j++)
            https |= u->conf->servers[j].scheme == GH_SCHEME_HTTPS;
        if (https) {
            gh_errors_t errs;
            gh_errors_init(&errs);
            u->tls = gh_tls_client_new_at(&u->conf->tls, &u->conf->loc, &errs);
            for (size_t k = 0; k < errs.n; k++)
                gh_log_error("upstream %s: %s", u->conf->name, errs.lines[k]);
            gh_errors_free(&errs);
        }
        for (size_t j = 0; j < u->n; j++) {
            gh_upserver_t *sv = &u->servers[j];
            sv->up = u;
            sv->conf = &u->conf->servers[j];
            sv->shared_down = &s->shared->health_down[shared_ix];
            sv->active = &s->shared->active[shared_ix++];
            struct sockaddr_in *a4 = (struct sockaddr_in *)&sv->addr;
            struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&sv->addr;
            if (uv_ip4_addr(sv->conf->host, sv->conf->port, a4) == 0 ||
                uv_ip6_addr(sv->conf->host, sv->conf->port, a6) == 0) {
                sv->numeric = true;
                sv->have_addr = true;
            }
        }
    }
}

static void close_idle(gh_upserver_t *sv)
{
    while (sv->idle) {
        gh_uconn_t *uc = sv->idle;
        sv->idle = uc->next;
        sv->nidle--;
        uc->srv = NULL;
        uc->state = GH_UC_CLOSED;
        gh_stream_close(uc->stream);
    }
}

void gh__upstream_close_idle(gh_snapshot_t *s)
{
    if (!s || !s->ups)
        return;
    for (size_t i = 0; i < s->cfg->nupstreams; i++)
        for (size_t j = 0; j < s->ups[i].n; j++)
            close_idle(&s->ups[i].servers[j]);
}

void gh__upstream_fini(gh_snapshot_t *s)
{
    if (!s->ups)
        return;
    for (size_t i = 0; i < s->cfg->nupstreams; i++) {
        gh_upstream_t *u = &s->ups[i];
        for (size_t j = 0; j < u->n; j++) {
            gh_upserver_t *sv = &u->servers[j];
            while (sv->idle) {
                gh_uconn_t *uc = sv->idle;
                sv->idle = uc->next;
                uc->srv = NULL;
                uc->state = GH_UC_CLOSED;
                gh_stream_close(uc->stream);
            }
        }
        free(u->servers);
        if (u->tls)
            gh_tls_client_free(u->tls);
    }
    free(s->ups);
    s->ups = NULL;
}

static bool server_up(const gh_upserver_t *sv, uint64_t now)
{
    /* health verdicts come from worker 0's checks */
    return sv->down_until <= now && !atomic_load_explicit(sv->shared_down, memory_order_relaxed);
}

static uint32_t hash_peer(const gh_conn_t *c)
{
    const uint8_t *p;
    size_t n;
    if (c->peer.sa.sa_family == AF_INET6) {
        p = (const uint8_t *)&c->peer.in6.sin6_addr;
        n = 16;
    } else {
        p = (const uint8_t *)&c->peer.in.sin_addr;
        n = 4;
    }
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* Returns the index of the chosen server, or -1 with *all_down telling
 * whether the reason is that every untried server is marked down. */
static int pick(gh_req_t *r, bool *all_down)
{
    gh_upstream_t *u = r->up;
    uint64_t now = uv_now(r->conn->server->loop);
    size_t n = u->n;
    int best = -1;
    *all_down = false;
    if (n == 0)
        return -1;
    size_t untried = 0;
    for (size_t i = 0; i < n; i++)
        if (i >= 32 || !(r->tried & (1u << i)))
            untried++;
    if (untried == 0 || r->attempts >= n)
        return -1;

    size_t start;
    switch (u->conf->balance) {
    case GH_BALANCE_HASH_CLIENT_IP:
        start = hash_peer(r->conn) % n;
        break;
    case GH_BALANCE_LEAST_CONN:
    case GH_BALANCE_ROUND_ROBIN:
    default:
        start = atomic_fetch_add_explicit(u->rr, 1, memory_order_relaxed) % n;
        break;
    }
    unsigned best_active = ~0u;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (i < 32 && (r->tried & (1u << i)))
            continue;
        if (!server_up(&u->servers[i], now))
            continue;
        if (u->conf->balance != GH_BALANCE_LEAST_CONN) {
            best = (int)i;
            break;
        }
        unsigned active = atomic_load_explicit(u->servers[i].active, memory_order_relaxed);
        if (active < best_active) {
            best_active = active;
            best = (int)i;
        }
    }
    if (best < 0)
        *all_down = true;
    return best;
}

void gh__upserver_failed(gh_upserver_t *srv, uint64_t now)
{
    if (!srv)
        return;
    srv->fails++;
    uint64_t ms = DOWN_BASE_MS;
    for (unsigned i = 1; i < srv->fails && ms < DOWN_MAX_MS; i++)
        ms *= 2;
    if (ms > DOWN_MAX_MS)
        ms = DOWN_MAX_MS;
    srv->down_until = now + ms;
    gh_log_warn("upstream %s server %s marked down for %llums after %u failure(s)",
                srv->up->conf->name, srv->conf->authority, (unsigned long long)ms, srv->fails);
}

int gh__upstream_acquire(gh_req_t *r, gh_uconn_ready_cb cb)
{
    bool all_down;
    int i = pick(r, &all_down);
    if (i < 0)
        return all_down && r->attempts == 0 ? -503 : -502;
    gh_upserver_t *sv = &r->up->servers[i];
    if (i < 32)
        r->tried |= 1u << i;
    r->attempts++;
    r->srv = sv;
    r->upstream_addr = sv->conf->authority;
    atomic_fetch_add_explicit(sv->active, 1, memory_order_relaxed);

    /* Pooled connections are tried first, most recently used first (they
     * are the least likely to have been closed by the server). */
    while (sv->idle && !r->retried_stale) {
        gh_uconn_t *uc = sv->idle;
        sv->idle = uc->next;
        if (sv->idle)
            sv->idle->prev = NULL;
        sv->nidle--;
        uc->next = uc->prev = NULL;
        if (sv->conf->scheme == GH_SCHEME_TUNNEL && !gh_tsession_stream_reusable(uc->stream)) {
            /* its connection is going away: let it drain */
            uc->srv = NULL;
            uc->state = GH_UC_CLOSED;
            gh_stream_close(uc->stream);
            continue;
        }
        gh_stream_read_stop(uc->stream);
        uc->state = GH_UC_ACTIVE;
        cb(r, uc, 0);
        return 0;
    }
    if (sv->conf->scheme == GH_SCHEME_TUNNEL) {
        /* A stream over a connector's session: there at once, or not at
         * all (no connector attached: 502 without waiting). */
        gh_stream_t *st = gh__tunnel_open(r->conn->server, sv->conf->host, sv->conf->service);
        if (!st) {
            atomic_fetch_sub_explicit(sv->active, 1, memory_order_relaxed);
            r->srv = NULL;
            gh_log_warn("upstream %s: tunnel %s has no connector attached", r->up->conf->name,
                        sv->conf->host);
            return -502;
        }
        gh_uconn_t *uc = calloc(1, sizeof *uc);
        if (!uc) {
            gh_stream_close(st);
            return -502;
        }
        uc->srv = sv;
        uc->req = r;
        uc->stream = st;
        st->data = uc;
        st->on_close = uconn_closed;
        uc->state = GH_UC_ACTIVE;
        cb(r, uc, 0);
        return 0;
    }
    uconn_connect(r, sv, cb);
    return 0;
}

/* ---- connections ---- */

static void uconn_closed(gh_stream_t *s)
{
    gh_uconn_t *uc = s->data;
    gh__buf_put(uc->buf);
    free(uc);
}

static void uconn_unlink_idle(gh_uconn_t *uc)
{
    gh_upserver_t *sv = uc->srv;
    if (!sv || uc->state != GH_UC_IDLE)
        return;
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        sv->idle = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    uc->next = uc->prev = NULL;
    sv->nidle--;
}

static _Thread_local char idle_scratch[64];

static void idle_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    (void)s;
    (void)suggested;
    buf->base = idle_scratch;
    buf->len = sizeof idle_scratch;
}

/* An idle pooled connection that becomes readable was closed by the server
 * (or sent bytes it should not have): either way it is finished. */
static void idle_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gh_uconn_t *uc = s->data;
    (void)buf;
    if (nread == 0)
        return;
    uconn_unlink_idle(uc);
    uc->state = GH_UC_CLOSED;
    gh_stream_close(uc->stream);
}

void gh__uconn_release(gh_uconn_t *uc, bool reusable)
{
    gh_upserver_t *sv = uc->srv;
    uc->req = NULL;
    uc->len = 0;
    if (reusable && sv && sv->conf->scheme == GH_SCHEME_TUNNEL &&
        !gh_tsession_stream_reusable(uc->stream))
        reusable = false;
    if (reusable && sv && sv->nidle < sv->up->conf->keepalive && !uc->stream->closing) {
        gh__buf_put(uc->buf);
        uc->buf = NULL;
        uc->state = GH_UC_IDLE;
        uc->requests++;
        uc->prev = NULL;
        uc->next = sv->idle;
        if (sv->idle)
            sv->idle->prev = uc;
        sv->idle = uc;
        sv->nidle++;
        uc->stream->on_alloc = idle_alloc;
        uc->stream->on_read = idle_read;
        if (gh_stream_read_start(uc->stream) == 0)
            return;
        uconn_unlink_idle(uc);
    }
    uc->state = GH_UC_CLOSED;
    gh_stream_close(uc->stream);
}

static void connected(gh_stream_t *s, int status)
{
    gh_uconn_t *uc = s->data;
    gh_req_t *r = uc->req;
    if (!r) {
        /* the request went away while connecting */
        uc->state = GH_UC_CLOSED;
        gh_stream_close(uc->stream);
        return;
    }
    gh_uconn_ready_cb cb = (gh_uconn_ready_cb)uc->wreq.data;
    if (status < 0) {
        gh_log_warn("upstream %s: connect to %s failed: %s", r->up->conf->name,
                    uc->srv ? uc->srv->conf->authority : "?", uv_strerror(status));
        gh__upserver_failed(uc->srv, uv_now(r->conn->server->loop));
        uc->req = NULL;
        r->uc = NULL;
        uc->state = GH_UC_CLOSED;
        gh_stream_close(uc->stream);
        cb(r, NULL, status);
        return;
    }
    if (uc->srv)
        uc->srv->fails = 0;
    if (uc->srv && uc->srv->conf->scheme == GH_SCHEME_HTTPS) {
        const gh_upstream_conf_t *upc = uc->srv->up->conf;
        const char *sni = upc->tls.sni ? upc->tls.sni : uc->srv->conf->host;
        gh_stream_t *t = uc->srv->up->tls ? gh_tls_stream_client(uc->srv->up->tls, &uc->s, sni) : NULL;
        if (!t) {
            uc->req = NULL;
            r->uc = NULL;
            uc->state = GH_UC_CLOSED;
            gh_stream_close(uc->stream);
            cb(r, NULL, UV_EPROTO);
            return;
        }
        uc->stream = t;
    }
    uc->state = GH_UC_ACTIVE;
    cb(r, uc, 0);
}

static void start_connect(gh_req_t *r, gh_upserver_t *sv, gh_uconn_ready_cb cb)
{
    gh_uconn_t *uc = calloc(1, sizeof *uc);
    if (!uc) {
        cb(r, NULL, UV_ENOMEM);
        return;
    }
    uc->srv = sv;
    uc->req = r;
    uc->state = GH_UC_CONNECTING;
    gh_tcp_stream_init(&uc->s, r->conn->server->loop);
    uc->stream = &uc->s.base;
    uc->stream->data = uc;
    uc->stream->on_close = uconn_closed;
    uc->wreq.data = (void *)cb;
    r->uc = uc;
    int rc = gh_tcp_stream_connect(&uc->s, (struct sockaddr *)&sv->addr, connected);
    if (rc < 0) {
        r->uc = NULL;
        uc->req = NULL;
        uc->state = GH_UC_CLOSED;
        gh_stream_close(uc->stream);
        gh__upserver_failed(sv, uv_now(r->conn->server->loop));
        cb(r, NULL, rc);
    }
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct gh_gai *g = req->data;
    gh_req_t *r = g->r;
    if (status == 0 && res) {
        gh_upserver_t *sv = g->srv;
        if (r && sv) {
            memcpy(&sv->addr, res->ai_addr, res->ai_addrlen);
            if (sv->addr.ss_family == AF_INET)
                ((struct sockaddr_in *)&sv->addr)->sin_port = htons(sv->conf->port);
            else
                ((struct sockaddr_in6 *)&sv->addr)->sin6_port = htons(sv->conf->port);
            sv->have_addr = true;
            sv->addr_expires = uv_now(req->loop) + DNS_TTL_MS;
        }
    }
    gh_uconn_ready_cb cb = g->cb;
    uv_freeaddrinfo(res);
    free(g);
    if (!r)
        return;
    r->gai = NULL;
    if (status != 0) {
        gh_log_warn("upstream %s: cannot resolve %s: %s", r->up->conf->name,
                    r->srv->conf->host, uv_strerror(status));
        gh__upserver_failed(r->srv, uv_now(r->conn->server->loop));
        cb(r, NULL, status);
        return;
    }
    start_connect(r, r->srv, cb);
}

static void uconn_connect(gh_req_t *r, gh_upserver_t *sv, gh_uconn_ready_cb cb)
{
    uv_loop_t *loop = r->conn->server->loop;
    if (sv->have_addr && (sv->numeric || sv->addr_expires > uv_now(loop))) {
        start_connect(r, sv, cb);
        return;
    }
    struct gh_gai *g = calloc(1, sizeof *g);
    if (!g) {
        cb(r, NULL, UV_ENOMEM);
        return;
    }
    g->r = r;
    g->srv = sv;
    g->cb = cb;
    g->req.data = g;
    r->gai = g;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%u", sv->conf->port);
    int rc = uv_getaddrinfo(loop, &g->req, resolved, sv->conf->host, port, &hints);
    if (rc < 0) {
        r->gai = NULL;
        free(g);
        cb(r, NULL, rc);
    }
}

void gh__upstream_cancel(gh_req_t *r)
{
    if (r->gai) {
        r->gai->r = NULL;
        r->gai->srv = NULL;
        r->gai = NULL;
    }
    if (r->srv) {
        atomic_fetch_sub_explicit(r->srv->active, 1, memory_order_relaxed);
        r->srv = NULL;
    }
}
