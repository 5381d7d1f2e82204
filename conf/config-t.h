/* Types of a loaded configuration: one immutable, reference-counted snapshot.
 * Functions live in conf/config.h. Everything a snapshot points to is owned by
 * its arena and freed with it. */
#ifndef GH_CONFIG_T_H
#define GH_CONFIG_T_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct gh_router;
struct gh_arena;

/* Where a value came from; line and col are 1-based. */
typedef struct gh_loc {
    const char *file;
    uint32_t line, col;
} gh_loc_t;

/* A YAML node after ${ENV} substitution, kept so plugins can decode their own
 * settings and report errors against the right line. */
typedef enum { GH_NODE_SCALAR, GH_NODE_SEQ, GH_NODE_MAP } gh_node_type_t;
typedef struct gh_node {
    gh_node_type_t type;
    gh_loc_t loc;
    char *str;              /* scalar text, NUL-terminated */
    size_t len;
    bool quoted;            /* scalar was written in quotes */
    struct gh_node **items; /* seq: n items; map: keys at 2i, values at 2i+1 */
    size_t n;               /* seq: items; map: pairs */
} gh_node_t;

typedef struct gh_cidr {
    int family;             /* AF_INET or AF_INET6 */
    uint8_t addr[16];       /* network order, masked */
    uint8_t prefix;
} gh_cidr_t;

typedef struct gh_listen_conf {
    char *address;                  /* as written, e.g. "0.0.0.0:443" */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    bool tls;
    bool proxy_protocol;
    bool redirect_https;
    gh_loc_t loc;
} gh_listen_conf_t;

typedef enum { GH_SCHEME_HTTP, GH_SCHEME_HTTPS, GH_SCHEME_TUNNEL } gh_scheme_t;

typedef struct gh_server_conf {
    char *url;              /* as written */
    gh_scheme_t scheme;
    char *host;             /* name or IP literal, no brackets; tunnel name for tunnel:// */
    uint16_t port;          /* default 80 / 443; 0 for tunnel:// */
    char *service;          /* tunnel:// only: the service name after the slash */
    char *authority;        /* "host:port" as it goes into logs */
} gh_server_conf_t;

typedef enum {
    GH_BALANCE_ROUND_ROBIN,
    GH_BALANCE_LEAST_CONN,
    GH_BALANCE_HASH_CLIENT_IP,
} gh_balance_t;

typedef struct gh_health_conf {
    bool enabled;
    char *path;
    uint64_t interval_ms, timeout_ms;
    uint32_t rise, fall;
} gh_health_conf_t;

typedef struct gh_upstream_tls_conf {
    bool set;
    char *ca;               /* NULL: system store */
    bool verify;            /* default true */
    char *sni;              /* NULL: server host */
} gh_upstream_tls_conf_t;

typedef struct gh_upstream_conf {
    char *name;             /* the key under upstreams:, or the URL of an inline one */
    bool is_inline;         /* written as `upstream: http://...` on a route */
    gh_server_conf_t *servers;
    size_t nservers;
    gh_balance_t balance;   /* default round_robin */
    uint32_t keepalive;     /* default 32 */
    gh_health_conf_t health;
    gh_upstream_tls_conf_t tls;
    size_t index;           /* position in gh_config_t.upstreams */
    gh_loc_t loc;
} gh_upstream_conf_t;

typedef struct gh_plugin_conf {
    char *name;             /* the key under plugins: */
    char *type;             /* api_key, rate_limit, ip_filter, headers */
    const gh_node_t *node;  /* the whole mapping, for the plugin to decode */
    void *instance;         /* built by plugins/ */
    size_t index;
    gh_loc_t loc;
} gh_plugin_conf_t;

typedef enum { GH_ACTION_UPSTREAM, GH_ACTION_REDIRECT, GH_ACTION_RESPOND } gh_action_t;

typedef struct gh_route_conf {
    char *host;             /* lower case, no port or trailing dot: "a.b", "*.b", "*" */
    char *path;             /* normalised prefix, "/" when not given */
    gh_action_t action;
    gh_upstream_conf_t *upstream;   /* GH_ACTION_UPSTREAM */
    char *redirect;         /* template: {path} {query} {uri} {host} */
    int redirect_status;    /* 301 302 307 308, default 308 */
    int respond_status;     /* GH_ACTION_RESPOND */
    char *respond_body;
    size_t respond_body_len;
    char *respond_content_type; /* default "text/plain; charset=utf-8" */
    uint64_t max_body_bytes;    /* limits.max_body_bytes unless overridden */
    gh_plugin_conf_t **plugins;
    size_t nplugins;
    char *name;             /* host + path, e.g. "api.example.com/v1/", for logs and metrics */
    size_t index;
    gh_loc_t loc;
} gh_route_conf_t;

typedef struct gh_tunnel_conf {
    char *name;
    char *token_hash;       /* "sha256:<64 hex>" */
    uint8_t token_sha256[32];
    uint64_t heartbeat_ms;  /* default 10s; a dead link is found within 3 */
    gh_loc_t loc;
} gh_tunnel_conf_t;

typedef struct gh_service_conf {
    char *name;
    gh_server_conf_t server;
} gh_service_conf_t;

typedef struct gh_connect_conf {
    char *edge;             /* URL */
    gh_server_conf_t edge_server;   /* the URL taken apart */
    uint64_t heartbeat_ms;  /* default 10s */
    char *tunnel;
    char *token_file;
    char *ca;
    uint32_t connections;   /* default 2 */
    gh_service_conf_t *services;
    size_t nservices;
    gh_loc_t loc;
} gh_connect_conf_t;

typedef struct gh_cert_conf {
    char *cert, *key;
    gh_loc_t loc;
} gh_cert_conf_t;

typedef enum { GH_LOG_ERROR, GH_LOG_WARN, GH_LOG_INFO, GH_LOG_DEBUG } gh_log_level_t;
typedef enum { GH_ALOG_JSON, GH_ALOG_COMBINED } gh_alog_format_t;

typedef struct gh_config {
    atomic_int refcount;
    struct gh_arena *arena;
    char *file;

    gh_listen_conf_t *listens;
    size_t nlistens;

    struct {
        bool set;
        char *address;
        struct sockaddr_storage addr;
        socklen_t addrlen;
        gh_loc_t loc;
    } admin;

    struct {
        gh_cert_conf_t *certs;
        size_t ncerts;
        int min_version;    /* 0x0303 (1.2, default) or 0x0304 (1.3) */
        char *acme_webroot;
    } tls;

    struct {
        uint64_t header_ms, idle_ms, upstream_connect_ms,
                 upstream_first_byte_ms, stream_idle_ms, shutdown_ms;
    } timeouts;

    struct {
        uint64_t max_header_bytes, max_body_bytes, max_connections;
    } limits;

    gh_cidr_t *trusted_proxies;
    size_t ntrusted_proxies;

    struct {
        bool enabled;       /* default true, stdout, json */
        char *path;         /* "stdout", "stderr" or a file */
        gh_alog_format_t format;
    } access_log;

    gh_log_level_t log_level;
    uint32_t workers;       /* 0 means "auto" */
    char *pid_file;         /* NULL when not given */

    gh_upstream_conf_t **upstreams;  /* named ones first, then inline ones */
    size_t nupstreams;
    gh_plugin_conf_t **plugins;
    size_t nplugins;
    gh_route_conf_t *routes;
    size_t nroutes;
    gh_tunnel_conf_t *tunnels;
    size_t ntunnels;
    gh_connect_conf_t *connects;
    size_t nconnects;

    struct gh_router *router;        /* built from routes by routes/ */
} gh_config_t;

/* Errors collected while loading; each line is "FILE:LINE:COL: message". */
typedef struct gh_errors {
    char **lines;
    size_t n, cap;
    size_t nwarnings;       /* lines that start with a warning are counted here too */
} gh_errors_t;

#endif
