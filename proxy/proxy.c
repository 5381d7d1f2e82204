/* Forwarding one request to an upstream and its response back, streaming
 * both ways with backpressure: while a write to one side is in flight the
 * other side is not read, so each direction holds at most one read buffer
 * of data (GH_BUF_SIZE) whatever the size of the body.
 *
 * Bodies are re-framed on the way through: Content-Length bodies pass as
 * zero-copy spans of the read buffer, chunked bodies are decoded by llhttp
 * and written again as clean chunks. The rest of a long Content-Length
 * body between two plain TCP sockets is handed to splice.c: a response's
 * once what was read with its head has been written, a request's once what
 * was read with its head has gone upstream. */
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/proxy.h"
#include "tls/tls.h"

static int resp_on_body(llhttp_t *p, const char *at, size_t len);
static int resp_on_message_complete(llhttp_t *p);
static void emit_body(gh_req_t *r, const char *at, size_t len);

static const llhttp_settings_t resp_settings = {
    .on_body = resp_on_body,
    .on_message_complete = resp_on_message_complete,
};

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void acquire(gh_req_t *r);
static void pump_request(gh_req_t *r);
static void process_response(gh_req_t *r);
static void tunnel_up(gh_req_t *r);
static void tunnel_down(gh_req_t *r);

/* Why an upstream connection failed, in words: TLS knows better than errno. */
static const char *uc_why(const gh_uconn_t *uc, int status)
{
    if (uc && uc->srv && uc->srv->conf->scheme == GH_SCHEME_HTTPS) {
        const char *e = gh_tls_stream_error(uc->stream);
        if (e)
            return e;
    }
    return uv_strerror(status);
}

static void touch(gh_req_t *r)
{
    r->conn->last_io = uv_now(r->conn->server->loop);
}

/* A pooled connection that the server closed just as the request went out
 * looks like a failure with nothing answered. Retrying then is only safe
 * for methods without side effects (RFC 9110 9.2.1); anything else gets
 * its 502. */
static bool stale_retry_ok(const gh_req_t *r, const gh_uconn_t *uc)
{
    return uc->requests > 0 && !r->has_body && !r->resp_head_parsed && !r->retried_stale &&
           (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0 ||
            strcmp(r->method, "OPTIONS") == 0);
}

/* A stream the connector refused (RESET REFUSED: a go-away crossed the
 * open, too many streams, an unknown service) processed nothing, whatever
 * the method: it may go again, on another connection of the tunnel, as long
 * as no request body byte has been let go of. */
#define REFUSED_RETRIES 3

static bool refused_retry_ok(const gh_req_t *r, const gh_uconn_t *uc, int err)
{
    return err == UV_ECONNREFUSED && uc->srv && uc->srv->conf->scheme == GH_SCHEME_TUNNEL &&
           !r->resp_head_parsed && r->body_bytes == 0 && r->refused_retries < REFUSED_RETRIES;
}

/* Detaches and closes the upstream connection of r, if any. */
static void drop_upstream(gh_req_t *r, bool reusable)
{
    gh__splice_end(r);  /* its poll handles let go of both sockets first */
    gh_uconn_t *uc = r->uc;
    if (!uc)
        return;
    r->uc = NULL;
    r->upstream_writing = false;
    uc->req = NULL;
    gh__uconn_release(uc, reusable);
}

/* Sends r again, to the same server if need be: nothing of it was taken. */
static void retry_upstream(gh_req_t *r)
{
    drop_upstream(r, false);
    if (r->srv) {
        size_t i = (size_t)(r->srv - r->up->servers);
        if (i < 32)
            r->tried &= ~(1u << i);
        r->attempts--;
    }
    acquire(r);
}

/* Retries r if the upstream's failure err allows it; true if it did. */
static bool retried(gh_req_t *r, gh_uconn_t *uc, int err)
{
    if (refused_retry_ok(r, uc, err)) {
        r->refused_retries++;
        gh_log_info("request %s: tunnel %s refused the stream; trying again", r->request_id,
                    uc->srv->conf->host);
    } else if (stale_retry_ok(r, uc) && uc->len == 0) {
        r->retried_stale = true;
    } else {
        return false;
    }
    retry_upstream(r);
    return true;
}

void gh__proxy_release(gh_req_t *r)
{
    drop_upstream(r, false);
    gh__upstream_cancel(r);
}

/* Something failed before or after the response began: a clean error answer
 * when nothing was sent to the client yet, else a connection closed without
 * a clean end so the client can never mistake it for a whole response. */
static void fail(gh_req_t *r, int status)
{
    drop_upstream(r, false);
    gh__upstream_cancel(r);
    if (r->resp_head_parsed || r->resp_started || r->phase == GH_R_TUNNEL) {
        if (!r->status)
            r->status = status;
        gh__conn_abort(r->conn);
        return;
    }
    if (!r->req_body_done)
        r->resp_close = true;
    gh__respond_error(r, status);
}

void gh__proxy_start(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    r->up = &r->snap->ups[r->route->upstream->index];
    r->uhead = gh__build_upstream_head(r, &r->uhead_len);
    if (!r->uhead) {
        r->resp_close = true;
        gh__respond_error(r, 431);
        return;
    }
    if (r->body_chunked) {
        r->qout = malloc(c->cap + 64);
        if (!r->qout) {
            gh__conn_abort(c);
            return;
        }
    }
    r->phase = GH_R_CONNECTING;
    gh__conn_set_deadline(c, GH_T_CONNECT);
    acquire(r);
}

static void continue_written(gh_write_req_t *w, int status)
{
    (void)status; /* a failure shows up on the next write or read */
    free(w);
}

static void uc_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf);
static void uc_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void uc_ready(gh_req_t *r, gh_uconn_t *uc, int status)
{
    gh_conn_t *c = r->conn;
    if (status < 0 || !uc) {
        /* Nothing reached the upstream: another server may take it. */
        r->uc = NULL;
        acquire(r);
        return;
    }
    r->uc = uc;
    uc->req = r;
    uc->len = 0;
    uc->stream->data = uc;
    uc->stream->on_alloc = uc_alloc;
    uc->stream->on_read = uc_read;
    r->uc_consumed = 0;
    r->uhead_sent = false;
    r->phase = GH_R_SENDING;
    gh__conn_set_deadline(c, GH_T_STREAM);
    if (gh_stream_read_start(uc->stream) != 0) {
        fail(r, 502);
        return;
    }
    if (r->expect_continue && r->has_body && !r->req_body_done && c->off == c->len) {
        /* its own request object: it may outlive this request */
        gh_write_req_t *w = malloc(sizeof *w);
        uv_buf_t b = uv_buf_init((char *)continue_100, sizeof continue_100 - 1);
        r->expect_continue = false;
        if (w && gh_stream_write(c->stream, w, &b, 1, continue_written) != 0)
            free(w);
    }
    pump_request(r);
    if (c->req == r)
        gh__conn_update_read(c);
}

static void acquire(gh_req_t *r)
{
    gh__upstream_cancel(r);
    r->phase = GH_R_CONNECTING;
    /* a retry starts over: its connect and first byte are timed afresh */
    r->req_sent = false;
    r->uhead_sent = false;
    gh__conn_set_deadline(r->conn, GH_T_CONNECT);
    int rc = gh__upstream_acquire(r, uc_ready);
    if (rc < 0) {
        gh_log_warn("request %s: upstream %s: %s", r->request_id, r->up->conf->name,
                    rc == -503 ? "every server is down" : "no server could be reached");
        fail(r, rc == -503 ? 503 : r->connect_timed_out ? 504 : 502);
    }
}

/* ---- request body upstream ---- */

static void upstream_written(gh_write_req_t *w, int status)
{
    gh_uconn_t *uc = w->data;
    gh_req_t *r = uc->req;
    if (!r)
        return;
    r->upstream_writing = false;
    if (status < 0) {
        /* A pooled connection the server had already closed, or a refused
         * tunnel stream: nothing of the request was taken, so a fresh
         * connection may carry it. */
        if (retried(r, uc, status))
            return;
        gh_log_warn("request %s: write to upstream %s failed: %s", r->request_id,
                    uc->srv ? uc->srv->conf->authority : "?", uc_why(uc, status));
        fail(r, 502);
        return;
    }
    touch(r);
    r->uhead_sent = true;
    gh_conn_t *c = r->conn;
    pump_request(r);
    /* the rest of a long Content-Length upload between two plain TCP
     * sockets goes on inside the kernel (proxy/splice.c) */
    if (c->req == r && !r->upstream_writing && r->body_remaining >= GH_SPLICE_MIN &&
        gh__splice_upload_start(r))
        return;
    if (c->req == r)
        gh__conn_update_read(c);
}

static void pump_request(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    gh_uconn_t *uc = r->uc;
    if (r->upstream_writing || !uc || r->phase == GH_R_TUNNEL)
        return;
    uv_buf_t bufs[6];
    unsigned n = 0;
    if (!r->uhead_sent)
        bufs[n++] = uv_buf_init(r->uhead, (unsigned)r->uhead_len);
    r->nqiov = 0;
    r->qout_len = 0;
    if (r->has_body && !r->req_body_done && c->len > c->off && !r->resp_done) {
        size_t avail = c->len - c->off;
        const char *start = c->buf + c->off;
        size_t used = avail;
        if (!r->body_chunked) {
            if (used > r->body_remaining)
                used = (size_t)r->body_remaining;
            r->body_remaining -= used;
            r->body_bytes += used;
            bufs[n++] = uv_buf_init((char *)start, (unsigned)used);
            if (r->body_remaining == 0)
                r->req_body_done = true;
        } else {
            llhttp_errno_t e = llhttp_execute(&r->qparser, start, avail);
            if (e == HPE_PAUSED) {
                used = (size_t)(llhttp_get_error_pos(&r->qparser) - start);
                llhttp_resume(&r->qparser);
            } else if (e != HPE_OK) {
                c->off = c->len;
                r->resp_close = true;
                if (r->too_large)
                    gh_log_info("request %s: body over %llu bytes", r->request_id,
                                (unsigned long long)r->route->max_body_bytes);
                fail(r, r->too_large ? 413 : 400);
                return;
            }
            if (r->qout_len)
                bufs[n++] = uv_buf_init(r->qout, (unsigned)r->qout_len);
        }
        c->off += used;
        r->bytes_in += used;
    }
    if (n == 0) {
        if (r->req_body_done && r->uhead_sent && !r->req_sent) {
            r->req_sent = true;
            if (r->phase == GH_R_SENDING) {
                r->phase = GH_R_WAITING;
                gh__conn_set_deadline(c, GH_T_FIRST_BYTE);
            }
        }
        return;
    }
    r->upstream_writing = true;
    uc->wreq.data = uc;
    int rc = gh_stream_write(uc->stream, &uc->wreq, bufs, n, upstream_written);
    if (rc < 0) {
        r->upstream_writing = false;
        fail(r, 502);
    }
}

void gh__proxy_client_data(gh_req_t *r)
{
    /* The upstream may answer before the body is all there (and keep
     * reading it): the body goes on being forwarded while it responds. */
    if (r->phase == GH_R_SENDING || (r->phase == GH_R_RESPONDING && !r->req_sent))
        pump_request(r);
    else if (r->phase == GH_R_TUNNEL)
        tunnel_up(r);
}

void gh__proxy_client_eof(gh_req_t *r)
{
    if (r->phase == GH_R_TUNNEL) {
        r->tunnel_up_eof = true;
        if (r->uc && !r->upstream_writing)
            gh_stream_shutdown(r->uc->stream);
        if (r->tunnel_down_eof)
            gh__conn_request_done(r->conn);
        return;
    }
    /* Gone in the middle of its own request, or while its answer is still
     * on the way: the upstream's work (an LLM generation, a big download)
     * is for nobody now, so it is cut at once rather than at the next
     * write that fails. */
    if (!r->req_body_done || r->phase == GH_R_WAITING || r->phase == GH_R_RESPONDING ||
        r->phase == GH_R_CONNECTING || r->phase == GH_R_SENDING) {
        r->status = 499;
        gh__conn_abort(r->conn);
    }
}

/* ---- response back to the client ---- */

static void uc_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    gh_uconn_t *uc = s->data;
    (void)suggested;
    if (!uc->buf) {
        uc->buf = gh__buf_get();
        if (!uc->buf) {
            buf->base = NULL;
            buf->len = 0;
            return;
        }
    }
    buf->base = uc->buf + uc->len;
    buf->len = GH_BUF_SIZE - uc->len;
}

static void finish_response(gh_req_t *r)
{
    gh_uconn_t *uc = r->uc;
    bool reusable = uc && r->req_sent && !r->upgrade && uc->len == r->uc_consumed &&
                    r->uc_keep_alive;
    if (!r->req_sent)
        r->resp_close = true; /* the rest of the request body was never read */
    drop_upstream(r, reusable);
    gh__upstream_cancel(r);
    gh__conn_request_done(r->conn);
}

static void client_written(gh_write_req_t *w, int status)
{
    gh_conn_t *c = w->data;
    gh__wreq_put(w);
    gh_req_t *r = c->req;
    if (!r || c->state == GH_C_CLOSING)
        return;
    r->client_writing = false;
    if (status < 0) {
        r->status = r->status ? r->status : 499;
        gh__conn_abort(c);
        return;
    }
    touch(r);
    r->resp_started = true;
    r->resp_head_pending = false;
    gh_uconn_t *uc = r->uc;
    if (r->phase == GH_R_TUNNEL) {
        if (uc) {
            uc->len = 0;
            r->uc_consumed = 0;
            if (!r->tunnel_down_eof)
                gh_stream_read_start(uc->stream);
        }
        if (r->tunnel_down_eof) {
            gh_stream_shutdown(c->stream);
            if (r->tunnel_up_eof)
                gh__conn_request_done(c);
        }
        return;
    }
    if (r->resp_done) {
        finish_response(r);
        return;
    }
    if (!uc) {
        gh__conn_abort(c);
        return;
    }
    if (r->uc_consumed == uc->len) {
        uc->len = 0;
        r->uc_consumed = 0;
    }
    /* a long Content-Length body between two plain TCP sockets goes on
     * inside the kernel (proxy/splice.c) */
    if (r->resp_body == GH_BODY_LENGTH && r->resp_remaining >= GH_SPLICE_MIN && gh__splice_start(r))
        return;
    if (gh_stream_read_start(uc->stream) != 0) {
        fail(r, 502);
        return;
    }
    if (uc->len > r->uc_consumed)
        process_response(r);
}

void gh__proxy_splice_done(gh_req_t *r, bool upload, enum gh_splice_end why)
{
    switch (why) {
    case GH_SPLICE_DONE:
    case GH_SPLICE_HANDED_BACK:
        if (!upload) {
            r->resp_done = true;
            finish_response(r);
            return;
        }
        /* on as if the body had gone the buffered way: the upstream is read
         * again (for its answer), and what is left of the body is sent, the
         * buffered way from now on once the upstream has begun to answer */
        if (why == GH_SPLICE_HANDED_BACK)
            r->upload_handed_back = true;
        if (r->body_remaining == 0)
            r->req_body_done = true;
        if (gh_stream_read_start(r->uc->stream) != 0) {
            fail(r, 502);
            return;
        }
        pump_request(r);
        if (r->conn->req == r)
            gh__conn_update_read(r->conn);
        return;
    case GH_SPLICE_UPSTREAM_ENDED:
    case GH_SPLICE_UPSTREAM_FAILED:
        gh_log_warn("request %s: upstream %s ended the response early", r->request_id,
                    r->srv ? r->srv->conf->authority : "?");
        fail(r, 502);
        return;
    case GH_SPLICE_CLIENT_GONE:
        r->status = 499; /* as gh__proxy_client_eof */
        gh__conn_abort(r->conn);
        return;
    case GH_SPLICE_CLIENT_FAILED:
        r->status = r->status ? r->status : 499; /* as client_written */
        gh__conn_abort(r->conn);
        return;
    }
}

/* Writes whatever the response has gathered: the head if not yet sent and
 * the body pieces of the last parse. Returns false when there was nothing. */
static bool flush_response(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    uv_buf_t bufs[8];
    unsigned n = 0;
    size_t total = 0;
    if (r->resp_head_pending)
        bufs[n++] = uv_buf_init(r->rhead, (unsigned)r->rhead_len);
    for (unsigned i = 0; i < r->npiov; i++)
        bufs[n++] = r->piov[i];
    if (r->pout_len)
        bufs[n++] = uv_buf_init(r->pout, (unsigned)r->pout_len);
    r->npiov = 0;
    r->pout_len = 0;
    if (n == 0)
        return false;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    r->bytes_out += total;
    r->client_writing = true;
    if (r->uc)
        gh_stream_read_stop(r->uc->stream);
    if (gh__conn_write(c, bufs, n, client_written) != 0) {
        r->client_writing = false;
        gh__conn_abort(c);
    }
    return true;
}

static void enter_tunnel(gh_req_t *r)
{
    r->phase = GH_R_TUNNEL;
    r->req_body_done = true;
    r->req_sent = true;
    gh__conn_set_deadline(r->conn, GH_T_STREAM);
}

static void process_response(gh_req_t *r)
{
    gh_uconn_t *uc = r->uc;
    gh_conn_t *c = r->conn;
    while (!r->resp_head_parsed) {
        gh_h1_head_t *rh = &r->head; /* the request's slices are no longer needed */
        size_t avail = uc->len - r->uc_consumed;
        int rc = gh_h1_scan_response(uc->buf + r->uc_consumed, avail, GH_BUF_SIZE, rh);
        if (rc == 0) {
            if (uc->len == GH_BUF_SIZE) {
                gh_log_warn("request %s: upstream response head too large", r->request_id);
                fail(r, 502);
            }
            return;
        }
        if (rc < 0) {
            gh_log_warn("request %s: malformed response from upstream %s", r->request_id,
                        r->srv ? r->srv->conf->authority : "?");
            fail(r, 502);
            return;
        }
        if (rh->status < 200 && rh->status != 101) {
            /* Interim responses (100, 103) are not relayed: gatehouse answers
             * Expect itself, and early hints are optional. */
            r->uc_consumed += (size_t)rc;
            continue;
        }
        if (rh->status == 101 && !r->upgrade) {
            fail(r, 502);
            return;
        }
        r->status = rh->status;
        r->resp_head_parsed = true;
        r->phase = GH_R_RESPONDING;
        gh__conn_set_deadline(c, GH_T_STREAM);
        /* an answer before the whole body arrived: the client connection
         * cannot be trusted to be at a request boundary afterwards */
        if (!r->req_body_done)
            r->resp_close = true;
        free(r->rhead);
        r->rhead = gh__build_response_head(r, rh, &r->rhead_len);
        if (!r->rhead) {
            r->resp_head_parsed = false;
            fail(r, 502);
            return;
        }
        r->resp_head_pending = true;
        if (rh->status == 101) {
            r->uc_consumed += (size_t)rc;
            enter_tunnel(r);
            /* bytes after the 101 head already belong to the new protocol */
            if (uc->len > r->uc_consumed)
                r->piov[r->npiov++] = uv_buf_init(uc->buf + r->uc_consumed,
                                                  (unsigned)(uc->len - r->uc_consumed));
            r->uc_consumed = uc->len;
            flush_response(r);
            if (c->len > c->off)
                tunnel_up(r);
            return;
        }
        r->uc_consumed += (size_t)rc;
        /* Framing of the upstream body (RFC 9112 section 6.3). */
        bool no_body = r->head_method || rh->status == 204 || rh->status == 304;
        r->uc_keep_alive = rh->minor_version == 1 ? !rh->conn_close : rh->conn_keep_alive;
        if (no_body) {
            r->resp_body = GH_BODY_NONE;
        } else if (rh->chunked) {
            static const char chunked_head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            r->resp_body = GH_BODY_CHUNKED;
            llhttp_init(&r->pparser, HTTP_RESPONSE, &resp_settings);
            r->pparser.data = r;
            if (llhttp_execute(&r->pparser, chunked_head, sizeof chunked_head - 1) != HPE_OK) {
                fail(r, 500);
                return;
            }
        } else if (rh->has_content_length) {
            r->resp_body = GH_BODY_LENGTH;
            r->resp_remaining = rh->content_length;
        } else {
            r->resp_body = GH_BODY_CLOSE;
            r->uc_keep_alive = false;
        }
        if ((r->resp_chunked || r->resp_body == GH_BODY_CHUNKED) && !r->pout) {
            r->pout = malloc(GH_BUF_SIZE + 64);
            if (!r->pout) {
                gh__conn_abort(c);
                return;
            }
        }
        if (r->resp_body == GH_BODY_NONE || (r->resp_body == GH_BODY_LENGTH && r->resp_remaining == 0))
            r->resp_done = true;
    }
    if (uc->len > r->uc_consumed && !r->resp_done) {
        const char *start = uc->buf + r->uc_consumed;
        size_t avail = uc->len - r->uc_consumed;
        size_t used = avail;
        if (r->resp_body == GH_BODY_CHUNKED) {
            llhttp_errno_t e = llhttp_execute(&r->pparser, start, avail);
            if (e == HPE_PAUSED) {
                used = (size_t)(llhttp_get_error_pos(&r->pparser) - start);
                llhttp_resume(&r->pparser);
            } else if (e != HPE_OK) {
                gh_log_warn("request %s: malformed chunked body from upstream: %s", r->request_id,
                            llhttp_errno_name(e));
                fail(r, 502);
                return;
            }
        } else {
            if (r->resp_body == GH_BODY_LENGTH && used > r->resp_remaining)
                used = (size_t)r->resp_remaining;
            emit_body(r, start, used);
            if (r->resp_body == GH_BODY_LENGTH) {
                r->resp_remaining -= used;
                if (r->resp_remaining == 0)
                    r->resp_done = true;
            }
        }
        r->uc_consumed += used;
    }
    if (flush_response(r))
        return;
    if (r->resp_done) {
        finish_response(r);
        return;
    }
    /* Parsed but nothing to send (chunk extensions, trailers, interim
     * heads): nothing points into the buffer, so it starts over. */
    if (r->uc_consumed == uc->len)
        uc->len = r->uc_consumed = 0;
}

static void upstream_eof(gh_req_t *r, ssize_t err)
{
    gh_uconn_t *uc = r->uc;
    if (r->phase == GH_R_TUNNEL) {
        r->tunnel_down_eof = true;
        gh_stream_read_stop(uc->stream);
        if (err != UV_EOF) {
            gh__conn_abort(r->conn);
            return;
        }
        if (!r->client_writing) {
            gh_stream_shutdown(r->conn->stream);
            if (r->tunnel_up_eof)
                gh__conn_request_done(r->conn);
        }
        return;
    }
    if (!r->resp_head_parsed) {
        if (retried(r, uc, (int)err))
            return;
        gh_log_warn("request %s: upstream %s closed before responding: %s",
                    r->request_id, r->srv ? r->srv->conf->authority : "?", uc_why(uc, (int)err));
        fail(r, 502);
        return;
    }
    if (err == UV_EOF && r->resp_body == GH_BODY_CLOSE) {
        /* a body delimited by the end of the connection is complete */
        gh_stream_read_stop(uc->stream);
        r->uc_keep_alive = false;
        r->resp_done = true;
        if (r->resp_chunked) {
            memcpy(r->pout + r->pout_len, "0\r\n\r\n", 5);
            r->pout_len += 5;
        }
        if (!flush_response(r))
            finish_response(r);
        return;
    }
    gh_log_warn("request %s: upstream %s ended the response early", r->request_id,
                r->srv ? r->srv->conf->authority : "?");
    fail(r, 502);
}

static void uc_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gh_uconn_t *uc = s->data;
    gh_req_t *r = uc->req;
    (void)buf;
    if (!r) {
        uc->state = GH_UC_CLOSED;
        gh_stream_close(uc->stream);
        return;
    }
    if (nread == 0 || nread == UV_ENOBUFS)
        return;
    if (nread < 0) {
        upstream_eof(r, nread);
        return;
    }
    uc->len += (size_t)nread;
    touch(r);
    if (r->phase == GH_R_TUNNEL)
        tunnel_down(r);
    else
        process_response(r);
}

/* ---- response bodies ---- */

/* Hands a piece of decoded response body to the next write: framed as a
 * chunk when we send chunked, else as a zero-copy span of uc->buf (copied
 * only when a chunked upstream body goes to an HTTP/1.0 client in more
 * pieces than there are spans). */
static void emit_body(gh_req_t *r, const char *at, size_t len)
{
    if (len == 0)
        return;
    if (r->resp_chunked) {
        int n = snprintf(r->pout + r->pout_len, 20, "%zx\r\n", len);
        r->pout_len += (size_t)n;
        memcpy(r->pout + r->pout_len, at, len);
        r->pout_len += len;
        memcpy(r->pout + r->pout_len, "\r\n", 2);
        r->pout_len += 2;
        return;
    }
    if (r->pout_len == 0 && r->npiov < sizeof r->piov / sizeof r->piov[0]) {
        r->piov[r->npiov++] = uv_buf_init((char *)at, (unsigned)len);
        return;
    }
    memcpy(r->pout + r->pout_len, at, len);
    r->pout_len += len;
}

static int resp_on_body(llhttp_t *p, const char *at, size_t len)
{
    emit_body(p->data, at, len);
    return 0;
}

static int resp_on_message_complete(llhttp_t *p)
{
    gh_req_t *r = p->data;
    if (r->resp_chunked) {
        memcpy(r->pout + r->pout_len, "0\r\n\r\n", 5);
        r->pout_len += 5;
    }
    r->resp_done = true;
    return HPE_PAUSED;
}

/* ---- WebSocket and other upgrades: bytes both ways ---- */

static void tunnel_up_written(gh_write_req_t *w, int status)
{
    gh_uconn_t *uc = w->data;
    gh_req_t *r = uc->req;
    if (!r)
        return;
    r->upstream_writing = false;
    if (status < 0) {
        gh__conn_abort(r->conn);
        return;
    }
    touch(r);
    gh_conn_t *c = r->conn;
    c->off = c->len;
    if (r->tunnel_up_eof)
        gh_stream_shutdown(uc->stream);
    gh__conn_update_read(c);
}

static void tunnel_up(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    gh_uconn_t *uc = r->uc;
    if (r->upstream_writing || !uc || c->len == c->off)
        return;
    uv_buf_t b = uv_buf_init(c->buf + c->off, (unsigned)(c->len - c->off));
    r->bytes_in += b.len;
    r->upstream_writing = true;
    uc->wreq.data = uc;
    if (gh_stream_write(uc->stream, &uc->wreq, &b, 1, tunnel_up_written) != 0) {
        r->upstream_writing = false;
        gh__conn_abort(c);
        return;
    }
    gh__conn_update_read(c);
}

static void tunnel_down(gh_req_t *r)
{
    gh_uconn_t *uc = r->uc;
    if (r->client_writing || uc->len == r->uc_consumed)
        return;
    r->piov[r->npiov++] = uv_buf_init(uc->buf + r->uc_consumed, (unsigned)(uc->len - r->uc_consumed));
    r->uc_consumed = uc->len;
    flush_response(r);
}

/* ---- timeouts ---- */

void gh__proxy_timeout(gh_req_t *r, enum gh_deadline d)
{
    switch (d) {
    case GH_T_CONNECT:
        gh_log_warn("request %s: connect to upstream %s timed out", r->request_id,
                    r->srv ? r->srv->conf->authority : "?");
        if (r->srv)
            gh__upserver_failed(r->srv, uv_now(r->conn->server->loop));
        drop_upstream(r, false);
        r->connect_timed_out = true;
        gh__conn_set_deadline(r->conn, GH_T_CONNECT);
        acquire(r);
        return;
    case GH_T_FIRST_BYTE:
        gh_log_warn("request %s: no response from upstream %s within upstream_first_byte",
                    r->request_id, r->srv ? r->srv->conf->authority : "?");
        fail(r, 504);
        return;
    case GH_T_STREAM:
        gh_log_warn("request %s: stream idle for stream_idle, closing", r->request_id);
        fail(r, 504);
        return;
    default:
        return;
    }
}
