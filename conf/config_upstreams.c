/* Upstream URLs and the upstreams section (SPEC.md section 2). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "conf/config.h"
#include "conf/decode.h"

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_';
}

static int parse_tunnel_url(gh__decoder_t *d, const gh_node_t *n, const char *url,
                            const char *rest, gh_server_conf_t *out)
{
    char name[256], service[256];
    const char *slash = strchr(rest, '/');
    size_t nlen = slash ? (size_t)(slash - rest) : 0;
    size_t slen = slash ? strlen(slash + 1) : 0;
    if (!slash || nlen >= sizeof(name) || slen >= sizeof(service)) {
        gh_node_error(d->errs, n, "invalid tunnel URL '%s' (expected tunnel://TUNNEL/SERVICE)",
                      url);
        return -1;
    }
    memcpy(name, rest, nlen);
    name[nlen] = '\0';
    memcpy(service, slash + 1, slen);
    service[slen] = '\0';
    if (!gh__valid_name(name) || !gh__valid_name(service)) {
        gh_node_error(d->errs, n, "invalid tunnel URL '%s' (expected tunnel://TUNNEL/SERVICE)",
                      url);
        return -1;
    }
    out->scheme = GH_SCHEME_TUNNEL;
    out->host = gh_arena_strdup(d->arena, name);
    out->service = gh_arena_strdup(d->arena, service);
    out->port = 0;
    out->authority = gh_arena_strdup(d->arena, rest);    /* "TUNNEL/SERVICE" */
    return 0;
}

static int parse_http_url(gh__decoder_t *d, const gh_node_t *n, const char *url,
                          const char *rest, gh_server_conf_t *out)
{
    char host[256];
    size_t hlen;
    bool v6 = false;
    const char *p = rest;

    if (*p == '[') {
        const char *close = strchr(p, ']');
        unsigned char tmp[16];
        hlen = close ? (size_t)(close - p - 1) : sizeof(host);
        if (hlen >= sizeof(host))
            goto bad_host;
        memcpy(host, p + 1, hlen);
        host[hlen] = '\0';
        if (inet_pton(AF_INET6, host, tmp) != 1)
            goto bad_host;
        v6 = true;
        p = close + 1;
    } else {
        hlen = 0;
        while (host_char(p[hlen]))
            hlen++;
        if (hlen == 0 || hlen > 253)
            goto bad_host;
        for (size_t i = 0; i < hlen; i++)
            host[i] = (p[i] >= 'A' && p[i] <= 'Z') ? (char)(p[i] - 'A' + 'a') : p[i];
        host[hlen] = '\0';
        p += hlen;
    }

    unsigned long port = out->scheme == GH_SCHEME_HTTPS ? 443 : 80;
    if (*p == ':') {
        p++;
        size_t digits = strspn(p, "0123456789");
        port = 0;
        for (size_t i = 0; i < digits && i < 6; i++)
            port = port * 10 + (unsigned long)(p[i] - '0');
        if (digits == 0 || digits > 5 || port == 0 || port > 65535) {
            gh_node_error(d->errs, n, "invalid port in URL '%s' (expected 1 to 65535)", url);
            return -1;
        }
        p += digits;
    }
    if (p[0] == '/' && p[1] == '\0')
        p++;
    if (*p == ':' || *p == '@') {
        goto bad_host;
    } else if (*p) {
        gh_node_error(d->errs, n,
                      "URL '%s' must not have a path (upstream URLs are SCHEME://HOST[:PORT])",
                      url);
        return -1;
    }

    char authority[256 + 16];
    snprintf(authority, sizeof(authority), v6 ? "[%s]:%lu" : "%s:%lu", host, port);
    out->host = gh_arena_strdup(d->arena, host);
    out->port = (uint16_t)port;
    out->authority = gh_arena_strdup(d->arena, authority);
    return 0;

bad_host:
    gh_node_error(d->errs, n, "invalid host in URL '%s'", url);
    return -1;
}

int gh__parse_server(gh__decoder_t *d, const gh_node_t *n, bool allow_tunnel,
                     gh_server_conf_t *out)
{
    const char *url;
    if (gh_node_string(d->errs, n, &url) < 0)
        return -1;
    memset(out, 0, sizeof(*out));
    out->url = (char *)url;

    const char *sep = strstr(url, "://");
    if (!sep) {
        gh_node_error(d->errs, n, "invalid URL '%s' (expected http://HOST[:PORT])", url);
        return -1;
    }
    size_t slen = (size_t)(sep - url);
    const char *rest = sep + 3;
    if (slen == 4 && strncasecmp(url, "http", 4) == 0) {
        out->scheme = GH_SCHEME_HTTP;
    } else if (slen == 5 && strncasecmp(url, "https", 5) == 0) {
        out->scheme = GH_SCHEME_HTTPS;
    } else if (slen == 6 && strncasecmp(url, "tunnel", 6) == 0) {
        if (!allow_tunnel) {
            gh_node_error(d->errs, n, "tunnel:// URLs are only allowed as a route's upstream");
            return -1;
        }
        return parse_tunnel_url(d, n, url, rest, out);
    } else {
        gh_node_error(d->errs, n, "unsupported URL scheme '%.*s' in '%s' (expected http://%s)",
                      (int)slen, url, url, allow_tunnel ? ", https:// or tunnel://" : " or https://");
        return -1;
    }
    return parse_http_url(d, n, url, rest, out);
}

static void decode_health(gh__decoder_t *d, const gh_node_t *v, gh_health_conf_t *h)
{
    static const char *const keys[] = { "path", "interval", "timeout", "rise", "fall", NULL };
    h->path = "/";
    h->interval_ms = 5000;
    h->timeout_ms = 2000;
    h->rise = 2;
    h->fall = 3;
    if (!gh__map(d, v, keys, "health_check"))
        return;
    h->enabled = true;

    const gh_node_t *n;
    const char *s;
    uint64_t x;
    if ((n = gh_node_get(v, "path")) && gh_node_string(d->errs, n, &s) == 0) {
        if (s[0] != '/')
            gh_node_error(d->errs, n, "health_check path must start with '/'");
        else
            h->path = (char *)s;
    }
    const gh_node_t *interval = gh_node_get(v, "interval"), *timeout = gh_node_get(v, "timeout");
    if (interval && gh_node_duration(d->errs, interval, &x) == 0) {
        if (x == 0)
            gh_node_error(d->errs, interval, "health_check interval must be greater than 0");
        else
            h->interval_ms = x;
    }
    if (timeout && gh_node_duration(d->errs, timeout, &x) == 0) {
        if (x == 0)
            gh_node_error(d->errs, timeout, "health_check timeout must be greater than 0");
        else
            h->timeout_ms = x;
    }
    if (!timeout && h->timeout_ms > h->interval_ms)
        h->timeout_ms = h->interval_ms;    /* the default must not outlast a short interval */
    if (h->timeout_ms > h->interval_ms)
        gh_node_error(d->errs, timeout ? timeout : interval,
                      "health_check timeout must not be longer than its interval");
    if ((n = gh_node_get(v, "rise")) && gh_node_uint(d->errs, n, 1, 100, &x) == 0)
        h->rise = (uint32_t)x;
    if ((n = gh_node_get(v, "fall")) && gh_node_uint(d->errs, n, 1, 100, &x) == 0)
        h->fall = (uint32_t)x;
}

static void decode_upstream_tls(gh__decoder_t *d, const gh_node_t *v, gh_upstream_tls_conf_t *t)
{
    static const char *const keys[] = { "ca", "verify", "sni", NULL };
    if (!gh__map(d, v, keys, "upstream tls"))
        return;
    t->set = true;
    const gh_node_t *n;
    const char *s;
    if ((n = gh_node_get(v, "ca")) && gh_node_string(d->errs, n, &s) == 0 &&
        gh__check_readable(d, n, s, false) == 0)
        t->ca = (char *)s;
    if ((n = gh_node_get(v, "verify")))
        gh_node_bool(d->errs, n, &t->verify);
    if ((n = gh_node_get(v, "sni")) && gh_node_string(d->errs, n, &s) == 0)
        t->sni = (char *)s;
}

static void decode_servers(gh__decoder_t *d, const gh_node_t *v, gh_upstream_conf_t *u)
{
    if (gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    if (v->n == 0) {
        gh_node_error(d->errs, v, "servers must not be empty");
        return;
    }
    u->servers = gh_arena_alloc(d->arena, v->n * sizeof(*u->servers));
    for (size_t i = 0; i < v->n; i++) {
        gh_server_conf_t *s = &u->servers[u->nservers];
        if (gh__parse_server(d, v->items[i], false, s) < 0)
            continue;
        if (s->scheme == GH_SCHEME_HTTPS)
            gh__feature(d, GH_FEAT_HTTPS_SERVER, v->items[i]);
        u->nservers++;
    }
}

static void decode_upstream(gh__decoder_t *d, const gh_node_t *k, const gh_node_t *v,
                            gh_upstream_conf_t *u)
{
    static const char *const keys[] = { "servers", "balance", "keepalive",
                                        "health_check", "tls", NULL };
    /* In the order of gh_balance_t. */
    static const char *const balances[] = { "round_robin", "least_conn", "hash_client_ip", NULL };
    u->name = k->str;
    u->loc = k->loc;
    u->balance = GH_BALANCE_ROUND_ROBIN;
    u->keepalive = 32;
    u->tls.verify = true;
    if (!gh__valid_name(k->str))
        gh_node_error(d->errs, k,
                      "invalid upstream name '%s' (letters, digits, '-', '_' and '.' only)",
                      k->str);
    if (!gh__map(d, v, keys, "upstream"))
        return;

    const gh_node_t *n;
    uint64_t x;
    int b;
    if (!(n = gh_node_get(v, "servers")))
        gh_node_error(d->errs, v, "missing 'servers' in upstream '%s'", k->str);
    else
        decode_servers(d, n, u);
    if ((n = gh_node_get(v, "balance")) && gh_node_enum(d->errs, n, balances, "balance", &b) == 0)
        u->balance = (gh_balance_t)b;
    if ((n = gh_node_get(v, "keepalive")) && gh_node_uint(d->errs, n, 0, 10000, &x) == 0)
        u->keepalive = (uint32_t)x;
    if ((n = gh_node_get(v, "health_check"))) {
        gh__feature(d, GH_FEAT_HEALTH_CHECK, gh_node_get_key(v, "health_check"));
        decode_health(d, n, &u->health);
    }
    if ((n = gh_node_get(v, "tls"))) {
        gh__feature(d, GH_FEAT_UPSTREAM_TLS, gh_node_get_key(v, "tls"));
        decode_upstream_tls(d, n, &u->tls);
    }
}

void gh__decode_upstreams(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_MAP) < 0)
        return;
    gh_config_t *c = d->cfg;
    c->upstreams = gh_arena_alloc(d->arena, v->n * sizeof(*c->upstreams));
    for (size_t i = 0; i < v->n; i++) {
        const gh_node_t *k = v->items[2 * i];
        if (gh__node_poisoned(k))
            continue;
        gh_upstream_conf_t *u = gh_arena_alloc(d->arena, sizeof(*u));
        decode_upstream(d, k, v->items[2 * i + 1], u);
        u->index = c->nupstreams;
        c->upstreams[c->nupstreams++] = u;
    }
}
