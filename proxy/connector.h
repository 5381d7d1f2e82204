/* The connector side of the tunnel: one gh_connector_t per connection of
 * a `connect:` entry (SPEC.md section 2), dialing out to the edge and
 * serving the streams it opens. See docs/tunnel-protocol.md. */
#ifndef GH_CONNECTOR_H
#define GH_CONNECTOR_H

#include <stdbool.h>
#include <uv.h>
#include "conf/config-t.h"

/* The upgrade request that turns an HTTP/1.1 connection into a tunnel. */
#define GH_TUNNEL_PATH "/.well-known/gatehouse/tunnel"
#define GH_TUNNEL_UPGRADE "gatehouse-tunnel/1"

typedef struct gh_connector gh_connector_t;

/* Starts connection number index of entry cc (everything needed is
 * copied). Returns NULL when out of memory. */
gh_connector_t *gh_connector_start(uv_loop_t *loop, const gh_connect_conf_t *cc, unsigned index);
/* Ends the connection (its streams are reset) and frees the connector; on
 * one that is retiring, ends its drain now. */
void gh_connector_stop(gh_connector_t *c);
/* Stops dialing and sends go-away: streams in flight finish, then the
 * connector frees itself and calls done(data). */
void gh_connector_retire(gh_connector_t *c, void (*done)(void *), void *data);
/* A string that is equal for equal config entries and index: a reload
 * keeps the connectors whose key did not change. */
const char *gh_connector_key(const gh_connector_t *c);
char *gh__connector_key(const gh_connect_conf_t *cc, unsigned index);
bool gh_connector_up(const gh_connector_t *c);

#endif
