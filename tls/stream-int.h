/* The TLS stream's state, shared by tls/stream.c (reading, closing),
 * tls/stream_write.c (the BIO, writing, shutdown) and tls/stream_new.c
 * (construction, queries). Not for use outside tls/. */
#ifndef GH_TLS_STREAM_INT_H
#define GH_TLS_STREAM_INT_H

#include "tls/tls-int.h"

/* Ciphertext on its way to TCP. wr must be first: the TCP write callback
 * gets &wr back. */
typedef struct gh__tls_out {
    gh_write_req_t wr;
    gh_write_req_t *user;   /* completed when this is written; NULL for handshake bytes */
    size_t len, cap;
    char data[];
} gh__tls_out_t;

/* A write issued before the handshake finished. */
typedef struct gh__tls_queued {
    struct gh__tls_queued *next;
    gh_write_req_t *req;
    size_t bytes;
    unsigned nbufs;
    uv_buf_t bufs[];
} gh__tls_queued_t;

typedef struct gh__tls_stream {
    gh_stream_t base;           /* first: a gh__tls_stream_t * is a gh_stream_t * */
    gh_tcp_stream_t *tcp;       /* NULL once closed */
    SSL *ssl;
    gh_tls_server_t *server;    /* one of the two holds a reference */
    gh_tls_client_t *client;
    const char *in;             /* ciphertext OpenSSL may read now */
    size_t inlen;
    char *saved;                /* ciphertext kept while the user does not read */
    size_t saved_off, saved_len;
    gh__tls_out_t *out;           /* ciphertext not yet handed to TCP */
    gh__tls_queued_t *wq, **wq_tail;
    size_t wq_bytes;
    uv_timer_t *defer;          /* created on first need: delivers kept data */
    char *error;                /* first failure, for logs */
    char *session_key;          /* client: the sni, keying resumable sessions */
    int pending_err;            /* UV_EOF or an error the user has not seen yet */
    int fatal;                  /* the stream is broken: writes fail with this */
    int handles;                /* open libuv handles; freed at zero */
    bool is_server, started, hs_done, counted, got_bytes;
    bool reading, inner_reading, read_done, shut_pending, shut_sent;
} gh__tls_stream_t;

extern const gh_stream_ops_t gh__tls_stream_ops;

/* stream.c */

/* Keeps the first failure as the stream's error message. */
void gh__tls_set_error(gh__tls_stream_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The handshake ended without success: counts it, fails queued writes with
 * status and leaves status for the reader. */
void gh__tls_handshake_failed(gh__tls_stream_t *t, int status);
/* Starts or stops reading TCP to match what the stream needs. */
int gh__tls_sync_inner(gh__tls_stream_t *t);
/* Points tcp's callbacks at the TLS stream. */
void gh__tls_take_over(gh__tls_stream_t *t);

/* stream_write.c */

const BIO_METHOD *gh__tls_bio_method(void);
/* Hands the ciphertext OpenSSL wrote to TCP; user completes with it. */
int gh__tls_flush(gh__tls_stream_t *t, gh_write_req_t *user);
/* After the handshake: encrypts and sends the writes queued before it. */
void gh__tls_run_queue(gh__tls_stream_t *t);
/* Completes every queued write with status. */
void gh__tls_fail_queue(gh__tls_stream_t *t, int status);
int gh__tls_write(gh_stream_t *s, gh_write_req_t *req, const uv_buf_t *bufs, unsigned nbufs,
                  gh_write_cb cb);
int gh__tls_shutdown(gh_stream_t *s);
size_t gh__tls_write_queue_size(const gh_stream_t *s);

/* stream_new.c */

/* Counts the handshake once, as done or failed (see gh_tls_stats). */
void gh__tls_count(gh__tls_stream_t *t, bool ok);

#endif
