/* Unit tests for the tunnel: the frame codec (proxy/tunnel_frame.c) and
 * sessions (proxy/tunnel_session.c) talking over real TCP loopback on one
 * libuv loop. The "connector" side serves a few test services:
 *   echo        echoes everything, half-closes after the peer's FIN
 *   late        reads to EOF, then answers "got N" and half-closes
 *   reset       closes (resets) the stream at the first byte read
 *   hold        reads and keeps the stream open
 *   source-N    sends N pattern bytes, then half-closes
 *   bulk-N      sends N zero bytes in 256 kB writes, then half-closes
 * anything else is refused. A delay relay between two sessions gives the
 * window tuning a 50 ms round trip to fill. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "proxy/stream.h"
#include "proxy/tunnel_frame.h"
#include "proxy/tunnel_session.h"
#include "proxy/tunnel-int.h"      /* to watch the output queue in test_flood */
#include "tests/unit/test.h"

static uv_loop_t *loop;
static uv_timer_t tick;     /* keeps UV_RUN_ONCE from blocking for long */
static int live_links;

#define RUN_UNTIL(cond, ms)                                 \
    do {                                                    \
        uv_update_time(loop);                               \
        uint64_t until_ = uv_now(loop) + (ms);              \
        while (!(cond) && uv_now(loop) < until_)            \
            uv_run(loop, UV_RUN_ONCE);                      \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static uint8_t pat(uint32_t seed, uint64_t i)
{
    uint32_t x = (uint32_t)(i >> 2) * 2654435761u ^ seed * 40503u;
    x ^= x >> 15;
    x *= 0x85ebca6bu;
    return (uint8_t)(x >> (8 * (i & 3)));
}

/* ================= frame codec ================= */

static ssize_t enc(uint8_t *out, uint8_t type, uint8_t flags, uint32_t id, uint32_t value,
                   const void *payload)
{
    gh_tframe_t f = {.type = type, .flags = flags, .stream = id, .value = value,
                     .payload = payload};
    return gh_tframe_encode(out, 64 * 1024, &f);
}

static void test_codec(void)
{
    static uint8_t buf[64 * 1024], data[GH_TF_MAX_DATA + 1];
    gh_tframe_t f;
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)i;

    /* every type round-trips */
    struct { uint8_t type, flags; uint32_t id, value; const void *p; } rt[] = {
        {GH_TF_DATA, 0, 1, 5, "hello"},
        {GH_TF_DATA, GH_TF_FLAG_FIN, 0x7fffffff, 0, NULL},
        {GH_TF_DATA, 0, 3, GH_TF_MAX_DATA, data},
        {GH_TF_OPEN, 0, 2, 9, "inference"},
        {GH_TF_WINDOW, 0, 0, GH_TF_MAX_WINDOW, NULL},
        {GH_TF_WINDOW, 0, 7, 1, NULL},
        {GH_TF_RESET, 0, 9, GH_TF_RESET_REFUSED, NULL},
        {GH_TF_RESET, 0, 9, 0xdeadbeef, NULL},
        {GH_TF_PING, 0, 0, 0xfeedface, NULL},
        {GH_TF_PING, GH_TF_FLAG_ACK, 0, 1, NULL},
        {GH_TF_GOAWAY, 0, 0, GH_TF_GOAWAY_PROTOCOL, NULL},
    };
    for (size_t i = 0; i < sizeof rt / sizeof rt[0]; i++) {
        ssize_t n = enc(buf, rt[i].type, rt[i].flags, rt[i].id, rt[i].value, rt[i].p);
        bool has_payload = rt[i].type == GH_TF_DATA || rt[i].type == GH_TF_OPEN;
        CHECK_INT(n, GH_TF_HEADER_LEN + (has_payload ? rt[i].value : 0));
        memset(&f, 0xaa, sizeof f);
        CHECK_INT(gh_tframe_decode(buf, (size_t)n, &f), n);
        CHECK_INT(f.type, rt[i].type);
        CHECK_INT(f.flags, rt[i].flags);
        CHECK_INT(f.stream, rt[i].id);
        CHECK_INT(f.value, rt[i].value);
        if (has_payload && rt[i].value)
            CHECK(f.payload == buf + GH_TF_HEADER_LEN && !memcmp(f.payload, rt[i].p, rt[i].value));
        else
            CHECK(f.payload == NULL);
        /* every truncation asks for more */
        int more = 0;
        for (ssize_t k = 0; k < n; k++)
            more += gh_tframe_decode(buf, (size_t)k, &f) == 0;
        CHECK_INT(more, n);
    }
    /* exact header bytes */
    CHECK_INT(enc(buf, GH_TF_WINDOW, 0, 0x01020304, 0x0a0b0c0d, NULL), 12);
    CHECK(!memcmp(buf, "\x02\x00\x00\x00\x01\x02\x03\x04\x0a\x0b\x0c\x0d", 12));

    /* two frames back to back */
    ssize_t a = enc(buf, GH_TF_OPEN, 0, 1, 4, "echo");
    ssize_t b = enc(buf + a, GH_TF_DATA, GH_TF_FLAG_FIN, 1, 3, "abc");
    CHECK_INT(gh_tframe_decode(buf, (size_t)(a + b), &f), a);
    CHECK_INT(gh_tframe_decode(buf + a, (size_t)b, &f), b);
    CHECK(f.flags == GH_TF_FLAG_FIN && !memcmp(f.payload, "abc", 3));

    /* invalid headers are rejected from the header alone */
#define BAD_HDR(t, fl, id, v)                                              \
    do {                                                                   \
        gh_tframe_header(buf, t, fl, id, v);                               \
        CHECK_INT(gh_tframe_decode(buf, GH_TF_HEADER_LEN, &f), GH_TF_EINVAL); \
    } while (0)
    BAD_HDR(6, 0, 0, 0);                        /* unknown types */
    BAD_HDR(0xff, 0, 1, 0);
    BAD_HDR(GH_TF_DATA, 0, 1, GH_TF_MAX_DATA + 1);  /* oversized */
    BAD_HDR(GH_TF_DATA, 0, 1, 0xffffffff);
    BAD_HDR(GH_TF_DATA, 0x02, 1, 0);            /* undefined flag */
    BAD_HDR(GH_TF_DATA, 0, 0, 0);               /* stream frame on stream 0 */
    BAD_HDR(GH_TF_DATA, 0, 0x80000001u, 0);     /* top bit */
    BAD_HDR(GH_TF_OPEN, 0, 1, 0);               /* empty service */
    BAD_HDR(GH_TF_OPEN, 0, 1, 256);             /* long service */
    BAD_HDR(GH_TF_OPEN, GH_TF_FLAG_FIN, 1, 4);
    BAD_HDR(GH_TF_OPEN, 0, 0, 4);
    BAD_HDR(GH_TF_WINDOW, 0, 1, 0);             /* zero increment */
    BAD_HDR(GH_TF_WINDOW, 0, 1, 0x80000000u);
    BAD_HDR(GH_TF_WINDOW, 1, 0, 5);
    BAD_HDR(GH_TF_RESET, 0, 0, 0);
    BAD_HDR(GH_TF_RESET, 1, 3, 0);
    BAD_HDR(GH_TF_PING, 0, 1, 0);               /* connection frame on a stream */
    BAD_HDR(GH_TF_PING, 0x03, 0, 0);
    BAD_HDR(GH_TF_GOAWAY, 0, 2, 0);
    BAD_HDR(GH_TF_GOAWAY, 1, 0, 0);
    gh_tframe_header(buf, GH_TF_PING, 0, 0, 0);
    buf[2] = 1;                                 /* reserved bytes */
    CHECK_INT(gh_tframe_decode(buf, GH_TF_HEADER_LEN, &f), GH_TF_EINVAL);
    buf[2] = 0;
    buf[3] = 0x80;
    CHECK_INT(gh_tframe_decode(buf, GH_TF_HEADER_LEN, &f), GH_TF_EINVAL);
    /* service names: the header is fine, the payload is not */
    const char *bad_names[] = {"a b", "x/y", "\xc3\xa9x", "a\0b", "a:b"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        gh_tframe_header(buf, GH_TF_OPEN, 0, 1, 3);
        memcpy(buf + GH_TF_HEADER_LEN, bad_names[i], 3);
        CHECK_INT(gh_tframe_decode(buf, GH_TF_HEADER_LEN + 2, &f), 0);
        CHECK_INT(gh_tframe_decode(buf, GH_TF_HEADER_LEN + 3, &f), GH_TF_EINVAL);
    }
    CHECK(gh_tframe_service_valid("comfy-ui_2.v1", 13));
    CHECK(!gh_tframe_service_valid("", 0));
    /* the encoder refuses what the decoder would */
    CHECK_INT(enc(buf, GH_TF_OPEN, 0, 1, 3, "a b"), GH_TF_EINVAL);
    CHECK_INT(enc(buf, GH_TF_DATA, 0, 1, GH_TF_MAX_DATA + 1, data), GH_TF_EINVAL);
    CHECK_INT(enc(buf, 9, 0, 1, 0, NULL), GH_TF_EINVAL);
    gh_tframe_t small = {.type = GH_TF_DATA, .stream = 1, .value = 10, .payload = data};
    CHECK_INT(gh_tframe_encode(buf, 21, &small), GH_TF_EINVAL);
    CHECK_INT(gh_tframe_encode(buf, 22, &small), 22);
    CHECK_STR(gh_tframe_type_name(GH_TF_GOAWAY), "GOAWAY");
    CHECK_STR(gh_tframe_type_name(77), "?");
}

/* ================= plumbing ================= */

static void free_link(gh_stream_t *s)
{
    live_links--;
    free(s);
}

static gh_tcp_stream_t *accepted;
static int connected;

static void on_conn(uv_stream_t *srv, int status)
{
    gh_tcp_stream_t *t = malloc(sizeof *t);
    gh_tcp_stream_init(t, loop);
    CHECK_INT(status, 0);
    CHECK_INT(uv_accept(srv, (uv_stream_t *)&t->tcp), 0);
    uv_tcp_nodelay(&t->tcp, 1);
    accepted = t;
}

static void on_connected(gh_stream_t *s, int status)
{
    (void)s;
    connected = status == 0 ? 1 : -1;
}

/* Two connected TCP streams; each frees itself when closed. */
static void tcp_pair(gh_tcp_stream_t **a, gh_tcp_stream_t **b)
{
    uv_tcp_t srv;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof bound;
    uv_tcp_init(loop, &srv);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    CHECK_INT(uv_tcp_bind(&srv, (const struct sockaddr *)&addr, 0), 0);
    CHECK_INT(uv_listen((uv_stream_t *)&srv, 8, on_conn), 0);
    uv_tcp_getsockname(&srv, (struct sockaddr *)&bound, &len);
    accepted = NULL;
    connected = 0;
    *a = malloc(sizeof **a);
    gh_tcp_stream_init(*a, loop);
    gh_tcp_stream_connect(*a, (const struct sockaddr *)&bound, on_connected);
    RUN_UNTIL(connected && accepted, 5000);
    CHECK(connected == 1 && accepted);
    uv_close((uv_handle_t *)&srv, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    *b = accepted;
    (*a)->base.on_close = (*b)->base.on_close = free_link;
    (*a)->base.data = (*b)->base.data = NULL;
    live_links += 2;
}

typedef struct side {
    gh_tsession_t *s;
    bool closed;
    int reason;
    uint64_t opened_at, closed_at;
    int ended_before_close;     /* its streams that had their end when on_close ran */
} side_t;

typedef struct pair {
    side_t edge, conn;
} pair_t;

/* ================= stream endpoints ================= */

enum ep_mode { EP_CLIENT, EP_ECHO, EP_LATE, EP_RESET, EP_HOLD, EP_SOURCE, EP_BULK, EP_KILLER };

typedef struct ep {
    gh_stream_t *st;
    side_t *side;
    enum ep_mode mode;
    char rbuf[65536];
    /* reading */
    uint64_t rx;
    uint32_t rx_seed;
    bool verify;
    int rx_end, nends, bad;
    bool stall_after_first, stalled;
    int nobufs, nobufs_seen;        /* on_alloc gives no buffer nobufs times */
    uint64_t rx_window_end;
    /* writing: tx_total pattern bytes in pieces of up to max_piece, then FIN */
    uint64_t tx_total, tx_off;
    uint32_t tx_seed;
    size_t max_piece, piece;
    gh_write_req_t wr;
    char *wbuf;
    bool writing, shut;
    int werr;
    /* echo */
    unsigned echo_writes;
    uint64_t echo_bytes;
    bool paused;
    /* end */
    bool closing, closed;
    int ncloses;
    uint64_t done_at;
} ep_t;

#define MAX_EPS 512
static ep_t *eps[MAX_EPS];
static int neps;
static ep_t *last_served;

static void ep_write_next(ep_t *e);

static void ep_closed(gh_stream_t *st)
{
    ep_t *e = st->data;
    e->closed = true;
    e->ncloses++;
}

static void ep_maybe_close(ep_t *e)
{
    if (e->closing)
        return;
    bool failed = (e->rx_end < 0 && e->rx_end != UV_EOF) || e->werr;
    bool tx_done = e->mode == EP_RESET || e->mode == EP_KILLER ||
                   ((e->mode == EP_ECHO || e->mode == EP_LATE) ? e->shut && !e->echo_writes
                                                              : e->shut);
    bool done = e->rx_end == UV_EOF && !e->writing && tx_done && e->mode != EP_HOLD;
    if (failed || done) {
        e->closing = true;
        e->done_at = uv_now(loop);
        gh_stream_close(e->st);
    }
}

static void ep_alloc(gh_stream_t *st, size_t suggested, uv_buf_t *b)
{
    ep_t *e = st->data;
    (void)suggested;
    b->base = e->rbuf;
    b->len = sizeof e->rbuf;
    if (e->nobufs > 0) {
        e->nobufs--;
        b->len = 0;
    }
}

typedef struct ewrite {
    gh_write_req_t wr;
    ep_t *e;
    size_t n;
    char data[];
} ewrite_t;

static void echo_written(gh_write_req_t *r, int status)
{
    ewrite_t *w = (ewrite_t *)r;
    ep_t *e = w->e;
    e->echo_writes--;
    e->echo_bytes -= w->n;
    free(w);
    if (status < 0 && !e->werr)
        e->werr = status;
    if (e->paused && e->echo_bytes < 256 * 1024 && !e->closing) {
        e->paused = false;
        gh_stream_read_start(e->st);
    }
    ep_maybe_close(e);
}

static void echo_write(ep_t *e, const char *p, size_t n)
{
    ewrite_t *w = malloc(sizeof *w + n);
    w->e = e;
    w->n = n;
    memcpy(w->data, p, n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (gh_stream_write(e->st, &w->wr, &b, 1, echo_written) != 0) {
        free(w);
        e->werr = UV_EPIPE;
        return;
    }
    e->echo_writes++;
    e->echo_bytes += n;
    /* relay-style backpressure: stop reading while a lot is unsent */
    if (e->echo_bytes > 1024 * 1024 && !e->paused) {
        e->paused = true;
        gh_stream_read_stop(e->st);
    }
}

static void ep_read(gh_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    ep_t *e = st->data;
    if (n == 0)
        return;
    if (n == UV_ENOBUFS) {
        e->nobufs_seen++;
        return;
    }
    if (n < 0) {
        e->rx_end = (int)n;
        e->nends++;
        gh_tstream_info_t info;
        gh_tsession_stream_info(st, &info);
        e->rx_window_end = info.rx_window;
        if (n == UV_EOF && e->mode == EP_ECHO) {
            gh_stream_shutdown(st);
            e->shut = true;
        } else if (n == UV_EOF && e->mode == EP_LATE) {
            char msg[64];
            int len = snprintf(msg, sizeof msg, "got %llu", (unsigned long long)e->rx);
            echo_write(e, msg, (size_t)len);
            gh_stream_shutdown(st);
            e->shut = true;
        }
        ep_maybe_close(e);
        return;
    }
    if (e->rx_end)
        e->bad++;
    if (e->verify)
        for (ssize_t i = 0; i < n; i++)
            if ((uint8_t)b->base[i] != pat(e->rx_seed, e->rx + (uint64_t)i))
                e->bad++;
    e->rx += (uint64_t)n;
    switch (e->mode) {
    case EP_ECHO:
        echo_write(e, b->base, (size_t)n);
        break;
    case EP_RESET:
        e->closing = true;
        gh_stream_close(st);
        break;
    case EP_KILLER:
        gh_tsession_close(e->side->s);
        break;
    default:
        if (e->stall_after_first && !e->stalled) {
            e->stalled = true;
            gh_stream_read_stop(st);
        }
        break;
    }
}

static void ep_written(gh_write_req_t *r, int status)
{
    ep_t *e = r->data;
    e->writing = false;
    if (status < 0) {
        e->werr = status;
    } else {
        e->tx_off += e->piece;
        ep_write_next(e);
    }
    ep_maybe_close(e);
}

static void ep_write_next(ep_t *e)
{
    if (e->writing || e->closing || e->werr)
        return;
    if (e->tx_off == e->tx_total) {
        if (!e->shut) {
            e->shut = true;
            gh_stream_shutdown(e->st);
        }
        return;
    }
    size_t n = e->max_piece;
    if (e->mode != EP_BULK)
        n = 1 + rnd() % e->max_piece;
    if (n > e->tx_total - e->tx_off)
        n = (size_t)(e->tx_total - e->tx_off);
    if (e->mode != EP_BULK)
        for (size_t i = 0; i < n; i++)
            e->wbuf[i] = (char)pat(e->tx_seed, e->tx_off + i);
    e->piece = n;
    e->writing = true;
    e->wr.data = e;
    uv_buf_t b = uv_buf_init(e->wbuf, (unsigned)n);
    int rc = gh_stream_write(e->st, &e->wr, &b, 1, ep_written);
    if (rc < 0) {
        e->writing = false;
        e->werr = rc;
    }
}

static ep_t *ep_new(gh_stream_t *st, side_t *side, enum ep_mode mode)
{
    ep_t *e = calloc(1, sizeof *e);
    e->st = st;
    e->side = side;
    e->mode = mode;
    e->max_piece = 65536;
    e->wbuf = calloc(1, 256 * 1024);
    st->data = e;
    st->on_alloc = ep_alloc;
    st->on_read = ep_read;
    st->on_close = ep_closed;
    if (neps < MAX_EPS)
        eps[neps++] = e;
    return e;
}

/* Opens SERVICE from side; writes total pattern bytes then FIN; reads and
 * (if verify) checks the echo of the same pattern. */
static ep_t *client(side_t *side, const char *service, uint64_t total, uint32_t seed, bool verify)
{
    gh_stream_t *st = gh_tsession_open(side->s, service);
    CHECK(st != NULL);
    if (!st)
        return NULL;
    ep_t *e = ep_new(st, side, EP_CLIENT);
    e->tx_total = total;
    e->tx_seed = e->rx_seed = seed;
    e->verify = verify;
    gh_stream_read_start(st);
    ep_write_next(e);
    return e;
}

static int on_stream(gh_tsession_t *s, gh_stream_t *st, const char *service, void *data)
{
    side_t *side = data;
    ep_t *e;
    (void)s;
    if (!strcmp(service, "echo"))
        e = ep_new(st, side, EP_ECHO);
    else if (!strcmp(service, "late"))
        e = ep_new(st, side, EP_LATE);
    else if (!strcmp(service, "reset"))
        e = ep_new(st, side, EP_RESET);
    else if (!strcmp(service, "hold"))
        e = ep_new(st, side, EP_HOLD);
    else if (!strncmp(service, "source-", 7) || !strncmp(service, "bulk-", 5)) {
        bool bulk = service[0] == 'b';
        e = ep_new(st, side, bulk ? EP_BULK : EP_SOURCE);
        e->tx_total = strtoull(service + (bulk ? 5 : 7), NULL, 10);
        e->tx_seed = 7;
        if (bulk)
            e->max_piece = 256 * 1024;
    } else {
        return -1;
    }
    last_served = e;
    gh_stream_read_start(st);
    if (e->mode == EP_SOURCE || e->mode == EP_BULK)
        ep_write_next(e);
    return 0;
}

static void side_closed(gh_tsession_t *s, int reason, void *data)
{
    side_t *side = data;
    (void)s;
    side->closed = true;
    side->reason = reason;
    side->closed_at = uv_now(loop);
    for (int i = 0; i < neps; i++)
        if (eps[i]->side == side && eps[i]->rx_end)
            side->ended_before_close++;
}

static const gh_tsession_cbs_t cbs = {.on_stream = on_stream, .on_close = side_closed};

static void side_start(side_t *side, gh_tcp_stream_t *t, bool edge, uint64_t hb)
{
    memset(side, 0, sizeof *side);
    side->opened_at = uv_now(loop);
    side->s = gh_tsession_new(loop, &t->base, NULL, 0, edge, hb, &cbs, side);
    CHECK(side->s != NULL);
}

static void pair_start(pair_t *p, uint64_t hb)
{
    gh_tcp_stream_t *a, *b;
    tcp_pair(&a, &b);
    side_start(&p->edge, a, true, hb);
    side_start(&p->conn, b, false, hb);
}

static bool all_eps_closed(void)
{
    for (int i = 0; i < neps; i++)
        if (!eps[i]->closed)
            return false;
    return true;
}

/* Ends whatever a test left open and checks nothing leaked or ran twice. */
static void teardown(pair_t *p)
{
    if (p && !p->edge.closed)
        gh_tsession_close(p->edge.s);
    if (p && !p->conn.closed)
        gh_tsession_close(p->conn.s);
    RUN_UNTIL(all_eps_closed() && live_links == 0, 500);
    for (int i = 0; i < neps; i++)
        if (!eps[i]->closing) {
            eps[i]->closing = true;
            gh_stream_close(eps[i]->st);
        }
    RUN_UNTIL(all_eps_closed() && live_links == 0, 3000);
    CHECK(all_eps_closed());
    CHECK_INT(live_links, 0);
    for (int i = 0; i < neps; i++) {
        CHECK(eps[i]->ncloses == 1);
        CHECK(eps[i]->nends <= 1);
        free(eps[i]->wbuf);
        free(eps[i]);
    }
    neps = 0;
    last_served = NULL;
    for (int i = 0; i < 5; i++)
        uv_run(loop, UV_RUN_NOWAIT);
}

/* ================= session tests ================= */

static void test_echo(void)
{
    pair_t p;
    pair_start(&p, 0);
    ep_t *c[4];
    c[0] = client(&p.edge, "echo", 0, 1, true);
    c[1] = client(&p.edge, "echo", 1000, 2, true);
    c[2] = client(&p.edge, "echo", 3 * 1024 * 1024, 3, true);  /* many windows' worth */
    c[3] = client(&p.conn, "echo", 50000, 4, true);            /* the other way round */
    CHECK_INT(gh_tsession_nstreams(p.edge.s), 3);
    RUN_UNTIL(c[0]->closed && c[1]->closed && c[2]->closed && c[3]->closed, 10000);
    uint64_t want[4] = {0, 1000, 3 * 1024 * 1024, 50000};
    for (int i = 0; i < 4; i++) {
        CHECK(c[i]->closed);
        CHECK_INT(c[i]->rx, want[i]);
        CHECK_INT(c[i]->rx_end, UV_EOF);
        CHECK_INT(c[i]->bad, 0);
        CHECK_INT(c[i]->werr, 0);
    }
    RUN_UNTIL(all_eps_closed(), 2000);
    CHECK(all_eps_closed());
    CHECK_INT(gh_tsession_nstreams(p.edge.s), 0);
    CHECK_INT(gh_tsession_nstreams(p.conn.s), 0);
    CHECK(!p.edge.closed && !p.conn.closed);
    /* an owner with no buffer to give is asked again on the next turns */
    gh_stream_t *nb = gh_tsession_open(p.edge.s, "source-100000");
    ep_t *e = ep_new(nb, &p.edge, EP_CLIENT);
    e->nobufs = 5;
    e->verify = true;
    e->rx_seed = 7;
    gh_stream_read_start(nb);
    ep_write_next(e);
    RUN_UNTIL(e->closed, 3000);
    CHECK(e->closed);
    CHECK_INT(e->nobufs_seen, 5);
    CHECK_INT(e->rx, 100000);
    CHECK_INT(e->bad, 0);
    CHECK_INT(e->rx_end, UV_EOF);
    RUN_UNTIL(all_eps_closed(), 2000);
    /* stream ids: edge odd, connector even */
    gh_tstream_info_t info;
    gh_stream_t *st = gh_tsession_open(p.edge.s, "hold");
    gh_tsession_stream_info(st, &info);
    CHECK_INT(info.id, 9);
    CHECK_STR(info.service, "hold");
    CHECK_INT(info.rx_window, GH_TF_INITIAL_STREAM_WINDOW);
    gh_stream_close(st);
    teardown(&p);
}

static void test_half_close(void)
{
    pair_t p;
    pair_start(&p, 0);
    ep_t *c = client(&p.edge, "late", 10, 5, false);
    RUN_UNTIL(c->shut && last_served && last_served->rx_end == UV_EOF, 3000);
    CHECK(c->shut);
    /* our side is shut: no more writes, but reading goes on */
    uv_buf_t b = uv_buf_init((char *)"x", 1);
    gh_write_req_t wr;
    CHECK_INT(gh_stream_write(c->st, &wr, &b, 1, NULL), UV_EPIPE);
    RUN_UNTIL(c->closed, 3000);
    CHECK(c->closed);
    CHECK_INT(c->rx_end, UV_EOF);
    CHECK(c->rx == 6 && !memcmp(c->rbuf, "got 10", 6));
    RUN_UNTIL(all_eps_closed(), 2000);
    CHECK(last_served && last_served->closed && last_served->werr == 0);
    teardown(&p);
}

static void test_reset_and_refuse(void)
{
    pair_t p;
    pair_start(&p, 0);
    /* the service resets at its first byte */
    ep_t *r = client(&p.edge, "reset", 1000, 6, false);
    RUN_UNTIL(r->closed, 3000);
    CHECK_INT(r->rx_end, UV_ECONNRESET);
    /* unknown service: refused */
    ep_t *u = client(&p.edge, "nope", 100, 6, false);
    RUN_UNTIL(u->closed, 3000);
    CHECK_INT(u->rx_end, UV_ECONNREFUSED);
    CHECK(gh_tsession_open(p.edge.s, "bad name") == NULL);
    CHECK(gh_tsession_open(p.edge.s, "") == NULL);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK(gh_tsession_open(p.edge.s, longname) == NULL);
    /* we reset a stream whose source is still sending */
    ep_t *s = client(&p.edge, "source-1000000000", 0, 7, true);
    RUN_UNTIL(s->rx > 500000, 3000);
    ep_t *src = last_served;
    s->closing = true;
    gh_stream_close(s->st);
    RUN_UNTIL(src && src->closed, 3000);
    CHECK(src && src->closed);
    CHECK(src && (src->rx_end == UV_ECONNRESET || src->werr == UV_ECONNRESET));
    CHECK_INT(s->bad, 0);
    RUN_UNTIL(gh_tsession_nstreams(p.conn.s) == 0, 2000);
    CHECK_INT(gh_tsession_nstreams(p.edge.s), 0);
    CHECK_INT(gh_tsession_nstreams(p.conn.s), 0);
    CHECK(!p.edge.closed && !p.conn.closed);
    teardown(&p);
}

static int count_closed(ep_t **c, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += c[i]->closed;
    return k;
}

static void test_many(void)
{
    pair_t p;
    pair_start(&p, 0);
    enum { N = 100 };
    ep_t *c[N];
    uint64_t sizes[N], total = 0;
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < N; i++) {
        sizes[i] = rnd() % (700 * 1024);
        if (i % 10 == 0)
            sizes[i] = rnd() % 100;
        total += sizes[i];
        c[i] = client(&p.edge, "echo", sizes[i], 100 + (uint32_t)i, true);
        c[i]->max_piece = 1 + rnd() % 100000;
    }
    RUN_UNTIL(count_closed(c, N) == N, 60000);
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += c[i]->closed && c[i]->rx == sizes[i] && !c[i]->bad && c[i]->rx_end == UV_EOF &&
              !c[i]->werr;
    CHECK_INT(ok, N);
    for (int i = 0; i < N; i++)
        if (!(c[i]->closed && c[i]->rx == sizes[i] && !c[i]->bad && c[i]->rx_end == UV_EOF &&
              !c[i]->werr))
            fprintf(stderr, "  stream %d: closed %d rx %llu/%llu bad %d end %d werr %d tx %llu\n",
                    i, c[i]->closed, (unsigned long long)c[i]->rx,
                    (unsigned long long)sizes[i], c[i]->bad, c[i]->rx_end, c[i]->werr,
                    (unsigned long long)c[i]->tx_off);
    for (int i = 0; i < neps; i++)
        if (eps[i]->side == &p.conn && (eps[i]->werr || eps[i]->rx_end != UV_EOF || eps[i]->bad))
            fprintf(stderr, "  served %d: rx %llu end %d werr %d bad %d shut %d\n", i,
                    (unsigned long long)eps[i]->rx, eps[i]->rx_end, eps[i]->werr, eps[i]->bad,
                    eps[i]->shut);
    printf("  100 streams, %.1f MB echoed in %.2f s\n", (double)total / 1e6,
           (double)(uv_hrtime() - t0) / 1e9);
    RUN_UNTIL(all_eps_closed(), 3000);
    CHECK_INT(gh_tsession_nstreams(p.edge.s), 0);
    CHECK_INT(gh_tsession_nstreams(p.conn.s), 0);
    teardown(&p);
}

static void test_stall(void)
{
    pair_t p;
    pair_start(&p, 0);
    /* A: a download whose reader pauses after its first read */
    ep_t *a = client(&p.edge, "source-1000000000", 0, 7, true);
    a->stall_after_first = true;
    RUN_UNTIL(last_served, 2000);
    ep_t *asrc = last_served;
    gh_tstream_info_t ai, asi;
    RUN_UNTIL((gh_tsession_stream_info(asrc->st, &asi), asi.tx_window == 0), 5000);
    CHECK_INT(asi.tx_window, 0);
    /* B: 1 MB on the same connection while A's window is full */
    ep_t *b = client(&p.edge, "source-1048576", 0, 7, true);
    uint64_t t0 = uv_now(loop);
    RUN_UNTIL(b->closed, 5000);
    CHECK(b->closed);
    CHECK_INT(b->rx, 1048576);
    CHECK_INT(b->rx_end, UV_EOF);
    CHECK_INT(b->bad, 0);
    gh_tsession_stream_info(a->st, &ai);
    gh_tsession_stream_info(asrc->st, &asi);
    printf("  stalled stream holds %llu bytes (window %llu); 1 MB beside it in %llu ms\n",
           (unsigned long long)ai.rx_buffered, (unsigned long long)ai.rx_window,
           (unsigned long long)(uv_now(loop) - t0));
    CHECK(a->stalled && !a->closed);
    CHECK_INT(asi.tx_window, 0);                /* A is still blocked ... */
    CHECK_INT(ai.rx_buffered + a->rx, GH_TF_INITIAL_STREAM_WINDOW); /* ... by its own window */
    CHECK(asrc->tx_off < 2 * GH_TF_INITIAL_STREAM_WINDOW);
    /* resuming A releases it */
    uint64_t before = a->rx;
    gh_stream_read_start(a->st);
    RUN_UNTIL(a->rx > before + 4 * 1024 * 1024, 5000);
    CHECK(a->rx > before + 4 * 1024 * 1024);
    CHECK_INT(a->bad, 0);
    teardown(&p);
}

static void test_goaway(void)
{
    pair_t p;
    pair_start(&p, 0);
    gh_stream_t *cst = gh_tsession_open(p.edge.s, "hold");
    ep_t *c = ep_new(cst, &p.edge, EP_CLIENT);
    gh_stream_read_start(cst);
    c->shut = true;                      /* we shut down by hand below */
    RUN_UNTIL(last_served, 2000);
    ep_t *srv = last_served;
    gh_tsession_goaway(p.edge.s);
    CHECK(gh_tsession_open(p.edge.s, "echo") == NULL);
    CHECK(!gh_tsession_can_open(p.edge.s));
    RUN_UNTIL(!gh_tsession_can_open(p.conn.s), 2000);
    CHECK(!gh_tsession_can_open(p.conn.s));
    CHECK(gh_tsession_open(p.conn.s, "echo") == NULL);
    /* the stream that was open carries on */
    RUN_UNTIL(false, 100);
    CHECK(!p.edge.closed && !p.conn.closed);
    uv_buf_t b = uv_buf_init((char *)"bye", 3);
    c->wr.data = c;
    c->writing = true;
    c->piece = 0;
    CHECK_INT(gh_stream_write(c->st, &c->wr, &b, 1, ep_written), 0);
    gh_stream_shutdown(c->st);
    RUN_UNTIL(srv->rx_end == UV_EOF, 2000);
    CHECK_INT(srv->rx, 3);
    gh_stream_shutdown(srv->st);
    srv->closing = true;
    gh_stream_close(srv->st);
    RUN_UNTIL(c->closed, 2000);
    CHECK_INT(c->rx_end, UV_EOF);
    RUN_UNTIL(p.edge.closed && p.conn.closed, 3000);
    CHECK(p.edge.closed && p.conn.closed);
    CHECK_INT(p.edge.reason, 0);
    CHECK_INT(p.conn.reason, 0);
    teardown(&p);
}

static void test_session_close(void)
{
    pair_t p;
    pair_start(&p, 0);
    ep_t *c1 = client(&p.edge, "hold", 0, 1, false);
    ep_t *c2 = client(&p.edge, "source-1000000000", 0, 7, true);
    c1->shut = c2->shut = true;
    RUN_UNTIL(c2->rx > 100000 && gh_tsession_nstreams(p.conn.s) == 2, 3000);
    gh_tsession_close(p.edge.s);
    /* synchronous: reading streams got their end before on_close */
    CHECK(p.edge.closed);
    CHECK_INT(p.edge.reason, UV_ECANCELED);
    CHECK_INT(p.edge.ended_before_close, 2);
    CHECK_INT(c1->rx_end, UV_ECONNRESET);
    CHECK_INT(c2->rx_end, UV_ECONNRESET);
    CHECK(gh_tsession_open(p.edge.s, "echo") == NULL);
    /* the peer sees the link go */
    RUN_UNTIL(p.conn.closed, 3000);
    CHECK(p.conn.closed);
    /* EOF, or a write or read error if it was sending when the link went */
    CHECK(p.conn.reason == UV_EOF || p.conn.reason == UV_ECONNRESET || p.conn.reason == UV_EPIPE);
    if (p.conn.reason != UV_EOF)
        printf("  peer of a closed session ended with %s\n", uv_err_name(p.conn.reason));
    CHECK_INT(p.conn.ended_before_close, 2);
    teardown(&p);

    /* a stream's on_read ends the session from inside the parse loop */
    pair_start(&p, 0);
    gh_stream_t *st = gh_tsession_open(p.edge.s, "source-100000");
    ep_t *k = ep_new(st, &p.edge, EP_KILLER);
    gh_stream_read_start(st);
    RUN_UNTIL(p.edge.closed, 3000);
    CHECK(p.edge.closed);
    CHECK_INT(p.edge.reason, UV_ECANCELED);
    RUN_UNTIL(k->closed && p.conn.closed, 3000);
    CHECK(k->closed);
    CHECK_INT(k->rx_end, UV_ECONNRESET);
    teardown(&p);
}

static void test_heartbeat(void)
{
    /* a live pair stays up on heartbeats alone and learns the RTT */
    pair_t p;
    pair_start(&p, 50);
    RUN_UNTIL(false, 400);
    CHECK(!p.edge.closed && !p.conn.closed);
    CHECK(gh_tsession_rtt_us(p.edge.s) > 0);
    CHECK(gh_tsession_rtt_us(p.conn.s) > 0);
    teardown(&p);

    /* a peer that says nothing: failed within 3 intervals */
    gh_tcp_stream_t *a, *b;
    tcp_pair(&a, &b);
    side_t s;
    side_start(&s, a, true, 100);
    RUN_UNTIL(s.closed, 2000);
    CHECK(s.closed);
    CHECK_INT(s.reason, UV_ETIMEDOUT);
    uint64_t took = s.closed_at - s.opened_at;
    printf("  silent peer detected after %llu ms (interval 100 ms)\n", (unsigned long long)took);
    CHECK(took >= 290 && took <= 360);   /* 3 intervals, plus timer lateness */
    gh_stream_close(&b->base);
    teardown(NULL);

    /* the connector stops reading its link (as if its loop were stuck on
     * that socket): its pings still reach the edge, but nothing reaches it */
    tcp_pair(&a, &b);
    side_start(&p.edge, a, true, 100);
    side_start(&p.conn, b, false, 100);
    RUN_UNTIL(false, 150);
    CHECK(!p.conn.closed);
    gh_stream_read_stop(&b->base);
    uint64_t stopped = uv_now(loop);
    RUN_UNTIL(p.conn.closed, 2000);
    CHECK_INT(p.conn.reason, UV_ETIMEDOUT);
    took = p.conn.closed_at - stopped;
    printf("  stalled link detected %llu ms after it stopped\n", (unsigned long long)took);
    CHECK(took >= 190 && took <= 360);
    RUN_UNTIL(p.edge.closed, 1000);
    CHECK(p.edge.closed);
    teardown(&p);
}

/* ================= raw peer: hand-made frames ================= */

typedef struct raw {
    gh_tcp_stream_t *t;
    uint8_t buf[1 << 16];
    size_t len;
    bool eof;
    gh_tframe_t got[64];
    int ngot;
    uint64_t acks;
} raw_t;

static void raw_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *b)
{
    raw_t *r = s->data;
    (void)suggested;
    if (r->len == sizeof r->buf)
        r->len = 0;
    b->base = (char *)r->buf + r->len;
    b->len = sizeof r->buf - r->len;
}

static void raw_read(gh_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    raw_t *r = s->data;
    (void)b;
    if (n < 0) {
        r->eof = true;
        return;
    }
    r->len += (size_t)n;
    size_t off = 0;
    gh_tframe_t f;
    ssize_t k;
    while ((k = gh_tframe_decode(r->buf + off, r->len - off, &f)) > 0) {
        if (f.type == GH_TF_PING && (f.flags & GH_TF_FLAG_ACK))
            r->acks++;
        if (r->ngot < 64) {
            f.payload = NULL;
            r->got[r->ngot++] = f;
        }
        off += (size_t)k;
    }
    memmove(r->buf, r->buf + off, r->len - off);
    r->len -= off;
}

typedef struct rawwrite {
    gh_write_req_t wr;
    size_t n;
    uint8_t data[];
} rawwrite_t;

static void raw_written(gh_write_req_t *w, int status)
{
    (void)status;
    free(w);
}

static void raw_send(raw_t *r, const void *p, size_t n)
{
    rawwrite_t *w = malloc(sizeof *w + n);
    memcpy(w->data, p, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    if (gh_stream_write(&r->t->base, &w->wr, &b, 1, raw_written) != 0)
        free(w);
}

static void raw_frame(raw_t *r, uint8_t type, uint8_t flags, uint32_t id, uint32_t value,
                      const void *payload)
{
    static uint8_t buf[64 * 1024];
    ssize_t n = enc(buf, type, flags, id, value, payload);
    if (n < 0) {                 /* deliberately invalid: header only */
        gh_tframe_header(buf, type, flags, id, value);
        n = GH_TF_HEADER_LEN;
    }
    raw_send(r, buf, (size_t)n);
}

/* A session (edge unless connector) whose peer is r, started with pending. */
static void raw_start(raw_t *r, side_t *s, bool edge, const void *pending, size_t npending)
{
    gh_tcp_stream_t *a;
    tcp_pair(&a, &r->t);
    r->len = 0;
    r->ngot = 0;
    r->acks = 0;
    r->eof = false;
    r->t->base.data = r;
    r->t->base.on_alloc = raw_alloc;
    r->t->base.on_read = raw_read;
    gh_stream_read_start(&r->t->base);
    memset(s, 0, sizeof *s);
    s->opened_at = uv_now(loop);
    s->s = gh_tsession_new(loop, &a->base, pending, npending, edge, 0, &cbs, s);
    CHECK(s->s != NULL);
}

static bool raw_has(const raw_t *r, uint8_t type, uint8_t flags, uint32_t id, uint32_t value)
{
    for (int i = 0; i < r->ngot; i++)
        if (r->got[i].type == type && r->got[i].flags == flags && r->got[i].stream == id &&
            r->got[i].value == value)
            return true;
    return false;
}

static void raw_end(raw_t *r, side_t *s)
{
    if (!s->closed)
        gh_tsession_close(s->s);
    gh_stream_close(&r->t->base);
    teardown(NULL);
}

static void test_raw(void)
{
    static raw_t r;
    side_t s;
    static uint8_t big[GH_TF_MAX_DATA];

    /* pending bytes (read past the 101) are parsed first */
    uint8_t pend[2 * GH_TF_HEADER_LEN];
    gh_tframe_header(pend, GH_TF_PING, 0, 0, 77);
    gh_tframe_header(pend + GH_TF_HEADER_LEN, GH_TF_PING, 0, 0, 78);
    raw_start(&r, &s, true, pend, sizeof pend);
    RUN_UNTIL(raw_has(&r, GH_TF_PING, GH_TF_FLAG_ACK, 0, 78), 2000);
    CHECK(raw_has(&r, GH_TF_PING, 0, 0, 1));                 /* its own first ping */
    CHECK(raw_has(&r, GH_TF_PING, GH_TF_FLAG_ACK, 0, 77));
    CHECK(raw_has(&r, GH_TF_PING, GH_TF_FLAG_ACK, 0, 78));
    /* the peer opens a stream (connector ids are even) and sends DATA+FIN */
    raw_frame(&r, GH_TF_OPEN, 0, 2, 4, "hold");
    raw_frame(&r, GH_TF_DATA, GH_TF_FLAG_FIN, 2, 5, "hello");
    raw_frame(&r, GH_TF_OPEN, 0, 4, 4, "nope");
    RUN_UNTIL(last_served && last_served->rx_end == UV_EOF &&
              raw_has(&r, GH_TF_RESET, 0, 4, GH_TF_RESET_REFUSED), 2000);
    CHECK(last_served && last_served->rx == 5 && last_served->rx_end == UV_EOF);
    CHECK(raw_has(&r, GH_TF_RESET, 0, 4, GH_TF_RESET_REFUSED));
    /* a closed stream's late frames are dropped, not errors */
    gh_stream_close(last_served->st);
    last_served->closing = true;
    RUN_UNTIL(raw_has(&r, GH_TF_RESET, 0, 2, GH_TF_RESET_CANCEL), 2000);
    raw_frame(&r, GH_TF_WINDOW, 0, 2, 100, NULL);
    raw_frame(&r, GH_TF_RESET, 0, 4, 0, NULL);
    RUN_UNTIL(false, 50);
    CHECK(!s.closed);
    /* an id reused: protocol error, GOAWAY(PROTOCOL) */
    raw_frame(&r, GH_TF_OPEN, 0, 2, 4, "hold");
    RUN_UNTIL(s.closed && r.eof, 2000);
    CHECK_INT(s.reason, UV_EPROTO);
    CHECK(raw_has(&r, GH_TF_GOAWAY, 0, 0, GH_TF_GOAWAY_PROTOCOL));
    raw_end(&r, &s);

    /* an invalid frame */
    raw_start(&r, &s, true, NULL, 0);
    raw_frame(&r, 9, 0, 0, 0, NULL);
    RUN_UNTIL(s.closed, 2000);
    CHECK_INT(s.reason, UV_EPROTO);
    raw_end(&r, &s);

    /* DATA for a stream never opened */
    raw_start(&r, &s, true, NULL, 0);
    raw_frame(&r, GH_TF_DATA, 0, 6, 1, "x");
    RUN_UNTIL(s.closed, 2000);
    CHECK_INT(s.reason, UV_EPROTO);
    raw_end(&r, &s);

    /* a sender that overruns the stream window */
    raw_start(&r, &s, true, NULL, 0);
    raw_frame(&r, GH_TF_OPEN, 0, 2, 4, "hold");
    RUN_UNTIL(last_served, 2000);
    gh_stream_read_stop(last_served->st);   /* nothing consumed: no window back */
    for (unsigned i = 0; i < GH_TF_INITIAL_STREAM_WINDOW / GH_TF_MAX_DATA; i++)
        raw_frame(&r, GH_TF_DATA, 0, 2, GH_TF_MAX_DATA, big);
    RUN_UNTIL(false, 100);
    CHECK(!s.closed);
    gh_tstream_info_t info;
    gh_tsession_stream_info(last_served->st, &info);
    CHECK_INT(info.rx_buffered, GH_TF_INITIAL_STREAM_WINDOW);
    raw_frame(&r, GH_TF_DATA, 0, 2, 1, big);
    RUN_UNTIL(s.closed, 2000);
    CHECK_INT(s.reason, UV_EPROTO);
    raw_end(&r, &s);

    /* the link just ends */
    raw_start(&r, &s, false, NULL, 0);
    gh_stream_close(&r.t->base);
    RUN_UNTIL(s.closed, 2000);
    CHECK(s.reason == UV_EOF || s.reason == UV_ECONNRESET);
    teardown(NULL);
}

static bool watch_output(gh_tsession_t *s, bool *paused, size_t *peak)
{
    *paused |= s->link_paused;
    if (s->out_bytes > *peak)
        *peak = s->out_bytes;
    return *paused;
}

/* A peer that sends PINGs and never reads: the answers pile up until the
 * session stops reading the link, and all get through once it reads. */
static void test_flood(void)
{
    static raw_t r;
    static uint8_t pings[10000 * GH_TF_HEADER_LEN];
    enum { BATCH = 10000, NBATCH = 200 };
    side_t s;
    raw_start(&r, &s, true, NULL, 0);
    gh_stream_read_stop(&r.t->base);
    for (int i = 0; i < BATCH; i++)
        gh_tframe_header(pings + i * GH_TF_HEADER_LEN, GH_TF_PING, 0, 0, (uint32_t)i);
    for (int i = 0; i < NBATCH; i++)
        raw_send(&r, pings, sizeof pings);
    bool paused = false;
    size_t peak = 0;
    RUN_UNTIL(watch_output(s.s, &paused, &peak), 10000);
    CHECK(paused);
    CHECK(peak <= TUN_LINK_HARD + TUN_INBUF_CAP + TUN_CHUNK_CAP);
    printf("  ping flood: reading paused with %zu kB of answers queued\n", peak / 1024);
    gh_stream_read_start(&r.t->base);
    RUN_UNTIL(r.acks == (uint64_t)BATCH * NBATCH, 20000);
    CHECK_INT(r.acks, (uint64_t)BATCH * NBATCH);
    CHECK(!s.closed && !s.s->link_paused);
    raw_end(&r, &s);
}

/* ================= window tuning over a 50 ms round trip ================= */

#define DELAY_MS 25

typedef struct dchunk {
    gh_write_req_t wr;
    struct dchunk *next;
    uint64_t due;
    size_t len;
    char data[65536];
} dchunk_t;

typedef struct dir {
    gh_stream_t *from, *to;
    dchunk_t *head, *tail, *spare;
    uv_timer_t timer;
    bool eof;
} dir_t;

static void d_written(gh_write_req_t *w, int status)
{
    (void)status;
    free(w);
}

static void d_timer(uv_timer_t *t)
{
    dir_t *d = t->data;
    uint64_t now = uv_now(loop);
    while (d->head && d->head->due <= now) {
        dchunk_t *c = d->head;
        d->head = c->next;
        if (!d->head)
            d->tail = NULL;
        uv_buf_t b = uv_buf_init(c->data, (unsigned)c->len);
        if (gh_stream_write(d->to, &c->wr, &b, 1, d_written) != 0)
            free(c);
    }
    if (d->head)
        uv_timer_start(&d->timer, d_timer, d->head->due - now, 0);
}

static void d_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *b)
{
    dir_t *d = s->data;
    (void)suggested;
    if (!d->spare)
        d->spare = malloc(sizeof *d->spare);
    b->base = d->spare->data;
    b->len = sizeof d->spare->data;
}

static void d_read(gh_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    dir_t *d = s->data;
    (void)b;
    if (n < 0) {
        d->eof = true;
        return;
    }
    if (n == 0)
        return;
    dchunk_t *c = d->spare;
    d->spare = NULL;
    c->len = (size_t)n;
    c->due = uv_now(loop) + DELAY_MS;
    c->next = NULL;
    if (d->tail)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    if (!uv_is_active((uv_handle_t *)&d->timer))
        uv_timer_start(&d->timer, d_timer, DELAY_MS, 0);
}

static void test_bdp(void)
{
    gh_tcp_stream_t *ea, *r1, *r2, *cb;
    tcp_pair(&ea, &r1);
    tcp_pair(&r2, &cb);
    static dir_t up, down;
    memset(&up, 0, sizeof up);
    memset(&down, 0, sizeof down);
    dir_t *dirs[2] = {&up, &down};
    up.from = &r1->base;
    up.to = &r2->base;
    down.from = &r2->base;
    down.to = &r1->base;
    for (int i = 0; i < 2; i++) {
        uv_timer_init(loop, &dirs[i]->timer);
        dirs[i]->timer.data = dirs[i];
        dirs[i]->from->data = dirs[i];
        dirs[i]->from->on_alloc = d_alloc;
        dirs[i]->from->on_read = d_read;
        gh_stream_read_start(dirs[i]->from);
    }
    pair_t p;
    side_start(&p.edge, ea, true, 1000);
    side_start(&p.conn, cb, false, 1000);
    RUN_UNTIL(gh_tsession_rtt_us(p.edge.s) > 0, 2000);
    uint64_t rtt = gh_tsession_rtt_us(p.edge.s);
    CHECK(rtt >= 2 * (DELAY_MS - 2) * 1000);

    /* Sender, relay and receiver share this one thread, so a busy machine
     * can slow a transfer; the best of three (each on a new stream, from
     * the initial window) is what the flow control allows. */
    const uint64_t total = 96ull * 1024 * 1024;
    char name[32];
    snprintf(name, sizeof name, "bulk-%llu", (unsigned long long)total);
    double best = 0;
    for (int attempt = 0; attempt < 3 && best < 50; attempt++) {
        ep_t *c = client(&p.edge, name, 0, 7, false);
        uint64_t t0 = uv_hrtime(), t_half = 0;
        RUN_UNTIL((c->rx >= total / 2 && !t_half ? (t_half = uv_hrtime()) : 0, c->closed), 30000);
        uint64_t t1 = uv_hrtime();
        CHECK(c->closed);
        CHECK_INT(c->rx, total);
        double all = (double)total / 1e6 / ((double)(t1 - t0) / 1e9);
        double second = t_half ? (double)(total / 2) / 1e6 / ((double)(t1 - t_half) / 1e9) : 0;
        printf("  one stream over a %.1f ms RTT: %.0f MB/s overall, %.0f MB/s in its second "
               "half, window grew to %llu kB\n",
               (double)rtt / 1000, all, second, (unsigned long long)c->rx_window_end / 1024);
        CHECK(c->rx_window_end >= 4u * 1024 * 1024);
        CHECK(c->rx_window_end <= 16u * 1024 * 1024);
        if (second > best)
            best = second;
    }
    CHECK(best >= 50);
    gh_tsession_close(p.edge.s);
    gh_tsession_close(p.conn.s);
    gh_stream_close(&r1->base);
    gh_stream_close(&r2->base);
    RUN_UNTIL(live_links == 0, 3000);
    for (int i = 0; i < 2; i++) {
        while (dirs[i]->head) {
            dchunk_t *x = dirs[i]->head;
            dirs[i]->head = x->next;
            free(x);
        }
        free(dirs[i]->spare);
        uv_close((uv_handle_t *)&dirs[i]->timer, NULL);
    }
    teardown(NULL);
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, tick_cb, 5, 5);
    test_codec();
    test_echo();
    test_half_close();
    test_reset_and_refuse();
    test_many();
    test_stall();
    test_goaway();
    test_session_close();
    test_heartbeat();
    test_raw();
    test_flood();
    test_bdp();
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    gh_tcp_stream_loop_done(loop);
    CHECK_INT(uv_loop_close(loop), 0);
    TEST_MAIN_END();
}
