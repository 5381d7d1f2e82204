/* A two-way byte pump between two streams of any carrier (TCP, TLS,
 * tunnel), with backpressure: a side is not read while what it last sent
 * is still being written to the other side, so a relay holds at most one
 * buffer per direction. An end of stream on one side becomes a half-close
 * (shutdown) of the other; an error closes both. */
#ifndef GH_RELAY_H
#define GH_RELAY_H

#include <stddef.h>
#include "proxy/stream.h"

typedef struct gh_relay gh_relay_t;

/* Called once, after both streams are closed; the relay is freed after it
 * returns. error is 0 when both directions ended cleanly. */
typedef void (*gh_relay_done_cb)(void *data, int error, unsigned long long a_to_b,
                                 unsigned long long b_to_a);

/* Takes over a and b (their data and callbacks) and starts reading both.
 * pending_a holds bytes already read from a that go to b first (copied).
 * Returns NULL on allocation failure (the caller still owns a and b). */
gh_relay_t *gh_relay_start(gh_stream_t *a, gh_stream_t *b, const char *pending_a,
                           size_t npending_a, gh_relay_done_cb done, void *data);

/* Closes both streams now; done runs with UV_ECANCELED. */
void gh_relay_abort(gh_relay_t *r);

#endif
