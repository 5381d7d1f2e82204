/* Counters and histograms behind /metrics. Updated from the request path,
 * so cheap: no allocation once a route/status pair has been seen. */
#ifndef GH_METRICS_H
#define GH_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "proxy/proxy-t.h"

/* One finished request (called where the access log line is written):
 * gatehouse_requests_total{route,code}, gatehouse_request_duration_seconds,
 * gatehouse_bytes_total{direction}. */
void gh_metrics_request(const gh_req_t *r);

/* Renders the whole Prometheus text exposition for srv into a malloc'd
 * buffer; *len gets its length. */
char *gh_metrics_render(gh_server_t *srv, size_t *len);

#endif
