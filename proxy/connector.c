/* The connector side of the tunnel (docs/tunnel-protocol.md): dial out to
 * the edge, upgrade the connection with the tunnel's name and token, then
 * serve the streams the edge opens by connecting each to the named local
 * service and relaying bytes both ways. Reconnects with jittered
 * exponential backoff from 0.5 s up to 30 s. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "conf/config.h"
#include "proxy/connector.h"
#include "proxy/h1scan.h"
#include "proxy/log.h"
#include "proxy/relay.h"
#include "proxy/tunnel_session.h"
#include "tls/tls.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define HANDSHAKE_MS 10000
#define HEAD_MAX 8192

typedef struct service {
    char *name;
    char *host;
    uint16_t port;
    struct sockaddr_storage addr;
    bool numeric;
} service_t;

struct gh_connector {
    uv_loop_t *loop;
    gh_connector_t *next;
    char *key;              /* what identifies the config entry, for reloads */
    char *edge_host, *edge_authority, *tunnel, *token_file, *ca;
    uint16_t edge_port;
    bool https;
    uint64_t heartbeat_ms;
    unsigned index;         /* which of the entry's connections */
    service_t *services;
    size_t nservices;
    gh_tls_client_t *tls;

    uv_timer_t timer;       /* backoff, then the handshake deadline */
    uint64_t backoff_ms;
    struct attempt *att;    /* the connection being set up */
    gh_tsession_t *sess;    /* once up */
    bool stopping;
    bool retiring;          /* going away: freed once its session has drained */
    void (*retired)(void *);/* called when a retired connector is gone */
    void *retired_data;
};

/* One try at connecting: the TCP stream (and TLS over it) until it is
 * handed to the session, which then owns it until it closes. */
typedef struct attempt {
    gh_connector_t *c;      /* NULL once the connector let go of it */
    gh_tcp_stream_t tcp;
    gh_stream_t *link;
    uv_getaddrinfo_t gai;
    bool gai_pending;
    char head[HEAD_MAX];
    size_t hlen;
    char *req;
    gh_write_req_t w;
    bool handed_over;
} attempt_t;

static void schedule(gh_connector_t *c, bool failed);
static void dial(gh_connector_t *c);

static unsigned jitter(unsigned ms)
{
    unsigned r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (unsigned)uv_hrtime();
    /* between half and the whole of ms, so many connectors do not stampede */
    return ms / 2 + (ms > 1 ? r % (ms / 2 + 1) : 0);
}

/* ---- attempt cleanup ---- */

static void attempt_closed(gh_stream_t *s)
{
    attempt_t *a = s->data;
    free(a->req);
    free(a);
}

/* Gives up on the current attempt (the session has not taken it). */
static void attempt_drop(attempt_t *a)
{
    if (a->c && a->c->att == a)
        a->c->att = NULL;
    a->c = NULL;
    if (a->gai_pending)
        return; /* freed by the resolver callback */
    a->link->data = a;
    a->link->on_close = attempt_closed;
    gh_stream_close(a->link);
}

/* ---- streams the edge opens ---- */

typedef struct served {
    gh_connector_t *c;      /* only while on_stream runs: it may be freed first */
    char tunnel[64];
    bool st_failed;         /* the tunnel stream ended before the relay began */
    gh_stream_t *st;        /* tunnel stream */
    gh_tcp_stream_t tcp;    /* to the local service */
    bool tcp_closed, st_closed;
} served_t;

static void served_free_if_done(served_t *v)
{
    if (v->tcp_closed && v->st_closed)
        free(v);
}

static void served_tcp_closed(gh_stream_t *s)
{
    served_t *v = s->data;
    v->tcp_closed = true;
    served_free_if_done(v);
}

static void served_st_closed(gh_stream_t *s)
{
    served_t *v = s->data;
    v->st_closed = true;
    served_free_if_done(v);
}

static void relay_done(void *data, int error, unsigned long long up, unsigned long long down)
{
    served_t *v = data;
    gh_log_debug("tunnel %s: stream done (%llu bytes to the service, %llu back)%s%s",
                 v->tunnel, up, down, error ? ": " : "", error ? uv_strerror(error) : "");
    free(v);
}

static void service_connected(gh_stream_t *s, int status)
{
    served_t *v = s->data;
    if (status < 0 || v->st_failed) {
        if (status < 0)
            gh_log_warn("tunnel %s: cannot reach the local service: %s", v->tunnel,
                        uv_strerror(status));
        v->tcp.base.on_close = served_tcp_closed;
        v->st->data = v;
        v->st->on_close = served_st_closed;
        gh_stream_close(&v->tcp.base);
        gh_tsession_stream_refuse(v->st); /* nothing reached the service */
        return;
    }
    if (!gh_relay_start(v->st, &v->tcp.base, NULL, 0, relay_done, v)) {
        v->tcp.base.on_close = served_tcp_closed;
        v->st->data = v;
        v->st->on_close = served_st_closed;
        gh_stream_close(&v->tcp.base);
        gh_stream_close(v->st);
    }
}

static void ignore_alloc(gh_stream_t *s, size_t n, uv_buf_t *b)
{
    (void)s;
    (void)n;
    b->base = NULL;
    b->len = 0;
}

static void ignore_read(gh_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    served_t *v = s->data;
    (void)b;
    if (n < 0)
        v->st_failed = true; /* the session ended while the service was connecting */
}

static int on_stream(gh_tsession_t *s, gh_stream_t *st, const char *service, void *data)
{
    gh_connector_t *c = data;
    (void)s;
    service_t *svc = NULL;
    for (size_t i = 0; i < c->nservices; i++)
        if (strcmp(c->services[i].name, service) == 0)
            svc = &c->services[i];
    if (!svc || !svc->numeric) {
        gh_log_warn("tunnel %s: the edge asked for unknown service '%s'", c->tunnel, service);
        return -1;
    }
    served_t *v = calloc(1, sizeof *v);
    if (!v)
        return -1;
    v->c = c;
    snprintf(v->tunnel, sizeof v->tunnel, "%s", c->tunnel);
    v->st = st;
    st->data = v;
    st->on_alloc = ignore_alloc;
    st->on_read = ignore_read;
    st->on_close = served_st_closed;
    gh_tcp_stream_init(&v->tcp, c->loop);
    v->tcp.base.data = v;
    v->tcp.base.on_close = served_tcp_closed;
    if (gh_tcp_stream_connect(&v->tcp, (struct sockaddr *)&svc->addr, service_connected) != 0) {
        gh_stream_close(&v->tcp.base);
        gh_stream_close(st);
        return 0;
    }
    return 0;
}

static void connector_free(uv_handle_t *h);

static void session_closed(gh_tsession_t *s, int reason, void *data)
{
    gh_connector_t *c = data;
    (void)s;
    c->sess = NULL;
    if (c->retiring) {
        gh_log_info("tunnel %s: connection %u drained", c->tunnel, c->index);
        uv_close((uv_handle_t *)&c->timer, connector_free);
        return;
    }
    gh_log_warn("tunnel %s: connection %u to %s ended: %s", c->tunnel, c->index,
                c->edge_authority, reason ? uv_strerror(reason) : "go-away");
    if (!c->stopping)
        schedule(c, true);
}

/* ---- the upgrade ---- */

static void handshake_failed(gh_connector_t *c, attempt_t *a, const char *why, bool slow)
{
    gh_log_warn("tunnel %s: connection %u to %s failed: %s", c->tunnel, c->index,
                c->edge_authority, why);
    attempt_drop(a);
    if (slow && c->backoff_ms < BACKOFF_MAX_MS / 2)
        c->backoff_ms = BACKOFF_MAX_MS / 2;
    schedule(c, true);
}

static void head_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    attempt_t *a = s->data;
    (void)suggested;
    buf->base = a->head + a->hlen;
    buf->len = sizeof a->head - a->hlen;
}

static void head_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    attempt_t *a = s->data;
    gh_connector_t *c = a->c;
    (void)buf;
    if (!c || nread == 0)
        return;
    if (nread < 0) {
        handshake_failed(c, a, nread == UV_EOF ? "the edge closed the connection"
                                                : uv_strerror((int)nread), false);
        return;
    }
    a->hlen += (size_t)nread;
    gh_h1_head_t *h = malloc(sizeof *h);
    if (!h) {
        handshake_failed(c, a, "out of memory", false);
        return;
    }
    int rc = gh_h1_scan_response(a->head, a->hlen, sizeof a->head, h);
    int status = h->status;
    free(h);
    if (rc == 0)
        return;
    if (rc < 0) {
        handshake_failed(c, a, "malformed answer to the upgrade", false);
        return;
    }
    if (status != 101) {
        char why[96];
        snprintf(why, sizeof why, "the edge answered %d%s", status,
                 status == 401 ? " (wrong token or tunnel name)" : "");
        handshake_failed(c, a, why, status == 401 || status == 403);
        return;
    }
    uv_timer_stop(&c->timer);
    gh_stream_read_stop(a->link);
    static const gh_tsession_cbs_t cbs = { .on_stream = on_stream, .on_close = session_closed };
    /* the link's own close callback frees the attempt once the session ends */
    a->link->data = a;
    a->link->on_close = attempt_closed;
    gh_tsession_t *sess = gh_tsession_new(c->loop, a->link, a->head + rc, a->hlen - (size_t)rc,
                                          false, c->heartbeat_ms, &cbs, c);
    if (!sess) {
        handshake_failed(c, a, "out of memory", false);
        return;
    }
    a->handed_over = true;
    a->c = NULL;
    c->att = NULL;
    c->sess = sess;
    c->backoff_ms = 0;
    gh_log_info("tunnel %s: connection %u to %s is up", c->tunnel, c->index, c->edge_authority);
}

static void request_written(gh_write_req_t *w, int status)
{
    attempt_t *a = w->data;
    if (!a->c || status == 0)
        return;
    handshake_failed(a->c, a, uv_strerror(status), false);
}

static int read_token(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' '))
        n--;
    out[n] = '\0';
    return n ? 0 : -EINVAL;
}

static void link_ready(attempt_t *a)
{
    gh_connector_t *c = a->c;
    char token[512];
    int rc = read_token(c->token_file, token, sizeof token);
    if (rc < 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot read token_file %s: %s", c->token_file,
                 rc == -EINVAL ? "empty" : strerror(-rc));
        handshake_failed(c, a, why, true);
        return;
    }
    size_t cap = strlen(token) + strlen(c->tunnel) + strlen(c->edge_authority) + 256;
    a->req = malloc(cap);
    if (!a->req) {
        handshake_failed(c, a, "out of memory", false);
        return;
    }
    int n = snprintf(a->req, cap,
                     "GET " GH_TUNNEL_PATH " HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Connection: Upgrade\r\n"
                     "Upgrade: " GH_TUNNEL_UPGRADE "\r\n"
                     "Authorization: Bearer %s\r\n"
                     "Gatehouse-Tunnel: %s\r\n"
                     "User-Agent: gatehouse/" GH_VERSION "\r\n\r\n",
                     c->edge_authority, token, c->tunnel);
    memset(token, 0, sizeof token);
    a->link->data = a;
    a->link->on_alloc = head_alloc;
    a->link->on_read = head_read;
    uv_buf_t b = uv_buf_init(a->req, (unsigned)n);
    a->w.data = a;
    if (gh_stream_write(a->link, &a->w, &b, 1, request_written) != 0 ||
        gh_stream_read_start(a->link) != 0)
        handshake_failed(c, a, "cannot write the upgrade request", false);
}

static void tcp_connected(gh_stream_t *s, int status)
{
    attempt_t *a = s->data;
    gh_connector_t *c = a->c;
    if (!c)
        return;
    if (status < 0) {
        handshake_failed(c, a, uv_strerror(status), false);
        return;
    }
    if (c->https) {
        gh_stream_t *t = gh_tls_stream_client(c->tls, &a->tcp, c->edge_host);
        if (!t) {
            handshake_failed(c, a, "TLS setup failed", false);
            return;
        }
        a->link = t;
    }
    link_ready(a);
}

static void connect_to(attempt_t *a, const struct sockaddr *sa)
{
    a->tcp.base.data = a;
    if (gh_tcp_stream_connect(&a->tcp, sa, tcp_connected) != 0)
        handshake_failed(a->c, a, "connect failed", false);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    attempt_t *a = req->data;
    a->gai_pending = false;
    if (!a->c) {
        uv_freeaddrinfo(res);
        a->link->data = a;
        a->link->on_close = attempt_closed;
        gh_stream_close(a->link);
        return;
    }
    if (status != 0 || !res) {
        uv_freeaddrinfo(res);
        handshake_failed(a->c, a, uv_strerror(status), false);
        return;
    }
    struct sockaddr_storage ss;
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    connect_to(a, (struct sockaddr *)&ss);
}

static void handshake_timeout(uv_timer_t *t)
{
    gh_connector_t *c = t->data;
    if (c->att)
        handshake_failed(c, c->att, "no answer from the edge in time", false);
}

static void dial(gh_connector_t *c)
{
    attempt_t *a = calloc(1, sizeof *a);
    if (!a) {
        schedule(c, true);
        return;
    }
    a->c = c;
    c->att = a;
    gh_tcp_stream_init(&a->tcp, c->loop);
    a->link = &a->tcp.base;
    a->tcp.base.data = a;
    uv_timer_start(&c->timer, handshake_timeout, HANDSHAKE_MS, 0);

    struct sockaddr_storage ss;
    if (uv_ip4_addr(c->edge_host, c->edge_port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(c->edge_host, c->edge_port, (struct sockaddr_in6 *)&ss) == 0) {
        connect_to(a, (struct sockaddr *)&ss);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%u", c->edge_port);
    a->gai.data = a;
    a->gai_pending = true;
    if (uv_getaddrinfo(c->loop, &a->gai, resolved, c->edge_host, port, &hints) != 0) {
        a->gai_pending = false;
        handshake_failed(c, a, "cannot resolve the edge", false);
    }
}

static void backoff_expired(uv_timer_t *t)
{
    gh_connector_t *c = t->data;
    if (!c->stopping)
        dial(c);
}

static void schedule(gh_connector_t *c, bool failed)
{
    if (c->stopping)
        return;
    if (failed)
        c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    unsigned ms = jitter((unsigned)(c->backoff_ms ? c->backoff_ms : 1));
    uv_timer_start(&c->timer, backoff_expired, ms, 0);
}

/* ---- life ---- */

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *gh__connector_key(const gh_connect_conf_t *cc, unsigned index)
{
    size_t cap = 256 + strlen(cc->edge) + strlen(cc->tunnel) + strlen(cc->token_file) +
                 (cc->ca ? strlen(cc->ca) : 0);
    for (size_t i = 0; i < cc->nservices; i++)
        cap += strlen(cc->services[i].name) + strlen(cc->services[i].server.url) + 2;
    char *k = malloc(cap);
    if (!k)
        return NULL;
    int n = snprintf(k, cap, "%s|%s|%s|%s|%llu|%u", cc->edge, cc->tunnel, cc->token_file,
                     cc->ca ? cc->ca : "", (unsigned long long)cc->heartbeat_ms, index);
    for (size_t i = 0; i < cc->nservices && n > 0 && (size_t)n < cap; i++)
        n += snprintf(k + n, cap - (size_t)n, "|%s=%s", cc->services[i].name,
                      cc->services[i].server.url);
    return k;
}

gh_connector_t *gh_connector_start(uv_loop_t *loop, const gh_connect_conf_t *cc, unsigned index)
{
    gh_connector_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->index = index;
    c->key = gh__connector_key(cc, index);
    c->edge_host = dupstr(cc->edge_server.host);
    c->edge_authority = dupstr(cc->edge_server.authority);
    c->edge_port = cc->edge_server.port;
    c->https = cc->edge_server.scheme == GH_SCHEME_HTTPS;
    c->tunnel = dupstr(cc->tunnel);
    c->token_file = dupstr(cc->token_file);
    c->ca = dupstr(cc->ca);
    c->heartbeat_ms = cc->heartbeat_ms;
    c->services = calloc(cc->nservices ? cc->nservices : 1, sizeof *c->services);
    c->nservices = cc->nservices;
    for (size_t i = 0; c->services && i < cc->nservices; i++) {
        service_t *s = &c->services[i];
        s->name = dupstr(cc->services[i].name);
        s->host = dupstr(cc->services[i].server.host);
        s->port = cc->services[i].server.port;
        s->numeric = uv_ip4_addr(s->host, s->port, (struct sockaddr_in *)&s->addr) == 0 ||
                     uv_ip6_addr(s->host, s->port, (struct sockaddr_in6 *)&s->addr) == 0;
        if (!s->numeric)
            gh_log_warn("tunnel %s: service %s: only numeric addresses are served (%s)",
                        c->tunnel, s->name, s->host);
    }
    if (c->https) {
        gh_upstream_tls_conf_t tc = { .set = true, .ca = c->ca, .verify = true };
        gh_errors_t errs;
        gh_errors_init(&errs);
        c->tls = gh_tls_client_new(&tc, &errs);
        for (size_t i = 0; i < errs.n; i++)
            gh_log_error("tunnel %s: %s", c->tunnel, errs.lines[i]);
        gh_errors_free(&errs);
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    gh_log_info("tunnel %s: connection %u dialing %s", c->tunnel, index, c->edge_authority);
    dial(c);
    return c;
}

const char *gh_connector_key(const gh_connector_t *c)
{
    return c->key;
}

bool gh_connector_up(const gh_connector_t *c)
{
    return c->sess != NULL;
}

static void connector_free(uv_handle_t *h)
{
    gh_connector_t *c = h->data;
    if (c->retired)
        c->retired(c->retired_data);
    for (size_t i = 0; i < c->nservices; i++) {
        free(c->services[i].name);
        free(c->services[i].host);
    }
    free(c->services);
    if (c->tls)
        gh_tls_client_free(c->tls);
    free(c->key);
    free(c->edge_host);
    free(c->edge_authority);
    free(c->tunnel);
    free(c->token_file);
    free(c->ca);
    free(c);
}

void gh_connector_retire(gh_connector_t *c, void (*done)(void *), void *data)
{
    c->stopping = true;
    c->retiring = true;
    c->retired = done;
    c->retired_data = data;
    uv_timer_stop(&c->timer);
    if (c->att)
        attempt_drop(c->att);
    /* No new streams either way; the session ends by itself once the
     * streams it carries are done, and session_closed frees c. */
    if (c->sess)
        gh_tsession_goaway(c->sess);
    else
        uv_close((uv_handle_t *)&c->timer, connector_free);
}

void gh_connector_stop(gh_connector_t *c)
{
    if (c->retiring) {
        /* a drain that took too long: end it now */
        if (c->sess) {
            gh_tsession_t *s = c->sess;
            gh_tsession_close(s); /* session_closed frees c */
        }
        return;
    }
    c->stopping = true;
    uv_timer_stop(&c->timer);
    if (c->att)
        attempt_drop(c->att);
    /* The session's callbacks point at c: end it while c is alive (its
     * on_close runs before gh_tsession_close returns). */
    if (c->sess) {
        gh_tsession_t *s = c->sess;
        c->sess = NULL;
        gh_tsession_close(s);
    }
    uv_close((uv_handle_t *)&c->timer, connector_free);
}
