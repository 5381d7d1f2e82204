/* Path and Host normalisation (SPEC.md section 3, "Routing").
 *
 * The router matches on the normalised path and the proxy forwards that same
 * path, so whatever a route's plugins saw is exactly what the upstream gets:
 * "/public/../admin" or "/public/%2e%2e/admin" are "/admin" before any route
 * is chosen. */
#include <stdbool.h>
#include <string.h>
#include "routes/router.h"

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Byte classes of RFC 3986, one bit each:
 *   UNRES  unreserved: ALPHA DIGIT - . _ ~ (the only bytes whose escaped and
 *          literal forms mean the same thing to every server, hence the
 *          only ones safe to decode)
 *   HOST   reg-name bytes without pct-encoded: unreserved and sub-delims
 *          !$&'()*+,;= (DNS names never need escapes, and accepting them
 *          would give one host two spellings; '*' stays allowed so route
 *          hosts like "*.example.com" go through the same function)
 *   PATH   a byte that may appear literally in a path: pchar minus
 *          pct-encoded, or '/'
 * tests/unit/test_router.c checks the classes through the public
 * functions. */
enum { UNRES = 1, HOST = 2, PATH = 4 };

static const unsigned char uri_cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 10 */
    0, 6, 0, 0, 6, 0, 6, 6, 6, 6, 6, 6, 6, 7, 7, 4,  /* 20 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 4, 6, 0, 6, 0, 0,  /* 30 */
    4, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,  /* 40 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0, 0, 0, 0, 7,  /* 50 */
    0, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,  /* 60 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0, 0, 0, 7, 0,  /* 70 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 90 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* a0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* b0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* c0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* d0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* e0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* f0 */
};

static bool is_unreserved(unsigned char c)
{
    return uri_cls[c] & UNRES;
}

/* RFC 3986 5.2.4 over buf[0..n), in place; buf starts with '/'. The output
 * is kept as a run of "/segment" pieces, so ".." drops back to the last '/'
 * written, and at the root there is nothing to drop: ".." cannot climb
 * above "/". Empty segments ("//a") are kept on purpose: merging slashes
 * would change the meaning for upstreams that treat "//" specially (some
 * frameworks route "//x" differently, object stores keep empty keys), and
 * the router must see exactly what the upstream will see. */
static size_t remove_dot_segments(char *buf, size_t n)
{
    size_t r = 0, w = 0;

    while (r < n) {
        size_t s = r + 1, e = s;
        while (e < n && buf[e] != '/')
            e++;
        size_t seglen = e - s;
        bool last = e == n;

        if (seglen == 1 && buf[s] == '.') {
            /* "/a/." names the directory "/a/", so the slash stays. */
            if (last)
                buf[w++] = '/';
        } else if (seglen == 2 && buf[s] == '.' && buf[s + 1] == '.') {
            while (w > 0) {
                w--;
                if (buf[w] == '/')
                    break;
            }
            if (last)
                buf[w++] = '/';
        } else {
            /* w <= r always: the output never outgrows what was consumed. */
            memmove(buf + w, buf + r, e - r);
            w += e - r;
        }
        r = e;
    }
    return w;
}

ssize_t gh_path_normalize(const char *in, size_t in_len, char *out, size_t outcap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    if (in == NULL || out == NULL || in_len == 0 || outcap < in_len + 1 || in[0] != '/')
        return -1;

    /* Decoding first means "%2e%2E" is seen as ".." by the dot pass below.
     * Every escape yields one or three bytes for its three, so the output
     * never outgrows the input. */
    for (size_t i = 0; i < in_len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            if (in_len - i < 3)
                return -1;
            int hi = hex_value((unsigned char)in[i + 1]);
            int lo = hex_value((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            unsigned char v = (unsigned char)(hi * 16 + lo);
            /* %00 would truncate the path for any upstream written in C. */
            if (v == 0)
                return -1;
            if (is_unreserved(v)) {
                out[n++] = (char)v;
            } else {
                out[n++] = '%';
                out[n++] = hex[hi];
                out[n++] = hex[lo];
            }
            i += 2;
        } else if (uri_cls[c] & PATH) {
            out[n++] = (char)c;
        } else {
            /* Controls, space, raw non-ASCII, '?', '#', '"', '<', '\\' ...:
             * servers disagree on all of them, so none is let through. */
            return -1;
        }
    }

    n = remove_dot_segments(out, n);
    out[n] = '\0';
    return (ssize_t)n;
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

ssize_t gh_host_normalize(const char *in, size_t in_len, char *out, size_t cap)
{
    size_t end;

    if (in == NULL || out == NULL || in_len == 0)
        return -1;

    if (in[0] == '[') {
        /* IP literal: only the characters of an IPv6 address (hex, ':' and
         * '.' for an embedded IPv4); IPvFuture and zone ids are not served. */
        bool colon = false;
        size_t i = 1;
        for (; i < in_len && in[i] != ']'; i++) {
            unsigned char c = (unsigned char)in[i];
            if (c == ':')
                colon = true;
            else if (hex_value(c) < 0 && c != '.')
                return -1;
        }
        if (i == in_len || !colon)
            return -1;
        end = i + 1;
        if (end < in_len && in[end] != ':')
            return -1;
    } else {
        end = 0;
        while (end < in_len && in[end] != ':') {
            if (!(uri_cls[(unsigned char)in[end]] & HOST))
                return -1;
            end++;
        }
    }
    /* port = *DIGIT (RFC 3986 3.2.3), so "example.com:" is valid too. */
    if (end < in_len && !all_digits(in + end + 1, in_len - end - 1))
        return -1;

    /* "example.com." is the same name written fully qualified. */
    if (in[0] != '[' && end > 0 && in[end - 1] == '.')
        end--;
    if (end == 0 || end >= cap)
        return -1;

    for (size_t i = 0; i < end; i++) {
        unsigned char c = (unsigned char)in[i];
        out[i] = (char)(c | (unsigned char)((unsigned)(c - 'A') < 26u) << 5);
    }
    out[end] = '\0';
    return (ssize_t)end;
}
