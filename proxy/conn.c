/* The client side of HTTP/1.1: reading, keep-alive and pipelining,
 * timeouts, closing, handing a connection over to a tunnel.
 *
 * A connection handles one request at a time; pipelined requests wait in
 * the read buffer until the response before them is fully written, which
 * keeps responses in order without queueing them. How a request starts
 * (its head, routing, plugins) is in proxy/request.c. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf/config.h"
#include "plugins/plugin.h"
#include "proxy/admin.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"
#include "proxy/proxyproto.h"
#include "proxy/tunnel_edge.h"
#include "proxy/tunnel_session.h"
#include "tls/tls.h"
#include "routes/router.h"

#define LINGER_MS 2000

static gh_config_t *conn_cfg(gh_conn_t *c)
{
    return c->req ? c->req->snap->cfg : c->server->snap->cfg;
}

/* Requests are allocated often; the header slice table at the end of the
 * struct is large and the scanner initialises what it uses, so only the
 * part before it is cleared. */
/* ---- closing ---- */

static void conn_buf_free(gh_conn_t *c)
{
    if (c->cap == GH_BUF_SIZE)
        gh__buf_put(c->buf);
    else
        free(c->buf);
    c->buf = NULL;
}

static void deadline_remove(gh_conn_t *c);

static void conn_stream_closed(gh_stream_t *s)
{
    gh_conn_t *c = s->data;
    deadline_remove(c);     /* (every path that closes has taken it out already) */
    gh__server_conn_closed(c->server, c);
    conn_buf_free(c);
    gh__conn_mem_put(c);
}

static void req_free(gh_req_t *r)
{
    if (!r)
        return;
    gh__proxy_release(r);
    if (r->preq) {
        gh_plugins_end(r->route, r->preq, r->plugins_ran);
        free(r->preq);
    }
    free(r->preq_strs);
    if (r->snap)
        gh__snapshot_release(r->snap);
    free(r->strs);
    free(r->uhead);
    free(r->qout);
    free(r->pout);
    free(r->rhead);
    gh__req_mem_put(r);
}

void gh__free_write_req(gh_write_req_t *w, int status)
{
    (void)status;
    free(w);
}

gh_stream_t *gh__conn_detach(gh_conn_t *c)
{
    gh_req_t *r = c->req;
    if (r) {
        r->phase = GH_R_DONE;
        gh__accesslog_write(r);
        gh_metrics_request(r);
        req_free(r);
        c->req = NULL;
    }
    c->state = GH_C_TUNNEL;
    if (c->reading) {
        gh_stream_read_stop(c->stream);
        c->reading = false;
    }
    deadline_remove(c);
    return c->stream;
}

void gh__conn_detach_done(gh_conn_t *c)
{
    conn_buf_free(c);
    c->buf = NULL;
    c->cap = c->off = c->len = 0;
}

void gh__conn_abort(gh_conn_t *c)
{
    if (c->state == GH_C_CLOSING)
        return;
    if (c->state == GH_C_TUNNEL) {
        c->state = GH_C_CLOSING;
        if (c->tsess)
            gh_tsession_close(c->tsess); /* closes the stream */
        else
            gh_stream_close(c->stream);
        return;
    }
    c->state = GH_C_CLOSING;
    if (c->req) {
        if (c->req->phase != GH_R_DONE && c->req->status == 0)
            c->req->status = 499;
        gh__accesslog_write(c->req);
        gh_metrics_request(c->req);
        req_free(c->req);
        c->req = NULL;
    }
    deadline_remove(c);
    gh_stream_close(c->stream);
}

int gh__conn_write(gh_conn_t *c, const uv_buf_t *bufs, unsigned n, gh_write_cb cb)
{
    gh_write_req_t *w = gh__wreq_get();
    if (!w)
        return UV_ENOMEM;
    w->data = c;
    int rc = gh_stream_write(c->stream, w, bufs, n, cb);
    if (rc != 0)
        gh__wreq_put(w);
    return rc;
}

void gh__conn_close_idle(gh_conn_t *c)
{
    if (c->state == GH_C_HEAD && c->len == c->off)
        gh__conn_abort(c);
}

/* After an answer that leaves unread request bytes behind, closing at once
 * would make the kernel send RST and could destroy the answer before the
 * client reads it. Half-close, drain for a while, then close. */
static void linger_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gh_conn_t *c = s->data;
    (void)buf;
    if (nread < 0)
        gh__conn_abort(c);
}

static void linger_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    gh_conn_t *c = s->data;
    (void)suggested;
    buf->base = c->buf;
    buf->len = c->cap;
}

static void conn_linger(gh_conn_t *c)
{
    if (c->peer_eof || !c->buf) {
        gh__conn_abort(c);
        return;
    }
    c->stream->on_read = linger_read;
    c->stream->on_alloc = linger_alloc;
    gh_stream_shutdown(c->stream);
    if (!c->reading && gh_stream_read_start(c->stream) == 0)
        c->reading = true;
    gh__conn_set_deadline(c, GH_T_LINGER);
    /* state stays GH_C_REQUEST with no request: neither idle nor closing */
    c->state = GH_C_REQUEST;
}

/* ---- timers ----
 *
 * A worker keeps one libuv timer for all its connections and a min-heap of
 * the connections by the time their entry falls due (proxy/dheap.h; a
 * uv_timer_t in each connection would be 152 of its bytes). The timer is
 * set for the heap's earliest entry; when it fires, every entry due is
 * taken out and looked at. Deadlines are lazy: moving one later leaves the
 * entry where it is, and when it falls due early it goes back in for the
 * real deadline. A request moves through several deadlines and most of
 * them only ever move later, so most requests touch the heap once. */

static void conn_timeout(gh_conn_t *c, uint64_t now);

static void deadline_timer_fire(uv_timer_t *t);

/* Sets the worker's timer no later than the earliest entry. When that entry
 * goes, the timer is left where it is: firing early costs one look. */
static void deadline_timer_update(gh_server_t *srv, uint64_t now)
{
    gh_conn_t *top = gh_dheap_top(&srv->deadlines);
    if (!top)
        return;
    uint64_t at = top->timer_at;
    if (srv->deadline_timer_on && srv->deadline_timer_at <= at)
        return;
    srv->deadline_timer_on = true;
    srv->deadline_timer_at = at;
    uv_timer_start(&srv->deadline_timer, deadline_timer_fire, at > now ? at - now : 1, 0);
}

static void deadline_remove(gh_conn_t *c)
{
    gh_dheap_remove(&c->server->deadlines, c);
}

static void arm(gh_conn_t *c, uint64_t at, uint64_t now)
{
    /* room for every connection was made at accept */
    gh_dheap_set(&c->server->deadlines, c, at);
    if (c->heap_idx == 1)
        deadline_timer_update(c->server, now);
}

static void deadline_timer_fire(uv_timer_t *t)
{
    gh_server_t *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    srv->deadline_timer_on = false;
    /* every entry looked at leaves the heap or goes back in later than now,
     * so this ends after at most as many turns as there are entries */
    gh_conn_t *c;
    while ((c = gh_dheap_top(&srv->deadlines)) != NULL && c->timer_at <= now) {
        deadline_remove(c);
        conn_timeout(c, now);
    }
    deadline_timer_update(srv, now);
}

void gh__deadlines_init(gh_server_t *srv)
{
    uv_timer_init(srv->loop, &srv->deadline_timer);
    srv->deadline_timer.data = srv;
}

void gh__deadlines_close(gh_server_t *srv)
{
    uv_close((uv_handle_t *)&srv->deadline_timer, NULL);
    gh_dheap_free(&srv->deadlines);
}

static void conn_timeout(gh_conn_t *c, uint64_t now)
{
    gh_config_t *cfg = conn_cfg(c);
    if (c->deadline != GH_T_NONE && c->deadline != GH_T_STREAM && now < c->deadline_at) {
        arm(c, c->deadline_at, now);
        return;
    }
    switch ((enum gh_deadline)c->deadline) {
    case GH_T_HEADER:
        if (c->req == NULL && c->len > c->off && c->state == GH_C_HEAD) {
            /* a head was started but not finished in time */
            gh_req_t *r = gh__req_alloc();
            if (!r) {
                gh__conn_abort(c);
                return;
            }
            r->conn = c;
            r->snap = c->server->snap;
            gh__snapshot_retain(r->snap);
            r->start_ns = gh__now_ns();
            gh__request_id(r->request_id);
            c->req = r;
            c->state = GH_C_REQUEST;
            r->resp_close = true;
            gh__respond_error(r, 408);
            return;
        }
        gh__conn_abort(c);
        return;
    case GH_T_IDLE:
    case GH_T_LINGER:
        gh__conn_abort(c);
        return;
    case GH_T_STREAM: {
        uint64_t limit = cfg->timeouts.stream_idle_ms;
        if (now - c->last_io < limit) {
            arm(c, c->last_io + limit, now);
            return;
        }
        if (c->req)
            gh__proxy_timeout(c->req, GH_T_STREAM);
        else
            gh__conn_abort(c);
        return;
    }
    case GH_T_CONNECT:
    case GH_T_FIRST_BYTE:
        if (c->req)
            gh__proxy_timeout(c->req, c->deadline);
        else
            gh__conn_abort(c);
        return;
    case GH_T_NONE:
        return;
    }
}

void gh__conn_set_deadline(gh_conn_t *c, enum gh_deadline d)
{
    gh_config_t *cfg = conn_cfg(c);
    uint64_t ms = 0;
    c->deadline = d;
    switch (d) {
    case GH_T_NONE:
        return; /* a timer still set finds nothing to do */
    case GH_T_HEADER: ms = cfg->timeouts.header_ms; break;
    case GH_T_IDLE: ms = cfg->timeouts.idle_ms; break;
    case GH_T_CONNECT: ms = cfg->timeouts.upstream_connect_ms; break;
    case GH_T_FIRST_BYTE: ms = cfg->timeouts.upstream_first_byte_ms; break;
    case GH_T_STREAM:
        ms = cfg->timeouts.stream_idle_ms;
        c->last_io = uv_now(c->server->loop);
        break;
    case GH_T_LINGER: ms = LINGER_MS; break;
    }
    uint64_t now = uv_now(c->server->loop);
    c->deadline_at = now + (ms ? ms : 1);
    if (c->heap_idx == 0 || c->deadline_at < c->timer_at)
        arm(c, c->deadline_at, now);
}

/* ---- reading ---- */

static void conn_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    gh_conn_t *c = s->data;
    (void)suggested;
    if (!c->buf) {
        size_t want = conn_cfg(c)->limits.max_header_bytes + 1;
        c->cap = want > GH_BUF_SIZE ? want : GH_BUF_SIZE;
        c->buf = c->cap == GH_BUF_SIZE ? gh__buf_get() : malloc(c->cap);
        c->off = c->len = 0;
        if (!c->buf) {
            buf->base = NULL;
            buf->len = 0;
            return;
        }
    }
    /* Compact unless spans into the buffer are still being written. */
    bool pinned = c->req && (c->req->upstream_writing || c->req->phase == GH_R_ROUTING);
    if (c->off > 0 && !pinned) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    buf->base = c->buf + c->len;
    buf->len = c->cap - c->len;
}

void gh__conn_update_read(gh_conn_t *c)
{
    bool want = c->state != GH_C_CLOSING && !c->peer_eof;
    if (want && c->req) {
        gh_req_t *r = c->req;
        if (r->upstream_writing || r->splice || r->phase == GH_R_ROUTING || r->phase == GH_R_LOCAL)
            want = false;
        else if (r->phase == GH_R_CONNECTING && r->has_body)
            want = false;
    }
    if (want && c->buf && c->len == c->cap && c->off == 0)
        want = false; /* full: wait until bytes are consumed */
    if (want && !c->reading) {
        if (gh_stream_read_start(c->stream) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        gh_stream_read_stop(c->stream);
        c->reading = false;
    }
}


/* Dotted quad of a (network order) IPv4 address into out (16 bytes or
 * more). Every connection needs it: without printf, which costs about a
 * thousand instructions here. */
static void ip4_text(const struct in_addr *a, char *out)
{
    const unsigned char *b = (const unsigned char *)&a->s_addr;
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = i < 3 ? '.' : '\0';
    }
}

void gh__conn_peer_text(const gh_conn_t *c, char out[48])
{
    out[0] = '\0';
    if (c->peer.sa.sa_family == AF_INET)
        ip4_text(&c->peer.in.sin_addr, out);
    else if (c->peer.sa.sa_family == AF_INET6)
        uv_ip6_name(&c->peer.in6, out, 48);
}

/* A listener behind a TCP load balancer: the connection must start with a
 * PROXY header (v1 or v2) naming the real client, or it is closed. */
static void process_proxy_header(gh_conn_t *c)
{
    gh_proxyproto_t pp;
    int rc = gh_proxyproto_parse((const uint8_t *)c->buf + c->off, c->len - c->off, &pp);
    if (rc == 0 && c->len - c->off < GH_PROXYPROTO_V2_MAX)
        return;
    if (rc <= 0) {
        char ip[48];
        gh__conn_peer_text(c, ip);
        gh_log_info("connection from %s did not start with a PROXY protocol header", ip);
        gh__conn_abort(c);
        return;
    }
    c->off += (size_t)rc;
    if (pp.kind == GH_PROXYPROTO_PROXY) {
        memcpy(&c->peer, &pp.src, pp.src.ss_family == AF_INET6 ? sizeof c->peer.in6 : sizeof c->peer.in);
    }
    c->state = GH_C_HEAD;
    if (c->tls) {
        /* The PROXY header came in the clear; TLS starts right after it,
         * with whatever bytes of the handshake were read along with it. */
        gh_stream_read_stop(c->stream);
        c->reading = false;
        gh_stream_t *t = c->server->snap->tls
                             ? gh_tls_stream_server_prefixed(c->server->snap->tls, &c->s,
                                                             c->buf + c->off, c->len - c->off)
                             : NULL;
        if (!t) {
            gh__conn_abort(c);
            return;
        }
        c->off = c->len = 0;
        c->stream = t;
        gh__conn_update_read(c);
        return;
    }
    gh__conn_process_head(c);
}

static void conn_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gh_conn_t *c = s->data;
    (void)buf;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->state == GH_C_HEAD || c->state == GH_C_PROXY) {
            if (c->req)
                c->req->status = c->req->status ? c->req->status : 499;
            gh__conn_abort(c);
            return;
        }
        c->peer_eof = true;
        gh__conn_update_read(c);
        if (c->req)
            gh__proxy_client_eof(c->req);
        return;
    }
    c->len += (size_t)nread;
    c->last_io = uv_now(c->server->loop);
    if (c->state == GH_C_HEAD) {
        gh__conn_process_head(c);
    } else if (c->state == GH_C_PROXY) {
        process_proxy_header(c);
    } else if (c->req) {
        gh__proxy_client_data(c->req);
    }
    if (c->state != GH_C_CLOSING)
        gh__conn_update_read(c);
}

/* ---- request end ---- */

void gh__conn_request_done(gh_conn_t *c)
{
    gh_req_t *r = c->req;
    if (!r || c->state == GH_C_CLOSING)
        return;
    bool keep = r->client_keep_alive && !r->resp_close && r->req_body_done && !c->server->stopping &&
                r->phase != GH_R_TUNNEL;
    /* Nothing of the client's left unread (it asked to close, or spoke
     * HTTP/1.0): closing at once sends the answer and a FIN, as lingering
     * would, for a fraction of the work. TLS lingers for its close_notify. */
    bool drained = r->req_body_done && c->len == c->off && r->phase != GH_R_TUNNEL && !c->tls;
    r->phase = GH_R_DONE;
    gh__accesslog_write(r);
    gh_metrics_request(r);
    req_free(r);
    c->req = NULL;
    if (!keep) {
        if (drained)
            gh__conn_abort(c);
        else
            conn_linger(c);
        return;
    }
    if (c->peer_eof && c->len == c->off) {
        gh__conn_abort(c);
        return;
    }
    c->state = GH_C_HEAD;
    if (c->len == c->off) {
        /* Idle keep-alive connections give their buffer back. */
        conn_buf_free(c);
        c->buf = NULL;
        c->cap = c->off = c->len = 0;
    }
    gh__conn_process_head(c);
    if (c->state != GH_C_CLOSING)
        gh__conn_update_read(c);
}

/* ---- accepting ---- */

void gh__conn_accept(gh_listener_t *l)
{
    gh_server_t *srv = l->server;
    /* room in the deadline heap for every connection and this one */
    if (!gh_dheap_reserve(&srv->deadlines, srv->nconns + 1))
        return;
    gh_conn_t *c = gh__conn_mem_get();
    if (!c)
        return;
    memset(c, 0, sizeof *c);
    c->server = srv;
    c->redirect_https = l->redirect_https;
    c->admin = l->admin;
    c->tls = l->tls;
    c->state = GH_C_HEAD;
    gh_tcp_stream_init(&c->s, srv->loop);
    c->stream = &c->s.base;
    c->stream->data = c;
    c->stream->on_alloc = conn_alloc;
    c->stream->on_read = conn_read;
    c->stream->on_close = conn_stream_closed;

    /* linked before any path can close it; the close path unlinks */
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    unsigned open_now = gh__conns_opened();

    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->s.tcp) != 0) {
        gh__conn_abort(c);
        return;
    }
    int plen = sizeof c->peer;
    uv_tcp_getpeername(&c->s.tcp, &c->peer.sa, &plen);
    /* TCP_NODELAY comes from the listening socket (proxy/server.c) */
    bool proxy_first = l->conf && l->conf->proxy_protocol;
    if (c->tls && !proxy_first) {
        /* From here on the connection speaks through TLS; the TLS stream
         * starts with the callbacks set on the TCP one above. */
        gh_stream_t *t = srv->snap->tls ? gh_tls_stream_server(srv->snap->tls, &c->s) : NULL;
        if (!t) {
            gh__conn_abort(c);
            return;
        }
        c->stream = t;
    }
    if (l->conf && l->conf->proxy_protocol)
        c->state = GH_C_PROXY;

    if (srv->stopping || open_now > srv->snap->cfg->limits.max_connections) {
        gh__conn_abort(c);
        return;
    }
    gh__conn_set_deadline(c, GH_T_HEADER);
    gh__conn_update_read(c);
}
