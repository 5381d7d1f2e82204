/* Internals shared by the tunnel session files: proxy/tunnel_session.c
 * (the session, its link and the frames it receives), proxy/tunnel_out.c
 * (framing and the output queue) and proxy/tunnel_stream.c (the stream
 * carrier and what streams receive). Not for use elsewhere; unit tests may
 * include it. */
#ifndef GH_TUNNEL_INT_H
#define GH_TUNNEL_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "proxy/tunnel_frame.h"
#include "proxy/tunnel_session.h"

/* Receiving. The window of a stream starts at GH_TF_INITIAL_STREAM_WINDOW
 * and doubles when a window's worth is read within about two round trips
 * (the peer was waiting on us, not the reader on the peer), up to
 * TUN_MAX_STREAM_WINDOW and while all windows together stay under TUN_RX_BUDGET. */
#define TUN_MAX_STREAM_WINDOW (16u * 1024 * 1024)
#define TUN_RX_BUDGET ((uint64_t)64 * 1024 * 1024)
#define TUN_CONN_UPDATE_MIN (GH_TF_INITIAL_CONN_WINDOW / 8)
#define TUN_MAX_PEER_STREAMS 4096
#define TUN_RX_BLOCK 16384
#define TUN_READ_SUGGEST 65536
#define TUN_INBUF_CAP (64u * 1024)

/* Sending. */
#define TUN_LINK_HIGH (256u * 1024)       /* no more DATA framed while this much is in flight */
#define TUN_LINK_HARD (4u * 1024 * 1024)  /* stop reading the link while output piles up this high */
#define TUN_CHUNK_CAP (4 * GH_TF_MAX_FRAME + 1024)
#define TUN_FREE_CHUNKS 4
#define TUN_DRAIN_MS 10000

typedef struct gh__tstream gh__tstream_t;

typedef struct gh__rx_block {
    struct gh__rx_block *next;
    size_t off, len, cap;
    uint8_t data[];
} gh__rx_block_t;

/* One gh_stream_write: its buffers are read (not copied) until framed. */
typedef struct gh__wentry {
    struct gh__wentry *next;
    gh__tstream_t *st;
    gh_write_req_t *req;
    size_t left;
    unsigned nbufs, bi;
    size_t boff;
    uv_buf_t bufs[];
} gh__wentry_t;

/* Frames on their way into the link, and the writes they complete. */
typedef struct gh__chunk {
    gh_write_req_t wr;
    gh_tsession_t *s;
    struct gh__chunk *next;
    gh__wentry_t *done, **done_tail;
    int status;
    size_t len;
    uint8_t data[TUN_CHUNK_CAP];
} gh__chunk_t;

struct gh__tstream {
    gh_stream_t base;           /* first: a gh__tstream_t * is a gh_stream_t * */
    gh_tsession_t *s;
    uint32_t id;
    gh__tstream_t *hnext;           /* table chain */
    gh__tstream_t *prev, *next;     /* s->all: every stream not yet freed */
    gh__tstream_t *rprev, *rnext;   /* s->ready: has something to frame */
    gh__tstream_t *wnext;           /* s->work: deferred delivery or finalisation */
    bool in_table, in_ready, in_work, peer_opened, refused;
    /* receiving */
    gh__rx_block_t *rxq, *rxq_tail;
    uint64_t rx_buffered;       /* in rxq */
    uint64_t rx_win;            /* window size: rx_avail + rx_buffered + rx_consumed */
    uint64_t rx_avail;          /* what the peer may still send */
    uint64_t rx_consumed;       /* read by the owner, not yet credited */
    uint64_t rx_epoch_ns;       /* when the last credit was sent */
    int rx_err;                 /* UV_EOF or an error, read after rxq */
    bool rx_fin, rx_done, reading;
    bool delivering;            /* inside the owner's on_alloc/on_read */
    /* sending */
    gh__wentry_t *wq, **wq_tail;
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
    gh__tstream_t **tab;
    size_t tabmask;
    unsigned ntab, npeer;
    gh__tstream_t *all;
    gh__tstream_t *ready, *ready_tail;
    gh__tstream_t *work, *work_tail;
    uint32_t next_id, last_peer_id;
    /* output */
    gh__chunk_t *cur;               /* being filled */
    gh__chunk_t *free_chunks, *orphans;
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

static inline uint64_t gh__tun_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* tunnel_session.c */
void gh__tun_schedule(gh_tsession_t *s);
void gh__tun_fail_later(gh_tsession_t *s, int err);
void gh__tun_work_add(gh__tstream_t *st);
void gh__tun_table_add(gh_tsession_t *s, gh__tstream_t *st);
void gh__tun_table_remove(gh__tstream_t *st);
void gh__tun_end(gh_tsession_t *s, int reason);
void gh__tun_maybe_free(gh_tsession_t *s);

/* tunnel_out.c */
void gh__tun_ready_add(gh__tstream_t *st, bool front);
void gh__tun_ready_remove(gh__tstream_t *st);
bool gh__tun_ready(const gh__tstream_t *st);
uint8_t *gh__tun_reserve(gh_tsession_t *s, size_t n);
void gh__tun_ctrl(gh_tsession_t *s, uint8_t type, uint8_t flags, uint32_t id, uint32_t value);
void gh__tun_fin(gh__tstream_t *st);
void gh__tun_flush(gh_tsession_t *s);
void gh__tun_pump(gh_tsession_t *s);
void gh__tun_chunk_done(gh__chunk_t *c, int status);

/* tunnel_stream.c */
gh__tstream_t *gh__tun_stream_new(gh_tsession_t *s, uint32_t id, const char *service, size_t len,
                              bool peer);
void gh__tun_stream_close(gh__tstream_t *st, uint32_t code);
void gh__tun_stream_work(gh__tstream_t *st);
void gh__tun_rx_data(gh__tstream_t *st, const uint8_t *p, size_t n);
void gh__tun_rx_discard(gh__tstream_t *st);
void gh__tun_deliver(gh__tstream_t *st);
void gh__tun_cancel_writes(gh__tstream_t *st, int err);
void gh__tun_conn_credit(gh_tsession_t *s);

#endif
