/* Tunnel sessions (docs/tunnel-protocol.md): the session's life, its link,
 * and the frames it receives. The output queue is in proxy/tunnel_out.c and
 * the stream carrier in proxy/tunnel_stream.c; what follows holds for all
 * three.
 *
 * Memory. What a stream receives and its owner has not read yet is copied
 * into blocks owned by the stream, and the peer can only send that much
 * because it never goes beyond the stream's receive window: window credit
 * is given back only as the owner reads. So a reader that stops (read_stop)
 * costs at most its window, and the peer's other streams carry on, because
 * the connection window is given back on receipt (see conn_credit). What a
 * stream sends is not copied until it is framed, and framing stops while
 * TUN_LINK_HIGH bytes are on their way into the link, so the output side costs
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
#include "proxy/tunnel-int.h"

static void idle_cb(uv_idle_t *h);

/* ---- bookkeeping ---- */

void gh__tun_schedule(gh_tsession_t *s)
{
    if (!s->freeing)
        uv_idle_start(&s->idle, idle_cb);
}

/* Errors found where user callbacks must not run (inside a write or a
 * close) end the session from the idle callback. */
void gh__tun_fail_later(gh_tsession_t *s, int err)
{
    if (!s->fail_err)
        s->fail_err = err;
    gh__tun_schedule(s);
}

void gh__tun_work_add(gh__tstream_t *st)
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
    gh__tun_schedule(s);
}

static gh__tstream_t *table_find(const gh_tsession_t *s, uint32_t id)
{
    for (gh__tstream_t *st = s->tab[(id >> 1) & s->tabmask]; st; st = st->hnext)
        if (st->id == id)
            return st;
    return NULL;
}

void gh__tun_table_add(gh_tsession_t *s, gh__tstream_t *st)
{
    if (s->ntab > s->tabmask) {
        /* Grow; if that fails the chains just get longer. */
        size_t n = (s->tabmask + 1) * 2;
        gh__tstream_t **t = calloc(n, sizeof *t);
        if (t) {
            for (size_t i = 0; i <= s->tabmask; i++) {
                while (s->tab[i]) {
                    gh__tstream_t *x = s->tab[i];
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
    gh__tstream_t **b = &s->tab[(st->id >> 1) & s->tabmask];
    st->hnext = *b;
    *b = st;
    st->in_table = true;
    s->ntab++;
    s->npeer += st->peer_opened;
    s->rx_window_sum += st->rx_win;
}

void gh__tun_table_remove(gh__tstream_t *st)
{
    gh_tsession_t *s = st->s;
    gh__tstream_t **p = &s->tab[(st->id >> 1) & s->tabmask];
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

/* ---- frames from the peer ---- */

static int on_data(gh_tsession_t *s, const gh_tframe_t *f)
{
    if (f->value > s->rx_conn_avail)
        return UV_EPROTO;
    s->rx_conn_avail -= f->value;
    s->rx_conn_unacked += f->value;
    gh__tstream_t *st = table_find(s, f->stream);
    if (!st)
        return id_seen(s, f->stream) ? 0 : UV_EPROTO;
    if (st->rst_done)
        return 0;
    if (st->rx_fin || f->value > st->rx_avail)
        return UV_EPROTO;
    st->rx_avail -= f->value;
    if (f->value)
        gh__tun_rx_data(st, f->payload, f->value);
    if ((f->flags & GH_TF_FLAG_FIN) && !st->rst_done) {
        st->rx_fin = true;
        if (!st->rx_err)
            st->rx_err = UV_EOF;
        gh__tun_deliver(st);
    }
    return 0;
}

static int on_open(gh_tsession_t *s, const gh_tframe_t *f)
{
    uint32_t id = f->stream;
    if ((id & 1) != (s->is_edge ? 0u : 1u) || id <= s->last_peer_id)
        return UV_EPROTO;
    s->last_peer_id = id;
    if (s->goaway_sent || s->goaway_recv || !s->cbs.on_stream || s->npeer >= TUN_MAX_PEER_STREAMS) {
        gh__tun_ctrl(s, GH_TF_RESET, 0, id, GH_TF_RESET_REFUSED);
        return 0;
    }
    gh__tstream_t *st = gh__tun_stream_new(s, id, (const char *)f->payload, f->value, true);
    if (!st) {
        gh__tun_ctrl(s, GH_TF_RESET, 0, id, GH_TF_RESET_INTERNAL);
        return 0;
    }
    if (s->cbs.on_stream(s, &st->base, st->service, s->data) != 0) {
        if (!st->base.closing) {
            st->refused = true;
            st->base.closing = 1;
            gh__tun_stream_close(st, GH_TF_RESET_REFUSED);
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
    gh__tstream_t *st = table_find(s, f->stream);
    if (!st)
        return id_seen(s, f->stream) ? 0 : UV_EPROTO;
    if (st->tx_win + f->value > GH_TF_MAX_WINDOW)
        return UV_EPROTO;
    st->tx_win += f->value;
    if (gh__tun_ready(st))
        gh__tun_ready_add(st, false);
    return 0;
}

static int on_reset(gh_tsession_t *s, const gh_tframe_t *f)
{
    gh__tstream_t *st = table_find(s, f->stream);
    if (!st)
        return id_seen(s, f->stream) ? 0 : UV_EPROTO;
    if (st->rst_done)
        return 0;
    int err = f->value == GH_TF_RESET_REFUSED ? UV_ECONNREFUSED : UV_ECONNRESET;
    st->rst_done = true;
    gh__tun_ready_remove(st);
    gh__tun_rx_discard(st);
    if (!st->rx_done)
        st->rx_err = err;
    st->tx_err = err;
    if (st->wq)
        gh__tun_work_add(st);
    gh__tun_deliver(st);
    return 0;
}

static void on_ping(gh_tsession_t *s, const gh_tframe_t *f)
{
    if (!(f->flags & GH_TF_FLAG_ACK)) {
        gh__tun_ctrl(s, GH_TF_PING, GH_TF_FLAG_ACK, 0, f->value);
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
        gh__tun_schedule(s);
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
            gh__tun_end(s, rc);
            return;
        }
        off += (size_t)n;
    }
    if (s->dead)
        return;
    memmove(s->in, s->in + off, s->inlen - off);
    s->inlen -= off;
    gh__tun_conn_credit(s);
    gh__tun_pump(s);
    if (s->goaway_sent || s->goaway_recv)
        gh__tun_schedule(s);
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
    for (const gh__tstream_t *st = s->all; st; st = st->next)
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
        gh__tun_end(s, clean ? 0 : (int)nread);
        return;
    }
    s->inlen += (size_t)nread;
    s->last_rx_ms = uv_now(s->loop);
    parse_input(s);
    if (!s->dead && !s->link_paused && s->out_bytes > TUN_LINK_HARD &&
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
    gh__tun_maybe_free(s);
}

/* ---- session life ---- */

static void send_ping(gh_tsession_t *s)
{
    s->ping_seq++;
    s->ping_sent_ns = uv_hrtime();
    s->ping_out = true;
    gh__tun_ctrl(s, GH_TF_PING, 0, 0, s->ping_seq);
}

static void timer_cb(uv_timer_t *t)
{
    gh_tsession_t *s = t->data;
    uint64_t now = uv_now(s->loop);
    if (s->dead)
        return;
    if (s->draining) {
        gh__tun_end(s, 0);     /* the peer did not close after go-away */
        return;
    }
    if (now - s->last_rx_ms >= 3 * s->hb_ms) {
        gh__tun_end(s, UV_ETIMEDOUT);
        return;
    }
    if (now >= s->next_ping_ms) {
        send_ping(s);
        s->next_ping_ms = now + s->hb_ms;
        gh__tun_pump(s);
    }
    uint64_t due = gh__tun_min(s->next_ping_ms, s->last_rx_ms + 3 * s->hb_ms);
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
        gh__tun_end(s, 0);
        return;
    }
    uv_timer_start(&s->timer, timer_cb, s->hb_ms ? 3 * s->hb_ms : TUN_DRAIN_MS, 0);
}

static void idle_cb(uv_idle_t *h)
{
    gh_tsession_t *s = h->data;
    if (s->in_pending && !s->dead) {
        s->in_pending = false;
        parse_input(s);
    }
    if (s->fail_err && !s->dead)
        gh__tun_end(s, s->fail_err);
    while (s->orphans) {
        gh__chunk_t *c = s->orphans;
        s->orphans = c->next;
        gh__tun_chunk_done(c, c->status);
    }
    gh__tstream_t *list = s->work;
    s->work = s->work_tail = NULL;
    while (list) {
        gh__tstream_t *st = list;
        list = st->wnext;
        st->in_work = false;
        gh__tun_stream_work(st);
    }
    if (!s->dead) {
        gh__tun_conn_credit(s);
        gh__tun_pump(s);
        check_finish(s);
    }
    if (!s->work && !s->orphans && !s->in_pending && (!s->fail_err || s->dead))
        uv_idle_stop(&s->idle);
    gh__tun_maybe_free(s);
}

/* Ends the session: closes the link, hands every stream its end, runs
 * on_close. Runs user callbacks, so only from a loop callback or from
 * gh_tsession_close. */
void gh__tun_end(gh_tsession_t *s, int reason)
{
    if (s->dead)
        return;
    if (reason == UV_EPROTO)
        gh__tun_ctrl(s, GH_TF_GOAWAY, 0, 0, GH_TF_GOAWAY_PROTOCOL);  /* best effort */
    gh__tun_flush(s);
    s->dead = true;
    uv_timer_stop(&s->timer);
    gh_stream_close(s->link);
    for (gh__tstream_t *st = s->all, *next; st; st = next) {
        next = st->next;
        if (st->base.closing)
            continue;
        gh__tun_ready_remove(st);
        if (!st->tx_err)
            st->tx_err = UV_ECONNRESET;
        if (!st->rx_err)
            st->rx_err = UV_ECONNRESET;
        gh__tun_cancel_writes(st, UV_ECANCELED);
        if (st->delivering)
            gh__tun_work_add(st);
        else
            gh__tun_deliver(st);
    }
    if (s->cbs.on_close)
        s->cbs.on_close(s, reason, s->data);
    s->cb_done = true;
    gh__tun_maybe_free(s);
}

static void handle_closed(uv_handle_t *h)
{
    gh_tsession_t *s = h->data;
    if (--s->handles > 0)
        return;
    while (s->free_chunks) {
        gh__chunk_t *c = s->free_chunks;
        s->free_chunks = c->next;
        free(c);
    }
    free(s->tab);
    free(s->in);
    free(s);
}

void gh__tun_maybe_free(gh_tsession_t *s)
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
    s->incap = TUN_INBUF_CAP + npending;
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
        gh__tun_fail_later(s, rc);
    send_ping(s);   /* the first round-trip time, for window tuning */
    gh__tun_pump(s);
    if (heartbeat_ms) {
        s->next_ping_ms = s->last_rx_ms + heartbeat_ms;
        uv_timer_start(&s->timer, timer_cb, heartbeat_ms, 0);
    }
    if (s->in_pending)
        gh__tun_schedule(s);
    return s;
}

gh_stream_t *gh_tsession_open(gh_tsession_t *s, const char *service)
{
    size_t len = strlen(service);
    if (!gh_tsession_can_open(s) || !gh_tframe_service_valid(service, len) ||
        s->next_id > GH_TF_MAX_STREAM_ID)
        return NULL;
    uint8_t *p = gh__tun_reserve(s, GH_TF_HEADER_LEN + len);
    if (!p)
        return NULL;
    gh__tstream_t *st = gh__tun_stream_new(s, s->next_id, service, len, false);
    if (!st)
        return NULL;
    s->next_id += 2;
    gh_tframe_header(p, GH_TF_OPEN, 0, st->id, (uint32_t)len);
    memcpy(p + GH_TF_HEADER_LEN, service, len);
    s->cur->len += GH_TF_HEADER_LEN + len;
    gh__tun_pump(s);
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
    gh__tun_ctrl(s, GH_TF_GOAWAY, 0, 0, GH_TF_GOAWAY_NORMAL);
    gh__tun_pump(s);
    gh__tun_schedule(s);
}

void gh_tsession_close(gh_tsession_t *s)
{
    gh__tun_end(s, UV_ECANCELED);
}
