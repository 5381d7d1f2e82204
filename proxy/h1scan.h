/* A strict scanner for HTTP/1.x message heads. It runs before llhttp sees a
 * byte and rejects the framing that llhttp 8.1.0 lets through (request
 * smuggling: CVE-2023-30589, CVE-2024-27982, CVE-2025-23167), and it hands
 * back the header slices so nothing is parsed twice by us.
 *
 * Rejected (status in parentheses): bare CR or LF anywhere in the head, a
 * head not ending in CRLF CRLF, obs-fold (continuation lines), whitespace
 * between a field name and its colon, a field name that is not a token,
 * control characters (other than HTAB) in values, NUL anywhere (400); a
 * request line that is not "METHOD SP TARGET SP HTTP/1.x" (400; HTTP/2 or any
 * other version 505); both Content-Length and Transfer-Encoding (400);
 * duplicate Content-Length with different values or a non-digit value (400);
 * Transfer-Encoding on HTTP/1.0 (400); Transfer-Encoding with anything after
 * chunked, chunked twice, empty items or parameters (400), or any coding
 * other than chunked (501; decided last, so a 400 wins); more than
 * GH_H1_MAX_HEADERS fields (431); head longer than max (431, or 414 when the
 * request line alone does not fit).
 */
#ifndef GH_H1SCAN_H
#define GH_H1SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GH_H1_MAX_HEADERS 100

/* The field names the proxy acts on, recognised once by the scanner so that
 * later passes over the headers compare a byte instead of a name. The
 * hop-by-hop fields (RFC 9110 7.6.1, plus the framing fields a proxy
 * regenerates) are one contiguous range: see gh_h1_hop_by_hop(). */
enum gh_h1_name {
    GH_HN_OTHER = 0,
    GH_HN_CONNECTION,
    GH_HN_CONTENT_LENGTH,
    GH_HN_TRANSFER_ENCODING,
    GH_HN_UPGRADE,
    GH_HN_TE,
    GH_HN_TRAILER,
    GH_HN_KEEP_ALIVE,
    GH_HN_PROXY_CONNECTION,     /* last hop-by-hop */
    GH_HN_HOST,
    GH_HN_EXPECT,
    GH_HN_X_REAL_IP,
    GH_HN_X_FORWARDED_HOST,
    GH_HN_X_FORWARDED_PROTO,
    GH_HN_X_FORWARDED_FOR,
    GH_HN_X_REQUEST_ID,
    GH_HN_CF_CONNECTING_IP,
    GH_HN_USER_AGENT,
    GH_HN_REFERER,
};

typedef struct gh_h1_header {
    const char *name;
    const char *value;      /* OWS trimmed on both sides */
    uint32_t name_len;
    uint32_t value_len;
    unsigned char id;       /* enum gh_h1_name */
} gh_h1_header_t;

static inline bool gh_h1_hop_by_hop(const gh_h1_header_t *h)
{
    return h->id >= GH_HN_CONNECTION && h->id <= GH_HN_PROXY_CONNECTION;
}

typedef struct gh_h1_head {
    size_t head_len;        /* bytes up to and including the final CRLF CRLF */
    /* request line */
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    /* status line */
    int status;
    int minor_version;      /* 0 or 1; major is always 1 */

    gh_h1_header_t headers[GH_H1_MAX_HEADERS];
    size_t nheaders;

    /* framing, from the headers */
    bool has_content_length;
    uint64_t content_length;
    bool chunked;           /* Transfer-Encoding: chunked */
    bool conn_close;        /* Connection: close */
    bool conn_keep_alive;   /* Connection: keep-alive */
    bool conn_upgrade;      /* Connection: upgrade */
    bool conn_other;        /* Connection names some other field */
    bool has_upgrade;       /* an Upgrade header is present */
    int host_index;         /* index of the Host header, -1 if none */
    int nhost;              /* how many Host headers */
} gh_h1_head_t;

/* Scan a request head in buf[0..len). Returns the head length (> 0) when a
 * complete, valid head is there; 0 when more bytes are needed and len < max;
 * or a negative HTTP status (-400, -414, -431, -501, -505) to answer with. */
int gh_h1_scan_request(const char *buf, size_t len, size_t max, gh_h1_head_t *out);

/* The same for a response head ("HTTP/1.x NNN reason"). Errors are all -502
 * (a malformed upstream response). */
int gh_h1_scan_response(const char *buf, size_t len, size_t max, gh_h1_head_t *out);

/* s[0..n) equals the lower-case literal lc ignoring ASCII case, where s
 * holds no control byte but HTAB (a field name, a field value or a request
 * target the scanner accepted) and lc only a-z, 0-9, '-', ':' and '/'. For
 * those, setting bit 0x20 of a byte of s lower-cases a letter and maps no
 * other byte s may hold onto a byte of lc (only control bytes would), so
 * the strings are compared eight bytes at a time (lc and n are constants
 * where this is inlined, so the literal's words fold into the code). */
static inline bool gh_h1_token_is(const char *s, const char *lc, size_t n)
{
    uint64_t a, b;
    uint32_t c, d;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __builtin_memcpy(&a, s + i, 8);
            __builtin_memcpy(&b, lc + i, 8);
            if ((a | 0x2020202020202020ULL) != b)
                return false;
        }
        if (i == n)
            return true;
        __builtin_memcpy(&a, s + n - 8, 8);
        __builtin_memcpy(&b, lc + n - 8, 8);
        return (a | 0x2020202020202020ULL) == b;
    }
    if (n >= 4) {
        __builtin_memcpy(&c, s, 4);
        __builtin_memcpy(&d, lc, 4);
        if ((c | 0x20202020u) != d)
            return false;
        __builtin_memcpy(&c, s + n - 4, 4);
        __builtin_memcpy(&d, lc + n - 4, 4);
        return (c | 0x20202020u) == d;
    }
    for (size_t i = 0; i < n; i++)
        if ((s[i] | 0x20) != lc[i])
            return false;
    return true;
}

/* Comparison of a scanned header's name with a lower-case literal. */
static inline bool gh_h1_name_is(const gh_h1_header_t *h, const char *lc, size_t lc_len)
{
    return h->name_len == lc_len && gh_h1_token_is(h->name, lc, lc_len);
}
#define GH_H1_NAME_IS(h, lit) gh_h1_name_is((h), lit, sizeof(lit) - 1)

#endif
