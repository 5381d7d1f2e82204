/* The server: workers (one event loop thread each), listeners, signals,
 * config snapshots and their reload, graceful stop. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf/config.h"
#include "proxy/health.h"
#include "plugins/plugin.h"
#include "proxy/log.h"
#include "proxy/proxy.h"
#include "proxy/tunnel_edge.h"
#include "proxy/xpipe.h"
#include "tls/tls.h"

/* ---- workers ---- */

static gh_server_t **workers;   /* [nworkers]; workers[0] runs on the main thread */
static unsigned nworkers;
static unsigned others_running; /* workers 1.. not yet stopped (worker 0's thread only) */

/* Client connections open in every worker, for limits.max_connections. */
static atomic_uint conns_open;

unsigned gh__conns_opened(void)
{
    return atomic_fetch_add_explicit(&conns_open, 1, memory_order_relaxed) + 1;
}

unsigned gh__nworkers(void)
{
    return nworkers;
}

gh_server_t *gh__worker(unsigned i)
{
    return i < nworkers ? workers[i] : NULL;
}

/* ---- what the workers share of a config ---- */

static gh_shared_t *shared_new(gh_config_t *cfg, gh_tls_server_t *tls)
{
    gh_shared_t *sh = calloc(1, sizeof *sh);
    size_t n = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        n += cfg->upstreams[i]->nservers;
    size_t nu = cfg->nupstreams;
    if (sh) {
        sh->health_down = calloc(n ? n : 1, sizeof *sh->health_down);
        sh->active = calloc(n ? n : 1, sizeof *sh->active);
        sh->rr = calloc(nu ? nu : 1, sizeof *sh->rr);
    }
    if (!sh || !sh->health_down || !sh->active || !sh->rr) {
        if (sh) {
            free(sh->health_down);
            free(sh->active);
            free(sh->rr);
        }
        free(sh);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        atomic_init(&sh->health_down[i], false);
        atomic_init(&sh->active[i], 0);
    }
    for (size_t i = 0; i < nu; i++)
        atomic_init(&sh->rr[i], 0);
    atomic_init(&sh->refs, 1);
    sh->cfg = cfg;
    sh->tls = tls;
    sh->plugins_created = true;
    return sh;
}

static void shared_retain(gh_shared_t *sh)
{
    atomic_fetch_add_explicit(&sh->refs, 1, memory_order_relaxed);
}

static void shared_release(gh_shared_t *sh)
{
    if (atomic_fetch_sub_explicit(&sh->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (sh->plugins_created)
        gh_plugins_destroy(sh->cfg);
    if (sh->tls)
        gh_tls_server_free(sh->tls); /* connections still open keep their own reference */
    gh_config_release(sh->cfg);
    free(sh->health_down);
    free(sh->active);
    free(sh->rr);
    free(sh);
}

gh_snapshot_t *gh__snapshot_new(gh_server_t *srv, gh_shared_t *sh)
{
    gh_snapshot_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->refcount = 1;
    s->server = srv;
    s->shared = sh;
    shared_retain(sh);
    s->cfg = sh->cfg;
    s->tls = sh->tls;
    gh__upstream_init(s);
    return s;
}

void gh__snapshot_retain(gh_snapshot_t *s)
{
    s->refcount++;
}

void gh__snapshot_release(gh_snapshot_t *s)
{
    if (--s->refcount > 0)
        return;
    gh__health_stop(s);
    gh__upstream_fini(s);
    shared_release(s->shared);
    free(s);
}

/* ---- listeners ---- */

static void on_connection(uv_stream_t *h, int status)
{
    gh_listener_t *l = h->data;
    if (status < 0) {
        gh_log_warn("accept on %s: %s", l->conf->address, uv_strerror(status));
        return;
    }
    gh__conn_accept(l);
}

/* A listening socket for lc. With several workers each gets its own socket
 * of the address (reuseport: SO_REUSEPORT) and the kernel spreads
 * connections over them; one worker binds without it, so a port another
 * program holds is an error as usual (with it too: the other program's
 * socket does not share). Returns the fd, or a negative errno after
 * logging it. */
static int listen_socket(const gh_listen_conf_t *lc, bool reuseport)
{
    int fam = lc->addr.ss_family;
    int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, rc = 0;
    if (fd < 0)
        rc = -errno;
    else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
             (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
             (fam == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
             /* accepted sockets inherit it: no setsockopt per connection */
             setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        rc = -errno;
    else if (bind(fd, (const struct sockaddr *)&lc->addr,
                  fam == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) != 0 ||
             listen(fd, 4096) != 0)
        rc = -errno;
    if (rc == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    gh_log_error("%s:%u:%u: cannot listen on %s: %s", lc->loc.file, lc->loc.line, lc->loc.col,
                 lc->address, uv_strerror(rc));
    return rc;
}

static void listener_closed(uv_handle_t *h)
{
    free(h->data);
}

static void listener_close(gh_listener_t *l)
{
    uv_close((uv_handle_t *)&l->tcp, listener_closed);
}

/* Starts accepting on fd (from listen_socket) on srv's loop; takes the fd. */
static gh_listener_t *listener_open(gh_server_t *srv, const gh_listen_conf_t *lc, int fd)
{
    gh_listener_t *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        return NULL;
    }
    l->server = srv;
    l->conf = lc;
    l->redirect_https = lc->redirect_https;
    l->tls = lc->tls;
    uv_tcp_init(srv->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (rc != 0)
        close(fd);
    else
        rc = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (rc != 0) {
        gh_log_error("%s:%u:%u: cannot listen on %s: %s", lc->loc.file, lc->loc.line,
                     lc->loc.col, lc->address, uv_strerror(rc));
        listener_close(l);
        return NULL;
    }
    if (srv->worker == 0)
        gh_log_info("listening on %s%s", lc->address,
                    lc->redirect_https ? " (redirect to https)" : "");
    return l;
}

static gh_listener_t *listener_find(gh_server_t *srv, const char *address)
{
    for (gh_listener_t *l = srv->listeners; l; l = l->next)
        if (strcmp(l->conf->address, address) == 0)
            return l;
    return NULL;
}

/* Closes worker k's sockets in a table from sockets_open (nlistens rows). */
static void fds_close_worker(const int *fds, size_t nlistens, unsigned k)
{
    for (size_t i = 0; i < nlistens; i++)
        if (fds[i * nworkers + k] >= 0)
            close(fds[i * nworkers + k]);
}

/* Closes every socket of such a table and frees it; NULL is fine. */
static void fds_discard(int *fds, size_t nlistens)
{
    for (unsigned k = 0; fds && k < nworkers; k++)
        fds_close_worker(fds, nlistens, k);
    free(fds);
}

/* The sockets a new config adds, opened before anything is closed:
 * fds[i * nworkers + k] is worker k's socket of cfg->listens[i], or -1
 * where worker 0 already listens on that address (kept, backlog and all).
 * NULL if one cannot be opened; nothing is left open then. */
static int *sockets_open(gh_server_t *w0, const gh_config_t *cfg)
{
    size_t n = cfg->nlistens * nworkers;
    int *fds = malloc((n ? n : 1) * sizeof *fds);
    if (!fds)
        return NULL;
    for (size_t i = 0; i < n; i++)
        fds[i] = -1;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (listener_find(w0, cfg->listens[i].address))
            continue;
        for (unsigned k = 0; k < nworkers; k++) {
            int fd = listen_socket(&cfg->listens[i], nworkers > 1);
            if (fd < 0) {
                fds_discard(fds, cfg->nlistens);
                return NULL;
            }
            fds[i * nworkers + k] = fd;
        }
    }
    return fds;
}

/* Worker srv's part of a new config's listeners: keeps the sockets of the
 * addresses it still has, starts the new ones (fds as from sockets_open,
 * taken) and closes the rest. */
static void listeners_apply(gh_server_t *srv, const gh_config_t *cfg, const int *fds)
{
    gh_listener_t *keep = NULL;
    gh_listener_t **claimed = calloc(cfg->nlistens ? cfg->nlistens : 1, sizeof *claimed);
    for (size_t i = 0; i < cfg->nlistens; i++) {
        const gh_listen_conf_t *lc = &cfg->listens[i];
        int fd = fds[i * nworkers + srv->worker];
        gh_listener_t *l = fd >= 0 ? listener_open(srv, lc, fd) : listener_find(srv, lc->address);
        if (claimed)
            claimed[i] = l;
    }
    /* close the ones no longer wanted */
    gh_listener_t *l = srv->listeners;
    while (l) {
        gh_listener_t *n = l->next;
        bool wanted = false;
        for (size_t i = 0; claimed && i < cfg->nlistens; i++)
            if (claimed[i] == l)
                wanted = true;
        if (!wanted) {
            if (srv->worker == 0)
                gh_log_info("closing listener %s", l->conf->address);
            listener_close(l);
        }
        l = n;
    }
    for (size_t i = 0; claimed && i < cfg->nlistens; i++) {
        if (!claimed[i])
            continue;
        /* the address decides: tls or redirect_https may change on a kept socket */
        claimed[i]->conf = &cfg->listens[i];
        claimed[i]->redirect_https = cfg->listens[i].redirect_https;
        claimed[i]->tls = cfg->listens[i].tls;
        claimed[i]->next = keep;
        keep = claimed[i];
    }
    srv->listeners = keep;
    free(claimed);
}

/* The admin listener (worker 0 only) is kept across reloads while its
 * address stays. A new address is opened first (admin_prepare) and the old
 * one closed only once everything else of the reload succeeded
 * (admin_commit). */
static int admin_prepare(gh_server_t *srv, const gh_config_t *cfg, gh_listener_t **fresh)
{
    *fresh = NULL;
    if (!cfg->admin.set || (srv->admin && strcmp(srv->admin->conf->address, cfg->admin.address) == 0))
        return 0;
    /* the listener keeps its own copy: it outlives the config it came from */
    gh_listen_conf_t lc;
    memset(&lc, 0, sizeof lc);
    lc.address = (char *)cfg->admin.address;
    lc.addr = cfg->admin.addr;
    lc.addrlen = cfg->admin.addrlen;
    lc.loc = cfg->admin.loc;
    int fd = listen_socket(&lc, false); /* worker 0 alone serves it */
    gh_listener_t *l = fd >= 0 ? listener_open(srv, &lc, fd) : NULL;
    if (!l)
        return -1;
    l->own = lc;
    snprintf(l->own_address, sizeof l->own_address, "%s", cfg->admin.address);
    l->own.address = l->own_address;
    l->conf = &l->own;
    l->admin = true;
    *fresh = l;
    return 0;
}

static void admin_commit(gh_server_t *srv, const gh_config_t *cfg, gh_listener_t *fresh)
{
    if (srv->admin && (fresh || !cfg->admin.set)) {
        listener_close(srv->admin);
        srv->admin = NULL;
    }
    if (fresh)
        srv->admin = fresh;
}

/* ---- applying a config on a worker ---- */

/* Makes sh current on srv: listeners as the config says, tunnels
 * reconciled, a new snapshot for new requests (those in flight keep the
 * old one). */
static void apply(gh_server_t *srv, gh_shared_t *sh, const int *fds)
{
    listeners_apply(srv, sh->cfg, fds);
    gh__tunnels_reconcile(srv, sh->cfg);
    gh_snapshot_t *old = srv->snap;
    gh_snapshot_t *s = gh__snapshot_new(srv, sh);
    if (!s) {
        gh_log_error("worker %u: out of memory applying the configuration", srv->worker);
        return;
    }
    srv->snap = s;
    if (srv->worker == 0) {
        gh__health_start(s, srv->loop, old);
        gh__health_stop(old);
    }
    if (old)
        gh__snapshot_release(old);
}

typedef struct apply_msg {
    gh_server_t *srv;
    gh_shared_t *sh;
    int *fds;               /* the full table; this worker's column is used */
} apply_msg_t;

static void apply_posted(void *arg)
{
    apply_msg_t *m = arg;
    if (!m->srv->stopping)
        apply(m->srv, m->sh, m->fds);
    else
        fds_close_worker(m->fds, m->sh->cfg->nlistens, m->srv->worker);
    shared_release(m->sh);
    free(m->fds);
    free(m);
}

/* Hands sh to every other worker; each applies it on its own thread. */
static void post_config(gh_shared_t *sh, const int *fds)
{
    size_t n = sh->cfg->nlistens * nworkers;
    for (unsigned k = 1; k < nworkers; k++) {
        apply_msg_t *m = malloc(sizeof *m);
        int *copy = malloc((n ? n : 1) * sizeof *copy);
        if (m && copy) {
            memcpy(copy, fds, n * sizeof *copy);
            m->srv = workers[k];
            m->sh = sh;
            m->fds = copy;
            shared_retain(sh);
            if (gh_xloop_post(workers[k]->inbox, apply_posted, m) == 0)
                continue;
            shared_release(sh);
        }
        gh_log_error("worker %u could not take the new configuration", k);
        fds_close_worker(fds, sh->cfg->nlistens, k);
        free(m);
        free(copy);
    }
}

/* ---- reload and stop ---- */

static void reload_failed(gh_server_t *srv, gh_errors_t *errs, const char *fallback)
{
    for (size_t i = 0; i < errs->n; i++)
        gh_log_error("reload failed: %s", errs->lines[i]);
    snprintf(srv->last_reload_error, sizeof srv->last_reload_error, "%s",
             errs->n ? errs->lines[0] : fallback);
    gh_errors_free(errs);
    srv->last_reload_ok = false;
    srv->reloads_failed++;
}

static void reload(gh_server_t *srv)
{
    gh_errors_t errs;
    gh_errors_init(&errs);
    gh_config_t *cfg = gh_config_load(srv->config_path, &errs);
    srv->last_reload_ms = (uint64_t)time(NULL) * 1000;
    if (!cfg) {
        reload_failed(srv, &errs, "unknown error");
        return;
    }
    for (size_t i = 0; i < errs.n; i++)
        gh_log_warn("%s", errs.lines[i]);
    gh_errors_free(&errs);
    /* Certificates are read from disk again: a renewed one is served from now on. */
    gh_tls_server_t *tls = NULL;
    gh_errors_init(&errs);
    if (cfg->tls.ncerts && !(tls = gh_tls_server_new(cfg, &errs))) {
        reload_failed(srv, &errs, "certificates could not be loaded");
        gh_config_release(cfg);
        return;
    }
    gh_errors_free(&errs);
    gh_errors_init(&errs);
    if (gh_plugins_create(cfg, srv->snap->cfg, &errs) != 0) {
        reload_failed(srv, &errs, "plugins could not be created");
        if (tls)
            gh_tls_server_free(tls);
        gh_config_release(cfg);
        return;
    }
    gh_errors_free(&errs);
    gh_shared_t *sh = shared_new(cfg, tls);
    gh_listener_t *admin = NULL;
    int *fds = sh ? sockets_open(srv, cfg) : NULL;
    if (!fds || admin_prepare(srv, cfg, &admin) != 0) {
        fds_discard(fds, cfg->nlistens);
        if (sh) {
            shared_release(sh);
        } else {
            if (tls)
                gh_tls_server_free(tls);
            gh_plugins_destroy(cfg);
            gh_config_release(cfg);
        }
        gh_errors_init(&errs);
        reload_failed(srv, &errs, "a listener could not be opened");
        gh_log_error("reload failed: keeping the running configuration");
        return;
    }
    unsigned want = cfg->workers ? cfg->workers : (unsigned)uv_available_parallelism();
    if (want != nworkers)
        gh_log_warn("workers: %u takes effect at the next start; running %u", want, nworkers);
    post_config(sh, fds);
    admin_commit(srv, cfg, admin);
    gh__connectors_apply(srv, cfg);
    apply(srv, sh, fds);
    free(fds);
    shared_release(sh);
    srv->last_reload_ok = true;
    srv->last_reload_error[0] = '\0';
    gh_log_level = cfg->log_level;
    srv->reloads_ok++;
    gh_log_info("configuration reloaded from %s", srv->config_path);
}

static void worker_stopped(void *arg)
{
    (void)arg;
    others_running--;
    gh__server_check_stopped(workers[0]);
}

static void finish_stop(gh_server_t *srv)
{
    srv->stop_done = true;
    if (srv->worker == 0) {
        /* The signal handlers stay installed, unreferenced so that the loop
         * can end. Closing them would put the default actions back (libuv
         * does so at once), and a late SIGTERM in the moment before they
         * could be set to ignore would turn a clean exit into a kill. A late
         * signal now ends in begin_stop (exit 0) or, once the loop is done,
         * in nothing. The default loop is left with them at exit. */
        uv_unref((uv_handle_t *)&srv->sig_hup);
        uv_unref((uv_handle_t *)&srv->sig_term);
        uv_unref((uv_handle_t *)&srv->sig_int);
    }
    uv_close((uv_handle_t *)&srv->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&srv->flush, NULL);
    gh__deadlines_close(srv);
    if (srv->snap) {
        gh__snapshot_release(srv->snap);
        srv->snap = NULL;
    }
    gh_xloop_close(srv->inbox);
    if (srv->worker != 0 && gh_xloop_post(workers[0]->inbox, worker_stopped, NULL) != 0)
        gh_log_error("worker %u: cannot report its stop", srv->worker);
}

void gh__server_conn_closed(gh_server_t *srv, gh_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (srv->conns == c)
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    atomic_fetch_sub_explicit(&conns_open, 1, memory_order_relaxed);
    gh__server_check_stopped(srv);
}

void gh__server_check_stopped(gh_server_t *srv)
{
    if (srv->stopping && !srv->stop_done && srv->nconns == 0 && srv->nretiring == 0 &&
        (srv->worker != 0 || others_running == 0))
        finish_stop(srv);
}

static void shutdown_expired(uv_timer_t *t)
{
    gh_server_t *srv = t->data;
    if (srv->nconns)
        gh_log_warn("shutdown timeout: closing %u connection(s)", srv->nconns);
    gh__connectors_force(srv);
    for (gh_conn_t *c = srv->conns, *n; c; c = n) {
        n = c->next;
        gh__conn_abort(c);
    }
}

/* One worker stops: listeners closed, idle connections closed, the others
 * finish within timeouts.shutdown. */
static void stop_worker(gh_server_t *srv)
{
    srv->stopping = true;
    /* Tunnels drain like any connection: no new streams, those in flight
     * finish, within timeouts.shutdown. */
    gh__connectors_stop(srv);
    gh__tunnels_goaway(srv);
    gh__upstream_close_idle(srv->snap);
    for (gh_listener_t *l = srv->listeners, *n; l; l = n) {
        n = l->next;
        listener_close(l);
    }
    srv->listeners = NULL;
    if (srv->admin) {
        listener_close(srv->admin);
        srv->admin = NULL;
    }
    for (gh_conn_t *c = srv->conns, *n; c; c = n) {
        n = c->next;
        gh__conn_close_idle(c);
    }
    uv_timer_start(&srv->shutdown_timer, shutdown_expired, srv->snap->cfg->timeouts.shutdown_ms, 0);
    gh__server_check_stopped(srv);
}

static void stop_posted(void *arg)
{
    gh_server_t *srv = arg;
    if (!srv->stopping)
        stop_worker(srv);
}

static void begin_stop(gh_server_t *srv)
{
    if (srv->stopping) {
        gh_log_warn("second stop signal: exiting now");
        gh__accesslog_flush();
        /* other workers may be mid-request: no exit handlers under them */
        _exit(0);
    }
    unsigned total = srv->nconns;
    gh_log_info("stopping: %u connection(s) to finish%s", total,
                nworkers > 1 ? " on worker 0" : "");
    for (unsigned k = 1; k < nworkers; k++)
        if (gh_xloop_post(workers[k]->inbox, stop_posted, workers[k]) != 0)
            gh_log_error("worker %u did not take the stop", k);
    stop_worker(srv);
}

static void on_signal(uv_signal_t *h, int signum)
{
    gh_server_t *srv = h->data;
    if (signum == SIGHUP) {
        if (!srv->stopping)
            reload(srv);
        return;
    }
    begin_stop(srv);
}

static void on_prepare(uv_prepare_t *p)
{
    (void)p;
    gh__accesslog_flush();
}

static int write_pid_file(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%ld\n", (long)getpid());
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- running ---- */

static gh_server_t *worker_new(unsigned k, const char *config_path)
{
    gh_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return NULL;
    srv->worker = k;
    srv->config_path = (char *)config_path;
    if (k == 0) {
        srv->loop = uv_default_loop();
    } else {
        srv->loop = malloc(sizeof *srv->loop);
        if (!srv->loop || uv_loop_init(srv->loop) != 0) {
            free(srv->loop);
            free(srv);
            return NULL;
        }
    }
    if (gh_xloop_new(srv->loop, &srv->inbox) != 0) {
        if (k != 0) {
            uv_loop_close(srv->loop);
            free(srv->loop);
        }
        free(srv);
        return NULL;
    }
    uv_timer_init(srv->loop, &srv->shutdown_timer);
    srv->shutdown_timer.data = srv;
    gh__deadlines_init(srv);
    uv_prepare_init(srv->loop, &srv->flush);
    uv_prepare_start(&srv->flush, on_prepare);
    /* referenced: it keeps a worker without listeners (a connector-only
     * process) running until finish_stop closes it */
    return srv;
}

/* After its loop ended (on its own thread). */
static void worker_end(gh_server_t *srv)
{
    gh_tcp_stream_loop_done(srv->loop);
    gh__accesslog_flush();
    gh__tunnels_free(srv);
    gh__buf_cache_clear();
    gh_tls_thread_done();
}

static void worker_free(gh_server_t *srv)
{
    uv_loop_close(srv->loop);
    gh_xloop_free(srv->inbox);
    free(srv->retiring);
    if (srv->worker != 0)
        free(srv->loop);
    free(srv);
}

static void *worker_main(void *arg)
{
    gh_server_t *srv = arg;
    char name[16];
    snprintf(name, sizeof name, "gh-worker-%u", srv->worker);
    pthread_setname_np(pthread_self(), name);   /* shown by top -H, ps -L */
    uv_run(srv->loop, UV_RUN_DEFAULT);
    worker_end(srv);
    return NULL;
}

/* Stops what a failed start left: closes every handle of every worker. */
static void start_failed(void)
{
    for (unsigned k = 0; k < nworkers; k++) {
        gh_server_t *srv = workers[k];
        if (!srv)
            continue;
        for (gh_listener_t *l = srv->listeners, *n; l; l = n) {
            n = l->next;
            listener_close(l);
        }
        if (srv->admin)
            listener_close(srv->admin);
        if (k == 0) {
            uv_close((uv_handle_t *)&srv->sig_hup, NULL);
            uv_close((uv_handle_t *)&srv->sig_term, NULL);
            uv_close((uv_handle_t *)&srv->sig_int, NULL);
        }
        uv_close((uv_handle_t *)&srv->shutdown_timer, NULL);
        uv_close((uv_handle_t *)&srv->flush, NULL);
        gh__deadlines_close(srv);
        gh_xloop_close(srv->inbox);
        if (srv->snap)
            gh__snapshot_release(srv->snap);
        uv_run(srv->loop, UV_RUN_NOWAIT);
        worker_free(srv);
    }
    free(workers);
    workers = NULL;
    nworkers = 0;
}

int gh_server_run(const char *config_path, gh_config_t *cfg)
{
    gh_log_level = cfg->log_level;
    signal(SIGPIPE, SIG_IGN);

    if (gh__accesslog_open(cfg) != 0) {
        gh_config_release(cfg);
        return 1;
    }
    gh_errors_t perrs;
    gh_errors_init(&perrs);
    gh_tls_server_t *tls = NULL;
    if (cfg->tls.ncerts && !(tls = gh_tls_server_new(cfg, &perrs))) {
        for (size_t i = 0; i < perrs.n; i++)
            gh_log_error("%s", perrs.lines[i]);
        gh_errors_free(&perrs);
        gh_config_release(cfg);
        return 1;
    }
    for (size_t i = 0; i < perrs.n; i++)
        gh_log_warn("%s", perrs.lines[i]);
    gh_errors_free(&perrs);
    gh_errors_init(&perrs);
    if (gh_plugins_create(cfg, NULL, &perrs) != 0) {
        for (size_t i = 0; i < perrs.n; i++)
            gh_log_error("%s", perrs.lines[i]);
        gh_errors_free(&perrs);
        if (tls)
            gh_tls_server_free(tls);
        gh_config_release(cfg);
        return 1;
    }
    gh_errors_free(&perrs);
    gh_shared_t *sh = shared_new(cfg, tls);
    nworkers = cfg->workers ? cfg->workers : (unsigned)uv_available_parallelism();
    if (nworkers < 1)
        nworkers = 1;
    workers = calloc(nworkers, sizeof *workers);
    if (!sh || !workers) {
        gh_log_error("out of memory");
        return 1;
    }
    for (unsigned k = 0; k < nworkers; k++) {
        if (!(workers[k] = worker_new(k, config_path))) {
            gh_log_error("cannot start worker %u", k);
            shared_release(sh);
            start_failed();
            return 1;
        }
    }
    gh_server_t *srv = workers[0];
    srv->started_ms = (uint64_t)time(NULL) * 1000;
    /* Signals are handled before the first connection can arrive: a
     * SIGTERM right after the port opens must stop gracefully, not kill. */
    uv_signal_init(srv->loop, &srv->sig_hup);
    uv_signal_init(srv->loop, &srv->sig_term);
    uv_signal_init(srv->loop, &srv->sig_int);
    srv->sig_hup.data = srv->sig_term.data = srv->sig_int.data = srv;
    uv_signal_start(&srv->sig_hup, on_signal, SIGHUP);
    uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_signal, SIGINT);
    gh_listener_t *admin = NULL;
    int *fds = sockets_open(srv, cfg);
    if (!fds || admin_prepare(srv, cfg, &admin) != 0) {
        fds_discard(fds, cfg->nlistens);
        shared_release(sh);
        start_failed();
        return 1;
    }
    srv->admin = admin;
    /* Before the threads start, every loop is this thread's to set up. */
    for (unsigned k = 0; k < nworkers; k++) {
        listeners_apply(workers[k], cfg, fds);
        workers[k]->snap = gh__snapshot_new(workers[k], sh);
    }
    free(fds);
    shared_release(sh);
    for (unsigned k = 0; k < nworkers; k++) {
        if (!workers[k]->snap) {
            gh_log_error("out of memory");
            start_failed();
            return 1;
        }
    }
    char *pid_file = cfg->pid_file ? strdup(cfg->pid_file) : NULL;
    if (pid_file && write_pid_file(pid_file) != 0) {
        gh_log_error("cannot write pid_file %s: %s", pid_file, strerror(errno));
        free(pid_file);
        return 1;
    }
    pthread_t *threads = calloc(nworkers, sizeof *threads);
    for (unsigned k = 1; k < nworkers; k++) {
        if (!threads || pthread_create(&threads[k], NULL, worker_main, workers[k]) != 0) {
            gh_log_error("cannot start worker thread %u", k);
            exit(1);
        }
        others_running++;
    }

    gh__health_start(srv->snap, srv->loop, NULL);
    gh__connectors_apply(srv, cfg);
    if (nworkers > 1)
        gh_log_info("gatehouse %s started with %s, %u workers", GH_VERSION, config_path, nworkers);
    else
        gh_log_info("gatehouse %s started with %s", GH_VERSION, config_path);

    uv_run(srv->loop, UV_RUN_DEFAULT);
    for (unsigned k = 1; k < nworkers; k++)
        pthread_join(threads[k], NULL);
    free(threads);
    worker_end(srv);
    int code = srv->exit_code;
    for (unsigned k = 0; k < nworkers; k++)
        worker_free(workers[k]);
    free(workers);
    workers = NULL;
    if (pid_file) {
        unlink(pid_file);
        free(pid_file);
    }
    gh_log_info("stopped");
    return code;
}
