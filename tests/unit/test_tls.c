/* tls/: certificates and checks, SNI choice, verification, the TLS stream
 * over real TCP on a libuv loop (echo server and client in one process),
 * session resumption with rotating ticket keys, handshake failures, the
 * real `openssl s_client` against our server, and memory per idle
 * connection. Certificates are made with the openssl command line in a
 * temporary directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <uv.h>
#include "conf/arena.h"
#include "conf/config.h"
#include "tls/tls-int.h"
#include "tls/tls.h"
#include "test.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GH_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define GH_ASAN 1
#endif
#ifdef GH_ASAN
/* from <sanitizer/allocator_interface.h>, which gcc does not install */
size_t __sanitizer_get_current_allocated_bytes(void);
#else
#include <malloc.h>
#endif

static char dir[64];
static uv_loop_t *loop;

/* ---- OpenSSL allocation accounting (installed before any OpenSSL call) ---- */

static atomic_llong ossl_live, ossl_count;

static void *m_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    unsigned char *p = malloc(n + 16);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof(n));
    atomic_fetch_add(&ossl_live, (long long)n);
    atomic_fetch_add(&ossl_count, 1);
    return p + 16;
}

static void m_free(void *q, const char *file, int line)
{
    (void)file;
    (void)line;
    if (!q)
        return;
    unsigned char *p = (unsigned char *)q - 16;
    size_t n;
    memcpy(&n, p, sizeof(n));
    atomic_fetch_sub(&ossl_live, (long long)n);
    atomic_fetch_sub(&ossl_count, 1);
    free(p);
}

static void *m_realloc(void *q, size_t n, const char *file, int line)
{
    if (!q)
        return m_malloc(n, file, line);
    if (n == 0) {
        m_free(q, file, line);
        return NULL;
    }
    unsigned char *p = (unsigned char *)q - 16;
    size_t old;
    memcpy(&old, p, sizeof(old));
    unsigned char *np = realloc(p, n + 16);
    if (!np)
        return NULL;
    memcpy(np, &n, sizeof(n));
    atomic_fetch_add(&ossl_live, (long long)n - (long long)old);
    return np + 16;
}

static long long heap_live(void)
{
#ifdef GH_ASAN
    return (long long)__sanitizer_get_current_allocated_bytes();
#else
    return (long long)mallinfo2().uordblks;
#endif
}

/* ---- helpers ---- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static const char *path(const char *name)
{
    static char bufs[16][128];
    static int i;
    char *b = bufs[i++ % 16];
    snprintf(b, 128, "%s/%s", dir, name);
    return b;
}

static int make_certs(void)
{
    return sh(
        "cd %s && set -e && exec 2>certs.log\n"
        "EC='-newkey ec -pkeyopt ec_paramgen_curve:P-256'\n"
        "CAEXT='-addext basicConstraints=critical,CA:TRUE'\n"
        "CAEXT=\"$CAEXT -addext keyUsage=critical,keyCertSign,cRLSign\"\n"
        "openssl req -x509 $EC -nodes -keyout root.key -out root.pem -days 30 "
        "  -subj /CN=gh-root $CAEXT\n"
        "openssl req -x509 $EC -nodes -keyout other.key -out other.pem -days 30 "
        "  -subj /CN=gh-other $CAEXT\n"
        "openssl req -new $EC -nodes -keyout int.key -out int.csr -subj /CN=gh-intermediate\n"
        "echo basicConstraints=critical,CA:TRUE,pathlen:0 > ca.ext\n"
        "echo keyUsage=critical,keyCertSign,cRLSign >> ca.ext\n"
        "openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -days 30 "
        "  -extfile ca.ext -out int.pem\n"
        "leaf() {\n"
        "  openssl req -new $4 -nodes -keyout $1.key -out $1.csr -subj /CN=$1\n"
        "  echo subjectAltName=\"$2\" > $1.ext\n"
        "  echo basicConstraints=CA:FALSE >> $1.ext\n"
        "  echo extendedKeyUsage=serverAuth >> $1.ext\n"
        "  openssl x509 -req -in $1.csr -CA int.pem -CAkey int.key -CAcreateserial -days $3 "
        "    -extfile $1.ext -out $1.crt\n"
        "  cat $1.crt int.pem > $1.pem\n"
        "}\n"
        "leaf default DNS:default.test 30 '-newkey rsa:2048'\n"
        "leaf wildcard 'DNS:*.example.test' 30 \"$EC\"\n"
        "leaf chat DNS:chat.example.test 30 \"$EC\"\n"
        "leaf expired DNS:old.test -1 \"$EC\"\n"
        "leaf soon DNS:soon.test 5 \"$EC\"\n"
        "openssl req -x509 $EC -nodes -keyout self.key -out self.pem -days 30 -subj /CN=self "
        "  -addext subjectAltName=DNS:chat.example.test\n"
        "printf 'not a key\\n' > garbage.key\n",
        dir);
}

/* A config with the given cert/key pairs (NULL-terminated, two per pair)
 * and route hosts, as the loader would build it. */
static gh_config_t *make_cfg(gh_arena_t *a, const char *const *pairs, const char *const *hosts,
                             int min_version)
{
    gh_config_t *c = gh_arena_alloc(a, sizeof(*c));
    c->arena = a;
    c->file = gh_arena_strdup(a, "test.yaml");
    c->listens = gh_arena_alloc(a, sizeof(*c->listens));
    c->nlistens = 1;
    c->listens[0].tls = true;
    c->listens[0].loc = (gh_loc_t){ c->file, 2, 5 };
    size_t n = 0;
    while (pairs[2 * n])
        n++;
    c->tls.certs = gh_arena_alloc(a, (n + 1) * sizeof(*c->tls.certs));
    for (size_t i = 0; i < n; i++) {
        c->tls.certs[i].cert = gh_arena_strdup(a, pairs[2 * i][0] == '/' ? pairs[2 * i]
                                                                        : path(pairs[2 * i]));
        c->tls.certs[i].key = gh_arena_strdup(a, pairs[2 * i + 1][0] == '/'
                                                     ? pairs[2 * i + 1]
                                                     : path(pairs[2 * i + 1]));
        c->tls.certs[i].loc = (gh_loc_t){ c->file, (uint32_t)(10 + i), 7 };
    }
    c->tls.ncerts = n;
    c->tls.min_version = min_version;
    size_t nr = 0;
    while (hosts && hosts[nr])
        nr++;
    c->routes = gh_arena_alloc(a, (nr + 1) * sizeof(*c->routes));
    for (size_t i = 0; i < nr; i++) {
        c->routes[i].host = gh_arena_strdup(a, hosts[i]);
        c->routes[i].loc = (gh_loc_t){ c->file, (uint32_t)(30 + i), 5 };
    }
    c->nroutes = nr;
    return c;
}

static int has_line(const gh_errors_t *e, const char *needle)
{
    for (size_t i = 0; i < e->n; i++) {
        if (strstr(e->lines[i], needle))
            return 1;
    }
    return 0;
}

static void dump_errors(const gh_errors_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "  | %s\n", e->lines[i]);
}

/* ---- running the loop ---- */

static void watchdog_cb(uv_timer_t *t)
{
    *(int *)t->data = -1;
}

/* Runs the loop until *flag is set; -1 after 20 s. */
static int run_until(int *flag)
{
    uv_timer_t wd;
    uv_timer_init(loop, &wd);
    int timed_out = 0;
    wd.data = &timed_out;
    uv_timer_start(&wd, watchdog_cb, 20000, 0);
    while (!*flag && !timed_out)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wd, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (timed_out)
        fprintf(stderr, "timed out\n");
    return timed_out ? -1 : 0;
}

/* ---- echo server ---- */

typedef struct listener {
    uv_tcp_t tcp;
    gh_tls_server_t *tls;
    int port;
    char sni[128], version[32], alpn[32], error[256];
    int nconns;
    int lazy_ms;                /* stop reading at once, start again later */
    int hs_while_stopped;       /* the handshake finished meanwhile */
    bool proxy_header;          /* a plaintext line comes before TLS */
    char proxy_line[128];
    size_t prefix_len;          /* TLS bytes read together with the line */
} listener_t;

typedef struct econn {
    struct econn *next, *prev;  /* all open ones, to close them at the end */
    gh_tcp_stream_t tcp;
    gh_stream_t *s;
    listener_t *l;
    uv_timer_t lazy;
    char head[256];
    size_t headlen;
    size_t inflight;
    bool eof, paused, first;
} econn_t;

typedef struct ewrite {
    gh_write_req_t req;
    econn_t *c;
    char data[];
} ewrite_t;

static int live_econns;
static econn_t *econns;

static void e_lazy_closed(uv_handle_t *h)
{
    econn_t *c = h->data;
    if (c->prev)
        c->prev->next = c->next;
    else
        econns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    live_econns--;
    free(c);
}

static void e_closed(gh_stream_t *s)
{
    econn_t *c = s->data;
    const char *err = gh_tls_stream_error(s);
    if (err)
        snprintf(c->l->error, sizeof(c->l->error), "%s", err);
    uv_close((uv_handle_t *)&c->lazy, e_lazy_closed);
}

static void e_lazy(uv_timer_t *t)
{
    econn_t *c = t->data;
    if (gh_tls_stream_version(c->s))
        c->l->hs_while_stopped++;
    gh_stream_read_start(c->s);
}

static void e_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    (void)s;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void e_maybe_close(econn_t *c)
{
    if (c->eof && c->inflight == 0)
        gh_stream_close(c->s);
}

static void e_written(gh_write_req_t *req, int status)
{
    ewrite_t *w = (ewrite_t *)req;
    econn_t *c = w->c;
    free(w);
    c->inflight--;
    if (status < 0) {
        gh_stream_close(c->s);
        return;
    }
    if (c->paused && c->s->ops->write_queue_size(c->s) < 65536) {
        c->paused = false;
        gh_stream_read_start(c->s);
    }
    e_maybe_close(c);
}

static void e_read(gh_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    econn_t *c = s->data;
    if (n > 0) {
        if (!c->first) {
            c->first = true;
            const char *v = gh_tls_stream_sni(s);
            snprintf(c->l->sni, sizeof(c->l->sni), "%s", v ? v : "(none)");
            v = gh_tls_stream_version(s);
            snprintf(c->l->version, sizeof(c->l->version), "%s", v ? v : "(none)");
            v = gh_tls_stream_alpn(s);
            snprintf(c->l->alpn, sizeof(c->l->alpn), "%s", v ? v : "(none)");
        }
        ewrite_t *w = malloc(sizeof(*w) + (size_t)n);
        memcpy(w->data, buf->base, (size_t)n);
        w->c = c;
        uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
        c->inflight++;
        if (gh_stream_write(s, &w->req, &b, 1, e_written) < 0) {
            c->inflight--;
            free(w);
            gh_stream_close(s);
        } else if (s->ops->write_queue_size(s) > 256 * 1024) {
            c->paused = true;
            gh_stream_read_stop(s);
        }
    } else if (n == UV_EOF) {
        c->eof = true;
        gh_stream_shutdown(s);
        e_maybe_close(c);
    } else if (n < 0) {
        gh_stream_close(s);
    }
    free(buf->base);
}

static void e_start_tls(econn_t *c, gh_stream_t *s)
{
    c->s = s;
    c->s->data = c;
    c->s->on_alloc = e_alloc;
    c->s->on_read = e_read;
    c->s->on_close = e_closed;
    CHECK_INT(gh_stream_read_start(c->s), 0);
}

/* PROXY-protocol style: a line in plaintext, then TLS. */
static void p_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    econn_t *c = s->data;
    (void)suggested;
    *buf = uv_buf_init(c->head + c->headlen, (unsigned)(sizeof(c->head) - c->headlen));
}

static void p_read(gh_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    econn_t *c = s->data;
    (void)buf;
    if (n < 0) {
        gh_stream_close(s);
        return;
    }
    c->headlen += (size_t)n;
    char *eol = memchr(c->head, '\n', c->headlen);
    if (!eol) {
        if (c->headlen == sizeof(c->head))
            gh_stream_close(s);
        return;
    }
    gh_stream_read_stop(s);
    size_t line = (size_t)(eol + 1 - c->head);
    snprintf(c->l->proxy_line, sizeof(c->l->proxy_line), "%.*s", (int)(line - 2), c->head);
    c->l->prefix_len = c->headlen - line;
    gh_stream_t *t = gh_tls_stream_server_prefixed(c->l->tls, &c->tcp, eol + 1,
                                                   c->headlen - line);
    CHECK(t != NULL);
    e_start_tls(c, t);
}

static void p_start(uv_timer_t *t)
{
    econn_t *c = t->data;
    CHECK_INT(gh_stream_read_start(&c->tcp.base), 0);
}

static void on_connection(uv_stream_t *server, int status)
{
    listener_t *l = server->data;
    if (status < 0)
        return;
    econn_t *c = calloc(1, sizeof(*c));
    c->l = l;
    gh_tcp_stream_init(&c->tcp, loop);
    if (uv_accept(server, (uv_stream_t *)&c->tcp.tcp) != 0) {
        CHECK(!"accept failed");
        return;     /* (the test is lost anyway; c leaks) */
    }
    live_econns++;
    c->next = econns;
    if (econns)
        econns->prev = c;
    econns = c;
    l->nconns++;
    uv_timer_init(loop, &c->lazy);
    c->lazy.data = c;
    if (l->proxy_header) {
        /* read the line by itself first; wait a little so that the
         * ClientHello is in the same read and has to be handed over */
        c->s = &c->tcp.base;
        c->tcp.base.data = c;
        c->tcp.base.on_alloc = p_alloc;
        c->tcp.base.on_read = p_read;
        c->tcp.base.on_close = e_closed;
        uv_timer_start(&c->lazy, p_start, 50, 0);
        return;
    }
    gh_stream_t *t = gh_tls_stream_server(l->tls, &c->tcp);
    CHECK(t != NULL);
    e_start_tls(c, t);
    if (l->lazy_ms) {
        /* the handshake must go on without the user reading */
        CHECK_INT(gh_stream_read_stop(c->s), 0);
        uv_timer_start(&c->lazy, e_lazy, (uint64_t)l->lazy_ms, 0);
    }
}

static void listen_on(listener_t *l, gh_tls_server_t *tls)
{
    memset(l, 0, sizeof(*l));
    l->tls = tls;
    uv_tcp_init(loop, &l->tcp);
    l->tcp.data = l;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_INT(uv_tcp_bind(&l->tcp, (struct sockaddr *)&a, 0), 0);
    CHECK_INT(uv_listen((uv_stream_t *)&l->tcp, 128, on_connection), 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&got, &len);
    l->port = ntohs(got.sin_port);
}

/* ---- TLS client ---- */

typedef struct copts {
    gh_tls_client_t *cli;
    int port;
    const char *sni;
    const char *payload;
    size_t len, chunk;          /* writes of chunk bytes (0: one write) */
    bool shutdown_after;        /* shut down right after the writes */
    bool pause_reads;           /* stop reading after every read for 1 ms */
    bool close_at_once;         /* close right after writing */
    bool read_after_write;      /* start reading when the writes are done */
    const char *inject;         /* raw bytes under TLS once the echo is back */
    size_t inject_len;
    bool inject_shutdown;       /* and then a TCP half-close */
    const char *proxy_line;     /* sent in plaintext before TLS */
} copts_t;

typedef struct cres {
    gh_tcp_stream_t tcp;
    gh_stream_t *s;
    const copts_t *o;
    int done, connect_status;
    int read_err;               /* first error other than EOF */
    bool eof, closed, write_cb_after_close;
    char *data;
    size_t got;
    int writes, writes_done, writes_ok, first_write_err;
    char subject[128], version[32], alpn[32], error[256], cipher[64];
    int reused, infos;
    int allocs, zero_reads;
    uv_timer_t pause;
    gh_write_req_t *reqs;
    uv_write_t raw_w;
    uv_shutdown_t raw_sd;
} cres_t;

static void c_pause_closed(uv_handle_t *h)
{
    cres_t *r = h->data;
    r->done = 1;
}

static void c_closed(gh_stream_t *s)
{
    cres_t *r = s->data;
    const char *err = gh_tls_stream_error(s);
    if (err && !r->error[0])
        snprintf(r->error, sizeof(r->error), "%s", err);
    r->closed = true;
    uv_close((uv_handle_t *)&r->pause, c_pause_closed);
}

static void c_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    cres_t *r = s->data;
    (void)suggested;
    r->allocs++;
    /* reads land in place; a small window makes SSL keep data back */
    size_t room = r->o->len + 65536 - r->got;
    buf->base = r->data + r->got;
    buf->len = r->o->pause_reads ? (room < 3000 ? room : 3000) : room;
}

static void c_info(cres_t *r)
{
    if (r->infos++)
        return;
    SSL *ssl = gh__tls_stream_ssl(r->s);
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer)
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, r->subject,
                                  sizeof(r->subject));
    const char *v = gh_tls_stream_version(r->s);
    snprintf(r->version, sizeof(r->version), "%s", v ? v : "(none)");
    v = gh_tls_stream_alpn(r->s);
    snprintf(r->alpn, sizeof(r->alpn), "%s", v ? v : "(none)");
    snprintf(r->cipher, sizeof(r->cipher), "%s", SSL_get_cipher_name(ssl));
    r->reused = SSL_session_reused(ssl);
}

static void c_resume(uv_timer_t *t)
{
    cres_t *r = t->data;
    if (!r->s->closing)
        gh_stream_read_start(r->s);
}

static void c_raw_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status;
}

static void c_raw_shut(uv_shutdown_t *sd, int status)
{
    (void)sd;
    (void)status;
}

/* Writes bytes that are not TLS records straight on the socket. */
static void c_inject(cres_t *r)
{
    uv_buf_t b = uv_buf_init((char *)r->o->inject, (unsigned)r->o->inject_len);
    uv_stream_t *tcp = (uv_stream_t *)&r->tcp.tcp;
    uv_write(&r->raw_w, tcp, &b, 1, c_raw_written);
    if (r->o->inject_shutdown)
        uv_shutdown(&r->raw_sd, tcp, c_raw_shut);
}

static void c_read(gh_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    cres_t *r = s->data;
    (void)buf;
    if (n == 0) {
        r->zero_reads++;
        return;
    }
    if (n > 0) {
        c_info(r);
        r->got += (size_t)n;
        if (r->o->pause_reads) {
            gh_stream_read_stop(s);
            uv_timer_start(&r->pause, c_resume, 1, 0);
        }
        if (r->got >= r->o->len && r->o->inject)
            c_inject(r);
        else if (r->got >= r->o->len && !r->o->shutdown_after)
            gh_stream_close(s);
        return;
    }
    if (n == UV_EOF)
        r->eof = true;
    else if (!r->read_err)
        r->read_err = (int)n;
    gh_stream_close(s);
}

static void c_written(gh_write_req_t *req, int status)
{
    cres_t *r = req->data;
    r->writes_done++;
    if (r->closed)
        r->write_cb_after_close = true;
    if (status == 0)
        r->writes_ok++;
    else if (!r->first_write_err)
        r->first_write_err = status;
    /* as the proxy does with upstreams: read once the request is out */
    if (r->o->read_after_write && r->writes_done == r->writes && !r->s->closing)
        CHECK_INT(gh_stream_read_start(r->s), 0);
}

static void c_connected(gh_stream_t *tcp, int status)
{
    cres_t *r = tcp->data;
    const copts_t *o = r->o;
    r->connect_status = status;
    if (status < 0) {
        gh_stream_close(tcp);
        return;
    }
    if (o->proxy_line) {
        uv_buf_t b = uv_buf_init((char *)o->proxy_line, (unsigned)strlen(o->proxy_line));
        uv_write(&r->raw_w, (uv_stream_t *)&r->tcp.tcp, &b, 1, c_raw_written);
    }
    r->s = gh_tls_stream_client(o->cli, &r->tcp, o->sni);
    CHECK(r->s != NULL);
    r->s->data = r;
    r->s->on_alloc = c_alloc;
    r->s->on_read = c_read;
    r->s->on_close = c_closed;
    size_t chunk = o->chunk ? o->chunk : (o->len ? o->len : 1);
    r->writes = o->len ? (int)((o->len + chunk - 1) / chunk) : 0;
    r->reqs = calloc((size_t)r->writes + 1, sizeof(*r->reqs));
    for (int i = 0; i < r->writes; i++) {
        size_t off = (size_t)i * chunk;
        size_t len = o->len - off < chunk ? o->len - off : chunk;
        uv_buf_t b = uv_buf_init((char *)o->payload + off, (unsigned)len);
        r->reqs[i].data = r;
        CHECK_INT(gh_stream_write(r->s, &r->reqs[i], &b, 1, c_written), 0);
    }
    if (o->close_at_once) {
        gh_stream_close(r->s);
        return;
    }
    if (o->shutdown_after)
        CHECK_INT(gh_stream_shutdown(r->s), 0);
    if (!o->read_after_write)
        CHECK_INT(gh_stream_read_start(r->s), 0);
}

static void c_tcp_closed(gh_stream_t *s)
{
    cres_t *r = s->data;
    r->closed = true;
    uv_close((uv_handle_t *)&r->pause, c_pause_closed);
}

/* Connects, runs one exchange, returns the result (free with cres_free). */
static cres_t *client_run(const copts_t *o)
{
    cres_t *r = calloc(1, sizeof(*r));
    r->o = o;
    r->data = malloc(o->len + 65536);
    uv_timer_init(loop, &r->pause);
    r->pause.data = r;
    gh_tcp_stream_init(&r->tcp, loop);
    r->tcp.base.data = r;
    r->tcp.base.on_close = c_tcp_closed;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", o->port, &a);
    CHECK_INT(gh_tcp_stream_connect(&r->tcp, (struct sockaddr *)&a, c_connected), 0);
    if (run_until(&r->done) < 0) {
        CHECK(!"client timed out");
        gh_stream_close(r->s ? r->s : &r->tcp.base);    /* never free it while open */
        run_until(&r->done);
    }
    return r;
}

static void cres_free(cres_t *r)
{
    free(r->data);
    free(r->reqs);
    free(r);
}

/* ---- raw TCP client (garbage, early close) ---- */

typedef struct raw {
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_write_t w;
    const char *bytes;
    size_t len;
    bool close_after_write;
    int done, eof;
    char buf[4096];
} raw_t;

static void raw_closed(uv_handle_t *h)
{
    ((raw_t *)h->data)->done = 1;
}

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    raw_t *r = h->data;
    (void)s;
    *b = uv_buf_init(r->buf, sizeof(r->buf));
}

static void raw_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    raw_t *r = st->data;
    (void)b;
    if (n < 0) {
        r->eof = 1;
        uv_close((uv_handle_t *)st, raw_closed);
    }
}

static void raw_written(uv_write_t *w, int status)
{
    raw_t *r = w->data;
    (void)status;
    if (r->close_after_write)
        uv_close((uv_handle_t *)&r->tcp, raw_closed);
    else
        uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read);
}

static void raw_connected(uv_connect_t *c, int status)
{
    raw_t *r = c->data;
    if (status < 0 || r->len == 0) {
        uv_close((uv_handle_t *)&r->tcp, raw_closed);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)r->bytes, (unsigned)r->len);
    r->w.data = r;
    uv_write(&r->w, (uv_stream_t *)&r->tcp, &b, 1, raw_written);
}

static int raw_run(int port, const char *bytes, size_t len, bool close_after_write)
{
    raw_t r;
    memset(&r, 0, sizeof(r));
    r.bytes = bytes;
    r.len = len;
    r.close_after_write = close_after_write;
    uv_tcp_init(loop, &r.tcp);
    r.tcp.data = &r;
    r.conn.data = &r;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    uv_tcp_connect(&r.conn, &r.tcp, (struct sockaddr *)&a, raw_connected);
    run_until(&r.done);
    return r.eof;
}

/* Lets the server side finish closing its connections. */
static void settle(void)
{
    for (int i = 0; i < 200 && live_econns > 0; i++)
        uv_run(loop, UV_RUN_NOWAIT), usleep(1000);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* ---- openssl s_client as a child process ---- */

typedef struct child {
    uv_process_t p;
    int done;
    int64_t status;
} child_t;

static void child_exit(uv_process_t *p, int64_t status, int sig)
{
    child_t *c = p->data;
    c->status = sig ? -sig : status;
    uv_close((uv_handle_t *)p, NULL);
    c->done = 1;
}

/* Runs cmd with /bin/sh while the loop serves; returns its exit status. */
static int run_sh(const char *cmd)
{
    char *argv[] = { "/bin/sh", "-c", (char *)cmd, NULL };
    child_t c;
    memset(&c, 0, sizeof(c));
    uv_process_options_t po;
    memset(&po, 0, sizeof(po));
    po.file = "/bin/sh";
    po.args = argv;
    po.exit_cb = child_exit;
    c.p.data = &c;
    if (uv_spawn(loop, &c.p, &po) != 0)
        return -1;
    run_until(&c.done);
    uv_run(loop, UV_RUN_NOWAIT);
    return (int)c.status;
}

/* Runs `openssl s_client -connect 127.0.0.1:port ARGS` with output in
 * dir/sclient.out and returns its exit status. */
static int s_client(int port, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "openssl s_client -connect 127.0.0.1:%d %s </dev/null >%s 2>&1", port, args,
             path("sclient.out"));
    return run_sh(cmd);
}

static int sclient_said(const char *needle)
{
    return sh("grep -q -- '%s' %s", needle, path("sclient.out")) == 0;
}

/* ======== tests ======== */

static void test_names(void)
{
    gh_arena_t *a = gh_arena_new();
    const char *pairs[] = { "default.pem", "default.key", "wildcard.pem", "wildcard.key",
                            "chat.pem", "chat.key", NULL };
    gh_config_t *cfg = make_cfg(a, pairs, NULL, 0x0303);
    gh_errors_t e;
    gh_errors_init(&e);
    gh_tls_server_t *t = gh_tls_server_new(cfg, &e);
    CHECK(t != NULL);
    CHECK_INT(e.n, 0);
    dump_errors(&e);
    if (t) {
        CHECK_INT(gh__tls_server_lookup(t, "default.test"), 0);
        CHECK_INT(gh__tls_server_lookup(t, "chat.example.test"), 2);
        CHECK_INT(gh__tls_server_lookup(t, "CHAT.Example.TEST."), 2);
        CHECK_INT(gh__tls_server_lookup(t, "docs.example.test"), 1);
        CHECK_INT(gh__tls_server_lookup(t, "a.b.example.test"), -1);
        CHECK_INT(gh__tls_server_lookup(t, "example.test"), -1);
        CHECK_INT(gh__tls_server_lookup(t, ".example.test"), -1);
        CHECK_INT(gh__tls_server_lookup(t, "*.example.test"), 1);
        CHECK_INT(gh__tls_server_lookup(t, "xexample.test"), -1);
        CHECK_INT(gh__tls_server_lookup(t, ""), -1);
        gh_tls_server_free(t);
    }
    gh_errors_free(&e);
    gh_arena_free(a);
}

static void test_checks(void)
{
    gh_errors_t e;
    gh_arena_t *a = gh_arena_new();

    /* a key that belongs to another certificate, an unreadable file, a file
     * that is not a key: all reported with the entry's location */
    const char *bad[] = { "wildcard.pem", "chat.key", "/nonexistent/x.pem", "chat.key",
                          "chat.pem", "garbage.key", NULL };
    gh_errors_init(&e);
    CHECK(gh_tls_server_new(make_cfg(a, bad, NULL, 0x0303), &e) == NULL);
    CHECK(has_line(&e, "test.yaml:10:7: key "));
    CHECK(has_line(&e, "chat.key does not match certificate "));
    CHECK(has_line(&e, "test.yaml:11:7: cannot read certificate /nonexistent/x.pem: "
                       "No such file or directory"));
    CHECK(has_line(&e, "test.yaml:12:7: cannot load key "));
    CHECK_INT(e.nwarnings, 0);
    dump_errors(&e);
    gh_errors_free(&e);

    /* expired and expiring certificates and uncovered route hosts warn */
    const char *warn[] = { "wildcard.pem", "wildcard.key", "expired.pem", "expired.key",
                           "soon.pem", "soon.key", NULL };
    const char *hosts[] = { "chat.example.test", "*.example.test", "*", "x.other.test",
                            "x.other.test", "a.b.example.test", "10.0.0.1", NULL };
    gh_errors_init(&e);
    gh_tls_server_t *t = gh_tls_server_new(make_cfg(a, warn, hosts, 0x0303), &e);
    CHECK(t != NULL);
    CHECK(has_line(&e, "test.yaml:11:7: warning: certificate "));
    CHECK(has_line(&e, "expired.pem expired on "));
    CHECK(has_line(&e, "test.yaml:12:7: warning: certificate "));
    CHECK(has_line(&e, "soon.pem expires in 5 days, on "));
    CHECK(has_line(&e, "test.yaml:33:5: warning: no certificate in tls.certificates covers "
                       "route host x.other.test"));
    CHECK(has_line(&e, "test.yaml:35:5: warning: no certificate in tls.certificates covers "
                       "route host a.b.example.test"));
    CHECK_INT(e.nwarnings, 4);
    CHECK_INT(e.n, 4);
    dump_errors(&e);
    gh_tls_server_free(t);
    gh_errors_free(&e);

    /* no certificates for a TLS listener */
    const char *none[] = { NULL };
    gh_errors_init(&e);
    CHECK(gh_tls_server_new(make_cfg(a, none, NULL, 0x0303), &e) == NULL);
    CHECK(has_line(&e, "test.yaml:2:5: tls: true needs at least one pair"));
    gh_errors_free(&e);

    /* client: unreadable CA, a CA file with no certificate */
    gh_upstream_tls_conf_t uc = { .set = true, .ca = "/nonexistent/ca.pem", .verify = true };
    gh_loc_t loc = { "test.yaml", 50, 9 };
    gh_errors_init(&e);
    CHECK(gh_tls_client_new_at(&uc, &loc, &e) == NULL);
    CHECK(has_line(&e, "test.yaml:50:9: cannot read CA file /nonexistent/ca.pem: No such file"));
    uc.ca = (char *)path("garbage.key");
    CHECK(gh_tls_client_new(&uc, &e) == NULL);
    CHECK(has_line(&e, "cannot load CA file "));
    dump_errors(&e);
    gh_errors_free(&e);
    gh_arena_free(a);
}

static char *payload(size_t n)
{
    char *p = malloc(n);
    unsigned x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (char)(x >> 16);
    }
    return p;
}

static gh_tls_client_t *client(const char *ca, bool verify)
{
    gh_upstream_tls_conf_t uc = { .set = true, .ca = ca ? (char *)path(ca) : NULL,
                                  .verify = verify };
    gh_errors_t e;
    gh_errors_init(&e);
    gh_tls_client_t *c = gh_tls_client_new(&uc, &e);
    dump_errors(&e);
    gh_errors_free(&e);
    CHECK(c != NULL);
    return c;
}

static gh_tls_server_t *server(const char *const *pairs, int minv)
{
    gh_arena_t *a = gh_arena_new();
    gh_errors_t e;
    gh_errors_init(&e);
    gh_tls_server_t *t = gh_tls_server_new(make_cfg(a, pairs, NULL, minv), &e);
    dump_errors(&e);
    gh_errors_free(&e);
    gh_arena_free(a);       /* the server keeps nothing from the config */
    CHECK(t != NULL);
    return t;
}

static gh_tls_client_t *cli_root, *cli_other, *cli_any, *cli12;
static listener_t lmain, l13, lself;
static const char *main_pairs[] = { "default.pem", "default.key", "wildcard.pem",
                                    "wildcard.key", "chat.pem", "chat.key", NULL };

static void test_sni_and_verify(void)
{
    char *p = payload(1000);
    copts_t o = { .cli = cli_root, .port = lmain.port, .sni = "chat.example.test",
                  .payload = p, .len = 1000 };
    cres_t *r = client_run(&o);
    CHECK_STR(r->subject, "chat");
    CHECK_STR(r->version, "TLSv1.3");
    CHECK_STR(r->alpn, "http/1.1");
    CHECK_INT(r->got, 1000);
    CHECK(memcmp(r->data, p, 1000) == 0);
    CHECK_INT(r->writes_ok, 1);
    CHECK(!r->error[0]);
    CHECK_STR(lmain.sni, "chat.example.test");
    CHECK_STR(lmain.version, "TLSv1.3");
    CHECK_STR(lmain.alpn, "http/1.1");
    cres_free(r);

    /* exact wins over the wildcard listed before it, in any case */
    o.sni = "CHAT.Example.Test";
    r = client_run(&o);
    CHECK_STR(r->subject, "chat");
    CHECK_INT(r->got, 1000);
    cres_free(r);

    o.sni = "docs.example.test";
    r = client_run(&o);
    CHECK_STR(r->subject, "wildcard");
    CHECK_INT(r->got, 1000);
    cres_free(r);

    /* a wildcard covers one label only: default certificate, and the
     * verifying client refuses it */
    o.sni = "a.b.example.test";
    r = client_run(&o);
    CHECK_INT(r->got, 0);
    CHECK_INT(r->read_err, UV_EPROTO);
    CHECK(strstr(r->error, "certificate verify failed: hostname mismatch") != NULL);
    CHECK(strstr(r->error, "a.b.example.test") != NULL);
    CHECK_INT(r->first_write_err, UV_EPROTO);  /* the queued write learns it too */
    CHECK_INT(r->writes_done, 1);
    fprintf(stderr, "  (message: %s)\n", r->error);
    cres_free(r);

    /* the same for a caller that reads only after its write completed: the
     * write fails, and the error is still there for the read */
    o.read_after_write = true;
    r = client_run(&o);
    CHECK_INT(r->first_write_err, UV_EPROTO);
    CHECK_INT(r->read_err, UV_EPROTO);
    CHECK(strstr(r->error, "certificate verify failed: hostname mismatch") != NULL);
    cres_free(r);
    o.read_after_write = false;

    o.cli = cli_any;
    r = client_run(&o);
    CHECK_STR(r->subject, "default");
    CHECK_INT(r->got, 1000);
    cres_free(r);

    o.sni = NULL;      /* no SNI at all */
    r = client_run(&o);
    CHECK_STR(r->subject, "default");
    CHECK_STR(lmain.sni, "(none)");
    cres_free(r);

    /* default certificate is RSA; the others are ECDSA: both work */
    o.cli = cli_root;
    o.sni = "default.test";
    r = client_run(&o);
    CHECK_STR(r->subject, "default");
    CHECK_INT(r->got, 1000);
    cres_free(r);

    /* an untrusted chain, and a self-signed certificate */
    o.cli = cli_other;
    o.sni = "chat.example.test";
    r = client_run(&o);
    CHECK_INT(r->read_err, UV_EPROTO);
    CHECK_STR(r->error, "certificate verify failed: unable to get local issuer certificate");
    cres_free(r);

    /* (a fresh client: cli_root would resume its session from lmain, which
     * shares the process-wide ticket keys) */
    gh_tls_client_t *fresh = client("root.pem", true);
    o.cli = fresh;
    o.port = lself.port;
    r = client_run(&o);
    CHECK_INT(r->read_err, UV_EPROTO);
    CHECK_STR(r->error, "certificate verify failed: self-signed certificate");
    cres_free(r);
    gh_tls_client_free(fresh);

    /* the client-side counters saw all of it */
    gh_tls_stats_t cs;
    gh_tls_client_stats(&cs);
    CHECK(cs.handshakes >= 6);
    CHECK(cs.handshake_failures >= 3);
    free(p);
}

static void test_versions(void)
{
    char *p = payload(100);
    copts_t o = { .cli = cli12, .port = lmain.port, .sni = "chat.example.test", .payload = p,
                  .len = 100 };
    cres_t *r = client_run(&o);
    CHECK_STR(r->version, "TLSv1.2");
    CHECK_STR(r->alpn, "http/1.1");
    CHECK_STR(r->cipher, "ECDHE-ECDSA-AES128-GCM-SHA256");
    CHECK_INT(r->got, 100);
    cres_free(r);

    /* min_version 1.3 refuses a 1.2-only client, and it is counted */
    gh_tls_stats_t before, after;
    gh_tls_stats(&before);
    o.port = l13.port;
    r = client_run(&o);
    CHECK_INT(r->read_err, UV_EPROTO);
    CHECK(strstr(r->error, "handshake failed: ") != NULL);
    fprintf(stderr, "  (message: %s)\n", r->error);
    cres_free(r);
    settle();
    gh_tls_stats(&after);
    CHECK_INT(after.handshake_failures - before.handshake_failures, 1);
    CHECK_INT(after.handshakes - before.handshakes, 0);
    CHECK(strstr(l13.error, "handshake failed: ") != NULL);

    o.cli = cli_root;
    r = client_run(&o);
    CHECK_STR(r->version, "TLSv1.3");
    CHECK_INT(r->got, 100);
    cres_free(r);
    free(p);
}

static void test_big_echo(void)
{
    const size_t n = 1 << 20;
    char *p = payload(n);
    /* one write of 1 MB, queued before the handshake */
    copts_t o = { .cli = cli_root, .port = lmain.port, .sni = "chat.example.test", .payload = p,
                  .len = n };
    cres_t *r = client_run(&o);
    CHECK_INT(r->got, n);
    CHECK(r->got == n && memcmp(r->data, p, n) == 0);
    CHECK_INT(r->writes_ok, 1);
    /* the user's buffer is asked for only when there is plaintext for it */
    CHECK_INT(r->zero_reads, 0);
    cres_free(r);

    /* a server that stops reading before the handshake: the handshake
     * completes anyway, the request that came with it waits, and arrives
     * when reading starts again */
    lmain.lazy_ms = 100;
    o.len = 5000;
    o.read_after_write = true;
    r = client_run(&o);
    CHECK_INT(r->got, 5000);
    CHECK(memcmp(r->data, p, 5000) == 0);
    CHECK_INT(lmain.hs_while_stopped, 1);
    cres_free(r);
    lmain.lazy_ms = 0;

    /* a plaintext line (as a PROXY protocol header) before the handshake:
     * the TLS bytes read along with it are handed over */
    lmain.proxy_header = true;
    o.proxy_line = "PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\n";
    r = client_run(&o);
    CHECK_INT(r->got, 5000);
    CHECK(memcmp(r->data, p, 5000) == 0);
    CHECK_STR(r->subject, "chat");
    CHECK_STR(lmain.proxy_line, "PROXY TCP4 192.0.2.1 192.0.2.2 5000 443");
    CHECK(lmain.prefix_len > 0);
    cres_free(r);
    lmain.proxy_header = false;
    o.proxy_line = NULL;
    o.len = n;
    o.read_after_write = false;

    /* many writes, a half-close after them, a reader that keeps stopping
     * with a small buffer (data kept back and delivered later), over 1.2
     * and 1.3: everything comes back, then a clean EOF */
    gh_tls_client_t *clis[] = { cli_root, cli12 };
    for (int i = 0; i < 2; i++) {
        copts_t h = { .cli = clis[i], .port = lmain.port, .sni = "chat.example.test",
                      .payload = p, .len = n, .chunk = 10000, .shutdown_after = true,
                      .pause_reads = true };
        r = client_run(&h);
        CHECK_INT(r->got, n);
        CHECK(r->got == n && memcmp(r->data, p, n) == 0);
        CHECK(r->eof);
        CHECK_INT(r->read_err, 0);
        CHECK_INT(r->writes_ok, r->writes);
        CHECK_INT(r->zero_reads, 0);
        CHECK_STR(r->version, i ? "TLSv1.2" : "TLSv1.3");
        cres_free(r);
    }

    /* closing at once: queued writes complete with UV_ECANCELED, before
     * on_close */
    copts_t c = { .cli = cli_root, .port = lmain.port, .sni = "chat.example.test", .payload = p,
                  .len = 30000, .chunk = 10000, .close_at_once = true };
    r = client_run(&c);
    CHECK_INT(r->writes_done, 3);
    CHECK_INT(r->first_write_err, UV_ECANCELED);
    CHECK(!r->write_cb_after_close);
    cres_free(r);
    settle();
    free(p);
}

/* Broken records after the handshake: a fatal read error, and a
 * connection that ends in the middle of a record. */
static void test_bad_records(void)
{
    char *p = payload(100);
    static const char bad[] = "\x17\x03\x03\x00\x20 these are not encrypted bytes!!";
    copts_t o = { .cli = cli_root, .port = lmain.port, .sni = "chat.example.test", .payload = p,
                  .len = 100, .inject = bad, .inject_len = sizeof(bad) - 1 };
    cres_t *r = client_run(&o);
    CHECK_INT(r->got, 100);
    cres_free(r);
    settle();
    CHECK(strncmp(lmain.error, "read failed: ", 13) == 0);
    fprintf(stderr, "  (message: %s)\n", lmain.error);

    static const char part[] = "\x17\x03\x03\x00\x40 half a record";
    o.inject = part;
    o.inject_len = sizeof(part) - 1;
    o.inject_shutdown = true;
    r = client_run(&o);
    CHECK_INT(r->got, 100);
    cres_free(r);
    settle();
    CHECK_STR(lmain.error, "connection closed in the middle of a TLS record");
    free(p);
}

static void test_resumption(void)
{
    char *p = payload(10);
    gh_tls_client_t *clis[] = { client("root.pem", true), client("root.pem", true) };
    SSL_CTX_set_max_proto_version(clis[1]->ctx, TLS1_2_VERSION);
    for (int i = 0; i < 2; i++) {
        copts_t o = { .cli = clis[i], .port = lmain.port, .sni = "chat.example.test",
                      .payload = p, .len = 10 };
        cres_t *r = client_run(&o);
        CHECK_INT(r->reused, 0);
        CHECK_INT(r->got, 10);
        cres_free(r);
        r = client_run(&o);
        CHECK_INT(r->reused, 1);
        CHECK_STR(r->subject, "chat");      /* the session remembers the peer */
        cres_free(r);

        /* an hour later: same key */
        gh__tls_tickets_advance(3600);
        r = client_run(&o);
        CHECK_INT(r->reused, 1);
        cres_free(r);
        /* past rotation: the old key still opens the ticket, a new one is
         * issued under the new key */
        gh__tls_tickets_advance(2 * 3600);
        r = client_run(&o);
        CHECK_INT(r->reused, 1);
        cres_free(r);
        r = client_run(&o);
        CHECK_INT(r->reused, 1);
        cres_free(r);
        /* two periods later every key that sealed it is erased */
        gh__tls_tickets_advance(4 * 3600 + 10);
        r = client_run(&o);
        CHECK_INT(r->reused, 0);
        CHECK_INT(r->got, 10);
        cres_free(r);
        r = client_run(&o);
        CHECK_INT(r->reused, 1);
        cres_free(r);
        /* another name: no session for it */
        o.sni = "docs.example.test";
        r = client_run(&o);
        CHECK_INT(r->reused, 0);
        CHECK_STR(r->subject, "wildcard");
        cres_free(r);
        gh_tls_client_free(clis[i]);
    }
    free(p);
}

static void test_garbage(void)
{
    gh_tls_stats_t before, after;
    settle();
    gh_tls_stats(&before);
    static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(raw_run(lmain.port, http, sizeof(http) - 1, false));     /* server hangs up */
    settle();
    CHECK(strstr(lmain.error, "handshake failed: ") != NULL);
    fprintf(stderr, "  (message: %s)\n", lmain.error);
    char junk[3000];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 7 + 3);
    CHECK(raw_run(lmain.port, junk, sizeof(junk), false));
    /* the start of a ClientHello, then gone */
    static const char partial[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    raw_run(lmain.port, partial, sizeof(partial) - 1, true);
    settle();
    CHECK_STR(lmain.error, "connection closed during the handshake");
    gh_tls_stats(&after);
    CHECK_INT(after.handshake_failures - before.handshake_failures, 3);
    /* a connection that says nothing is not a failed handshake */
    raw_run(lmain.port, "", 0, true);
    settle();
    gh_tls_stats(&before);
    CHECK_INT(before.handshake_failures, after.handshake_failures);
    CHECK_INT(before.handshakes, after.handshakes);
    CHECK_INT(live_econns, 0);
}

static void test_s_client(void)
{
    char args[512];
    snprintf(args, sizeof(args),
             "-servername chat.example.test -alpn h2,http/1.1 -CAfile %s -verify_return_error",
             path("root.pem"));
    CHECK_INT(s_client(lmain.port, args), 0);
    CHECK(sclient_said("ALPN protocol: http/1.1"));
    CHECK(sclient_said("Verify return code: 0 (ok)"));
    CHECK(sclient_said("CN = chat"));
    CHECK(sclient_said("TLSv1.3"));
    /* the full chain went out: leaf and intermediate */
    CHECK(sclient_said(" 1 s:CN = gh-intermediate"));

    snprintf(args, sizeof(args), "-tls1_2 -servername chat.example.test -CAfile %s "
             "-verify_return_error", path("root.pem"));
    CHECK_INT(s_client(lmain.port, args), 0);
    CHECK(sclient_said("Protocol  : TLSv1.2"));
    CHECK(sclient_said("ECDHE-ECDSA-AES128-GCM-SHA256"));
    CHECK_INT(s_client(lmain.port, "-tls1_2 -servername chat.example.test -cipher "
                                   "ECDHE-ECDSA-CHACHA20-POLY1305"), 0);
    CHECK(sclient_said("ECDHE-ECDSA-CHACHA20-POLY1305"));
    CHECK_INT(s_client(lmain.port, "-tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384"), 0);
    CHECK(sclient_said("ECDHE-RSA-AES256-GCM-SHA384"));

    /* refused: old protocols (the client allowed to try them), RSA key
     * exchange, CBC, DHE, and 1.2 on a 1.3-only listener */
    CHECK(s_client(lmain.port, "-tls1_1 -cipher DEFAULT@SECLEVEL=0") != 0);
    CHECK(s_client(lmain.port, "-tls1 -cipher DEFAULT@SECLEVEL=0") != 0);
    CHECK(s_client(lmain.port, "-tls1_2 -cipher AES128-GCM-SHA256") != 0);
    CHECK(s_client(lmain.port, "-tls1_2 -cipher AES256-SHA256") != 0);
    CHECK(s_client(lmain.port, "-tls1_2 -cipher ECDHE-RSA-AES128-SHA256") != 0);
    CHECK(s_client(lmain.port, "-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA") != 0);
    CHECK(s_client(lmain.port, "-tls1_2 -cipher DHE-RSA-AES128-GCM-SHA256") != 0);
    CHECK(s_client(l13.port, "-tls1_2") != 0);
    CHECK_INT(s_client(l13.port, "-tls1_3"), 0);
    /* s_client's "R" asks for a renegotiation: refused */
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "(sleep 0.3; echo R; sleep 0.5) | openssl s_client -connect 127.0.0.1:%d -tls1_2 "
             ">%s 2>&1", lmain.port, path("sclient.out"));
    CHECK(run_sh(cmd) != 0);
    CHECK(sclient_said("RENEGOTIATING"));
    CHECK(sclient_said("no renegotiation"));
    settle();
}

/* ---- memory per idle connection ---- */

#define MEM_CONNS 200

/* In a child process (so only server-side allocations are in ours): opens
 * MEM_CONNS TLS connections, echoes 100 bytes on each, reports on fd, then
 * waits for a byte on back before it exits. */
typedef struct mconn {
    gh_tcp_stream_t tcp;
    gh_stream_t *s;
    gh_write_req_t w;
    char buf[200];
    size_t got;
} mconn_t;

static int mem_done;

static void m_alloc(gh_stream_t *s, size_t sug, uv_buf_t *b)
{
    mconn_t *m = s->data;
    (void)sug;
    *b = uv_buf_init(m->buf + m->got, (unsigned)(sizeof(m->buf) - m->got));
}

static void m_read(gh_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    mconn_t *m = s->data;
    (void)b;
    if (n > 0) {
        m->got += (size_t)n;
        if (m->got == 100)
            mem_done++;
    } else if (n < 0) {
        mem_done = -100000;
    }
}

static void m_written(gh_write_req_t *r, int st)
{
    (void)r;
    (void)st;
}

static void m_connected(gh_stream_t *tcp, int status)
{
    mconn_t *m = tcp->data;
    if (status < 0) {
        mem_done = -100000;
        return;
    }
    m->s = gh_tls_stream_client(cli_root, &m->tcp, "chat.example.test");
    m->s->data = m;
    m->s->on_alloc = m_alloc;
    m->s->on_read = m_read;
    uv_buf_t b = uv_buf_init(m->buf + 100, 100);
    gh_stream_write(m->s, &m->w, &b, 1, m_written);
    gh_stream_read_start(m->s);
}

static void mem_child(int port, int fd, int back)
{
    uv_loop_t l;
    uv_loop_init(&l);
    mconn_t *ms = calloc(MEM_CONNS, sizeof(*ms));
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    for (int i = 0; i < MEM_CONNS; i++) {
        memset(ms[i].buf + 100, 'x', 100);
        gh_tcp_stream_init(&ms[i].tcp, &l);
        ms[i].tcp.base.data = &ms[i];
        gh_tcp_stream_connect(&ms[i].tcp, (struct sockaddr *)&a, m_connected);
    }
    while (mem_done >= 0 && mem_done < MEM_CONNS)
        uv_run(&l, UV_RUN_ONCE);
    char c = mem_done == MEM_CONNS ? 'y' : 'n';
    if (write(fd, &c, 1) != 1)
        _exit(2);
    if (read(back, &c, 1) < 0)
        _exit(2);
    _exit(0);       /* the kernel closes every connection at once */
}

typedef struct mwait {
    uv_poll_t poll;
    int fd, done;
    char c;
} mwait_t;

static void mem_ready(uv_poll_t *p, int status, int events)
{
    mwait_t *w = p->data;
    (void)status;
    (void)events;
    if (read(w->fd, &w->c, 1) != 1)
        w->c = 'n';
    uv_poll_stop(p);
    w->done = 1;
}

static void test_memory(void)
{
    int up[2], down[2];
    CHECK_INT(pipe(up), 0);
    CHECK_INT(pipe(down), 0);
    settle();
    long long heap0 = heap_live(), ossl0 = atomic_load(&ossl_live);
    long long count0 = atomic_load(&ossl_count);
    pid_t pid = fork();
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        mem_child(lmain.port, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    mwait_t w;
    memset(&w, 0, sizeof(w));
    w.fd = up[0];
    uv_poll_init(loop, &w.poll, up[0]);
    w.poll.data = &w;
    uv_poll_start(&w.poll, UV_READABLE, mem_ready);
    run_until(&w.done);
    CHECK(w.c == 'y');
    /* let the last handshakes' buffers go */
    for (int i = 0; i < 20; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    long long heap1 = heap_live(), ossl1 = atomic_load(&ossl_live);
    long long count1 = atomic_load(&ossl_count);
    CHECK_INT(live_econns, MEM_CONNS);
    /* heap_live also sees the 16-byte headers our OpenSSL hooks add */
    long long per_ossl = (ossl1 - ossl0) / MEM_CONNS;
    long long per_heap = (heap1 - heap0 - 16 * (count1 - count0)) / MEM_CONNS -
                         (long long)sizeof(econn_t);
    long long ours = per_heap - per_ossl;
    printf("memory per idle TLS connection (server side, %d connections): %lld bytes: "
           "OpenSSL %lld (SSL_new alone is ~8.4 kB in 3.0), tls/ and libuv %lld\n",
           MEM_CONNS, per_heap, per_ossl, ours);
    /* OpenSSL 3.0 puts the floor near 13 kB (see the report); what this
     * guards is that no record buffer (16 kB+) stays behind and that our
     * own part stays small. */
    CHECK(per_heap > 0 && per_heap < 16384);
    CHECK(ours < 1024);
    if (write(down[1], "x", 1) != 1)
        CHECK(0);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    uv_close((uv_handle_t *)&w.poll, NULL);
    close(up[0]);
    close(down[1]);
    for (int i = 0; i < 500 && live_econns > 0; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    CHECK_INT(live_econns, 0);
}

int main(void)
{
    /* before anything touches OpenSSL */
    CHECK_INT(CRYPTO_set_mem_functions(m_malloc, m_realloc, m_free), 1);

    snprintf(dir, sizeof(dir), "/tmp/gh_tls_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (make_certs() != 0) {
        fprintf(stderr, "cannot make test certificates (openssl command line):\n");
        sh("cat %s/certs.log >&2", dir);
        return 1;
    }
    loop = uv_default_loop();

    test_names();
    test_checks();

    cli_root = client("root.pem", true);
    cli_other = client("other.pem", true);
    cli_any = client(NULL, false);
    cli12 = client("root.pem", true);
    SSL_CTX_set_max_proto_version(cli12->ctx, TLS1_2_VERSION);
    gh_tls_server_t *smain = server(main_pairs, 0x0303);
    gh_tls_server_t *s13 = server(main_pairs, 0x0304);
    const char *self_pairs[] = { "self.pem", "self.key", NULL };
    gh_tls_server_t *sself = server(self_pairs, 0x0303);
    listen_on(&lmain, smain);
    listen_on(&l13, s13);
    listen_on(&lself, sself);

    test_sni_and_verify();
    test_versions();
    test_big_echo();
    test_bad_records();
    test_resumption();
    test_garbage();
    test_s_client();
    test_memory();

    for (econn_t *c = econns; c; c = c->next)
        gh_stream_close(c->s);      /* only after a failure: never hang */
    uv_close((uv_handle_t *)&lmain.tcp, NULL);
    uv_close((uv_handle_t *)&l13.tcp, NULL);
    uv_close((uv_handle_t *)&lself.tcp, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    gh_tcp_stream_loop_done(loop);
    CHECK_INT(uv_loop_close(loop), 0);
    gh_tls_server_free(smain);
    gh_tls_server_free(s13);
    gh_tls_server_free(sself);
    gh_tls_client_free(cli_root);
    gh_tls_client_free(cli_other);
    gh_tls_client_free(cli_any);
    gh_tls_client_free(cli12);
    sh("rm -rf %s", dir);
    TEST_MAIN_END();
}
