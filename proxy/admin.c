/* The admin endpoints (SPEC.md section 3, "Admin"): /healthz, /metrics,
 * /status.json and /status. Everything is rendered from live state at
 * request time: the current snapshot, its runtime upstream state, the
 * server's connection list and the counters of proxy/metrics.c.
 *
 * Every string that comes from a config or a request goes out through
 * gh_obuf_esc(), which also turns invalid UTF-8 into U+FFFD. /status is a
 * self-contained page (inline CSS, no script, no external asset) with a
 * Content-Security-Policy that would block any asset that slipped in. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/admin.h"
#include "proxy/connector.h"
#include "proxy/tunnel_edge.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"

#define COMMON_HEADERS "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"

static const char *const action_names[] = {
    [GH_ACTION_UPSTREAM] = "upstream",
    [GH_ACTION_REDIRECT] = "redirect",
    [GH_ACTION_RESPOND] = "respond",
};

static const char *const balance_names[] = {
    [GH_BALANCE_ROUND_ROBIN] = "round_robin",
    [GH_BALANCE_LEAST_CONN] = "least_conn",
    [GH_BALANCE_HASH_CLIENT_IP] = "hash_client_ip",
};

/* "2024-05-01T12:00:00Z" (iso) or "2024-05-01 12:00:00 UTC" from Unix ms. */
static void fmt_time(uint64_t ms, bool iso, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) ||
        !strftime(out, 32, iso ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%d %H:%M:%S UTC", &tm))
        snprintf(out, 32, "?");
}

static void fmt_duration(uint64_t s, char out[32])
{
    if (s >= 86400)
        snprintf(out, 32, "%llud %lluh", (unsigned long long)(s / 86400),
                 (unsigned long long)(s % 86400 / 3600));
    else if (s >= 3600)
        snprintf(out, 32, "%lluh %llum", (unsigned long long)(s / 3600),
                 (unsigned long long)(s % 3600 / 60));
    else if (s >= 60)
        snprintf(out, 32, "%llum %llus", (unsigned long long)(s / 60),
                 (unsigned long long)(s % 60));
    else
        snprintf(out, 32, "%llus", (unsigned long long)s);
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static unsigned long long ull(uint64_t v)
{
    return (unsigned long long)v;
}

/* limited[0..n) then auth failures[0..n) for cfg's plugins; NULL (shown as
 * zeros) when out of memory. */
static uint64_t *plugin_counts(const gh_config_t *cfg)
{
    uint64_t *c = calloc(cfg->nplugins ? 2 * cfg->nplugins : 1, sizeof *c);
    if (c)
        gh_metrics_plugin_counts(cfg, c, c + cfg->nplugins);
    return c;
}

/* ---- /status.json ---- */

/* ,"key":"escaped value" (or null) */
static void jstr(gh_obuf_t *b, const char *key, const char *val)
{
    gh_obuf_printf(b, ",\"%s\":", key);
    if (!val) {
        gh_obuf_puts(b, "null");
        return;
    }
    gh_obuf_puts(b, "\"");
    gh_obuf_esc(b, val, GH_ESC_JSON);
    gh_obuf_puts(b, "\"");
}

static void json_stats(gh_obuf_t *b, const gh_route_stats_t *st)
{
    gh_obuf_printf(b, ",\"requests\":%llu,\"errors\":%llu,\"client_errors\":%llu,"
                      "\"rate_limited\":%llu",
                   ull(st->requests), ull(st->errors), ull(st->client_errors), ull(st->limited));
}

static void json_routes(gh_obuf_t *b, const gh_config_t *cfg)
{
    gh_obuf_puts(b, ",\"routes\":[");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gh_route_conf_t *rt = &cfg->routes[i];
        gh_route_stats_t st;
        gh_metrics_route_stats(rt->name, &st);
        gh_obuf_printf(b, "%s{\"index\":%zu", i ? "," : "", i);
        jstr(b, "name", rt->name);
        jstr(b, "host", rt->host);
        jstr(b, "path", rt->path);
        jstr(b, "action", action_names[rt->action]);
        jstr(b, "upstream", rt->action == GH_ACTION_UPSTREAM && rt->upstream ? rt->upstream->name : NULL);
        jstr(b, "redirect", rt->action == GH_ACTION_REDIRECT ? rt->redirect : NULL);
        gh_obuf_printf(b, ",\"max_body_bytes\":%llu,\"plugins\":[", ull(rt->max_body_bytes));
        for (size_t j = 0; j < rt->nplugins; j++) {
            gh_obuf_puts(b, j ? ",\"" : "\"");
            gh_obuf_esc(b, rt->plugins[j]->name, GH_ESC_JSON);
            gh_obuf_puts(b, "\"");
        }
        gh_obuf_puts(b, "]");
        json_stats(b, &st);
        gh_obuf_puts(b, "}");
    }
    gh_route_stats_t none;
    gh_metrics_route_stats("", &none);
    gh_obuf_puts(b, "],\"unrouted\":{\"note\":\"requests that matched no route\"");
    json_stats(b, &none);
    gh_obuf_puts(b, "}");
}

static void json_upstreams(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_snapshot_t *snap = srv->snap;
    uint64_t now = uv_now(srv->loop);
    gh_obuf_puts(b, ",\"upstreams\":[");
    for (size_t i = 0; i < snap->cfg->nupstreams; i++) {
        const gh_upstream_t *up = &snap->ups[i];
        gh_obuf_printf(b, "%s{\"inline\":%s", i ? "," : "", up->conf->is_inline ? "true" : "false");
        jstr(b, "name", up->conf->name);
        jstr(b, "balance", balance_names[up->conf->balance]);
        gh_obuf_printf(b, ",\"health_check\":%s,\"servers\":[",
                       up->conf->health.enabled ? "true" : "false");
        for (size_t j = 0; j < up->n; j++) {
            const gh_upserver_t *sv = &up->servers[j];
            char why[160];
            bool ok = gh_metrics_server_up(sv, now, why, sizeof why);
            gh_obuf_printf(b, "%s{\"up\":%s", j ? "," : "", ok ? "true" : "false");
            jstr(b, "state", ok ? "up" : "down");
            jstr(b, "server", sv->conf->authority);
            jstr(b, "url", sv->conf->url);
            jstr(b, "reason", why[0] ? why : NULL);
            gh_obuf_printf(b, ",\"active\":%u,\"idle\":%u,\"failed_connects\":%u}", atomic_load(sv->active),
                           sv->nidle, sv->fails);
        }
        gh_obuf_puts(b, "]}");
    }
    gh_obuf_puts(b, "]");
}

/* How many of the connections of a connect entry are up. */
static unsigned connectors_up(const gh_server_t *srv, const gh_connect_conf_t *cc)
{
    unsigned up = 0;
    for (unsigned j = 0; j < cc->connections; j++) {
        char *key = gh__connector_key(cc, j);
        for (size_t m = 0; key && m < srv->nconnectors; m++)
            if (strcmp(gh_connector_key(srv->connectors[m]), key) == 0 &&
                gh_connector_up(srv->connectors[m]))
                up++;
        free(key);
    }
    return up;
}

static void json_tunnels_plugins(gh_obuf_t *b, const gh_server_t *srv, const gh_config_t *cfg)
{
    gh_obuf_puts(b, ",\"tunnels\":[");
    for (size_t i = 0; i < cfg->ntunnels; i++) {
        unsigned conns, streams;
        gh__tunnel_counts(srv, cfg->tunnels[i].name, &conns, &streams);
        gh_obuf_printf(b, "%s{\"connections\":%u,\"streams\":%u", i ? "," : "", conns, streams);
        jstr(b, "name", cfg->tunnels[i].name);
        jstr(b, "state", conns ? "online" : "offline");
        gh_obuf_puts(b, "}");
    }
    gh_obuf_puts(b, "],\"connectors\":[");
    for (size_t i = 0; i < cfg->nconnects; i++) {
        const gh_connect_conf_t *cc = &cfg->connects[i];
        gh_obuf_printf(b, "%s{\"connections\":%u,\"connected\":%u", i ? "," : "", cc->connections,
                       connectors_up(srv, cc));
        jstr(b, "edge", cc->edge);
        jstr(b, "tunnel", cc->tunnel);
        gh_obuf_puts(b, ",\"services\":[");
        for (size_t j = 0; j < cc->nservices; j++) {
            gh_obuf_puts(b, j ? ",{\"name\":\"" : "{\"name\":\"");
            gh_obuf_esc(b, cc->services[j].name, GH_ESC_JSON);
            gh_obuf_puts(b, "\"");
            jstr(b, "server", cc->services[j].server.url);
            gh_obuf_puts(b, "}");
        }
        gh_obuf_puts(b, "]}");
    }
    gh_obuf_puts(b, "],\"plugins\":[");
    uint64_t *counts = plugin_counts(cfg);
    for (size_t i = 0; i < cfg->nplugins; i++) {
        const gh_plugin_conf_t *pc = cfg->plugins[i];
        gh_obuf_printf(b, "%s{\"rate_limited\":%llu,\"auth_failures\":%llu", i ? "," : "",
                       ull(counts ? counts[i] : 0), ull(counts ? counts[cfg->nplugins + i] : 0));
        jstr(b, "name", pc->name);
        jstr(b, "type", pc->type);
        gh_obuf_puts(b, "}");
    }
    free(counts);
    gh_obuf_puts(b, "]");
}

static void render_json(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_config_t *cfg = srv->snap->cfg;
    uint64_t now = wall_ms(), bin, bout;
    char t[32];
    gh_conn_counts_t cc;
    gh_route_stats_t tot;
    gh_metrics_conn_counts(srv, &cc);
    gh_metrics_totals(&tot, &bin, &bout);

    gh_obuf_printf(b, "{\"uptime_seconds\":%llu",
                   ull(now > srv->started_ms ? (now - srv->started_ms) / 1000 : 0));
    jstr(b, "version", GH_VERSION);
    fmt_time(now, true, t);
    jstr(b, "now", t);
    fmt_time(srv->started_ms, true, t);
    jstr(b, "started", t);
    jstr(b, "config_file", srv->config_path);
    gh_obuf_printf(b, ",\"connections\":{\"active\":%u,\"idle\":%u,\"closing\":%u,\"limit\":%llu}",
                   cc.active, cc.idle, cc.closing, ull(cfg->limits.max_connections));
    gh_obuf_printf(b, ",\"totals\":{\"bytes_in\":%llu,\"bytes_out\":%llu", ull(bin), ull(bout));
    json_stats(b, &tot);
    gh_obuf_puts(b, "}");
    json_routes(b, cfg);
    json_upstreams(b, srv);
    json_tunnels_plugins(b, srv, cfg);
    gh_obuf_printf(b, ",\"reloads\":{\"ok\":%llu,\"error\":%llu},\"last_reload\":{\"ok\":%s",
                   ull(srv->reloads_ok), ull(srv->reloads_failed),
                   !srv->last_reload_ms || srv->last_reload_ok ? "true" : "false");
    fmt_time(srv->last_reload_ms, true, t);
    jstr(b, "time", srv->last_reload_ms ? t : NULL);
    jstr(b, "error", srv->last_reload_ms && !srv->last_reload_ok ? srv->last_reload_error : NULL);
    gh_obuf_puts(b, "}}\n");
}

/* ---- /status ---- */

static const char page_head[] =
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta http-equiv=\"refresh\" content=\"5\">"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    "<title>gatehouse status</title><style>"
    "body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 24px;color:#1d2330;background:#f6f7f9}"
    "header{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap;padding:14px 0}"
    "h1{font-size:20px;margin:0}h2{font-size:16px;margin:22px 0 6px}"
    ".muted{color:#667}.cards{display:flex;flex-wrap:wrap;gap:10px}"
    ".card{background:#fff;border:1px solid #dde;border-radius:6px;padding:8px 14px;min-width:120px}"
    ".card b{display:block;font-size:20px}"
    "table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #dde}"
    "th,td{text-align:left;padding:4px 10px;border-bottom:1px solid #eef;vertical-align:top}"
    "th{background:#eef0f4;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".st{display:inline-block;padding:0 8px;border-radius:9px;font-weight:600;color:#fff}"
    ".up{background:#1f8a4c}.down{background:#c62828}.off{background:#8a8f98}"
    ".bad{color:#c62828;font-weight:600}code,pre{font:12px ui-monospace,monospace}"
    "pre{white-space:pre-wrap;margin:0}"
    "</style></head><body>\n";

static void h(gh_obuf_t *b, const char *s)
{
    gh_obuf_esc(b, s, GH_ESC_HTML);
}

static void td_num(gh_obuf_t *b, uint64_t v, bool bad_if_nonzero)
{
    gh_obuf_printf(b, "<td class=\"n%s\">%llu</td>", bad_if_nonzero && v ? " bad" : "", ull(v));
}

static void card(gh_obuf_t *b, const char *label, const char *value, const char *note)
{
    gh_obuf_puts(b, "<div class=\"card\"><span class=\"muted\">");
    h(b, label);
    gh_obuf_puts(b, "</span><b>");
    h(b, value);
    gh_obuf_puts(b, "</b><span class=\"muted\">");
    h(b, note);
    gh_obuf_puts(b, "</span></div>");
}

static void html_routes(gh_obuf_t *b, const gh_config_t *cfg)
{
    gh_obuf_puts(b, "<h2>Routes</h2><table><tr><th>Route</th><th>Action</th><th>Target</th>"
                    "<th>Plugins</th><th class=\"n\">Requests</th><th class=\"n\">5xx</th>"
                    "<th class=\"n\">4xx</th><th class=\"n\">Rate limited</th></tr>\n");
    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const gh_route_conf_t *rt = i < cfg->nroutes ? &cfg->routes[i] : NULL;
        gh_route_stats_t st;
        gh_metrics_route_stats(rt ? rt->name : "", &st);
        if (!rt && !st.requests)
            break;
        gh_obuf_puts(b, "<tr><td><code>");
        h(b, rt ? rt->name : "(no route matched)");
        gh_obuf_puts(b, "</code></td><td>");
        h(b, rt ? action_names[rt->action] : "404");
        gh_obuf_puts(b, "</td><td>");
        if (rt && rt->action == GH_ACTION_UPSTREAM && rt->upstream) {
            h(b, rt->upstream->name);
        } else if (rt && rt->action == GH_ACTION_REDIRECT) {
            gh_obuf_printf(b, "%d ", rt->redirect_status);
            h(b, rt->redirect);
        } else if (rt && rt->action == GH_ACTION_RESPOND) {
            gh_obuf_printf(b, "%d", rt->respond_status);
        }
        gh_obuf_puts(b, "</td><td>");
        for (size_t j = 0; rt && j < rt->nplugins; j++) {
            gh_obuf_puts(b, j ? ", " : "");
            h(b, rt->plugins[j]->name);
        }
        gh_obuf_puts(b, "</td>");
        td_num(b, st.requests, false);
        td_num(b, st.errors, true);
        td_num(b, st.client_errors, false);
        td_num(b, st.limited, false);
        gh_obuf_puts(b, "</tr>\n");
    }
    gh_obuf_puts(b, "</table>\n");
}

static void html_upstreams(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_snapshot_t *snap = srv->snap;
    uint64_t now = uv_now(srv->loop);
    gh_obuf_puts(b, "<h2>Upstream servers</h2><table><tr><th>Upstream</th><th>Server</th>"
                    "<th>State</th><th>Why</th><th class=\"n\">Active</th><th class=\"n\">Idle</th>"
                    "</tr>\n");
    for (size_t i = 0; i < snap->cfg->nupstreams; i++) {
        const gh_upstream_t *up = &snap->ups[i];
        for (size_t j = 0; j < up->n; j++) {
            const gh_upserver_t *sv = &up->servers[j];
            char why[160];
            bool ok = gh_metrics_server_up(sv, now, why, sizeof why);
            gh_obuf_puts(b, "<tr><td>");
            h(b, up->conf->name);
            gh_obuf_puts(b, "</td><td><code>");
            h(b, sv->conf->url);
            gh_obuf_printf(b, "</code></td><td><span class=\"st %s\">%s</span></td><td>",
                           ok ? "up" : "down", ok ? "up" : "down");
            h(b, why);
            gh_obuf_puts(b, "</td>");
            td_num(b, atomic_load(sv->active), false);
            td_num(b, sv->nidle, false);
            gh_obuf_puts(b, "</tr>\n");
        }
    }
    gh_obuf_puts(b, "</table>\n");
}

static void html_tunnels_plugins(gh_obuf_t *b, const gh_server_t *srv, const gh_config_t *cfg)
{
    if (cfg->ntunnels) {
        gh_obuf_puts(b, "<h2>Tunnels</h2><table><tr><th>Tunnel</th><th>State</th>"
                        "<th class=\"n\">Connections</th><th class=\"n\">Streams</th></tr>\n");
        for (size_t i = 0; i < cfg->ntunnels; i++) {
            gh_obuf_puts(b, "<tr><td>");
            h(b, cfg->tunnels[i].name);
            unsigned conns, streams;
            gh__tunnel_counts(srv, cfg->tunnels[i].name, &conns, &streams);
            gh_obuf_printf(b, "</td><td><span class=\"st %s\">%s</span></td>"
                              "<td class=\"n\">%u</td><td class=\"n\">%u</td></tr>\n",
                           conns ? "up" : "off", conns ? "online" : "offline", conns, streams);
        }
        gh_obuf_puts(b, "</table>\n");
    }
    if (cfg->nconnects) {
        gh_obuf_puts(b, "<h2>Connectors</h2><table><tr><th>Edge</th><th>Tunnel</th>"
                        "<th>Services</th><th class=\"n\">Connected</th></tr>\n");
        for (size_t i = 0; i < cfg->nconnects; i++) {
            const gh_connect_conf_t *cc = &cfg->connects[i];
            gh_obuf_puts(b, "<tr><td><code>");
            h(b, cc->edge);
            gh_obuf_puts(b, "</code></td><td>");
            h(b, cc->tunnel);
            gh_obuf_puts(b, "</td><td>");
            for (size_t j = 0; j < cc->nservices; j++) {
                gh_obuf_puts(b, j ? ", " : "");
                h(b, cc->services[j].name);
            }
            gh_obuf_printf(b, "</td><td class=\"n\">0 of %u</td></tr>\n", cc->connections);
        }
        gh_obuf_puts(b, "</table>\n");
    }
    if (cfg->nplugins) {
        gh_obuf_puts(b, "<h2>Plugins</h2><table><tr><th>Plugin</th><th>Type</th>"
                        "<th class=\"n\">Rate limited</th><th class=\"n\">Auth failures</th></tr>\n");
        uint64_t *counts = plugin_counts(cfg);
        for (size_t i = 0; i < cfg->nplugins; i++) {
            const gh_plugin_conf_t *pc = cfg->plugins[i];
            gh_obuf_puts(b, "<tr><td>");
            h(b, pc->name);
            gh_obuf_puts(b, "</td><td>");
            h(b, pc->type);
            gh_obuf_puts(b, "</td>");
            td_num(b, counts ? counts[i] : 0, false);
            td_num(b, counts ? counts[cfg->nplugins + i] : 0, false);
            gh_obuf_puts(b, "</tr>\n");
        }
        free(counts);
        gh_obuf_puts(b, "</table>\n");
    }
}

static void html_summary(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_snapshot_t *snap = srv->snap;
    uint64_t now = wall_ms(), bin, bout, mono = uv_now(srv->loop);
    char t[32], v[64], n[96];
    gh_conn_counts_t cc;
    gh_route_stats_t tot;
    gh_metrics_conn_counts(srv, &cc);
    gh_metrics_totals(&tot, &bin, &bout);
    unsigned up = 0, down = 0;
    for (size_t i = 0; i < snap->cfg->nupstreams; i++)
        for (size_t j = 0; j < snap->ups[i].n; j++)
            gh_metrics_server_up(&snap->ups[i].servers[j], mono, NULL, 0) ? up++ : down++;

    gh_obuf_puts(b, "<header><h1>gatehouse</h1><span class=\"muted\">version ");
    h(b, GH_VERSION);
    fmt_time(now, false, t);
    gh_obuf_puts(b, " &middot; ");
    h(b, t);
    gh_obuf_puts(b, " &middot; refreshes every 5 s</span></header>\n<div class=\"cards\">");
    fmt_duration(now > srv->started_ms ? (now - srv->started_ms) / 1000 : 0, v);
    fmt_time(srv->started_ms, false, t);
    snprintf(n, sizeof n, "since %s", t);
    card(b, "Uptime", v, n);
    snprintf(v, sizeof v, "%u", cc.active + cc.idle + cc.closing);
    snprintf(n, sizeof n, "%u active, %u idle", cc.active, cc.idle);
    card(b, "Connections", v, n);
    snprintf(v, sizeof v, "%llu", ull(tot.requests));
    snprintf(n, sizeof n, "%llu 5xx, %llu 429", ull(tot.errors), ull(tot.limited));
    card(b, "Requests", v, n);
    snprintf(v, sizeof v, "%u up", up);
    snprintf(n, sizeof n, "%u down", down);
    card(b, "Upstream servers", v, n);
    bool failed = srv->last_reload_ms && !srv->last_reload_ok;
    fmt_time(srv->last_reload_ms, false, t);
    snprintf(n, sizeof n, "%llu ok, %llu failed", ull(srv->reloads_ok), ull(srv->reloads_failed));
    card(b, "Last reload", !srv->last_reload_ms ? "never" : failed ? "failed" : "ok",
         srv->last_reload_ms ? t : n);
    gh_obuf_puts(b, "</div>\n");
    if (failed) {
        gh_obuf_puts(b, "<h2 class=\"bad\">Last reload failed; the previous configuration is "
                        "serving</h2><pre>");
        h(b, srv->last_reload_error);
        gh_obuf_puts(b, "</pre>\n");
    }
}

static void html_limits(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_config_t *cfg = srv->snap->cfg;
    gh_obuf_puts(b, "<h2>Limits and configuration</h2><table>");
    gh_obuf_printf(b, "<tr><th>max_connections</th><td>%llu</td></tr>"
                      "<tr><th>max_header_bytes</th><td>%llu</td></tr>"
                      "<tr><th>max_body_bytes</th><td>%llu</td></tr>"
                      "<tr><th>timeouts (ms)</th><td>header %llu, idle %llu, upstream_connect "
                      "%llu, upstream_first_byte %llu, stream_idle %llu</td></tr>"
                      "<tr><th>reloads</th><td>%llu ok, %llu failed</td></tr>"
                      "<tr><th>config file</th><td><code>",
                   ull(cfg->limits.max_connections), ull(cfg->limits.max_header_bytes),
                   ull(cfg->limits.max_body_bytes), ull(cfg->timeouts.header_ms),
                   ull(cfg->timeouts.idle_ms), ull(cfg->timeouts.upstream_connect_ms),
                   ull(cfg->timeouts.upstream_first_byte_ms), ull(cfg->timeouts.stream_idle_ms),
                   ull(srv->reloads_ok), ull(srv->reloads_failed));
    h(b, srv->config_path);
    gh_obuf_puts(b, "</code></td></tr></table>\n");
}

static void render_html(gh_obuf_t *b, const gh_server_t *srv)
{
    gh_obuf_puts(b, page_head);
    html_summary(b, srv);
    html_routes(b, srv->snap->cfg);
    html_upstreams(b, srv);
    html_tunnels_plugins(b, srv, srv->snap->cfg);
    html_limits(b, srv);
    gh_obuf_puts(b, "<p class=\"muted\">Also: <a href=\"/status.json\">status.json</a>, "
                    "<a href=\"/metrics\">metrics</a>, <a href=\"/healthz\">healthz</a>.</p>"
                    "\n</body></html>\n");
}

/* ---- dispatch ---- */

static void send_buf(gh_req_t *r, gh_obuf_t *b, const char *type, const char *headers)
{
    if (b->oom || !b->p)
        gh__respond_error(r, 500);
    else
        gh__respond(r, 200, type, headers, b->p, b->len);
    gh_obuf_free(b);
}

void gh__admin_handle(gh_req_t *r)
{
    gh_server_t *srv = r->conn->server;
    const char *p = r->path ? r->path : "";
    enum { HEALTHZ, METRICS, JSON, HTML, ROOT, NONE } page =
        strcmp(p, "/healthz") == 0 ? HEALTHZ : strcmp(p, "/metrics") == 0 ? METRICS
        : strcmp(p, "/status.json") == 0 ? JSON : strcmp(p, "/status") == 0 ? HTML
        : strcmp(p, "/") == 0 ? ROOT : NONE;
    if (page == NONE || !srv->snap) {
        gh__respond_error(r, 404);
        return;
    }
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) {
        /* gh__respond_error() cannot add the Allow header a 405 must carry */
        char body[160];
        int n = snprintf(body, sizeof body,
                         "{\"error\":\"method not allowed\",\"request_id\":\"%s\"}\n",
                         r->request_id);
        gh__respond(r, 405, "application/json", "Allow: GET, HEAD\r\n" COMMON_HEADERS, body,
                    n > 0 && (size_t)n < sizeof body ? (size_t)n : 0);
        return;
    }
    gh_obuf_t b = { 0 };
    switch (page) {
    case HEALTHZ:
        gh__respond(r, 200, "text/plain; charset=utf-8", COMMON_HEADERS, "ok", 2);
        return;
    case ROOT:
        gh__respond_redirect(r, "/status", 302);
        return;
    case METRICS: {
        size_t len = 0;
        char *text = gh_metrics_render(srv, &len);
        if (!text) {
            gh__respond_error(r, 500);
            return;
        }
        gh__respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", COMMON_HEADERS, text, len);
        free(text);
        return;
    }
    case JSON:
        render_json(&b, srv);
        send_buf(r, &b, "application/json", COMMON_HEADERS);
        return;
    case HTML:
        render_html(&b, srv);
        send_buf(r, &b, "text/html; charset=utf-8",
                 COMMON_HEADERS "Content-Security-Policy: default-src 'none'; "
                 "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\r\n"
                 "Referrer-Policy: no-referrer\r\n");
        return;
    case NONE:
        break;
    }
    gh__respond_error(r, 404);
}
