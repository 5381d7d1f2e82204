/* The TLS carrier of gh_stream_t: OpenSSL over a gh_tcp_stream_t. This
 * file: the handshake, reading, closing.
 *
 * Ciphertext is read into one buffer per thread: each TCP read is processed
 * to the end before returning to the loop, so nothing else can use it in
 * between. Ciphertext the user has no room for (it stopped reading) is the
 * only thing copied and kept, and TCP reading stops until it is used.
 *
 * Callbacks into the user can stop reading, write, or close the stream.
 * Closing only starts closing (uv_close); the struct and the SSL are freed
 * from the close callback, so within one call stack they stay valid and the
 * loops below only need to re-check `closing` after every callback. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "tls/stream-int.h"

#define CIPHER_IN_SIZE 65536        /* what libuv suggests for one read */

static _Thread_local char cipher_in[CIPHER_IN_SIZE];

void gh__tls_set_error(gh__tls_stream_t *t, const char *fmt, ...)
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

/* ---- reading ---- */

static void describe_failure(gh__tls_stream_t *t)
{
    char why[256];
    long v = SSL_get_verify_result(t->ssl);
    if (!t->is_server && t->client->verify && v != X509_V_OK) {
        ERR_clear_error();
        if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
            X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
            const char *host = X509_VERIFY_PARAM_get0_host(p, 0);
            gh__tls_set_error(t,
                              "certificate verify failed: %s (the certificate does not cover %s)",
                              X509_verify_cert_error_string(v), host ? host : "that address");
        } else {
            gh__tls_set_error(t, "certificate verify failed: %s",
                              X509_verify_cert_error_string(v));
        }
        return;
    }
    gh__tls_set_error(t, "handshake failed: %s",
                      gh__tls_errstr(why, sizeof(why), "connection broken"));
}

void gh__tls_handshake_failed(gh__tls_stream_t *t, int status)
{
    gh__tls_count(t, false);
    t->fatal = status;
    t->pending_err = status;
    if (t->out && !t->base.closing)
        gh__tls_flush(t, NULL);     /* the alert that tells the peer why */
    gh__tls_fail_queue(t, status);
}

/* After SSL_peek failed with e: unless it only wants more input, the read
 * side has ended (close_notify or an error) and the user is told. */
static void read_failed(gh__tls_stream_t *t, int e)
{
    if (e == SSL_ERROR_WANT_READ)
        return;
    int status = UV_EOF;
    if (e != SSL_ERROR_ZERO_RETURN) {
        char why[256];
        gh__tls_set_error(t, "read failed: %s",
                          gh__tls_errstr(why, sizeof(why), "protocol error"));
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
static void pump(gh__tls_stream_t *t)
{
    while (!t->base.closing && !t->fatal) {
        if (!t->hs_done) {
            gh__tls_clear_errors();
            int r = SSL_do_handshake(t->ssl);
            if (r == 1) {
                t->hs_done = true;
                gh__tls_count(t, true);
                gh__tls_run_queue(t);
                continue;
            }
            if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ)
                break;
            describe_failure(t);
            gh__tls_handshake_failed(t, UV_EPROTO);
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
            gh__tls_clear_errors();
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
        gh__tls_clear_errors();
        if (SSL_read_ex(t->ssl, b.base, b.len, &got) != 1) {
            /* cannot happen with data pending; hand the buffer back */
            t->base.on_read(&t->base, 0, &b);
            break;
        }
        t->base.on_read(&t->base, (ssize_t)got, &b);
    }
    /* Alerts, key update answers, session tickets. */
    if (t->out && !t->base.closing)
        gh__tls_flush(t, NULL);
}

/* Reads TCP only while it is any use: during the handshake, and after it
 * while the user reads and nothing is kept back. */
int gh__tls_sync_inner(gh__tls_stream_t *t)
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

static void deliver_pending(gh__tls_stream_t *t)
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
static int schedule_defer(gh__tls_stream_t *t)
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

/* Whether kept input should be worked on now: the handshake goes on
 * whether the user reads or not, plaintext only goes to a reader. */
static bool wants_input(const gh__tls_stream_t *t)
{
    return t->started && (t->reading || !t->hs_done);
}

static bool has_kept(const gh__tls_stream_t *t)
{
    return t->saved || t->pending_err ||
           (t->hs_done && !t->fatal && !t->read_done && SSL_pending(t->ssl) > 0);
}

static void after_input(gh__tls_stream_t *t)
{
    if (t->base.closing)
        return;
    deliver_pending(t);
    if (t->base.closing)
        return;
    if (wants_input(t) && has_kept(t))
        schedule_defer(t);
    gh__tls_sync_inner(t);
}

static void defer_cb(uv_timer_t *h)
{
    gh__tls_stream_t *t = h->data;
    if (t->base.closing || !wants_input(t))
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

static void tcp_ended(gh__tls_stream_t *t, int status)
{
    if (!t->hs_done) {
        if (status == UV_EOF && t->is_server && !t->got_bytes) {
            gh__tls_handshake_failed(t, UV_EOF);    /* nothing was ever said */
            return;
        }
        if (status == UV_EOF)
            gh__tls_set_error(t, "connection closed during the handshake");
        else
            gh__tls_set_error(t, "connection failed during the handshake: %s",
                              uv_strerror(status));
        gh__tls_handshake_failed(t, status == UV_EOF ? UV_EPROTO : status);
        return;
    }
    /* A peer that closes without close_notify is taken as a clean end
     * (many servers do that; HTTP framing catches truncated bodies), unless
     * it stopped in the middle of a record. */
    if (status == UV_EOF && SSL_has_pending(t->ssl)) {
        gh__tls_set_error(t, "connection closed in the middle of a TLS record");
        status = UV_EPROTO;
    }
    if (status != UV_EOF)
        t->fatal = status;
    t->pending_err = status;
}

static void inner_read(gh_stream_t *in, ssize_t nread, const uv_buf_t *buf)
{
    gh__tls_stream_t *t = in->data;
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
            gh__tls_set_error(t, "out of memory");
            t->fatal = t->pending_err = UV_ENOMEM;
        }
    }
    t->in = NULL;
    t->inlen = 0;
    after_input(t);
}

/* ---- closing ---- */

static void finalize(gh__tls_stream_t *t)
{
    gh__tls_fail_queue(t, UV_ECANCELED);
    if (!t->hs_done)
        gh__tls_count(t, false);
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
    gh__tls_stream_t *t = in->data;
    t->tcp = NULL;      /* its owner may free it from our on_close */
    if (--t->handles == 0)
        finalize(t);
}

static void defer_closed(uv_handle_t *h)
{
    gh__tls_stream_t *t = h->data;
    free(h);
    t->defer = NULL;
    if (--t->handles == 0)
        finalize(t);
}

/* ---- gh_stream_ops_t ---- */

static int tls_read_start(gh_stream_t *s)
{
    gh__tls_stream_t *t = (gh__tls_stream_t *)s;
    if (s->closing)
        return UV_EINVAL;
    t->reading = true;
    t->started = true;      /* a server handshake begins with the first read */
    if (has_kept(t)) {
        int rc = schedule_defer(t);
        if (rc < 0)
            return rc;
    }
    return gh__tls_sync_inner(t);
}

static int tls_read_stop(gh_stream_t *s)
{
    gh__tls_stream_t *t = (gh__tls_stream_t *)s;
    t->reading = false;
    if (s->closing)
        return 0;
    return gh__tls_sync_inner(t);   /* keeps reading TCP while the handshake runs */
}

static void tls_close(gh_stream_t *s)
{
    gh__tls_stream_t *t = (gh__tls_stream_t *)s;
    if (t->defer) {
        uv_timer_stop(t->defer);
        uv_close((uv_handle_t *)t->defer, defer_closed);
    }
    gh_stream_close(&t->tcp->base);
}

const gh_stream_ops_t gh__tls_stream_ops = {
    .read_start = tls_read_start,
    .read_stop = tls_read_stop,
    .write = gh__tls_write,
    .shutdown = gh__tls_shutdown,
    .close = tls_close,
    .write_queue_size = gh__tls_write_queue_size,
};

void gh__tls_take_over(gh__tls_stream_t *t)
{
    gh_stream_t *in = &t->tcp->base;
    in->data = t;
    in->on_alloc = inner_alloc;
    in->on_read = inner_read;
    in->on_close = inner_closed;
}
