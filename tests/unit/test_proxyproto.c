/* PROXY protocol v1/v2 parsing (proxy/proxyproto.c): complete headers,
 * every prefix of them ("need more"), and malformed ones. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include "proxy/proxyproto.h"
#include "tests/unit/test.h"

static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

static int parse(const void *buf, size_t len, gh_proxyproto_t *out)
{
    return gh_proxyproto_parse(buf, len, out);
}

static int parse_str(const char *s, gh_proxyproto_t *out)
{
    return parse(s, strlen(s), out);
}

/* Every strict prefix of a complete header asks for more bytes. */
static void check_prefixes(int line, const uint8_t *buf, size_t hlen)
{
    gh_proxyproto_t out;
    for (size_t i = 0; i < hlen; i++) {
        int rc = parse(buf, i, &out);
        if (rc != 0)
            fprintf(stderr, "  prefix %zu of header at line %d gave %d\n", i, line, rc);
        CHECK_INT(rc, 0);
    }
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    if (ss->ss_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf,
                         (socklen_t)cap);
    return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf,
                     (socklen_t)cap);
}

static unsigned port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static void test_v1(void)
{
    gh_proxyproto_t out;
    char a[64];
    const char *h = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
    size_t hlen = strlen("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
    CHECK_INT(parse_str(h, &out), (int)hlen);
    CHECK_INT(out.version, 1);
    CHECK_INT(out.kind, GH_PROXYPROTO_PROXY);
    CHECK_INT(out.src.ss_family, AF_INET);
    CHECK_INT(out.srclen, sizeof(struct sockaddr_in));
    CHECK_STR(addr_str(&out.src, a, sizeof(a)), "192.0.2.1");
    CHECK_INT(port_of(&out.src), 56324);
    CHECK_STR(addr_str(&out.dst, a, sizeof(a)), "198.51.100.2");
    CHECK_INT(port_of(&out.dst), 443);
    check_prefixes(__LINE__, (const uint8_t *)h, hlen);

    h = "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
    CHECK_INT(parse_str(h, &out), (int)strlen(h));
    CHECK_INT(out.src.ss_family, AF_INET6);
    CHECK_INT(out.srclen, sizeof(struct sockaddr_in6));
    CHECK_STR(addr_str(&out.src, a, sizeof(a)), "2001:db8::1");
    CHECK_INT(port_of(&out.src), 65535);
    CHECK_INT(port_of(&out.dst), 0);

    h = "PROXY UNKNOWN\r\n";
    CHECK_INT(parse_str(h, &out), (int)strlen(h));
    CHECK_INT(out.kind, GH_PROXYPROTO_UNKNOWN);
    CHECK_INT(out.srclen, 0);
    h = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    CHECK_INT(parse_str(h, &out), (int)strlen(h));
    CHECK_INT(out.kind, GH_PROXYPROTO_UNKNOWN);

    /* The longest line the spec allows for: 107 bytes with its CRLF. */
    h = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK_INT(strlen(h), GH_PROXYPROTO_V1_MAX);
    CHECK_INT(parse_str(h, &out), GH_PROXYPROTO_V1_MAX);
    check_prefixes(__LINE__, (const uint8_t *)h, strlen(h));
    h = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK_INT(parse_str(h, &out), 104);
    CHECK_INT(out.kind, GH_PROXYPROTO_PROXY);
    /* One more byte of anything before the CRLF is too long, and is said as
     * soon as it is seen. */
    char longer[160];
    snprintf(longer, sizeof(longer), "PROXY UNKNOWN %092d\r\n", 0);
    CHECK_INT(strlen(longer), GH_PROXYPROTO_V1_MAX + 1);
    CHECK_INT(parse_str(longer, &out), -1);
    CHECK_INT(parse(longer, GH_PROXYPROTO_V1_MAX - 1, &out), -1);
    CHECK_INT(parse(longer, GH_PROXYPROTO_V1_MAX - 2, &out), 0);

    static const char *const bad[] = {
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",        /* bare LF */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\rX",       /* CR without LF */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",          /* a field short */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 1\r\n",    /* one too many */
        "PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",     /* double space */
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",     /* trailing space */
        "PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",    /* family mismatch */
        "PROXY TCP6 192.0.2.1 ::1 56324 443\r\n",
        "PROXY TCP4 192.0.2.256 198.51.100.2 56324 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",      /* port range */
        "PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",       /* leading zero */
        "PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
        "PROXY TCP5 192.0.2.1 198.51.100.2 1 443\r\n",
        "PROXY tcp4 192.0.2.1 198.51.100.2 1 443\r\n",
        "PROXY UNKNOWNX\r\n",
        "PROXY \r\n",
        "PROXY\r\n",
        "proxy TCP4 192.0.2.1 198.51.100.2 1 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 443\t\r\n",
        "GET / HTTP/1.1\r\n",
        "\x16\x03\x01",                                         /* a TLS hello */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse_str(bad[i], &out);
        if (rc != -1)
            fprintf(stderr, "  bad v1 #%zu gave %d\n", i, rc);
        CHECK_INT(rc, -1);
    }
    /* Early refusal: a few bytes of something else are enough. */
    CHECK_INT(parse_str("PROXZ", &out), -1);
    CHECK_INT(parse_str("G", &out), -1);
    CHECK_INT(parse_str("PROX", &out), 0);
    CHECK_INT(parse(NULL, 0, &out), 0);
    CHECK_INT(parse_str("PROXY TCP4 1.2\x01", &out), -1);
    /* A NUL in the line. */
    CHECK_INT(parse("PROXY UNKNOWN\0\r\n", 16, &out), -1);
}

/* A v2 header: command, family/protocol byte, then body bytes. */
static size_t v2(uint8_t *buf, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, size_t blen)
{
    memcpy(buf, sig, 12);
    buf[12] = ver_cmd;
    buf[13] = fam;
    buf[14] = (uint8_t)(blen >> 8);
    buf[15] = (uint8_t)blen;
    if (blen)
        memcpy(buf + 16, body, blen);
    return 16 + blen;
}

static void test_v2(void)
{
    gh_proxyproto_t out;
    uint8_t buf[8192], body[4096];
    char a[64];

    /* PROXY, TCP over IPv4, with a TLV after the addresses and request
     * bytes after the header. */
    uint8_t v4[] = { 192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb,
                     0x04, 0x00, 0x02, 'h', 'i' };     /* PP2_TYPE_NOOP */
    size_t n = v2(buf, 0x21, 0x11, v4, sizeof(v4));
    memcpy(buf + n, "GET /", 5);
    CHECK_INT(parse(buf, n + 5, &out), (int)n);
    CHECK_INT(out.version, 2);
    CHECK_INT(out.kind, GH_PROXYPROTO_PROXY);
    CHECK_STR(addr_str(&out.src, a, sizeof(a)), "192.0.2.1");
    CHECK_INT(port_of(&out.src), 56324);
    CHECK_STR(addr_str(&out.dst, a, sizeof(a)), "198.51.100.2");
    CHECK_INT(port_of(&out.dst), 443);
    CHECK_INT(out.srclen, sizeof(struct sockaddr_in));
    check_prefixes(__LINE__, buf, n);

    /* IPv6. */
    memset(body, 0, 36);
    inet_pton(AF_INET6, "2001:db8::7", body);
    inet_pton(AF_INET6, "2001:db8::1", body + 16);
    body[32] = 0x30, body[33] = 0x39;     /* 12345 */
    body[34] = 0x00, body[35] = 0x50;     /* 80 */
    n = v2(buf, 0x21, 0x21, body, 36);
    CHECK_INT(parse(buf, n, &out), (int)n);
    CHECK_INT(out.src.ss_family, AF_INET6);
    CHECK_STR(addr_str(&out.src, a, sizeof(a)), "2001:db8::7");
    CHECK_INT(port_of(&out.src), 12345);
    CHECK_STR(addr_str(&out.dst, a, sizeof(a)), "2001:db8::1");
    CHECK_INT(port_of(&out.dst), 80);
    check_prefixes(__LINE__, buf, n);

    /* LOCAL: addresses, if any, are ignored. */
    n = v2(buf, 0x20, 0x00, NULL, 0);
    CHECK_INT(parse(buf, n, &out), 16);
    CHECK_INT(out.kind, GH_PROXYPROTO_LOCAL);
    CHECK_INT(out.srclen, 0);
    n = v2(buf, 0x20, 0x11, v4, 3);
    CHECK_INT(parse(buf, n, &out), 19);
    CHECK_INT(out.kind, GH_PROXYPROTO_LOCAL);

    /* UNSPEC, UNIX and UDP: keep the peer address. */
    n = v2(buf, 0x21, 0x00, NULL, 0);
    CHECK_INT(parse(buf, n, &out), 16);
    CHECK_INT(out.kind, GH_PROXYPROTO_UNKNOWN);
    memset(body, 'u', 216);
    n = v2(buf, 0x21, 0x31, body, 216);
    CHECK_INT(parse(buf, n, &out), 16 + 216);
    CHECK_INT(out.kind, GH_PROXYPROTO_UNKNOWN);
    n = v2(buf, 0x21, 0x12, v4, 12);
    CHECK_INT(parse(buf, n, &out), 28);
    CHECK_INT(out.kind, GH_PROXYPROTO_UNKNOWN);

    /* Biggest accepted, then one too many: refused as soon as the length is
     * read, without waiting for the bytes. */
    memset(body, 0, sizeof(body));
    memcpy(body, v4, 12);
    n = v2(buf, 0x21, 0x11, body, GH_PROXYPROTO_V2_MAX - 16);
    CHECK_INT(parse(buf, n, &out), GH_PROXYPROTO_V2_MAX);
    n = v2(buf, 0x21, 0x11, body, GH_PROXYPROTO_V2_MAX - 15);
    CHECK_INT(parse(buf, 16, &out), -1);

    /* Malformed. */
    n = v2(buf, 0x11, 0x11, v4, 12);            /* version 1 in binary */
    CHECK_INT(parse(buf, 13, &out), -1);
    n = v2(buf, 0x22, 0x11, v4, 12);            /* command 2 */
    CHECK_INT(parse(buf, n, &out), -1);
    n = v2(buf, 0x21, 0x41, v4, 12);            /* family 4 */
    CHECK_INT(parse(buf, 14, &out), -1);
    n = v2(buf, 0x21, 0x13, v4, 12);            /* protocol 3 */
    CHECK_INT(parse(buf, n, &out), -1);
    n = v2(buf, 0x21, 0x11, v4, 11);            /* too short for IPv4 */
    CHECK_INT(parse(buf, 16, &out), -1);
    n = v2(buf, 0x21, 0x21, body, 35);          /* too short for IPv6 */
    CHECK_INT(parse(buf, n, &out), -1);
    n = v2(buf, 0x21, 0x31, body, 215);         /* too short for UNIX */
    CHECK_INT(parse(buf, n, &out), -1);
    memcpy(buf, sig, 12);
    buf[6] = 0x0b;                              /* signature */
    CHECK_INT(parse(buf, 7, &out), -1);
    CHECK_INT(parse(buf, 6, &out), 0);
    CHECK_INT(parse("\r\n\r\n\r", 5, &out), -1);
}

int main(void)
{
    test_v1();
    test_v2();
    TEST_MAIN_END();
}
