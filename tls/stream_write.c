/* The TLS stream's BIO and its writing side.
 *
 * OpenSSL talks to a BIO of our own rather than a memory BIO or a BIO pair:
 * those keep their buffers (a mem BIO never shrinks, a pair allocates both
 * directions up front), which is 16-34 kB per connection forever. Ours reads
 * ciphertext straight from the buffer TCP just filled (t->in) and appends
 * what OpenSSL writes to a chunk that goes to TCP as it is and is freed when
 * the write completes. With SSL_MODE_RELEASE_BUFFERS an idle connection
 * holds no I/O buffer at all.
 *
 * A user write is encrypted whole into one chunk and completes when TCP has
 * written that chunk; writes made before the handshake finished wait in a
 * queue, in order, and go out right after it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include "tls/stream-int.h"

#define RECORD_PLAIN 16384          /* most plaintext in one TLS record */
#define RECORD_OVERHEAD 64          /* more than any suite adds to a record */

/* ---- the BIO ---- */

/* Chunks of the first size are kept for reuse, a few per thread: most
 * writes (a response head, an SSE event, a small body) fit one, and a
 * malloc and free each time would be a good part of their cost. */
#define CHUNK_FIRST 4096
#define CHUNK_CACHE 16

static _Thread_local gh__tls_out_t *chunk_cache[CHUNK_CACHE];
static _Thread_local unsigned chunk_cached;

static void chunk_free(gh__tls_out_t *o)
{
    if (o && o->cap == CHUNK_FIRST && chunk_cached < CHUNK_CACHE)
        chunk_cache[chunk_cached++] = o;
    else
        free(o);
}

void gh_tls_thread_done(void)
{
    while (chunk_cached)
        free(chunk_cache[--chunk_cached]);
}

static int out_reserve(gh__tls_stream_t *t, size_t more)
{
    gh__tls_out_t *o = t->out;
    size_t used = o ? o->len : 0;
    if (o && o->cap - used >= more)
        return 0;
    if (!o && more <= CHUNK_FIRST && chunk_cached) {
        o = chunk_cache[--chunk_cached];
        o->len = 0;
        o->user = NULL;
        t->out = o;
        return 0;
    }
    size_t cap = o ? o->cap * 2 : CHUNK_FIRST;
    while (cap < used + more)
        cap *= 2;
    gh__tls_out_t *n = realloc(o, sizeof(*n) + cap);
    if (!n)
        return -1;
    if (!o) {
        n->len = 0;
        n->user = NULL;
    }
    n->cap = cap;
    t->out = n;
    return 0;
}

static int bio_write(BIO *b, const char *data, int len)
{
    gh__tls_stream_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (out_reserve(t, (size_t)len) < 0)
        return -1;
    memcpy(t->out->data + t->out->len, data, (size_t)len);
    t->out->len += (size_t)len;
    return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
    gh__tls_stream_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->inlen == 0) {
        /* "come back later": TCP end of stream is handled above OpenSSL */
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)len < t->inlen ? (size_t)len : t->inlen;
    memcpy(buf, t->in, n);
    t->in += n;
    t->inlen -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    gh__tls_stream_t *t = BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;           /* we flush after every OpenSSL call */
    case BIO_CTRL_PENDING:
        return t ? (long)t->inlen : 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "gatehouse");
    if (!m)
        return;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    bio_method = m;
}

const BIO_METHOD *gh__tls_bio_method(void)
{
    pthread_once(&bio_once, bio_method_init);
    return bio_method;
}

/* ---- writing ---- */

static void chunk_written(gh_write_req_t *wr, int status)
{
    gh__tls_out_t *o = (gh__tls_out_t *)wr;
    gh_write_req_t *user = o->user;
    chunk_free(o);
    if (user)
        user->cb(user, status);
}

/* Hands the pending ciphertext to TCP; user (if any) completes with it. */
int gh__tls_flush(gh__tls_stream_t *t, gh_write_req_t *user)
{
    if (!t->out) {
        if (!user)
            return 0;
        if (out_reserve(t, 0) < 0)
            return UV_ENOMEM;
    }
    gh__tls_out_t *o = t->out;
    t->out = NULL;
    o->user = user;
    uv_buf_t b;
    b.base = o->data;
    b.len = o->len;
    int rc = gh_stream_write(&t->tcp->base, &o->wr, &b, 1, chunk_written);
    if (rc < 0)
        chunk_free(o);
    return rc;
}

static int encrypt_send(gh__tls_stream_t *t, gh_write_req_t *req, const uv_buf_t *bufs,
                        unsigned nbufs)
{
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    /* One allocation for the whole write when we can; bio_write grows it
     * otherwise. */
    (void)out_reserve(t, total + (total / RECORD_PLAIN + 1) * RECORD_OVERHEAD);
    gh__tls_clear_errors();
    /* Pieces that fit one record together go as one record: a response head
     * and a small body would otherwise each cost a record, and OpenSSL's
     * fixed cost per record is most of the price of a small one. */
    static _Thread_local char gather[RECORD_PLAIN];
    uv_buf_t one;
    if (nbufs > 1 && total <= sizeof gather) {
        size_t off = 0;
        for (unsigned i = 0; i < nbufs; i++) {
            memcpy(gather + off, bufs[i].base, bufs[i].len);
            off += bufs[i].len;
        }
        one = uv_buf_init(gather, (unsigned)total);
        bufs = &one;
        nbufs = 1;
    }
    for (unsigned i = 0; i < nbufs; i++) {
        const char *p = bufs[i].base;
        size_t left = bufs[i].len;
        while (left) {
            size_t w = 0;
            if (SSL_write_ex(t->ssl, p, left, &w) != 1) {
                char why[256];
                gh__tls_set_error(t, "write failed: %s",
                                  gh__tls_errstr(why, sizeof(why), "error"));
                chunk_free(t->out);
                t->out = NULL;
                t->fatal = UV_EPROTO;
                return UV_EPROTO;
            }
            p += w;
            left -= w;
        }
    }
    return gh__tls_flush(t, req);
}

static gh__tls_queued_t *dequeue(gh__tls_stream_t *t)
{
    gh__tls_queued_t *q = t->wq;
    if (q) {
        t->wq = q->next;
        if (!t->wq)
            t->wq_tail = &t->wq;
        t->wq_bytes -= q->bytes;
    }
    return q;
}

/* Completes every queued write with status. Each is unlinked before its
 * callback, which may write again (and get an error) or close. */
void gh__tls_fail_queue(gh__tls_stream_t *t, int status)
{
    gh__tls_queued_t *q;
    while ((q = dequeue(t)) != NULL) {
        gh_write_req_t *req = q->req;
        free(q);
        req->cb(req, status);
    }
}

static int do_shutdown(gh__tls_stream_t *t)
{
    t->shut_pending = false;
    t->shut_sent = true;
    /* Sends close_notify without waiting for the peer's: the read side stays
     * open (a half-close, as with TCP). */
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    int rc = gh__tls_flush(t, NULL);
    return rc < 0 ? rc : gh_stream_shutdown(&t->tcp->base);
}

/* After the handshake: sends what was written before it, in order. */
void gh__tls_run_queue(gh__tls_stream_t *t)
{
    while (t->wq && !t->base.closing) {
        gh__tls_queued_t *q = dequeue(t);
        gh_write_req_t *req = q->req;
        int rc = t->fatal ? t->fatal : encrypt_send(t, req, q->bufs, q->nbufs);
        free(q);
        if (rc < 0)
            req->cb(req, rc);
    }
    if (t->shut_pending && !t->wq && !t->base.closing && !t->fatal)
        do_shutdown(t);
}

/* ---- gh_stream_ops_t ---- */

int gh__tls_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs, unsigned nbufs,
                  gh_write_cb cb)
{
    gh__tls_stream_t *t = (gh__tls_stream_t *)s;
    req->stream = s;
    req->cb = cb;
    if (s->closing || t->shut_pending || t->shut_sent)
        return UV_EPIPE;
    if (t->fatal)
        return t->fatal;
    if (t->hs_done && !t->wq)
        return encrypt_send(t, req, bufs, nbufs);
    gh__tls_queued_t *q = malloc(sizeof(*q) + nbufs * sizeof(uv_buf_t));
    if (!q)
        return UV_ENOMEM;
    q->next = NULL;
    q->req = req;
    q->nbufs = nbufs;
    q->bytes = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        q->bufs[i] = bufs[i];
        q->bytes += bufs[i].len;
    }
    *t->wq_tail = q;
    t->wq_tail = &q->next;
    t->wq_bytes += q->bytes;
    return 0;
}

int gh__tls_shutdown(gh_stream_t *s)
{
    gh__tls_stream_t *t = (gh__tls_stream_t *)s;
    if (s->closing)
        return UV_ENOTCONN;
    if (t->shut_pending || t->shut_sent)
        return 0;
    if (t->fatal)
        return t->fatal;
    if (!t->hs_done || t->wq) {
        t->shut_pending = true;     /* run_queue sends it after the data */
        return 0;
    }
    return do_shutdown(t);
}

size_t gh__tls_write_queue_size(const gh_stream_t *s)
{
    const gh__tls_stream_t *t = (const gh__tls_stream_t *)s;
    size_t n = t->wq_bytes + (t->out ? t->out->len : 0);
    if (t->tcp)
        n += t->tcp->base.ops->write_queue_size(&t->tcp->base);
    return n;
}
