/* PROXY protocol v1 and v2 headers (proxy/proxyproto.h).
 *
 * Every check that a complete header must pass is made as soon as the bytes
 * it needs are there, and none earlier: a prefix of a valid header always
 * gives 0, garbage gives -1 as early as possible, so a peer that is not a
 * balancer is dropped after a few bytes instead of at the header timeout. */
#include "proxy/proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

static const uint8_t v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

/* A decimal port: "0", or 1 to 5 digits without a leading zero, <= 65535. */
static int parse_port(const char *s, uint16_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int v1_addr(int family, const char *host, const char *port,
                   struct sockaddr_storage *ss, socklen_t *len)
{
    uint16_t p;
    if (parse_port(port, &p) < 0)
        return -1;
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return -1;
        in->sin_family = AF_INET;
        in->sin_port = htons(p);
        *len = sizeof(*in);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return -1;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(p);
        *len = sizeof(*in6);
    }
    return 0;
}

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" and the like. */
static int parse_v1(const uint8_t *buf, size_t len, gh_proxyproto_t *out)
{
    static const char sig[] = "PROXY ";
    size_t n = len < 6 ? len : 6;
    if (memcmp(buf, sig, n) != 0)
        return -1;
    /* Find the CRLF; only printable ASCII may come before it. */
    size_t end = 0;
    bool found = false;
    for (size_t i = 0; i < len && !found; i++) {
        uint8_t c = buf[i];
        if (c == '\r') {
            if (i + 2 > GH_PROXYPROTO_V1_MAX)
                return -1;
            if (i + 1 == len)
                return 0;
            if (buf[i + 1] != '\n')
                return -1;
            end = i;
            found = true;
        } else if (c < 0x20 || c > 0x7e) {
            return -1;
        } else if (i + 3 > GH_PROXYPROTO_V1_MAX) {
            return -1;  /* no room left for the CRLF after this byte */
        }
    }
    if (!found)
        return 0;
    if (end < 6)
        return -1;

    /* The line without "PROXY ", split on single spaces. */
    char line[GH_PROXYPROTO_V1_MAX];
    memcpy(line, buf + 6, end - 6);
    line[end - 6] = '\0';
    char *tok[6];
    size_t ntok = 0;
    for (char *p = line;;) {
        if (ntok == 6)
            return -1;
        tok[ntok++] = p;
        char *sp = strchr(p, ' ');
        if (!sp)
            break;
        *sp = '\0';
        p = sp + 1;
        if (ntok == 1 && strcmp(tok[0], "UNKNOWN") == 0)
            break;      /* whatever follows UNKNOWN is to be ignored */
    }
    gh_proxyproto_t r;
    memset(&r, 0, sizeof(r));
    r.version = 1;
    if (strcmp(tok[0], "UNKNOWN") == 0) {
        r.kind = GH_PROXYPROTO_UNKNOWN;
    } else {
        int family = strcmp(tok[0], "TCP4") == 0   ? AF_INET
                     : strcmp(tok[0], "TCP6") == 0 ? AF_INET6
                                                   : -1;
        if (family < 0 || ntok != 5 ||
            v1_addr(family, tok[1], tok[3], &r.src, &r.srclen) < 0 ||
            v1_addr(family, tok[2], tok[4], &r.dst, &r.dstlen) < 0)
            return -1;
        r.kind = GH_PROXYPROTO_PROXY;
    }
    *out = r;
    return (int)end + 2;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* The binary header: signature, version/command, family/protocol, length,
 * addresses, TLVs (skipped). */
static int parse_v2(const uint8_t *buf, size_t len, gh_proxyproto_t *out)
{
    enum { AF_UNSPEC_ = 0, AF_INET_ = 1, AF_INET6_ = 2, AF_UNIX_ = 3 };
    enum { CMD_LOCAL = 0, CMD_PROXY = 1 };
    enum { P_STREAM = 1 };
    size_t n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
    if (memcmp(buf, v2_sig, n) != 0)
        return -1;
    if (len < 13)
        return 0;
    if (buf[12] >> 4 != 2 || (buf[12] & 0xf) > CMD_PROXY)
        return -1;
    int cmd = buf[12] & 0xf;
    if (len < 14)
        return 0;
    int fam = buf[13] >> 4, proto = buf[13] & 0xf;
    if (fam > AF_UNIX_ || proto > 2)
        return -1;
    if (len < 16)
        return 0;
    size_t alen = be16(buf + 14), total = 16 + alen;
    if (total > GH_PROXYPROTO_V2_MAX)
        return -1;
    /* A PROXY header too short for its own addresses is broken, not short. */
    static const size_t need[] = { 0, 12, 36, 216 };
    if (cmd == CMD_PROXY && alen < need[fam])
        return -1;
    if (len < total)
        return 0;

    gh_proxyproto_t r;
    memset(&r, 0, sizeof(r));
    r.version = 2;
    const uint8_t *a = buf + 16;
    if (cmd == CMD_LOCAL) {
        r.kind = GH_PROXYPROTO_LOCAL;
    } else if (proto != P_STREAM || (fam != AF_INET_ && fam != AF_INET6_)) {
        r.kind = GH_PROXYPROTO_UNKNOWN;
    } else if (fam == AF_INET_) {
        struct sockaddr_in *s = (struct sockaddr_in *)&r.src, *d = (struct sockaddr_in *)&r.dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2);     /* both in network order */
        memcpy(&d->sin_port, a + 10, 2);
        r.srclen = r.dstlen = sizeof(struct sockaddr_in);
        r.kind = GH_PROXYPROTO_PROXY;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&r.src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&r.dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
        r.srclen = r.dstlen = sizeof(struct sockaddr_in6);
        r.kind = GH_PROXYPROTO_PROXY;
    }
    *out = r;
    return (int)total;
}

int gh_proxyproto_parse(const uint8_t *buf, size_t len, gh_proxyproto_t *out)
{
    if (len == 0)
        return 0;
    if (buf[0] == 'P')
        return parse_v1(buf, len, out);
    if (buf[0] == v2_sig[0])
        return parse_v2(buf, len, out);
    return -1;
}
