/* Unit tests for proxy/xpipe.c: inboxes and pipes between two loop threads
 * W[0] and W[1], each running its own libuv loop with its own inbox. The
 * main thread creates pipes, posts the steps of each test to the loop
 * threads and waits (with a deadline) for what they report; the streams are
 * only ever used on their own loop's thread, where most checks run. */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "proxy/relay.h"
#include "proxy/stream.h"
#include "proxy/xpipe.h"
#include "tests/unit/test.h"

#define KB 1024
#define DEADLINE_MS 20000

/* The check counters of test.h are shared: loop threads check under tm. */
static pthread_mutex_t tm = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tc = PTHREAD_COND_INITIALIZER;

#define LOCKED(stmt)                  \
    do {                              \
        pthread_mutex_lock(&tm);      \
        stmt;                         \
        pthread_cond_broadcast(&tc);  \
        pthread_mutex_unlock(&tm);    \
    } while (0)
#define TCHECK(c) LOCKED(CHECK(c))
#define TCHECK_INT(a, b) LOCKED(CHECK_INT(a, b))

/* Waits, under tm, until cond holds; a test that hangs fails the run. */
#define WAIT(cond)                                                             \
    do {                                                                       \
        struct timespec dl_;                                                   \
        clock_gettime(CLOCK_REALTIME, &dl_);                                   \
        dl_.tv_sec += DEADLINE_MS / 1000;                                      \
        pthread_mutex_lock(&tm);                                               \
        int rc_ = 0;                                                           \
        while (!(cond) && rc_ == 0)                                            \
            rc_ = pthread_cond_timedwait(&tc, &tm, &dl_);                      \
        bool ok_ = (cond);                                                     \
        pthread_mutex_unlock(&tm);                                             \
        if (!ok_) {                                                            \
            fprintf(stderr, "%s:%d: timed out waiting for %s\n", __FILE__,     \
                    __LINE__, #cond);                                          \
            _exit(1);                                                          \
        }                                                                      \
    } while (0)

/* Steps reached, reported by the loop threads (under tm). */
static int phase[8];

static void notify(int i)
{
    LOCKED(phase[i]++);
}

/* ================= loop threads ================= */

typedef struct worker {
    pthread_t th;
    uv_loop_t loop;
    gh_xloop_t *x;
    uv_async_t stop;            /* keeps the loop running until stop_workers */
    bool xclosed;               /* x was closed (the loop's thread only) */
    void (*at_stop)(struct worker *w);  /* set before start_workers */
    bool ready, done;           /* under tm */
} worker_t;

static worker_t W[2];

static void on_stop(uv_async_t *a)
{
    worker_t *w = a->data;
    if (w->at_stop)
        w->at_stop(w);
    if (!w->xclosed) {
        w->xclosed = true;
        gh_xloop_close(w->x);
    }
    uv_close((uv_handle_t *)a, NULL);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    uv_loop_init(&w->loop);
    TCHECK_INT(gh_xloop_new(&w->loop, &w->x), 0);
    uv_async_init(&w->loop, &w->stop, on_stop);
    w->stop.data = w;
    LOCKED(w->ready = true);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    TCHECK_INT(uv_loop_close(&w->loop), 0);
    LOCKED(w->done = true);
    return NULL;
}

static void reset_eps(void);

static void start_workers(void (*at_stop1)(worker_t *))
{
    reset_eps();
    memset(W, 0, sizeof W);
    memset(phase, 0, sizeof phase);
    W[1].at_stop = at_stop1;
    for (int i = 0; i < 2; i++)
        pthread_create(&W[i].th, NULL, worker_main, &W[i]);
    WAIT(W[0].ready && W[1].ready);
}

static void stop_workers(void)
{
    for (int i = 0; i < 2; i++)
        uv_async_send(&W[i].stop);
    WAIT(W[0].done && W[1].done);
    for (int i = 0; i < 2; i++) {
        pthread_join(W[i].th, NULL);
        gh_xloop_free(W[i].x);
    }
}

static void post(worker_t *w, void (*fn)(void *), void *arg)
{
    int rc = gh_xloop_post(w->x, fn, arg);
    TCHECK_INT(rc, 0);
}

static bool on_thread(const worker_t *w)
{
    return pthread_equal(pthread_self(), w->th);
}

/* ================= pattern bytes ================= */

#define TABLEN 1000003          /* prime: writes and reads rarely line up with it */
#define SHIFT_B 500000          /* what B writes starts elsewhere in the table */
static uint8_t tab[TABLEN];

static uint32_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 32);
}

/* The stream bytes [off, off + len) as one or two buffers into tab. */
static unsigned pat_bufs(uv_buf_t b[2], uint64_t off, size_t len)
{
    size_t i = (size_t)(off % TABLEN), k = TABLEN - i;
    if (len <= k) {
        b[0] = uv_buf_init((char *)tab + i, (unsigned)len);
        return 1;
    }
    b[0] = uv_buf_init((char *)tab + i, (unsigned)k);
    b[1] = uv_buf_init((char *)tab, (unsigned)(len - k));
    return 2;
}

static bool pat_ok(const char *p, uint64_t off, size_t len)
{
    uv_buf_t b[2];
    unsigned n = pat_bufs(b, off, len);
    for (unsigned i = 0; i < n; i++) {
        if (memcmp(p, b[i].base, b[i].len) != 0)
            return false;
        p += b[i].len;
    }
    return true;
}

/* ================= a test endpoint ================= */

#define MAXW 64

typedef struct ep {
    int closed;                 /* under tm; kept by ep_init */
    worker_t *w;
    gh_stream_t *s;
    uint64_t shift, rshift;     /* pattern offsets of what it writes / reads */
    uint64_t rng;
    /* reading */
    size_t alloc;               /* on_alloc's buffer size; 0: random */
    bool toggle;                /* stop and restart reading now and then */
    char rbuf[128 * KB];
    uint64_t got;
    int rx_end;                 /* UV_EOF or the error read */
    bool stopped;               /* read_stop: no on_read until read_start */
    int late_reads;             /* on_read while stopped, after the end or close */
    int bad;                    /* bytes not as written */
    uint64_t mark;              /* once got reaches it: */
    bool stop_at_mark;          /* read_stop, and */
    void (*on_mark)(struct ep *e);
    void (*on_end)(struct ep *e);
    /* writing */
    uint64_t sent;
    int nw, ncb;
    int st[MAXW];
    bool in_write;
    int cb_inside;              /* callbacks run inside gh_stream_write */
    int cb_after_close;
    gh_write_req_t req[MAXW];
    int ncb_at_close;
    bool is_closed;             /* on_close ran (the loop's thread) */
} ep_t;

static void ep_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    ep_t *e = s->data;
    size_t n = e->alloc ? e->alloc : 1 + rnd(&e->rng) % sizeof e->rbuf;
    (void)suggested;
    *buf = uv_buf_init(e->rbuf, (unsigned)n);
}

static void ep_restart(void *arg)
{
    ep_t *e = arg;
    if (e->is_closed || e->rx_end)
        return;
    e->stopped = false;
    TCHECK_INT(gh_stream_read_start(e->s), 0);
}

static void ep_read(gh_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    ep_t *e = s->data;
    if (e->stopped || e->rx_end || s->closing)
        e->late_reads++;
    if (n == 0 || n == UV_ENOBUFS)
        return;
    if (n < 0) {
        e->rx_end = (int)n;
        if (e->on_end)
            e->on_end(e);
        return;
    }
    if (!pat_ok(buf->base, e->got + e->rshift, (size_t)n))
        e->bad++;
    e->got += (uint64_t)n;
    if (e->mark && e->got >= e->mark) {
        e->mark = 0;
        if (e->stop_at_mark) {
            TCHECK_INT(gh_stream_read_stop(s), 0);
            e->stopped = true;
        }
        if (e->on_mark)
            e->on_mark(e);
    } else if (e->toggle && rnd(&e->rng) % 64 == 0) {
        TCHECK_INT(gh_stream_read_stop(s), 0);
        e->stopped = true;
        post(e->w, ep_restart, e);
    }
}

static void ep_written(gh_write_req_t *req, int status)
{
    ep_t *e = req->data;
    if (e->in_write)
        e->cb_inside++;
    if (e->is_closed)
        e->cb_after_close++;
    e->st[req - e->req] = status;
    e->ncb++;
}

static void ep_closed(gh_stream_t *s)
{
    ep_t *e = s->data;
    e->ncb_at_close = e->ncb;
    e->is_closed = true;
    LOCKED(e->closed++);
}

static void ep_init(ep_t *e, worker_t *w, gh_stream_t *s, uint64_t shift, uint64_t rshift)
{
    memset(&e->w, 0, offsetof(ep_t, rbuf) - offsetof(ep_t, w));
    memset(&e->got, 0, sizeof *e - offsetof(ep_t, got));
    e->w = w;
    e->s = s;
    e->shift = shift;
    e->rshift = rshift;
    e->rng = 0x9E3779B97F4A7C15ull ^ shift ^ (uint64_t)(uintptr_t)s;
    s->data = e;
    s->on_alloc = ep_alloc;
    s->on_read = ep_read;
    s->on_close = ep_closed;
}

/* Writes the next len pattern bytes. */
static int ep_write(ep_t *e, size_t len)
{
    gh_write_req_t *r = &e->req[e->nw];
    uv_buf_t b[2];
    unsigned nb = pat_bufs(b, e->sent + e->shift, len);
    r->data = e;
    e->in_write = true;
    int rc = gh_stream_write(e->s, r, b, nb, ep_written);
    e->in_write = false;
    if (rc == 0) {
        e->nw++;
        e->sent += len;
    }
    return rc;
}

static size_t wqs(ep_t *e)
{
    return e->s->ops->write_queue_size(e->s);
}

static ep_t A, B, QA, QB, LC;
static gh_stream_t *pa, *pb;

typedef struct bulk {
    ep_t e;                     /* first */
    worker_t *w;                /* where it runs, and its end: set by main */
    gh_stream_t *s;
    gh_write_req_t req[2];
    bool busy[2];
    int out, bad_status;
    bool shut;
    size_t max_wqs;
} bulk_t;

static bulk_t KA, KB_;

/* From the main thread, while no loop thread runs. */
static void reset_eps(void)
{
    ep_t *all[] = {&A, &B, &QA, &QB, &LC, &KA.e, &KB_.e};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        memset(all[i], 0, sizeof *all[i]);
}

/* ================= inbox ================= */

#define NORDER 1000
static int order[NORDER], norder, wrong_thread, pings, never_ran;

static void rec_order(void *arg)
{
    if (!on_thread(&W[0]))
        wrong_thread++;
    order[norder++] = (int)(intptr_t)arg;
    if (norder == NORDER)
        notify(0);
}

static void ping(void *arg)
{
    worker_t *w = arg, *other = &W[w == &W[0]];
    if (!on_thread(w))
        wrong_thread++;
    if (++pings == NORDER)
        notify(1);
    else
        post(other, ping, other);
}

static void after_close(void *arg)
{
    worker_t *w = arg;
    TCHECK(w->xclosed);
    notify(2);
}

static void close_inbox(void *arg)
{
    worker_t *w = arg;
    post(w, after_close, w);        /* queued: runs from the close */
    w->xclosed = true;
    gh_xloop_close(w->x);
    notify(3);
}

static void never(void *arg)
{
    (void)arg;
    never_ran++;
}

static void post_to_closed(void *arg)
{
    (void)arg;
    TCHECK_INT(gh_xloop_post(W[1].x, never, NULL), UV_ECANCELED);
    notify(4);
}

static void test_inbox(void)
{
    start_workers(NULL);
    norder = pings = wrong_thread = never_ran = 0;
    for (int i = 0; i < NORDER; i++)
        post(&W[0], rec_order, (void *)(intptr_t)i);
    WAIT(phase[0] == 1);
    int in_order = 0;
    for (int i = 0; i < NORDER; i++)
        in_order += order[i] == i;
    CHECK_INT(in_order, NORDER);

    post(&W[0], ping, &W[0]);       /* back and forth between the loops */
    WAIT(phase[1] == 1);
    CHECK_INT(pings, NORDER);

    post(&W[1], close_inbox, &W[1]);
    WAIT(phase[3] == 1 && phase[2] == 1);
    CHECK_INT(gh_xloop_post(W[1].x, never, NULL), UV_ECANCELED);
    gh_stream_t *a, *b;
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &a, &b), UV_ECANCELED);
    post(&W[0], post_to_closed, NULL);
    WAIT(phase[4] == 1);
    stop_workers();
    CHECK_INT(wrong_thread, 0);
    CHECK_INT(never_ran, 0);
    CHECK_INT(phase[2], 1);
}

/* ================= bulk, both ways ================= */

#define BULK_TOTAL (32ull << 20)

static void bulk_maybe_close(bulk_t *k)
{
    if (k->shut && k->e.rx_end)
        gh_stream_close(k->e.s);
}

static void bulk_written(gh_write_req_t *req, int status);

/* Up to two writes in flight, of 1 byte to 300 KiB, from one or two buffers. */
static void bulk_pump(bulk_t *k)
{
    ep_t *e = &k->e;
    while (k->out < 2 && e->sent < BULK_TOTAL) {
        int slot = k->busy[0] ? 1 : 0;
        uint32_t r = rnd(&e->rng);
        size_t len = r % 4 == 0 ? 1 + r / 4 % 64 : r % 4 == 1 ? 1 + r / 4 % 4096 : 1 + r / 4 % (300 * KB);
        if (len > BULK_TOTAL - e->sent)
            len = (size_t)(BULK_TOTAL - e->sent);
        gh_write_req_t *req = &k->req[slot];
        uv_buf_t b[2];
        unsigned nb = pat_bufs(b, e->sent + e->shift, len);
        req->data = k;
        e->in_write = true;
        int rc = gh_stream_write(e->s, req, b, nb, bulk_written);
        e->in_write = false;
        if (rc != 0) {
            k->bad_status++;
            return;
        }
        k->busy[slot] = true;
        k->out++;
        e->sent += len;
        e->nw++;
        size_t q = wqs(e);
        if (q > k->max_wqs)
            k->max_wqs = q;
    }
    if (e->sent == BULK_TOTAL && !k->out && !k->shut) {
        k->shut = true;
        TCHECK_INT(gh_stream_shutdown(e->s), 0);
        bulk_maybe_close(k);
    }
}

static void bulk_written(gh_write_req_t *req, int status)
{
    bulk_t *k = req->data;
    if (k->e.in_write)
        k->e.cb_inside++;
    if (status != 0)
        k->bad_status++;
    k->e.ncb++;
    k->busy[req - k->req] = false;
    k->out--;
    bulk_pump(k);
}

static void bulk_end(ep_t *e)
{
    bulk_maybe_close((bulk_t *)e);
}

static void bulk_start(void *arg)
{
    bulk_t *k = arg;
    bool a = k == &KA;
    memset(k->req, 0, sizeof k->req);
    k->busy[0] = k->busy[1] = false;
    k->out = k->bad_status = 0;
    k->shut = false;
    k->max_wqs = 0;
    ep_init(&k->e, k->w, k->s, a ? 0 : SHIFT_B, a ? SHIFT_B : 0);
    k->e.toggle = true;
    k->e.on_end = bulk_end;
    TCHECK_INT(gh_stream_read_start(k->e.s), 0);
    bulk_pump(k);
}

static void bulk_check(void);

static void test_bulk(void)
{
    start_workers(NULL);
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
    KA.w = &W[0];
    KA.s = pa;
    KB_.w = &W[1];
    KB_.s = pb;
    post(&W[0], bulk_start, &KA);
    post(&W[1], bulk_start, &KB_);
    WAIT(KA.e.closed && KB_.e.closed);
    stop_workers();
    bulk_check();
}

/* ============ through proxy/relay.c, as the workers will use it ============ */

static gh_stream_t *ry1, *ry2;
static int relay_error = 1;
static unsigned long long relay_moved[2];

static void relay_done(void *data, int error, unsigned long long a_to_b, unsigned long long b_to_a)
{
    (void)data;
    relay_moved[0] = a_to_b;
    relay_moved[1] = b_to_a;
    LOCKED(relay_error = error);
}

static void relay_begin(void *arg)
{
    (void)arg;
    TCHECK(gh_relay_start(ry1, ry2, NULL, 0, relay_done, NULL) != NULL);
}

/* KA and KB_ on W[1] talk through two pipes and a relay on W[0]:
 * KA - ry1 = relay = ry2 - KB_ */
static void test_relay(void)
{
    start_workers(NULL);
    relay_error = 1;
    CHECK_INT(gh_xpipe_new(W[1].x, W[0].x, &KA.s, &ry1), 0);
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &ry2, &KB_.s), 0);
    KA.w = KB_.w = &W[1];
    post(&W[0], relay_begin, NULL);
    post(&W[1], bulk_start, &KA);
    post(&W[1], bulk_start, &KB_);
    WAIT(KA.e.closed && KB_.e.closed && relay_error != 1);
    stop_workers();
    bulk_check();
    CHECK_INT(relay_error, 0);
    CHECK_INT(relay_moved[0], BULK_TOTAL);
    CHECK_INT(relay_moved[1], BULK_TOTAL);
}

static void bulk_check(void)
{
    for (int i = 0; i < 2; i++) {
        bulk_t *k = i ? &KB_ : &KA;
        CHECK_INT(k->e.got, BULK_TOTAL);
        CHECK_INT(k->e.bad, 0);
        CHECK_INT(k->e.rx_end, UV_EOF);
        CHECK_INT(k->bad_status, 0);
        CHECK_INT(k->e.cb_inside, 0);
        CHECK_INT(k->e.late_reads, 0);
        CHECK_INT(k->e.ncb, k->e.nw);
        CHECK_INT(k->e.closed, 1);
        CHECK(k->max_wqs > 0 && k->max_wqs <= GH_XPIPE_BOUND + 2 * 300 * KB);
    }
}

/* ================= backpressure ================= */

static void bp_a_check3(void *arg)
{
    (void)arg;
    TCHECK_INT(A.ncb, 8);
    TCHECK_INT(wqs(&A), 0);
    TCHECK_INT(gh_stream_shutdown(A.s), 0);
    gh_stream_close(A.s);
}

static void bp_b_all(ep_t *e)
{
    (void)e;
    post(&W[0], bp_a_check3, NULL);
}

static void bp_b_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_EOF);
    gh_stream_close(e->s);
}

static void bp_b_read2(void *arg)
{
    (void)arg;
    B.stopped = false;
    B.mark = 512 * KB;
    B.stop_at_mark = false;
    B.on_mark = bp_b_all;
    B.on_end = bp_b_end;
    TCHECK_INT(gh_stream_read_start(B.s), 0);
}

static void bp_a_check2(void *arg)
{
    (void)arg;
    /* the reader took 128 KiB: writes ending at up to 384 KiB are done */
    TCHECK_INT(A.ncb, 6);
    TCHECK_INT(wqs(&A), 384 * KB);
    notify(1);
}

static void bp_b_stopped(ep_t *e)
{
    (void)e;
    post(&W[0], bp_a_check2, NULL);
}

static void bp_b_read1(void *arg)
{
    (void)arg;
    ep_init(&B, &W[1], pb, SHIFT_B, 0);
    B.alloc = 32 * KB;
    B.mark = 128 * KB;
    B.stop_at_mark = true;
    B.on_mark = bp_b_stopped;
    TCHECK_INT(gh_stream_read_start(B.s), 0);
}

static void bp_a_check1(void *arg)
{
    (void)arg;
    /* posted after the writes: their first callbacks have run by now, and
     * only those of the writes within the bound */
    TCHECK_INT(A.ncb, 4);
    TCHECK_INT(wqs(&A), 512 * KB);
    notify(0);
}

static void bp_a_start(void *arg)
{
    (void)arg;
    ep_init(&A, &W[0], pa, 0, SHIFT_B);
    for (int i = 0; i < 8; i++)
        TCHECK_INT(ep_write(&A, 64 * KB), 0);
    TCHECK_INT(A.ncb, 0);
    TCHECK_INT(wqs(&A), 512 * KB);
    post(&W[0], bp_a_check1, NULL);
}

static void test_backpressure(void)
{
    start_workers(NULL);
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
    post(&W[0], bp_a_start, NULL);
    WAIT(phase[0] == 1);
    post(&W[1], bp_b_read1, NULL);
    WAIT(phase[1] == 1);
    post(&W[1], bp_b_read2, NULL);
    WAIT(A.closed && B.closed);
    stop_workers();
    for (int i = 0; i < 8; i++)
        CHECK_INT(A.st[i], 0);
    CHECK_INT(A.cb_inside, 0);
    CHECK_INT(A.ncb_at_close, 8);
    CHECK_INT(B.got, 512 * KB);
    CHECK_INT(B.bad, 0);
    CHECK_INT(B.late_reads, 0);
    CHECK_INT(A.closed, 1);
    CHECK_INT(B.closed, 1);
}

/* ================= shutdown, then close at once ================= */

static void se_b_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_EOF);
    TCHECK_INT(e->got, 6 + 100 * KB + 5);
    TCHECK_INT(ep_write(e, 10), UV_EPIPE);      /* the peer is closed */
    TCHECK_INT(wqs(e), 0);
    gh_stream_close(e->s);
}

static void se_b(void *arg)
{
    (void)arg;
    ep_init(&B, &W[1], pb, SHIFT_B, 0);
    B.on_end = se_b_end;
    TCHECK_INT(gh_stream_read_start(B.s), 0);
}

static void se_a(void *arg)
{
    (void)arg;
    ep_init(&A, &W[0], pa, 0, SHIFT_B);
    TCHECK_INT(ep_write(&A, 6), 0);
    TCHECK_INT(ep_write(&A, 100 * KB), 0);
    TCHECK_INT(ep_write(&A, 5), 0);
    TCHECK_INT(gh_stream_shutdown(A.s), 0);
    TCHECK_INT(ep_write(&A, 1), UV_EPIPE);
    gh_stream_close(A.s);
    TCHECK_INT(A.ncb, 0);
}

static void test_shutdown(void)
{
    start_workers(NULL);
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
    post(&W[0], se_a, NULL);
    WAIT(A.closed);
    post(&W[1], se_b, NULL);        /* reads only after the writer is gone */
    WAIT(B.closed);
    stop_workers();
    CHECK_INT(A.ncb, 3);
    CHECK_INT(A.ncb_at_close, 3);
    for (int i = 0; i < 3; i++)
        CHECK_INT(A.st[i], UV_ECANCELED);
    CHECK_INT(A.cb_inside, 0);
    CHECK_INT(B.bad, 0);
    CHECK_INT(B.rx_end, UV_EOF);
    CHECK_INT(A.closed, 1);
    CHECK_INT(B.closed, 1);
}

/* ================= close without shutdown ================= */

static void rs_b_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_ECONNRESET);
    TCHECK_INT(e->got, 0);          /* what was queued is dropped */
    gh_stream_close(e->s);
}

static void rs_b_read(void *arg)
{
    (void)arg;
    /* the peer's close reached B before this message */
    TCHECK_INT(B.ncb, 8);
    for (int i = 0; i < 8; i++)
        TCHECK_INT(B.st[i], i < 4 ? 0 : UV_EPIPE);
    TCHECK_INT(ep_write(&B, 1), UV_EPIPE);
    TCHECK_INT(gh_stream_shutdown(B.s), UV_EPIPE);
    TCHECK_INT(wqs(&B), 0);
    B.on_end = rs_b_end;
    TCHECK_INT(gh_stream_read_start(B.s), 0);
}

static void rs_a(void *arg)
{
    (void)arg;
    ep_init(&A, &W[0], pa, 0, SHIFT_B);
    for (int i = 0; i < 8; i++)
        TCHECK_INT(ep_write(&A, 64 * KB), 0);
    gh_stream_close(A.s);
}

static void rs_b_check(void *arg)
{
    (void)arg;
    TCHECK_INT(B.ncb, 4);
    notify(0);
}

static void rs_b_write(void *arg)
{
    (void)arg;
    ep_init(&B, &W[1], pb, SHIFT_B, 0);
    for (int i = 0; i < 8; i++)
        TCHECK_INT(ep_write(&B, 64 * KB), 0);
    post(&W[1], rs_b_check, NULL);
}

static void test_reset(void)
{
    start_workers(NULL);
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
    post(&W[1], rs_b_write, NULL);
    WAIT(phase[0] == 1);
    post(&W[0], rs_a, NULL);
    WAIT(A.closed);
    post(&W[1], rs_b_read, NULL);
    WAIT(B.closed);
    stop_workers();
    CHECK_INT(A.ncb, 8);
    CHECK_INT(A.ncb_at_close, 8);
    for (int i = 0; i < 8; i++)
        CHECK_INT(A.st[i], UV_ECANCELED);
    CHECK_INT(A.cb_inside + B.cb_inside, 0);
    CHECK_INT(A.cb_after_close + B.cb_after_close, 0);
    CHECK_INT(B.late_reads, 0);
    CHECK_INT(A.closed, 1);
    CHECK_INT(B.closed, 1);
}

/* ================= both ends close at once ================= */

#define CB_ROUNDS 200
static int cb_round;

static void cb_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_ECONNRESET);
}

static void cb_closed(gh_stream_t *s)
{
    ep_t *e = s->data;
    TCHECK_INT(e->ncb, e->nw);      /* every write callback came first */
    for (int i = 0; i < e->nw; i++)
        TCHECK(e->st[i] == 0 || e->st[i] == UV_ECANCELED || e->st[i] == UV_EPIPE);
    ep_closed(s);
}

static void cb_close(void *arg)
{
    ep_t *e = arg;
    gh_stream_close(e->s);
    TCHECK_INT(e->closed, cb_round);    /* on_close never inside close() */
}

static void cb_start(void *arg)
{
    ep_t *e = arg;
    bool a = e == &A;
    TCHECK_INT(e->cb_after_close + e->late_reads + e->cb_inside, 0);  /* last round's */
    ep_init(e, &W[!a], a ? pa : pb, a ? 0 : SHIFT_B, a ? SHIFT_B : 0);
    e->s->on_close = cb_closed;
    e->on_end = cb_end;
    TCHECK_INT(gh_stream_read_start(e->s), 0);
    for (int i = 0; i < 4; i++) {
        int rc = ep_write(e, 100 * KB);
        TCHECK(rc == 0 || rc == UV_EPIPE);  /* the peer may be closed already */
    }
    if (cb_round % 3 == 0)
        cb_close(e);
}

static void test_close_both(void)
{
    start_workers(NULL);
    for (cb_round = 0; cb_round < CB_ROUNDS; cb_round++) {
        CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
        post(&W[0], cb_start, &A);
        post(&W[1], cb_start, &B);
        if (cb_round % 3) {
            post(&W[1], cb_close, &B);
            post(&W[0], cb_close, &A);
        }
        WAIT(A.closed == cb_round + 1 && B.closed == cb_round + 1);
    }
    stop_workers();
    CHECK_INT(A.cb_after_close + B.cb_after_close, 0);
    CHECK_INT(A.late_reads + B.late_reads, 0);
    CHECK_INT(A.closed + B.closed, 2 * CB_ROUNDS);
}

/* ================= a closed inbox cuts open pipes ================= */

static void ct_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_ECONNRESET);
    if (e == &A) {
        TCHECK_INT(ep_write(e, 1), UV_ECONNRESET);
        TCHECK_INT(wqs(e), 0);
    }
    gh_stream_close(e->s);
}

static void ct_got(ep_t *e)
{
    (void)e;
    notify(0);
}

static void ct_b(void *arg)
{
    (void)arg;
    ep_init(&B, &W[1], pb, SHIFT_B, 0);
    B.mark = 5;
    B.on_mark = ct_got;
    B.on_end = ct_end;
    TCHECK_INT(gh_stream_read_start(B.s), 0);
}

static void ct_a(void *arg)
{
    (void)arg;
    ep_init(&A, &W[0], pa, 0, SHIFT_B);
    A.on_end = ct_end;
    TCHECK_INT(gh_stream_read_start(A.s), 0);
    TCHECK_INT(ep_write(&A, 5), 0);
}

static void test_cut(void)
{
    start_workers(NULL);
    CHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
    post(&W[1], ct_b, NULL);
    post(&W[0], ct_a, NULL);
    WAIT(phase[0] == 1);
    post(&W[1], close_inbox, &W[1]);
    WAIT(A.closed && B.closed);     /* B's on_close runs after its inbox closed */
    CHECK_INT(gh_xloop_post(W[1].x, never, NULL), UV_ECANCELED);
    stop_workers();
    CHECK_INT(A.st[0], 0);
    CHECK_INT(B.got, 5);
    CHECK_INT(B.bad, 0);
    CHECK_INT(A.closed, 1);
    CHECK_INT(B.closed, 1);
}

/* ============ handing an endpoint to a closed loop fails ============ */

static gh_stream_t *qa, *qb;

static void dp_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_ECONNRESET);
    gh_stream_close(e->s);
}

static void dp_handoff(void *arg)
{
    (void)arg;
    /* the message that would have taken pb over fails: drop it */
    TCHECK_INT(gh_xloop_post(W[1].x, never, pb), UV_ECANCELED);
    gh_xpipe_drop(pb);
    ep_init(&A, &W[0], pa, 0, SHIFT_B);
    A.on_end = dp_end;
    TCHECK_INT(ep_write(&A, 10), UV_EPIPE);
    TCHECK_INT(gh_stream_read_start(A.s), 0);
    /* qb never reached its loop either; closing qa cannot wake it */
    gh_stream_close(QA.s);
}

static void dp_create(void *arg)
{
    (void)arg;
    TCHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &pa, &pb), 0);
    TCHECK_INT(gh_xpipe_new(W[0].x, W[1].x, &qa, &qb), 0);
    ep_init(&QA, &W[0], qa, 0, SHIFT_B);
    TCHECK_INT(ep_write(&QA, 64 * KB), 0);
    notify(0);
}

/* W[1]'s owner closes qb as it stops, after its inbox is closed. */
static void dp_at_stop(worker_t *w)
{
    ep_init(&QB, w, qb, SHIFT_B, 0);
    gh_stream_close(qb);
}

static void test_drop(void)
{
    start_workers(dp_at_stop);
    post(&W[0], dp_create, NULL);
    WAIT(phase[0] == 1);
    post(&W[1], close_inbox, &W[1]);
    WAIT(phase[3] == 1);
    post(&W[0], dp_handoff, NULL);
    WAIT(A.closed && QA.closed);
    stop_workers();
    CHECK_INT(QA.ncb, 1);
    CHECK(QA.st[0] == 0 || QA.st[0] == UV_ECANCELED);
    CHECK_INT(A.closed, 1);
    CHECK_INT(QA.closed, 1);
    CHECK_INT(QB.closed, 1);
    CHECK_INT(never_ran, 0);
}

/* ================= both ends on one loop ================= */

static void sl_a_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_EOF);
    gh_stream_close(e->s);
}

static void sl_b_end(ep_t *e)
{
    TCHECK_INT(e->rx_end, UV_EOF);
    TCHECK_INT(e->got, 300 * KB);
    TCHECK_INT(ep_write(e, 7), 0);
    TCHECK_INT(gh_stream_shutdown(e->s), 0);
    gh_stream_close(e->s);          /* a clean end: A reads the 7 bytes */
}

static void sl_start(void *arg)
{
    (void)arg;
    TCHECK_INT(gh_xpipe_new(W[0].x, W[0].x, &pa, &pb), 0);
    ep_init(&A, &W[0], pa, 0, SHIFT_B);
    ep_init(&B, &W[0], pb, SHIFT_B, 0);
    A.on_end = sl_a_end;
    B.on_end = sl_b_end;
    TCHECK_INT(gh_stream_read_start(A.s), 0);
    TCHECK_INT(gh_stream_read_start(B.s), 0);
    for (int i = 0; i < 3; i++)
        TCHECK_INT(ep_write(&A, 100 * KB), 0);
    TCHECK_INT(gh_stream_shutdown(A.s), 0);
}

static void test_same_loop(void)
{
    start_workers(NULL);
    post(&W[0], sl_start, NULL);
    WAIT(A.closed && B.closed);
    stop_workers();
    for (int i = 0; i < 3; i++)
        CHECK_INT(A.st[i], 0);
    CHECK_INT(A.got, 7);
    CHECK_INT(A.bad + B.bad, 0);
    CHECK_INT(B.st[0], UV_ECANCELED);
    CHECK_INT(A.cb_inside + B.cb_inside, 0);
}

/* ======== an open endpoint keeps its loop running, an idle inbox not ======== */

static bool lv_done;

static void lv_a(void *arg)
{
    (void)arg;
    ep_init(&A, &W[0], pa, 0, 0);
    TCHECK_INT(ep_write(&A, 1000), 0);
    TCHECK_INT(gh_stream_shutdown(A.s), 0);
    gh_stream_close(A.s);
}

static void lv_end(ep_t *e)
{
    gh_stream_close(e->s);
}

static void *lv_thread(void *arg)
{
    uv_loop_t loop;
    gh_xloop_t *x;
    gh_stream_t *c;
    (void)arg;
    uv_loop_init(&loop);
    TCHECK_INT(gh_xloop_new(&loop, &x), 0);
    TCHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);   /* nothing holds it */
    TCHECK_INT(gh_xpipe_new(x, W[0].x, &c, &pa), 0);
    ep_init(&LC, NULL, c, 0, 0);
    LC.on_end = lv_end;
    TCHECK_INT(gh_stream_read_start(c), 0);
    post(&W[0], lv_a, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);  /* until c is closed */
    TCHECK_INT(LC.got, 1000);
    TCHECK_INT(LC.rx_end, UV_EOF);
    TCHECK_INT(LC.closed, 1);
    gh_xloop_close(x);
    uv_run(&loop, UV_RUN_DEFAULT);
    TCHECK_INT(uv_loop_close(&loop), 0);
    gh_xloop_free(x);
    LOCKED(lv_done = true);
    return NULL;
}

static void test_liveness(void)
{
    pthread_t th;
    start_workers(NULL);
    pthread_create(&th, NULL, lv_thread, NULL);
    WAIT(lv_done);
    pthread_join(th, NULL);
    WAIT(A.closed);
    stop_workers();
    CHECK_INT(LC.bad, 0);
}

int main(void)
{
    uint64_t s = 12345;
    for (size_t i = 0; i < TABLEN; i++)
        tab[i] = (uint8_t)rnd(&s);
    struct { const char *name; void (*fn)(void); } tests[] = {
        {"inbox", test_inbox},
        {"bulk", test_bulk},
        {"relay", test_relay},
        {"backpressure", test_backpressure},
        {"shutdown", test_shutdown},
        {"reset", test_reset},
        {"close_both", test_close_both},
        {"cut", test_cut},
        {"drop", test_drop},
        {"same_loop", test_same_loop},
        {"liveness", test_liveness},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        uint64_t t0 = uv_hrtime();
        tests[i].fn();
        printf("%-14s %6.0f ms\n", tests[i].name, (double)(uv_hrtime() - t0) / 1e6);
    }
    TEST_MAIN_END();
}
