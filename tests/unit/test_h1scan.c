/* Unit tests for proxy/h1scan.c: every accept and reject rule of the strict
 * head scanner, with the exact status it must return. The smuggling cases are
 * the point: each one is a head that llhttp 8.1.0 (or some upstream) reads
 * differently from RFC 9112. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "proxy/h1scan.h"
#include "tests/unit/test.h"

#define BIG 8192

static gh_h1_head_t H;

/* Scan a C string (no NUL inside) as a request / response. */
static int req(const char *s)
{
    return gh_h1_scan_request(s, strlen(s), BIG, &H);
}

static int resp(const char *s)
{
    return gh_h1_scan_response(s, strlen(s), BIG, &H);
}

/* For literals with a NUL inside: the length comes from sizeof. */
#define REQ_LIT(lit) gh_h1_scan_request(lit, sizeof(lit) - 1, BIG, &H)
#define RESP_LIT(lit) gh_h1_scan_response(lit, sizeof(lit) - 1, BIG, &H)

/* A slice as a C string for CHECK_STR; a small ring so that several can be
 * alive in one expression. */
static const char *sl(const char *p, size_t n)
{
    static char ring[8][512];
    static unsigned k;
    char *d = ring[k++ % 8];
    if (!p)
        return "(null)";
    if (n >= sizeof ring[0])
        n = sizeof ring[0] - 1;
    memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

#define HNAME(i) sl(H.headers[i].name, H.headers[i].name_len)
#define HVAL(i) sl(H.headers[i].value, H.headers[i].value_len)

/* A request "GET / HTTP/1.1" with Host and one extra header line (given
 * without its CRLF), for checking single field rules. */
static int req_with(const char *line)
{
    static char buf[1024];
    int n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n", line);
    return gh_h1_scan_request(buf, (size_t)n, BIG, &H);
}

static int resp_with(const char *line)
{
    static char buf[1024];
    int n = snprintf(buf, sizeof buf, "HTTP/1.1 200 OK\r\n%s\r\n\r\n", line);
    return gh_h1_scan_response(buf, (size_t)n, BIG, &H);
}

/* Every strict prefix must be "need more" (0), the whole head its length. */
static void check_prefixes(const char *s, bool response)
{
    size_t n = strlen(s);
    int bad = 0;
    for (size_t k = 0; k < n; k++) {
        int r = response ? gh_h1_scan_response(s, k, BIG, &H) : gh_h1_scan_request(s, k, BIG, &H);
        if (r != 0) {
            if (!bad)
                fprintf(stderr, "prefix %zu of %.40s... gave %d\n", k, s, r);
            bad++;
        }
    }
    CHECK_INT(bad, 0);
    int r = response ? gh_h1_scan_response(s, n, BIG, &H) : gh_h1_scan_request(s, n, BIG, &H);
    CHECK_INT(r, (int)n);
}

static void test_valid_get(void)
{
    const char *s = "GET /a/b?c=d HTTP/1.1\r\n"
                    "Host: example.com\r\n"
                    "User-Agent:   curl/8.0  \r\n"
                    "X-Tab:\t tabbed\t\r\n"
                    "X-Empty:\r\n"
                    "X-Blank: \t \r\n"
                    "Accept: */*\r\n"
                    "\r\n";
    int n = (int)strlen(s);
    CHECK_INT(req(s), n);
    CHECK_INT(H.head_len, n);
    CHECK_STR(sl(H.method, H.method_len), "GET");
    CHECK_STR(sl(H.target, H.target_len), "/a/b?c=d");
    CHECK_INT(H.minor_version, 1);
    CHECK_INT(H.status, 0);
    CHECK_INT(H.nheaders, 6);
    CHECK_STR(HNAME(0), "Host");
    CHECK_STR(HVAL(0), "example.com");
    CHECK_STR(HNAME(1), "User-Agent");
    CHECK_STR(HVAL(1), "curl/8.0");
    CHECK_STR(HNAME(2), "X-Tab");
    CHECK_STR(HVAL(2), "tabbed");
    CHECK_STR(HNAME(3), "X-Empty");
    CHECK_INT(H.headers[3].value_len, 0);
    CHECK_STR(HNAME(4), "X-Blank");
    CHECK_INT(H.headers[4].value_len, 0);
    CHECK_STR(HVAL(5), "*/*");
    CHECK_INT(H.host_index, 0);
    CHECK_INT(H.nhost, 1);
    CHECK(!H.has_content_length);
    CHECK(!H.chunked);
    CHECK(!H.conn_close && !H.conn_keep_alive && !H.conn_upgrade && !H.has_upgrade);
    CHECK(GH_H1_NAME_IS(&H.headers[1], "user-agent"));

    /* Slices point into the caller's buffer, not into a copy. */
    CHECK(H.method == s);
    CHECK(H.headers[0].value == s + 29);

    /* Inner spaces of a value are kept; only the edges are OWS. */
    CHECK_INT(req_with("X-A:  a  b  ") > 0, 1);
    CHECK_STR(HVAL(1), "a  b");

    /* HTTP/1.0 needs no Host. */
    CHECK_INT(req("GET / HTTP/1.0\r\n\r\n"), 18);
    CHECK_INT(H.minor_version, 0);
    CHECK_INT(H.host_index, -1);
    CHECK_INT(H.nheaders, 0);

    /* Methods are any token; the proxy decides what it forwards. */
    CHECK_INT(req("PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("get / HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("A / HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("ABCDEFGHIJABCDEFGHIJABCDEFGHIJAB / HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("ABCDEFGHIJABCDEFGHIJABCDEFGHIJABC / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);

    /* obs-text in a value is allowed (RFC 9110 5.5), passed through. */
    CHECK_INT(req_with("X-A: caf\xc3\xa9") > 0, 1);
    CHECK_STR(HVAL(1), "caf\xc3\xa9");
}

static void test_pipelined(void)
{
    const char *head = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    char buf[256];
    int hl = (int)strlen(head);
    int n = snprintf(buf, sizeof buf, "%sGET /x HTTP/1.1\r\nHost: b\r\n\r\n", head);
    CHECK_INT(gh_h1_scan_request(buf, (size_t)n, BIG, &H), hl);
    CHECK_INT(H.head_len, hl);
    /* Bytes after the head are not looked at, even garbage or body. */
    memcpy(buf, head, (size_t)hl);
    memcpy(buf + hl, "\n\r\x01\0zz", 6);
    CHECK_INT(gh_h1_scan_request(buf, (size_t)hl + 6, BIG, &H), hl);
    CHECK_INT(H.nheaders, 1);
    /* A head whose buffer continues into a body. */
    n = snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    CHECK_INT(gh_h1_scan_request(buf, (size_t)n, BIG, &H), n - 5);
    CHECK(H.has_content_length);
    CHECK_INT(H.content_length, 5);
}

static void test_line_endings(void)
{
    /* bare LF as a line end (CVE-2023-30589) */
    CHECK_INT(req("GET / HTTP/1.1\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\n\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\nX: b\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n\nX: b\r\n\r\n"), -400);
    CHECK_INT(req("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    /* bare LF is refused before the head is complete */
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\nX"), -400);
    CHECK_INT(req("GET / HT\n"), -400);

    /* bare CR */
    CHECK_INT(req("GET / HTTP/1.1\rHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\r\n\r\n"), -400);
    CHECK_INT(req("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);

    /* "\r\n\rX": the head does not end there (CVE-2025-23167) */
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n\rX"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n"), -400);
    /* ...but "\r\n\r" alone is only incomplete */
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n\r"), 0);

    /* Leading empty lines are skipped (RFC 9112 2.2); slices skip them. */
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK_INT(req(s), (int)strlen(s));
    CHECK(H.method == s + 4);
    CHECK_STR(sl(H.method, H.method_len), "GET");
    CHECK_INT(req("\r\n"), 0);
    CHECK_INT(req("\r"), 0);
    CHECK_INT(req(""), 0);
}

static void test_field_syntax(void)
{
    /* obs-fold */
    CHECK_INT(req_with("X: a\r\n b"), -400);
    CHECK_INT(req_with("X: a\r\n\tb"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\n \r\n\r\n"), -400);

    /* whitespace between name and colon */
    CHECK_INT(req_with("X-A : b"), -400);
    CHECK_INT(req_with("X-A\t: b"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n"), -400);

    /* names: non-empty tokens */
    CHECK_INT(req_with(": b"), -400);
    CHECK_INT(req_with("X(A): b"), -400);
    CHECK_INT(req_with("X A: b"), -400);
    CHECK_INT(req_with("no colon"), -400);
    CHECK_INT(req_with("nocolon"), -400);
    CHECK_INT(req_with("X\xc3\xa9: b"), -400);
    CHECK_INT(req_with("!#$%&'*+-.^_`|~09azAZ: b") > 0, 1);

    /* NUL and control bytes */
    CHECK_INT(REQ_LIT("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), -400);
    CHECK_INT(REQ_LIT("GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n"), -400);
    CHECK_INT(REQ_LIT("GET / HTTP/1.1\r\nHost: a\0\r\n\r\n"), -400);
    CHECK_INT(REQ_LIT("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(REQ_LIT("G\0T / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req_with("X: a\x01z"), -400);
    CHECK_INT(req_with("X: a\x1f"), -400);
    CHECK_INT(req_with("X: \x7f"), -400);
    CHECK_INT(req_with("X: \x0b"), -400);
    CHECK_INT(req_with("X: \x0c"), -400);
    CHECK_INT(req_with("X: a\tb") > 0, 1);
    /* control byte refused before the line is complete */
    CHECK_INT(REQ_LIT("GET / HTTP/1.1\r\nHost: a\r\nX: a\0"), -400);
}

/* Every byte value in every position, against the grammar written out here
 * independently of the scanner's table. */
static bool ref_tchar(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool ref_field_vchar(int c)
{
    return c == '\t' || c == ' ' || (c >= 0x21 && c <= 0x7e) || c >= 0x80;
}

static bool ref_host_char(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("-._~!$&'()*+,;=%", c) != NULL);
}

static void test_byte_classes(void)
{
    char buf[128];
    int bad = 0;

    for (int c = 0; c < 256; c++) {
        int n, r;

        /* in a field name */
        n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nX%cY: v\r\n\r\n", 1);
        buf[26] = (char)c;
        r = gh_h1_scan_request(buf, (size_t)n, BIG, &H);
        /* ':' just ends the name early: "X:Y: v" is field X, value "Y: v" */
        if ((r > 0) != (ref_tchar(c) || c == ':') || (r <= 0 && r != -400)) {
            fprintf(stderr, "name byte 0x%02x: %d\n", c, r);
            bad++;
        }

        /* in a field value, between two letters */
        n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nX: a%cb\r\n\r\n", 1);
        buf[29] = (char)c;
        r = gh_h1_scan_request(buf, (size_t)n, BIG, &H);
        if ((r > 0) != ref_field_vchar(c) || (r <= 0 && r != -400)) {
            fprintf(stderr, "value byte 0x%02x: %d\n", c, r);
            bad++;
        }
        n = snprintf(buf, sizeof buf, "HTTP/1.1 200 OK\r\nX: a%cb\r\n\r\n", 1);
        buf[21] = (char)c;
        r = gh_h1_scan_response(buf, (size_t)n, BIG, &H);
        if ((r > 0) != ref_field_vchar(c) || (r <= 0 && r != -502)) {
            fprintf(stderr, "response value byte 0x%02x: %d\n", c, r);
            bad++;
        }

        /* in a long value, at every offset of the 8-byte steps the scanner
         * checks values in, and in the tail after them */
        for (int at = 0; at < 20; at++) {
            n = snprintf(buf, sizeof buf,
                         "GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789abcdefghij\r\n\r\n");
            buf[28 + at] = (char)c;
            r = gh_h1_scan_request(buf, (size_t)n, BIG, &H);
            if ((r > 0) != ref_field_vchar(c) || (r <= 0 && r != -400)) {
                fprintf(stderr, "value byte 0x%02x at %d: %d\n", c, at, r);
                bad++;
            }
        }

        /* in a reason phrase */
        n = snprintf(buf, sizeof buf, "HTTP/1.1 200 O%cK\r\n\r\n", 1);
        buf[14] = (char)c;
        r = gh_h1_scan_response(buf, (size_t)n, BIG, &H);
        if ((r > 0) != ref_field_vchar(c) || (r <= 0 && r != -502)) {
            fprintf(stderr, "reason byte 0x%02x: %d\n", c, r);
            bad++;
        }

        /* in a request-target: printable ASCII except '#' */
        n = snprintf(buf, sizeof buf, "GET /a%cb HTTP/1.1\r\nHost: a\r\n\r\n", 1);
        buf[6] = (char)c;
        r = gh_h1_scan_request(buf, (size_t)n, BIG, &H);
        bool want = c >= 0x21 && c <= 0x7e && c != '#';
        if ((r > 0) != want || (r <= 0 && r != -400)) {
            fprintf(stderr, "target byte 0x%02x: %d\n", c, r);
            bad++;
        }

        /* in a method */
        n = snprintf(buf, sizeof buf, "G%cT / HTTP/1.1\r\nHost: a\r\n\r\n", 1);
        buf[1] = (char)c;
        r = gh_h1_scan_request(buf, (size_t)n, BIG, &H);
        if ((r > 0) != ref_tchar(c) || (r <= 0 && r != -400)) {
            fprintf(stderr, "method byte 0x%02x: %d\n", c, r);
            bad++;
        }

        /* in a Host value */
        n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a%cb\r\n\r\n", 1);
        buf[23] = (char)c;
        r = gh_h1_scan_request(buf, (size_t)n, BIG, &H);
        if ((r > 0) != ref_host_char(c) || (r <= 0 && r != -400)) {
            fprintf(stderr, "host byte 0x%02x: %d\n", c, r);
            bad++;
        }
    }
    CHECK_INT(bad, 0);
}

static void test_content_length(void)
{
    CHECK_INT(req_with("Content-Length: 5") > 0, 1);
    CHECK(H.has_content_length);
    CHECK_INT(H.content_length, 5);
    CHECK(!H.chunked);
    CHECK_INT(req_with("content-length:0") > 0, 1);
    CHECK_INT(H.content_length, 0);
    CHECK_INT(req_with("CONTENT-LENGTH: \t 42 \t") > 0, 1);
    CHECK_INT(H.content_length, 42);

    /* repeats: identical values are one, differing ones are smuggling */
    CHECK_INT(req_with("Content-Length: 5\r\nContent-Length: 5") > 0, 1);
    CHECK_INT(H.content_length, 5);
    CHECK_INT(req_with("Content-Length: 5\r\nContent-Length: 6"), -400);
    CHECK_INT(req_with("Content-Length: 5, 5") > 0, 1);
    CHECK_INT(H.content_length, 5);
    CHECK_INT(req_with("Content-Length: 5,5 , 5") > 0, 1);
    CHECK_INT(req_with("Content-Length: 5, 6"), -400);
    CHECK_INT(req_with("Content-Length: 5\r\nContent-Length: 5, 6"), -400);
    CHECK_INT(req_with("Content-Length: 6, 6\r\nContent-Length: 5"), -400);
    CHECK_INT(req_with("Content-Length: 05\r\nContent-Length: 5") > 0, 1);
    CHECK_INT(H.content_length, 5);

    /* not 1*DIGIT */
    CHECK_INT(req_with("Content-Length: +5"), -400);
    CHECK_INT(req_with("Content-Length: -5"), -400);
    CHECK_INT(req_with("Content-Length: 0x5"), -400);
    CHECK_INT(req_with("Content-Length: 5 5"), -400);
    CHECK_INT(req_with("Content-Length: 5a"), -400);
    CHECK_INT(req_with("Content-Length: 5.0"), -400);
    CHECK_INT(req_with("Content-Length:"), -400);
    CHECK_INT(req_with("Content-Length:   "), -400);
    CHECK_INT(req_with("Content-Length: 5,"), -400);
    CHECK_INT(req_with("Content-Length: ,5"), -400);
    CHECK_INT(req_with("Content-Length: 5,,5"), -400);
    CHECK_INT(req_with("Content-Length: \"5\""), -400);
    CHECK_INT(req_with("Content-Length: \xd9\xa5"), -400);   /* Arabic-Indic five */

    /* at most 18 digits */
    CHECK_INT(req_with("Content-Length: 999999999999999999") > 0, 1);
    CHECK(H.content_length == 999999999999999999ULL);
    CHECK_INT(req_with("Content-Length: 000000000000000001") > 0, 1);
    CHECK_INT(H.content_length, 1);
    CHECK_INT(req_with("Content-Length: 1000000000000000000"), -400);
    CHECK_INT(req_with("Content-Length: 18446744073709551616"), -400);

    /* CL with TE, either order: CL.TE / TE.CL smuggling */
    CHECK_INT(req_with("Content-Length: 5\r\nTransfer-Encoding: chunked"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked\r\nContent-Length: 5"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked\r\nContent-Length: 0"), -400);
    CHECK_INT(req_with("Transfer-Encoding: gzip\r\nContent-Length: 5"), -400);
}

static void test_transfer_encoding(void)
{
    CHECK_INT(req_with("Transfer-Encoding: chunked") > 0, 1);
    CHECK(H.chunked);
    CHECK(!H.has_content_length);
    CHECK_INT(req_with("Transfer-Encoding:  chunked  ") > 0, 1);
    CHECK(H.chunked);
    CHECK_INT(req_with("Transfer-Encoding:\tchunked\t") > 0, 1);
    CHECK(H.chunked);
    CHECK_INT(req_with("Transfer-Encoding: Chunked") > 0, 1);
    CHECK(H.chunked);
    CHECK_INT(req_with("transfer-encoding: CHUNKED") > 0, 1);
    CHECK(H.chunked);

    CHECK_INT(req_with("Transfer-Encoding: chunked, gzip"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked, chunked"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip"), -400);
    CHECK_INT(req_with("Transfer-Encoding: gzip, chunked"), -501);
    CHECK_INT(req_with("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"), -501);
    CHECK_INT(req_with("Transfer-Encoding: gzip"), -501);
    CHECK_INT(req_with("Transfer-Encoding: deflate"), -501);
    CHECK_INT(req_with("Transfer-Encoding: compress"), -501);
    CHECK_INT(req_with("Transfer-Encoding: identity"), -501);
    CHECK_INT(req_with("Transfer-Encoding: xchunked"), -501);
    CHECK_INT(req_with("Transfer-Encoding: chunkedx"), -501);
    CHECK_INT(req_with("Transfer-Encoding: chunke"), -501);
    CHECK_INT(req_with("Transfer-Encoding: gzip;q=1, chunked"), -501);
    CHECK_INT(req_with("Transfer-Encoding: chunked;a=b"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked ;a=b"), -400);
    CHECK_INT(req_with("Transfer-Encoding:"), -400);
    CHECK_INT(req_with("Transfer-Encoding:   "), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked,"), -400);
    CHECK_INT(req_with("Transfer-Encoding: ,chunked"), -400);
    CHECK_INT(req_with("Transfer-Encoding: gzip,,chunked"), -400);
    CHECK_INT(req_with("Transfer-Encoding: chunked chunked"), -400);
    CHECK_INT(req_with("Transfer-Encoding: \"chunked\""), -400);
    CHECK_INT(req_with("Transfer-Encoding: ch unked"), -400);
    /* a framing error later in the head wins over an unknown coding */
    CHECK_INT(req_with("Transfer-Encoding: gzip\r\nContent-Length: 1"), -400);
    CHECK_INT(req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), -400);
    CHECK_INT(req_with("Transfer-Encoding: gzip\r\nX: \x01"), -400);

    /* HTTP/1.0 has no Transfer-Encoding */
    CHECK_INT(req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), -400);
    CHECK_INT(req("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"), -400);

    /* a header merely named like TE is not TE */
    CHECK_INT(req_with("Transfer-Encodingx: gzip") > 0, 1);
    CHECK(!H.chunked);
    CHECK_INT(req_with("X-Transfer-Encoding: gzip") > 0, 1);
}

static void test_prefixes(void)
{
    check_prefixes("GET /a/b?c=d HTTP/1.1\r\n"
                   "Host: example.com\r\n"
                   "User-Agent:   curl/8.0  \r\n"
                   "X-Tab:\t tabbed\t\r\n"
                   "X-Empty:\r\n"
                   "Content-Length: 5, 5\r\n"
                   "Connection: keep-alive\r\n"
                   "\r\n",
                   false);
    check_prefixes("\r\n\r\nPOST http://h:8080/x HTTP/1.1\r\nHost: h:8080\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n",
                   false);
    check_prefixes("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", false);
    check_prefixes("GET / HTTP/1.0\r\n\r\n", false);
    check_prefixes("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: caf\xc3\xa9\r\n\r\n", true);
    check_prefixes("HTTP/1.0 204\r\n\r\n", true);
    check_prefixes("HTTP/1.1 101 \r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", true);
}

static void test_limits(void)
{
    const char *s = "GET /0123456789 HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\n";
    size_t n = strlen(s);
    size_t line = strlen("GET /0123456789 HTTP/1.1\r\n");

    /* exactly at the limit fits */
    CHECK_INT(gh_h1_scan_request(s, n, n, &H), (int)n);
    CHECK_INT(gh_h1_scan_request(s, n, n + 1, &H), (int)n);
    /* one byte over: the request line fits, so the fields are too big */
    CHECK_INT(gh_h1_scan_request(s, n, n - 1, &H), -431);
    CHECK_INT(gh_h1_scan_request(s, n, line, &H), -431);
    /* the request line itself does not fit: URI too long */
    CHECK_INT(gh_h1_scan_request(s, n, line - 1, &H), -414);
    CHECK_INT(gh_h1_scan_request(s, n, line - 2, &H), -414);
    CHECK_INT(gh_h1_scan_request(s, n, 5, &H), -414);
    CHECK_INT(gh_h1_scan_request(s, n, 0, &H), -414);
    /* incomplete and at the limit, whatever arrived so far */
    CHECK_INT(gh_h1_scan_request(s, n - 1, n - 1, &H), -431);
    CHECK_INT(gh_h1_scan_request(s, 10, 10, &H), -414);
    CHECK_INT(gh_h1_scan_request(s, line, line, &H), -431);
    CHECK_INT(gh_h1_scan_request(s, line - 1, line - 1, &H), -414);
    /* incomplete and under the limit: wait */
    CHECK_INT(gh_h1_scan_request(s, n - 1, n, &H), 0);
    CHECK_INT(gh_h1_scan_request(s, 10, 11, &H), 0);
    /* a complete head beyond the limit is refused the same way */
    CHECK_INT(gh_h1_scan_request(s, n, n - 10, &H), -431);
    CHECK_INT(gh_h1_scan_request(s, n, 10, &H), -414);
    /* a malformed byte inside the window still says 400 */
    CHECK_INT(gh_h1_scan_request("GET /\x01", 6, 6, &H), -400);
    /* a huge max is fine */
    CHECK_INT(gh_h1_scan_request(s, n, SIZE_MAX, &H), (int)n);

    /* responses: everything is 502 */
    const char *r = "HTTP/1.1 200 OK\r\nX: 0123456789\r\n\r\n";
    size_t rn = strlen(r);
    CHECK_INT(gh_h1_scan_response(r, rn, rn, &H), (int)rn);
    CHECK_INT(gh_h1_scan_response(r, rn, rn - 1, &H), -502);
    CHECK_INT(gh_h1_scan_response(r, rn, 5, &H), -502);
    CHECK_INT(gh_h1_scan_response(r, rn - 1, rn, &H), 0);
}

static void test_too_many_headers(void)
{
    static char buf[8192];
    size_t n = 0;

    n += (size_t)snprintf(buf + n, sizeof buf - n, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 1; i < GH_H1_MAX_HEADERS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "X-%d: %d\r\n", i, i);
    size_t before_end = n;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    CHECK_INT(gh_h1_scan_request(buf, n, sizeof buf, &H), (int)n);
    CHECK_INT(H.nheaders, GH_H1_MAX_HEADERS);
    CHECK_STR(HNAME(GH_H1_MAX_HEADERS - 1), "X-99");
    CHECK_STR(HVAL(GH_H1_MAX_HEADERS - 1), "99");

    n = before_end + (size_t)snprintf(buf + before_end, sizeof buf - before_end,
                                      "X-Extra: 1\r\n\r\n");
    CHECK_INT(gh_h1_scan_request(buf, n, sizeof buf, &H), -431);
    /* refused as soon as the 101st line starts, not after the whole head */
    CHECK_INT(gh_h1_scan_request(buf, before_end + 1, sizeof buf, &H), -431);

    /* the same for a response */
    n = (size_t)snprintf(buf, sizeof buf, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < GH_H1_MAX_HEADERS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "X-%d: %d\r\n", i, i);
    before_end = n;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    CHECK_INT(gh_h1_scan_response(buf, n, sizeof buf, &H), (int)n);
    CHECK_INT(H.nheaders, GH_H1_MAX_HEADERS);
    n = before_end + (size_t)snprintf(buf + before_end, sizeof buf - before_end, "Y: 1\r\n\r\n");
    CHECK_INT(gh_h1_scan_response(buf, n, sizeof buf, &H), -502);
}

static void test_request_line(void)
{
    /* versions */
    CHECK_INT(req("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), -505);
    CHECK_INT(req("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), -505);
    CHECK_INT(req("GET / HTTP/0.9\r\nHost: a\r\n\r\n"), -505);
    CHECK_INT(req("GET / HTTP/3.0\r\nHost: a\r\n\r\n"), -505);
    CHECK_INT(req("GET / HTTP/9.9\r\n"), -505);    /* known before the fields */
    CHECK_INT(req("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), -505);
    CHECK_INT(req("PRI * HTTP/2.0\r\n"), -505);
    CHECK_INT(req("GET /\r\n\r\n"), -400);
    CHECK_INT(req("GET / \r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1x\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/11\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / http/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTPS/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/a.b\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/2\r\nHost: a\r\n\r\n"), -400);

    /* separators: exactly one SP */
    CHECK_INT(req("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req(" GET / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("\r\n"), 0);
    CHECK_INT(req("GET\r\n\r\n"), -400);
    CHECK_INT(req(" \r\n"), -400);

    /* target bytes */
    CHECK_INT(req("GET /a\x80 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET /a%20b?x=\"{|}\" HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);

    /* target forms */
    CHECK_INT(req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_STR(sl(H.target, H.target_len), "*");
    CHECK_INT(req("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("options * HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("OPTIONS / HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n") > 0, 1);
    CHECK_STR(sl(H.target, H.target_len), "example.com:443");
    CHECK_INT(req("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n") > 0, 1);
    CHECK_INT(req("CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT example.com: HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT :443 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT a:123456 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT a:44x HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT u@a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT a:443/x HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT http://a:443/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT * HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("CONNECT [::1 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET a HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n") > 0, 1);
    CHECK_STR(sl(H.target, H.target_len), "http://example.com/x?y");
    CHECK_INT(req("GET https://example.com:8443 HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("GET HTTP://EXAMPLE.COM/ HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("GET http://h?q HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("GET http://[::1]:80/ HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("OPTIONS http://h HTTP/1.1\r\nHost: a\r\n\r\n") > 0, 1);
    CHECK_INT(req("GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET http:/example.com/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET http://user@evil.com/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET http://a:b:c/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET http://a\\b/ HTTP/1.1\r\nHost: a\r\n\r\n"), -400);
}

static void test_host(void)
{
    CHECK_INT(req("GET / HTTP/1.1\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nX: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nX: 1\r\nHOST: Example.COM:8080\r\n\r\n") > 0, 1);
    CHECK_INT(H.host_index, 1);
    CHECK_INT(H.nhost, 1);
    CHECK_STR(HVAL(H.host_index), "Example.COM:8080");
    /* empty Host is valid syntax (RFC 9112 3.2); no route will match it */
    CHECK_INT(req("GET / HTTP/1.1\r\nHost:\r\n\r\n") > 0, 1);
    CHECK_INT(H.host_index, 0);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n") > 0, 1);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a:\r\n\r\n") > 0, 1);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: :80\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n"), -400);
    CHECK_INT(req("GET / HTTP/1.1\r\nHost: a\xc3\xa9\r\n\r\n"), -400);
}

static void test_connection(void)
{
    CHECK_INT(req_with("Connection: keep-alive, Upgrade\r\nUpgrade: websocket") > 0, 1);
    CHECK(H.conn_keep_alive);
    CHECK(H.conn_upgrade);
    CHECK(H.has_upgrade);
    CHECK(!H.conn_close);
    CHECK_INT(req_with("Connection: foo\r\nconnection: CLOSE") > 0, 1);
    CHECK(H.conn_close);
    CHECK(!H.conn_keep_alive);
    CHECK_INT(req_with("Connection: ,, close ,") > 0, 1);
    CHECK(H.conn_close);
    CHECK_INT(req_with("Connection: closed, xclose, keep-alivex") > 0, 1);
    CHECK(!H.conn_close && !H.conn_keep_alive && !H.conn_upgrade);
    CHECK_INT(req_with("Upgrade: h2c") > 0, 1);
    CHECK(H.has_upgrade);
    CHECK(!H.conn_upgrade);
    /* an empty Upgrade offers no protocol (llhttp 8.1.0 agrees) */
    CHECK_INT(req_with("Upgrade: \t") > 0, 1);
    CHECK(!H.has_upgrade);
}

static void test_responses(void)
{
    const char *s = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world!";
    CHECK_INT(resp(s), (int)strlen(s) - 12);
    CHECK_INT(H.status, 200);
    CHECK_INT(H.minor_version, 1);
    CHECK(H.method == NULL && H.target == NULL);
    CHECK_INT(H.nheaders, 2);
    CHECK_STR(HNAME(0), "Content-Type");
    CHECK_STR(HVAL(0), "text/plain");
    CHECK(H.has_content_length);
    CHECK_INT(H.content_length, 12);

    CHECK_INT(resp("HTTP/1.0 404 Not Found\r\n\r\n") > 0, 1);
    CHECK_INT(H.status, 404);
    CHECK_INT(H.minor_version, 0);
    CHECK_INT(resp("HTTP/1.1 204\r\n\r\n"), 16);
    CHECK_INT(H.status, 204);
    CHECK_INT(resp("HTTP/1.1 204 \r\n\r\n"), 17);
    CHECK_INT(resp("HTTP/1.1 100 Continue\r\n\r\n") > 0, 1);
    CHECK_INT(H.status, 100);
    CHECK_INT(resp("HTTP/1.1 999 x\r\n\r\n") > 0, 1);
    CHECK_INT(H.status, 999);
    CHECK_INT(resp("HTTP/1.1 200 caf\xc3\xa9\t ok\r\n\r\n") > 0, 1);
    CHECK_INT(resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: upgrade\r\n\r\n") > 0, 1);
    CHECK(H.has_upgrade && H.conn_upgrade);
    /* no Host rule for responses */
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nHost: a\r\nHost: b b\r\n\r\n") > 0, 1);

    /* bad status lines */
    CHECK_INT(resp("HTTP/1.1 20 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 2000 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 099 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 000\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 abc OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 2x0 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1  200 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200\tOK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200 O\x01K\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/2.0 200 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.2 200 OK\r\n\r\n"), -502);
    CHECK_INT(resp("http/1.1 200 OK\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1\r\n\r\n"), -502);
    CHECK_INT(resp("ICY 200 OK\r\n\r\n"), -502);
    CHECK_INT(resp("\r\nHTTP/1.1 200 OK\r\n\r\n"), -502);

    /* line endings and fields, as for requests */
    CHECK_INT(resp("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nX: a\r\n\rX"), -502);
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), -502);
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nX : a\r\n\r\n"), -502);
    CHECK_INT(RESP_LIT("HTTP/1.1 200 OK\r\nX: \0\r\n\r\n"), -502);
    CHECK_INT(resp_with("X: a\x7f"), -502);

    /* framing */
    CHECK_INT(resp_with("Transfer-Encoding: chunked") > 0, 1);
    CHECK(H.chunked);
    CHECK_INT(resp_with("Content-Length: 5\r\nTransfer-Encoding: chunked"), -502);
    CHECK_INT(resp_with("Transfer-Encoding: chunked\r\nContent-Length: 5"), -502);
    CHECK_INT(resp_with("Content-Length: 5\r\nContent-Length: 6"), -502);
    CHECK_INT(resp_with("Content-Length: 5\r\nContent-Length: 5") > 0, 1);
    CHECK_INT(resp_with("Content-Length: 5, 5") > 0, 1);
    CHECK_INT(H.content_length, 5);
    CHECK_INT(resp_with("Content-Length: 5, 6"), -502);
    CHECK_INT(resp_with("Content-Length: +5"), -502);
    CHECK_INT(resp_with("Transfer-Encoding: gzip"), -502);
    CHECK_INT(resp_with("Transfer-Encoding: gzip, chunked"), -502);
    CHECK_INT(resp_with("Transfer-Encoding: chunked, gzip"), -502);
    CHECK_INT(resp_with("Transfer-Encoding: chunked, chunked"), -502);
    CHECK_INT(resp_with("Transfer-Encoding:"), -502);
    CHECK_INT(resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), -502);

    /* incomplete, then too big */
    CHECK_INT(resp("HTTP/1.1 200 OK\r\nX: a\r\n"), 0);
    CHECK_INT(resp("HTTP/1.1 2"), 0);
    CHECK_INT(resp("HTTP/1.1 200 OK\r"), 0);
    CHECK_INT(resp("HTTP/1.1 200 OK\n"), -502);
}

int main(void)
{
    test_valid_get();
    test_pipelined();
    test_line_endings();
    test_field_syntax();
    test_byte_classes();
    test_content_length();
    test_transfer_encoding();
    test_prefixes();
    test_limits();
    test_too_many_headers();
    test_request_line();
    test_host();
    test_connection();
    test_responses();
    TEST_MAIN_END();
}
