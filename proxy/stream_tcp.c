/* The plain TCP carrier of gh_stream_t. */
#include <stddef.h>
#include <stdlib.h>
#include "proxy/stream.h"

#define TCP_OF(s) ((gh_tcp_stream_t *)(s))

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gh_stream_t *s = h->data;
    s->on_alloc(s, suggested, buf);
}

static void tcp_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    gh_stream_t *s = h->data;
    s->on_read(s, nread, buf);
}

static int tcp_read_start(gh_stream_t *s)
{
    return uv_read_start((uv_stream_t *)&TCP_OF(s)->tcp, tcp_alloc, tcp_read);
}

static int tcp_read_stop(gh_stream_t *s)
{
    return uv_read_stop((uv_stream_t *)&TCP_OF(s)->tcp);
}

static void tcp_write_done(uv_write_t *w, int status)
{
    gh_write_req_t *req = (gh_write_req_t *)w;
    req->cb(req, status);
}

static int tcp_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs,
                     unsigned nbufs, gh_write_cb cb)
{
    req->stream = s;
    req->cb = cb;
    return uv_write(&req->uv, (uv_stream_t *)&TCP_OF(s)->tcp, bufs, nbufs, tcp_write_done);
}

static void tcp_shutdown_done(uv_shutdown_t *r, int status)
{
    (void)r;
    (void)status;
}

static int tcp_shutdown(gh_stream_t *s)
{
    gh_tcp_stream_t *t = TCP_OF(s);
    return uv_shutdown(&t->shutdown_req, (uv_stream_t *)&t->tcp, tcp_shutdown_done);
}

static void tcp_closed(uv_handle_t *h)
{
    gh_stream_t *s = h->data;
    if (s->on_close)
        s->on_close(s);
}

static void tcp_close(gh_stream_t *s)
{
    uv_close((uv_handle_t *)&TCP_OF(s)->tcp, tcp_closed);
}

static size_t tcp_wqs(const gh_stream_t *s)
{
    return TCP_OF(s)->tcp.write_queue_size;
}

static const gh_stream_ops_t tcp_ops = {
    .read_start = tcp_read_start,
    .read_stop = tcp_read_stop,
    .write = tcp_write,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
    .write_queue_size = tcp_wqs,
};

int gh_tcp_stream_init(gh_tcp_stream_t *s, uv_loop_t *loop)
{
    s->base.ops = &tcp_ops;
    s->base.closing = 0;
    s->tcp.data = &s->base;
    return uv_tcp_init(loop, &s->tcp);
}

static void tcp_connected(uv_connect_t *req, int status)
{
    gh_tcp_stream_t *t = req->data;
    free(req);
    t->on_connect(&t->base, status);
}

/* The connect request lives only while connecting, so accepted streams
 * (most of them) do not carry one. */
int gh_tcp_stream_connect(gh_tcp_stream_t *s, const struct sockaddr *addr, gh_connect_cb cb)
{
    uv_connect_t *req = malloc(sizeof *req);
    if (!req)
        return UV_ENOMEM;
    s->on_connect = cb;
    req->data = s;
    uv_tcp_nodelay(&s->tcp, 1);
    int rc = uv_tcp_connect(req, &s->tcp, addr, tcp_connected);
    if (rc != 0)
        free(req);
    return rc;
}
