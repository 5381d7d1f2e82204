/* The edge side of the tunnel: connectors attach by upgrading a request on
 * any listener (docs/tunnel-protocol.md), their sessions are kept per
 * tunnel name across reloads, and `tunnel://NAME/SERVICE` upstreams open
 * streams on them, the connection with the fewest open streams first.
 *
 * A session lives on the worker that accepted its upgrade. A worker with no
 * session of a tunnel opens the stream on one that has: it gets one end of
 * a cross-thread pipe (proxy/xpipe.h), and the other worker relays the other
 * end to a stream of its session. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "proxy/connector.h"
#include "proxy/log.h"
#include "proxy/proxy.h"
#include "proxy/relay.h"
#include "proxy/tunnel_edge.h"
#include "proxy/tunnel_session.h"
#include "proxy/xpipe.h"

struct gh_tunnel_rt {
    gh_tunnel_rt_t *next;
    char *name;
    gh_tsession_t **sess;
    struct attached **att;      /* parallel to sess */
    size_t n, cap;
    unsigned long long attached;    /* sessions ever attached */
};

typedef struct attached {
    gh_server_t *srv;
    gh_tunnel_rt_t *t;
    gh_conn_t *conn;
    uint8_t token_sha256[32];   /* what it attached with, to evict it on rotation */
} attached_t;

/* ---- which workers hold sessions of which tunnel ---- */

typedef struct held {
    struct held *next;
    char *name;
    unsigned worker;
    unsigned n;             /* sessions of that tunnel on that worker */
} held_t;

static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static held_t *held_list;   /* entries stay once made: a handful of tunnels x workers */

static void held_add(const char *name, unsigned worker, int delta)
{
    pthread_mutex_lock(&held_mu);
    held_t *h = held_list;
    while (h && !(h->worker == worker && strcmp(h->name, name) == 0))
        h = h->next;
    if (!h && delta > 0 && (h = calloc(1, sizeof *h))) {
        if ((h->name = strdup(name))) {
            h->worker = worker;
            h->next = held_list;
            held_list = h;
        } else {
            free(h);
            h = NULL;
        }
    }
    if (h && (delta > 0 || h->n > 0))
        h->n += (unsigned)delta;
    pthread_mutex_unlock(&held_mu);
}

/* A worker other than self holding a session of name, taking turns; -1 if none. */
static int held_pick(const char *name, unsigned self)
{
    static atomic_uint turn;
    unsigned start = atomic_fetch_add_explicit(&turn, 1, memory_order_relaxed);
    int best = -1;
    unsigned best_rank = ~0u, nw = gh__nworkers();
    pthread_mutex_lock(&held_mu);
    for (held_t *h = held_list; h; h = h->next) {
        if (h->n == 0 || h->worker == self || strcmp(h->name, name) != 0)
            continue;
        unsigned rank = (h->worker + nw - start % nw) % nw;
        if (rank < best_rank) {
            best_rank = rank;
            best = (int)h->worker;
        }
    }
    pthread_mutex_unlock(&held_mu);
    return best;
}

static gh_tunnel_rt_t *find(gh_server_t *srv, const char *name, bool create)
{
    for (gh_tunnel_rt_t *t = srv->tunnels; t; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t;
    if (!create)
        return NULL;
    gh_tunnel_rt_t *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return NULL;
    }
    t->next = srv->tunnels;
    srv->tunnels = t;
    return t;
}

static void detach(gh_tunnel_rt_t *t, gh_tsession_t *s)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->sess[i] == s) {
            t->n--;
            t->sess[i] = t->sess[t->n];
            t->att[i] = t->att[t->n];
            return;
        }
    }
}

static void session_closed(gh_tsession_t *s, int reason, void *data)
{
    attached_t *a = data;
    detach(a->t, s);
    held_add(a->t->name, a->srv->worker, -1);
    gh_log_warn("tunnel %s: a connector connection ended: %s (%zu left)", a->t->name,
                reason ? uv_strerror(reason) : "go-away", a->t->n);
    a->conn->tsess = NULL;
    free(a);
}

static const char *header(const gh_h1_head_t *h, const char *lc, size_t *len)
{
    size_t n = strlen(lc);
    for (size_t i = 0; i < h->nheaders; i++) {
        if (gh_h1_name_is(&h->headers[i], lc, n)) {
            *len = h->headers[i].value_len;
            return h->headers[i].value;
        }
    }
    return NULL;
}

bool gh__tunnel_is_upgrade(const gh_req_t *r)
{
    size_t n;
    const char *u = header(&r->head, "upgrade", &n);
    return r->upgrade && u && n == sizeof GH_TUNNEL_UPGRADE - 1 &&
           strncasecmp(u, GH_TUNNEL_UPGRADE, n) == 0 && strcmp(r->path, GH_TUNNEL_PATH) == 0;
}

static void deny(gh_req_t *r, const char *why)
{
    gh_log_warn("tunnel upgrade from %s refused: %s", r->client_ip, why);
    r->resp_close = true;
    gh__respond(r, 401, "application/json",
                "WWW-Authenticate: Bearer realm=\"gatehouse-tunnel\"\r\n",
                "{\"error\":\"unauthorized\"}\n", 24);
}

void gh__tunnel_accept(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    gh_server_t *srv = c->server;
    const gh_config_t *cfg = r->snap->cfg;
    size_t nlen = 0, alen = 0;
    const char *name = header(&r->head, "gatehouse-tunnel", &nlen);
    const char *auth = header(&r->head, "authorization", &alen);

    const gh_tunnel_conf_t *tc = NULL;
    for (size_t i = 0; name && i < cfg->ntunnels; i++)
        if (strlen(cfg->tunnels[i].name) == nlen && memcmp(cfg->tunnels[i].name, name, nlen) == 0)
            tc = &cfg->tunnels[i];

    /* The token is hashed and compared in constant time even for an
     * unknown tunnel, so timing tells nothing about either. */
    unsigned char md[32];
    unsigned int mdlen = 0;
    static const unsigned char nothing[32];
    const char *tok = "";
    size_t toklen = 0;
    if (auth && alen > 7 && strncasecmp(auth, "Bearer ", 7) == 0) {
        tok = auth + 7;
        toklen = alen - 7;
    }
    EVP_Digest(tok, toklen, md, &mdlen, EVP_sha256(), NULL);
    bool ok = CRYPTO_memcmp(md, tc ? tc->token_sha256 : nothing, 32) == 0 && tc && toklen > 0;
    if (!ok) {
        deny(r, !name ? "no Gatehouse-Tunnel header" : !tc ? "unknown tunnel" : "wrong token");
        return;
    }

    gh_tunnel_rt_t *t = find(srv, tc->name, true);
    attached_t *a = calloc(1, sizeof *a);
    if (t && a && t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 4;
        gh_tsession_t **grown = realloc(t->sess, cap * sizeof *grown);
        if (grown)
            t->sess = grown;
        struct attached **agrown = grown ? realloc(t->att, cap * sizeof *agrown) : NULL;
        if (agrown) {
            t->att = agrown;
            t->cap = cap;
        }
    }
    if (!t || !a || t->n == t->cap) {
        free(a);
        gh__respond_error(r, 500);
        return;
    }
    memcpy(a->token_sha256, tc->token_sha256, 32);
    uint64_t heartbeat_ms = tc->heartbeat_ms; /* tc goes with the request below */
    a->srv = srv;
    a->t = t;
    a->conn = c;

    static const char answer[] = "HTTP/1.1 101 Switching Protocols\r\n"
                                 "Upgrade: " GH_TUNNEL_UPGRADE "\r\n"
                                 "Connection: Upgrade\r\n\r\n";
    r->status = 101;
    r->bytes_out = sizeof answer - 1;
    /* the connection stops being HTTP: what follows the head is the session's */
    const char *pending = c->buf + c->off;
    size_t npending = c->len - c->off;
    gh_stream_t *link = gh__conn_detach(c);
    gh_write_req_t *w = malloc(sizeof *w);
    uv_buf_t b = uv_buf_init((char *)answer, sizeof answer - 1);
    if (!w || gh_stream_write(link, w, &b, 1, gh__free_write_req) != 0) {
        free(w);
        free(a);
        gh__conn_abort(c);
        return;
    }
    static const gh_tsession_cbs_t cbs = { .on_stream = NULL, .on_close = session_closed };
    gh_tsession_t *s = gh_tsession_new(srv->loop, link, pending, npending, true,
                                       heartbeat_ms, &cbs, a);
    gh__conn_detach_done(c);
    if (!s) {
        free(a);
        gh__conn_abort(c);
        return;
    }
    c->tsess = s;
    t->att[t->n] = a;
    t->sess[t->n++] = s;
    t->attached++;
    held_add(t->name, srv->worker, +1);
    char ip[48];
    gh__conn_peer_text(c, ip);
    gh_log_info("tunnel %s: connector attached from %s (%zu connection(s))", t->name, ip, t->n);
}

static gh_stream_t *open_here(gh_server_t *srv, const char *tunnel, const char *service)
{
    gh_tunnel_rt_t *t = find(srv, tunnel, false);
    if (!t)
        return NULL;
    gh_tsession_t *best = NULL;
    unsigned fewest = ~0u;
    for (size_t i = 0; i < t->n; i++) {
        if (!gh_tsession_can_open(t->sess[i]))
            continue;
        unsigned k = gh_tsession_nstreams(t->sess[i]);
        if (k < fewest) {
            fewest = k;
            best = t->sess[i];
        }
    }
    return best ? gh_tsession_open(best, service) : NULL;
}

/* ---- streams of a session on another worker ---- */

typedef struct remote_open {
    gh_server_t *w;         /* the worker holding the session */
    gh_stream_t *end;       /* its end of the pipe */
    char *service;
    char tunnel[];
} remote_open_t;

static void remote_relayed(void *data, int error, unsigned long long a_to_b,
                           unsigned long long b_to_a)
{
    (void)data;
    (void)error;
    (void)a_to_b;
    (void)b_to_a;
}

static void end_closed(gh_stream_t *s)
{
    (void)s;
}

/* On the session's worker. */
static void remote_open_run(void *arg)
{
    remote_open_t *m = arg;
    gh_stream_t *st = m->w->stopping ? NULL : open_here(m->w, m->tunnel, m->service);
    if (!st || !gh_relay_start(m->end, st, NULL, 0, remote_relayed, NULL)) {
        /* the requesting worker reads a reset and answers 502 */
        if (st)
            gh_stream_close(st);
        m->end->on_close = end_closed;
        gh_stream_close(m->end);
    }
    free(m->service);
    free(m);
}

static gh_stream_t *open_elsewhere(gh_server_t *srv, const char *tunnel, const char *service)
{
    int k = held_pick(tunnel, srv->worker);
    gh_server_t *w = k >= 0 ? gh__worker((unsigned)k) : NULL;
    if (!w)
        return NULL;
    size_t tlen = strlen(tunnel) + 1;
    remote_open_t *m = malloc(sizeof *m + tlen);
    gh_stream_t *mine = NULL;
    if (!m || !(m->service = strdup(service))) {
        free(m);
        return NULL;
    }
    memcpy(m->tunnel, tunnel, tlen);
    m->w = w;
    if (gh_xpipe_new(srv->inbox, w->inbox, &mine, &m->end) != 0) {
        free(m->service);
        free(m);
        return NULL;
    }
    if (gh_xloop_post(w->inbox, remote_open_run, m) != 0) {
        /* that worker has stopped: its end is dropped with the pipe */
        gh_xpipe_drop(m->end);
        mine->on_close = end_closed;
        gh_stream_close(mine);
        free(m->service);
        free(m);
        return NULL;
    }
    return mine;
}

gh_stream_t *gh__tunnel_open(gh_server_t *srv, const char *tunnel, const char *service)
{
    gh_stream_t *s = open_here(srv, tunnel, service);
    if (!s && gh__nworkers() > 1)
        s = open_elsewhere(srv, tunnel, service);
    return s;
}

typedef struct counts {
    unsigned conns, streams;
} counts_t;

static void counts_here(gh_server_t *srv, const void *arg, void *slot)
{
    counts_t *out = slot;
    const gh_tunnel_rt_t *t = srv->tunnels;
    while (t && strcmp(t->name, arg) != 0)
        t = t->next;
    if (!t)
        return;
    out->conns = (unsigned)t->n;
    for (size_t i = 0; i < t->n; i++)
        out->streams += gh_tsession_nstreams(t->sess[i]);
}

void gh__tunnel_counts(const gh_server_t *srv, const char *tunnel, unsigned *conns,
                       unsigned *streams)
{
    unsigned nw = gh__nworkers() ? gh__nworkers() : 1;
    counts_t *all = calloc(nw, sizeof *all);
    *conns = *streams = 0;
    if (!all)
        return;
    gh__workers_gather((gh_server_t *)srv, counts_here, tunnel, strlen(tunnel) + 1, all,
                       sizeof *all);
    for (unsigned k = 0; k < nw; k++) {
        *conns += all[k].conns;
        *streams += all[k].streams;
    }
    free(all);
}

void gh__tunnels_goaway(gh_server_t *srv)
{
    for (gh_tunnel_rt_t *t = srv->tunnels; t; t = t->next)
        for (size_t i = 0; i < t->n; i++)
            gh_tsession_goaway(t->sess[i]);
}

void gh__tunnels_free(gh_server_t *srv)
{
    while (srv->tunnels) {
        gh_tunnel_rt_t *t = srv->tunnels;
        srv->tunnels = t->next;
        free(t->sess);
        free(t->att);
        free(t->name);
        free(t);
    }
}

/* Tunnels a reload removed, and connections made with a token that is no
 * longer the tunnel's: they are told to go away (streams in flight finish;
 * a connector with the new token attaches afresh). */
void gh__tunnels_reconcile(gh_server_t *srv, const gh_config_t *cfg)
{
    for (gh_tunnel_rt_t *t = srv->tunnels; t; t = t->next) {
        const gh_tunnel_conf_t *tc = NULL;
        for (size_t i = 0; i < cfg->ntunnels; i++)
            if (strcmp(cfg->tunnels[i].name, t->name) == 0)
                tc = &cfg->tunnels[i];
        for (size_t i = 0; i < t->n; i++)
            if (!tc || CRYPTO_memcmp(t->att[i]->token_sha256, tc->token_sha256, 32) != 0)
                gh_tsession_goaway(t->sess[i]);
    }
}

/* ---- connectors of this process ---- */

typedef struct retiring_ref {
    gh_server_t *srv;
    gh_connector_t *c;
} retiring_ref_t;

static void retired(void *data)
{
    retiring_ref_t *ref = data;
    gh_server_t *srv = ref->srv;
    for (size_t i = 0; i < srv->nretiring; i++) {
        if (srv->retiring[i] == ref->c) {
            srv->retiring[i] = srv->retiring[--srv->nretiring];
            break;
        }
    }
    free(ref);
    gh__server_check_stopped(srv);
}

static void retire(gh_server_t *srv, gh_connector_t *c)
{
    retiring_ref_t *ref = malloc(sizeof *ref);
    gh_connector_t **grown = realloc(srv->retiring, (srv->nretiring + 1) * sizeof *grown);
    if (!ref || !grown) {
        free(ref);
        if (grown)
            srv->retiring = grown;
        gh_connector_stop(c);
        return;
    }
    srv->retiring = grown;
    srv->retiring[srv->nretiring++] = c;
    ref->srv = srv;
    ref->c = c;
    gh_connector_retire(c, retired, ref);
}

/* Make before break: connections a reload replaced keep serving until
 * every connection of the new config is up (or SWAP_MAX_MS passed), so
 * that the edge always has a connection to open streams on. */
#define SWAP_POLL_MS 25
#define SWAP_MAX_MS 10000

static void swap_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void swap_finish(gh_server_t *srv)
{
    for (size_t m = 0; m < srv->nsuperseded; m++)
        retire(srv, srv->superseded[m]);
    free(srv->superseded);
    srv->superseded = NULL;
    srv->nsuperseded = 0;
    if (srv->swap_timer) {
        uv_close((uv_handle_t *)srv->swap_timer, swap_timer_closed);
        srv->swap_timer = NULL;
    }
}

static void swap_check(uv_timer_t *t)
{
    gh_server_t *srv = t->data;
    bool all_up = true;
    for (size_t m = 0; m < srv->nconnectors && all_up; m++)
        all_up = gh_connector_up(srv->connectors[m]);
    if (all_up || uv_now(srv->loop) >= srv->swap_deadline) {
        if (!all_up)
            gh_log_warn("tunnel connections replaced by a reload are not all up after %d s; "
                        "the old ones go now", SWAP_MAX_MS / 1000);
        swap_finish(srv);
    }
}

/* Takes old (malloc'd, nold entries) as superseded: retired once every
 * current connector is up. */
static void swap_start(gh_server_t *srv, gh_connector_t **old, size_t nold)
{
    uv_timer_t *t = nold ? malloc(sizeof *t) : NULL;
    if (!t || uv_timer_init(srv->loop, t) != 0) {
        free(t);
        srv->superseded = old;
        srv->nsuperseded = nold;
        swap_finish(srv);
        return;
    }
    t->data = srv;
    srv->superseded = old;
    srv->nsuperseded = nold;
    srv->swap_timer = t;
    srv->swap_deadline = uv_now(srv->loop) + SWAP_MAX_MS;
    uv_timer_start(t, swap_check, SWAP_POLL_MS, SWAP_POLL_MS);
}

void gh__connectors_apply(gh_server_t *srv, const gh_config_t *cfg)
{
    /* a swap still waiting from the reload before ends now */
    swap_finish(srv);
    size_t want = 0;
    for (size_t i = 0; i < cfg->nconnects; i++)
        want += cfg->connects[i].connections;
    gh_connector_t **next = calloc(want ? want : 1, sizeof *next);
    if (!next)
        return;
    size_t k = 0;
    for (size_t i = 0; i < cfg->nconnects; i++) {
        const gh_connect_conf_t *cc = &cfg->connects[i];
        for (unsigned j = 0; j < cc->connections; j++) {
            char *key = gh__connector_key(cc, j);
            gh_connector_t *found = NULL;
            for (size_t m = 0; key && m < srv->nconnectors; m++) {
                if (srv->connectors[m] && strcmp(gh_connector_key(srv->connectors[m]), key) == 0) {
                    found = srv->connectors[m];
                    srv->connectors[m] = NULL;
                    break;
                }
            }
            free(key);
            next[k] = found ? found : gh_connector_start(srv->loop, cc, j);
            if (next[k])
                k++;
        }
    }
    /* The ones a reload dropped finish what they carry, then go: once the
     * new ones are up when there are new ones, at once otherwise. */
    size_t nold = 0;
    for (size_t m = 0; m < srv->nconnectors; m++)
        if (srv->connectors[m])
            srv->connectors[nold++] = srv->connectors[m];
    gh_connector_t **old = srv->connectors;
    bool fresh = false;
    for (size_t m = 0; m < k && !fresh; m++)
        fresh = !gh_connector_up(next[m]);
    srv->connectors = next;
    srv->nconnectors = k;
    if (nold && fresh) {
        swap_start(srv, old, nold);
        return;
    }
    for (size_t m = 0; m < nold; m++)
        retire(srv, old[m]);
    free(old);
}

void gh__connectors_stop(gh_server_t *srv)
{
    swap_finish(srv);
    for (size_t m = 0; m < srv->nconnectors; m++)
        retire(srv, srv->connectors[m]);
    free(srv->connectors);
    srv->connectors = NULL;
    srv->nconnectors = 0;
}

void gh__connectors_force(gh_server_t *srv)
{
    /* gh_connector_stop on a retiring connector ends its session; the
     * callback then takes it off the list, so walk a copy */
    size_t n = srv->nretiring;
    gh_connector_t **copy = n ? malloc(n * sizeof *copy) : NULL;
    if (!copy)
        return;
    memcpy(copy, srv->retiring, n * sizeof *copy);
    for (size_t i = 0; i < n; i++)
        gh_connector_stop(copy[i]);
    free(copy);
}
