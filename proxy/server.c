/* The server: listeners, signals, config snapshots and their reload,
 * graceful stop. One libuv loop. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conf/config.h"
#include "proxy/health.h"
#include "plugins/plugin.h"
#include "proxy/log.h"
#include "proxy/proxy.h"
#include "proxy/tunnel_edge.h"
#include "tls/tls.h"

gh_snapshot_t *gh__snapshot_new(gh_server_t *srv, gh_config_t *cfg)
{
    gh_snapshot_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->refcount = 1;
    s->server = srv;
    s->cfg = cfg;
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
    if (s->plugins_created)
        gh_plugins_destroy(s->cfg);
    if (s->tls)
        gh_tls_server_free(s->tls); /* connections still open keep their own reference */
    gh_config_release(s->cfg);
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

static void listener_closed(uv_handle_t *h);

static gh_listener_t *listener_open(gh_server_t *srv, const gh_listen_conf_t *lc)
{
    gh_listener_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->server = srv;
    l->conf = lc;
    l->redirect_https = lc->redirect_https;
    l->tls = lc->tls;
    uv_tcp_init(srv->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&lc->addr,
                         lc->addr.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (rc != 0) {
        gh_log_error("%s:%u:%u: cannot listen on %s: %s", lc->loc.file, lc->loc.line,
                     lc->loc.col, lc->address, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, listener_closed);
        return NULL;
    }
    gh_log_info("listening on %s%s", lc->address, lc->redirect_https ? " (redirect to https)" : "");
    return l;
}

static void listener_closed(uv_handle_t *h)
{
    free(h->data);
}

static void listener_close(gh_listener_t *l)
{
    uv_close((uv_handle_t *)&l->tcp, listener_closed);
}

/* Opens what the new config adds, keeps the sockets of addresses it still
 * has (their backlog included) and closes the rest. Returns -1 if a new
 * address cannot be opened; nothing is closed then. */
static int listeners_apply(gh_server_t *srv, const gh_config_t *cfg)
{
    gh_listener_t *keep = NULL, *fresh = NULL;
    gh_listener_t **claimed = calloc(cfg->nlistens ? cfg->nlistens : 1, sizeof *claimed);
    if (!claimed)
        return -1;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        const gh_listen_conf_t *lc = &cfg->listens[i];
        for (gh_listener_t *l = srv->listeners; l; l = l->next) {
            /* the address decides: tls or redirect_https may change on a kept socket */
            if (strcmp(l->conf->address, lc->address) == 0) {
                claimed[i] = l;
                break;
            }
        }
        if (!claimed[i]) {
            gh_listener_t *l = listener_open(srv, lc);
            if (!l) {
                while (fresh) {
                    gh_listener_t *n = fresh->next;
                    listener_close(fresh);
                    fresh = n;
                }
                free(claimed);
                return -1;
            }
            l->next = fresh;
            fresh = l;
            claimed[i] = l;
        }
    }
    /* close the ones no longer wanted */
    gh_listener_t *l = srv->listeners;
    while (l) {
        gh_listener_t *n = l->next;
        bool wanted = false;
        for (size_t i = 0; i < cfg->nlistens; i++)
            if (claimed[i] == l)
                wanted = true;
        if (!wanted) {
            gh_log_info("closing listener %s", l->conf->address);
            listener_close(l);
        }
        l = n;
    }
    for (size_t i = 0; i < cfg->nlistens; i++) {
        claimed[i]->conf = &cfg->listens[i];
        claimed[i]->redirect_https = cfg->listens[i].redirect_https;
        claimed[i]->tls = cfg->listens[i].tls;
        claimed[i]->next = keep;
        keep = claimed[i];
    }
    srv->listeners = keep;
    free(claimed);
    return 0;
}

/* The admin listener is kept across reloads while its address stays. A new
 * address is opened first (admin_prepare) and the old one closed only once
 * everything else of the reload succeeded (admin_commit). */
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
    gh_listener_t *l = listener_open(srv, &lc);
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

/* Opens everything the new config needs before closing anything: either
 * all of it applies, or nothing changes. */
static int sockets_apply(gh_server_t *srv, const gh_config_t *cfg)
{
    gh_listener_t *admin = NULL;
    if (admin_prepare(srv, cfg, &admin) != 0)
        return -1;
    if (listeners_apply(srv, cfg) != 0) {
        if (admin)
            listener_close(admin);
        return -1;
    }
    admin_commit(srv, cfg, admin);
    return 0;
}

/* ---- reload and stop ---- */

static void reload(gh_server_t *srv)
{
    gh_errors_t errs;
    gh_errors_init(&errs);
    gh_config_t *cfg = gh_config_load(srv->config_path, &errs);
    srv->last_reload_ms = (uint64_t)time(NULL) * 1000;
    if (!cfg) {
        for (size_t i = 0; i < errs.n; i++)
            gh_log_error("reload failed: %s", errs.lines[i]);
        snprintf(srv->last_reload_error, sizeof srv->last_reload_error, "%s",
                 errs.n ? errs.lines[0] : "unknown error");
        srv->last_reload_ok = false;
        gh_errors_free(&errs);
        srv->reloads_failed++;
        return;
    }
    for (size_t i = 0; i < errs.n; i++)
        gh_log_warn("%s", errs.lines[i]);
    gh_errors_free(&errs);
    /* Certificates are read from disk again: a renewed one is served from now on. */
    gh_tls_server_t *tls = NULL;
    gh_errors_init(&errs);
    if (cfg->tls.ncerts && !(tls = gh_tls_server_new(cfg, &errs))) {
        for (size_t i = 0; i < errs.n; i++)
            gh_log_error("reload failed: %s", errs.lines[i]);
        snprintf(srv->last_reload_error, sizeof srv->last_reload_error, "%s",
                 errs.n ? errs.lines[0] : "certificates could not be loaded");
        gh_errors_free(&errs);
        gh_config_release(cfg);
        srv->reloads_failed++;
        srv->last_reload_ok = false;
        return;
    }
    gh_errors_free(&errs);
    gh_errors_init(&errs);
    if (gh_plugins_create(cfg, srv->snap->cfg, &errs) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            gh_log_error("reload failed: %s", errs.lines[i]);
        snprintf(srv->last_reload_error, sizeof srv->last_reload_error, "%s",
                 errs.n ? errs.lines[0] : "plugins could not be created");
        gh_errors_free(&errs);
        if (tls)
            gh_tls_server_free(tls);
        gh_config_release(cfg);
        srv->reloads_failed++;
        srv->last_reload_ok = false;
        return;
    }
    gh_errors_free(&errs);
    if (sockets_apply(srv, cfg) != 0) {
        if (tls)
            gh_tls_server_free(tls);
        gh_plugins_destroy(cfg);
        gh_config_release(cfg);
        srv->reloads_failed++;
        srv->last_reload_ok = false;
        snprintf(srv->last_reload_error, sizeof srv->last_reload_error,
                 "a listener could not be opened");
        gh_log_error("reload failed: keeping the running configuration");
        return;
    }
    gh__connectors_apply(srv, cfg);
    gh__tunnels_reconcile(srv, cfg);
    srv->last_reload_ok = true;
    srv->last_reload_error[0] = '\0';
    gh_snapshot_t *old = srv->snap;
    srv->snap = gh__snapshot_new(srv, cfg);
    srv->snap->plugins_created = true;
    srv->snap->tls = tls;
    gh_log_level = cfg->log_level;
    gh__health_start(srv->snap, srv->loop, old);
    gh__health_stop(old);
    gh__snapshot_release(old);
    srv->reloads_ok++;
    gh_log_info("configuration reloaded from %s", srv->config_path);
}

static void finish_stop(gh_server_t *srv)
{
    uv_close((uv_handle_t *)&srv->sig_hup, NULL);
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    /* Closing the handlers restored the default actions (libuv does it at
     * once); a late signal must not turn a clean exit into a kill. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    uv_close((uv_handle_t *)&srv->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&srv->flush, NULL);
    if (srv->snap) {
        gh__snapshot_release(srv->snap);
        srv->snap = NULL;
    }
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
    gh__server_check_stopped(srv);
}

void gh__server_check_stopped(gh_server_t *srv)
{
    if (srv->stopping && srv->nconns == 0 && srv->nretiring == 0 && srv->snap)
        finish_stop(srv);
}

static void shutdown_expired(uv_timer_t *t)
{
    gh_server_t *srv = t->data;
    gh_log_warn("shutdown timeout: closing %u connection(s)", srv->nconns);
    gh__connectors_force(srv);
    for (gh_conn_t *c = srv->conns, *n; c; c = n) {
        n = c->next;
        gh__conn_abort(c);
    }
}

static void begin_stop(gh_server_t *srv)
{
    if (srv->stopping) {
        gh_log_warn("second stop signal: exiting now");
        gh__accesslog_flush();
        exit(0);
    }
    srv->stopping = true;
    gh_log_info("stopping: %u connection(s) to finish", srv->nconns);
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
    if (srv->nconns == 0 && srv->nretiring == 0) {
        finish_stop(srv);
        return;
    }
    uv_timer_start(&srv->shutdown_timer, shutdown_expired, srv->snap->cfg->timeouts.shutdown_ms, 0);
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

int gh_server_run(const char *config_path, gh_config_t *cfg)
{
    static gh_server_t srv_storage;
    gh_server_t *srv = &srv_storage;
    memset(srv, 0, sizeof *srv);
    srv->loop = uv_default_loop();
    srv->config_path = (char *)config_path;
    gh_log_level = cfg->log_level;
    signal(SIGPIPE, SIG_IGN);

    if (gh__accesslog_open(cfg) != 0) {
        gh_config_release(cfg);
        return 1;
    }
    if (cfg->workers != 1)
        gh_log_warn("workers: %u is not supported yet; running one event loop", cfg->workers);
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
    srv->snap = gh__snapshot_new(srv, cfg);
    srv->snap->plugins_created = true;
    srv->snap->tls = tls;
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
    if (sockets_apply(srv, cfg) != 0) {
        uv_close((uv_handle_t *)&srv->sig_hup, NULL);
        uv_close((uv_handle_t *)&srv->sig_term, NULL);
        uv_close((uv_handle_t *)&srv->sig_int, NULL);
        gh__snapshot_release(srv->snap);
        srv->snap = NULL;
        uv_run(srv->loop, UV_RUN_NOWAIT);
        return 1;
    }
    char *pid_file = cfg->pid_file ? strdup(cfg->pid_file) : NULL;
    if (pid_file && write_pid_file(pid_file) != 0) {
        gh_log_error("cannot write pid_file %s: %s", pid_file, strerror(errno));
        free(pid_file);
        return 1;
    }

    uv_timer_init(srv->loop, &srv->shutdown_timer);
    srv->shutdown_timer.data = srv;
    uv_prepare_init(srv->loop, &srv->flush);
    uv_prepare_start(&srv->flush, on_prepare);
    uv_unref((uv_handle_t *)&srv->flush);
    gh__health_start(srv->snap, srv->loop, NULL);
    gh__connectors_apply(srv, cfg);
    gh_log_info("gatehouse %s started with %s", GH_VERSION, config_path);

    uv_run(srv->loop, UV_RUN_DEFAULT);
    gh__accesslog_flush();
    gh__tunnels_free(srv);
    free(srv->retiring);
    gh__buf_cache_clear();
    if (pid_file) {
        unlink(pid_file);
        free(pid_file);
    }
    gh_log_info("stopped");
    uv_loop_close(srv->loop);
    return srv->exit_code;
}
