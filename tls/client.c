/* Client contexts for https:// upstreams and connector links: verify the
 * server against a CA file or the system store (unless verify: false),
 * offer ALPN http/1.1 so a server that also speaks h2 stays on HTTP/1.1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include "conf/config.h"
#include "tls/tls-int.h"

int gh__tls_client_session_put(gh_tls_client_t *t, const char *key, SSL_SESSION *sess)
{
    if (!key || !SSL_SESSION_is_resumable(sess))
        return 0;
    pthread_mutex_lock(&t->mu);
    unsigned i;
    for (i = 0; i < GH_TLS_CLIENT_SESSIONS; i++) {
        if (t->sessions[i].key && strcmp(t->sessions[i].key, key) == 0)
            break;
    }
    if (i < GH_TLS_CLIENT_SESSIONS && t->sessions[i].sess == sess) {
        pthread_mutex_unlock(&t->mu);
        return 0;
    }
    if (i == GH_TLS_CLIENT_SESSIONS) {
        char *copy = strdup(key);
        if (!copy) {
            pthread_mutex_unlock(&t->mu);
            return 0;
        }
        i = t->next_slot++ % GH_TLS_CLIENT_SESSIONS;
        free(t->sessions[i].key);
        t->sessions[i].key = copy;
    }
    SSL_SESSION_free(t->sessions[i].sess);
    t->sessions[i].sess = sess;
    pthread_mutex_unlock(&t->mu);
    return 1;
}

/* OpenSSL hands over each new session of a full handshake, and in TLS 1.3
 * each ticket as it arrives; returns 1 when the reference was kept. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    gh_tls_client_t *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    return t ? gh__tls_client_session_put(t, SSL_get_app_data(ssl), sess) : 0;
}

SSL_SESSION *gh__tls_client_session(gh_tls_client_t *t, const char *key)
{
    SSL_SESSION *sess = NULL;
    pthread_mutex_lock(&t->mu);
    for (unsigned i = 0; i < GH_TLS_CLIENT_SESSIONS; i++) {
        if (t->sessions[i].key && strcmp(t->sessions[i].key, key) == 0) {
            sess = t->sessions[i].sess;
            if (sess && !SSL_SESSION_up_ref(sess))
                sess = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return sess;
}

gh_tls_client_t *gh_tls_client_new_at(const gh_upstream_tls_conf_t *conf, const gh_loc_t *loc,
                                      gh_errors_t *errs)
{
    char why[256];
    /* An unset block means defaults, whatever its zeroed fields say. */
    int verify = conf && conf->set ? conf->verify : 1;
    const char *ca = conf && conf->set ? conf->ca : NULL;

    gh_tls_client_t *t = calloc(1, sizeof(*t));
    if (!t) {
        gh_errors_add(errs, loc, "out of memory");
        return NULL;
    }
    atomic_init(&t->refs, 1);
    pthread_mutex_init(&t->mu, NULL);
    t->verify = verify;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx || gh__tls_ctx_common(t->ctx, 0x0303, why, sizeof(why)) < 0) {
        if (!t->ctx)
            gh__tls_errstr(why, sizeof(why), "out of memory");
        gh_errors_add(errs, loc, "cannot set up upstream TLS: %s", why);
        goto fail;
    }
    static const unsigned char alpn[] = "\x08http/1.1";
    if (SSL_CTX_set_alpn_protos(t->ctx, alpn, sizeof(alpn) - 1) != 0) {
        gh_errors_add(errs, loc, "cannot set up upstream TLS: %s",
                      gh__tls_errstr(why, sizeof(why), "ALPN"));
        goto fail;
    }
    if (ca) {
        /* fopen first: OpenSSL's own message for a missing file does not say
         * which file or why. */
        FILE *f = fopen(ca, "r");
        if (!f) {
            gh_errors_add(errs, loc, "cannot read CA file %s: %s", ca, strerror(errno));
            goto fail;
        }
        fclose(f);
        ERR_clear_error();
        if (SSL_CTX_load_verify_locations(t->ctx, ca, NULL) != 1) {
            gh_errors_add(errs, loc, "cannot load CA file %s: %s", ca,
                          gh__tls_errstr(why, sizeof(why), "no certificate found"));
            goto fail;
        }
    } else if (verify && SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        gh_errors_add(errs, loc, "cannot load the system CA store: %s",
                      gh__tls_errstr(why, sizeof(why), "unknown error"));
        goto fail;
    }
    SSL_CTX_set_verify(t->ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    /* Sessions go to our small cache keyed by peer name, not to OpenSSL's
     * (which is keyed by session id and useless for picking one). */
    SSL_CTX_set_session_cache_mode(t->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(t->ctx, new_session_cb);
    SSL_CTX_set_app_data(t->ctx, t);
    return t;

fail:
    ERR_clear_error();
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    free(t);
    return NULL;
}

gh_tls_client_t *gh_tls_client_new(const gh_upstream_tls_conf_t *conf, gh_errors_t *errs)
{
    return gh_tls_client_new_at(conf, NULL, errs);
}

void gh__tls_client_retain(gh_tls_client_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void gh__tls_client_release(gh_tls_client_t *t)
{
    if (!t || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (unsigned i = 0; i < GH_TLS_CLIENT_SESSIONS; i++) {
        free(t->sessions[i].key);
        SSL_SESSION_free(t->sessions[i].sess);
    }
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void gh_tls_client_free(gh_tls_client_t *t)
{
    gh__tls_client_release(t);
}
