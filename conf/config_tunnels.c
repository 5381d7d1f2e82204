/* The tunnels (edge side) and connect (connector side) sections of SPEC.md
 * section 2. */
#include <string.h>
#include "conf/config.h"
#include "conf/decode.h"

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "sha256:" and 64 hex digits into 32 bytes. */
static int parse_sha256(const char *s, uint8_t out[32])
{
    if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
        return -1;
    for (size_t i = 0; i < 32; i++) {
        int hi = hex_value(s[7 + 2 * i]), lo = hex_value(s[8 + 2 * i]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

void gh__decode_tunnels(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    static const char *const keys[] = { "token_hash", "heartbeat", NULL };
    gh__feature(d, GH_FEAT_TUNNELS, key);
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_MAP) < 0)
        return;
    gh_config_t *c = d->cfg;
    c->tunnels = gh_arena_alloc(d->arena, v->n * sizeof(*c->tunnels));
    for (size_t i = 0; i < v->n; i++) {
        const gh_node_t *k = v->items[2 * i], *m = v->items[2 * i + 1], *n;
        if (gh__node_poisoned(k))
            continue;
        /* Kept even when broken, so routes naming it get no second error. */
        gh_tunnel_conf_t *t = &c->tunnels[c->ntunnels++];
        t->name = k->str;
        t->loc = k->loc;
        t->heartbeat_ms = 10000;
        if (!gh__valid_name(k->str))
            gh_node_error(d->errs, k,
                          "invalid tunnel name '%s' (letters, digits, '-', '_' and '.' only)",
                          k->str);
        if (!gh__map(d, m, keys, "tunnel"))
            continue;
        const char *s;
        if (!(n = gh_node_get(m, "token_hash")))
            gh_node_error(d->errs, m, "missing 'token_hash' in tunnel '%s'", k->str);
        else if (gh_node_string(d->errs, n, &s) == 0) {
            if (parse_sha256(s, t->token_sha256) < 0)
                gh_node_error(d->errs, n,
                              "token_hash must be 'sha256:' and 64 hex digits "
                              "(gatehouse keygen prints one)");
            else
                t->token_hash = (char *)s;
        }
        if ((n = gh_node_get(m, "heartbeat")))
            gh_node_duration(d->errs, n, &t->heartbeat_ms);
    }
}

static void decode_services(gh__decoder_t *d, const gh_node_t *v, gh_connect_conf_t *cc)
{
    if (gh_node_expect(d->errs, v, GH_NODE_MAP) < 0)
        return;
    if (v->n == 0) {
        gh_node_error(d->errs, v, "services must not be empty");
        return;
    }
    cc->services = gh_arena_alloc(d->arena, v->n * sizeof(*cc->services));
    for (size_t i = 0; i < v->n; i++) {
        const gh_node_t *k = v->items[2 * i], *u = v->items[2 * i + 1];
        if (gh__node_poisoned(k))
            continue;
        gh_service_conf_t *s = &cc->services[cc->nservices];
        if (!gh__valid_name(k->str)) {
            gh_node_error(d->errs, k,
                          "invalid service name '%s' (letters, digits, '-', '_' and '.' only)",
                          k->str);
            continue;
        }
        if (gh__parse_server(d, u, false, &s->server) < 0)
            continue;
        if (s->server.scheme == GH_SCHEME_HTTPS)
            gh__feature(d, GH_FEAT_HTTPS_SERVER, u);
        s->name = k->str;
        cc->nservices++;
    }
}

static void decode_one_connect(gh__decoder_t *d, const gh_node_t *m)
{
    static const char *const keys[] = { "edge", "tunnel", "token_file", "ca",
                                        "connections", "services", "heartbeat", NULL };
    gh_config_t *c = d->cfg;
    if (!gh__map(d, m, keys, "connect"))
        return;
    gh_connect_conf_t *cc = &c->connects[c->nconnects++];
    cc->loc = m->loc;
    cc->connections = 2;
    cc->heartbeat_ms = 10000;

    const gh_node_t *n;
    const char *s;
    gh_server_conf_t edge;
    if (!(n = gh_node_get(m, "edge")))
        gh_node_error(d->errs, m, "missing 'edge' in connect");
    else if (gh__parse_server(d, n, false, &edge) == 0) {
        cc->edge = edge.url;
        cc->edge_server = edge;
        if (edge.scheme == GH_SCHEME_TUNNEL)
            gh_node_error(d->errs, n, "edge must be an http:// or https:// URL");
    }
    if ((n = gh_node_get(m, "heartbeat")))
        gh_node_duration(d->errs, n, &cc->heartbeat_ms);

    if (!(n = gh_node_get(m, "tunnel")))
        gh_node_error(d->errs, m, "missing 'tunnel' in connect");
    else if (gh_node_string(d->errs, n, &s) == 0) {
        if (!gh__valid_name(s))
            gh_node_error(d->errs, n,
                          "invalid tunnel name '%s' (letters, digits, '-', '_' and '.' only)", s);
        else
            cc->tunnel = (char *)s;
    }

    if (!(n = gh_node_get(m, "token_file")))
        gh_node_error(d->errs, m, "missing 'token_file' in connect");
    else if (gh_node_string(d->errs, n, &s) == 0 && gh__check_readable(d, n, s, false) == 0)
        cc->token_file = (char *)s;

    if ((n = gh_node_get(m, "ca")) && gh_node_string(d->errs, n, &s) == 0 &&
        gh__check_readable(d, n, s, false) == 0)
        cc->ca = (char *)s;

    uint64_t x;
    if ((n = gh_node_get(m, "connections")) && gh_node_uint(d->errs, n, 1, 64, &x) == 0)
        cc->connections = (uint32_t)x;

    if (!(n = gh_node_get(m, "services")))
        gh_node_error(d->errs, m, "missing 'services' in connect");
    else
        decode_services(d, n, cc);
}

void gh__decode_connect(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    gh__feature(d, GH_FEAT_CONNECT, key);
    if (!gh_node_is_null(v) && (v->type != GH_NODE_SEQ || v->n > 0))
        d->serves = true;
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    d->cfg->connects = gh_arena_alloc(d->arena, v->n * sizeof(*d->cfg->connects));
    for (size_t i = 0; i < v->n; i++)
        decode_one_connect(d, v->items[i]);
}
