/* Internal to conf/: the schema decoder of SPEC.md section 2, one file per
 * part of the file (config.c top level, config_listen.c, config_upstreams.c,
 * config_routes.c, config_tunnels.c). Each gh__decode_* reads one top-level
 * value into the snapshot, reports every problem in errs and carries on, so a
 * check shows all errors at once. */
#ifndef GH_CONF_DECODE_H
#define GH_CONF_DECODE_H

#include <stdbool.h>
#include "conf/arena.h"
#include "conf/config-t.h"
#include "conf/node.h"
#include "conf/yaml.h"

typedef struct gh__decoder {
    gh_config_t *cfg;
    gh_arena_t *arena;
    gh_errors_t *errs;
    size_t certs_written;   /* tls.certificates entries, readable or not */
    bool serves;            /* listen or connect has entries, valid or not */
} gh__decoder_t;

/* Features the schema knows but the proxy does not serve yet. Their settings
 * are decoded and checked in full; while a feature's flag (in config.c) is off,
 * using it is also an error, so no setting is ever silently ignored. */
typedef enum {
    GH_FEAT_LISTEN_TLS,
    GH_FEAT_PROXY_PROTOCOL,
    GH_FEAT_TLS_SECTION,
    GH_FEAT_ADMIN,
    GH_FEAT_TUNNELS,
    GH_FEAT_CONNECT,
    GH_FEAT_TUNNEL_UPSTREAM,
    GH_FEAT_HTTPS_SERVER,
    GH_FEAT_UPSTREAM_TLS,
    GH_FEAT_HEALTH_CHECK,
    GH_FEAT_PLUGINS_SECTION,
    GH_FEAT_ROUTE_PLUGINS,
    GH_FEAT_COUNT
} gh__feature_t;

/* Returns true when feature f is on; otherwise reports
 * "<feature> is not supported yet" at n and returns false. */
bool gh__feature(gh__decoder_t *d, gh__feature_t f, const gh_node_t *n);

/* Whether feature f is on, without reporting anything (for tests). */
bool gh__feature_on(gh__feature_t f);

/* Checks that PATH (the text of node n) can be opened for reading, as a
 * regular file or, with dir, as a directory: "cannot read PATH: reason". */
int gh__check_readable(gh__decoder_t *d, const gh_node_t *n, const char *path, bool dir);

/* Same family, address and port: two sockets cannot bind both. */
bool gh__same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* Parses an upstream URL at n: http://host[:port][/], https://..., and with
 * allow_tunnel also tunnel://NAME/SERVICE. Strings go into the arena. */
int gh__parse_server(gh__decoder_t *d, const gh_node_t *n, bool allow_tunnel,
                     gh_server_conf_t *out);

/* For a value that must be a mapping with the given keys: reports it when it
 * is not a mapping ("expected a mapping") and returns false; otherwise
 * reports any unknown key ("unknown key 'x' in WHERE") and returns true, so
 * the known keys are still decoded. */
bool gh__map(gh__decoder_t *d, const gh_node_t *v, const char *const *keys, const char *where);

/* Name lookups while decoding. init sizes the table for at most max_items
 * keys (it never grows: putting more is a bug); keys are not copied. get
 * returns NULL for a missing key; put replaces an existing one. */
typedef struct gh__strmap {
    struct gh__strmap_slot *slots;
    size_t mask;
} gh__strmap_t;
void gh__strmap_init(gh__strmap_t *m, size_t max_items);
void gh__strmap_free(gh__strmap_t *m);
void *gh__strmap_get(const gh__strmap_t *m, const char *key);
void gh__strmap_put(gh__strmap_t *m, const char *key, void *value);

/* A name used in references (upstreams, plugins, tunnels, services):
 * letters, digits, '-', '_' and '.'. */
bool gh__valid_name(const char *s);

/* key: the key node of the section (for "not supported yet"); v: its value. */
void gh__decode_listen(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
void gh__decode_admin(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
void gh__decode_tls(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
void gh__decode_upstreams(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
void gh__decode_plugins(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
void gh__decode_tunnels(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
void gh__decode_connect(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);
/* Needs limits, upstreams, plugins and tunnels decoded first. */
void gh__decode_routes(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);

#endif
