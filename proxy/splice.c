/* Bodies moved inside the kernel: socket -> pipe -> socket with splice(2),
 * never copied into user space. Both directions:
 *
 *  - a response: the rest of a Content-Length body with at least
 *    GH_SPLICE_MIN bytes to come, once what was read with the head has been
 *    written to the client;
 *  - a request (an upload): the rest of a Content-Length body with at least
 *    GH_SPLICE_MIN bytes to come, once the head and what was read with it
 *    have gone upstream, as long as the upstream has not begun to answer.
 *
 * Only when both ends are plain TCP. Both libuv TCP handles are then
 * stopped for real (no read, no queued write), so they ask nothing of the
 * loop, and two uv_poll handles of our own watch duplicates of the two
 * sockets (a descriptor of its own for each, so libuv never sees two
 * watchers on one). When the body is through, the poll handles are closed,
 * which takes the duplicates out of epoll at once, then the duplicates, and
 * the TCP handles go on as before.
 *
 * Backpressure is the buffered path's: the source is read only while the
 * pipe is empty, so a body holds at most one pipe (GH_SPLICE_PIPE, kernel
 * memory) whatever its size. The client is watched for a hang-up while the
 * upstream is slow, so a client that goes away cuts the upstream at once; an
 * upstream that answers (or fails) in the middle of an upload hands the
 * upload back to the buffered path, with what the pipe held, which then
 * does what it always does. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "proxy/proxy.h"

#define GH_SPLICE_PIPE (256 * 1024) /* pipe capacity asked for */
#define GH_SPLICE_PIPE_MIN (64 * 1024) /* below this (the per-user pipe limit
                                           was reached), the buffered path */
#define GH_SPLICE_TURN (1024 * 1024) /* bytes moved per wakeup, for fairness */

#ifdef __linux__

struct gh_splice {
    gh_req_t *r;            /* NULL once ended (the poll handles are closing) */
    bool upload;            /* client -> upstream; else upstream -> client */
    uv_poll_t src, dst;
    int pfd[2];             /* the pipe: read end, write end */
    int src_fd, dst_fd;     /* duplicates of the sockets */
    size_t in_pipe;         /* bytes in the pipe */
    size_t cap;             /* the most the pipe is given at once */
    int src_events, dst_events; /* what each poll handle waits for now */
    int handles;            /* poll handles not yet closed */
};

static void pump(struct gh_splice *sp);

/* The body bytes not yet at the destination: the request's or the
 * response's own count, taken down as the pipe is emptied. */
static uint64_t *remaining(struct gh_splice *sp)
{
    return sp->upload ? &sp->r->body_remaining : &sp->r->resp_remaining;
}

static void close_fds(struct gh_splice *sp)
{
    int fds[4] = {sp->pfd[0], sp->pfd[1], sp->src_fd, sp->dst_fd};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static void handle_closed(uv_handle_t *h)
{
    struct gh_splice *sp = h->data;
    if (--sp->handles == 0)
        free(sp);
}

static void end(struct gh_splice *sp)
{
    gh_req_t *r = sp->r;
    r->splice = NULL;
    sp->r = NULL;
    /* uv_close takes each duplicate out of epoll before it returns; only
     * then may the duplicate be closed (epoll keys on the open file: a
     * descriptor closed while registered would stay in its set) */
    uv_close((uv_handle_t *)&sp->src, handle_closed);
    uv_close((uv_handle_t *)&sp->dst, handle_closed);
    close_fds(sp);
}

void gh__splice_end(gh_req_t *r)
{
    if (r->splice)
        end(r->splice);
}

static void finish(struct gh_splice *sp, enum gh_splice_end why)
{
    gh_req_t *r = sp->r;
    if (why == GH_SPLICE_HANDED_BACK && sp->in_pipe) {
        /* what the pipe holds goes back to the connection's buffer (never
         * more than its room: see pump), for the buffered path to send */
        gh_conn_t *c = r->conn;
        ssize_t n = read(sp->pfd[0], c->buf + c->len, sp->in_pipe);
        if (n != (ssize_t)sp->in_pipe)
            why = GH_SPLICE_CLIENT_FAILED;
        else
            c->len += (size_t)n;
        sp->in_pipe = 0;
    }
    bool upload = sp->upload;
    end(sp);
    gh__proxy_splice_done(r, upload, why);
}

static void src_ready(uv_poll_t *h, int status, int events)
{
    struct gh_splice *sp = h->data;
    (void)events;
    if (!sp->r)
        return;
    if (status < 0) {
        finish(sp, sp->upload ? GH_SPLICE_CLIENT_GONE : GH_SPLICE_UPSTREAM_FAILED);
        return;
    }
    pump(sp);
}

static void dst_ready(uv_poll_t *h, int status, int events)
{
    struct gh_splice *sp = h->data;
    if (!sp->r)
        return;
    if (sp->upload) {
        /* the upstream answers, closed or failed: the buffered path sees to it */
        if (status < 0 || (events & UV_READABLE)) {
            finish(sp, GH_SPLICE_HANDED_BACK);
            return;
        }
    } else if (status < 0 || (events & UV_DISCONNECT)) {
        /* the client hung up, or reset (unread bytes made its close a RST) */
        finish(sp, GH_SPLICE_CLIENT_GONE);
        return;
    }
    pump(sp);
}

static int watch(uv_poll_t *h, int *now, int want, uv_poll_cb cb)
{
    if (*now == want)
        return 0;
    *now = want;
    return want ? uv_poll_start(h, want, cb) : uv_poll_stop(h);
}

/* Moves what can be moved now, then waits for the side that is behind: the
 * destination when the pipe holds bytes, else the source. */
static void pump(struct gh_splice *sp)
{
    gh_req_t *r = sp->r;
    size_t moved = 0;
    bool wait_dst = false;
    for (;;) {
        if (sp->in_pipe > 0) {
            ssize_t n = splice(sp->pfd[0], NULL, sp->dst_fd, NULL, sp->in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN) {
                wait_dst = true;
                break;
            }
            if (n <= 0) {
                finish(sp, sp->upload ? GH_SPLICE_HANDED_BACK : GH_SPLICE_CLIENT_FAILED);
                return;
            }
            sp->in_pipe -= (size_t)n;
            *remaining(sp) -= (uint64_t)n;
            r->bytes_spliced += (uint64_t)n;
            if (sp->upload) {
                r->bytes_in += (uint64_t)n;
                r->body_bytes += (uint64_t)n;
            } else {
                r->bytes_out += (uint64_t)n;
            }
            moved += (size_t)n;
            continue;
        }
        /* the pipe is empty: what remains is all still at the source */
        uint64_t left = *remaining(sp);
        if (left == 0) {
            finish(sp, GH_SPLICE_DONE);
            return;
        }
        if (moved >= GH_SPLICE_TURN)
            break; /* the source is waited for below, and is readable */
        size_t want = left < sp->cap ? (size_t)left : sp->cap;
        ssize_t n = splice(sp->src_fd, NULL, sp->pfd[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            if (sp->upload)
                finish(sp, GH_SPLICE_CLIENT_GONE);
            else
                finish(sp, n == 0 ? GH_SPLICE_UPSTREAM_ENDED : GH_SPLICE_UPSTREAM_FAILED);
            return;
        }
        sp->in_pipe += (size_t)n;
    }
    if (moved)
        r->conn->last_io = uv_now(r->conn->server->loop);
    /* The source is watched only while the pipe is empty: a full pipe would
     * make a readable source wake the loop for nothing. The destination for
     * room while the pipe holds bytes, and all along: a client for a
     * hang-up, an upstream for an answer. */
    int dst = (wait_dst ? UV_WRITABLE : 0) | (sp->upload ? UV_READABLE : UV_DISCONNECT);
    if (watch(&sp->src, &sp->src_events, wait_dst ? 0 : UV_READABLE, src_ready) != 0 ||
        watch(&sp->dst, &sp->dst_events, dst, dst_ready) != 0)
        finish(sp, sp->upload ? GH_SPLICE_HANDED_BACK : GH_SPLICE_CLIENT_FAILED);
}

static bool start(gh_req_t *r, bool upload)
{
    gh_conn_t *c = r->conn;
    gh_uconn_t *uc = r->uc;
    struct gh_splice *sp = calloc(1, sizeof *sp);
    if (!sp)
        return false;
    sp->upload = upload;
    sp->pfd[0] = sp->pfd[1] = sp->src_fd = sp->dst_fd = -1;
    /* the client connection stops reading (gh__conn_update_read sees
     * r->splice), then both TCP handles let go of their sockets */
    r->splice = sp;
    gh__conn_update_read(c);
    int cl = gh_tcp_stream_take_fd(c->stream);
    int up = cl < 0 ? -1 : gh_tcp_stream_take_fd(uc->stream);
    if (up < 0)
        goto no;
    sp->src_fd = fcntl(upload ? cl : up, F_DUPFD_CLOEXEC, 0);
    sp->dst_fd = fcntl(upload ? up : cl, F_DUPFD_CLOEXEC, 0);
    if (sp->src_fd < 0 || sp->dst_fd < 0 || pipe2(sp->pfd, O_NONBLOCK | O_CLOEXEC) != 0)
        goto no;
    (void)fcntl(sp->pfd[1], F_SETPIPE_SZ, GH_SPLICE_PIPE);
    int cap = fcntl(sp->pfd[1], F_GETPIPE_SZ);
    if (cap < GH_SPLICE_PIPE_MIN)
        goto no;
    sp->cap = (size_t)cap;
    if (upload) {
        /* an upload handed back puts the pipe's bytes in the connection's
         * buffer, so the pipe never holds more than that buffer's room */
        c->off = c->len = 0;
        if (sp->cap > c->cap)
            sp->cap = c->cap;
    }
    uv_loop_t *loop = c->server->loop;
    if (uv_poll_init_socket(loop, &sp->src, sp->src_fd) != 0)
        goto no;
    sp->src.data = sp->dst.data = sp;
    if (uv_poll_init_socket(loop, &sp->dst, sp->dst_fd) != 0) {
        /* the one handle made is closed, the rest undone here */
        sp->handles = 1;
        uv_close((uv_handle_t *)&sp->src, handle_closed);
        close_fds(sp);
        r->splice = NULL;
        gh__conn_update_read(c);
        return false;
    }
    sp->handles = 2;
    sp->r = r;
    if (!upload) {
        /* the read buffer is empty and not needed until the body is through */
        gh__buf_put(uc->buf);
        uc->buf = NULL;
    }
    pump(sp);
    return true;
no:
    close_fds(sp);
    r->splice = NULL;
    free(sp);
    gh__conn_update_read(c);
    return false;
}

bool gh__splice_start(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    gh_uconn_t *uc = r->uc;
    if (r->resp_body != GH_BODY_LENGTH || r->resp_remaining < GH_SPLICE_MIN || r->resp_chunked ||
        !r->req_sent || r->upstream_writing || r->client_writing || !uc || uc->len != 0 ||
        r->splice || c->state == GH_C_CLOSING)
        return false;
    return start(r, false);
}

bool gh__splice_upload_start(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    gh_uconn_t *uc = r->uc;
    if (!r->has_body || r->body_chunked || r->req_body_done || r->body_remaining < GH_SPLICE_MIN ||
        r->upload_handed_back ||
        !r->uhead_sent || r->upstream_writing || r->phase != GH_R_SENDING || r->resp_head_parsed ||
        !uc || uc->len != 0 || !c->buf || c->len != c->off || r->splice || c->state == GH_C_CLOSING)
        return false;
    return start(r, true);
}

#else /* no splice(2) */

bool gh__splice_start(gh_req_t *r)
{
    (void)r;
    return false;
}

bool gh__splice_upload_start(gh_req_t *r)
{
    (void)r;
    return false;
}

void gh__splice_end(gh_req_t *r)
{
    (void)r;
}

#endif
