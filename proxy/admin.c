/* Placeholder until the admin endpoints land: everything is 404. */
#include "proxy/admin.h"
#include "proxy/proxy.h"

void gh__admin_handle(gh_req_t *r)
{
    gh__respond_error(r, 404);
}
