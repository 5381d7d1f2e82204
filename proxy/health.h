/* Active upstream health checks (SPEC.md section 2, `health_check:` on an
 * upstream group). Every http:// server of a group that has health_check gets
 * a GET of the configured path each interval; `fall` failures in a row mark it
 * down (upstream.c then skips it, and a group with every server down answers
 * 503), `rise` successes in a row mark it up again. 2xx and 3xx count as
 * success; any other status, a failed resolve, connect, write or read, or no
 * status line within the timeout is a failure.
 *
 * The results live in the gh_upserver_t fields health_down, health_ok,
 * health_fail, health_last_ms and health_error (empty after a success, else
 * the reason of the last failure: "connect: connection refused",
 * "status 500", "timeout"...), for the balancer, /metrics and /status to
 * read. sv->health is non-NULL while a server is being checked. */
#ifndef GH_HEALTH_H
#define GH_HEALTH_H

#include "proxy/proxy-t.h"

/* Starts checking every server of every upstream of s with health_check,
 * the first check right away. Servers start up, unless previous (the
 * snapshot s replaces, or NULL) has an upstream of the same name with a
 * server of the same URL: its health state is carried over, so a reload
 * neither resets a down server to up nor makes an up one wait for `rise`.
 * Call once per snapshot, after s becomes current. Out of memory leaves a
 * server unchecked (and up); there is no error to return. */
void gh__health_start(gh_snapshot_t *s, uv_loop_t *loop, const gh_snapshot_t *previous);

/* Stops every check of s: timers and checks in flight are closed and their
 * memory is freed later by libuv close callbacks, which never touch s again.
 * The servers keep their last health state. Idempotent; call it when s stops
 * being current and at the latest before s is freed. */
void gh__health_stop(gh_snapshot_t *s);

#endif
