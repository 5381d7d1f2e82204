/* libFuzzer target for the tunnel frame decoder (proxy/tunnel_frame.c).
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -I. \
 *     proxy/tunnel_frame.c tests/fuzz/fuzz_tunnel_frame.c -o /tmp/fuzz_tunnel_frame
 *   /tmp/fuzz_tunnel_frame -max_total_time=60
 *
 * The input is decoded as a sequence of frames. Every frame the decoder
 * accepts must obey the rules of docs/tunnel-protocol.md, must encode back
 * to exactly the same bytes, and every proper prefix of it must decode as
 * "need more". Any broken invariant aborts.
 *
 * With -DGH_FUZZ_SESSION (and proxy/tunnel_session.c, tunnel_out.c,
 * tunnel_stream.c, -luv) the input instead drives a whole session through
 * an in-memory link, with stream owners that stop reading, write, close
 * and end the session from inside their callbacks; ASan then checks the
 * lifetimes and that nothing leaks. See the second half of this file. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "proxy/tunnel_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                               \
    do {                                                        \
        fprintf(stderr, "fuzz_tunnel_frame: " __VA_ARGS__);     \
        fputc('\n', stderr);                                    \
        abort();                                                \
    } while (0)

static void check_frame(const uint8_t *p, size_t avail, const gh_tframe_t *f, ssize_t n)
{
    static uint8_t out[GH_TF_MAX_FRAME];
    if (n < GH_TF_HEADER_LEN || (size_t)n > avail || n > GH_TF_MAX_FRAME)
        FAIL("bad length %zd of %zu", n, avail);
    if (f->type > GH_TF_GOAWAY)
        FAIL("unknown type %u accepted", f->type);
    if (p[2] || p[3])
        FAIL("reserved bytes accepted");
    if (f->stream > GH_TF_MAX_STREAM_ID)
        FAIL("top bit of the stream id accepted");
    bool conn_frame = f->type == GH_TF_PING || f->type == GH_TF_GOAWAY;
    bool stream_frame = f->type == GH_TF_DATA || f->type == GH_TF_OPEN || f->type == GH_TF_RESET;
    if ((conn_frame && f->stream) || (stream_frame && !f->stream))
        FAIL("stream id %u on a %s frame", f->stream, gh_tframe_type_name(f->type));
    uint8_t allowed = f->type == GH_TF_DATA ? GH_TF_FLAG_FIN
                      : f->type == GH_TF_PING ? GH_TF_FLAG_ACK : 0;
    if (f->flags & ~allowed)
        FAIL("flags %#x accepted on %s", f->flags, gh_tframe_type_name(f->type));
    bool has_payload = f->type == GH_TF_DATA || f->type == GH_TF_OPEN;
    size_t plen = has_payload ? f->value : 0;
    if ((size_t)n != GH_TF_HEADER_LEN + plen)
        FAIL("length %zd for a payload of %zu", n, plen);
    if (plen ? f->payload != p + GH_TF_HEADER_LEN : f->payload != NULL)
        FAIL("payload pointer");
    if (f->type == GH_TF_DATA && f->value > GH_TF_MAX_DATA)
        FAIL("oversized DATA accepted");
    if (f->type == GH_TF_OPEN && !gh_tframe_service_valid((const char *)f->payload, plen))
        FAIL("bad service name accepted");
    if (f->type == GH_TF_WINDOW && (f->value == 0 || f->value > GH_TF_MAX_WINDOW))
        FAIL("bad WINDOW increment accepted");

    ssize_t m = gh_tframe_encode(out, sizeof out, f);
    if (m != n || memcmp(out, p, (size_t)n) != 0)
        FAIL("%s does not encode back to the same bytes", gh_tframe_type_name(f->type));

    gh_tframe_t g;
    size_t cuts[] = {0, 1, GH_TF_HEADER_LEN - 1, GH_TF_HEADER_LEN, (size_t)n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
        if (cuts[i] < (size_t)n && gh_tframe_decode(p, cuts[i], &g) != 0)
            FAIL("a %zu-byte prefix of a %zd-byte frame did not ask for more", cuts[i], n);
}

static void fuzz_decoder(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        gh_tframe_t f;
        ssize_t n = gh_tframe_decode(data + off, size - off, &f);
        if (n == 0) {
            if (size - off >= GH_TF_MAX_FRAME)
                FAIL("asked for more with %zu bytes available", size - off);
            return;
        }
        if (n < 0) {
            if (n != GH_TF_EINVAL)
                FAIL("unexpected error %zd", n);
            return;
        }
        check_frame(data + off, size - off, &f, n);
        off += (size_t)n;
    }
}

#ifndef GH_FUZZ_SESSION

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_decoder(data, size);
    return 0;
}

#else /* GH_FUZZ_SESSION */

#include <uv.h>
#include "proxy/tunnel_session.h"

/* The in-memory link: writes complete when the driver says so (never
 * inside the write), reads are what the input says. */
#define MAXQ 4096
static struct link {
    gh_stream_t base;
    gh_write_req_t *q[MAXQ];
    int nq;
    bool reading, closed, close_done, freed;
} L;

static int l_read_start(gh_stream_t *s) { (void)s; L.reading = true; return 0; }
static int l_read_stop(gh_stream_t *s) { (void)s; L.reading = false; return 0; }
static int l_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *b, unsigned n,
                   gh_write_cb cb)
{
    (void)b;
    (void)n;
    if (L.closed || L.nq == MAXQ)
        return UV_EPIPE;
    req->stream = s;
    req->cb = cb;
    L.q[L.nq++] = req;
    return 0;
}
static int l_shutdown(gh_stream_t *s) { (void)s; return 0; }
static void l_close(gh_stream_t *s) { (void)s; L.closed = true; }
static size_t l_wqs(const gh_stream_t *s) { (void)s; return 0; }
static const gh_stream_ops_t l_ops = {l_read_start, l_read_stop, l_write, l_shutdown, l_close, l_wqs};
static void l_freed(gh_stream_t *s) { (void)s; L.freed = true; }

/* Stream owners. */
#define MAXS 64
typedef struct owner {
    gh_stream_t *st;
    bool reading, closed, writing;
    gh_write_req_t w;
    char buf[256];
} owner_t;
static owner_t O[MAXS];
static int nowners;
static gh_tsession_t *S;
static bool s_closed;
static uv_loop_t *loop;
static const char reply[64] = "reply";

static void o_written(gh_write_req_t *w, int status)
{
    owner_t *o = w->data;
    (void)status;
    o->writing = false;
}

static void o_write(owner_t *o)
{
    if (o->writing || o->closed || o->st->closing)
        return;
    uv_buf_t b = uv_buf_init((char *)reply, sizeof reply);
    o->w.data = o;
    if (gh_stream_write(o->st, &o->w, &b, 1, o_written) == 0)
        o->writing = true;
}

/* o->st is freed once its on_close has run (o->closed). */
static void o_close(owner_t *o)
{
    if (!o->closed && !o->st->closing)
        gh_stream_close(o->st);
}

static void o_closed(gh_stream_t *st)
{
    ((owner_t *)st->data)->closed = true;
}

static void o_alloc(gh_stream_t *st, size_t n, uv_buf_t *b)
{
    owner_t *o = st->data;
    (void)n;
    b->base = o->buf;
    b->len = sizeof o->buf;
}

static gh_stream_t *open_one(void);

static void o_read(gh_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    owner_t *o = st->data;
    if (n < 0) {
        o_close(o);
        return;
    }
    if (n == 0)
        return;
    switch (b->base[0]) {
    case 'x': o_close(o); break;
    case 'q': o->reading = false; gh_stream_read_stop(st); break;
    case 'e': o_write(o); break;
    case 's': gh_stream_shutdown(st); break;
    case 'K': if (!s_closed) gh_tsession_close(S); break;
    case 'G': if (!s_closed) gh_tsession_goaway(S); break;
    case 'O': if (!s_closed) open_one(); break;
    default: break;
    }
}

static owner_t *adopt(gh_stream_t *st)
{
    if (nowners == MAXS)
        return NULL;
    owner_t *o = &O[nowners++];
    memset(o, 0, sizeof *o);
    o->st = st;
    st->data = o;
    st->on_alloc = o_alloc;
    st->on_read = o_read;
    st->on_close = o_closed;
    return o;
}

static gh_stream_t *open_one(void)
{
    if (nowners == MAXS)
        return NULL;
    gh_stream_t *st = gh_tsession_open(S, "svc");
    if (st) {
        owner_t *o = adopt(st);
        o->reading = gh_stream_read_start(st) == 0;
        o_write(o);
    }
    return st;
}

static int on_stream(gh_tsession_t *s, gh_stream_t *st, const char *service, void *data)
{
    (void)s;
    (void)data;
    if (service[0] == 'r' || nowners == MAXS)
        return -1;
    owner_t *o = adopt(st);
    if (service[0] != 'p')
        o->reading = gh_stream_read_start(st) == 0;
    if (service[0] == 'w')
        o_write(o);
    if (service[0] == 's')
        gh_stream_shutdown(st);
    if (service[0] == 'c')
        o_close(o);
    if (service[0] == 'K')
        gh_tsession_close(s);
    return 0;
}

static void on_close(gh_tsession_t *s, int reason, void *data)
{
    (void)s;
    (void)reason;
    (void)data;
    s_closed = true;
}

/* Completes the link's writes (cancelled once it is closed), then its
 * close, and lets the loop run the session's deferred work. */
static void settle(bool complete)
{
    for (int round = 0; round < 4; round++) {
        while (complete && L.nq) {
            gh_write_req_t *r = L.q[0];
            memmove(L.q, L.q + 1, (size_t)--L.nq * sizeof L.q[0]);
            r->cb(r, L.closed ? UV_ECANCELED : 0);
        }
        if (L.closed && !L.nq && !L.close_done) {
            L.close_done = true;
            if (L.base.on_close)
                L.base.on_close(&L.base);
        }
        uv_run(loop, UV_RUN_NOWAIT);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const gh_tsession_cbs_t cbs = {.on_stream = on_stream, .on_close = on_close};
    fuzz_decoder(data, size);
    if (size < 1)
        return 0;
    loop = uv_default_loop();
    memset(&L, 0, sizeof L);
    L.base.ops = &l_ops;
    L.base.on_close = l_freed;
    nowners = 0;
    s_closed = false;
    /* byte 0: bit 0 edge or connector; the rest of the input is a list of
     * [control byte][length byte][that many link bytes] */
    S = gh_tsession_new(loop, &L.base, NULL, 0, data[0] & 1, 0, &cbs, NULL);
    if (!S)
        return 0;
    size_t off = 1;
    while (off + 2 <= size && !s_closed) {
        uint8_t ctl = data[off], len = data[off + 1];
        off += 2;
        size_t n = size - off < len ? size - off : len;
        if (ctl & 0x80) {           /* the link ends */
            if (L.reading) {
                uv_buf_t b = uv_buf_init(NULL, 0);
                L.base.on_alloc(&L.base, 65536, &b);
                L.base.on_read(&L.base, (ctl & 0x40) ? UV_ECONNRESET : UV_EOF, &b);
            }
            break;
        }
        if (L.reading && n) {
            uv_buf_t b = uv_buf_init(NULL, 0);
            L.base.on_alloc(&L.base, 65536, &b);
            size_t k = n < b.len ? n : b.len;
            memcpy(b.base, data + off, k);
            L.base.on_read(&L.base, (ssize_t)k, &b);
        }
        off += n;
        if (s_closed)
            break;
        if (ctl & 0x01)
            for (int i = 0; i < nowners; i++)
                if (!O[i].closed && !O[i].st->closing && !O[i].reading)
                    O[i].reading = gh_stream_read_start(O[i].st) == 0;
        if (ctl & 0x02)
            for (int i = 0; i < nowners; i++)
                if (!O[i].closed && !O[i].st->closing)
                    o_write(&O[i]);
        if ((ctl & 0x04) && nowners)
            o_close(&O[ctl % nowners]);
        if ((ctl & 0x08) && !s_closed)
            open_one();
        if ((ctl & 0x10) && !s_closed)
            gh_tsession_goaway(S);
        settle(!(ctl & 0x20));
    }
    if (!s_closed)
        gh_tsession_close(S);
    for (int i = 0; i < nowners; i++)
        o_close(&O[i]);
    for (int i = 0; i < 64 && (uv_loop_alive(loop) || !L.freed); i++)
        settle(true);
    for (int i = 0; i < nowners; i++)
        if (!O[i].closed)
            FAIL("stream %d never closed", i);
    if (!L.freed || uv_loop_alive(loop))
        FAIL("the session did not end");
    return 0;
}

#endif /* GH_FUZZ_SESSION */
