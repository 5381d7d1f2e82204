/* Counters and histograms behind /metrics. Updated from the request path,
 * so cheap: no allocation once a route/status pair has been seen.
 *
 * Also the small growable output buffer and the escaping that /metrics,
 * /status and /status.json share, so that every byte taken from a config
 * or a request goes through one audited function on its way out (those
 * live in proxy/obuf.c). */
#ifndef GH_METRICS_H
#define GH_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "proxy/proxy-t.h"

/* One finished request (called where the access log line is written):
 * gatehouse_requests_total{route,code}, gatehouse_request_duration_seconds,
 * gatehouse_bytes_total{direction}. Requests on the admin listener are not
 * counted: scrapes would otherwise show up as traffic. */
void gh_metrics_request(const gh_req_t *r);

/* Renders the whole Prometheus text exposition for srv into a malloc'd
 * buffer; *len gets its length. Returns NULL when out of memory. */
char *gh_metrics_render(gh_server_t *srv, size_t *len);

/* What has been counted for one route name (counters are kept by name, so
 * they survive reloads). The name "" holds requests that matched no route. */
typedef struct gh_route_stats {
    uint64_t requests;
    uint64_t errors;        /* 5xx answers, 499 (client gone) not included */
    uint64_t client_errors; /* 4xx */
    uint64_t limited;       /* 429 */
} gh_route_stats_t;

/* Fills *out for route name (all zero when nothing was counted). */
void gh_metrics_route_stats(const char *name, gh_route_stats_t *out);
/* The same summed over every route, the unmatched ones included. */
void gh_metrics_totals(gh_route_stats_t *out, uint64_t *bytes_in, uint64_t *bytes_out);

/* Connections of srv by state, counted now. */
typedef struct gh_conn_counts {
    unsigned active;        /* a request in progress, or its head arriving */
    unsigned idle;          /* keep-alive, waiting for the next request */
    unsigned closing;
} gh_conn_counts_t;
void gh_metrics_conn_counts(const gh_server_t *srv, gh_conn_counts_t *out);

/* Whether sv takes requests now; when not, why (into why, cap bytes). */
bool gh_metrics_server_up(const gh_upserver_t *sv, uint64_t now_ms, char *why, size_t cap);

/* What the plugins of cfg report: limited[i] and auth_failures[i] (arrays
 * of cfg->nplugins) get the gatehouse_rate_limited_total and
 * gatehouse_auth_failures_total of cfg->plugins[i]; 0 when it has none. */
void gh_metrics_plugin_counts(const gh_config_t *cfg, uint64_t *limited, uint64_t *auth_failures);

/* ---- output buffer ---- */

/* A growing output buffer. Once an allocation fails, oom is set and later
 * appends do nothing, so callers check once at the end. */
typedef struct gh_obuf {
    char *p;
    size_t len, cap;
    bool oom;
} gh_obuf_t;

typedef enum {
    GH_ESC_PROM_LABEL,      /* label value: \ " and newline */
    GH_ESC_PROM_HELP,       /* HELP text: \ and newline */
    GH_ESC_JSON,            /* inside a JSON string */
    GH_ESC_HTML,            /* element text or a quoted attribute value */
} gh_esc_t;

void gh_obuf_put(gh_obuf_t *b, const char *s, size_t n);
void gh_obuf_puts(gh_obuf_t *b, const char *s);
void gh_obuf_printf(gh_obuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s (NULL counts as "") escaped for context; invalid UTF-8 becomes
 * U+FFFD, since every one of these formats must be valid UTF-8. */
void gh_obuf_esc(gh_obuf_t *b, const char *s, gh_esc_t context);
void gh_obuf_free(gh_obuf_t *b);

#endif
