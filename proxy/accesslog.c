/* The access log: one line a request, JSON (SPEC.md section 3) or the
 * combined format. Lines gather in a buffer that is written once per loop
 * turn, so a busy loop makes one write() for many requests. Each worker
 * thread gathers its own lines (the buffer is thread-local) and flushes them
 * on its own loop; the flush writes pieces of whole lines of at most
 * PIPE_BUF bytes, which a pipe takes whole, so the lines of two workers
 * never mix. The destination is process-wide, set before the workers start. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "plugins/plugin.h"
#include "proxy/log.h"
#include "proxy/proxy.h"

#define LOG_BUF 65536
#ifndef PIPE_BUF
#define PIPE_BUF 4096
#endif

static int log_fd = -1;
static gh_alog_format_t log_format;
static _Thread_local char log_buf[LOG_BUF];
static _Thread_local size_t log_len;

int gh__accesslog_open(const gh_config_t *cfg)
{
    if (!cfg->access_log.enabled) {
        log_fd = -1;
        return 0;
    }
    log_format = cfg->access_log.format;
    const char *p = cfg->access_log.path ? cfg->access_log.path : "stdout";
    if (strcmp(p, "stdout") == 0) {
        log_fd = STDOUT_FILENO;
    } else if (strcmp(p, "stderr") == 0) {
        log_fd = STDERR_FILENO;
    } else {
        log_fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (log_fd < 0) {
            gh_log_error("cannot open access_log %s: %s", p, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Writes all of p; false on an error. */
static bool write_all(const char *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(log_fd, p + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        off += (size_t)n;
    }
    return true;
}

void gh__accesslog_flush(void)
{
    /* Every line in log_buf ends with '\n'. A piece is as many whole lines
     * as fit in PIPE_BUF; a longer line goes alone. */
    for (size_t off = 0, end; off < log_len; off = end) {
        size_t left = log_len - off;
        if (left <= PIPE_BUF) {
            end = log_len;
        } else {
            const char *nl = memrchr(log_buf + off, '\n', PIPE_BUF);
            if (!nl)
                nl = memchr(log_buf + off + PIPE_BUF, '\n', left - PIPE_BUF);
            end = nl ? (size_t)(nl - log_buf) + 1 : log_len;
        }
        if (!write_all(log_buf + off, end - off))
            break; /* a full disk must not stop the proxy */
    }
    log_len = 0;
}

typedef struct {
    char *p;
    size_t len, cap;
} lbuf_t;

static void lb_put(lbuf_t *b, const char *s, size_t n)
{
    if (b->len + n > b->cap)
        n = b->cap - b->len;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void lb_str(lbuf_t *b, const char *s) { lb_put(b, s, strlen(s)); }

static void lb_fmt(lbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lb_fmt(lbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->len += (size_t)n < b->cap - b->len ? (size_t)n : b->cap - b->len - 1;
}

/* A JSON string; bytes outside printable ASCII are escaped so the line is
 * valid JSON whatever the client sent. */
static void lb_json(lbuf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        lb_str(b, "null");
        return;
    }
    lb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = { '\\', (char)*p };
            lb_put(b, e, 2);
        } else if (*p < 0x20 || *p >= 0x7f) {
            char e[6] = { '\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15] };
            lb_put(b, e, 6);
        } else {
            lb_put(b, (const char *)p, 1);
        }
    }
    lb_put(b, "\"", 1);
}

void gh__accesslog_write(gh_req_t *r)
{
    if (log_fd < 0 || !r)
        return;
    char line[8192];
    lbuf_t b = { line, 0, sizeof line - 2 };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    struct timespec mono;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    uint64_t now_ns = (uint64_t)mono.tv_sec * 1000000000u + (uint64_t)mono.tv_nsec;
    double dur_ms = r->start_ns ? (double)(now_ns - r->start_ns) / 1e6 : 0.0;
    char peer[48];
    const char *client = r->client_ip;
    if (!client[0]) {
        gh__conn_peer_text(r->conn, peer);
        client = peer;
    }
    const char *route = r->route ? r->route->name : NULL;
    const char *upstream = r->upstream_addr;
    int status = r->status ? r->status : 499;

    if (log_format == GH_ALOG_COMBINED) {
        static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        lb_fmt(&b, "%s - - [%02d/%s/%04d:%02d:%02d:%02d +0000] \"%s %s%s%s HTTP/1.%d\" %d %llu \"%s\" \"%s\"",
               client, tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
               tm.tm_sec, r->method[0] ? r->method : "-", r->path ? r->path : "-",
               r->query ? "?" : "", r->query ? r->query : "", r->http10 ? 0 : 1, status,
               (unsigned long long)r->bytes_out, r->referer ? r->referer : "-",
               r->user_agent ? r->user_agent : "-");
    } else {
        lb_fmt(&b, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"client\":",
               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
               ts.tv_nsec / 1000000);
        lb_json(&b, client);
        lb_str(&b, ",\"method\":");
        lb_json(&b, r->method[0] ? r->method : NULL);
        lb_str(&b, ",\"host\":");
        lb_json(&b, r->host);
        lb_str(&b, ",\"path\":");
        lb_json(&b, r->path);
        lb_fmt(&b, ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_ms\":%.3f,\"route\":",
               status, (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, dur_ms);
        lb_json(&b, route);
        lb_str(&b, ",\"upstream\":");
        lb_json(&b, upstream);
        lb_str(&b, ",\"request_id\":");
        lb_json(&b, r->request_id[0] ? r->request_id : NULL);
        lb_str(&b, ",\"key_id\":");
        lb_json(&b, r->preq && r->preq->key_id[0] ? r->preq->key_id : NULL);
        lb_str(&b, "}");
    }
    line[b.len++] = '\n';
    if (log_len + b.len > LOG_BUF)
        gh__accesslog_flush();
    memcpy(log_buf + log_len, line, b.len);
    log_len += b.len;
}
