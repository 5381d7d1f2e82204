/* Tunnel sessions and the tunnel stream carrier (docs/tunnel-protocol.md).
 *
 * Memory. What a stream receives and its owner has not read yet is copied
 * into blocks owned by the stream, and the peer can only send that much
 * because it never goes beyond the stream's receive window: window credit
 * is given back only as the owner reads. So a reader that stops (read_stop)
 * costs at most its window, and the peer's other streams carry on, because
 * the connection window is given back on receipt (see conn_credit). What a
 * stream sends is not copied until it is framed, and framing stops while
 * LINK_HIGH bytes are on their way into the link, so the output side costs
 * a few chunks per session whatever the streams do.
 *
 * Lifetimes. Streams and the session are only ever freed from the idle
 * callback or a handle close callback, never inside a call stack that runs
 * user code. So after any user callback the objects are still there and
 * only their state (closing, dead) needs a second look; user callbacks may
 * close their stream, another stream or the whole session.
 *
 * Ordering. Everything goes out through one queue of chunks, in the order it
 * was framed: OPEN before its DATA, the FIN on or after the last DATA.
 * Streams with data and window are framed round-robin, one frame each per
 * turn, so a bulk stream delays a chat stream by at most one frame per other
 * busy stream. */
#include <stdlib.h>
#include <string.h>
#include "proxy/tunnel_frame.h"
#include "proxy/tunnel_session.h"

/* Receiving. The window of a stream starts at GH_TF_INITIAL_STREAM_WINDOW
 * and doubles when a window's worth is read within about two round trips
 * (the peer was waiting on us, not the reader on the peer), up to
 * MAX_STREAM_WINDOW and while all windows together stay under RX_BUDGET. */
#define MAX_STREAM_WINDOW (16u * 1024 * 1024)
#define RX_BUDGET ((uint64_t)64 * 1024 * 1024)
#define CONN_UPDATE_MIN (GH_TF_INITIAL_CONN_WINDOW / 8)
#define MAX_PEER_STREAMS 4096
#define RX_BLOCK 16384
#define READ_SUGGEST 65536
#define INBUF_CAP (64u * 1024)

/* Sending. */
#define LINK_HIGH (256u * 1024)       /* no more DATA framed while this much is in flight */
#define LINK_HARD (4u * 1024 * 1024)  /* stop reading the link while output piles up this high */
#define CHUNK_CAP (4 * GH_TF_MAX_FRAME + 1024)
#define FREE_CHUNKS 4
#define DRAIN_MS 10000

typedef struct tstream tstream_t;

typedef struct rx_block {
    struct rx_block *next;
    size_t off, len, cap;
    uint8_t data[];
} rx_block_t;

/* One gh_stream_write: its buffers are read (not copied) until framed. */
typedef struct wentry {
    struct wentry *next;
    tstream_t *st;
    gh_write_req_t *req;
    size_t left;
    unsigned nbufs, bi;
    size_t boff;
    uv_buf_t bufs[];
} wentry_t;

/* Frames on their way into the link, and the writes they complete. */
typedef struct chunk {
    gh_write_req_t wr;
    gh_tsession_t *s;
    struct chunk *next;
    wentry_t *done, **done_tail;
    int status;
    size_t len;
    uint8_t data[CHUNK_CAP];
} chunk_t;

struct tstream {
    gh_stream_t base;           /* first: a tstream_t * is a gh_stream_t * */
    gh_tsession_t *s;
    uint32_t id;
    tstream_t *hnext;           /* table chain */
    tstream_t *prev, *next;     /* s->all: every stream not yet freed */
    tstream_t *rprev, *rnext;   /* s->ready: has something to frame */
    tstream_t *wnext;           /* s->work: deferred delivery or finalisation */
    bool in_table, in_ready, in_work, peer_opened, refused;
    /* receiving */
    rx_block_t *rxq, *rxq_tail;
    uint64_t rx_buffered;       /* in rxq */
    uint64_t rx_win;            /* window size: rx_avail + rx_buffered + rx_consumed */
    uint64_t rx_avail;          /* what the peer may still send */
    uint64_t rx_consumed;       /* read by the owner, not yet credited */
    uint64_t rx_epoch_ns;       /* when the last credit was sent */
    int rx_err;                 /* UV_EOF or an error, read after rxq */
    bool rx_fin, rx_done, reading;
    bool delivering;            /* inside the owner's on_alloc/on_read */
    /* sending */
    wentry_t *wq, **wq_tail;
    uint64_t tx_queued, tx_win;
    unsigned inflight;          /* framed writes whose chunk is not written yet */
    int tx_err;
    bool fin_pending, fin_sent, rst_done;
    char service[];
};

struct gh_tsession {
    uv_loop_t *loop;
    gh_stream_t *link;
    void *link_data;            /* what the link had before we took it */
    gh_close_cb link_on_close;
    gh_tsession_cbs_t cbs;
    void *data;
    bool is_edge;
    uint64_t hb_ms;
    uv_timer_t timer;
    uv_idle_t idle;
    int handles;
    /* input */
    uint8_t *in;
    size_t inlen, incap;
    bool in_pending, link_paused;
    /* streams */
    tstream_t **tab;
    size_t tabmask;
    unsigned ntab, npeer;
    tstream_t *all;
    tstream_t *ready, *ready_tail;
    tstream_t *work, *work_tail;
    uint32_t next_id, last_peer_id;
    /* output */
    chunk_t *cur;               /* being filled */
    chunk_t *free_chunks, *orphans;
    unsigned nfree, chunks_out; /* chunks_out: written or orphaned, not yet done */
    size_t out_bytes;
    /* flow control */
    uint64_t tx_conn_win;
    uint64_t rx_conn_avail, rx_conn_unacked, rx_buffered_total, rx_window_sum;
    /* heartbeats */
    uint64_t last_rx_ms, next_ping_ms, ping_sent_ns, srtt_ns;
    uint32_t ping_seq;
    bool ping_out;
    /* state */
    bool goaway_sent, goaway_recv, draining, dead, cb_done, link_closed, freeing;
    int fail_err;
};

static const gh_stream_ops_t tstream_ops;
static void idle_cb(uv_idle_t *h);
static void pump(gh_tsession_t *s);
static void session_end(gh_tsession_t *s, int reason);

static uint64_t min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* ---- bookkeeping ---- */

static void schedule(gh_tsession_t *s)
{
    if (!s->freeing)
        uv_idle_start(&s->idle, idle_cb);
}

/* Errors found where user callbacks must not run (inside a write or a
 * close) end the session from the idle callback. */
static void fail_later(gh_tsession_t *s, int err)
{
    if (!s->fail_err)
        s->fail_err = err;
    schedule(s);
}

static void work_add(tstream_t *st)
{
    gh_tsession_t *s = st->s;
    if (st->in_work)
        return;
    st->in_work = true;
    st->wnext = NULL;
    if (s->work_tail)
        s->work_tail->wnext = st;
    else
        s->work = st;
    s->work_tail = st;
    schedule(s);
}

static void ready_remove(tstream_t *st)
{
    gh_tsession_t *s = st->s;
    if (!st->in_ready)
        return;
    if (st->rprev)
        st->rprev->rnext = st->rnext;
    else
        s->ready = st->rnext;
    if (st->rnext)
        st->rnext->rprev = st->rprev;
    else
        s->ready_tail = st->rprev;
    st->in_ready = false;
}

static void ready_add(tstream_t *st, bool front)
{
    gh_tsession_t *s = st->s;
    if (st->in_ready)
        return;
    st->in_ready = true;
    if (front) {
        st->rprev = NULL;
        st->rnext = s->ready;
        if (s->ready)
            s->ready->rprev = st;
        else
            s->ready_tail = st;
        s->ready = st;
    } else {
        st->rnext = NULL;
        st->rprev = s->ready_tail;
        if (s->ready_tail)
            s->ready_tail->rnext = st;
        else
            s->ready = st;
        s->ready_tail = st;
    }
}

static bool stream_ready(const tstream_t *st)
{
    if (st->rst_done || st->tx_err || st->base.closing)
        return false;
    if (st->wq)
        return st->tx_win > 0 || st->wq->left == 0;
    return st->fin_pending && !st->fin_sent;
}

static tstream_t *table_find(const gh_tsession_t *s, uint32_t id)
{
    for (tstream_t *st = s->tab[(id >> 1) & s->tabmask]; st; st = st->hnext)
        if (st->id == id)
            return st;
    return NULL;
}

static void table_add(gh_tsession_t *s, tstream_t *st)
{
    if (s->ntab > s->tabmask) {
        /* Grow; if that fails the chains just get longer. */
        size_t n = (s->tabmask + 1) * 2;
        tstream_t **t = calloc(n, sizeof *t);
        if (t) {
            for (size_t i = 0; i <= s->tabmask; i++) {
                while (s->tab[i]) {
                    tstream_t *x = s->tab[i];
                    s->tab[i] = x->hnext;
                    x->hnext = t[(x->id >> 1) & (n - 1)];
                    t[(x->id >> 1) & (n - 1)] = x;
                }
            }
            free(s->tab);
            s->tab = t;
            s->tabmask = n - 1;
        }
    }
    tstream_t **b = &s->tab[(st->id >> 1) & s->tabmask];
    st->hnext = *b;
    *b = st;
    st->in_table = true;
    s->ntab++;
    s->npeer += st->peer_opened;
    s->rx_window_sum += st->rx_win;
}

static void table_remove(tstream_t *st)
{
    gh_tsession_t *s = st->s;
    tstream_t **p = &s->tab[(st->id >> 1) & s->tabmask];
    while (*p != st)
        p = &(*p)->hnext;
    *p = st->hnext;
    st->in_table = false;
    s->ntab--;
    s->npeer -= st->peer_opened;
    s->rx_window_sum -= st->rx_win;
}

/* Whether id belongs to a stream that existed: frames for it may still be
 * in flight after it was closed here, and are dropped. Any other id is a
 * protocol error. */
static bool id_seen(const gh_tsession_t *s, uint32_t id)
{
    bool ours = (id & 1) == (s->is_edge ? 1u : 0u);
    return ours ? id < s->next_id : id <= s->last_peer_id;
}

/* ---- output ---- */

static chunk_t *chunk_get(gh_tsession_t *s)
{
    chunk_t *c = s->free_chunks;
    if (c) {
        s->free_chunks = c->next;
        s->nfree--;
    } else if (!(c = malloc(sizeof *c))) {
        return NULL;
    }
    c->s = s;
    c->next = NULL;
    c->done = NULL;
    c->done_tail = &c->done;
    c->status = 0;
    c->len = 0;
    c->wr.data = c;
    return c;
}

static void chunk_put(gh_tsession_t *s, chunk_t *c)
{
    if (s->nfree < FREE_CHUNKS && !s->dead) {
        c->next = s->free_chunks;
        s->free_chunks = c;
        s->nfree++;
    } else {
        free(c);
    }
}

/* A chunk that never reaches the link (nothing in it but completions, or
 * the write failed) is completed from the idle callback. */
static void orphan(gh_tsession_t *s, chunk_t *c, int status)
{
    c->status = status;
    c->len = 0;
    c->next = s->orphans;
    s->orphans = c;
    s->chunks_out++;
    schedule(s);
}

/* Runs the write callbacks of the writes whose last byte was in c. */
static void chunk_done(chunk_t *c, int status)
{
    gh_tsession_t *s = c->s;
    wentry_t *w = c->done;
    s->chunks_out--;
    s->out_bytes -= c->len;
    chunk_put(s, c);
    while (w) {
        wentry_t *next = w->next;
        tstream_t *st = w->st;
        gh_write_req_t *req = w->req;
        free(w);
        st->inflight--;
        req->cb(req, status < 0 ? status : 0);
        if (st->base.closing && !st->inflight)
            work_add(st);
        w = next;
    }
}

static void maybe_free(gh_tsession_t *s);

static void chunk_written(gh_write_req_t *wr, int status)
{
    chunk_t *c = wr->data;
    gh_tsession_t *s = c->s;
    chunk_done(c, status);
    if (status < 0 && !s->dead)
        session_end(s, status);
    if (!s->dead) {
        if (s->link_paused && s->out_bytes <= LINK_HIGH && gh_stream_read_start(s->link) == 0)
            s->link_paused = false;
        pump(s);
        if (s->goaway_sent || s->goaway_recv)
            schedule(s);
    }
    maybe_free(s);
}

static void flush(gh_tsession_t *s)
{
    chunk_t *c = s->cur;
    if (!c)
        return;
    s->cur = NULL;
    if (c->len == 0) {
        if (c->done)
            orphan(s, c, 0);
        else
            chunk_put(s, c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)c->data, (unsigned)c->len);
    s->chunks_out++;
    s->out_bytes += c->len;
    int rc = gh_stream_write(s->link, &c->wr, &b, 1, chunk_written);
    if (rc < 0) {
        s->chunks_out--;
        s->out_bytes -= c->len;
        orphan(s, c, rc);
        fail_later(s, rc);
    }
}

/* Room for n more bytes at the end of the current chunk. */
static uint8_t *out_reserve(gh_tsession_t *s, size_t n)
{
    if (s->cur && CHUNK_CAP - s->cur->len < n)
        flush(s);
    if (!s->cur && !(s->cur = chunk_get(s))) {
        fail_later(s, UV_ENOMEM);
        return NULL;
    }
    return s->cur->data + s->cur->len;
}

/* Queues a frame without payload; pump() or flush() sends it. */
static void ctrl(gh_tsession_t *s, uint8_t type, uint8_t flags, uint32_t id, uint32_t value)
{
    if (s->dead || s->draining)
        return;
    uint8_t *p = out_reserve(s, GH_TF_HEADER_LEN);
    if (!p)
        return;
    gh_tframe_header(p, type, flags, id, value);
    s->cur->len += GH_TF_HEADER_LEN;
}

/* Frames the next piece of st's queue: one DATA frame, a FIN, or the
 * completion of an empty write. Returns false when the connection window
 * (or memory) is what stops it. */
static bool frame_one(tstream_t *st)
{
    gh_tsession_t *s = st->s;
    wentry_t *w = st->wq;
    if (!w) {
        if (st->fin_pending && !st->fin_sent) {
            ctrl(s, GH_TF_DATA, GH_TF_FLAG_FIN, st->id, 0);
            st->fin_sent = true;
        }
        return true;
    }
    size_t n = (size_t)min64(min64(w->left, GH_TF_MAX_DATA), min64(st->tx_win, s->tx_conn_win));
    if (w->left && !n)
        return s->tx_conn_win > 0;
    uint8_t *p = out_reserve(s, GH_TF_HEADER_LEN + n);
    if (!p)
        return false;
    for (size_t k = 0; k < n;) {
        const uv_buf_t *b = &w->bufs[w->bi];
        size_t take = (size_t)min64(b->len - w->boff, n - k);
        memcpy(p + GH_TF_HEADER_LEN + k, b->base + w->boff, take);
        k += take;
        w->boff += take;
        if (w->boff == b->len) {
            w->bi++;
            w->boff = 0;
        }
    }
    w->left -= n;
    st->tx_win -= n;
    s->tx_conn_win -= n;
    st->tx_queued -= n;
    uint8_t flags = 0;
    if (!w->left) {
        st->wq = w->next;
        if (!st->wq)
            st->wq_tail = &st->wq;
        w->next = NULL;
        *s->cur->done_tail = w;
        s->cur->done_tail = &w->next;
        st->inflight++;
        if (!st->wq && st->fin_pending) {
            flags = GH_TF_FLAG_FIN;
            st->fin_sent = true;
        }
    }
    if (n || flags) {
        gh_tframe_header(p, GH_TF_DATA, flags, st->id, (uint32_t)n);
        s->cur->len += GH_TF_HEADER_LEN + n;
    }
    return true;
}

/* Frames what the windows allow, round-robin over the ready streams, while
 * the link is not backed up, and hands it all to the link. Runs no user
 * callback, so it is safe anywhere. */
static void pump(gh_tsession_t *s)
{
    while (!s->dead && s->ready && s->out_bytes + (s->cur ? s->cur->len : 0) < LINK_HIGH) {
        tstream_t *st = s->ready;
        ready_remove(st);
        bool ok = frame_one(st);
        if (stream_ready(st))
            ready_add(st, !ok);
        if (!ok)
            break;
    }
    flush(s);
}

/* ---- receiving ---- */

static void rx_discard(tstream_t *st)
{
    while (st->rxq) {
        rx_block_t *b = st->rxq;
        st->rxq = b->next;
        free(b);
    }
    st->rxq_tail = NULL;
    st->s->rx_buffered_total -= st->rx_buffered;
    st->rx_buffered = 0;
}

static bool rx_queue(tstream_t *st, const uint8_t *p, size_t n)
{
    while (n) {
        rx_block_t *b = st->rxq_tail;
        size_t room = b ? b->cap - b->off - b->len : 0;
        if (!room) {
            size_t cap = n > RX_BLOCK ? n : RX_BLOCK;
            if (!(b = malloc(sizeof *b + cap)))
                return false;
            b->next = NULL;
            b->off = b->len = 0;
            b->cap = room = cap;
            if (st->rxq_tail)
                st->rxq_tail->next = b;
            else
                st->rxq = b;
            st->rxq_tail = b;
        }
        size_t k = (size_t)min64(room, n);
        memcpy(b->data + b->off + b->len, p, k);
        b->len += k;
        p += k;
        n -= k;
        st->rx_buffered += k;
        st->s->rx_buffered_total += k;
    }
    return true;
}

static size_t rx_take(tstream_t *st, char *dst, size_t max)
{
    size_t got = 0;
    while (got < max && st->rxq) {
        rx_block_t *b = st->rxq;
        size_t k = (size_t)min64(b->len, max - got);
        memcpy(dst + got, b->data + b->off, k);
        got += k;
        b->off += k;
        b->len -= k;
        if (!b->len) {
            st->rxq = b->next;
            if (!st->rxq)
                st->rxq_tail = NULL;
            free(b);
        }
    }
    st->rx_buffered -= got;
    st->s->rx_buffered_total -= got;
    st->rx_consumed += got;
    return got;
}

/* Gives the peer back the window the owner has read, once half the window
 * is used, and grows the window when the reader keeps up with the link
 * (auto-tuning; see the top of the file). */
static void stream_credit(tstream_t *st)
{
    gh_tsession_t *s = st->s;
    if (s->dead || st->base.closing || st->rx_fin || st->rst_done || !st->in_table)
        return;
    if (st->rx_consumed < st->rx_win / 2)
        return;
    uint64_t now = uv_hrtime();
    uint64_t inc = st->rx_consumed;
    if (s->srtt_ns && now - st->rx_epoch_ns < 2 * s->srtt_ns && st->rx_win < MAX_STREAM_WINDOW &&
        s->rx_window_sum + st->rx_win <= RX_BUDGET) {
        inc += st->rx_win;
        s->rx_window_sum += st->rx_win;
        st->rx_win *= 2;
    }
    st->rx_epoch_ns = now;
    st->rx_consumed = 0;
    st->rx_avail += inc;
    ctrl(s, GH_TF_WINDOW, 0, st->id, (uint32_t)inc);
}

/* The connection window only limits bytes in flight: it is credited as
 * frames are received, since per-stream windows already bound what is
 * buffered. Were it credited as owners read, a few stalled streams could
 * pin it and stall every stream. Only past RX_BUDGET buffered bytes (many
 * stalled streams with big windows) is credit held back, as a last limit on
 * the memory of a session. */
static void conn_credit(gh_tsession_t *s)
{
    if (s->dead)
        return;
    uint64_t excess = s->rx_buffered_total > RX_BUDGET ? s->rx_buffered_total - RX_BUDGET : 0;
    if (s->rx_conn_unacked <= excess)
        return;
    uint64_t give = s->rx_conn_unacked - excess;
    if (give < CONN_UPDATE_MIN)
        return;
    s->rx_conn_unacked -= give;
    s->rx_conn_avail += give;
    ctrl(s, GH_TF_WINDOW, 0, 0, (uint32_t)give);
}

/* Hands buffered bytes, then UV_EOF or the error, to a reading owner.
 * Never nested: a callback that ends the session from inside on_read gets
 * its stream's end from the loop that is already running (or later). */
static void deliver(tstream_t *st)
{
    if (st->delivering)
        return;
    st->delivering = true;
    while (st->reading && !st->base.closing && !st->rx_done) {
        uv_buf_t b = uv_buf_init(NULL, 0);
        if (st->rxq) {
            st->base.on_alloc(&st->base, (size_t)min64(st->rx_buffered, READ_SUGGEST), &b);
            if (st->base.closing)
                break;
            if (!b.base || !b.len) {
                st->base.on_read(&st->base, UV_ENOBUFS, &b);
                break;
            }
            size_t n = rx_take(st, b.base, b.len);
            st->base.on_read(&st->base, (ssize_t)n, &b);
            stream_credit(st);
            continue;
        }
        if (st->rx_err) {
            st->rx_done = true;
            st->base.on_alloc(&st->base, READ_SUGGEST, &b);
            if (!st->base.closing)
                st->base.on_read(&st->base, st->rx_err, &b);
        }
        break;
    }
    st->delivering = false;
}

/* A DATA payload for st: straight into the owner's buffer when it reads and
 * nothing is queued before it, else into the queue. */
static void rx_data(tstream_t *st, const uint8_t *p, size_t n)
{
    bool direct = !st->delivering;
    st->delivering = true;
    while (direct && n && !st->rxq && st->reading && !st->base.closing && !st->rx_done) {
        uv_buf_t b = uv_buf_init(NULL, 0);
        st->base.on_alloc(&st->base, n, &b);
        if (st->base.closing)
            break;
        if (!b.base || !b.len) {
            st->base.on_read(&st->base, UV_ENOBUFS, &b);
            break;
        }
        size_t k = (size_t)min64(n, b.len);
        memcpy(b.base, p, k);
        p += k;
        n -= k;
        st->rx_consumed += k;
        st->base.on_read(&st->base, (ssize_t)k, &b);
    }
    if (direct)
        st->delivering = false;
    if (direct && st->rx_err && !st->rx_done && !st->base.closing)
        work_add(st);   /* the session ended inside on_read */
    if (n && !st->base.closing && !st->rx_done && !rx_queue(st, p, n)) {
        /* Out of memory: this stream is lost, the others may be fine. */
        rx_discard(st);
        st->rst_done = true;
        st->rx_err = st->tx_err = UV_ENOMEM;
        ready_remove(st);
        ctrl(st->s, GH_TF_RESET, 0, st->id, GH_TF_RESET_INTERNAL);
        work_add(st);
        return;
    }
    stream_credit(st);
}

static void cancel_writes(tstream_t *st, int err)
{
    wentry_t *w;
    while ((w = st->wq)) {
        st->wq = w->next;
        if (!st->wq)
            st->wq_tail = &st->wq;
        st->tx_queued -= w->left;
        gh_write_req_t *req = w->req;
        free(w);
        req->cb(req, err);
    }
}

/* ---- streams ---- */

static tstream_t *stream_new(gh_tsession_t *s, uint32_t id, const char *service, size_t len,
                             bool peer)
{
    tstream_t *st = calloc(1, sizeof *st + len + 1);
    if (!st)
        return NULL;
    memcpy(st->service, service, len);
    st->base.ops = &tstream_ops;
    st->s = s;
    st->id = id;
    st->peer_opened = peer;
    st->rx_win = st->rx_avail = GH_TF_INITIAL_STREAM_WINDOW;
    st->tx_win = GH_TF_INITIAL_STREAM_WINDOW;
    st->rx_epoch_ns = uv_hrtime();
    st->wq_tail = &st->wq;
    st->next = s->all;
    if (s->all)
        s->all->prev = st;
    s->all = st;
    table_add(s, st);
    return st;
}

/* Closing by the owner (code CANCEL) or refusal (code REFUSED): the peer
 * is told unless the stream already finished both ways; the rest happens
 * in stream_work. */
static void close_stream(tstream_t *st, uint32_t code)
{
    gh_tsession_t *s = st->s;
    ready_remove(st);
    if (st->in_table) {
        bool finished = st->rst_done || (st->fin_sent && st->rx_fin);
        table_remove(st);
        if (!finished)
            ctrl(s, GH_TF_RESET, 0, st->id, code);
    }
    rx_discard(st);
    work_add(st);
    if (!s->dead) {
        conn_credit(s);
        pump(s);
    }
}

/* Deferred: cancels queued writes, delivers what a reading owner has not
 * had yet, and frees a closed stream once its framed writes are done. */
static void stream_work(tstream_t *st)
{
    gh_tsession_t *s = st->s;
    if (st->base.closing) {
        cancel_writes(st, UV_ECANCELED);
        if (st->inflight)
            return;
        if (st->prev)
            st->prev->next = st->next;
        else
            s->all = st->next;
        if (st->next)
            st->next->prev = st->prev;
        if (!st->refused && st->base.on_close)
            st->base.on_close(&st->base);
        free(st);
        maybe_free(s);
        return;
    }
    if (st->tx_err)
        cancel_writes(st, st->tx_err);
    deliver(st);
}

static int ts_read_start(gh_stream_t *b)
{
    tstream_t *st = (tstream_t *)b;
    if (b->closing)
        return UV_EINVAL;
    st->reading = true;
    if (!st->rx_done && (st->rxq || st->rx_err))
        work_add(st);
    return 0;
}

static int ts_read_stop(gh_stream_t *b)
{
    ((tstream_t *)b)->reading = false;
    return 0;
}

static int ts_write(gh_stream_t *b, gh_write_req_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    gh_write_cb cb)
{
    tstream_t *st = (tstream_t *)b;
    if (b->closing || st->fin_pending)
        return UV_EPIPE;
    if (st->tx_err)
        return st->tx_err;
    wentry_t *w = malloc(sizeof *w + nbufs * sizeof(uv_buf_t));
    if (!w)
        return UV_ENOMEM;
    w->next = NULL;
    w->st = st;
    w->req = req;
    w->nbufs = nbufs;
    w->bi = 0;
    w->boff = 0;
    w->left = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        w->bufs[i] = bufs[i];
        w->left += bufs[i].len;
    }
    req->stream = b;
    req->cb = cb;
    *st->wq_tail = w;
    st->wq_tail = &w->next;
    st->tx_queued += w->left;
    if (stream_ready(st))
        ready_add(st, false);
    pump(st->s);
    return 0;
}

static int ts_shutdown(gh_stream_t *b)
{
    tstream_t *st = (tstream_t *)b;
    if (b->closing)
        return UV_EPIPE;
    if (st->tx_err)
        return st->tx_err;
    if (st->fin_pending)
        return 0;
    st->fin_pending = true;
    if (stream_ready(st))
        ready_add(st, false);
    pump(st->s);
    return 0;
}

static void ts_close(gh_stream_t *b)
{
    close_stream((tstream_t *)b, GH_TF_RESET_CANCEL);
}

static size_t ts_wqs(const gh_stream_t *b)
{
    return (size_t)((const tstream_t *)b)->tx_queued;
}

static const gh_stream_ops_t tstream_ops = {
    .read_start = ts_read_start,
    .read_stop = ts_read_stop,
    .write = ts_write,
    .shutdown = ts_shutdown,
    .close = ts_close,
    .write_queue_size = ts_wqs,
};

/* ---- frames from the peer ---- */

static int on_data(gh_tsession_t *s, const gh_tframe_t *f)
{
    if (f->value > s->rx_conn_avail)
        return UV_EPROTO;
    s->rx_conn_avail -= f->value;
    s->rx_conn_unacked += f->value;
    tstream_t *st = table_find(s, f->stream);
    if (!st)
        return id_seen(s, f->stream) ? 0 : UV_EPROTO;
    if (st->rst_done)
        return 0;
    if (st->rx_fin || f->value > st->rx_avail)
        return UV_EPROTO;
    st->rx_avail -= f->value;
    if (f->value)
        rx_data(st, f->payload, f->value);
    if ((f->flags & GH_TF_FLAG_FIN) && !st->rst_done) {
        st->rx_fin = true;
        if (!st->rx_err)
            st->rx_err = UV_EOF;
        deliver(st);
    }
    return 0;
}

static int on_open(gh_tsession_t *s, const gh_tframe_t *f)
{
    uint32_t id = f->stream;
    if ((id & 1) != (s->is_edge ? 0u : 1u) || id <= s->last_peer_id)
        return UV_EPROTO;
    s->last_peer_id = id;
    if (s->goaway_sent || s->goaway_recv || !s->cbs.on_stream || s->npeer >= MAX_PEER_STREAMS) {
        ctrl(s, GH_TF_RESET, 0, id, GH_TF_RESET_REFUSED);
        return 0;
    }
    tstream_t *st = stream_new(s, id, (const char *)f->payload, f->value, true);
    if (!st) {
        ctrl(s, GH_TF_RESET, 0, id, GH_TF_RESET_INTERNAL);
        return 0;
    }
    if (s->cbs.on_stream(s, &st->base, st->service, s->data) != 0) {
        if (!st->base.closing) {
            st->refused = true;
            st->base.closing = 1;
            close_stream(st, GH_TF_RESET_REFUSED);
        }
    }
    return 0;
}

static int on_window(gh_tsession_t *s, const gh_tframe_t *f)
{
    if (f->stream == 0) {
        if (s->tx_conn_win + f->value > GH_TF_MAX_WINDOW)
            return UV_EPROTO;
        s->tx_conn_win += f->value;
        return 0;
    }
    tstream_t *st = table_find(s, f->stream);
    if (!st)
        return id_seen(s, f->stream) ? 0 : UV_EPROTO;
    if (st->tx_win + f->value > GH_TF_MAX_WINDOW)
        return UV_EPROTO;
    st->tx_win += f->value;
    if (stream_ready(st))
        ready_add(st, false);
    return 0;
}

static int on_reset(gh_tsession_t *s, const gh_tframe_t *f)
{
    tstream_t *st = table_find(s, f->stream);
    if (!st)
        return id_seen(s, f->stream) ? 0 : UV_EPROTO;
    if (st->rst_done)
        return 0;
    int err = f->value == GH_TF_RESET_REFUSED ? UV_ECONNREFUSED : UV_ECONNRESET;
    st->rst_done = true;
    ready_remove(st);
    rx_discard(st);
    if (!st->rx_done)
        st->rx_err = err;
    st->tx_err = err;
    if (st->wq)
        work_add(st);
    deliver(st);
    return 0;
}

static void on_ping(gh_tsession_t *s, const gh_tframe_t *f)
{
    if (!(f->flags & GH_TF_FLAG_ACK)) {
        ctrl(s, GH_TF_PING, GH_TF_FLAG_ACK, 0, f->value);
        return;
    }
    if (s->ping_out && f->value == s->ping_seq) {
        uint64_t sample = uv_hrtime() - s->ping_sent_ns;
        s->srtt_ns = s->srtt_ns ? (7 * s->srtt_ns + sample) / 8 : sample;
        s->ping_out = false;
    }
}

static int handle_frame(gh_tsession_t *s, const gh_tframe_t *f)
{
    switch (f->type) {
    case GH_TF_DATA:
        return on_data(s, f);
    case GH_TF_OPEN:
        return on_open(s, f);
    case GH_TF_WINDOW:
        return on_window(s, f);
    case GH_TF_RESET:
        return on_reset(s, f);
    case GH_TF_PING:
        on_ping(s, f);
        return 0;
    case GH_TF_GOAWAY:
        s->goaway_recv = true;
        schedule(s);
        return 0;
    default:
        return UV_EPROTO;
    }
}

/* Frames whole frames from s->in; the partial one left is kept for the
 * next read. Stops as soon as a callback ended the session. */
static void parse_input(gh_tsession_t *s)
{
    size_t off = 0;
    while (!s->dead) {
        gh_tframe_t f;
        ssize_t n = gh_tframe_decode(s->in + off, s->inlen - off, &f);
        if (n == 0)
            break;
        int rc = n < 0 ? UV_EPROTO : handle_frame(s, &f);
        if (rc < 0) {
            session_end(s, rc);
            return;
        }
        off += (size_t)n;
    }
    if (s->dead)
        return;
    memmove(s->in, s->in + off, s->inlen - off);
    s->inlen -= off;
    conn_credit(s);
    pump(s);
    if (s->goaway_sent || s->goaway_recv)
        schedule(s);
}

/* ---- the link ---- */

static void link_alloc(gh_stream_t *l, size_t suggested, uv_buf_t *buf)
{
    gh_tsession_t *s = l->data;
    (void)suggested;
    buf->base = (char *)s->in + s->inlen;
    buf->len = s->incap - s->inlen;
}

static bool all_finished(const gh_tsession_t *s)
{
    for (const tstream_t *st = s->all; st; st = st->next)
        if (st->in_table && !st->rst_done && !(st->fin_sent && st->rx_fin))
            return false;
    return true;
}

static void link_read(gh_stream_t *l, ssize_t nread, const uv_buf_t *buf)
{
    gh_tsession_t *s = l->data;
    (void)buf;
    if (nread == 0 || s->dead)
        return;
    if (nread < 0) {
        bool clean = nread == UV_EOF &&
                     (s->draining || ((s->goaway_sent || s->goaway_recv) && all_finished(s)));
        session_end(s, clean ? 0 : (int)nread);
        return;
    }
    s->inlen += (size_t)nread;
    s->last_rx_ms = uv_now(s->loop);
    parse_input(s);
    if (!s->dead && !s->link_paused && s->out_bytes > LINK_HARD &&
        gh_stream_read_stop(s->link) == 0)
        s->link_paused = true;
}

static void link_closed(gh_stream_t *l)
{
    gh_tsession_t *s = l->data;
    s->link_closed = true;
    l->data = s->link_data;
    l->on_close = s->link_on_close;
    if (l->on_close)
        l->on_close(l);
    maybe_free(s);
}

/* ---- session life ---- */

static void send_ping(gh_tsession_t *s)
{
    s->ping_seq++;
    s->ping_sent_ns = uv_hrtime();
    s->ping_out = true;
    ctrl(s, GH_TF_PING, 0, 0, s->ping_seq);
}

static void timer_cb(uv_timer_t *t)
{
    gh_tsession_t *s = t->data;
    uint64_t now = uv_now(s->loop);
    if (s->dead)
        return;
    if (s->draining) {
        session_end(s, 0);     /* the peer did not close after go-away */
        return;
    }
    if (now - s->last_rx_ms >= 3 * s->hb_ms) {
        session_end(s, UV_ETIMEDOUT);
        return;
    }
    if (now >= s->next_ping_ms) {
        send_ping(s);
        s->next_ping_ms = now + s->hb_ms;
        pump(s);
    }
    uint64_t due = min64(s->next_ping_ms, s->last_rx_ms + 3 * s->hb_ms);
    uv_timer_start(&s->timer, timer_cb, due > now ? due - now : 1, 0);
}

/* Go-away is done when every stream has finished both ways (or was reset)
 * and the last frames are written: half-close the link and wait for the
 * peer to close its side. */
static void check_finish(gh_tsession_t *s)
{
    if (s->dead || s->draining || !(s->goaway_sent || s->goaway_recv))
        return;
    if (s->cur || s->chunks_out || !all_finished(s))
        return;
    s->draining = true;
    if (gh_stream_shutdown(s->link) < 0) {
        session_end(s, 0);
        return;
    }
    uv_timer_start(&s->timer, timer_cb, s->hb_ms ? 3 * s->hb_ms : DRAIN_MS, 0);
}

static void idle_cb(uv_idle_t *h)
{
    gh_tsession_t *s = h->data;
    if (s->in_pending && !s->dead) {
        s->in_pending = false;
        parse_input(s);
    }
    if (s->fail_err && !s->dead)
        session_end(s, s->fail_err);
    while (s->orphans) {
        chunk_t *c = s->orphans;
        s->orphans = c->next;
        chunk_done(c, c->status);
    }
    tstream_t *list = s->work;
    s->work = s->work_tail = NULL;
    while (list) {
        tstream_t *st = list;
        list = st->wnext;
        st->in_work = false;
        stream_work(st);
    }
    if (!s->dead) {
        conn_credit(s);
        pump(s);
        check_finish(s);
    }
    if (!s->work && !s->orphans && !s->in_pending && (!s->fail_err || s->dead))
        uv_idle_stop(&s->idle);
    maybe_free(s);
}

/* Ends the session: closes the link, hands every stream its end, runs
 * on_close. Runs user callbacks, so only from a loop callback or from
 * gh_tsession_close. */
static void session_end(gh_tsession_t *s, int reason)
{
    if (s->dead)
        return;
    if (reason == UV_EPROTO)
        ctrl(s, GH_TF_GOAWAY, 0, 0, GH_TF_GOAWAY_PROTOCOL);  /* best effort */
    flush(s);
    s->dead = true;
    uv_timer_stop(&s->timer);
    gh_stream_close(s->link);
    for (tstream_t *st = s->all, *next; st; st = next) {
        next = st->next;
        if (st->base.closing)
            continue;
        ready_remove(st);
        if (!st->tx_err)
            st->tx_err = UV_ECONNRESET;
        if (!st->rx_err)
            st->rx_err = UV_ECONNRESET;
        cancel_writes(st, UV_ECANCELED);
        if (st->delivering)
            work_add(st);
        else
            deliver(st);
    }
    if (s->cbs.on_close)
        s->cbs.on_close(s, reason, s->data);
    s->cb_done = true;
    maybe_free(s);
}

static void handle_closed(uv_handle_t *h)
{
    gh_tsession_t *s = h->data;
    if (--s->handles > 0)
        return;
    while (s->free_chunks) {
        chunk_t *c = s->free_chunks;
        s->free_chunks = c->next;
        free(c);
    }
    free(s->tab);
    free(s->in);
    free(s);
}

static void maybe_free(gh_tsession_t *s)
{
    if (s->freeing || !s->dead || !s->cb_done || !s->link_closed || s->all || s->chunks_out ||
        s->cur || s->orphans)
        return;
    s->freeing = true;
    uv_idle_stop(&s->idle);
    uv_close((uv_handle_t *)&s->timer, handle_closed);
    uv_close((uv_handle_t *)&s->idle, handle_closed);
}

gh_tsession_t *gh_tsession_new(uv_loop_t *loop, gh_stream_t *link, const char *pending,
                               size_t npending, bool is_edge, uint64_t heartbeat_ms,
                               const gh_tsession_cbs_t *cbs, void *data)
{
    gh_tsession_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->incap = INBUF_CAP + npending;
    s->in = malloc(s->incap);
    s->tab = calloc(16, sizeof *s->tab);
    if (!s->in || !s->tab) {
        free(s->in);
        free(s->tab);
        free(s);
        return NULL;
    }
    s->tabmask = 15;
    if (npending) {
        memcpy(s->in, pending, npending);
        s->inlen = npending;
        s->in_pending = true;
    }
    s->loop = loop;
    s->link = link;
    s->link_data = link->data;
    s->link_on_close = link->on_close;
    if (cbs)
        s->cbs = *cbs;
    s->data = data;
    s->is_edge = is_edge;
    s->hb_ms = heartbeat_ms;
    s->next_id = is_edge ? 1 : 2;
    s->tx_conn_win = GH_TF_INITIAL_CONN_WINDOW;
    s->rx_conn_avail = GH_TF_INITIAL_CONN_WINDOW;
    s->last_rx_ms = uv_now(loop);
    uv_timer_init(loop, &s->timer);
    uv_idle_init(loop, &s->idle);
    s->timer.data = s->idle.data = s;
    s->handles = 2;

    link->data = s;
    link->on_alloc = link_alloc;
    link->on_read = link_read;
    link->on_close = link_closed;
    int rc = gh_stream_read_start(link);
    if (rc < 0)
        fail_later(s, rc);
    send_ping(s);   /* the first round-trip time, for window tuning */
    pump(s);
    if (heartbeat_ms) {
        s->next_ping_ms = s->last_rx_ms + heartbeat_ms;
        uv_timer_start(&s->timer, timer_cb, heartbeat_ms, 0);
    }
    if (s->in_pending)
        schedule(s);
    return s;
}

gh_stream_t *gh_tsession_open(gh_tsession_t *s, const char *service)
{
    size_t len = strlen(service);
    if (!gh_tsession_can_open(s) || !gh_tframe_service_valid(service, len) ||
        s->next_id > GH_TF_MAX_STREAM_ID)
        return NULL;
    uint8_t *p = out_reserve(s, GH_TF_HEADER_LEN + len);
    if (!p)
        return NULL;
    tstream_t *st = stream_new(s, s->next_id, service, len, false);
    if (!st)
        return NULL;
    s->next_id += 2;
    gh_tframe_header(p, GH_TF_OPEN, 0, st->id, (uint32_t)len);
    memcpy(p + GH_TF_HEADER_LEN, service, len);
    s->cur->len += GH_TF_HEADER_LEN + len;
    pump(s);
    return &st->base;
}

bool gh_tsession_can_open(const gh_tsession_t *s)
{
    return !s->dead && !s->draining && !s->goaway_sent && !s->goaway_recv && !s->fail_err;
}

unsigned gh_tsession_nstreams(const gh_tsession_t *s)
{
    return s->ntab;
}

uint64_t gh_tsession_rtt_us(const gh_tsession_t *s)
{
    return s->srtt_ns / 1000;
}

void gh_tsession_goaway(gh_tsession_t *s)
{
    if (s->dead || s->goaway_sent)
        return;
    s->goaway_sent = true;
    ctrl(s, GH_TF_GOAWAY, 0, 0, GH_TF_GOAWAY_NORMAL);
    pump(s);
    schedule(s);
}

void gh_tsession_close(gh_tsession_t *s)
{
    session_end(s, UV_ECANCELED);
}

void gh_tsession_stream_info(const gh_stream_t *b, gh_tstream_info_t *out)
{
    const tstream_t *st = (const tstream_t *)b;
    out->id = st->id;
    out->service = st->service;
    out->rx_buffered = st->rx_buffered;
    out->rx_window = st->rx_win;
    out->tx_window = st->tx_win;
    out->tx_queued = st->tx_queued;
}
