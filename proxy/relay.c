/* The two-way byte pump of proxy/relay.h. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/relay.h"

#define RELAY_BUF (64 * 1024)

typedef struct side {
    gh_stream_t *s;
    struct gh_relay *relay;
    char *buf;              /* bytes read from s, being written to the other side */
    size_t len;
    bool reading;
    bool eof;               /* s ended its direction */
    bool writing;           /* buf is being written to the other side */
    bool shut;              /* the other side was half-closed after eof */
    bool closed;            /* on_close ran */
    unsigned long long moved;
    gh_write_req_t w;
} side_t;

struct gh_relay {
    side_t sd[2];
    gh_relay_done_cb done;
    void *data;
    int error;
    bool closing;
};

static side_t *other(side_t *x)
{
    return x == &x->relay->sd[0] ? &x->relay->sd[1] : &x->relay->sd[0];
}

static void closed_cb(gh_stream_t *s)
{
    side_t *x = s->data;
    gh_relay_t *r = x->relay;
    x->closed = true;
    if (!r->sd[0].closed || !r->sd[1].closed)
        return;
    if (r->done)
        r->done(r->data, r->error, r->sd[0].moved, r->sd[1].moved);
    free(r->sd[0].buf);
    free(r->sd[1].buf);
    free(r);
}

static void close_both(gh_relay_t *r, int error)
{
    if (r->closing)
        return;
    r->closing = true;
    if (!r->error)
        r->error = error;
    /* a refusal (nothing was processed) stays one across a bridge */
    int why = error == UV_ECONNREFUSED ? error : UV_ECONNRESET;
    gh_stream_close_err(r->sd[0].s, why);
    gh_stream_close_err(r->sd[1].s, why);
}

/* Both directions are over once each side has ended and what it sent has
 * been written. */
static void maybe_finish(gh_relay_t *r)
{
    if (r->sd[0].eof && r->sd[1].eof && !r->sd[0].writing && !r->sd[1].writing)
        close_both(r, 0);
}

static void set_reading(side_t *x, bool on)
{
    if (on == x->reading || x->relay->closing)
        return;
    if (on ? gh_stream_read_start(x->s) == 0 : gh_stream_read_stop(x->s) == 0)
        x->reading = on;
}

static void written(gh_write_req_t *w, int status)
{
    side_t *x = w->data;
    gh_relay_t *r = x->relay;
    x->writing = false;
    if (r->closing)
        return;
    if (status < 0) {
        close_both(r, status);
        return;
    }
    x->moved += x->len;
    x->len = 0;
    if (x->eof) {
        if (!x->shut) {
            x->shut = true;
            gh_stream_shutdown(other(x)->s);
        }
        maybe_finish(r);
        return;
    }
    set_reading(x, true);
}

static void send_buffered(side_t *x)
{
    gh_relay_t *r = x->relay;
    uv_buf_t b = uv_buf_init(x->buf, (unsigned)x->len);
    x->writing = true;
    x->w.data = x;
    set_reading(x, false);
    if (gh_stream_write(other(x)->s, &x->w, &b, 1, written) != 0) {
        x->writing = false;
        close_both(r, UV_EPIPE);
    }
}

static void on_alloc(gh_stream_t *s, size_t suggested, uv_buf_t *buf)
{
    side_t *x = s->data;
    (void)suggested;
    if (!x->buf)
        x->buf = malloc(RELAY_BUF);
    buf->base = x->buf;
    buf->len = x->buf && !x->writing ? RELAY_BUF : 0;
}

static void on_read(gh_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    side_t *x = s->data;
    gh_relay_t *r = x->relay;
    (void)buf;
    if (r->closing || nread == 0 || nread == UV_ENOBUFS)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            close_both(r, (int)nread);
            return;
        }
        x->eof = true;
        set_reading(x, false);
        if (!x->writing && !x->shut) {
            x->shut = true;
            gh_stream_shutdown(other(x)->s);
        }
        maybe_finish(r);
        return;
    }
    x->len = (size_t)nread;
    send_buffered(x);
}

gh_relay_t *gh_relay_start(gh_stream_t *a, gh_stream_t *b, const char *pending_a,
                           size_t npending_a, gh_relay_done_cb done, void *data)
{
    gh_relay_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->done = done;
    r->data = data;
    gh_stream_t *ss[2] = { a, b };
    for (int i = 0; i < 2; i++) {
        side_t *x = &r->sd[i];
        x->s = ss[i];
        x->relay = r;
        x->s->data = x;
        x->s->on_alloc = on_alloc;
        x->s->on_read = on_read;
        x->s->on_close = closed_cb;
    }
    if (npending_a > 0) {
        side_t *x = &r->sd[0];
        x->buf = malloc(npending_a > RELAY_BUF ? npending_a : RELAY_BUF);
        if (!x->buf) {
            free(r);
            return NULL;
        }
        memcpy(x->buf, pending_a, npending_a);
        x->len = npending_a;
        send_buffered(x);
        set_reading(&r->sd[1], true);
        return r;
    }
    set_reading(&r->sd[0], true);
    set_reading(&r->sd[1], true);
    return r;
}

void gh_relay_abort(gh_relay_t *r)
{
    close_both(r, UV_ECANCELED);
}
