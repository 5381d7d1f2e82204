/* Frames of the tunnel protocol (docs/tunnel-protocol.md): pure encoding and
 * decoding, no I/O and no allocation, so the decoder can be fuzzed alone.
 *
 * Every frame is a 12-byte header, optionally followed by a payload:
 *
 *   byte 0     type
 *   byte 1     flags
 *   bytes 2-3  reserved, zero
 *   bytes 4-7  stream id, big-endian, top bit zero (0 = the connection)
 *   bytes 8-11 value, big-endian: the payload length for DATA and OPEN, the
 *              increment for WINDOW, the code for RESET and GOAWAY, an
 *              opaque number for PING
 *
 * Conventions: the decoder returns the frame's whole length (> 0), 0 when
 * more bytes are needed, or GH_TF_EINVAL for a frame that breaks a rule of
 * the protocol (the session then fails: the stream of frames cannot be
 * trusted past it). Encoders return the number of bytes written. */
#ifndef GH_TUNNEL_FRAME_H
#define GH_TUNNEL_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define GH_TF_HEADER_LEN 12
#define GH_TF_MAX_DATA 16384            /* largest DATA payload */
#define GH_TF_MAX_SERVICE 255           /* longest service name in OPEN */
#define GH_TF_MAX_FRAME (GH_TF_HEADER_LEN + GH_TF_MAX_DATA)
#define GH_TF_MAX_WINDOW 0x7fffffffu    /* no window may exceed this */
#define GH_TF_MAX_STREAM_ID 0x7fffffffu
#define GH_TF_EINVAL (-1)

/* Windows every stream and every connection start with; only WINDOW frames
 * change them (docs/tunnel-protocol.md, "Flow control"). */
#define GH_TF_INITIAL_STREAM_WINDOW (256u * 1024)
#define GH_TF_INITIAL_CONN_WINDOW (32u * 1024 * 1024)

enum gh_tf_type {
    GH_TF_DATA = 0,
    GH_TF_OPEN = 1,
    GH_TF_WINDOW = 2,
    GH_TF_RESET = 3,
    GH_TF_PING = 4,
    GH_TF_GOAWAY = 5,
};

#define GH_TF_FLAG_FIN 0x01             /* DATA: the sender's last bytes on this stream */
#define GH_TF_FLAG_ACK 0x01             /* PING: an answer */

/* RESET codes. Receivers treat a code they do not know as CANCEL. */
enum gh_tf_reset_code {
    GH_TF_RESET_CANCEL = 0,             /* its owner gave up on it */
    GH_TF_RESET_REFUSED = 1,            /* not accepted; nothing of it was processed */
    GH_TF_RESET_FLOW = 2,               /* the sender overran the window */
    GH_TF_RESET_INTERNAL = 3,           /* out of memory and the like */
};

/* GOAWAY codes. */
enum gh_tf_goaway_code {
    GH_TF_GOAWAY_NORMAL = 0,
    GH_TF_GOAWAY_PROTOCOL = 1,
    GH_TF_GOAWAY_INTERNAL = 2,
};

typedef struct gh_tframe {
    uint8_t type, flags;
    uint32_t stream;
    uint32_t value;
    const uint8_t *payload;             /* DATA and OPEN: value bytes; points into the input */
} gh_tframe_t;

/* Decodes the frame at the start of buf. Rules checked: known type, only the
 * flags the type defines, reserved bytes zero, stream id 0 for the
 * connection frames (PING, GOAWAY) and non-zero for the stream frames (DATA,
 * OPEN, RESET), stream id top bit clear, DATA payload at most
 * GH_TF_MAX_DATA, OPEN payload a valid service name, WINDOW increment in
 * 1..GH_TF_MAX_WINDOW. An invalid header is rejected before its payload
 * has arrived. */
ssize_t gh_tframe_decode(const uint8_t *buf, size_t len, gh_tframe_t *f);

/* Writes a 12-byte header. The caller supplies valid fields. */
void gh_tframe_header(uint8_t *out, uint8_t type, uint8_t flags, uint32_t stream,
                      uint32_t value);

/* Writes f (header, and for DATA and OPEN f->value bytes of f->payload) into
 * out. Returns the length, or GH_TF_EINVAL if f would not decode (so nothing
 * invalid is ever sent) or does not fit in cap. */
ssize_t gh_tframe_encode(uint8_t *out, size_t cap, const gh_tframe_t *f);

/* A service name: 1..255 bytes of A-Z a-z 0-9 . _ - */
bool gh_tframe_service_valid(const char *name, size_t len);

/* "DATA", "OPEN", ... or "?" for logs. */
const char *gh_tframe_type_name(unsigned type);

#endif
