/* Cross-loop primitives for running several libuv loops on several threads
 * (one per worker): an inbox per loop, to run a function on that loop's
 * thread, and gh_xpipe, a connected pair of gh_stream_t endpoints on two
 * loops, so that a relay on one worker can talk to a stream that lives on
 * another as it would to any carrier.
 *
 * Functions return 0 or a negative libuv error code. */
#ifndef GH_XPIPE_H
#define GH_XPIPE_H

#include <uv.h>
#include "proxy/stream.h"

/* ---- inbox ---- */

typedef struct gh_xloop gh_xloop_t;

/* On the loop's own thread. The inbox (a uv_async_t) keeps the loop alive
 * only while gh_xpipe endpoints on it are open: an idle inbox does not, so
 * uv_run(UV_RUN_DEFAULT) still returns once the loop has nothing else to do.
 * A message posted while the loop is not running is not lost: it runs at the
 * next uv_run, or at the latest from gh_xloop_close. */
int gh_xloop_new(uv_loop_t *loop, gh_xloop_t **out);

/* On the loop's own thread, once (usually after uv_run returned, at stop):
 * from now on posts fail with UV_ECANCELED. Messages already posted still run,
 * from the loop, when the async handle's close completes; so do callbacks of
 * gh_xpipe endpoints of this loop (those still open are cut: both ends read
 * UV_ECONNRESET, unless that direction was shut down and its data is there,
 * and writes fail with UV_ECONNRESET). The caller runs the loop again until
 * it has no handles left before uv_loop_close. */
void gh_xloop_close(gh_xloop_t *x);

/* After gh_xloop_close and once every thread that could post to x has been
 * joined. NULL is fine. */
void gh_xloop_free(gh_xloop_t *x);

/* From any thread: runs fn(arg) on x's loop thread soon, never inside this
 * call. Messages from one thread run in the order they were posted. Returns
 * 0, or UV_ECANCELED (x is closed) or UV_ENOMEM; then fn never runs and the
 * caller keeps arg. */
int gh_xloop_post(gh_xloop_t *x, void (*fn)(void *arg), void *arg);

/* ---- pipe ---- */

/* Bytes written and not yet read by the peer beyond which a write completes
 * only once the peer's reader has taken enough of them. */
#define GH_XPIPE_BOUND (256 * 1024)

/* From any thread: a connected pair. Bytes written to one endpoint are read
 * from the other, in order. *a is used only on xa's thread and *b only on
 * xb's (xa == xb is fine); the caller sets data/on_alloc/on_read/on_close on
 * each as with any gh_stream_t, and closes each on its own loop (or drops it,
 * below). UV_ECANCELED if either inbox is closed.
 *
 * As with the other carriers:
 *  - write copies the bytes. Its callback runs exactly once, from the loop,
 *    with 0 as soon as this write's bytes and those before it that the peer
 *    has not read are at most GH_XPIPE_BOUND; so a reader that stalls holds
 *    its writer back. write_queue_size is the bytes written and not yet read
 *    (0 once the peer can no longer read them).
 *    Writing after shutdown or close, or once the peer is closed, returns
 *    UV_EPIPE (UV_ECONNRESET once the pipe is cut) and the callback does not
 *    run; a write still held back when the peer closes completes with the
 *    same error.
 *  - reads are copied into the buffer on_alloc gives, in pieces of at most
 *    64 KiB; read_stop takes effect at once.
 *  - shutdown: the peer reads UV_EOF after everything written before it.
 *    Closing after shutdown is a clean end: the peer still reads the data,
 *    then UV_EOF.
 *  - close: on_close runs once, from the loop, after every write callback
 *    still pending, which complete with UV_ECANCELED. Unless the endpoint had
 *    shut down, the peer reads UV_ECONNRESET (what it had not read yet is
 *    dropped), as after a TCP reset; or the error given by set_reset, which
 *    lets a refusal (UV_ECONNREFUSED) pass through as a refusal.
 * The pipe is freed once both endpoints are closed. */
int gh_xpipe_new(gh_xloop_t *xa, gh_xloop_t *xb, gh_stream_t **a, gh_stream_t **b);

/* Releases an endpoint its loop never received (gh_xloop_post of it failed),
 * on the thread that called gh_xpipe_new, before anything used it: no
 * callback runs, and the peer sees a close without shutdown. */
void gh_xpipe_drop(gh_stream_t *s);

#endif
