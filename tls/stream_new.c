/* Making TLS streams, what they can tell about themselves, and the
 * handshake counters. */
#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "tls/stream-int.h"

static atomic_ullong server_ok, server_failed, client_ok, client_failed;

void gh__tls_count(gh__tls_stream_t *t, bool ok)
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

/* ---- construction ---- */

static gh__tls_stream_t *stream_new(SSL_CTX *ctx, gh_tcp_stream_t *tcp)
{
    const BIO_METHOD *method = gh__tls_bio_method();
    if (!method)
        return NULL;
    gh__tls_stream_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ssl = SSL_new(ctx);
    BIO *bio = t->ssl ? BIO_new(method) : NULL;
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
    t->base.ops = &gh__tls_stream_ops;
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

gh_stream_t *gh_tls_stream_server(gh_tls_server_t *srv, gh_tcp_stream_t *tcp)
{
    gh__tls_stream_t *t = stream_new(srv->ctx[0], tcp);
    if (!t)
        return NULL;
    gh__tls_server_retain(srv);
    t->server = srv;
    t->is_server = true;
    SSL_set_accept_state(t->ssl);
    gh__tls_take_over(t);
    return &t->base;
}

gh_stream_t *gh_tls_stream_server_prefixed(gh_tls_server_t *srv, gh_tcp_stream_t *tcp,
                                           const void *head, size_t len)
{
    char *copy = NULL;
    if (len && !(copy = malloc(len)))
        return NULL;
    gh_stream_t *s = gh_tls_stream_server(srv, tcp);
    if (!s || !len) {
        free(copy);
        return s;
    }
    /* Taken as if it had just come from TCP and been kept back: read_start
     * hands it to OpenSSL before TCP is read again. */
    gh__tls_stream_t *t = (gh__tls_stream_t *)s;
    memcpy(copy, head, len);
    t->saved = copy;
    t->saved_off = 0;
    t->saved_len = len;
    t->got_bytes = true;
    return s;
}

static int is_ip_literal(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

gh_stream_t *gh_tls_stream_client(gh_tls_client_t *cli, gh_tcp_stream_t *tcp, const char *sni)
{
    gh__tls_stream_t *t = stream_new(cli->ctx, tcp);
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
    gh__tls_take_over(t);
    t->started = true;
    int rc = gh__tls_flush(t, NULL);
    if (rc < 0) {
        gh__tls_set_error(t, "cannot send the handshake: %s", uv_strerror(rc));
        gh__tls_handshake_failed(t, rc);
    }
    gh__tls_sync_inner(t);
    return &t->base;
}

/* ---- queries ---- */

static const gh__tls_stream_t *as_tls(const gh_stream_t *s)
{
    return s && s->ops == &gh__tls_stream_ops ? (const gh__tls_stream_t *)s : NULL;
}

const char *gh_tls_stream_sni(const gh_stream_t *s)
{
    const gh__tls_stream_t *t = as_tls(s);
    return t ? SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

const char *gh_tls_stream_version(const gh_stream_t *s)
{
    const gh__tls_stream_t *t = as_tls(s);
    return t && t->hs_done ? SSL_get_version(t->ssl) : NULL;
}

const char *gh_tls_stream_alpn(const gh_stream_t *s)
{
    const gh__tls_stream_t *t = as_tls(s);
    const unsigned char *p = NULL;
    unsigned len = 0;
    if (!t || !t->hs_done)
        return NULL;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    return len == 8 && memcmp(p, "http/1.1", 8) == 0 ? "http/1.1" : NULL;
}

const char *gh_tls_stream_error(const gh_stream_t *s)
{
    const gh__tls_stream_t *t = as_tls(s);
    return t ? t->error : NULL;
}

SSL *gh__tls_stream_ssl(const gh_stream_t *s)
{
    const gh__tls_stream_t *t = as_tls(s);
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
