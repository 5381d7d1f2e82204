/* Active upstream health checks (proxy/health.h).
 *
 * One checker per server: a repeating timer starts a probe (resolve if the
 * host is a name, connect, send one GET, read the status line) and a second
 * timer bounds the probe by the timeout. A probe records exactly one result
 * and then only cleans up; its memory goes in the last libuv callback that
 * can still name it (close, or getaddrinfo, which cannot be cancelled once a
 * thread runs it).
 *
 * The checker outlives its snapshot's gh_upserver_t by a few loop turns
 * (uv_close is asynchronous), so it reaches the server only through hc->sv,
 * which gh__health_stop clears; everything it needs after that (the request
 * bytes) is its own copy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/health.h"
#include "proxy/log.h"

/* The status line is all we read; a server whose first line does not fit
 * here is not answering HTTP/1.x. */
#define STATUS_LINE_MAX 512

typedef struct gh_hc gh_hc_t;
typedef struct gh_probe gh_probe_t;

struct gh_hc {
    gh_upserver_t *sv;      /* NULL once gh__health_stop detached it */
    uv_loop_t *loop;
    uv_timer_t tick;        /* every interval: start a probe */
    uv_timer_t deadline;    /* the timeout of the probe in flight */
    gh_probe_t *probe;      /* the probe in flight, or NULL */
    unsigned refs;          /* open timers + live probes; freed at 0 */
    char *request;          /* the GET, built once */
    size_t request_len;
    uint64_t timeout_ms;
    unsigned rise, fall;
};

struct gh_probe {
    gh_hc_t *hc;
    bool done;              /* result recorded: callbacks only clean up */
    bool resolving;         /* gai in flight (its callback frees the probe) */
    bool has_stream;        /* s initialised (its close callback frees the probe) */
    uv_getaddrinfo_t gai;
    gh_tcp_stream_t s;
    gh_write_req_t wreq;
    char buf[STATUS_LINE_MAX];
    size_t len;
};

static void hc_unref(gh_hc_t *hc)
{
    if (--hc->refs > 0)
        return;
    free(hc->request);
    free(hc);
}

/* ---- results ---- */

static void record(gh_hc_t *hc, bool ok, const char *reason)
{
    gh_upserver_t *sv = hc->sv;
    sv->health_last_ms = uv_now(hc->loop);
    if (ok) {
        sv->health_fail = 0;
        if (sv->health_ok < ~0u)
            sv->health_ok++;
        sv->health_error[0] = '\0';
        if (sv->health_down && sv->health_ok >= hc->rise) {
            sv->health_down = false;
            atomic_store_explicit(sv->shared_down, false, memory_order_relaxed);
            /* The checks just proved it answers: a passive backoff left over
             * from before it went down would only delay its return. */
            sv->fails = 0;
            sv->down_until = 0;
            gh_log_info("upstream %s server %s is up", sv->up->conf->name, sv->conf->authority);
        }
        return;
    }
    sv->health_ok = 0;
    if (sv->health_fail < ~0u)
        sv->health_fail++;
    snprintf(sv->health_error, sizeof sv->health_error, "%s", reason);
    if (!sv->health_down && sv->health_fail >= hc->fall) {
        sv->health_down = true;
        atomic_store_explicit(sv->shared_down, true, memory_order_relaxed);
        gh_log_warn("upstream %s server %s is down: %s", sv->up->conf->name,
                    sv->conf->authority, reason);
    } else {
        gh_log_debug("upstream %s server %s: health check failed: %s", sv->up->conf->name,
                     sv->conf->authority, reason);
    }
}

static void probe_closed(gh_stream_t *s)
{
    gh_probe_t *p = s->data;
    gh_hc_t *hc = p->hc;
    free(p);
    hc_unref(hc);
}

/* Frees p now, or arranges for the callback still pending to do it. */
static void probe_dispose(gh_probe_t *p)
{
    if (p->resolving) {
        /* Fails when a thread already runs the lookup: resolved() then
         * arrives with a result, sees p->done and comes back here. */
        uv_cancel((uv_req_t *)&p->gai);
        return;
    }
    if (p->has_stream) {
        gh_stream_close(&p->s.base);
        return;
    }
    gh_hc_t *hc = p->hc;
    free(p);
    hc_unref(hc);
}

/* The one result of p (reason NULL when the checker was stopped: nothing
 * is recorded then), followed by its teardown. */
static void probe_finish(gh_probe_t *p, bool ok, const char *reason)
{
    if (p->done)
        return;
    p->done = true;
    gh_hc_t *hc = p->hc;
    if (hc->probe == p) {
        hc->probe = NULL;
        uv_timer_stop(&hc->deadline);
    }
    if (hc->sv && reason)
        record(hc, ok, reason);
    probe_dispose(p);
}

static void probe_fail_uv(gh_probe_t *p, const char *what, int err)
{
    char reason[96];
    snprintf(reason, sizeof reason, "%s: %s", what, uv_strerror(err));
    probe_finish(p, false, reason);
}

/* ---- one probe ---- */

/* Looks at the status line once it is complete. Returns 1 when it settled
 * the probe, 0 when more bytes are needed. */
static int check_status_line(gh_probe_t *p)
{
    const char *b = p->buf;
    const char *eol = memchr(b, '\n', p->len);
    if (!eol)
        return 0;
    size_t n = (size_t)(eol - b);
    if (n > 0 && b[n - 1] == '\r')
        n--;
    /* "HTTP/1.x NNN" then the end of the line or a space and a reason */
    if (n < 12 || memcmp(b, "HTTP/1.", 7) != 0 || (b[7] != '0' && b[7] != '1') || b[8] != ' ' ||
        b[9] < '1' || b[9] > '5' || b[10] < '0' || b[10] > '9' || b[11] < '0' || b[11] > '9' ||
        (n > 12 && b[12] != ' ')) {
        probe_finish(p, false, "not an HTTP/1.x response");
        return 1;
    }
    int status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    if (status >= 200 && status < 400) {
        probe_finish(p, true, "");
    } else {
        char reason[32];
        snprintf(reason, sizeof reason, "status %d", status);
        probe_finish(p, false, reason);
    }
    return 1;
}

static void on_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    gh_probe_t *p = s->data;
    (void)suggested;
    /* on_read fails the probe before the buffer is full, so this is never
     * an empty buffer (which libuv would report as ENOBUFS). */
    buf->base = p->buf + p->len;
    buf->len = sizeof p->buf - p->len;
}

static void on_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gh_probe_t *p = s->data;
    (void)buf;
    if (nread == 0 || p->done)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            probe_finish(p, false, "closed without a response");
        else
            probe_fail_uv(p, "read", (int)nread);
        return;
    }
    p->len += (size_t)nread;
    if (check_status_line(p) == 0 && p->len == sizeof p->buf)
        probe_finish(p, false, "status line too long");
}

static void on_written(gh_write_req_t *req, int status)
{
    gh_probe_t *p = req->data;
    if (status < 0 && !p->done)
        probe_fail_uv(p, "write", status);
}

static void on_connected(gh_stream_t *s, int status)
{
    gh_probe_t *p = s->data;
    if (p->done)
        return;     /* closed while connecting (status is UV_ECANCELED) */
    if (status < 0) {
        probe_fail_uv(p, "connect", status);
        return;
    }
    gh_hc_t *hc = p->hc;
    p->s.base.on_alloc = on_alloc;
    p->s.base.on_read = on_read;
    int rc = gh_stream_read_start(&p->s.base);
    if (rc < 0) {
        probe_fail_uv(p, "read", rc);
        return;
    }
    /* The request bytes belong to the checker, which outlives the probe. */
    uv_buf_t b = uv_buf_init(hc->request, (unsigned)hc->request_len);
    p->wreq.data = p;
    rc = gh_stream_write(&p->s.base, &p->wreq, &b, 1, on_written);
    if (rc < 0)
        probe_fail_uv(p, "write", rc);
}

static void probe_connect(gh_probe_t *p, const struct sockaddr *addr)
{
    int rc = gh_tcp_stream_init(&p->s, p->hc->loop);
    if (rc < 0) {
        probe_fail_uv(p, "connect", rc);
        return;
    }
    p->has_stream = true;
    p->s.base.data = p;
    p->s.base.on_close = probe_closed;
    rc = gh_tcp_stream_connect(&p->s, addr, on_connected);
    if (rc < 0)
        probe_fail_uv(p, "connect", rc);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    gh_probe_t *p = req->data;
    p->resolving = false;
    if (p->done) {
        uv_freeaddrinfo(res);
        probe_dispose(p);
        return;
    }
    if (status < 0 || !res) {
        uv_freeaddrinfo(res);
        probe_fail_uv(p, "resolve", status < 0 ? status : UV_EAI_NONAME);
        return;
    }
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    memcpy(&addr, res->ai_addr, res->ai_addrlen < sizeof addr ? res->ai_addrlen : sizeof addr);
    uv_freeaddrinfo(res);
    /* The configured port is the one that counts (upstream.c does the
     * same), whatever the resolver put in the address. */
    uint16_t port = htons(p->hc->sv->conf->port);
    if (addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&addr)->sin_port = port;
    else if (addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = port;
    probe_connect(p, (const struct sockaddr *)&addr);
}

static void probe_start(gh_hc_t *hc)
{
    gh_probe_t *p = calloc(1, sizeof *p);
    if (!p) {
        uv_timer_stop(&hc->deadline);
        record(hc, false, "out of memory");
        return;
    }
    p->hc = hc;
    hc->refs++;
    hc->probe = p;
    gh_upserver_t *sv = hc->sv;
    if (sv->numeric) {
        probe_connect(p, (const struct sockaddr *)&sv->addr);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof port, "%u", sv->conf->port);
    p->gai.data = p;
    int rc = uv_getaddrinfo(hc->loop, &p->gai, resolved, sv->conf->host, port, &hints);
    if (rc < 0) {
        probe_fail_uv(p, "resolve", rc);
        return;
    }
    p->resolving = true;
}

static void on_deadline(uv_timer_t *t)
{
    gh_hc_t *hc = t->data;
    if (hc->probe)
        probe_finish(hc->probe, false, "timeout");
}

static void on_tick(uv_timer_t *t)
{
    gh_hc_t *hc = t->data;
    if (!hc->sv)
        return;
    /* With timeout == interval the tick can come before the deadline timer
     * of the same instant: the old probe has run out of time either way. */
    if (hc->probe)
        probe_finish(hc->probe, false, "timeout");
    /* Armed first: a probe that fails at once stops it again. */
    uv_timer_start(&hc->deadline, on_deadline, hc->timeout_ms, 0);
    probe_start(hc);
}

/* ---- start and stop ---- */

static const gh_upserver_t *find_previous(const gh_snapshot_t *prev, const gh_upserver_t *sv)
{
    if (!prev || !prev->ups)
        return NULL;
    for (size_t i = 0; i < prev->cfg->nupstreams; i++) {
        const gh_upstream_t *u = &prev->ups[i];
        if (strcmp(u->conf->name, sv->up->conf->name) != 0)
            continue;
        for (size_t j = 0; j < u->n; j++)
            if (strcmp(u->servers[j].conf->url, sv->conf->url) == 0)
                return &u->servers[j];
        return NULL;
    }
    return NULL;
}

static char *build_request(const gh_upstream_conf_t *uc, const gh_server_conf_t *sc, size_t *len)
{
    static const char fmt[] = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: gatehouse-health\r\n"
                              "Connection: close\r\n\r\n";
    int n = snprintf(NULL, 0, fmt, uc->health.path, sc->authority);
    if (n < 0)
        return NULL;
    char *buf = malloc((size_t)n + 1);
    if (!buf)
        return NULL;
    snprintf(buf, (size_t)n + 1, fmt, uc->health.path, sc->authority);
    *len = (size_t)n;
    return buf;
}

static void server_start(gh_upserver_t *sv, uv_loop_t *loop)
{
    const gh_upstream_conf_t *uc = sv->up->conf;
    gh_hc_t *hc = calloc(1, sizeof *hc);
    if (!hc || !(hc->request = build_request(uc, sv->conf, &hc->request_len))) {
        free(hc);
        gh_log_error("upstream %s server %s: out of memory: not health checked",
                     uc->name, sv->conf->authority);
        return;
    }
    hc->sv = sv;
    hc->loop = loop;
    hc->timeout_ms = uc->health.timeout_ms;
    hc->rise = uc->health.rise ? uc->health.rise : 1;
    hc->fall = uc->health.fall ? uc->health.fall : 1;
    uv_timer_init(loop, &hc->tick);
    uv_timer_init(loop, &hc->deadline);
    hc->tick.data = hc->deadline.data = hc;
    hc->refs = 2;
    sv->health = hc;
    uv_timer_start(&hc->tick, on_tick, 0, uc->health.interval_ms);
}

void gh__health_start(gh_snapshot_t *s, uv_loop_t *loop, const gh_snapshot_t *previous)
{
    if (!s || !s->ups)
        return;
    for (size_t i = 0; i < s->cfg->nupstreams; i++) {
        gh_upstream_t *u = &s->ups[i];
        if (!u->conf->health.enabled)
            continue;
        for (size_t j = 0; j < u->n; j++) {
            gh_upserver_t *sv = &u->servers[j];
            if (sv->health)
                continue;   /* started already */
            /* TLS and tunnel servers would need their own carrier; they are
             * left up rather than failed by a check that cannot speak to them. */
            if (sv->conf->scheme != GH_SCHEME_HTTP) {
                gh_log_warn("upstream %s server %s: health checks are done for http:// servers only",
                            u->conf->name, sv->conf->authority);
                continue;
            }
            const gh_upserver_t *old = find_previous(previous, sv);
            if (old) {
                sv->health_down = old->health_down;
                atomic_store_explicit(sv->shared_down, old->health_down, memory_order_relaxed);
                sv->health_ok = old->health_ok;
                sv->health_fail = old->health_fail;
                sv->health_last_ms = old->health_last_ms;
                memcpy(sv->health_error, old->health_error, sizeof sv->health_error);
            }
            server_start(sv, loop);
        }
    }
}

static void timer_closed(uv_handle_t *h)
{
    hc_unref(h->data);
}

void gh__health_stop(gh_snapshot_t *s)
{
    if (!s || !s->ups)
        return;
    for (size_t i = 0; i < s->cfg->nupstreams; i++) {
        gh_upstream_t *u = &s->ups[i];
        for (size_t j = 0; j < u->n; j++) {
            gh_upserver_t *sv = &u->servers[j];
            gh_hc_t *hc = sv->health;
            if (!hc)
                continue;
            sv->health = NULL;
            hc->sv = NULL;
            if (hc->probe)
                probe_finish(hc->probe, false, NULL);
            uv_close((uv_handle_t *)&hc->tick, timer_closed);
            uv_close((uv_handle_t *)&hc->deadline, timer_closed);
        }
    }
}
