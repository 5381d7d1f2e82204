/* The plugin interface. A plugin type is an ops table (lifecycle hooks
 * apart from per-request hooks) registered in the plain table of
 * plugins/registry.c; a route runs its configured instances in order.
 *
 * Per-request hooks get a gh_preq_t: a view of the request that plugins
 * read, and edits (headers to remove or set, upstream and downstream)
 * that the proxy applies. All strings handed to plugins are
 * NUL-terminated; header names are compared case-insensitively. */
#ifndef GH_PLUGIN_H
#define GH_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf/config-t.h"

#define GH_PREQ_MAX_EDITS 16
#define GH_PREQ_MAX_PLUGINS 16

typedef struct gh_preq_header {
    const char *name;
    const char *value;
} gh_preq_header_t;

typedef struct gh_preq {
    /* what the request is */
    const gh_route_conf_t *route;
    const struct sockaddr *client_addr;   /* real client (trusted proxies applied) */
    const char *client_ip;
    const char *method, *host, *path;
    const gh_preq_header_t *headers;      /* as received */
    size_t nheaders;

    /* set by api_key, read by rate_limit (by: api_key), logs and metrics */
    char key_id[64];

    /* edits of the request going upstream */
    const char *req_remove[GH_PREQ_MAX_EDITS];
    size_t nreq_remove;
    gh_preq_header_t req_set[GH_PREQ_MAX_EDITS];
    size_t nreq_set;
    /* edits of the response going to the client (also applied to local answers) */
    const char *resp_remove[GH_PREQ_MAX_EDITS];
    size_t nresp_remove;
    gh_preq_header_t resp_set[GH_PREQ_MAX_EDITS];
    size_t nresp_set;

    /* per-instance state for this request (e.g. a concurrency slot), indexed
     * like route->plugins */
    void *state[GH_PREQ_MAX_PLUGINS];
    size_t current;                         /* index of the running instance */

    /* string storage for values plugins format (gh_preq_strdup) */
    char scratch[1024];
    size_t scratch_len;
} gh_preq_t;

/* What on_request returns: GH_PLUGIN_PASS, or an HTTP status (401, 403,
 * 429, ...) with which the proxy answers at once (JSON error body, with
 * resp_set headers such as WWW-Authenticate or Retry-After added). */
#define GH_PLUGIN_PASS 0

typedef struct gh_plugin_ops {
    const char *type;
    /* Decodes and checks pc->node (the whole mapping, `type` included);
     * adds FILE:LINE:COL errors. Returns 0 or -1. */
    int (*check)(const gh_plugin_conf_t *pc, gh_errors_t *errs);
    /* Builds the instance. previous is the instance of the same name in the
     * config being replaced when its definition is unchanged (node trees
     * equal), so state such as rate-limit buckets carries over; the new
     * instance may take it over (then return previous itself, and destroy
     * will not be called on it for the old config). */
    void *(*create)(const gh_plugin_conf_t *pc, void *previous, gh_errors_t *errs);
    void (*destroy)(void *instance);

    int (*on_request)(void *instance, gh_preq_t *req);
    void (*on_response)(void *instance, gh_preq_t *req, int status);
    /* The request is over (response finished, client gone, or error):
     * release whatever on_request took. Called for every instance whose
     * on_request ran. */
    void (*on_end)(void *instance, gh_preq_t *req);

    /* Prometheus lines for this instance (e.g. gatehouse_rate_limited_total)
     * appended to out (cap bytes); returns bytes written. May be NULL. */
    size_t (*metrics)(void *instance, const gh_plugin_conf_t *pc, char *out, size_t cap);
} gh_plugin_ops_t;

/* registry.c */
const gh_plugin_ops_t *gh_plugin_find(const char *type);
/* Checks every plugin of cfg (called by the config loader). */
int gh_plugins_check(const gh_config_t *cfg, gh_errors_t *errs);
/* Creates instances for cfg, reusing those of prev (may be NULL) whose
 * definition is unchanged. Returns 0 or -1. */
int gh_plugins_create(gh_config_t *cfg, gh_config_t *prev, gh_errors_t *errs);
/* Destroys the instances of cfg not taken over by a newer config. */
void gh_plugins_destroy(gh_config_t *cfg);

/* Runs on_request of each instance of the route in order; returns
 * GH_PLUGIN_PASS or the status to answer with. *ran is how many ran. */
int gh_plugins_request(const gh_route_conf_t *route, gh_preq_t *req, size_t *ran);
void gh_plugins_response(const gh_route_conf_t *route, gh_preq_t *req, size_t ran, int status);
void gh_plugins_end(const gh_route_conf_t *route, gh_preq_t *req, size_t ran);

/* Helpers for plugins. */
const char *gh_preq_header(const gh_preq_t *req, const char *name);
void gh_preq_remove_request_header(gh_preq_t *req, const char *name);
void gh_preq_set_request_header(gh_preq_t *req, const char *name, const char *value);
void gh_preq_remove_response_header(gh_preq_t *req, const char *name);
void gh_preq_set_response_header(gh_preq_t *req, const char *name, const char *value);
/* Copies s into req->scratch; returns NULL when full. */
const char *gh_preq_strdup(gh_preq_t *req, const char *s);

/* Added with the plugins themselves.
 *
 * How the proxy applies the edits (the helpers below keep the lists in a
 * shape where this gives the order-correct result of all plugins' calls):
 *  - upstream request: drop every received header whose name (any case) is
 *    in req_remove or req_set, then append the req_set pairs; the proxy's
 *    own forwarding headers (X-Forwarded-*, X-Real-IP, X-Request-ID) come
 *    after and win.
 *  - response to the client, from upstream or answered locally (401, 403,
 *    429, and also 502/504 and the like after plugins ran): drop headers
 *    named in resp_remove or resp_set, then add the resp_set pairs.
 * Names and values stay valid until gh_plugins_end: they point into the
 * config snapshot, the plugin instance or req->scratch. The lists hold
 * GH_PREQ_MAX_EDITS entries; a plugin that must not lose an edit (api_key
 * removing the key) checks for room first and answers 500 otherwise. */

/* Clears everything the plugins write (key_id, edits, state, scratch) and
 * the view fields; the proxy then fills the view (route, client_addr,
 * client_ip, method, host, path, headers) before gh_plugins_request. */
void gh_preq_init(gh_preq_t *req);

/* Prometheus text for every plugin instance of cfg, grouped by family with
 * one "# TYPE" line each (e.g. gatehouse_rate_limited_total{plugin="x"} 3).
 * Writes at most cap bytes and never cuts a line; returns bytes written. */
size_t gh_plugins_metrics(const gh_config_t *cfg, char *out, size_t cap);

#endif
