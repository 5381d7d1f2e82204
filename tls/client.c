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
    return t;

fail:
    ERR_clear_error();
    SSL_CTX_free(t->ctx);
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
    SSL_CTX_free(t->ctx);
    free(t);
}

void gh_tls_client_free(gh_tls_client_t *t)
{
    gh__tls_client_release(t);
}
