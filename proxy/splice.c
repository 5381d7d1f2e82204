/* Response bodies moved inside the kernel: upstream socket -> pipe ->
 * client socket with splice(2), never copied into user space.
 *
 * Taken for a Content-Length body with at least GH_SPLICE_MIN bytes still to
 * come when both ends are plain TCP, once everything read so far has been
 * written to the client and the whole request has gone upstream. Both libuv
 * TCP handles are then stopped for real (no read, no queued write), so their
 * handles ask nothing of the loop, and two uv_poll handles of our own watch
 * duplicates of the two sockets (a descriptor of its own for each, so libuv
 * never sees two watchers on one). When the body is through, the poll
 * handles are closed, which takes the duplicates out of epoll at once,
 * then the duplicates, and the TCP handles go on as before: the client
 * connection for its next request, the upstream one back to its pool.
 *
 * Backpressure is the buffered path's: the upstream is read only while the
 * pipe is empty, so a connection holds at most one pipe of body (GH_SPLICE_PIPE,
 * kernel memory) whatever the size of the body. The client socket is also
 * watched for a hang-up while the upstream is slow, so a client that goes
 * away cuts the upstream at once, as on the buffered path. */
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
    uv_poll_t up, cl;
    int pfd[2];             /* the pipe: read end, write end */
    int up_fd, cl_fd;       /* duplicates of the sockets */
    size_t in_pipe;         /* bytes in the pipe */
    size_t cap;             /* the pipe's capacity */
    int up_events, cl_events; /* what each poll handle waits for now */
    int handles;            /* poll handles not yet closed */
};

static void pump(struct gh_splice *sp);

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
    close(sp->pfd[0]);
    close(sp->pfd[1]);
    /* uv_close takes each duplicate out of epoll before it returns; only
     * then may the duplicate be closed (epoll keys on the open file: a
     * descriptor closed while registered would stay in its set) */
    uv_close((uv_handle_t *)&sp->up, handle_closed);
    uv_close((uv_handle_t *)&sp->cl, handle_closed);
    close(sp->up_fd);
    close(sp->cl_fd);
}

void gh__splice_end(gh_req_t *r)
{
    if (r->splice)
        end(r->splice);
}

static void finish(struct gh_splice *sp, enum gh_splice_end why)
{
    gh_req_t *r = sp->r;
    end(sp);
    gh__proxy_splice_done(r, why);
}

static void up_ready(uv_poll_t *h, int status, int events)
{
    struct gh_splice *sp = h->data;
    (void)events;
    if (!sp->r)
        return;
    if (status < 0) {
        finish(sp, GH_SPLICE_UPSTREAM_FAILED);
        return;
    }
    pump(sp);
}

static void cl_ready(uv_poll_t *h, int status, int events)
{
    struct gh_splice *sp = h->data;
    if (!sp->r)
        return;
    if (status < 0 || (events & UV_DISCONNECT)) {
        /* hung up, or reset (unread bytes made its close a RST) */
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
 * client when the pipe holds bytes, else the upstream. */
static void pump(struct gh_splice *sp)
{
    gh_req_t *r = sp->r;
    size_t moved = 0;
    bool wait_client = false;
    for (;;) {
        if (sp->in_pipe > 0) {
            ssize_t n = splice(sp->pfd[0], NULL, sp->cl_fd, NULL, sp->in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN) {
                wait_client = true;
                break;
            }
            if (n <= 0) {
                finish(sp, GH_SPLICE_CLIENT_FAILED);
                return;
            }
            sp->in_pipe -= (size_t)n;
            r->bytes_out += (uint64_t)n;
            r->bytes_spliced += (uint64_t)n;
            moved += (size_t)n;
            continue;
        }
        if (r->resp_remaining == 0) {
            finish(sp, GH_SPLICE_DONE);
            return;
        }
        if (moved >= GH_SPLICE_TURN)
            break; /* the upstream is waited for below, and is readable */
        size_t want = r->resp_remaining < sp->cap ? (size_t)r->resp_remaining : sp->cap;
        ssize_t n = splice(sp->up_fd, NULL, sp->pfd[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            finish(sp, n == 0 ? GH_SPLICE_UPSTREAM_ENDED : GH_SPLICE_UPSTREAM_FAILED);
            return;
        }
        sp->in_pipe += (size_t)n;
        r->resp_remaining -= (uint64_t)n;
    }
    if (moved)
        r->conn->last_io = uv_now(r->conn->server->loop);
    /* The client is watched for a hang-up all along; for room only while
     * the pipe holds bytes. The upstream only while the pipe is empty: a
     * full pipe would make a readable upstream wake the loop for nothing. */
    if (watch(&sp->up, &sp->up_events, wait_client ? 0 : UV_READABLE, up_ready) != 0 ||
        watch(&sp->cl, &sp->cl_events, UV_DISCONNECT | (wait_client ? UV_WRITABLE : 0), cl_ready) != 0)
        finish(sp, GH_SPLICE_CLIENT_FAILED);
}

bool gh__splice_start(gh_req_t *r)
{
    gh_conn_t *c = r->conn;
    gh_uconn_t *uc = r->uc;
    if (r->resp_body != GH_BODY_LENGTH || r->resp_remaining < GH_SPLICE_MIN || r->resp_chunked ||
        !r->req_sent || r->upstream_writing || r->client_writing || !uc || uc->len != 0 ||
        r->splice || c->state == GH_C_CLOSING)
        return false;
    struct gh_splice *sp = calloc(1, sizeof *sp);
    if (!sp)
        return false;
    sp->pfd[0] = sp->pfd[1] = sp->up_fd = sp->cl_fd = -1;
    /* the client connection stops reading (gh__conn_update_read sees
     * r->splice), then both TCP handles let go of their sockets */
    r->splice = sp;
    gh__conn_update_read(c);
    int cl = gh_tcp_stream_take_fd(c->stream);
    int up = cl < 0 ? -1 : gh_tcp_stream_take_fd(uc->stream);
    if (up < 0)
        goto no;
    sp->cl_fd = fcntl(cl, F_DUPFD_CLOEXEC, 0);
    sp->up_fd = fcntl(up, F_DUPFD_CLOEXEC, 0);
    if (sp->cl_fd < 0 || sp->up_fd < 0 || pipe2(sp->pfd, O_NONBLOCK | O_CLOEXEC) != 0)
        goto no;
    (void)fcntl(sp->pfd[1], F_SETPIPE_SZ, GH_SPLICE_PIPE);
    int cap = fcntl(sp->pfd[1], F_GETPIPE_SZ);
    if (cap < GH_SPLICE_PIPE_MIN)
        goto no;
    sp->cap = (size_t)cap;
    uv_loop_t *loop = c->server->loop;
    if (uv_poll_init_socket(loop, &sp->up, sp->up_fd) != 0)
        goto no;
    sp->up.data = sp->cl.data = sp;
    if (uv_poll_init_socket(loop, &sp->cl, sp->cl_fd) != 0) {
        /* the one handle made is closed, the rest undone here */
        sp->handles = 1;
        uv_close((uv_handle_t *)&sp->up, handle_closed);
        r->splice = NULL;
        close(sp->pfd[0]);
        close(sp->pfd[1]);
        close(sp->up_fd);
        close(sp->cl_fd);
        gh__conn_update_read(c);
        return false;
    }
    sp->handles = 2;
    sp->r = r;
    /* the read buffer is empty and not needed until the body is through */
    gh__buf_put(uc->buf);
    uc->buf = NULL;
    pump(sp);
    return true;
no:
    r->splice = NULL;
    for (int i = 0; i < 2; i++)
        if (sp->pfd[i] >= 0)
            close(sp->pfd[i]);
    if (sp->up_fd >= 0)
        close(sp->up_fd);
    if (sp->cl_fd >= 0)
        close(sp->cl_fd);
    free(sp);
    gh__conn_update_read(c);
    return false;
}

#else /* no splice(2) */

bool gh__splice_start(gh_req_t *r)
{
    (void)r;
    return false;
}

void gh__splice_end(gh_req_t *r)
{
    (void)r;
}

#endif
