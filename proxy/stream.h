/* One small byte-stream interface for every carrier: plain TCP now, TLS and
 * tunnel streams later. The relay, WebSocket and pooling code only ever talk
 * to a gh_stream_t, never to the carrier behind it.
 *
 * Conventions: functions return 0 or a negative libuv error code. Reads are
 * delivered through on_alloc/on_read as with uv_read_start (nread < 0 is
 * UV_EOF or an error). Each write carries its own request object, owned by the
 * caller until its callback runs; the callback runs exactly once, with
 * UV_ECANCELED if the stream was closed first. After close(), on_close runs
 * once, after every pending write callback, and the stream may then be freed. */
#ifndef GH_STREAM_H
#define GH_STREAM_H

#include <uv.h>

typedef struct gh_stream gh_stream_t;
typedef struct gh_write_req gh_write_req_t;

typedef void (*gh_alloc_cb)(gh_stream_t *s, size_t suggested, uv_buf_t *buf);
typedef void (*gh_read_cb)(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf);
typedef void (*gh_write_cb)(gh_write_req_t *req, int status);
typedef void (*gh_close_cb)(gh_stream_t *s);
typedef void (*gh_connect_cb)(gh_stream_t *s, int status);

struct gh_write_req {
    uv_write_t uv;          /* TCP carrier's request; other carriers ignore it */
    gh_stream_t *stream;
    gh_write_cb cb;
    void *data;
};

typedef struct gh_stream_ops {
    int (*read_start)(gh_stream_t *s);
    int (*read_stop)(gh_stream_t *s);
    int (*write)(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs,
                 unsigned nbufs, gh_write_cb cb);
    int (*shutdown)(gh_stream_t *s);    /* half-close after queued writes */
    void (*close)(gh_stream_t *s);
    size_t (*write_queue_size)(const gh_stream_t *s);
    /* Optional: the error the peer reads if s is closed without a shutdown
     * (carriers that cannot say why, TCP and TLS, leave it NULL). */
    void (*set_reset)(gh_stream_t *s, int err);
} gh_stream_ops_t;

struct gh_stream {
    const gh_stream_ops_t *ops;
    void *data;
    gh_alloc_cb on_alloc;
    gh_read_cb on_read;
    gh_close_cb on_close;
    int closing;
};

static inline int gh_stream_read_start(gh_stream_t *s) { return s->ops->read_start(s); }
static inline int gh_stream_read_stop(gh_stream_t *s) { return s->ops->read_stop(s); }
static inline int gh_stream_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs,
                                  unsigned nbufs, gh_write_cb cb)
{
    return s->ops->write(s, req, bufs, nbufs, cb);
}
static inline int gh_stream_shutdown(gh_stream_t *s) { return s->ops->shutdown(s); }
static inline void gh_stream_close(gh_stream_t *s)
{
    if (!s->closing) {
        s->closing = 1;
        s->ops->close(s);
    }
}

/* Closes s; where the carrier can tell its peer why, the peer reads err. */
static inline void gh_stream_close_err(gh_stream_t *s, int err)
{
    if (!s->closing && s->ops->set_reset)
        s->ops->set_reset(s, err);
    gh_stream_close(s);
}

/* Plain TCP. read_stop is lazy: the socket stays in the poll set, and only
 * if it turns readable while stopped is it taken out for real. A request
 * stops and restarts reading its client and its upstream connection several
 * times over, and each real stop and start costs epoll_ctl calls; most of
 * those pauses end before the peer sends anything. */
typedef struct gh_tcp_stream {
    gh_stream_t base;
    uv_tcp_t tcp;
    unsigned char rd;           /* GH_TCP_RD_* */
    unsigned queued;            /* uv_write requests not yet completed */
    /* the connect and shutdown requests are allocated while they run */
} gh_tcp_stream_t;

enum { GH_TCP_RD_OFF, GH_TCP_RD_ON, GH_TCP_RD_PAUSED /* libuv still reads */ };

/* Initialises s on loop; the caller then accepts into s->tcp or connects. */
int gh_tcp_stream_init(gh_tcp_stream_t *s, uv_loop_t *loop);
int gh_tcp_stream_connect(gh_tcp_stream_t *s, const struct sockaddr *addr, gh_connect_cb cb);
/* The socket of s, when s is plain TCP with no write queued, with reading
 * stopped for real, so that the caller may move bytes on it directly until
 * s reads or writes again (watching a dup of it: libuv keeps the socket's
 * own descriptor). -1 when s is another carrier or busy. */
int gh_tcp_stream_take_fd(gh_stream_t *s);
/* Before uv_loop_close of a loop that carried TCP streams, on its thread:
 * runs the write completions still waiting and closes the handles that run
 * them (the loop is run once, without waiting). */
void gh_tcp_stream_loop_done(uv_loop_t *loop);

#endif
