/* libFuzzer target for gh_proxyproto_parse.
 *
 * Beyond "no crash, no overread", it checks the properties the listener
 * relies on: a header's length never exceeds the input or the caps; every
 * strict prefix of a header asks for more bytes (so a header split across
 * reads is never refused); the answer does not depend on bytes after the
 * header; a refusal stays a refusal however many bytes follow; and the
 * addresses given back are the ones in the text. */
#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "proxy/proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const gh_proxyproto_t *a, const gh_proxyproto_t *b)
{
    assert(a->version == b->version && a->kind == b->kind);
    assert(a->srclen == b->srclen && a->dstlen == b->dstlen);
    assert(memcmp(&a->src, &b->src, a->srclen) == 0);
    assert(memcmp(&a->dst, &b->dst, a->dstlen) == 0);
}

static unsigned port(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)ss)->sin_port)
                                    : ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* A v1 TCP4 line is fully determined by what came back: print it again. */
static void v1_roundtrip(const uint8_t *data, int n, const gh_proxyproto_t *p)
{
    char s[INET_ADDRSTRLEN], d[INET_ADDRSTRLEN], line[160];
    if (p->src.ss_family != AF_INET)
        return;
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&p->src)->sin_addr, s, sizeof(s));
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&p->dst)->sin_addr, d, sizeof(d));
    int w = snprintf(line, sizeof(line), "PROXY TCP4 %s %s %u %u\r\n", s, d, port(&p->src),
                     port(&p->dst));
    assert(w == n && memcmp(line, data, (size_t)n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gh_proxyproto_t out, again;
    memset(&out, 0xa5, sizeof(out));
    int rc = gh_proxyproto_parse(data, size, &out);
    assert(rc >= -1);

    if (rc == 0) {
        /* "Need more" only while a header could still fit. */
        assert(size < GH_PROXYPROTO_V2_MAX);
        if (size > 0 && data[0] == 'P')
            assert(size < GH_PROXYPROTO_V1_MAX);
        return 0;
    }
    uint8_t *buf = malloc(size + 1);
    assert(buf != NULL);
    memcpy(buf, data, size);
    if (rc < 0) {
        /* More bytes cannot repair it. */
        buf[size] = '\n';
        assert(gh_proxyproto_parse(buf, size + 1, &again) == -1);
        buf[size] = 0;
        assert(gh_proxyproto_parse(buf, size + 1, &again) == -1);
        free(buf);
        return 0;
    }

    size_t n = (size_t)rc;
    assert(n <= size);
    assert(n <= (data[0] == 'P' ? GH_PROXYPROTO_V1_MAX : GH_PROXYPROTO_V2_MAX));
    assert(out.version == (data[0] == 'P' ? 1 : 2));
    /* The header alone, and the header followed by something else. */
    assert(gh_proxyproto_parse(data, n, &again) == rc);
    same(&out, &again);
    if (n < size) {
        buf[n] ^= 0xff;
        assert(gh_proxyproto_parse(buf, size, &again) == rc);
        same(&out, &again);
    }
    /* Prefixes ask for more. */
    for (size_t k = 0; k < n; k++)
        assert(gh_proxyproto_parse(data, k, &again) == 0);

    switch (out.kind) {
    case GH_PROXYPROTO_PROXY:
        assert(out.src.ss_family == out.dst.ss_family);
        assert(out.src.ss_family == AF_INET || out.src.ss_family == AF_INET6);
        assert(out.srclen == (out.src.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                           : sizeof(struct sockaddr_in6)));
        assert(out.dstlen == out.srclen);
        if (out.version == 1)
            v1_roundtrip(data, rc, &out);
        break;
    case GH_PROXYPROTO_LOCAL:
        assert(out.version == 2);
        /* fall through */
    case GH_PROXYPROTO_UNKNOWN:
        assert(out.srclen == 0 && out.dstlen == 0);
        break;
    default:
        assert(0);
    }
    free(buf);
    return 0;
}
