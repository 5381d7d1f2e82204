/* The tunnel session: many streams multiplexed over one link (an upgraded
 * TCP or TLS gh_stream_t), with the framing of docs/tunnel-protocol.md.
 * Each stream is itself a gh_stream_t (the tunnel carrier), so the relay
 * code uses a tunnel stream exactly like a TCP or TLS upstream connection.
 *
 * The session is transport independent: it never looks at what the link
 * is, and does no HTTP. The edge and the connector do the upgrade and the
 * token check first and hand over the link after it.
 *
 * Threading: a session and its streams belong to the loop they were made
 * on. Everything runs on that loop's thread.
 *
 * Conventions: functions returning int give 0 or a negative libuv error.
 * No callback ever runs from inside the call that caused it, except the
 * ones gh_tsession_close documents. */
#ifndef GH_TUNNEL_SESSION_H
#define GH_TUNNEL_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "proxy/stream.h"

typedef struct gh_tsession gh_tsession_t;

typedef struct gh_tsession_cbs {
    /* The peer opened a stream for SERVICE (a valid name, see
     * gh_tframe_service_valid). Return 0 to accept it: set st->data and the
     * stream callbacks before returning (reading starts with read_start, as
     * for any stream; writing may start at once). Return -1 to refuse it:
     * the peer gets RESET(REFUSED), its opener reads UV_ECONNREFUSED, and st
     * is freed here (do not close it). NULL refuses every stream. */
    int (*on_stream)(gh_tsession_t *s, gh_stream_t *st, const char *service, void *data);
    /* The session ended; runs exactly once. reason: 0 after a go-away
     * completed, UV_ETIMEDOUT when heartbeats failed, UV_EPROTO when the
     * peer broke the protocol, UV_ECANCELED from gh_tsession_close, UV_EOF
     * or another libuv error when the link ended or failed. Before it runs,
     * every stream that was reading has had on_read(UV_EOF) (it had all its
     * data) or on_read(UV_ECONNRESET); a stream that was not reading gets it
     * when it next calls read_start. Each stream must still be closed by
     * its owner. The session pointer is invalid once this returns. */
    void (*on_close)(gh_tsession_t *s, int reason, void *data);
} gh_tsession_cbs_t;

/* Takes over link: its data and callbacks are the session's from now on,
 * and the session closes it when it ends. Once the link is closed, the
 * session puts back the data and on_close the link had when it was handed
 * over and calls that on_close, so the link's owner frees it there as
 * usual. pending holds bytes already read from the link after the 101
 * head; they are parsed before anything read later (copied; the caller
 * keeps its buffer). is_edge picks the stream id parity (edge odd,
 * connector even). heartbeat_ms: a PING is sent every interval and the
 * session fails (UV_ETIMEDOUT) when no frame at all has arrived for 3
 * intervals (0: no heartbeats). cbs is copied. Frames may be written to
 * the link at once (a PING that measures the round trip). NULL if out of
 * memory; the caller still owns link then, untouched. */
gh_tsession_t *gh_tsession_new(uv_loop_t *loop, gh_stream_t *link, const char *pending,
                               size_t npending, bool is_edge, uint64_t heartbeat_ms,
                               const gh_tsession_cbs_t *cbs, void *data);

/* Opens a stream to SERVICE on the peer. The stream is usable at once:
 * writes are queued until the peer's window allows them; if the peer
 * refuses it, on_read gets UV_ECONNREFUSED (nothing written was used).
 * NULL if the session is ending or going away (either side), the service
 * name is invalid, or out of memory. */
gh_stream_t *gh_tsession_open(gh_tsession_t *s, const char *service);

/* Tunnel streams, from gh_tsession_open or on_stream, follow proxy/stream.h
 * with these details:
 * - read_stop is the backpressure: window is given back to the peer only
 *   as the owner reads, so a stream that does not read makes the peer stop
 *   sending after one window, and holds at most that window (256 kB to
 *   16 MB, see the doc) in memory. Other streams are not affected.
 * - write queues the buffers (not copied); they are framed as the peer's
 *   windows and the link allow, and the callback runs when the last byte
 *   has been written to the link. write_queue_size is what is not framed
 *   yet. Writes after shutdown fail with UV_EPIPE; after a reset, with the
 *   reset's error.
 * - shutdown sends FIN after the queued writes. Closing right after it is a
 *   clean end: the FIN is sent, and no RESET if the peer had finished too.
 * - close sends RESET unless both directions had finished; queued writes
 *   complete with UV_ECANCELED, then on_close runs (never inside close).
 * - read errors: UV_ECONNREFUSED (refused by the peer), UV_ECONNRESET
 *   (reset, or the session ended), UV_ENOBUFS when on_alloc gave no buffer
 *   (asked again on the next loop turn while reading). */

/* Whether gh_tsession_open can succeed now (not ending, no go-away). */
bool gh_tsession_can_open(const gh_tsession_t *s);

/* Streams not yet closed by their owners. */
unsigned gh_tsession_nstreams(const gh_tsession_t *s);

/* Smoothed round-trip time measured by PINGs, microseconds; 0 until known. */
uint64_t gh_tsession_rtt_us(const gh_tsession_t *s);

/* Sends GOAWAY: no new streams either way from now on; streams already open
 * carry on. Once every stream has finished both ways (or was reset) and the
 * last frames are written, the link is half-closed, and the session ends
 * (reason 0) when the peer closes its side (or after 3 heartbeat intervals,
 * 10 s without heartbeats). The same happens when the peer sends GOAWAY. */
void gh_tsession_goaway(gh_tsession_t *s);

/* Ends the session now: the link is closed, every stream that is reading
 * gets on_read(UV_ECONNRESET) (or UV_EOF if all its data was in), pending
 * writes fail, and on_close runs (reason UV_ECANCELED), all before this
 * returns. Nothing happens if the session has already ended. */
void gh_tsession_close(gh_tsession_t *s);

/* Closes an accepted stream with RESET(REFUSED) instead of a plain reset,
 * when its service turned out to be unreachable: the opener then knows
 * nothing was processed. on_close still runs as for gh_stream_close. */
void gh_tsession_stream_refuse(gh_stream_t *st);

/* Whether a pooled stream may carry another request: its session takes new
 * work (not ending, no go-away), so a draining session is left to drain. */
bool gh_tsession_stream_reusable(const gh_stream_t *st);

/* What a tunnel stream holds, for status pages and tests. */
typedef struct gh_tstream_info {
    uint32_t id;
    const char *service;
    uint64_t rx_buffered;       /* received, not yet read by the owner */
    uint64_t rx_window;         /* the current receive window size */
    uint64_t tx_window;         /* what the peer lets us send now */
    uint64_t tx_queued;         /* written by the owner, not yet framed */
} gh_tstream_info_t;

/* st must be a tunnel stream (from gh_tsession_open or on_stream). */
void gh_tsession_stream_info(const gh_stream_t *st, gh_tstream_info_t *out);

#endif
