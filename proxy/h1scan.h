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

typedef struct gh_h1_header {
    const char *name;
    const char *value;      /* OWS trimmed on both sides */
    uint32_t name_len;
    uint32_t value_len;
} gh_h1_header_t;

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

/* Case-insensitive comparison of a header name with a lower-case literal. */
static inline bool gh_h1_name_is(const gh_h1_header_t *h, const char *lc, size_t lc_len)
{
    if (h->name_len != lc_len)
        return false;
    for (size_t i = 0; i < lc_len; i++) {
        char c = h->name[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != lc[i])
            return false;
    }
    return true;
}
#define GH_H1_NAME_IS(h, lit) gh_h1_name_is((h), lit, sizeof(lit) - 1)

#endif
