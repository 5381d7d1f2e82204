/* The PROXY protocol header a TCP load balancer puts before the client's
 * bytes (haproxy.org/download/2.9/doc/proxy-protocol.txt), versions 1 (text)
 * and 2 (binary), as a pure function over the bytes received so far.
 *
 * A listener with proxy_protocol: true calls gh_proxyproto_parse on what it
 * has read before anything else: 0 asks for more bytes (the header timeout
 * still applies), -1 means the connection did not start with a valid header
 * and must be closed, and n > 0 means the first n bytes were the header:
 * skip them and treat the rest as the client's stream. */
#ifndef GH_PROXYPROTO_H
#define GH_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* v1 lines are at most 107 bytes, CRLF included. */
#define GH_PROXYPROTO_V1_MAX 107
/* v2 headers are 16 bytes plus up to 65535 of addresses and TLVs; more than
 * this is refused, as no balancer sends that much and a peer that claims it
 * would make the listener buffer it. */
#define GH_PROXYPROTO_V2_MAX 4096

typedef enum {
    /* src and dst hold the client's and the balancer's addresses. */
    GH_PROXYPROTO_PROXY,
    /* v2 LOCAL: the balancer's own connection (a health check): keep the
     * peer address. */
    GH_PROXYPROTO_LOCAL,
    /* v1 UNKNOWN, or a v2 family/protocol without TCP addresses (UNSPEC,
     * UNIX, UDP): keep the peer address. */
    GH_PROXYPROTO_UNKNOWN,
} gh_proxyproto_kind_t;

typedef struct gh_proxyproto {
    int version;                    /* 1 or 2 */
    gh_proxyproto_kind_t kind;
    struct sockaddr_storage src;    /* AF_INET or AF_INET6, port set; PROXY only */
    struct sockaddr_storage dst;
    socklen_t srclen, dstlen;       /* 0 unless PROXY */
} gh_proxyproto_t;

/* Parses the header at the start of buf[0..len). Returns its length (> 0)
 * and fills out; 0 when buf is a valid beginning of a header but not all of
 * it; -1 when buf cannot begin a valid header. Once a complete header is in
 * buf the answer does not depend on what follows it. out is only written on
 * success. */
int gh_proxyproto_parse(const uint8_t *buf, size_t len, gh_proxyproto_t *out);

#endif
