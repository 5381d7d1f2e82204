/* CIDR lists and numeric socket addresses (declared in conf/config.h).
 * Only numeric forms are accepted: the config is checked without touching
 * DNS, so a check gives the same answer on every machine. */
#include "conf/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* Copies s[0..n) into buf as a C string; fails when it does not fit. */
static int copy_str(char *buf, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

/* A decimal number of 1..maxdigits digits, no sign; fails above max. */
static int parse_small_uint(const char *s, size_t maxdigits, unsigned long max,
                            unsigned long *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > maxdigits)
        return -1;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

int gh_cidr_parse(const char *s, gh_cidr_t *out)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
    if (copy_str(host, sizeof(host), s, hlen) < 0)
        return -1;

    gh_cidr_t c;
    memset(&c, 0, sizeof(c));
    unsigned maxbits;
    if (inet_pton(AF_INET, host, c.addr) == 1) {
        c.family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, host, c.addr) == 1) {
        c.family = AF_INET6;
        maxbits = 128;
    } else {
        return -1;
    }

    unsigned long prefix = maxbits;
    if (slash && parse_small_uint(slash + 1, 3, maxbits, &prefix) < 0)
        return -1;
    c.prefix = (uint8_t)prefix;

    /* Clear host bits so matching is a plain prefix compare. */
    for (unsigned bit = (unsigned)prefix; bit < maxbits; bit++)
        c.addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
    *out = c;
    return 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

bool gh_cidr_match(const gh_cidr_t *c, const struct sockaddr *sa)
{
    uint8_t addr[16];
    int family;
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        family = AF_INET;
        memcpy(addr, &in->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        family = AF_INET6;
        memcpy(addr, &in6->sin6_addr, 16);
    } else {
        return false;
    }

    if (family == c->family)
        return prefix_equal(addr, c->addr, c->prefix);
    if (family == AF_INET6 && c->family == AF_INET) {
        /* ::ffff:a.b.c.d from a dual-stack socket is the IPv4 client. */
        if (memcmp(addr, v4mapped_prefix, 12) != 0)
            return false;
        return prefix_equal(addr + 12, c->addr, c->prefix);
    }
    /* An IPv4 peer against an IPv6 entry: compare it as ::ffff:a.b.c.d. */
    uint8_t mapped[16];
    memcpy(mapped, v4mapped_prefix, 12);
    memcpy(mapped + 12, addr, 4);
    return prefix_equal(mapped, c->addr, c->prefix);
}

bool gh_cidr_match_any(const gh_cidr_t *list, size_t n, const struct sockaddr *sa)
{
    for (size_t i = 0; i < n; i++)
        if (gh_cidr_match(&list[i], sa))
            return true;
    return false;
}

int gh_parse_sockaddr(const char *s, struct sockaddr_storage *out, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port;
    bool v6 = false;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        if (copy_str(host, sizeof(host), s + 1, (size_t)(close - s - 1)) < 0)
            return -1;
        port = close + 2;
        v6 = true;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return -1;  /* no port, or an IPv6 address without brackets */
        if (copy_str(host, sizeof(host), s, (size_t)(colon - s)) < 0)
            return -1;
        port = colon + 1;
    }

    unsigned long p;
    if (parse_small_uint(port, 5, 65535, &p) < 0 || p == 0)
        return -1;

    memset(out, 0, sizeof(*out));
    if (v6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return -1;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        *len = sizeof(*in6);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return -1;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)p);
        *len = sizeof(*in);
    }
    return 0;
}
