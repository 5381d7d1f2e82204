/* The plain TCP carrier of gh_stream_t. */
#include <stddef.h>
#include <stdlib.h>
#include "proxy/stream.h"

#define TCP_OF(s) ((gh_tcp_stream_t *)(s))

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gh_stream_t *s = h->data;
    if (TCP_OF(s)->rd == GH_TCP_RD_PAUSED) {
        /* readable while stopped: no buffer, and libuv reports UV_ENOBUFS
         * without reading (tcp_read stops it for real) */
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    s->on_alloc(s, suggested, buf);
}

static void tcp_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    gh_stream_t *s = h->data;
    gh_tcp_stream_t *t = TCP_OF(s);
    if (t->rd == GH_TCP_RD_PAUSED) {
        uv_read_stop(h);
        t->rd = GH_TCP_RD_OFF;
        return;
    }
    s->on_read(s, nread, buf);
}

static int tcp_read_start(gh_stream_t *s)
{
    gh_tcp_stream_t *t = TCP_OF(s);
    if (t->rd == GH_TCP_RD_PAUSED) {
        t->rd = GH_TCP_RD_ON;
        return 0;
    }
    int rc = uv_read_start((uv_stream_t *)&t->tcp, tcp_alloc, tcp_read);
    if (rc == 0)
        t->rd = GH_TCP_RD_ON;
    return rc;
}

static int tcp_read_stop(gh_stream_t *s)
{
    gh_tcp_stream_t *t = TCP_OF(s);
    if (t->rd == GH_TCP_RD_ON)
        t->rd = GH_TCP_RD_PAUSED;
    return 0;
}

/* ---- writes ----
 *
 * A write is first tried at once (uv_try_write): a small response or
 * request usually goes out whole, and then no uv_write request is queued.
 * That saves an epoll_ctl: libuv re-arms the socket after every queued
 * write it completes. The callback still runs later, never inside
 * gh_stream_write: completions gather in a per-thread list that a check
 * handle runs right after the loop's I/O phase (an idle handle keeps the
 * loop from blocking while the list is not empty). Callbacks keep their
 * order: a stream with a queued uv_write pending takes the uv_write path. */

typedef struct tcp_defer {
    uv_loop_t *loop;
    uv_check_t check;
    uv_idle_t idle;
    gh_write_req_t *head, **tail;   /* linked through req->uv.data */
    int handles;
} tcp_defer_t;

static _Thread_local tcp_defer_t *defer;

static void defer_run(uv_check_t *h)
{
    tcp_defer_t *d = h->data;
    /* what is there now; completions these callbacks add wait a turn */
    gh_write_req_t *req = d->head;
    d->head = NULL;
    d->tail = &d->head;
    while (req) {
        gh_write_req_t *next = req->uv.data;
        req->cb(req, 0);
        req = next;
    }
    if (!d->head)
        uv_idle_stop(&d->idle);
}

static void defer_idle(uv_idle_t *h)
{
    (void)h; /* only there so that the loop polls without blocking */
}

static tcp_defer_t *defer_for(uv_loop_t *loop)
{
    if (defer)
        return defer->loop == loop ? defer : NULL;
    tcp_defer_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->loop = loop;
    d->tail = &d->head;
    uv_check_init(loop, &d->check);
    uv_idle_init(loop, &d->idle);
    d->check.data = d->idle.data = d;
    d->handles = 2;
    uv_check_start(&d->check, defer_run);
    uv_unref((uv_handle_t *)&d->check);
    uv_unref((uv_handle_t *)&d->idle);
    defer = d;
    return d;
}

static void defer_closed(uv_handle_t *h)
{
    tcp_defer_t *d = h->data;
    if (--d->handles == 0)
        free(d);
}

void gh_tcp_stream_loop_done(uv_loop_t *loop)
{
    tcp_defer_t *d = defer;
    if (!d || d->loop != loop)
        return;
    defer = NULL;
    while (d->head) {
        gh_write_req_t *req = d->head;
        d->head = req->uv.data;
        req->cb(req, 0);
    }
    uv_close((uv_handle_t *)&d->check, defer_closed);
    uv_close((uv_handle_t *)&d->idle, defer_closed);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void tcp_write_done(uv_write_t *w, int status)
{
    gh_write_req_t *req = (gh_write_req_t *)w;
    gh_tcp_stream_t *t = (gh_tcp_stream_t *)req->stream;
    t->queued--;
    req->cb(req, status);
}

static int tcp_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs,
                     unsigned nbufs, gh_write_cb cb)
{
    gh_tcp_stream_t *t = TCP_OF(s);
    req->stream = s;
    req->cb = cb;
    tcp_defer_t *d;
    uv_buf_t rest[8];
    if (t->queued == 0 && nbufs <= 8 && (d = defer_for(t->tcp.loop)) != NULL) {
        size_t total = 0;
        for (unsigned i = 0; i < nbufs; i++)
            total += bufs[i].len;
        int n = uv_try_write((uv_stream_t *)&t->tcp, bufs, nbufs);
        if (n >= 0 && (size_t)n == total) {
            req->uv.data = NULL;
            *d->tail = req;
            d->tail = (gh_write_req_t **)&req->uv.data;
            uv_idle_start(&d->idle, defer_idle);
            return 0;
        }
        if (n > 0) {
            /* the rest goes the usual way */
            size_t skip = (size_t)n;
            unsigned k = 0;
            for (unsigned i = 0; i < nbufs; i++) {
                if (skip >= bufs[i].len) {
                    skip -= bufs[i].len;
                    continue;
                }
                rest[k++] = uv_buf_init(bufs[i].base + skip, (unsigned)(bufs[i].len - skip));
                skip = 0;
            }
            bufs = rest;
            nbufs = k;
        }
    }
    int rc = uv_write(&req->uv, (uv_stream_t *)&t->tcp, bufs, nbufs, tcp_write_done);
    if (rc == 0)
        t->queued++;
    return rc;
}

static void tcp_shutdown_done(uv_shutdown_t *r, int status)
{
    (void)status;
    free(r);
}

static int tcp_shutdown(gh_stream_t *s)
{
    gh_tcp_stream_t *t = TCP_OF(s);
    uv_shutdown_t *r = malloc(sizeof *r);
    if (!r)
        return UV_ENOMEM;
    int rc = uv_shutdown(r, (uv_stream_t *)&t->tcp, tcp_shutdown_done);
    if (rc != 0)
        free(r);
    return rc;
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

static const gh_stream_ops_t tcp_ops;

int gh_tcp_stream_take_fd(gh_stream_t *s)
{
    if (s->ops != &tcp_ops || s->closing)
        return -1;
    gh_tcp_stream_t *t = TCP_OF(s);
    if (t->queued || t->tcp.write_queue_size)
        return -1;
    if (t->rd != GH_TCP_RD_OFF) {
        uv_read_stop((uv_stream_t *)&t->tcp);
        t->rd = GH_TCP_RD_OFF;
    }
    /* (a write that just completed may still have libuv watching for
     * room until its callback returns: harmless, it asks nothing more) */
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&t->tcp, &fd) != 0)
        return -1;
    return fd;
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
    s->rd = GH_TCP_RD_OFF;
    s->queued = 0;
    s->tcp.data = &s->base;
    return uv_tcp_init(loop, &s->tcp);
}

typedef struct tcp_connect {
    uv_connect_t uv;
    gh_connect_cb cb;
} tcp_connect_t;

static void tcp_connected(uv_connect_t *uv, int status)
{
    tcp_connect_t *req = (tcp_connect_t *)uv;
    gh_tcp_stream_t *t = uv->data;
    gh_connect_cb cb = req->cb;
    free(req);
    cb(&t->base, status);
}

/* The connect request lives only while connecting, so accepted streams
 * (most of them) do not carry one. */
int gh_tcp_stream_connect(gh_tcp_stream_t *s, const struct sockaddr *addr, gh_connect_cb cb)
{
    tcp_connect_t *req = malloc(sizeof *req);
    if (!req)
        return UV_ENOMEM;
    req->cb = cb;
    req->uv.data = s;
    uv_tcp_nodelay(&s->tcp, 1);
    int rc = uv_tcp_connect(&req->uv, &s->tcp, addr, tcp_connected);
    if (rc != 0)
        free(req);
    return rc;
}
