/* The TLS carrier of gh_stream_t: OpenSSL over a gh_tcp_stream_t.
 *
 * OpenSSL talks to a BIO of our own rather than a memory BIO or a BIO pair:
 * those keep their buffers (a mem BIO never shrinks, a pair allocates both
 * directions up front), which is 16-34 kB per connection forever. Ours reads
 * ciphertext straight from the buffer TCP just filled and appends what
 * OpenSSL writes to a chunk that is handed to TCP as it is and freed when
 * the write completes. Together with SSL_MODE_RELEASE_BUFFERS an idle
 * connection holds no I/O buffer at all.
 *
 * Ciphertext is read into one buffer per thread: each TCP read is processed
 * to the end before returning to the loop, so nothing else can use it in
 * between. Ciphertext the user has no room for (it stopped reading) is the
 * only thing copied and kept.
 *
 * Callbacks into the user can stop reading, write, or close the stream.
 * Closing only starts closing (uv_close); this struct and the SSL are freed
 * from the close callback, so within one call stack they stay valid and the
 * loops below only need to re-check `closing` after every callback. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "tls/tls-int.h"

#define CIPHER_IN_SIZE 65536        /* what libuv suggests for one read */
#define RECORD_PLAIN 16384          /* most plaintext in one TLS record */
#define RECORD_OVERHEAD 64          /* more than any suite adds to a record */

static _Thread_local char cipher_in[CIPHER_IN_SIZE];

static atomic_ullong server_ok, server_failed, client_ok, client_failed;

/* Ciphertext on its way to TCP. wr must be first: the TCP write callback
 * gets &wr back. */
typedef struct out_chunk {
    gh_write_req_t wr;
    gh_write_req_t *user;   /* completed when this is written; NULL for handshake bytes */
    size_t len, cap;
    char data[];
} out_chunk_t;

/* A write issued before the handshake finished. */
typedef struct queued {
    struct queued *next;
    gh_write_req_t *req;
    size_t bytes;
    unsigned nbufs;
    uv_buf_t bufs[];
} queued_t;

typedef struct tls_stream {
    gh_stream_t base;           /* first: a tls_stream_t * is a gh_stream_t * */
    gh_tcp_stream_t *tcp;       /* NULL once closed */
    SSL *ssl;
    gh_tls_server_t *server;    /* one of the two holds a reference */
    gh_tls_client_t *client;
    const char *in;             /* ciphertext OpenSSL may read now */
    size_t inlen;
    char *saved;                /* ciphertext kept while the user does not read */
    size_t saved_off, saved_len;
    out_chunk_t *out;           /* ciphertext not yet handed to TCP */
    queued_t *wq, **wq_tail;
    size_t wq_bytes;
    uv_timer_t *defer;          /* created on first need: delivers kept data */
    char *error;                /* first failure, for logs */
    char *session_key;          /* client: the sni, keying resumable sessions */
    int pending_err;            /* UV_EOF or an error the user has not seen yet */
    int fatal;                  /* the stream is broken: writes fail with this */
    int handles;                /* open libuv handles; freed at zero */
    bool is_server, started, hs_done, counted, got_bytes;
    bool reading, inner_reading, read_done, shut_pending, shut_sent;
} tls_stream_t;

static const gh_stream_ops_t tls_ops;

/* ---- bookkeeping ---- */

static void set_error(tls_stream_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_error(tls_stream_t *t, const char *fmt, ...)
{
    if (t->error)
        return;             /* the first failure is the cause; keep it */
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    t->error = strdup(buf);
}

static void count(tls_stream_t *t, bool ok)
{
    if (t->counted)
        return;
    t->counted = true;
    /* A server connection that closed before sending a byte never began a
     * handshake (port scans, load balancer probes): not a failure. */
    if (!ok && t->is_server && !t->got_bytes)
        return;
    atomic_ullong *c = t->is_server ? (ok ? &server_ok : &server_failed)
                                    : (ok ? &client_ok : &client_failed);
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* ---- the BIO ---- */

static int out_reserve(tls_stream_t *t, size_t more)
{
    out_chunk_t *o = t->out;
    size_t used = o ? o->len : 0;
    if (o && o->cap - used >= more)
        return 0;
    size_t cap = o ? o->cap * 2 : 4096;
    while (cap < used + more)
        cap *= 2;
    out_chunk_t *n = realloc(o, sizeof(*n) + cap);
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
    tls_stream_t *t = BIO_get_data(b);
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
    tls_stream_t *t = BIO_get_data(b);
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
    tls_stream_t *t = BIO_get_data(b);
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

/* ---- writing ---- */

static void chunk_written(gh_write_req_t *wr, int status)
{
    out_chunk_t *o = (out_chunk_t *)wr;
    gh_write_req_t *user = o->user;
    free(o);
    if (user)
        user->cb(user, status);
}

/* Hands the pending ciphertext to TCP; user (if any) completes with it. */
static int flush(tls_stream_t *t, gh_write_req_t *user)
{
    if (!t->out) {
        if (!user)
            return 0;
        if (out_reserve(t, 0) < 0)
            return UV_ENOMEM;
    }
    out_chunk_t *o = t->out;
    t->out = NULL;
    o->user = user;
    uv_buf_t b;
    b.base = o->data;
    b.len = o->len;
    int rc = gh_stream_write(&t->tcp->base, &o->wr, &b, 1, chunk_written);
    if (rc < 0)
        free(o);
    return rc;
}

static int encrypt_send(tls_stream_t *t, gh_write_req_t *req, const uv_buf_t *bufs,
                        unsigned nbufs)
{
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    /* One allocation for the whole write when we can; bio_write grows it
     * otherwise. */
    (void)out_reserve(t, total + (total / RECORD_PLAIN + 1) * RECORD_OVERHEAD);
    ERR_clear_error();
    for (unsigned i = 0; i < nbufs; i++) {
        const char *p = bufs[i].base;
        size_t left = bufs[i].len;
        while (left) {
            size_t w = 0;
            if (SSL_write_ex(t->ssl, p, left, &w) != 1) {
                char why[256];
                set_error(t, "write failed: %s", gh__tls_errstr(why, sizeof(why), "error"));
                free(t->out);
                t->out = NULL;
                t->fatal = UV_EPROTO;
                return UV_EPROTO;
            }
            p += w;
            left -= w;
        }
    }
    return flush(t, req);
}

static queued_t *dequeue(tls_stream_t *t)
{
    queued_t *q = t->wq;
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
static void fail_queue(tls_stream_t *t, int status)
{
    queued_t *q;
    while ((q = dequeue(t)) != NULL) {
        gh_write_req_t *req = q->req;
        free(q);
        req->cb(req, status);
    }
}

static int do_shutdown(tls_stream_t *t)
{
    t->shut_pending = false;
    t->shut_sent = true;
    /* Sends close_notify without waiting for the peer's: the read side stays
     * open (a half-close, as with TCP). */
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    int rc = flush(t, NULL);
    return rc < 0 ? rc : gh_stream_shutdown(&t->tcp->base);
}

/* After the handshake: sends what was written before it, in order. */
static void run_queue(tls_stream_t *t)
{
    while (t->wq && !t->base.closing) {
        queued_t *q = dequeue(t);
        gh_write_req_t *req = q->req;
        int rc = t->fatal ? t->fatal : encrypt_send(t, req, q->bufs, q->nbufs);
        free(q);
        if (rc < 0)
            req->cb(req, rc);
    }
    if (t->shut_pending && !t->wq && !t->base.closing && !t->fatal)
        do_shutdown(t);
}

/* ---- reading ---- */

static void describe_failure(tls_stream_t *t)
{
    char why[256];
    long v = SSL_get_verify_result(t->ssl);
    if (!t->is_server && t->client->verify && v != X509_V_OK) {
        ERR_clear_error();
        if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
            X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
            const char *host = X509_VERIFY_PARAM_get0_host(p, 0);
            set_error(t, "certificate verify failed: %s (the certificate does not cover %s)",
                      X509_verify_cert_error_string(v), host ? host : "that address");
        } else {
            set_error(t, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        }
        return;
    }
    set_error(t, "handshake failed: %s",
              gh__tls_errstr(why, sizeof(why), "connection broken"));
}

static void handshake_failed(tls_stream_t *t, int status)
{
    count(t, false);
    t->fatal = status;
    t->pending_err = status;
    if (t->out && !t->base.closing)
        flush(t, NULL);     /* the alert that tells the peer why */
    fail_queue(t, status);
}

/* After SSL_peek failed with e: unless it only wants more input, the read
 * side has ended (close_notify or an error) and the user is told. */
static void read_failed(tls_stream_t *t, int e)
{
    if (e == SSL_ERROR_WANT_READ)
        return;
    int status = UV_EOF;
    if (e != SSL_ERROR_ZERO_RETURN) {
        char why[256];
        set_error(t, "read failed: %s", gh__tls_errstr(why, sizeof(why), "protocol error"));
        t->fatal = status = UV_EPROTO;
    }
    t->read_done = true;
    uv_buf_t b = uv_buf_init(NULL, 0);
    t->base.on_alloc(&t->base, CIPHER_IN_SIZE, &b);
    if (!t->base.closing)
        t->base.on_read(&t->base, status, &b);
}

/* Advances the handshake and hands plaintext to the user while it reads,
 * from t->in. Stops when the input is used up or the user stops. */
static void pump(tls_stream_t *t)
{
    while (!t->base.closing && !t->fatal) {
        if (!t->hs_done) {
            ERR_clear_error();
            int r = SSL_do_handshake(t->ssl);
            if (r == 1) {
                t->hs_done = true;
                count(t, true);
                run_queue(t);
                continue;
            }
            if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ)
                break;
            describe_failure(t);
            handshake_failed(t, UV_EPROTO);
            break;
        }
        if (!t->reading || t->read_done || t->pending_err)
            break;
        /* Asks for the user's buffer only when plaintext is there: records
         * that carry none (tickets, key updates, a partial record) must not
         * make the user allocate. SSL_peek decrypts the next record into
         * OpenSSL's buffer, where SSL_read then finds it. */
        if (SSL_pending(t->ssl) == 0) {
            char probe;
            size_t n = 0;
            if (t->inlen == 0)
                break;
            ERR_clear_error();
            if (SSL_peek_ex(t->ssl, &probe, 1, &n) != 1) {
                read_failed(t, SSL_get_error(t->ssl, 0));
                break;
            }
        }
        uv_buf_t b = uv_buf_init(NULL, 0);
        t->base.on_alloc(&t->base, CIPHER_IN_SIZE, &b);
        if (!b.base || !b.len) {
            t->base.on_read(&t->base, UV_ENOBUFS, &b);
            break;
        }
        size_t got = 0;
        ERR_clear_error();
        if (SSL_read_ex(t->ssl, b.base, b.len, &got) != 1) {
            /* cannot happen with data pending; hand the buffer back */
            t->base.on_read(&t->base, 0, &b);
            break;
        }
        t->base.on_read(&t->base, (ssize_t)got, &b);
    }
    /* Alerts, key update answers, session tickets. */
    if (t->out && !t->base.closing)
        flush(t, NULL);
}

/* Reads TCP only while it is any use: during the handshake, and after it
 * while the user reads and nothing is kept back. */
static int sync_inner(tls_stream_t *t)
{
    bool want = !t->base.closing && !t->fatal && !t->read_done && !t->pending_err &&
                !t->saved && (t->hs_done ? t->reading : t->started);
    if (want == t->inner_reading)
        return 0;
    gh_stream_t *in = &t->tcp->base;
    int rc = want ? gh_stream_read_start(in) : gh_stream_read_stop(in);
    if (rc == 0)
        t->inner_reading = want;
    return rc;
}

static void deliver_pending(tls_stream_t *t)
{
    if (!t->pending_err || !t->reading || t->base.closing)
        return;
    int err = t->pending_err;
    t->pending_err = 0;
    t->read_done = true;
    uv_buf_t b = uv_buf_init(NULL, 0);
    t->base.on_alloc(&t->base, CIPHER_IN_SIZE, &b);
    if (!t->base.closing)
        t->base.on_read(&t->base, err, &b);
}

static void defer_cb(uv_timer_t *h);
static void defer_closed(uv_handle_t *h);

/* Runs defer_cb on the next loop turn: kept data must not be delivered from
 * inside read_start, whose caller does not expect its callbacks yet. */
static int schedule_defer(tls_stream_t *t)
{
    if (!t->defer) {
        t->defer = malloc(sizeof(*t->defer));
        if (!t->defer)
            return UV_ENOMEM;
        uv_timer_init(t->tcp->tcp.loop, t->defer);
        t->defer->data = t;
        t->handles++;
    }
    return uv_timer_start(t->defer, defer_cb, 0, 0);
}

static bool has_kept(const tls_stream_t *t)
{
    return t->saved || t->pending_err ||
           (t->hs_done && !t->fatal && !t->read_done && SSL_pending(t->ssl) > 0);
}

static void after_input(tls_stream_t *t)
{
    if (t->base.closing)
        return;
    deliver_pending(t);
    if (t->base.closing)
        return;
    if (t->reading && has_kept(t))
        schedule_defer(t);
    sync_inner(t);
}

static void defer_cb(uv_timer_t *h)
{
    tls_stream_t *t = h->data;
    if (t->base.closing || !t->reading)
        return;
    if (t->saved) {
        t->in = t->saved + t->saved_off;
        t->inlen = t->saved_len - t->saved_off;
        pump(t);
        if (t->inlen && !t->base.closing && !t->fatal && !t->read_done) {
            t->saved_off = t->saved_len - t->inlen;
        } else {
            free(t->saved);
            t->saved = NULL;
        }
        t->in = NULL;
        t->inlen = 0;
    } else {
        pump(t);
    }
    after_input(t);
}

static void inner_alloc(gh_stream_t *in, size_t suggested, uv_buf_t *buf)
{
    (void)in;
    (void)suggested;
    buf->base = cipher_in;
    buf->len = sizeof(cipher_in);
}

static void tcp_ended(tls_stream_t *t, int status)
{
    if (!t->hs_done) {
        if (status == UV_EOF && t->is_server && !t->got_bytes) {
            handshake_failed(t, UV_EOF);    /* nothing was ever said */
            return;
        }
        if (status == UV_EOF)
            set_error(t, "connection closed during the handshake");
        else
            set_error(t, "connection failed during the handshake: %s", uv_strerror(status));
        handshake_failed(t, status == UV_EOF ? UV_EPROTO : status);
        return;
    }
    /* A peer that closes without close_notify is taken as a clean end
     * (many servers do that; HTTP framing catches truncated bodies), unless
     * it stopped in the middle of a record. */
    if (status == UV_EOF && SSL_has_pending(t->ssl)) {
        set_error(t, "connection closed in the middle of a TLS record");
        status = UV_EPROTO;
    }
    if (status != UV_EOF)
        t->fatal = status;
    t->pending_err = status;
}

static void inner_read(gh_stream_t *in, ssize_t nread, const uv_buf_t *buf)
{
    tls_stream_t *t = in->data;
    if (nread == 0 || t->base.closing)
        return;
    if (nread < 0) {
        /* Nothing more can come; libuv stops on EOF but not on every error. */
        gh_stream_read_stop(in);
        t->inner_reading = false;
        tcp_ended(t, (int)nread);
        after_input(t);
        return;
    }
    t->got_bytes = true;
    t->in = buf->base;
    t->inlen = (size_t)nread;
    pump(t);
    if (t->inlen && !t->base.closing && !t->fatal && !t->read_done) {
        t->saved = malloc(t->inlen);
        if (t->saved) {
            memcpy(t->saved, t->in, t->inlen);
            t->saved_off = 0;
            t->saved_len = t->inlen;
        } else {
            set_error(t, "out of memory");
            t->fatal = t->pending_err = UV_ENOMEM;
        }
    }
    t->in = NULL;
    t->inlen = 0;
    after_input(t);
}

/* ---- closing ---- */

static void finalize(tls_stream_t *t)
{
    fail_queue(t, UV_ECANCELED);
    if (!t->hs_done)
        count(t, false);
    if (t->base.on_close)
        t->base.on_close(&t->base);
    /* SSL_free marks the session unresumable when no close_notify went
     * out, a TLS 1.0 rule that TLS 1.1 dropped; HTTP peers close without it
     * all the time, and it would leave our client cache full of dead
     * sessions. A fatal alert still invalidates the session (OpenSSL does
     * that when the alert is sent or received). */
    if (t->hs_done && !t->fatal) {
        SSL_set_shutdown(t->ssl, SSL_get_shutdown(t->ssl) | SSL_SENT_SHUTDOWN);
        /* A TLS 1.2 ticket renewed during a resumed handshake reaches no
         * callback (and the old session is now spent): keep the new one. */
        SSL_SESSION *sess = t->client ? SSL_get1_session(t->ssl) : NULL;
        if (sess && !gh__tls_client_session_put(t->client, t->session_key, sess))
            SSL_SESSION_free(sess);
    }
    SSL_free(t->ssl);
    free(t->out);
    free(t->saved);
    free(t->error);
    free(t->session_key);
    gh__tls_server_release(t->server);
    gh__tls_client_release(t->client);
    free(t);
}

static void inner_closed(gh_stream_t *in)
{
    tls_stream_t *t = in->data;
    t->tcp = NULL;      /* its owner may free it from our on_close */
    if (--t->handles == 0)
        finalize(t);
}

static void defer_closed(uv_handle_t *h)
{
    tls_stream_t *t = h->data;
    free(h);
    t->defer = NULL;
    if (--t->handles == 0)
        finalize(t);
}

/* ---- gh_stream_ops_t ---- */

static int tls_read_start(gh_stream_t *s)
{
    tls_stream_t *t = (tls_stream_t *)s;
    if (s->closing)
        return UV_EINVAL;
    t->reading = true;
    t->started = true;      /* a server handshake begins with the first read */
    if (has_kept(t)) {
        int rc = schedule_defer(t);
        if (rc < 0)
            return rc;
    }
    return sync_inner(t);
}

static int tls_read_stop(gh_stream_t *s)
{
    tls_stream_t *t = (tls_stream_t *)s;
    t->reading = false;
    if (s->closing)
        return 0;
    return sync_inner(t);   /* keeps reading TCP while the handshake runs */
}

static int tls_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs,
                     unsigned nbufs, gh_write_cb cb)
{
    tls_stream_t *t = (tls_stream_t *)s;
    req->stream = s;
    req->cb = cb;
    if (s->closing || t->shut_pending || t->shut_sent)
        return UV_EPIPE;
    if (t->fatal)
        return t->fatal;
    if (t->hs_done && !t->wq)
        return encrypt_send(t, req, bufs, nbufs);
    queued_t *q = malloc(sizeof(*q) + nbufs * sizeof(uv_buf_t));
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

static int tls_shutdown(gh_stream_t *s)
{
    tls_stream_t *t = (tls_stream_t *)s;
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

static void tls_close(gh_stream_t *s)
{
    tls_stream_t *t = (tls_stream_t *)s;
    if (t->defer) {
        uv_timer_stop(t->defer);
        uv_close((uv_handle_t *)t->defer, defer_closed);
    }
    gh_stream_close(&t->tcp->base);
}

static size_t tls_write_queue_size(const gh_stream_t *s)
{
    const tls_stream_t *t = (const tls_stream_t *)s;
    size_t n = t->wq_bytes + (t->out ? t->out->len : 0);
    if (t->tcp)
        n += t->tcp->base.ops->write_queue_size(&t->tcp->base);
    return n;
}

static const gh_stream_ops_t tls_ops = {
    .read_start = tls_read_start,
    .read_stop = tls_read_stop,
    .write = tls_write,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .write_queue_size = tls_write_queue_size,
};

/* ---- construction ---- */

static tls_stream_t *stream_new(SSL_CTX *ctx, gh_tcp_stream_t *tcp)
{
    pthread_once(&bio_once, bio_method_init);
    if (!bio_method)
        return NULL;
    tls_stream_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ssl = SSL_new(ctx);
    BIO *bio = t->ssl ? BIO_new(bio_method) : NULL;
    if (!bio) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    /* The user's settings on tcp carry over, so code that set data and
     * on_close before wrapping keeps working. */
    t->base.ops = &tls_ops;
    t->base.data = tcp->base.data;
    t->base.on_alloc = tcp->base.on_alloc;
    t->base.on_read = tcp->base.on_read;
    t->base.on_close = tcp->base.on_close;
    t->base.closing = 0;
    t->tcp = tcp;
    t->wq_tail = &t->wq;
    t->handles = 1;
    return t;
}

static void take_over(tls_stream_t *t)
{
    gh_stream_t *in = &t->tcp->base;
    in->data = t;
    in->on_alloc = inner_alloc;
    in->on_read = inner_read;
    in->on_close = inner_closed;
}

gh_stream_t *gh_tls_stream_server(gh_tls_server_t *srv, gh_tcp_stream_t *tcp)
{
    tls_stream_t *t = stream_new(srv->ctx[0], tcp);
    if (!t)
        return NULL;
    gh__tls_server_retain(srv);
    t->server = srv;
    t->is_server = true;
    SSL_set_accept_state(t->ssl);
    take_over(t);
    return &t->base;
}

static int is_ip_literal(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

gh_stream_t *gh_tls_stream_client(gh_tls_client_t *cli, gh_tcp_stream_t *tcp, const char *sni)
{
    tls_stream_t *t = stream_new(cli->ctx, tcp);
    if (!t)
        return NULL;
    gh__tls_client_retain(cli);
    t->client = cli;
    SSL_set_connect_state(t->ssl);
    int ok = 1;
    if (sni && *sni) {
        if (is_ip_literal(sni)) {
            /* RFC 6066: no IP addresses in SNI; check the IP SAN instead. */
            if (cli->verify)
                ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), sni);
        } else {
            ok = SSL_set_tlsext_host_name(t->ssl, sni);
            if (ok && cli->verify) {
                SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                ok = SSL_set1_host(t->ssl, sni);
            }
        }
    }
    if (ok && sni && *sni) {
        ok = (t->session_key = strdup(sni)) != NULL;
        SSL_set_app_data(t->ssl, t->session_key);
        SSL_SESSION *sess = ok ? gh__tls_client_session(cli, sni) : NULL;
        if (sess) {
            SSL_set_session(t->ssl, sess);  /* a stale one just means a full handshake */
            SSL_SESSION_free(sess);
        }
    }
    /* The ClientHello goes out now; failing this early is a bug or no
     * memory, so the caller still owns tcp. */
    ERR_clear_error();
    int r = ok ? SSL_do_handshake(t->ssl) : 0;
    if (!ok || (r != 1 && SSL_get_error(t->ssl, r) != SSL_ERROR_WANT_READ)) {
        ERR_clear_error();
        SSL_free(t->ssl);
        gh__tls_client_release(cli);
        free(t->session_key);
        free(t);
        return NULL;
    }
    take_over(t);
    t->started = true;
    int rc = flush(t, NULL);
    if (rc < 0) {
        set_error(t, "cannot send the handshake: %s", uv_strerror(rc));
        handshake_failed(t, rc);
    }
    sync_inner(t);
    return &t->base;
}

/* ---- queries ---- */

static const tls_stream_t *as_tls(const gh_stream_t *s)
{
    return s && s->ops == &tls_ops ? (const tls_stream_t *)s : NULL;
}

const char *gh_tls_stream_sni(const gh_stream_t *s)
{
    const tls_stream_t *t = as_tls(s);
    return t ? SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

const char *gh_tls_stream_version(const gh_stream_t *s)
{
    const tls_stream_t *t = as_tls(s);
    return t && t->hs_done ? SSL_get_version(t->ssl) : NULL;
}

const char *gh_tls_stream_alpn(const gh_stream_t *s)
{
    const tls_stream_t *t = as_tls(s);
    const unsigned char *p = NULL;
    unsigned len = 0;
    if (!t || !t->hs_done)
        return NULL;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    return len == 8 && memcmp(p, "http/1.1", 8) == 0 ? "http/1.1" : NULL;
}

const char *gh_tls_stream_error(const gh_stream_t *s)
{
    const tls_stream_t *t = as_tls(s);
    return t ? t->error : NULL;
}

SSL *gh__tls_stream_ssl(const gh_stream_t *s)
{
    const tls_stream_t *t = as_tls(s);
    return t ? t->ssl : NULL;
}

void gh_tls_stats(gh_tls_stats_t *out)
{
    out->handshakes = atomic_load_explicit(&server_ok, memory_order_relaxed);
    out->handshake_failures = atomic_load_explicit(&server_failed, memory_order_relaxed);
}

void gh_tls_client_stats(gh_tls_stats_t *out)
{
    out->handshakes = atomic_load_explicit(&client_ok, memory_order_relaxed);
    out->handshake_failures = atomic_load_explicit(&client_failed, memory_order_relaxed);
}
