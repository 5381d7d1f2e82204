/* Strict HTTP/1.x head scanner (contract in h1scan.h, SPEC.md section 3,
 * "Failures").
 *
 * Why it exists: request smuggling lives in the gap between two parsers that
 * disagree about where a message ends. Whatever we forward is re-framed by
 * us, but llhttp 8.1.0 (which the proxy runs on exactly the bytes we accept)
 * still takes bare LF as a line end (CVE-2023-30589), misreads some
 * Content-Length / Transfer-Encoding spellings (CVE-2024-27982) and ends a
 * head on "\r\n\rX" (CVE-2025-23167). So this scanner accepts only heads that
 * every RFC 9112 parser reads the same way, and everything else is refused
 * before llhttp sees a byte.
 *
 * One pass, no allocation: memchr finds each line's CR, a 256-entry table
 * checks names, methods and targets, and field values (the bulk of a head)
 * are checked eight bytes at a time. The proxy calls us again with the whole
 * buffer after each read; a head is bounded by `max`, so re-scanning costs
 * little. Most errors are reported as soon as a bad byte or a complete bad
 * line is seen, before the head is complete; every strict prefix of a valid
 * head is "need more" (0).
 *
 * What *out holds is defined only after a positive return; it is scratch
 * otherwise. Internally errors are request statuses; the response scanner
 * folds every one of them into 502. */
#include <limits.h>
#include <string.h>
#include "proxy/h1scan.h"

/* Byte classes, one bit each in cls[]:
 *   TCHAR  RFC 9110 tchar: field names and methods.
 *   VBAD   not allowed in a field value or reason phrase: CTLs except HTAB,
 *          and DEL. CR and LF are in it, so a bare one is caught here.
 *   TARGET allowed in a request-target: VCHAR except '#'.
 *   AUTH   allowed in an authority (Host, absolute-form, CONNECT): RFC 3986
 *          unreserved, sub-delims, ':', '[', ']', '%'. Not '@': see
 *          authority_ok().
 *   LBAD   not allowed anywhere in a request line: outside 0x20..0x7E. */
enum {
    TCHAR = 1,
    VBAD = 2,
    TARGET = 4,
    AUTH = 8,
    LBAD = 16,
};

/* Built from the definitions above; tests/unit/test_h1scan.c checks every one
 * of the 256 entries through the public functions. */
static const unsigned char cls[256] = {
    18, 18, 18, 18, 18, 18, 18, 18, 18, 16, 18, 18, 18, 18, 18, 18,  /* 00 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18,  /* 10 */
     0, 13,  4,  1, 13, 13, 13, 13, 12, 12, 13, 13, 12, 13, 13,  4,  /* 20 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 12, 12,  4, 12,  4,  4,  /* 30 */
     4, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,  /* 40 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 12,  4, 12,  5, 13,  /* 50 */
     5, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,  /* 60 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,  4,  5,  4, 13, 18,  /* 70 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* 80 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* 90 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* a0 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* b0 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* c0 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* d0 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* e0 */
    16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,  /* f0 */
};

/* A method longer than this is not one any upstream implements; refusing it
 * early keeps junk from being echoed into logs. */
#define METHOD_MAX 32
/* 18 digits always fit in a uint64_t; longer values are refused rather than
 * risking an overflow that two parsers would wrap differently. */
#define CL_DIGITS_MAX 18

/* Framing state gathered over all header lines of one head. */
typedef struct scan_state {
    bool response;
    bool te_seen;           /* some Transfer-Encoding line was present */
    bool te_chunked;        /* "chunked" seen (must then be the last coding) */
    bool te_other;          /* a coding other than chunked was seen */
} scan_state_t;

static bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* OR of the classes of s[0..n): one branch-free loop, for checking a run
 * whose end memchr already found. */
static unsigned class_union(const unsigned char *s, size_t n)
{
    unsigned acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= cls[s[i]];
    return acc;
}

#define BYTES(c) (0x0101010101010101ULL * (c))

/* The high bit of each byte of x that is zero, and only of those. */
static uint64_t zero_bytes(uint64_t x)
{
    return ~(((x & BYTES(0x7f)) + BYTES(0x7f)) | x) & BYTES(0x80);
}

/* Does s[0..n) hold a byte that is VBAD (a CTL other than HTAB, or DEL)?
 * Field values are most of a head (cookies, tokens), so they are checked
 * eight bytes per step without table loads or branches: a byte is below
 * 0x20 exactly when adding 0x60 to its low seven bits leaves bit 7 clear
 * and bit 7 was clear to begin with; no sum carries into the next byte. */
static bool value_bad(const unsigned char *s, size_t n)
{
    uint64_t bad = 0;
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        uint64_t ctl = ~(((x & BYTES(0x7f)) + BYTES(0x60)) | x) & BYTES(0x80);
        bad |= (ctl & ~zero_bytes(x ^ BYTES('\t'))) | zero_bytes(x ^ BYTES(0x7f));
    }
    return bad != 0 || (class_union(s + i, n - i) & VBAD);
}

/* Where the field value starting at b[p] ends: the first VBAD byte of
 * b[p..end), or end if there is none. For a valid line that byte is its
 * CR; anything else there (a bare LF, a NUL, another control byte) is an
 * error. One pass finds the line end and checks the value, eight bytes per
 * step where eight are left; the lowest flagged byte of a little-endian
 * word comes first in memory. */
static size_t value_end(const unsigned char *b, size_t p, size_t end)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; p + 8 <= end; p += 8) {
        uint64_t x;
        memcpy(&x, b + p, 8);
        uint64_t ctl = ~(((x & BYTES(0x7f)) + BYTES(0x60)) | x) & BYTES(0x80);
        uint64_t bad = (ctl & ~zero_bytes(x ^ BYTES('\t'))) | zero_bytes(x ^ BYTES(0x7f));
        if (bad)
            return p + (size_t)(__builtin_ctzll(bad) >> 3);
    }
#endif
    while (p < end && !(cls[b[p]] & VBAD))
        p++;
    return p;
}

/* s[0..n) equals the lower-case literal lc, ignoring ASCII case. Only ever
 * called on bytes the scanner already checked (values and targets hold no
 * control byte but HTAB), which is all gh_h1_token_is needs: no such byte
 * maps onto a byte of a literal made of a-z, '-', ':' and '/'. */
static bool lc_equal(const unsigned char *s, size_t n, const char *lc, size_t lc_len)
{
    return n == lc_len && gh_h1_token_is((const char *)s, lc, n);
}
#define LC_EQUAL(s, n, lit) lc_equal((s), (n), lit, sizeof(lit) - 1)

/* authority = uri-host [ ":" port ], host a reg-name, IPv4 or "[IP-literal]".
 * Whatever the router and the upstream take as "the host" must be the same
 * string, so anything that could be split two ways is refused: userinfo
 * ("trusted@evil", which RFC 9110 4.2.4 says to treat as an error), a second
 * ':' outside brackets, a non-numeric or over-long port, a path or query. */
static bool authority_ok(const unsigned char *s, size_t n, bool allow_empty, bool need_port)
{
    size_t i = 0;

    if (n == 0)
        return allow_empty && !need_port;
    if (s[0] == '[') {
        for (i = 1; i < n && s[i] != ']'; i++)
            if (!(cls[s[i]] & AUTH) || s[i] == '[')
                return false;
        if (i == n || i == 1)
            return false;
        i++;
    } else {
        for (; i < n && s[i] != ':'; i++)
            if (!(cls[s[i]] & AUTH) || s[i] == '[' || s[i] == ']')
                return false;
        if (i == 0)
            return false;   /* ":80" names no host */
    }
    if (i == n)
        return !need_port;
    if (s[i] != ':')
        return false;
    size_t digits = n - i - 1;
    if (digits > 5 || (need_port && digits == 0))
        return false;
    for (i++; i < n; i++)
        if (!is_digit(s[i]))
            return false;
    return true;
}

/* Which request-target forms go with which method (RFC 9112 3.2). A target
 * in the wrong form is either meaningless or read differently by different
 * servers (is "example.com:443" a path for GET?), so it is refused. */
static int check_target(const unsigned char *m, size_t mlen, const unsigned char *t, size_t tlen)
{
    /* Methods are case-sensitive (RFC 9110 9.1): "connect" is not CONNECT. */
    if (mlen == 7 && memcmp(m, "CONNECT", 7) == 0) {
        /* CONNECT takes authority-form only, with an explicit port. */
        return authority_ok(t, tlen, false, true) ? 0 : -400;
    }
    if (tlen == 1 && t[0] == '*')
        return (mlen == 7 && memcmp(m, "OPTIONS", 7) == 0) ? 0 : -400;
    if (t[0] == '/')
        return 0;

    /* absolute-form, http and https only: the authority here overrides Host,
     * so it must be as clean as a Host value. */
    size_t s;
    if (tlen >= 7 && LC_EQUAL(t, 7, "http://"))
        s = 7;
    else if (tlen >= 8 && LC_EQUAL(t, 8, "https://"))
        s = 8;
    else
        return -400;
    size_t e = s;
    while (e < tlen && t[e] != '/' && t[e] != '?')
        e++;
    return authority_ok(t + s, e - s, false, false) ? 0 : -400;
}

/* Request line: method SP request-target SP HTTP-version CRLF, preceded by
 * any number of empty lines (RFC 9112 2.2 asks servers to skip at least one:
 * some clients send a stray CRLF after a POST body). Returns 1 with *pp past
 * the CRLF, 0 if the line is not complete in b[0..end), or an error. */
static int request_line(const unsigned char *b, size_t end, size_t *pp, gh_h1_head_t *out)
{
    size_t p = 0;

    while (p < end && b[p] == '\r') {
        if (p + 1 >= end)
            return 0;
        if (b[p + 1] != '\n')
            return -400;
        p += 2;
    }

    const unsigned char *cr = p < end ? memchr(b + p, '\r', end - p) : NULL;
    if (!cr) {
        /* Refuse junk now instead of waiting for a CR that may never come;
         * every prefix of a valid line is printable ASCII. */
        return (class_union(b + p, end - p) & LBAD) ? -400 : 0;
    }
    size_t e = (size_t)(cr - b);

    /* method: a token followed by exactly one SP */
    size_t ms = p;
    while (p < e && (cls[b[p]] & TCHAR))
        p++;
    size_t mlen = p - ms;
    if (p == e || b[p] != ' ' || mlen == 0 || mlen > METHOD_MAX)
        return -400;
    p++;

    /* request-target: printable ASCII only. A space, a control byte or a
     * raw 8-bit byte here is how request lines get split differently by
     * different servers; '#' never belongs in a request (RFC 9112 3.2). */
    size_t ts = p;
    while (p < e && (cls[b[p]] & TARGET))
        p++;
    size_t tlen = p - ts;
    if (p == e || b[p] != ' ' || tlen == 0)
        return -400;
    p++;

    /* HTTP-version: we speak 1.0 and 1.1 only. A well-formed other version
     * gets 505 so h2 prior-knowledge clients ("PRI * HTTP/2.0") and HTTP/1.2
     * get an answer they can act on; anything else is garbage (400),
     * including a 0.9-style line with no version at all. */
    size_t vlen = e - p;
    const unsigned char *v = b + p;
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) || v[6] != '.' ||
        !is_digit(v[7]))
        return -400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return -505;
    out->minor_version = v[7] - '0';

    int r = check_target(b + ms, mlen, b + ts, tlen);
    if (r < 0)
        return r;

    if (e + 1 >= end)
        return 0;
    if (b[e + 1] != '\n')
        return -400;    /* bare CR */

    out->method = (const char *)b + ms;
    out->method_len = mlen;
    out->target = (const char *)b + ts;
    out->target_len = tlen;
    *pp = e + 2;
    return 1;
}

/* Status line: HTTP-version SP 3DIGIT SP reason-phrase CRLF. The one leniency
 * is an empty reason with or without its SP ("HTTP/1.1 200\r\n"), which real
 * servers send and which cannot shift any framing. */
static int status_line(const unsigned char *b, size_t end, size_t *pp, gh_h1_head_t *out)
{
    const unsigned char *cr = end ? memchr(b, '\r', end) : NULL;
    if (!cr)
        return value_bad(b, end) ? -400 : 0;
    size_t e = (size_t)(cr - b);

    if (e < 12 || memcmp(b, "HTTP/1.", 7) != 0 || (b[7] != '0' && b[7] != '1') ||
        b[8] != ' ')
        return -400;
    if (!is_digit(b[9]) || b[9] == '0' || !is_digit(b[10]) || !is_digit(b[11]))
        return -400;
    if (e > 12 && (b[12] != ' ' || value_bad(b + 13, e - 13)))
        return -400;
    if (e + 1 >= end)
        return 0;
    if (b[e + 1] != '\n')
        return -400;

    out->minor_version = b[7] - '0';
    out->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    *pp = e + 2;
    return 1;
}

/* Content-Length: 1*DIGIT, or a comma list of identical values (RFC 9110
 * 8.6 lets a recipient take "42, 42" as 42). No sign, no hex, no inner
 * space, no empty element: each of those has been read as a different
 * length by some server. Several lines must agree too. */
static int content_length(gh_h1_head_t *out, const unsigned char *v, size_t n)
{
    size_t i = 0;

    for (;;) {
        while (i < n && is_ows(v[i]))
            i++;
        size_t s = i;
        uint64_t x = 0;
        while (i < n && is_digit(v[i])) {
            if (i - s == CL_DIGITS_MAX)
                return -400;
            x = x * 10 + (uint64_t)(v[i] - '0');
            i++;
        }
        if (i == s)
            return -400;
        while (i < n && is_ows(v[i]))
            i++;
        if (out->has_content_length && out->content_length != x)
            return -400;
        out->has_content_length = true;
        out->content_length = x;
        if (i == n)
            return 0;
        if (v[i] != ',')
            return -400;
        i++;
    }
}

/* Transfer-Encoding: all lines form one comma list (RFC 9110 5.3). The body
 * length is only known when chunked is the final coding (RFC 9112 6.3), and
 * a chunked applied twice or followed by anything is how one hop decodes a
 * body differently from the next: 400. Codings we cannot decode (gzip,
 * identity, "xchunked", anything with parameters) are 501, decided at the
 * end so a framing error later in the head still wins. Empty elements are
 * refused: "chunked," must not be read as chunked-last by one parser and
 * chunked-then-something by another. */
static int transfer_encoding(scan_state_t *st, const unsigned char *v, size_t n)
{
    size_t i = 0;

    st->te_seen = true;
    for (;;) {
        while (i < n && is_ows(v[i]))
            i++;
        size_t s = i;
        while (i < n && (cls[v[i]] & TCHAR))
            i++;
        size_t tlen = i - s;
        if (tlen == 0)
            return -400;
        bool params = false;
        while (i < n && is_ows(v[i]))
            i++;
        if (i < n && v[i] == ';') {
            /* transfer-parameter: the coding is then never plain chunked, so
             * its exact syntax does not matter, only where it ends. */
            params = true;
            while (i < n && v[i] != ',')
                i++;
        }
        if (i < n && v[i] != ',')
            return -400;

        if (st->te_chunked)
            return -400;    /* something after chunked, chunked included */
        if (LC_EQUAL(v + s, tlen, "chunked")) {
            if (params)
                return -400;
            st->te_chunked = true;
        } else {
            st->te_other = true;
        }
        if (i == n)
            return 0;
        i++;
    }
}

/* Connection is a comma list of tokens; we only care about three. Anything
 * else names a hop-by-hop header the proxy strips using the header slices. */
static void connection(gh_h1_head_t *out, const unsigned char *v, size_t n)
{
    size_t i = 0;

    while (i <= n) {
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (s < e && is_ows(v[s]))
            s++;
        while (e > s && is_ows(v[e - 1]))
            e--;
        if (LC_EQUAL(v + s, e - s, "close"))
            out->conn_close = true;
        else if (LC_EQUAL(v + s, e - s, "keep-alive"))
            out->conn_keep_alive = true;
        else if (LC_EQUAL(v + s, e - s, "upgrade"))
            out->conn_upgrade = true;
        else if (e > s)
            out->conn_other = true;
        i++;
    }
}

/* Which of the names in enum gh_h1_name n[0..len) is, dispatched on the
 * length so that most fields cost one switch and one compare. */
static unsigned char name_id(const char *n, size_t len)
{
#define IS(lit) gh_h1_token_is(n, lit, sizeof(lit) - 1)
    switch (len) {
    case 2: return IS("te") ? GH_HN_TE : GH_HN_OTHER;
    case 4: return IS("host") ? GH_HN_HOST : GH_HN_OTHER;
    case 6: return IS("expect") ? GH_HN_EXPECT : GH_HN_OTHER;
    case 7:
        return IS("upgrade") ? GH_HN_UPGRADE
               : IS("trailer") ? GH_HN_TRAILER
               : IS("referer") ? GH_HN_REFERER
                               : GH_HN_OTHER;
    case 9: return IS("x-real-ip") ? GH_HN_X_REAL_IP : GH_HN_OTHER;
    case 10:
        return IS("connection") ? GH_HN_CONNECTION
               : IS("user-agent") ? GH_HN_USER_AGENT
               : IS("keep-alive") ? GH_HN_KEEP_ALIVE
                                  : GH_HN_OTHER;
    case 12: return IS("x-request-id") ? GH_HN_X_REQUEST_ID : GH_HN_OTHER;
    case 14: return IS("content-length") ? GH_HN_CONTENT_LENGTH : GH_HN_OTHER;
    case 15: return IS("x-forwarded-for") ? GH_HN_X_FORWARDED_FOR : GH_HN_OTHER;
    case 16:
        return IS("x-forwarded-host") ? GH_HN_X_FORWARDED_HOST
               : IS("proxy-connection") ? GH_HN_PROXY_CONNECTION
               : IS("cf-connecting-ip") ? GH_HN_CF_CONNECTING_IP
                                        : GH_HN_OTHER;
    case 17:
        return IS("transfer-encoding") ? GH_HN_TRANSFER_ENCODING
               : IS("x-forwarded-proto") ? GH_HN_X_FORWARDED_PROTO
                                         : GH_HN_OTHER;
    default: return GH_HN_OTHER;
    }
#undef IS
}

/* Look at one complete header line for the fields that frame or route the
 * message. */
static int field(gh_h1_head_t *out, scan_state_t *st, const gh_h1_header_t *h, size_t idx)
{
    const unsigned char *v = (const unsigned char *)h->value;

    switch (h->id) {
    case GH_HN_HOST:
        /* Two Hosts, or one that is not an authority, let the router and
         * the upstream pick different virtual hosts (RFC 9112 3.2 demands
         * 400). A response's Host means nothing: only counted. */
        if (++out->nhost == 1)
            out->host_index = (int)idx;
        if (st->response)
            break;
        if (out->nhost > 1 || !authority_ok(v, h->value_len, true, false))
            return -400;
        break;
    case GH_HN_UPGRADE:
        /* An empty Upgrade offers nothing; llhttp 8.1.0 ignores it too, and
         * the proxy and llhttp must agree on whether a tunnel starts. */
        if (h->value_len > 0)
            out->has_upgrade = true;
        break;
    case GH_HN_CONNECTION:
        connection(out, v, h->value_len);
        break;
    case GH_HN_CONTENT_LENGTH:
        return content_length(out, v, h->value_len);
    case GH_HN_TRANSFER_ENCODING:
        return transfer_encoding(st, v, h->value_len);
    default:
        break;
    }
    return 0;
}

/* The whole head. Only b[0..min(len, max)) is ever looked at, so a head over
 * the limit is refused the same way whether it arrived whole or in pieces. */
static int scan(const char *buf, size_t len, size_t max, gh_h1_head_t *out, bool response)
{
    const unsigned char *b = (const unsigned char *)buf;
    scan_state_t st = {.response = response};
    size_t p = 0;
    int r;

    /* The return value carries head_len as an int. */
    if (max > INT_MAX)
        max = INT_MAX;
    size_t end = len < max ? len : max;
    bool full = len >= max;     /* no more bytes may count towards this head */

    out->head_len = 0;
    out->method = NULL;
    out->method_len = 0;
    out->target = NULL;
    out->target_len = 0;
    out->status = 0;
    out->minor_version = 0;
    out->nheaders = 0;
    out->has_content_length = false;
    out->content_length = 0;
    out->chunked = false;
    out->conn_close = false;
    out->conn_keep_alive = false;
    out->conn_upgrade = false;
    out->conn_other = false;
    out->has_upgrade = false;
    out->host_index = -1;
    out->nhost = 0;

    r = response ? status_line(b, end, &p, out) : request_line(b, end, &p, out);
    if (r < 0)
        return r;
    if (r == 0)
        return full ? -414 : 0;

    for (;;) {
        if (p >= end)
            goto incomplete;
        if (b[p] == '\r') {
            if (p + 1 >= end)
                goto incomplete;
            /* "\r\n\rX": llhttp 8.1.0 ends the head there (CVE-2025-23167);
             * anyone else sees a bare CR. */
            if (b[p + 1] != '\n')
                return -400;
            p += 2;
            break;
        }
        if (out->nheaders == GH_H1_MAX_HEADERS)
            return -431;

        /* field-name ":" with nothing in between. This one test refuses
         * obs-fold (a line starting with SP/HTAB gives an empty name),
         * whitespace before the colon (RFC 9112 5.1: some servers strip it
         * and see a different header than we do), bare LF ending the
         * previous line, and non-token names. */
        size_t ns = p;
        while (p < end && (cls[b[p]] & TCHAR))
            p++;
        if (p >= end)
            goto incomplete;
        if (b[p] != ':' || p == ns)
            return -400;
        size_t ne = p++;

        /* field-value: the CR must be followed by LF, and nothing before
         * it may be a control byte: a bare LF or CR (CVE-2023-30589) or a
         * NUL is a line end or string end to some parser and not another. */
        size_t e = value_end(b, p, end);
        if (e == end)
            goto incomplete;
        if (b[e] != '\r')
            return -400;
        if (e + 1 >= end)
            goto incomplete;
        if (b[e + 1] != '\n')
            return -400;

        size_t vs = p, ve = e;
        while (vs < ve && is_ows(b[vs]))
            vs++;
        while (ve > vs && is_ows(b[ve - 1]))
            ve--;
        gh_h1_header_t *h = &out->headers[out->nheaders];
        h->name = buf + ns;
        h->name_len = (uint32_t)(ne - ns);
        h->value = buf + vs;
        h->value_len = (uint32_t)(ve - vs);
        h->id = name_id(h->name, h->name_len);
        r = field(out, &st, h, out->nheaders);
        if (r < 0)
            return r;
        out->nheaders++;
        p = e + 2;
    }

    if (st.te_seen) {
        /* Both framings at once is the classic CL.TE / TE.CL smuggle
         * (RFC 9112 6.1 allows rejecting it; we always do). */
        if (out->has_content_length)
            return -400;
        /* HTTP/1.0 has no chunked coding; a 1.0 hop would read the body
         * by Content-Length or to EOF (RFC 9112 6.1: faulty framing). */
        if (out->minor_version == 0)
            return -400;
    }
    if (!response && out->minor_version == 1 && out->nhost == 0)
        return -400;    /* RFC 9112 3.2 */
    /* Last, so that every malformed head gets 400 and only a well-formed
     * one with a coding we cannot decode gets 501. */
    if (st.te_other)
        return -501;
    out->chunked = st.te_chunked;

    out->head_len = p;
    return (int)p;

incomplete:
    /* The request line was complete, so what does not fit is the fields. */
    return full ? -431 : 0;
}

int gh_h1_scan_request(const char *buf, size_t len, size_t max, gh_h1_head_t *out)
{
    return scan(buf, len, max, out, false);
}

int gh_h1_scan_response(const char *buf, size_t len, size_t max, gh_h1_head_t *out)
{
    int r = scan(buf, len, max, out, true);
    return r < 0 ? -502 : r;
}
