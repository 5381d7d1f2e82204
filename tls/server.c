/* Server contexts: one SSL_CTX per certificate pair, all with the same
 * settings; the SNI callback moves a connection from the first (default)
 * context to the one whose certificate covers the name the client asked
 * for. Also the deep checks of `gatehouse -t` on the certificates. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include "conf/config.h"
#include "tls/tls-int.h"

#define EXPIRY_WARN_DAYS 14

/* ---- names ---- */

static int name_cmp(const void *a, const void *b)
{
    const gh__tls_name_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->cert < y->cert ? -1 : x->cert > y->cert;
}

static const gh__tls_name_t *find_name(const gh_tls_server_t *t, const char *name)
{
    gh__tls_name_t key = { .name = (char *)name, .cert = 0 };
    size_t lo = 0, hi = t->nnames;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key.name, t->names[mid].name);
        if (c == 0)
            return &t->names[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

long gh__tls_server_lookup(const gh_tls_server_t *t, const char *host)
{
    char buf[256];
    size_t len = strlen(host);
    if (len && host[len - 1] == '.')
        len--;
    if (!len || len >= sizeof(buf) - 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        buf[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    buf[len] = '\0';
    char *name = buf;

    const gh__tls_name_t *n = find_name(t, name);
    if (n)
        return (long)n->cert;
    /* RFC 6125: "*.example.com" stands for exactly one whole label, so
     * a.example.com matches and a.b.example.com does not; and never a
     * wildcard over a single label like "*.com". The last character of
     * the first label becomes "*" and the name is looked up from there. */
    char *dot = strchr(name, '.');
    if (!dot || dot == name || !strchr(dot + 1, '.'))
        return -1;
    char *star = dot - 1;
    *star = '*';
    n = find_name(t, star);
    return n ? (long)n->cert : -1;
}

/* ---- callbacks ---- */

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const gh_tls_server_t *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    /* No name or an unknown one: the first certificate answers. Refusing
     * would only break clients that probe by IP. */
    long i = name ? gh__tls_server_lookup(t, name) : -1;
    if (i > 0 && SSL_set_SSL_CTX(ssl, t->ctx[i]) == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    unsigned char sellen = 0;
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto(&sel, &sellen, ours, sizeof(ours) - 1, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        *outlen = sellen;
        return SSL_TLSEXT_ERR_OK;
    }
    /* A client offering only h2 gets no ALPN answer rather than a fatal
     * alert: it may still speak HTTP/1.1, and if not, the HTTP layer answers
     * its preface with 505 and a reason a person can read. */
    return SSL_TLSEXT_ERR_NOACK;
}

/* Keeps OpenSSL from prompting on the terminal for a key passphrase. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* ---- loading ---- */

static void format_time(const ASN1_TIME *t, char *buf, size_t len)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, len, "%Y-%m-%d %H:%M UTC", &tm) == 0)
        snprintf(buf, len, "(unknown date)");
}

static void check_dates(X509 *cert, const gh_cert_conf_t *cc, gh_errors_t *errs)
{
    char when[64];
    int days = 0, secs = 0;
    const ASN1_TIME *nb = X509_get0_notBefore(cert), *na = X509_get0_notAfter(cert);
    if (ASN1_TIME_diff(&days, &secs, NULL, nb) == 1 && (days > 0 || secs > 0)) {
        format_time(nb, when, sizeof(when));
        gh_errors_add(errs, &cc->loc, "warning: certificate %s is not valid before %s",
                      cc->cert, when);
    }
    if (ASN1_TIME_diff(&days, &secs, NULL, na) != 1)
        return;
    format_time(na, when, sizeof(when));
    if (days < 0 || secs < 0 || (days == 0 && secs == 0))
        gh_errors_add(errs, &cc->loc, "warning: certificate %s expired on %s", cc->cert, when);
    else if (days < EXPIRY_WARN_DAYS) {
        days += secs > 0;   /* "in 5 days" for 4 days and 23 hours */
        gh_errors_add(errs, &cc->loc, "warning: certificate %s expires in %d day%s, on %s",
                      cc->cert, days, days == 1 ? "" : "s", when);
    }
}

static BIO *open_pem(const char *path, const char *what, const gh_cert_conf_t *cc,
                     gh_errors_t *errs)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        gh_errors_add(errs, &cc->loc, "cannot read %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    BIO *b = BIO_new_fp(f, BIO_CLOSE);
    if (!b) {
        fclose(f);
        gh_errors_add(errs, &cc->loc, "cannot read %s %s: out of memory", what, path);
    }
    return b;
}

/* Reads the leaf and its chain from cc->cert. Returns the leaf, chain in
 * *chain, or NULL after adding an error. */
static X509 *read_certs(const gh_cert_conf_t *cc, STACK_OF(X509) **chain, gh_errors_t *errs)
{
    char why[256];
    BIO *b = open_pem(cc->cert, "certificate", cc, errs);
    if (!b)
        return NULL;
    ERR_clear_error();
    X509 *leaf = PEM_read_bio_X509_AUX(b, NULL, no_passphrase, NULL);
    if (!leaf) {
        gh_errors_add(errs, &cc->loc, "cannot load certificate %s: %s", cc->cert,
                      gh__tls_errstr(why, sizeof(why), "no certificate found"));
        BIO_free(b);
        return NULL;
    }
    *chain = sk_X509_new_null();
    X509 *x;
    while (*chain && (x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL)) != NULL) {
        if (!sk_X509_push(*chain, x)) {
            X509_free(x);
            break;
        }
    }
    /* The loop ends at the end of the file with "no start line"; anything
     * else is a broken certificate in the chain. */
    unsigned long e = ERR_peek_last_error();
    if (!*chain || (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM &&
                           ERR_GET_REASON(e) == PEM_R_NO_START_LINE))) {
        gh_errors_add(errs, &cc->loc, "cannot load certificate chain in %s: %s", cc->cert,
                      gh__tls_errstr(why, sizeof(why), "out of memory"));
        sk_X509_pop_free(*chain, X509_free);
        *chain = NULL;
        X509_free(leaf);
        BIO_free(b);
        return NULL;
    }
    ERR_clear_error();
    BIO_free(b);
    return leaf;
}

static EVP_PKEY *read_key(const gh_cert_conf_t *cc, gh_errors_t *errs)
{
    char why[256];
    BIO *b = open_pem(cc->key, "key", cc, errs);
    if (!b)
        return NULL;
    ERR_clear_error();
    EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    if (!key)
        gh_errors_add(errs, &cc->loc, "cannot load key %s: %s (keys must be PEM, unencrypted)",
                      cc->key, gh__tls_errstr(why, sizeof(why), "no key found"));
    BIO_free(b);
    return key;
}

static int add_names(gh_tls_server_t *t, X509 *cert, size_t idx)
{
    char **list;
    long n = gh__tls_cert_names(cert, &list);
    if (n < 0)
        return -1;
    gh__tls_name_t *grown = realloc(t->names, (t->nnames + (size_t)n + 1) * sizeof(*grown));
    if (!grown) {
        for (long i = 0; i < n; i++)
            free(list[i]);
        free(list);
        return -1;
    }
    t->names = grown;
    for (long i = 0; i < n; i++)
        t->names[t->nnames++] = (gh__tls_name_t){ .name = list[i], .cert = idx };
    free(list);
    return 0;
}

/* Builds the context of pair idx. Returns NULL after adding errors. */
static SSL_CTX *load_pair(gh_tls_server_t *t, const gh_config_t *cfg, size_t idx,
                          gh_errors_t *errs)
{
    const gh_cert_conf_t *cc = &cfg->tls.certs[idx];
    char why[256];
    STACK_OF(X509) *chain = NULL;
    X509 *leaf = read_certs(cc, &chain, errs);
    EVP_PKEY *key = read_key(cc, errs);
    SSL_CTX *ctx = NULL;
    if (!leaf || !key)
        goto fail;
    if (X509_check_private_key(leaf, key) != 1) {
        ERR_clear_error();
        gh_errors_add(errs, &cc->loc, "key %s does not match certificate %s", cc->key, cc->cert);
        goto fail;
    }
    check_dates(leaf, cc, errs);

    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || gh__tls_ctx_common(ctx, cfg->tls.min_version, why, sizeof(why)) < 0) {
        if (!ctx)
            gh__tls_errstr(why, sizeof(why), "out of memory");
        gh_errors_add(errs, &cc->loc, "cannot set up TLS: %s", why);
        goto fail;
    }
    /* The chain is set explicitly so that the full chain goes out exactly as
     * the file has it, never rebuilt from a trust store. */
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_set1_chain(ctx, chain) != 1) {
        gh_errors_add(errs, &cc->loc, "cannot use certificate %s: %s", cc->cert,
                      gh__tls_errstr(why, sizeof(why), "rejected"));
        goto fail;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
    static const unsigned char sid_ctx[] = "gatehouse";
    if (gh__tls_tickets_install(ctx) < 0 ||
        SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) != 1 ||
        add_names(t, leaf, idx) < 0) {
        gh_errors_add(errs, &cc->loc, "cannot set up TLS: %s",
                      gh__tls_errstr(why, sizeof(why), "out of memory"));
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    return ctx;

fail:
    SSL_CTX_free(ctx);
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    ERR_clear_error();
    return NULL;
}

/* Sorts the names and drops repeats, keeping the first certificate's. */
static void index_names(gh_tls_server_t *t)
{
    if (!t->nnames)
        return;
    qsort(t->names, t->nnames, sizeof(*t->names), name_cmp);
    size_t out = 1;
    for (size_t i = 1; i < t->nnames; i++) {
        if (strcmp(t->names[i].name, t->names[out - 1].name) == 0)
            free(t->names[i].name);
        else
            t->names[out++] = t->names[i];
    }
    t->nnames = out;
}

static int is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

static void check_routes(const gh_tls_server_t *t, const gh_config_t *cfg, gh_errors_t *errs)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gh_route_conf_t *r = &cfg->routes[i];
        if (!r->host || strcmp(r->host, "*") == 0 || is_ip_literal(r->host))
            continue;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = cfg->routes[j].host && strcmp(cfg->routes[j].host, r->host) == 0;
        if (!seen && gh__tls_server_lookup(t, r->host) < 0)
            gh_errors_add(errs, &r->loc,
                          "warning: no certificate in tls.certificates covers route host %s",
                          r->host);
    }
}

static const gh_loc_t *first_tls_listener(const gh_config_t *cfg)
{
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (cfg->listens[i].tls)
            return &cfg->listens[i].loc;
    }
    return NULL;
}

gh_tls_server_t *gh_tls_server_new(const gh_config_t *cfg, gh_errors_t *errs)
{
    if (cfg->tls.ncerts == 0) {
        gh_loc_t file = { .file = cfg->file, .line = 0, .col = 0 };
        const gh_loc_t *loc = first_tls_listener(cfg);
        gh_errors_add(errs, loc ? loc : &file,
                      "tls: true needs at least one pair in tls.certificates");
        return NULL;
    }
    gh_tls_server_t *t = calloc(1, sizeof(*t));
    if (!t || !(t->ctx = calloc(cfg->tls.ncerts, sizeof(*t->ctx)))) {
        free(t);
        gh_errors_add(errs, NULL, "out of memory");
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->nctx = cfg->tls.ncerts;
    int failed = 0;
    for (size_t i = 0; i < t->nctx; i++) {
        t->ctx[i] = load_pair(t, cfg, i, errs);
        failed |= t->ctx[i] == NULL;
    }
    if (failed) {
        gh__tls_server_release(t);
        return NULL;
    }
    index_names(t);
    check_routes(t, cfg, errs);
    return t;
}

void gh__tls_server_retain(gh_tls_server_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void gh__tls_server_release(gh_tls_server_t *t)
{
    if (!t || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < t->nctx; i++)
        SSL_CTX_free(t->ctx[i]);
    for (size_t i = 0; i < t->nnames; i++)
        free(t->names[i].name);
    free(t->names);
    free(t->ctx);
    free(t);
}

void gh_tls_server_free(gh_tls_server_t *t)
{
    gh__tls_server_release(t);
}
