/* libFuzzer target for proxy/h1scan.c.
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -I. \
 *     proxy/h1scan.c tests/fuzz/fuzz_h1scan.c -o /tmp/fuzz_h1scan
 *   /tmp/fuzz_h1scan -max_total_time=120 -max_len=4096
 * With llhttp compiled in, every head the scanner accepts is also parsed by
 * llhttp and the two must agree (the differential check below):
 *   clang ... -I/usr/share/include/llhttp proxy/h1scan.c tests/fuzz/fuzz_h1scan.c \
 *     /usr/share/llhttp/llhttp.c /usr/share/llhttp/api.c /usr/share/llhttp/http.c
 *
 * The first input byte picks what the rest is fed as, so that the fuzzer
 * reaches header lines without first having to invent a request line:
 *   0..127  the bytes as they are
 *   128..   a fixed request line and Host (odd) or status line (even) first.
 * Every input is scanned both as a request and as a response, with several
 * limits. Any broken invariant aborts with a message. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "proxy/h1scan.h"

#if !defined(GH_FUZZ_NO_LLHTTP) && defined(__has_include)
#if __has_include(<llhttp.h>)
#define GH_FUZZ_LLHTTP 1
#include <llhttp.h>
#endif
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                   \
    do {                                                            \
        fprintf(stderr, "fuzz_h1scan: " __VA_ARGS__);               \
        fputc('\n', stderr);                                        \
        abort();                                                    \
    } while (0)

#define ENSURE(cond, ...)                                           \
    do {                                                            \
        if (!(cond))                                                \
            FAIL(__VA_ARGS__);                                      \
    } while (0)

typedef int (*scan_fn)(const char *, size_t, size_t, gh_h1_head_t *);

static bool inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool allowed_result(int r, bool response)
{
    if (r >= 0)
        return true;
    if (response)
        return r == -502;
    return r == -400 || r == -414 || r == -431 || r == -501 || r == -505;
}

/* The name each enum gh_h1_name stands for, in enum order. */
static const char *const known_names[] = {
    [GH_HN_CONNECTION] = "connection",
    [GH_HN_CONTENT_LENGTH] = "content-length",
    [GH_HN_TRANSFER_ENCODING] = "transfer-encoding",
    [GH_HN_UPGRADE] = "upgrade",
    [GH_HN_TE] = "te",
    [GH_HN_TRAILER] = "trailer",
    [GH_HN_KEEP_ALIVE] = "keep-alive",
    [GH_HN_PROXY_CONNECTION] = "proxy-connection",
    [GH_HN_HOST] = "host",
    [GH_HN_EXPECT] = "expect",
    [GH_HN_X_REAL_IP] = "x-real-ip",
    [GH_HN_X_FORWARDED_HOST] = "x-forwarded-host",
    [GH_HN_X_FORWARDED_PROTO] = "x-forwarded-proto",
    [GH_HN_X_FORWARDED_FOR] = "x-forwarded-for",
    [GH_HN_X_REQUEST_ID] = "x-request-id",
    [GH_HN_CF_CONNECTING_IP] = "cf-connecting-ip",
    [GH_HN_USER_AGENT] = "user-agent",
    [GH_HN_REFERER] = "referer",
};

/* The id a name must get: compared with strncasecmp, not the scanner's
 * word-at-a-time compare. */
static unsigned expected_id(const char *name, size_t n)
{
    for (unsigned id = 1; id < sizeof known_names / sizeof known_names[0]; id++)
        if (strlen(known_names[id]) == n && strncasecmp(known_names[id], name, n) == 0)
            return id;
    return GH_HN_OTHER;
}

/* What must hold of any accepted head, checked against the RFC directly
 * rather than against the scanner's own tables. */
static void check_accepted(const char *buf, size_t len, size_t max, int r,
                           const gh_h1_head_t *h, bool response)
{
    size_t n = (size_t)r;

    ENSURE(h->head_len == n, "head_len %zu != result %d", h->head_len, r);
    ENSURE(n <= len && n <= max, "head %zu beyond len %zu / max %zu", n, len, max);
    ENSURE(n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0, "head does not end in CRLFCRLF");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        ENSURE(c != 0, "NUL at %zu", i);
        if (c == '\r')
            ENSURE(i + 1 < n && buf[i + 1] == '\n', "bare CR at %zu", i);
        if (c == '\n')
            ENSURE(i > 0 && buf[i - 1] == '\r', "bare LF at %zu", i);
    }
    ENSURE(h->nheaders <= GH_H1_MAX_HEADERS, "nheaders %zu", h->nheaders);
    ENSURE(h->minor_version == 0 || h->minor_version == 1, "minor %d", h->minor_version);
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        ENSURE(inside(f->name, f->name_len, buf, n), "name %zu outside head", i);
        ENSURE(inside(f->value, f->value_len, buf, n), "value %zu outside head", i);
        ENSURE(f->name_len > 0, "empty name %zu", i);
        for (size_t k = 0; k < f->name_len; k++)
            ENSURE(is_tchar((unsigned char)f->name[k]), "non-token name %zu", i);
        ENSURE(f->name[f->name_len] == ':', "name %zu not followed by ':'", i);
        ENSURE(f->id == expected_id(f->name, f->name_len), "name %zu: id %u, expected %u", i,
               (unsigned)f->id, expected_id(f->name, f->name_len));
        if (f->value_len) {
            char a = f->value[0], z = f->value[f->value_len - 1];
            ENSURE(a != ' ' && a != '\t' && z != ' ' && z != '\t', "value %zu not trimmed", i);
        }
        for (size_t k = 0; k < f->value_len; k++) {
            unsigned char c = (unsigned char)f->value[k];
            ENSURE(c == '\t' || (c >= 0x20 && c != 0x7f), "control byte in value %zu", i);
        }
        ENSURE(f->value[f->value_len] == '\r' || f->value[f->value_len] == ' ' ||
                   f->value[f->value_len] == '\t',
               "value %zu does not end at the line end", i);
    }
    ENSURE(!(h->chunked && h->has_content_length), "chunked and Content-Length");
    if (response) {
        ENSURE(h->status >= 100 && h->status <= 999, "status %d", h->status);
        ENSURE(h->method == NULL && h->target == NULL, "response with a method");
    } else {
        ENSURE(inside(h->method, h->method_len, buf, n) && h->method_len > 0 &&
                   h->method_len <= 32,
               "method slice");
        ENSURE(inside(h->target, h->target_len, buf, n) && h->target_len > 0, "target slice");
        ENSURE(h->method + h->method_len + 1 == h->target, "method SP target");
        ENSURE(h->nhost <= 1, "nhost %d", h->nhost);
        ENSURE(h->minor_version == 0 || h->nhost == 1, "HTTP/1.1 without Host");
        ENSURE(!h->chunked || h->minor_version == 1, "chunked on 1.0");
    }
    if (h->nhost)
        ENSURE(h->host_index >= 0 && (size_t)h->host_index < h->nheaders &&
                   GH_H1_NAME_IS(&h->headers[h->host_index], "host"),
               "host_index");
    else
        ENSURE(h->host_index == -1, "host_index without Host");
}

/* An accepted head must also come out the same when it arrives in pieces or
 * against a tighter limit: every strict prefix is "need more", exactly its
 * length as the limit still fits, one byte less does not. */
static void check_incremental(const char *buf, size_t len, int r, scan_fn scan, bool response)
{
    static gh_h1_head_t h2;
    size_t n = (size_t)r;

    for (size_t k = 0; k < n; k++) {
        /* All prefixes cost O(n^2); past 1 KiB take the ones around line
         * ends, where the scanner decides things, and a sample between. */
        if (n > 1024 && k % 61 != 0 && buf[k] != '\r' && buf[k] != '\n' &&
            buf[k - 1] != '\r' && buf[k - 1] != '\n')
            continue;
        int q = scan(buf, k, SIZE_MAX, &h2);
        ENSURE(q == 0, "prefix %zu of accepted %zu-byte head gave %d", k, n, q);
    }
    int q = scan(buf, n, n, &h2);
    ENSURE(q == r, "head alone with max = its length gave %d, not %d", q, r);
    q = scan(buf, len, n - 1, &h2);
    if (response)
        ENSURE(q == -502, "max one below the head gave %d", q);
    else
        ENSURE(q == -414 || q == -431, "max one below the head gave %d", q);
}

#ifdef GH_FUZZ_LLHTTP
/* What llhttp reported, gathered through its callbacks. */
typedef struct diff_state {
    bool done;
    const char *url;
    size_t url_len;
    size_t nfields, nvalues;
    const char *names[GH_H1_MAX_HEADERS + 1];
    size_t name_lens[GH_H1_MAX_HEADERS + 1];
    const char *values[GH_H1_MAX_HEADERS + 1];
    size_t value_lens[GH_H1_MAX_HEADERS + 1];
} diff_state_t;

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    diff_state_t *d = p->data;
    if (!d->url)
        d->url = at;
    d->url_len = (size_t)(at + n - d->url);
    return 0;
}

/* llhttp may report one span in pieces; a new field starts a new slot. */
static int on_field(llhttp_t *p, const char *at, size_t n)
{
    diff_state_t *d = p->data;
    if (d->nfields == d->nvalues) {
        if (d->nfields > GH_H1_MAX_HEADERS)
            return -1;
        d->names[d->nfields] = at;
        d->name_lens[d->nfields] = 0;
        d->values[d->nfields] = NULL;
        d->value_lens[d->nfields] = 0;
        d->nfields++;
    }
    d->name_lens[d->nfields - 1] = (size_t)(at + n - d->names[d->nfields - 1]);
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t n)
{
    diff_state_t *d = p->data;
    if (d->nvalues < d->nfields) {
        d->values[d->nfields - 1] = at;
        d->nvalues = d->nfields;
    }
    d->value_lens[d->nfields - 1] = (size_t)(at + n - d->values[d->nfields - 1]);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    diff_state_t *d = p->data;
    d->done = true;
    return HPE_PAUSED;  /* stop exactly at the end of the head */
}

static bool llhttp_knows_method(const char *m, size_t n)
{
    static const char *const names[] = {
#define GH_METHOD_NAME(num, name, string) #string,
        HTTP_METHOD_MAP(GH_METHOD_NAME)
#undef GH_METHOD_NAME
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], m, n) == 0)
            return true;
    return false;
}

static bool has_field(const gh_h1_head_t *h, const char *lc)
{
    for (size_t i = 0; i < h->nheaders; i++)
        if (gh_h1_name_is(&h->headers[i], lc, strlen(lc)))
            return true;
    return false;
}

/* Content-Length given more than once, or as a list: RFC 9110 8.6 lets us
 * fold identical values, llhttp 8.1.0 refuses both. Known, and on purpose. */
static bool folded_content_length(const gh_h1_head_t *h)
{
    int n = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (!GH_H1_NAME_IS(&h->headers[i], "content-length"))
            continue;
        n++;
        if (memchr(h->headers[i].value, ',', h->headers[i].value_len))
            return true;
    }
    return n > 1;
}

/* The proxy hands llhttp exactly the head we accepted; llhttp must get
 * through it without error, stop where we stopped, and read the same
 * method, version, status, target, fields and framing. A disagreement is
 * a bug in one of the two, and either way a smuggling hazard. */
static void differential(const char *buf, int r, const gh_h1_head_t *h, bool response)
{
    static llhttp_settings_t settings;
    static bool init;
    llhttp_t p;
    diff_state_t d;
    size_t n = (size_t)r;

    if (!response && !llhttp_knows_method(h->method, h->method_len))
        return;     /* llhttp only knows its own list; the proxy says 501 */
    if (folded_content_length(h))
        return;
    if (!init) {
        llhttp_settings_init(&settings);
        settings.on_url = on_url;
        settings.on_header_field = on_field;
        settings.on_header_value = on_value;
        settings.on_headers_complete = on_headers_complete;
        init = true;
    }
    memset(&d, 0, sizeof d);
    llhttp_init(&p, response ? HTTP_RESPONSE : HTTP_REQUEST, &settings);
    p.data = &d;
    llhttp_errno_t e = llhttp_execute(&p, buf, n);

    ENSURE(e == HPE_PAUSED && d.done, "llhttp: %s (%s) at %zd of an accepted %zu-byte head",
           llhttp_errno_name(e), llhttp_get_error_reason(&p),
           llhttp_get_error_pos(&p) ? llhttp_get_error_pos(&p) - buf : (ptrdiff_t)-1, n);
    ENSURE(llhttp_get_error_pos(&p) == buf + n, "llhttp ends the head at %zd, we at %zu",
           llhttp_get_error_pos(&p) - buf, n);
    ENSURE(p.http_major == 1 && p.http_minor == h->minor_version, "version %d.%d vs 1.%d",
           p.http_major, p.http_minor, h->minor_version);
    if (response) {
        ENSURE(p.status_code == h->status, "status %d vs %d", p.status_code, h->status);
    } else {
        const char *m = llhttp_method_name((llhttp_method_t)p.method);
        ENSURE(strlen(m) == h->method_len && memcmp(m, h->method, h->method_len) == 0,
               "method %s vs %.*s", m, (int)h->method_len, h->method);
        ENSURE(d.url == h->target && d.url_len == h->target_len, "target differs");
    }
    ENSURE(!!(p.flags & F_CONTENT_LENGTH) == h->has_content_length, "has Content-Length");
    if (h->has_content_length)
        ENSURE(p.content_length == h->content_length, "Content-Length %llu vs %llu",
               (unsigned long long)p.content_length, (unsigned long long)h->content_length);
    ENSURE(!!(p.flags & F_CHUNKED) == h->chunked, "chunked");
    ENSURE(!!(p.flags & F_UPGRADE) == h->has_upgrade, "Upgrade header");
    /* llhttp also reads Proxy-Connection as Connection; we do not. */
    if (!has_field(h, "proxy-connection")) {
        ENSURE(!!(p.flags & F_CONNECTION_CLOSE) == h->conn_close, "Connection: close");
        ENSURE(!!(p.flags & F_CONNECTION_KEEP_ALIVE) == h->conn_keep_alive,
               "Connection: keep-alive");
        ENSURE(!!(p.flags & F_CONNECTION_UPGRADE) == h->conn_upgrade, "Connection: upgrade");
    }
    ENSURE(d.nfields == h->nheaders, "%zu fields vs %zu", d.nfields, h->nheaders);
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        ENSURE(d.names[i] == f->name && d.name_lens[i] == f->name_len, "name %zu", i);
        /* llhttp skips leading OWS; whether it keeps trailing OWS varies,
         * so compare after trimming it. An empty value has no span. */
        size_t vl = d.value_lens[i];
        while (vl && (d.values[i][vl - 1] == ' ' || d.values[i][vl - 1] == '\t'))
            vl--;
        ENSURE(vl == f->value_len && (vl == 0 || d.values[i] == f->value), "value %zu", i);
    }
}
#endif

static void run(const char *buf, size_t len, scan_fn scan, bool response)
{
    static gh_h1_head_t h;
    const size_t maxes[] = {SIZE_MAX, 8192, 256, 40, len, len ? len - 1 : 0};

    for (size_t i = 0; i < sizeof maxes / sizeof maxes[0]; i++) {
        size_t max = maxes[i];
        int r = scan(buf, len, max, &h);
        ENSURE(allowed_result(r, response), "result %d", r);
        if (r == 0)
            ENSURE(len < max, "0 with len %zu >= max %zu", len, max);
        if (r <= 0)
            continue;
        check_accepted(buf, len, max, r, &h, response);
        if (i == 0) {
#ifdef GH_FUZZ_LLHTTP
            differential(buf, r, &h, response);
#endif
            check_incremental(buf, len, r, scan, response);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char req_prefix[] = "POST /f HTTP/1.1\r\nHost: h\r\n";
    static const char resp_prefix[] = "HTTP/1.1 200 OK\r\n";

    if (size == 0)
        return 0;
    if (data[0] < 128) {
        /* The input itself, in its own exactly-sized buffer so that ASan
         * sees any read past len. */
        run((const char *)data + 1, size - 1, gh_h1_scan_request, false);
        run((const char *)data + 1, size - 1, gh_h1_scan_response, true);
        return 0;
    }
    const char *pre = (data[0] & 1) ? req_prefix : resp_prefix;
    size_t pl = (data[0] & 1) ? sizeof req_prefix - 1 : sizeof resp_prefix - 1;
    size_t len = pl + size - 1;
    char *buf = malloc(len);
    if (!buf)
        return 0;
    memcpy(buf, pre, pl);
    memcpy(buf + pl, data + 1, size - 1);
    run(buf, len, gh_h1_scan_request, false);
    run(buf, len, gh_h1_scan_response, true);
    free(buf);
    return 0;
}
