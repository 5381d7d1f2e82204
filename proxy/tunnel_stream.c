/* The tunnel stream carrier: a gh_stream_t whose bytes travel as DATA
 * frames of a session. What the peer sends is given to a reading owner
 * straight from the link's buffer, or copied into blocks while it does not
 * read; the window is credited back only as the owner reads, which is what
 * keeps a stalled reader from costing more than its window and from
 * holding up the other streams. */
#include <stdlib.h>
#include <string.h>
#include "proxy/tunnel-int.h"

static const gh_stream_ops_t tstream_ops;

/* ---- receiving ---- */

void gh__tun_rx_discard(gh__tstream_t *st)
{
    while (st->rxq) {
        gh__rx_block_t *b = st->rxq;
        st->rxq = b->next;
        free(b);
    }
    st->rxq_tail = NULL;
    st->s->rx_buffered_total -= st->rx_buffered;
    st->rx_buffered = 0;
}

static bool rx_queue(gh__tstream_t *st, const uint8_t *p, size_t n)
{
    while (n) {
        gh__rx_block_t *b = st->rxq_tail;
        size_t room = b ? b->cap - b->off - b->len : 0;
        if (!room) {
            size_t cap = n > TUN_RX_BLOCK ? n : TUN_RX_BLOCK;
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
        size_t k = (size_t)gh__tun_min(room, n);
        memcpy(b->data + b->off + b->len, p, k);
        b->len += k;
        p += k;
        n -= k;
        st->rx_buffered += k;
        st->s->rx_buffered_total += k;
    }
    return true;
}

static size_t rx_take(gh__tstream_t *st, char *dst, size_t max)
{
    size_t got = 0;
    while (got < max && st->rxq) {
        gh__rx_block_t *b = st->rxq;
        size_t k = (size_t)gh__tun_min(b->len, max - got);
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
 * (auto-tuning; see tunnel-int.h). */
static void stream_credit(gh__tstream_t *st)
{
    gh_tsession_t *s = st->s;
    if (s->dead || st->base.closing || st->rx_fin || st->rst_done || !st->in_table)
        return;
    if (st->rx_consumed < st->rx_win / 2)
        return;
    uint64_t now = uv_hrtime();
    uint64_t inc = st->rx_consumed;
    if (s->srtt_ns && now - st->rx_epoch_ns < 2 * s->srtt_ns && st->rx_win < TUN_MAX_STREAM_WINDOW &&
        s->rx_window_sum + st->rx_win <= TUN_RX_BUDGET) {
        inc += st->rx_win;
        s->rx_window_sum += st->rx_win;
        st->rx_win *= 2;
    }
    st->rx_epoch_ns = now;
    st->rx_consumed = 0;
    st->rx_avail += inc;
    gh__tun_ctrl(s, GH_TF_WINDOW, 0, st->id, (uint32_t)inc);
}

/* The connection window only limits bytes in flight: it is credited as
 * frames are received, since per-stream windows already bound what is
 * buffered. Were it credited as owners read, a few stalled streams could
 * pin it and stall every stream. Only past TUN_RX_BUDGET buffered bytes (many
 * stalled streams with big windows) is credit held back, as a last limit on
 * the memory of a session. */
void gh__tun_conn_credit(gh_tsession_t *s)
{
    if (s->dead)
        return;
    uint64_t excess = s->rx_buffered_total > TUN_RX_BUDGET ? s->rx_buffered_total - TUN_RX_BUDGET : 0;
    if (s->rx_conn_unacked <= excess)
        return;
    uint64_t give = s->rx_conn_unacked - excess;
    if (give < TUN_CONN_UPDATE_MIN)
        return;
    s->rx_conn_unacked -= give;
    s->rx_conn_avail += give;
    gh__tun_ctrl(s, GH_TF_WINDOW, 0, 0, (uint32_t)give);
}

/* Hands buffered bytes, then UV_EOF or the error, to a reading owner.
 * Never nested: a callback that ends the session from inside on_read gets
 * its stream's end from the loop that is already running (or later). */
void gh__tun_deliver(gh__tstream_t *st)
{
    if (st->delivering)
        return;
    st->delivering = true;
    while (st->reading && !st->base.closing && !st->rx_done) {
        uv_buf_t b = uv_buf_init(NULL, 0);
        if (st->rxq) {
            st->base.on_alloc(&st->base, (size_t)gh__tun_min(st->rx_buffered, TUN_READ_SUGGEST), &b);
            if (st->base.closing)
                break;
            if (!b.base || !b.len) {
                /* As libuv does: tell, and try again on the next loop turn
                 * while the owner still reads. */
                st->base.on_read(&st->base, UV_ENOBUFS, &b);
                if (st->reading && !st->base.closing)
                    gh__tun_work_add(st);
                break;
            }
            size_t n = rx_take(st, b.base, b.len);
            st->base.on_read(&st->base, (ssize_t)n, &b);
            stream_credit(st);
            continue;
        }
        if (st->rx_err) {
            st->rx_done = true;
            st->base.on_alloc(&st->base, TUN_READ_SUGGEST, &b);
            if (!st->base.closing)
                st->base.on_read(&st->base, st->rx_err, &b);
        }
        break;
    }
    st->delivering = false;
}

/* A DATA payload for st: straight into the owner's buffer when it reads and
 * nothing is queued before it, else into the queue. */
void gh__tun_rx_data(gh__tstream_t *st, const uint8_t *p, size_t n)
{
    bool direct = !st->delivering, nobuf = false;
    st->delivering = true;
    while (direct && n && !st->rxq && st->reading && !st->base.closing && !st->rx_done) {
        uv_buf_t b = uv_buf_init(NULL, 0);
        st->base.on_alloc(&st->base, n, &b);
        if (st->base.closing)
            break;
        if (!b.base || !b.len) {
            st->base.on_read(&st->base, UV_ENOBUFS, &b);
            nobuf = true;
            break;
        }
        size_t k = (size_t)gh__tun_min(n, b.len);
        memcpy(b.base, p, k);
        p += k;
        n -= k;
        st->rx_consumed += k;
        st->base.on_read(&st->base, (ssize_t)k, &b);
    }
    if (direct)
        st->delivering = false;
    if (direct && st->rx_err && !st->rx_done && !st->base.closing)
        gh__tun_work_add(st);   /* the session ended inside on_read */
    if (n && !st->base.closing && !st->rx_done && !rx_queue(st, p, n)) {
        /* Out of memory: this stream is lost, the others may be fine. */
        gh__tun_rx_discard(st);
        st->rst_done = true;
        st->rx_err = st->tx_err = UV_ENOMEM;
        gh__tun_ready_remove(st);
        gh__tun_ctrl(st->s, GH_TF_RESET, 0, st->id, GH_TF_RESET_INTERNAL);
        gh__tun_work_add(st);
        return;
    }
    /* Bytes queued before these (a read_start not yet served, or a reader
     * that had no buffer) go first, and now rather than at the next
     * read_start. */
    if (direct && st->rxq && st->reading && !st->base.closing) {
        if (nobuf)
            gh__tun_work_add(st);   /* retried on the next loop turn */
        else
            gh__tun_deliver(st);
    }
    stream_credit(st);
}

void gh__tun_cancel_writes(gh__tstream_t *st, int err)
{
    gh__wentry_t *w;
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

gh__tstream_t *gh__tun_stream_new(gh_tsession_t *s, uint32_t id, const char *service, size_t len,
                             bool peer)
{
    gh__tstream_t *st = calloc(1, sizeof *st + len + 1);
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
    gh__tun_table_add(s, st);
    return st;
}

/* Closing by the owner (code CANCEL) or refusal (code REFUSED): the peer
 * is told unless the stream already finished both ways; the rest happens
 * in stream_work. */
void gh__tun_stream_close(gh__tstream_t *st, uint32_t code)
{
    gh_tsession_t *s = st->s;
    gh__tun_ready_remove(st);
    /* shutdown then close at once is a clean end, not an abort */
    if (st->in_table && st->fin_pending && !st->fin_sent && !st->wq && !st->rst_done)
        gh__tun_fin(st);
    if (st->in_table) {
        bool finished = st->rst_done || (st->fin_sent && st->rx_fin);
        gh__tun_table_remove(st);
        if (!finished)
            gh__tun_ctrl(s, GH_TF_RESET, 0, st->id, code);
    }
    gh__tun_rx_discard(st);
    gh__tun_work_add(st);
    if (!s->dead) {
        gh__tun_conn_credit(s);
        gh__tun_pump(s);
    }
}

/* Deferred: cancels queued writes, delivers what a reading owner has not
 * had yet, and frees a closed stream once its framed writes are done. */
void gh__tun_stream_work(gh__tstream_t *st)
{
    gh_tsession_t *s = st->s;
    if (st->base.closing) {
        gh__tun_cancel_writes(st, UV_ECANCELED);
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
        gh__tun_maybe_free(s);
        return;
    }
    if (st->tx_err)
        gh__tun_cancel_writes(st, st->tx_err);
    gh__tun_deliver(st);
}

static int ts_read_start(gh_stream_t *b)
{
    gh__tstream_t *st = (gh__tstream_t *)b;
    if (b->closing)
        return UV_EINVAL;
    st->reading = true;
    if (!st->rx_done && (st->rxq || st->rx_err))
        gh__tun_work_add(st);
    return 0;
}

static int ts_read_stop(gh_stream_t *b)
{
    ((gh__tstream_t *)b)->reading = false;
    return 0;
}

static int ts_write(gh_stream_t *b, gh_write_req_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    gh_write_cb cb)
{
    gh__tstream_t *st = (gh__tstream_t *)b;
    if (b->closing || st->fin_pending)
        return UV_EPIPE;
    if (st->tx_err)
        return st->tx_err;
    gh__wentry_t *w = malloc(sizeof *w + nbufs * sizeof(uv_buf_t));
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
    if (gh__tun_ready(st))
        gh__tun_ready_add(st, false);
    gh__tun_pump(st->s);
    return 0;
}

static int ts_shutdown(gh_stream_t *b)
{
    gh__tstream_t *st = (gh__tstream_t *)b;
    if (b->closing)
        return UV_ENOTCONN;
    if (st->tx_err)
        return st->tx_err;
    if (st->fin_pending)
        return 0;
    st->fin_pending = true;
    /* With nothing queued the FIN is a control frame and goes out now,
     * whatever the data backlog of the link. */
    if (!st->wq)
        gh__tun_fin(st);
    gh__tun_pump(st->s);
    return 0;
}

static void ts_close(gh_stream_t *b)
{
    gh__tun_stream_close((gh__tstream_t *)b, GH_TF_RESET_CANCEL);
}

static size_t ts_wqs(const gh_stream_t *b)
{
    return (size_t)((const gh__tstream_t *)b)->tx_queued;
}

static const gh_stream_ops_t tstream_ops = {
    .read_start = ts_read_start,
    .read_stop = ts_read_stop,
    .write = ts_write,
    .shutdown = ts_shutdown,
    .close = ts_close,
    .write_queue_size = ts_wqs,
};

void gh_tsession_stream_info(const gh_stream_t *b, gh_tstream_info_t *out)
{
    const gh__tstream_t *st = (const gh__tstream_t *)b;
    out->id = st->id;
    out->service = st->service;
    out->rx_buffered = st->rx_buffered;
    out->rx_window = st->rx_win;
    out->tx_window = st->tx_win;
    out->tx_queued = st->tx_queued;
}

void gh_tsession_stream_refuse(gh_stream_t *b)
{
    if (b->closing)
        return;
    b->closing = 1;
    gh__tun_stream_close((gh__tstream_t *)b, GH_TF_RESET_REFUSED);
}

bool gh_tsession_stream_reusable(const gh_stream_t *b)
{
    /* A stream of a session on another worker comes through a pipe; whether
     * that session is going away cannot be asked from here, so such a stream
     * is used once and not pooled (a pooled one would keep a draining
     * session alive). */
    if (b->ops != &tstream_ops)
        return false;
    const gh__tstream_t *st = (const gh__tstream_t *)b;
    return !b->closing && gh_tsession_can_open(st->s);
}
