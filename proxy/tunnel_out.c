/* The output side of a tunnel session: frames are written into chunks of a
 * few frames each, and each chunk is one write on the link. Control frames
 * go in at once; DATA is framed by pump(), round-robin over the streams
 * that have data and window, and only while less than TUN_LINK_HIGH bytes are
 * on their way into the link, so a slow link holds back the streams (their
 * write callbacks wait) instead of growing a queue here. A write's callback
 * runs when the chunk holding its last byte has been written. */
#include <stdlib.h>
#include <string.h>
#include "proxy/tunnel-int.h"

/* ---- streams with something to frame ---- */

void gh__tun_ready_remove(gh__tstream_t *st)
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

void gh__tun_ready_add(gh__tstream_t *st, bool front)
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

bool gh__tun_ready(const gh__tstream_t *st)
{
    if (st->rst_done || st->tx_err || st->base.closing)
        return false;
    if (st->wq)
        return st->tx_win > 0 || st->wq->left == 0;
    return st->fin_pending && !st->fin_sent;
}

/* ---- chunks ---- */

static gh__chunk_t *chunk_get(gh_tsession_t *s)
{
    gh__chunk_t *c = s->free_chunks;
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

static void chunk_put(gh_tsession_t *s, gh__chunk_t *c)
{
    if (s->nfree < TUN_FREE_CHUNKS && !s->dead) {
        c->next = s->free_chunks;
        s->free_chunks = c;
        s->nfree++;
    } else {
        free(c);
    }
}

/* A chunk that never reaches the link (nothing in it but completions, or
 * the write failed) is completed from the idle callback. */
static void orphan(gh_tsession_t *s, gh__chunk_t *c, int status)
{
    c->status = status;
    c->len = 0;
    c->next = s->orphans;
    s->orphans = c;
    s->chunks_out++;
    gh__tun_schedule(s);
}

/* Runs the write callbacks of the writes whose last byte was in c. */
void gh__tun_chunk_done(gh__chunk_t *c, int status)
{
    gh_tsession_t *s = c->s;
    gh__wentry_t *w = c->done;
    s->chunks_out--;
    s->out_bytes -= c->len;
    chunk_put(s, c);
    while (w) {
        gh__wentry_t *next = w->next;
        gh__tstream_t *st = w->st;
        gh_write_req_t *req = w->req;
        free(w);
        st->inflight--;
        req->cb(req, status < 0 ? status : 0);
        if (st->base.closing && !st->inflight)
            gh__tun_work_add(st);
        w = next;
    }
}

static void chunk_written(gh_write_req_t *wr, int status)
{
    gh__chunk_t *c = wr->data;
    gh_tsession_t *s = c->s;
    gh__tun_chunk_done(c, status);
    if (status < 0 && !s->dead)
        gh__tun_end(s, status);
    if (!s->dead) {
        if (s->link_paused && s->out_bytes <= TUN_LINK_HIGH && gh_stream_read_start(s->link) == 0)
            s->link_paused = false;
        gh__tun_pump(s);
        if (s->goaway_sent || s->goaway_recv)
            gh__tun_schedule(s);
    }
    gh__tun_maybe_free(s);
}

void gh__tun_flush(gh_tsession_t *s)
{
    gh__chunk_t *c = s->cur;
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
        gh__tun_fail_later(s, rc);
    }
}

/* Room for n more bytes at the end of the current chunk. */
uint8_t *gh__tun_reserve(gh_tsession_t *s, size_t n)
{
    if (s->cur && TUN_CHUNK_CAP - s->cur->len < n)
        gh__tun_flush(s);
    if (!s->cur && !(s->cur = chunk_get(s))) {
        gh__tun_fail_later(s, UV_ENOMEM);
        return NULL;
    }
    return s->cur->data + s->cur->len;
}

/* Queues a frame without payload; gh__tun_pump() or gh__tun_flush() sends it. */
void gh__tun_ctrl(gh_tsession_t *s, uint8_t type, uint8_t flags, uint32_t id, uint32_t value)
{
    if (s->dead || s->draining)
        return;
    uint8_t *p = gh__tun_reserve(s, GH_TF_HEADER_LEN);
    if (!p)
        return;
    gh_tframe_header(p, type, flags, id, value);
    s->cur->len += GH_TF_HEADER_LEN;
}

/* ---- framing ---- */

void gh__tun_fin(gh__tstream_t *st)
{
    gh__tun_ctrl(st->s, GH_TF_DATA, GH_TF_FLAG_FIN, st->id, 0);
    st->fin_sent = true;
}

/* Frames the next piece of st's queue: one DATA frame, a FIN, or the
 * completion of an empty write. Returns false when the connection window
 * (or memory) is what stops it. */
static bool frame_one(gh__tstream_t *st)
{
    gh_tsession_t *s = st->s;
    gh__wentry_t *w = st->wq;
    if (!w) {
        if (st->fin_pending && !st->fin_sent)
            gh__tun_fin(st);
        return true;
    }
    size_t n = (size_t)gh__tun_min(gh__tun_min(w->left, GH_TF_MAX_DATA), gh__tun_min(st->tx_win, s->tx_conn_win));
    if (w->left && !n)
        return s->tx_conn_win > 0;
    uint8_t *p = gh__tun_reserve(s, GH_TF_HEADER_LEN + n);
    if (!p)
        return false;
    for (size_t k = 0; k < n;) {
        const uv_buf_t *b = &w->bufs[w->bi];
        size_t take = (size_t)gh__tun_min(b->len - w->boff, n - k);
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
void gh__tun_pump(gh_tsession_t *s)
{
    while (!s->dead && s->ready && s->out_bytes + (s->cur ? s->cur->len : 0) < TUN_LINK_HIGH) {
        gh__tstream_t *st = s->ready;
        gh__tun_ready_remove(st);
        bool ok = frame_one(st);
        if (gh__tun_ready(st))
            gh__tun_ready_add(st, !ok);
        if (!ok)
            break;
    }
    gh__tun_flush(s);
}
