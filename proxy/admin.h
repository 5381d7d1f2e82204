/* The admin listener (SPEC.md section 3, "Admin"): /metrics in the
 * Prometheus text format, /healthz, /status (a page a person reads) and
 * /status.json. Requests on the admin listener go through the same strict
 * HTTP/1.1 handling as any other and end here instead of in the router. */
#ifndef GH_ADMIN_H
#define GH_ADMIN_H

#include "proxy/proxy-t.h"

/* Answers r (a request on the admin listener) with gh__respond(). */
void gh__admin_handle(gh_req_t *r);

#endif
