/* Functions of the proxy core. Types are in proxy/proxy-t.h.
 * Cross-file internals carry the gh__ prefix. */
#ifndef GH_PROXY_H
#define GH_PROXY_H

#include "proxy/proxy-t.h"

/* server.c: runs until stopped; returns the process exit code. Takes
 * ownership of cfg. */
int gh_server_run(const char *config_path, gh_config_t *cfg);
gh_snapshot_t *gh__snapshot_new(gh_server_t *srv, gh_shared_t *sh);
void gh__snapshot_retain(gh_snapshot_t *s);
void gh__snapshot_release(gh_snapshot_t *s);
void gh__server_conn_closed(gh_server_t *srv, gh_conn_t *c);
/* While stopping: finishes the stop once nothing is left to drain. */
void gh__server_check_stopped(gh_server_t *srv);
/* Counts one more client connection open (in any worker); returns how many
 * are open now. gh__server_conn_closed counts it out. */
unsigned gh__conns_opened(void);
/* The workers: how many run, and worker i (NULL past the last). */
unsigned gh__nworkers(void);
gh_server_t *gh__worker(unsigned i);
/* Runs fn(w, arg, slot) on every worker's own thread (the caller's own
 * directly), slot being out + w->worker * size, and waits for them, at most
 * a second; the slots of workers that did not answer stay zero. arg
 * (argsize bytes) is copied. For the admin listener's pages, which sum what
 * every worker holds. */
void gh__workers_gather(gh_server_t *self, void (*fn)(gh_server_t *w, const void *arg, void *slot),
                        const void *arg, size_t argsize, void *out, size_t size);

/* conn.c: the client side of HTTP/1.1. */
void gh__conn_accept(gh_listener_t *l);
/* The response is fully written (or the request ended otherwise): log it,
 * then carry on with the next request or close. */
void gh__conn_request_done(gh_conn_t *c);
/* Close the client connection now, without a clean end. */
void gh__conn_abort(gh_conn_t *c);
void gh__conn_set_deadline(gh_conn_t *c, enum gh_deadline d);
/* Re-evaluates whether the client should be read now. */
void gh__conn_update_read(gh_conn_t *c);
void gh__conn_close_idle(gh_conn_t *c);
/* Writes to the client with a write request of its own (w->data is c);
 * cb gives it back with gh__wreq_put. 0, or a libuv error and no write. */
int gh__conn_write(gh_conn_t *c, const uv_buf_t *bufs, unsigned n, gh_write_cb cb);
/* The peer's address as text (at most 46 characters and a NUL). */
void gh__conn_peer_text(const gh_conn_t *c, char out[48]);
/* The worker's deadline heap (proxy/conn.c): made with the loop, closed
 * at stop once no connection is left. */
void gh__deadlines_init(gh_server_t *srv);
void gh__deadlines_close(gh_server_t *srv);
/* Ends HTTP on c (its request is logged and freed, its timer closed) and
 * returns its stream for a tunnel session; the read buffer stays until
 * gh__conn_detach_done. */
gh_stream_t *gh__conn_detach(gh_conn_t *c);
void gh__conn_detach_done(gh_conn_t *c);
/* A write callback that frees its malloc'd request. */
void gh__free_write_req(gh_write_req_t *w, int status);

/* request.c: how a request starts. */
/* Scans what the connection has read for a request head and starts it. */
void gh__conn_process_head(gh_conn_t *c);
/* A request with only the part before its head table zeroed. */
gh_req_t *gh__req_alloc(void);
/* CLOCK_MONOTONIC in nanoseconds (defined with the plugins, which time
 * rate limits with it). */
uint64_t gh__now_ns(void);

/* respond.c: answers made by gatehouse itself. */
void gh__respond_error(gh_req_t *r, int status);
void gh__respond(gh_req_t *r, int status, const char *content_type,
                 const char *extra_headers, const char *body, size_t body_len);
void gh__respond_redirect(gh_req_t *r, const char *location, int status);
void gh__respond_route(gh_req_t *r);     /* respond: / redirect: actions */
void gh__respond_acme(gh_req_t *r);      /* ACME HTTP-01 challenges from tls.acme_webroot */
const char *gh__status_reason(int status);

/* proxy.c: forwarding a request to an upstream and the response back. */
void gh__proxy_start(gh_req_t *r);
void gh__proxy_client_data(gh_req_t *r); /* new client bytes in conn->buf */
void gh__proxy_client_eof(gh_req_t *r);
void gh__proxy_release(gh_req_t *r);     /* the client side is going away */
void gh__proxy_timeout(gh_req_t *r, enum gh_deadline d);

/* splice.c: Content-Length bodies moved by splice(2) when both ends are
 * plain TCP (GH_SPLICE_MIN bytes or more still to come). */
#define GH_SPLICE_MIN (128 * 1024)
enum gh_splice_end {
    GH_SPLICE_DONE,             /* the whole body went through */
    GH_SPLICE_UPSTREAM_ENDED,   /* a response: the upstream closed before the end */
    GH_SPLICE_UPSTREAM_FAILED,
    GH_SPLICE_CLIENT_FAILED,    /* a write to the client failed */
    GH_SPLICE_CLIENT_GONE,      /* the client hung up */
    GH_SPLICE_HANDED_BACK,      /* an upload: the upstream answered or failed;
                                   the rest goes the buffered way */
};
/* Takes the rest of r's response body over if it can; false: go on with
 * the buffered path. */
bool gh__splice_start(gh_req_t *r);
/* The same for the rest of r's request body. */
bool gh__splice_upload_start(gh_req_t *r);
/* Stops it (its handles close; the TCP handles may be used at once). */
void gh__splice_end(gh_req_t *r);
/* proxy.c: where a body that splice.c took over ended. */
void gh__proxy_splice_done(gh_req_t *r, bool upload, enum gh_splice_end why);

/* upstream.c: server choice, pools and connections. */
typedef void (*gh_uconn_ready_cb)(gh_req_t *r, gh_uconn_t *uc, int status);
/* Picks a server not yet tried and hands back a pooled or new connection
 * through cb. Returns 0, or -503 when every server is marked down, or -502
 * when every server was tried. */
int gh__upstream_acquire(gh_req_t *r, gh_uconn_ready_cb cb);
void gh__upstream_cancel(gh_req_t *r);
/* Gives a finished connection back: pooled when reusable, else closed. */
void gh__uconn_release(gh_uconn_t *uc, bool reusable);
void gh__upstream_init(gh_snapshot_t *s);
void gh__upstream_fini(gh_snapshot_t *s);
/* Closes the pooled idle connections (at stop: they would keep going-away
 * tunnel sessions open). */
void gh__upstream_close_idle(gh_snapshot_t *s);
void gh__upserver_failed(gh_upserver_t *srv, uint64_t now);

/* headers.c: heads that gatehouse writes. Each returns a malloc'd buffer. */
char *gh__build_upstream_head(gh_req_t *r, size_t *len);
/* rh is the scanned upstream response head (slices into buf). */
char *gh__build_response_head(gh_req_t *r, const gh_h1_head_t *rh, size_t *len);
void gh__request_id(char out[33]);
/* Fills r->client_ip and r->client_addr from the peer and, for trusted
 * proxies, CF-Connecting-IP or X-Forwarded-For. Needs r->head. */
void gh__real_client(gh_req_t *r);

/* bufcache.c: per-thread free lists. GH_BUF_SIZE read buffers: */
void *gh__buf_get(void);
void gh__buf_put(void *b);
/* A write request for one write to a client; given back by its callback. */
gh_write_req_t *gh__wreq_get(void);
void gh__wreq_put(gh_write_req_t *w);
/* Memory for a request or a connection (uninitialised). */
gh_req_t *gh__req_mem_get(void);
void gh__req_mem_put(gh_req_t *r);
gh_conn_t *gh__conn_mem_get(void);
void gh__conn_mem_put(gh_conn_t *c);
void gh__buf_cache_clear(void);

/* accesslog.c */
int gh__accesslog_open(const gh_config_t *cfg);
void gh__accesslog_write(gh_req_t *r);
void gh__accesslog_flush(void);

#endif
