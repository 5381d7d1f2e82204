/* Placeholder until metrics land. */
#include <stdlib.h>
#include "proxy/metrics.h"

void gh_metrics_request(const gh_req_t *r)
{
    (void)r;
}

char *gh_metrics_render(gh_server_t *srv, size_t *len)
{
    (void)srv;
    *len = 0;
    return calloc(1, 1);
}
