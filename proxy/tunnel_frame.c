/* Tunnel frame codec. See proxy/tunnel_frame.h and docs/tunnel-protocol.md.
 *
 * The decoder is the first thing that touches bytes from the other end of a
 * tunnel, so it is strict: anything not defined is an error rather than
 * something to skip, which keeps the session free of half-understood frames
 * and lets a future version be negotiated in the upgrade instead. */
#include <string.h>
#include "proxy/tunnel_frame.h"

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

bool gh_tframe_service_valid(const char *name, size_t len)
{
    if (len == 0 || len > GH_TF_MAX_SERVICE)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

const char *gh_tframe_type_name(unsigned type)
{
    static const char *const names[] = {"DATA", "OPEN", "WINDOW", "RESET", "PING", "GOAWAY"};
    return type < sizeof names / sizeof names[0] ? names[type] : "?";
}

/* The header rules, which need no payload. Returns the payload length the
 * header announces, or -1. */
static long check_header(const gh_tframe_t *f)
{
    if (f->stream > GH_TF_MAX_STREAM_ID)
        return -1;
    switch (f->type) {
    case GH_TF_DATA:
        if (f->stream == 0 || (f->flags & ~GH_TF_FLAG_FIN) || f->value > GH_TF_MAX_DATA)
            return -1;
        return (long)f->value;
    case GH_TF_OPEN:
        if (f->stream == 0 || f->flags || f->value == 0 || f->value > GH_TF_MAX_SERVICE)
            return -1;
        return (long)f->value;
    case GH_TF_WINDOW:
        if (f->flags || f->value == 0 || f->value > GH_TF_MAX_WINDOW)
            return -1;
        return 0;
    case GH_TF_RESET:
        if (f->stream == 0 || f->flags)
            return -1;
        return 0;
    case GH_TF_PING:
        if (f->stream != 0 || (f->flags & ~GH_TF_FLAG_ACK))
            return -1;
        return 0;
    case GH_TF_GOAWAY:
        if (f->stream != 0 || f->flags)
            return -1;
        return 0;
    default:
        return -1;
    }
}

ssize_t gh_tframe_decode(const uint8_t *buf, size_t len, gh_tframe_t *f)
{
    if (len < GH_TF_HEADER_LEN)
        return 0;
    f->type = buf[0];
    f->flags = buf[1];
    f->stream = get32(buf + 4);
    f->value = get32(buf + 8);
    f->payload = NULL;
    if (buf[2] || buf[3])
        return GH_TF_EINVAL;
    long plen = check_header(f);
    if (plen < 0)
        return GH_TF_EINVAL;
    if (len - GH_TF_HEADER_LEN < (size_t)plen)
        return 0;
    if (plen > 0)
        f->payload = buf + GH_TF_HEADER_LEN;
    if (f->type == GH_TF_OPEN && !gh_tframe_service_valid((const char *)f->payload, (size_t)plen))
        return GH_TF_EINVAL;
    return (ssize_t)(GH_TF_HEADER_LEN + (size_t)plen);
}

void gh_tframe_header(uint8_t *out, uint8_t type, uint8_t flags, uint32_t stream, uint32_t value)
{
    out[0] = type;
    out[1] = flags;
    out[2] = 0;
    out[3] = 0;
    put32(out + 4, stream);
    put32(out + 8, value);
}

ssize_t gh_tframe_encode(uint8_t *out, size_t cap, const gh_tframe_t *f)
{
    long plen = check_header(f);
    if (plen < 0 || cap < GH_TF_HEADER_LEN + (size_t)plen)
        return GH_TF_EINVAL;
    if (plen > 0 && !f->payload)
        return GH_TF_EINVAL;
    if (f->type == GH_TF_OPEN && !gh_tframe_service_valid((const char *)f->payload, (size_t)plen))
        return GH_TF_EINVAL;
    gh_tframe_header(out, f->type, f->flags, f->stream, f->value);
    if (plen > 0)
        memcpy(out + GH_TF_HEADER_LEN, f->payload, (size_t)plen);
    return (ssize_t)(GH_TF_HEADER_LEN + (size_t)plen);
}
