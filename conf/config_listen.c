/* The listen, admin and tls sections (SPEC.md section 2). */
#include <string.h>
#include <netinet/in.h>
#include "conf/config.h"
#include "conf/decode.h"

bool gh__same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port &&
               memcmp(&x->sin_addr, &y->sin_addr, sizeof(x->sin_addr)) == 0;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* Reads an address value into out/len; "host:port" with a numeric host. */
static int decode_address(gh__decoder_t *d, const gh_node_t *n, const char **text,
                          struct sockaddr_storage *out, socklen_t *len)
{
    if (gh_node_string(d->errs, n, text) < 0)
        return -1;
    if (gh_parse_sockaddr(*text, out, len) < 0) {
        gh_node_error(d->errs, n,
                      "invalid address '%s' (expected IP:PORT such as 0.0.0.0:80 or [::]:443)",
                      *text);
        return -1;
    }
    return 0;
}

static void decode_one_listen(gh__decoder_t *d, const gh_node_t *m)
{
    static const char *const keys[] = { "address", "tls", "proxy_protocol",
                                        "redirect_https", NULL };
    gh_config_t *c = d->cfg;
    if (!gh__map(d, m, keys, "listen"))
        return;

    gh_listen_conf_t l;
    memset(&l, 0, sizeof(l));
    l.loc = m->loc;
    const gh_node_t *n;
    bool ok = true;
    if ((n = gh_node_get(m, "tls")) && gh_node_bool(d->errs, n, &l.tls) == 0 && l.tls)
        gh__feature(d, GH_FEAT_LISTEN_TLS, gh_node_get_key(m, "tls"));
    if ((n = gh_node_get(m, "proxy_protocol")) &&
        gh_node_bool(d->errs, n, &l.proxy_protocol) == 0 && l.proxy_protocol)
        gh__feature(d, GH_FEAT_PROXY_PROTOCOL, gh_node_get_key(m, "proxy_protocol"));
    if ((n = gh_node_get(m, "redirect_https")))
        gh_node_bool(d->errs, n, &l.redirect_https);
    if (l.tls && l.redirect_https)
        gh_node_error(d->errs, gh_node_get_key(m, "redirect_https"),
                      "redirect_https on a tls listener would redirect to itself");

    const char *text;
    if (!(n = gh_node_get(m, "address"))) {
        gh_node_error(d->errs, m, "missing 'address' in listen");
        ok = false;
    } else if (decode_address(d, n, &text, &l.addr, &l.addrlen) < 0) {
        ok = false;
    } else {
        l.address = (char *)text;
        for (size_t i = 0; i < c->nlistens; i++) {
            if (gh__same_sockaddr(&c->listens[i].addr, &l.addr)) {
                gh_node_error(d->errs, n, "duplicate listen address '%s' (already at line %u)",
                              text, (unsigned)c->listens[i].loc.line);
                ok = false;
                break;
            }
        }
    }
    if (ok)
        c->listens[c->nlistens++] = l;
}

void gh__decode_listen(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    if (!gh_node_is_null(v) && (v->type != GH_NODE_SEQ || v->n > 0))
        d->serves = true;
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    d->cfg->listens = gh_arena_alloc(d->arena, v->n * sizeof(*d->cfg->listens));
    for (size_t i = 0; i < v->n; i++)
        decode_one_listen(d, v->items[i]);
}

void gh__decode_admin(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    static const char *const keys[] = { "address", NULL };
    gh__feature(d, GH_FEAT_ADMIN, key);
    if (!gh__map(d, v, keys, "admin"))
        return;
    const gh_node_t *n = gh_node_get(v, "address");
    const char *text;
    if (!n) {
        gh_node_error(d->errs, v, "missing 'address' in admin");
        return;
    }
    if (decode_address(d, n, &text, &d->cfg->admin.addr, &d->cfg->admin.addrlen) < 0)
        return;
    d->cfg->admin.set = true;
    d->cfg->admin.address = (char *)text;
    d->cfg->admin.loc = n->loc;
}

static void decode_certificates(gh__decoder_t *d, const gh_node_t *v)
{
    static const char *const keys[] = { "cert", "key", NULL };
    if (gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    gh_config_t *c = d->cfg;
    d->certs_written = v->n;
    c->tls.certs = gh_arena_alloc(d->arena, v->n * sizeof(*c->tls.certs));
    for (size_t i = 0; i < v->n; i++) {
        const gh_node_t *m = v->items[i];
        if (!gh__map(d, m, keys, "certificate"))
            continue;
        gh_cert_conf_t *cert = &c->tls.certs[c->tls.ncerts];
        const char *paths[2] = { NULL, NULL };
        for (size_t k = 0; k < 2; k++) {
            const gh_node_t *n = gh_node_get(m, keys[k]);
            if (!n)
                gh_node_error(d->errs, m, "missing '%s' in certificate", keys[k]);
            else if (gh_node_string(d->errs, n, &paths[k]) == 0 &&
                     gh__check_readable(d, n, paths[k], false) < 0)
                paths[k] = NULL;
        }
        if (!paths[0] || !paths[1])
            continue;
        cert->cert = (char *)paths[0];
        cert->key = (char *)paths[1];
        cert->loc = m->loc;
        c->tls.ncerts++;
    }
}

void gh__decode_tls(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    static const char *const keys[] = { "certificates", "min_version", "acme_webroot", NULL };
    gh__feature(d, GH_FEAT_TLS_SECTION, key);
    if (gh_node_is_null(v))
        return;
    if (!gh__map(d, v, keys, "tls"))
        return;
    const gh_node_t *n;
    const char *s;
    if ((n = gh_node_get(v, "certificates")))
        decode_certificates(d, n);
    if ((n = gh_node_get(v, "min_version")) && gh_node_string(d->errs, n, &s) == 0) {
        if (strcmp(s, "1.2") == 0)
            d->cfg->tls.min_version = 0x0303;
        else if (strcmp(s, "1.3") == 0)
            d->cfg->tls.min_version = 0x0304;
        else
            gh_node_error(d->errs, n, "invalid min_version '%s' (expected \"1.2\" or \"1.3\")", s);
    }
    if ((n = gh_node_get(v, "acme_webroot")) && gh_node_string(d->errs, n, &s) == 0 &&
        gh__check_readable(d, n, s, true) == 0)
        d->cfg->tls.acme_webroot = (char *)s;
}
