/* The cross-loop inbox and pipe of proxy/xpipe.h.
 *
 * Inbox: a mutex-protected list of messages and a uv_async_t to wake the
 * loop. A pipe endpoint owns one message node: it is queued in its loop's
 * inbox at most once at a time ("scheduled"), so wakeups coalesce and never
 * allocate. After gh_xloop_close, work an endpoint defers on its own thread
 * (write callbacks, on_close) goes to a "late" list run from a uv_idle_t.
 *
 * Pipe: one mutex guards both directions (the byte queues, counters and
 * flags) and the endpoints' shared flags. User callbacks never run with it
 * held. The pipe is reference counted: one reference per endpoint until its
 * on_close has run (or it was dropped), and one per queued message. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/xpipe.h"

typedef struct xmsg {
    struct xmsg *next;
    void (*fn)(void *arg);
    void *arg;
    bool heap;              /* gh_xloop_post's: freed before it runs */
} xmsg_t;

typedef struct xend xend_t;

enum { LATE_IDLE, LATE_ACTIVE, LATE_CLOSING };

struct gh_xloop {
    uv_loop_t *loop;
    pthread_t owner;
    uv_async_t async;
    pthread_mutex_t mu;
    xmsg_t *head, *tail;    /* under mu */
    bool closed;            /* under mu */
    /* the loop's thread only */
    bool async_closed;
    unsigned holds;         /* open endpoints: the async is referenced while > 0 */
    xend_t *ends;           /* those endpoints, cut at close */
    uv_idle_t late;
    int late_state;
    xmsg_t *late_head, *late_tail;
};

/* ---- inbox ---- */

static bool on_owner(const gh_xloop_t *x)
{
    return pthread_equal(pthread_self(), x->owner);
}

static void run_msgs(xmsg_t *m)
{
    while (m) {
        xmsg_t *next = m->next;
        void (*fn)(void *) = m->fn;
        void *arg = m->arg;
        if (m->heap)
            free(m);
        fn(arg);            /* may queue m (an endpoint's node) again */
        m = next;
    }
}

static xmsg_t *take_all(gh_xloop_t *x)
{
    pthread_mutex_lock(&x->mu);
    xmsg_t *m = x->head;
    x->head = x->tail = NULL;
    pthread_mutex_unlock(&x->mu);
    return m;
}

/* What arrives while running a batch waits for the next loop turn. */
static void on_async(uv_async_t *a)
{
    run_msgs(take_all(a->data));
}

static void on_async_closed(uv_handle_t *h)
{
    run_msgs(take_all(h->data));
}

static void late_closed(uv_handle_t *h);

static void late_run(uv_idle_t *i)
{
    gh_xloop_t *x = i->data;
    xmsg_t *m = x->late_head;
    x->late_head = x->late_tail = NULL;
    run_msgs(m);
    if (!x->late_head) {
        x->late_state = LATE_CLOSING;
        uv_close((uv_handle_t *)&x->late, late_closed);
    }
}

static void late_start(gh_xloop_t *x)
{
    uv_idle_init(x->loop, &x->late);
    x->late.data = x;
    uv_idle_start(&x->late, late_run);
    x->late_state = LATE_ACTIVE;
}

static void late_closed(uv_handle_t *h)
{
    gh_xloop_t *x = h->data;
    if (x->late_head)
        late_start(x);
    else
        x->late_state = LATE_IDLE;
}

static void late_post(gh_xloop_t *x, xmsg_t *m)
{
    m->next = NULL;
    if (x->late_tail)
        x->late_tail->next = m;
    else
        x->late_head = m;
    x->late_tail = m;
    if (x->late_state == LATE_IDLE)
        late_start(x);
}

/* Queues m; once x is closed, only its own thread may still (late list). */
static int post_msg(gh_xloop_t *x, xmsg_t *m, bool late_ok)
{
    m->next = NULL;
    pthread_mutex_lock(&x->mu);
    if (!x->closed) {
        if (x->tail)
            x->tail->next = m;
        else
            x->head = m;
        x->tail = m;
        /* under mu: gh_xloop_close cannot close the handle meanwhile */
        uv_async_send(&x->async);
        pthread_mutex_unlock(&x->mu);
        return 0;
    }
    pthread_mutex_unlock(&x->mu);
    if (late_ok && on_owner(x)) {
        late_post(x, m);
        return 0;
    }
    return UV_ECANCELED;
}

static void hold(gh_xloop_t *x, int delta)
{
    x->holds += (unsigned)delta;
    if (x->async_closed)
        return;
    if (x->holds)
        uv_ref((uv_handle_t *)&x->async);
    else
        uv_unref((uv_handle_t *)&x->async);
}

int gh_xloop_new(uv_loop_t *loop, gh_xloop_t **out)
{
    gh_xloop_t *x = calloc(1, sizeof *x);
    if (!x)
        return UV_ENOMEM;
    if (pthread_mutex_init(&x->mu, NULL) != 0) {
        free(x);
        return UV_ENOMEM;
    }
    int rc = uv_async_init(loop, &x->async, on_async);
    if (rc != 0) {
        pthread_mutex_destroy(&x->mu);
        free(x);
        return rc;
    }
    x->loop = loop;
    x->owner = pthread_self();
    x->async.data = x;
    uv_unref((uv_handle_t *)&x->async);
    *out = x;
    return 0;
}

int gh_xloop_post(gh_xloop_t *x, void (*fn)(void *arg), void *arg)
{
    xmsg_t *m = malloc(sizeof *m);
    if (!m)
        return UV_ENOMEM;
    m->fn = fn;
    m->arg = arg;
    m->heap = true;
    int rc = post_msg(x, m, false);
    if (rc != 0)
        free(m);
    return rc;
}

static void cut_ends(gh_xloop_t *x);

void gh_xloop_close(gh_xloop_t *x)
{
    if (x->async_closed)
        return;
    pthread_mutex_lock(&x->mu);
    x->closed = true;
    pthread_mutex_unlock(&x->mu);
    x->async_closed = true;
    uv_close((uv_handle_t *)&x->async, on_async_closed);
    cut_ends(x);
}

void gh_xloop_free(gh_xloop_t *x)
{
    if (!x)
        return;
    /* Only if the loop was not run after gh_xloop_close: nothing can run
     * these any more. */
    for (xmsg_t *m = x->head, *next; m; m = next) {
        next = m->next;
        if (m->heap)
            free(m);
    }
    pthread_mutex_destroy(&x->mu);
    free(x);
}

/* ---- pipe ---- */

#define XP_READ_MAX (64 * 1024)     /* bytes suggested to on_alloc, at most */
#define XP_READS_PER_TURN 16        /* then the loop gets to run other work */
#define XP_SMALL 4096               /* writes this small are copied into the last chunk */
#define XP_CHUNK (16 * 1024)        /* smallest chunk allocated */

typedef struct xchunk {
    struct xchunk *next;
    size_t off, len, cap;
    char data[];
} xchunk_t;

/* One direction: bytes written by end i, read by end !i. Under the mutex. */
typedef struct xdir {
    xchunk_t *head, *tail;
    size_t queued;          /* bytes in the chunks */
    uint64_t written;       /* bytes ever written (the end offset of each write) */
    uint64_t taken;         /* bytes ever read */
    uint64_t wait_end;      /* wake the writer once taken + bound reaches it */
    bool wait;
    bool fin;               /* the writer shut down: UV_EOF after the chunks */
    int rerr;               /* the reader gets this at once (the writer reset) */
    int werr;               /* writes fail with this: the reader is gone */
} xdir_t;

typedef struct xwrec {
    gh_write_req_t *req;
    uint64_t end;
} xwrec_t;

struct xend {
    gh_stream_t base;       /* first: the gh_stream_t handed out */
    struct gh_xpipe *p;
    gh_xloop_t *x;
    int idx;
    xmsg_t msg;
    /* under p->mu */
    bool scheduled;         /* msg is queued */
    bool finished;          /* on_close ran or dropped: never scheduled again */
    bool rd_on;             /* reading: writes by the peer wake it */
    /* the endpoint's thread only */
    bool attached;          /* counted in x->holds, on x->ends */
    bool reading, rx_done, delivering, shut;
    int reset_err;          /* what the peer reads if this closes unshut (0: reset) */
    xend_t *att_prev, *att_next;
    xwrec_t *wq;            /* writes whose callback has not run, a ring */
    size_t wq_head, wq_n, wq_cap;
};

typedef struct gh_xpipe {
    pthread_mutex_t mu;
    unsigned refs;
    bool cut;
    xend_t e[2];
    xdir_t d[2];
} gh_xpipe_t;

static const gh_stream_ops_t xp_ops;

static void lock(gh_xpipe_t *p)
{
    pthread_mutex_lock(&p->mu);
}

static void unlock(gh_xpipe_t *p)
{
    pthread_mutex_unlock(&p->mu);
}

static xend_t *peer_of(xend_t *e)
{
    return &e->p->e[!e->idx];
}

static void discard(xdir_t *d)
{
    while (d->head) {
        xchunk_t *c = d->head;
        d->head = c->next;
        free(c);
    }
    d->tail = NULL;
    d->queued = 0;
}

static void pipe_free(gh_xpipe_t *p)
{
    for (int i = 0; i < 2; i++) {
        discard(&p->d[i]);
        free(p->e[i].wq);
    }
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static void pipe_unref(gh_xpipe_t *p)
{
    lock(p);
    bool last = --p->refs == 0;
    unlock(p);
    if (last)
        pipe_free(p);
}

static void cut(gh_xpipe_t *p);

/* On e's thread, at its first use there. An endpoint first used on a loop
 * already closed (handed over by a message that ran at the close) is cut as
 * those open at the close were. Never with p->mu held. */
static void attach(xend_t *e)
{
    if (e->attached)
        return;
    e->attached = true;
    gh_xloop_t *x = e->x;
    e->att_prev = NULL;
    e->att_next = x->ends;
    if (x->ends)
        x->ends->att_prev = e;
    x->ends = e;
    hold(x, 1);
    if (x->async_closed) {
        lock(e->p);
        cut(e->p);
        unlock(e->p);
    }
}

static void detach(xend_t *e)
{
    if (!e->attached)
        return;
    e->attached = false;
    gh_xloop_t *x = e->x;
    if (e->att_prev)
        e->att_prev->att_next = e->att_next;
    else
        x->ends = e->att_next;
    if (e->att_next)
        e->att_next->att_prev = e->att_prev;
    hold(x, -1);
}

/* Under p->mu: have e's service run on its loop. A loop that no longer
 * takes messages (its worker is stopping) cuts the pipe, so that the
 * other end gets an error instead of waiting. */
static void schedule(gh_xpipe_t *p, xend_t *e)
{
    if (e->scheduled || e->finished)
        return;
    e->scheduled = true;
    p->refs++;
    if (post_msg(e->x, &e->msg, true) == 0)
        return;
    e->scheduled = false;
    p->refs--;              /* the caller holds another reference */
    cut(p);
}

/* Under p->mu. */
static void cut(gh_xpipe_t *p)
{
    if (p->cut)
        return;
    p->cut = true;
    for (int i = 0; i < 2; i++) {
        xdir_t *d = &p->d[i];
        if (!d->fin && !d->rerr)
            d->rerr = UV_ECONNRESET;
        if (!d->werr)
            d->werr = UV_ECONNRESET;
    }
    schedule(p, &p->e[0]);
    schedule(p, &p->e[1]);
}

static void cut_ends(gh_xloop_t *x)
{
    for (xend_t *e = x->ends; e; e = e->att_next) {
        lock(e->p);
        cut(e->p);
        unlock(e->p);
    }
}

/* Runs the callbacks of the writes that are done, in order. */
static void complete_writes(xend_t *e)
{
    gh_xpipe_t *p = e->p;
    xdir_t *d = &p->d[e->idx];
    while (e->wq_n) {
        xwrec_t *r = &e->wq[e->wq_head];
        int status;
        if (e->base.closing) {
            status = UV_ECANCELED;
        } else {
            lock(p);
            if (r->end <= d->taken + GH_XPIPE_BOUND) {
                status = 0;
            } else if (d->werr) {
                status = d->werr;
            } else {
                d->wait = true;
                d->wait_end = r->end;
                unlock(p);
                return;
            }
            unlock(p);
        }
        gh_write_req_t *req = r->req;
        e->wq_head = (e->wq_head + 1) % e->wq_cap;
        e->wq_n--;
        req->cb(req, status);   /* may write or close */
    }
}

/* Under p->mu: copies up to max queued bytes to dst. */
static size_t take(gh_xpipe_t *p, xdir_t *d, char *dst, size_t max)
{
    size_t got = 0;
    while (got < max && d->head) {
        xchunk_t *c = d->head;
        size_t k = c->len < max - got ? c->len : max - got;
        memcpy(dst + got, c->data + c->off, k);
        got += k;
        c->off += k;
        c->len -= k;
        if (!c->len) {
            d->head = c->next;
            if (!d->head)
                d->tail = NULL;
            free(c);
        }
    }
    d->queued -= got;
    d->taken += got;
    if (d->wait && d->wait_end <= d->taken + GH_XPIPE_BOUND) {
        d->wait = false;
        schedule(p, &p->e[d == &p->d[0] ? 0 : 1]);
    }
    return got;
}

/* Hands what the peer wrote, then UV_EOF or the error, to a reading owner. */
static void deliver(xend_t *e)
{
    gh_xpipe_t *p = e->p;
    xdir_t *d = &p->d[!e->idx];
    if (e->delivering)
        return;
    e->delivering = true;
    for (int reads = 0; e->reading && !e->base.closing && !e->rx_done; reads++) {
        uv_buf_t b = uv_buf_init(NULL, 0);
        lock(p);
        if (reads == XP_READS_PER_TURN) {
            schedule(p, e);
            unlock(p);
            break;
        }
        int status = 0;
        if (d->rerr) {
            discard(d);
            status = d->rerr;
        } else if (!d->queued && d->fin) {
            status = UV_EOF;
        }
        if (status)
            e->rd_on = false;
        size_t avail = d->queued;
        unlock(p);
        if (status) {
            e->rx_done = true;
            e->base.on_alloc(&e->base, XP_READ_MAX, &b);
            if (e->reading && !e->base.closing)
                e->base.on_read(&e->base, status, &b);
            break;
        }
        if (!avail)
            break;
        e->base.on_alloc(&e->base, avail < XP_READ_MAX ? avail : XP_READ_MAX, &b);
        if (!e->reading || e->base.closing)
            break;
        if (!b.base || !b.len) {
            /* As libuv does: tell, and try again on the next loop turn. */
            e->base.on_read(&e->base, UV_ENOBUFS, &b);
            if (e->reading && !e->base.closing) {
                lock(p);
                schedule(p, e);
                unlock(p);
            }
            break;
        }
        lock(p);
        size_t n = take(p, d, b.base, b.len);
        unlock(p);
        e->base.on_read(&e->base, (ssize_t)n, &b);
    }
    e->delivering = false;
}

/* An endpoint's message: write callbacks, reads, and the end of a close
 * that was already under way when this turn began (so that on_close never
 * runs on a stack where close() was just called). */
static void service(void *arg)
{
    xend_t *e = arg;
    gh_xpipe_t *p = e->p;
    lock(p);
    e->scheduled = false;
    bool finished = e->finished;
    unlock(p);
    if (!finished) {
        bool was_closing = e->base.closing;
        attach(e);
        complete_writes(e);
        if (!e->base.closing) {
            deliver(e);
        } else if (was_closing) {
            lock(p);
            e->finished = true;
            e->rd_on = false;
            unlock(p);
            detach(e);
            if (e->base.on_close)
                e->base.on_close(&e->base);
            pipe_unref(p);  /* the endpoint's reference */
        }
    }
    pipe_unref(p);          /* the message's */
}

static int xp_read_start(gh_stream_t *s)
{
    xend_t *e = (xend_t *)s;
    gh_xpipe_t *p = e->p;
    if (s->closing)
        return UV_EINVAL;
    attach(e);
    e->reading = true;
    if (e->rx_done)
        return 0;
    xdir_t *d = &p->d[!e->idx];
    lock(p);
    e->rd_on = true;
    if (d->queued || d->fin || d->rerr)
        schedule(p, e);
    unlock(p);
    return 0;
}

static int xp_read_stop(gh_stream_t *s)
{
    xend_t *e = (xend_t *)s;
    e->reading = false;
    lock(e->p);
    e->rd_on = false;
    unlock(e->p);
    return 0;
}

static xchunk_t *chunk_new(const uv_buf_t *bufs, unsigned nbufs, size_t total)
{
    size_t cap = total > XP_CHUNK ? total : XP_CHUNK;
    xchunk_t *c = malloc(sizeof *c + cap);
    if (!c)
        return NULL;
    c->next = NULL;
    c->off = c->len = 0;
    c->cap = cap;
    for (unsigned i = 0; i < nbufs; i++) {
        memcpy(c->data + c->len, bufs[i].base, bufs[i].len);
        c->len += bufs[i].len;
    }
    return c;
}

static int wq_grow(xend_t *e)
{
    size_t cap = e->wq_cap ? 2 * e->wq_cap : 8;
    xwrec_t *wq = malloc(cap * sizeof *wq);
    if (!wq)
        return UV_ENOMEM;
    for (size_t i = 0; i < e->wq_n; i++)
        wq[i] = e->wq[(e->wq_head + i) % e->wq_cap];
    free(e->wq);
    e->wq = wq;
    e->wq_head = 0;
    e->wq_cap = cap;
    return 0;
}

static int xp_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    gh_write_cb cb)
{
    xend_t *e = (xend_t *)s;
    gh_xpipe_t *p = e->p;
    xdir_t *d = &p->d[e->idx];
    if (s->closing || e->shut)
        return UV_EPIPE;
    attach(e);
    if (e->wq_n == e->wq_cap && wq_grow(e) != 0)
        return UV_ENOMEM;
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    xchunk_t *c = NULL;
    if (total > XP_SMALL && !(c = chunk_new(bufs, nbufs, total)))
        return UV_ENOMEM;
    lock(p);
    if (!d->werr && total && !c) {
        xchunk_t *t = d->tail;
        if (t && t->cap - t->off - t->len >= total) {
            for (unsigned i = 0; i < nbufs; i++) {
                memcpy(t->data + t->off + t->len, bufs[i].base, bufs[i].len);
                t->len += bufs[i].len;
            }
        } else {
            unlock(p);
            if (!(c = chunk_new(bufs, nbufs, total)))
                return UV_ENOMEM;
            lock(p);
        }
    }
    if (d->werr) {
        int rc = d->werr;
        unlock(p);
        free(c);
        return rc;
    }
    if (c) {
        if (d->tail)
            d->tail->next = c;
        else
            d->head = c;
        d->tail = c;
    }
    d->queued += total;
    d->written += total;
    req->stream = s;
    req->cb = cb;
    xwrec_t *r = &e->wq[(e->wq_head + e->wq_n) % e->wq_cap];
    r->req = req;
    r->end = d->written;
    if (e->wq_n++ == 0) {
        /* else complete_writes gets to this one after the ones before */
        if (r->end <= d->taken + GH_XPIPE_BOUND) {
            schedule(p, e);
        } else {
            d->wait = true;
            d->wait_end = r->end;
        }
    }
    xend_t *peer = peer_of(e);
    if (total && peer->rd_on)
        schedule(p, peer);
    unlock(p);
    return 0;
}

static int xp_shutdown(gh_stream_t *s)
{
    xend_t *e = (xend_t *)s;
    gh_xpipe_t *p = e->p;
    if (s->closing)
        return UV_ENOTCONN;
    attach(e);
    if (e->shut)
        return 0;
    e->shut = true;
    lock(p);
    xdir_t *d = &p->d[e->idx];
    int rc = d->werr;
    if (!rc) {
        d->fin = true;
        xend_t *peer = peer_of(e);
        if (peer->rd_on)
            schedule(p, peer);
    }
    unlock(p);
    return rc;
}

/* e is going away (the lock held): what it had not finished writing reads
 * as a reset at the peer, writes toward it fail, and the peer hears of it. */
static void end_gone(gh_xpipe_t *p, xend_t *e)
{
    xend_t *peer = peer_of(e);
    xdir_t *out = &p->d[e->idx], *in = &p->d[!e->idx];
    e->rd_on = false;
    if (!out->fin && !out->rerr)
        out->rerr = e->reset_err ? e->reset_err : UV_ECONNRESET;
    if (!in->werr)
        in->werr = UV_EPIPE;
    discard(in);
    if (peer->finished)
        discard(out);
    schedule(p, peer);
}

/* The peer learns now; this end finishes in service (write callbacks with
 * UV_ECANCELED, then on_close). */
static void xp_close(gh_stream_t *s)
{
    xend_t *e = (xend_t *)s;
    gh_xpipe_t *p = e->p;
    attach(e);
    e->reading = false;
    lock(p);
    end_gone(p, e);
    schedule(p, e);
    unlock(p);
}

static void xp_set_reset(gh_stream_t *s, int err)
{
    ((xend_t *)s)->reset_err = err;
}

static size_t xp_wqs(const gh_stream_t *s)
{
    const xend_t *e = (const xend_t *)s;
    gh_xpipe_t *p = e->p;
    lock(p);
    size_t n = p->d[e->idx].werr ? 0 : p->d[e->idx].queued;
    unlock(p);
    return n;
}

static const gh_stream_ops_t xp_ops = {
    .read_start = xp_read_start,
    .read_stop = xp_read_stop,
    .write = xp_write,
    .shutdown = xp_shutdown,
    .close = xp_close,
    .write_queue_size = xp_wqs,
    .set_reset = xp_set_reset,
};

static bool xloop_closed(gh_xloop_t *x)
{
    pthread_mutex_lock(&x->mu);
    bool closed = x->closed;
    pthread_mutex_unlock(&x->mu);
    return closed;
}

int gh_xpipe_new(gh_xloop_t *xa, gh_xloop_t *xb, gh_stream_t **a, gh_stream_t **b)
{
    if (xloop_closed(xa) || xloop_closed(xb))
        return UV_ECANCELED;
    gh_xpipe_t *p = calloc(1, sizeof *p);
    if (!p)
        return UV_ENOMEM;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return UV_ENOMEM;
    }
    p->refs = 2;
    for (int i = 0; i < 2; i++) {
        xend_t *e = &p->e[i];
        e->base.ops = &xp_ops;
        e->p = p;
        e->idx = i;
        e->x = i ? xb : xa;
        e->msg.fn = service;
        e->msg.arg = e;
        if (on_owner(e->x))
            attach(e);
    }
    *a = &p->e[0].base;
    *b = &p->e[1].base;
    return 0;
}

void gh_xpipe_drop(gh_stream_t *s)
{
    xend_t *e = (xend_t *)s;
    gh_xpipe_t *p = e->p;
    detach(e);
    lock(p);
    e->finished = true;
    end_gone(p, e);
    unlock(p);
    pipe_unref(p);
}
