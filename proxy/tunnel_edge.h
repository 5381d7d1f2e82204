/* The edge side of the tunnel (proxy/tunnel_edge.c) and the connectors
 * this process runs (proxy/connector.c), as the server sees them. */
#ifndef GH_TUNNEL_EDGE_H
#define GH_TUNNEL_EDGE_H

#include <stdbool.h>
#include "proxy/proxy-t.h"

/* Is r the upgrade request of a connector? */
bool gh__tunnel_is_upgrade(const gh_req_t *r);
/* Checks the tunnel name and token of r; answers 401, or 101 and hands the
 * connection over to a tunnel session. */
void gh__tunnel_accept(gh_req_t *r);
/* Opens a stream to SERVICE over the least busy session of TUNNEL; NULL when
 * no connector is attached. */
gh_stream_t *gh__tunnel_open(gh_server_t *srv, const char *tunnel, const char *service);
void gh__tunnel_counts(const gh_server_t *srv, const char *tunnel, unsigned *conns, unsigned *streams);
void gh__tunnels_reconcile(gh_server_t *srv, const gh_config_t *cfg);
void gh__tunnels_goaway(gh_server_t *srv);
void gh__tunnels_free(gh_server_t *srv);

/* Starts, keeps or stops connectors so they match cfg->connects. */
void gh__connectors_apply(gh_server_t *srv, const gh_config_t *cfg);
/* Graceful: every connector drains (go-away) and then goes. */
void gh__connectors_stop(gh_server_t *srv);
/* Ends the drains still running (shutdown timeout). */
void gh__connectors_force(gh_server_t *srv);

#endif
