/* The heads gatehouse writes on behalf of others: the request head sent
 * upstream and the response head sent to the client. Both drop hop-by-hop
 * fields (RFC 9110 7.6.1), including those named in Connection, and
 * regenerate framing, so nothing ambiguous crosses the proxy. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "conf/config.h"
#include "plugins/plugin.h"
#include "proxy/proxy.h"

/* A fast generator for request ids: xoshiro-style state, one per thread,
 * each seeded on first use from the kernel, so the ids of two workers are
 * independent streams. Ids need to be unique, not secret. */
static _Thread_local uint64_t rid_state[2];

/* splitmix64: spreads a weak seed over the whole state */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rid_next(void)
{
    if (rid_state[0] == 0 && rid_state[1] == 0) {
        if (getrandom(rid_state, sizeof rid_state, 0) != sizeof rid_state || (rid_state[0] | rid_state[1]) == 0) {
            /* No kernel randomness: the clock, and this thread's state
             * address and a process-wide count to keep threads apart. */
            static _Atomic uint64_t nseeded;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
            uint64_t k = atomic_fetch_add_explicit(&nseeded, 1, memory_order_relaxed);
            rid_state[0] = mix64(t ^ ((uint64_t)getpid() << 32));
            rid_state[1] = mix64((uint64_t)(uintptr_t)&rid_state ^ mix64(k)) | 1;
        }
    }
    uint64_t s0 = rid_state[0], s1 = rid_state[1];
    uint64_t result = s0 + s1;
    s1 ^= s0;
    rid_state[0] = ((s0 << 55) | (s0 >> 9)) ^ s1 ^ (s1 << 14);
    rid_state[1] = (s1 << 36) | (s1 >> 28);
    return result;
}

/* Sixteen lower-case hex digits of v, most significant first, without a
 * loop over nibbles: each nibble is spread into a byte of its own, and
 * 'a' - '0' - 10 is added to the bytes that hold ten or more. */
static void hex16(uint64_t v, char *out)
{
    for (int half = 0; half < 2; half++) {
        uint64_t x = (v >> (32 - 32 * half)) & 0xffffffffu;
        /* 0x0000000087654321 -> 0x0807060504030201 (nibbles into bytes) */
        x = (x | (x << 16)) & 0x0000ffff0000ffffULL;
        x = (x | (x << 8)) & 0x00ff00ff00ff00ffULL;
        x = (x | (x << 4)) & 0x0f0f0f0f0f0f0f0fULL;
        /* bytes >= 10 get bit 0x10 from adding 6, which gives them 0x27 */
        uint64_t ten = ((x + 0x0606060606060606ULL) >> 4) & 0x0101010101010101ULL;
        x += 0x3030303030303030ULL + ten * 0x27;
        /* the most significant nibble is now in the highest byte */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        x = __builtin_bswap64(x);
#endif
        memcpy(out + 8 * half, &x, 8);
    }
}

void gh__request_id(char out[33])
{
    hex16(rid_next(), out);
    hex16(rid_next(), out + 16);
    out[32] = '\0';
}

typedef struct {
    char *p;
    size_t len, cap;
    bool overflow;
} obuf_t;

static void ob_put(obuf_t *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

#define OB_LIT(o, lit) ob_put((o), lit, sizeof(lit) - 1)

/* Decimal digits without printf: these heads are written for every request. */
static void ob_u64(obuf_t *o, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof tmp;
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ob_put(o, tmp + n, sizeof tmp - n);
}
static void ob_str(obuf_t *o, const char *s) { ob_put(o, s, strlen(s)); }

static void ob_header(obuf_t *o, const gh_h1_header_t *h)
{
    ob_put(o, h->name, h->name_len);
    OB_LIT(o, ": ");
    ob_put(o, h->value, h->value_len);
    OB_LIT(o, "\r\n");
}

/* Header lines forwarded as they came: lines that follow each other in the
 * received head go out with one copy, exactly as the scanner accepted them
 * (every byte of them was checked; optional whitespace around the value
 * means the same thing to every recipient). */
typedef struct {
    const char *start, *end;    /* the run gathered so far */
} run_t;

static void run_flush(obuf_t *o, run_t *run)
{
    if (run->end != run->start)
        ob_put(o, run->start, (size_t)(run->end - run->start));
    run->start = run->end = NULL;
}

static void run_add(obuf_t *o, run_t *run, const gh_h1_header_t *h)
{
    /* the line ends at the LF after the value and any trailing OWS */
    const char *e = h->value + h->value_len;
    while (*e != '\n')
        e++;
    if (h->name != run->end) {
        run_flush(o, run);
        run->start = h->name;
    }
    run->end = e + 1;
}

static bool ieq(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn)
        return false;
    for (size_t i = 0; i < an; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* The field names listed in the Connection headers of a head (RFC 9110
 * 7.6.1), gathered once so that each header is checked against a short
 * list instead of re-reading every Connection header. "close",
 * "keep-alive" and "upgrade" name no field we would forward anyway. */
#define MAX_CONN_TOKENS 16
typedef struct {
    struct { const char *p; size_t n; } t[MAX_CONN_TOKENS];
    size_t n;
    bool overflow;          /* too many: fall back to dropping nothing more */
} conn_tokens_t;

static void conn_tokens(const gh_h1_head_t *head, conn_tokens_t *ct)
{
    ct->n = 0;
    ct->overflow = false;
    if (!head->conn_other)
        return; /* the scanner saw no token but close, keep-alive, upgrade */
    for (size_t i = 0; i < head->nheaders; i++) {
        const gh_h1_header_t *c = &head->headers[i];
        if (c->id != GH_HN_CONNECTION)
            continue;
        const char *p = c->value, *end = c->value + c->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            size_t n = (size_t)(p - s);
            if (n == 0 || ieq(s, n, "close", 5) || ieq(s, n, "keep-alive", 10) ||
                ieq(s, n, "upgrade", 7))
                continue;
            if (ct->n == MAX_CONN_TOKENS) {
                ct->overflow = true;
                return;
            }
            ct->t[ct->n].p = s;
            ct->t[ct->n].n = n;
            ct->n++;
        }
    }
}

static bool named_in_connection(const conn_tokens_t *ct, const gh_h1_header_t *h)
{
    for (size_t i = 0; i < ct->n; i++)
        if (ieq(ct->t[i].p, ct->t[i].n, h->name, h->name_len))
            return true;
    return false;
}

/* Does a plugin edit (remove or set) take the header h away? */
static bool edited(const gh_h1_header_t *h, const char *const *remove, size_t nremove,
                   const gh_preq_header_t *set, size_t nset)
{
    for (size_t i = 0; i < nremove; i++)
        if (ieq(h->name, h->name_len, remove[i], strlen(remove[i])))
            return true;
    for (size_t i = 0; i < nset; i++)
        if (ieq(h->name, h->name_len, set[i].name, strlen(set[i].name)))
            return true;
    return false;
}

static size_t set_bytes(const gh_preq_header_t *set, size_t n)
{
    size_t b = 0;
    for (size_t i = 0; i < n; i++)
        b += strlen(set[i].name) + strlen(set[i].value) + 4;
    return b;
}

static void ob_set(obuf_t *o, const gh_preq_header_t *set, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ob_str(o, set[i].name);
        OB_LIT(o, ": ");
        ob_str(o, set[i].value);
        OB_LIT(o, "\r\n");
    }
}

static int parse_ip(const char *ip, gh_sockaddr_t *ss)
{
    memset(ss, 0, sizeof *ss);
    if (uv_inet_pton(AF_INET, ip, &ss->in.sin_addr) == 0) {
        ss->sa.sa_family = AF_INET;
        return 0;
    }
    if (uv_inet_pton(AF_INET6, ip, &ss->in6.sin6_addr) == 0) {
        ss->sa.sa_family = AF_INET6;
        return 0;
    }
    return -1;
}

/* Takes a trimmed address out of a header value into ip; -1 if it is not one. */
static int take_ip(const char *s, size_t n, char ip[48], gh_sockaddr_t *ss)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= 48)
        return -1;
    memcpy(ip, s, n);
    ip[n] = '\0';
    return parse_ip(ip, ss);
}

/* The client address as the upstream should believe it: from a trusted
 * proxy, CF-Connecting-IP, or else the right-most address in
 * X-Forwarded-For that is not itself a trusted proxy; from anyone else, the
 * peer itself. Fills r->client_ip and r->client_addr. */
void gh__real_client(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    const gh_config_t *cfg = r->snap->cfg;
    const gh_h1_head_t *h = &r->head;
    gh__conn_peer_text(c, r->peer_ip);
    memcpy(r->client_ip, r->peer_ip, sizeof r->client_ip);  /* NUL-terminated; no printf per request */
    r->client_addr = c->peer;
    if (!gh_cidr_match_any(cfg->trusted_proxies, cfg->ntrusted_proxies, &c->peer.sa))
        return;
    char ip[48];
    gh_sockaddr_t ss;
    const gh_h1_header_t *xff = NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        if (f->id == GH_HN_CF_CONNECTING_IP && take_ip(f->value, f->value_len, ip, &ss) == 0) {
            memcpy(r->client_ip, ip, sizeof ip);
            r->client_addr = ss;
            return;
        }
        if (f->id == GH_HN_X_FORWARDED_FOR)
            xff = f; /* the last field holds the right-most entries */
    }
    if (!xff)
        return;
    const char *begin = xff->value, *end = xff->value + xff->value_len;
    while (end > begin) {
        const char *s = end;
        while (s > begin && s[-1] != ',')
            s--;
        if (take_ip(s, (size_t)(end - s), ip, &ss) != 0)
            return; /* not an address: stop believing the chain here */
        memcpy(r->client_ip, ip, sizeof ip);
        r->client_addr = ss;
        if (!gh_cidr_match_any(cfg->trusted_proxies, cfg->ntrusted_proxies, (struct sockaddr *)&ss))
            return;
        end = s > begin ? s - 1 : s;
    }
}

char *gh__build_upstream_head(gh_req_t *r, size_t *len)
{
    const gh_h1_head_t *h = &r->head;
    const gh_config_t *cfg = r->snap->cfg;
    bool trusted = gh_cidr_match_any(cfg->trusted_proxies, cfg->ntrusted_proxies,
                                     &r->conn->peer.sa);
    const gh_h1_header_t *xfp = NULL, *host = NULL, *upg = NULL;
    size_t total = h->head_len;    /* forwarded lines and values are parts of it */
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        if (f->id == GH_HN_X_FORWARDED_PROTO)
            xfp = f;
        else if (f->id == GH_HN_HOST)
            host = f;
        else if (f->id == GH_HN_UPGRADE)
            upg = f;
    }
    conn_tokens_t ct;
    conn_tokens(h, &ct);
    const gh_preq_t *p = r->preq;
    obuf_t o = { .cap = total + strlen(r->path) + (r->query ? strlen(r->query) : 0) +
                        strlen(r->host) * 2 + 512 + (p ? set_bytes(p->req_set, p->nreq_set) : 0) };
    o.p = malloc(o.cap);
    if (!o.p)
        return NULL;

    ob_str(&o, r->method);
    OB_LIT(&o, " ");
    ob_str(&o, r->path);
    if (r->query) {
        OB_LIT(&o, "?");
        ob_str(&o, r->query);
    }
    OB_LIT(&o, " HTTP/1.1\r\nHost: ");
    if (host && r->head.target[0] == '/')
        ob_put(&o, host->value, host->value_len);
    else
        ob_str(&o, r->host);
    OB_LIT(&o, "\r\n");

    run_t run = { NULL, NULL };
    for (size_t i = 0; i < h->nheaders; i++) {
        const gh_h1_header_t *f = &h->headers[i];
        if (gh_h1_hop_by_hop(f) || f->id == GH_HN_HOST || f->id == GH_HN_EXPECT ||
            f->id == GH_HN_X_REAL_IP || f->id == GH_HN_X_FORWARDED_HOST ||
            f->id == GH_HN_X_FORWARDED_PROTO || f->id == GH_HN_X_REQUEST_ID ||
            f->id == GH_HN_X_FORWARDED_FOR ||
            (f->id == GH_HN_CF_CONNECTING_IP && !trusted) || named_in_connection(&ct, f))
            continue;
        if (p && edited(f, p->req_remove, p->nreq_remove, p->req_set, p->nreq_set))
            continue;
        run_add(&o, &run, f);
    }
    run_flush(&o, &run);
    if (p)
        ob_set(&o, p->req_set, p->nreq_set);
    /* From a trusted proxy the chain is kept (repeated fields joined into
     * one list) and extended; from anyone else it is not believed. */
    OB_LIT(&o, "X-Forwarded-For: ");
    if (trusted) {
        for (size_t i = 0; i < h->nheaders; i++) {
            const gh_h1_header_t *f = &h->headers[i];
            if (f->id == GH_HN_X_FORWARDED_FOR && f->value_len) {
                ob_put(&o, f->value, f->value_len);
                OB_LIT(&o, ", ");
            }
        }
    }
    ob_str(&o, r->peer_ip);
    OB_LIT(&o, "\r\n");

    OB_LIT(&o, "X-Real-IP: ");
    ob_str(&o, r->client_ip);
    OB_LIT(&o, "\r\nX-Forwarded-Proto: ");
    if (trusted && xfp)
        ob_put(&o, xfp->value, xfp->value_len);
    else
        ob_str(&o, r->conn->tls ? "https" : "http");
    OB_LIT(&o, "\r\nX-Forwarded-Host: ");
    if (host && r->head.target[0] == '/')
        ob_put(&o, host->value, host->value_len); /* as the client wrote it, port included */
    else
        ob_str(&o, r->host);
    OB_LIT(&o, "\r\nX-Request-ID: ");
    ob_str(&o, r->request_id);
    OB_LIT(&o, "\r\n");

    if (r->upgrade && upg) {
        OB_LIT(&o, "Connection: upgrade\r\n");
        ob_header(&o, upg);
    } else if (r->body_chunked) {
        OB_LIT(&o, "Transfer-Encoding: chunked\r\n");
    } else if (r->has_body) {
        OB_LIT(&o, "Content-Length: ");
        ob_u64(&o, h->content_length);
        OB_LIT(&o, "\r\n");
    }
    OB_LIT(&o, "\r\n");
    if (o.overflow) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}

char *gh__build_response_head(gh_req_t *r, const gh_h1_head_t *rh, size_t *len)
{
    size_t total = rh->head_len;   /* forwarded lines are parts of it */
    const gh_h1_header_t *upg = NULL;
    for (size_t i = 0; i < rh->nheaders; i++) {
        if (rh->headers[i].id == GH_HN_UPGRADE)
            upg = &rh->headers[i];
    }
    conn_tokens_t ct;
    conn_tokens(rh, &ct);
    const gh_preq_t *p = r->preq;
    obuf_t o = { .cap = total + 256 + (p ? set_bytes(p->resp_set, p->nresp_set) : 0) };
    o.p = malloc(o.cap);
    if (!o.p)
        return NULL;
    OB_LIT(&o, "HTTP/1.1 ");
    ob_u64(&o, (uint64_t)rh->status);
    OB_LIT(&o, " ");
    /* Reason phrases carry no meaning (RFC 9112 section 4); send the standard one. */
    const char *reason = gh__status_reason(rh->status);
    ob_str(&o, reason);
    OB_LIT(&o, "\r\n");

    bool informational = rh->status < 200;
    bool no_body = informational || rh->status == 204 || rh->status == 304 || r->head_method;
    run_t run = { NULL, NULL };
    for (size_t i = 0; i < rh->nheaders; i++) {
        const gh_h1_header_t *f = &rh->headers[i];
        if (f->id == GH_HN_CONTENT_LENGTH && no_body && !informational && rh->status != 204) {
            run_add(&o, &run, f); /* HEAD and 304 describe the body they did not send */
            continue;
        }
        if (gh_h1_hop_by_hop(f) || f->id == GH_HN_X_REQUEST_ID || named_in_connection(&ct, f))
            continue;
        if (p && !informational && edited(f, p->resp_remove, p->nresp_remove, p->resp_set, p->nresp_set))
            continue;
        run_add(&o, &run, f);
    }
    run_flush(&o, &run);
    if (p && !informational)
        ob_set(&o, p->resp_set, p->nresp_set);
    if (rh->status == 101) {
        OB_LIT(&o, "Connection: upgrade\r\n");
        if (upg)
            ob_header(&o, upg);
    }
    if (!informational) {
        OB_LIT(&o, "X-Request-ID: ");
        ob_str(&o, r->request_id);
        OB_LIT(&o, "\r\n");
    }
    if (!no_body) {
        if (rh->has_content_length) {
            OB_LIT(&o, "Content-Length: ");
            ob_u64(&o, rh->content_length);
            OB_LIT(&o, "\r\n");
        } else if (!r->http10) {
            OB_LIT(&o, "Transfer-Encoding: chunked\r\n");
            r->resp_chunked = true;
        } else {
            r->resp_close = true;
        }
    }
    if (!informational) {
        if (r->resp_close || !r->client_keep_alive)
            OB_LIT(&o, "Connection: close\r\n");
        else if (r->http10)
            OB_LIT(&o, "Connection: keep-alive\r\n");
    }
    OB_LIT(&o, "\r\n");
    if (o.overflow) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}
