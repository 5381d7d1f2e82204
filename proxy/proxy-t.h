/* Types of the proxy core: the server, config snapshots with their runtime
 * upstream state, client connections, requests and upstream connections.
 * Functions live in proxy/proxy.h. */
#ifndef GH_PROXY_T_H
#define GH_PROXY_T_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include <llhttp.h>

#include "conf/config-t.h"
#include "proxy/dheap.h"
#include "proxy/h1scan.h"
#include "proxy/stream.h"

typedef struct gh_server gh_server_t;
typedef struct gh_snapshot gh_snapshot_t;
typedef struct gh_upstream gh_upstream_t;
typedef struct gh_upserver gh_upserver_t;
typedef struct gh_uconn gh_uconn_t;
typedef struct gh_conn gh_conn_t;
typedef struct gh_req gh_req_t;
typedef struct gh_listener gh_listener_t;
typedef struct gh_tunnel_rt gh_tunnel_rt_t;
typedef struct gh_shared gh_shared_t;
struct gh_tsession;
struct gh_xloop;
struct gh_connector;

/* Read buffers: heads must fit whole, bodies move through in pieces. */
#define GH_BUF_SIZE (64 * 1024)

/* What every worker shares of one config: the config itself, its plugin
 * instances and certificates, and the verdicts of the active health checks
 * (worker 0 runs them; every worker's balancer reads them). Freed when the
 * last worker's snapshot of it is released. */
struct gh_shared {
    atomic_int refs;
    gh_config_t *cfg;
    bool plugins_created;   /* gh_plugins_create ran for cfg */
    struct gh_tls_server *tls;  /* certificates of this config, if any */
    atomic_bool *health_down;   /* one per server of every upstream, in order */
    atomic_uint *active;        /* requests on each server now, same order */
    atomic_uint *rr;            /* round-robin turn, one per upstream */
};

/* A config and the runtime state one worker built for it. Requests hold a
 * reference to the snapshot they started on; reload swaps server->snap.
 * Used by its own worker's thread only. */
struct gh_snapshot {
    int refcount;
    gh_server_t *server;
    gh_shared_t *shared;
    gh_config_t *cfg;       /* shared->cfg */
    gh_upstream_t *ups;     /* one per cfg->upstreams[i] */
    struct gh_tls_server *tls;  /* shared->tls */
};

struct gh_upserver {
    gh_upstream_t *up;
    const gh_server_conf_t *conf;
    struct sockaddr_storage addr;
    bool have_addr;
    bool numeric;           /* addr never expires */
    uint64_t addr_expires;  /* uv_now() ms */
    gh_uconn_t *idle;       /* pooled connections, most recent first */
    unsigned nidle;
    atomic_uint *active;    /* requests using it now, in every worker (least_conn) */
    unsigned fails;         /* consecutive connect failures */
    uint64_t down_until;    /* passive marking, uv_now() ms */
    /* active health checks (proxy/health.c) */
    bool health_down;       /* failed `fall` checks in a row; skipped until `rise` pass */
    atomic_bool *shared_down;          /* health_down as every worker sees it */
    unsigned health_ok, health_fail;   /* consecutive results */
    uint64_t health_last_ms;           /* uv_now() of the last result */
    char health_error[96];             /* why the last check failed */
    void *health;                      /* the checker's own state */
};

struct gh_upstream {
    const gh_upstream_conf_t *conf;
    struct gh_tls_client *tls;  /* for https:// servers */
    gh_upserver_t *servers;
    size_t n;
    atomic_uint *rr;        /* shared by every worker */
};

enum gh_uconn_state { GH_UC_CONNECTING, GH_UC_IDLE, GH_UC_ACTIVE, GH_UC_CLOSED };

struct gh_uconn {
    gh_tcp_stream_t s;
    gh_stream_t *stream;    /* &s.base, or a TLS stream over it */
    enum gh_uconn_state state;
    gh_upserver_t *srv;     /* NULL once its snapshot is gone */
    gh_req_t *req;          /* while active */
    gh_uconn_t *prev, *next;/* pool links while idle */
    char *buf;
    size_t len;
    gh_write_req_t wreq;
    unsigned requests;      /* exchanges done on this connection */
};

enum gh_conn_state {
    GH_C_PROXY,             /* waiting for a PROXY protocol header */
    GH_C_HEAD,              /* waiting for (more of) a request head */
    GH_C_REQUEST,           /* a request is being handled */
    GH_C_TUNNEL,            /* a connector's tunnel session owns the stream */
    GH_C_CLOSING,
};

/* What the conn timer is measuring. */
enum gh_deadline {
    GH_T_NONE,
    GH_T_HEADER,
    GH_T_IDLE,
    GH_T_CONNECT,
    GH_T_FIRST_BYTE,
    GH_T_STREAM,
    GH_T_LINGER,            /* closing: the client's last bytes are drained */
};

struct gh_listener {
    gh_server_t *server;
    uv_tcp_t tcp;
    const gh_listen_conf_t *conf;   /* of the snapshot it was opened with */
    gh_listener_t *next;
    bool redirect_https;
    bool tls;
    bool admin;             /* the admin listener: requests go to proxy/admin.c */
    gh_listen_conf_t own;   /* admin: conf points here, not into a config */
    char own_address[64];
};

/* A peer address, IPv4 or IPv6, in the space it needs. */
typedef union gh_sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} gh_sockaddr_t;

/* A client connection. An idle keep-alive connection is this struct and
 * nothing else (its read buffer goes back while it waits), so it is kept
 * small: no timer of its own (deadlines live in the worker's heap, see
 * proxy/conn.c), no write request (taken per write), the peer address in
 * the 28 bytes an IPv6 address needs. */
struct gh_conn {
    gh_tcp_stream_t s;
    gh_stream_t *stream;    /* &s.base, or a TLS stream over it */
    gh_server_t *server;
    unsigned char state;    /* enum gh_conn_state */
    unsigned char deadline; /* enum gh_deadline: what timer_at is for */
    bool redirect_https;
    bool admin, tls;            /* copied from the listener at accept */
    bool reading;
    bool peer_eof;          /* client half-closed */
    uint32_t heap_idx;      /* 1-based place in the deadline heap; 0: not there */
    unsigned nrequests;
    uint64_t deadline_at;   /* uv_now() ms when the current deadline expires */
    uint64_t timer_at;      /* when its heap entry falls due */
    uint64_t last_io;       /* uv_now() of the last byte either way, for stream_idle */
    char *buf;              /* read buffer, GH_BUF_SIZE or more */
    uint32_t cap, off, len; /* unconsumed bytes are buf[off..len) */
    gh_sockaddr_t peer;
    gh_req_t *req;
    struct gh_tsession *tsess;  /* GH_C_TUNNEL */
    gh_conn_t *prev, *next; /* server->conns */
};

enum gh_req_phase {
    GH_R_ROUTING,
    GH_R_CONNECTING,
    GH_R_SENDING,           /* head sent or being sent, body streaming */
    GH_R_WAITING,           /* request sent, waiting for the response head */
    GH_R_RESPONDING,        /* response head sent, body streaming */
    GH_R_TUNNEL,            /* after 101: bytes both ways */
    GH_R_LOCAL,             /* answered by gatehouse itself */
    GH_R_DONE,
};

struct gh_req {
    gh_conn_t *conn;
    gh_snapshot_t *snap;
    const gh_route_conf_t *route;
    enum gh_req_phase phase;
    uint64_t start_ns;
    char request_id[48];
    char client_ip[48];     /* real client: trusted proxies applied */
    char peer_ip[48];       /* the connection's peer */
    gh_sockaddr_t client_addr;

    /* copies for logs and redirects */
    char method[24];
    char *host;             /* normalised host */
    char *path;             /* normalised path */
    char *query;            /* raw query without '?', or NULL */
    char *user_agent, *referer;
    char *strs;             /* storage for the strings above */

    bool http10;
    bool client_keep_alive; /* the client may send another request after this one */
    bool upgrade;           /* asked for a protocol upgrade */
    bool head_method;
    bool has_body;
    bool body_chunked;
    bool req_body_done;     /* client message fully read */
    bool req_sent;          /* client message fully written upstream */
    bool resp_started;      /* response head written to the client */
    bool resp_done;         /* upstream message complete */
    bool resp_close;        /* close the client connection after the response */
    bool resp_chunked;      /* we frame the response body as chunked */
    bool expect_continue;
    bool client_writing;    /* a write to the client is in flight */
    bool upstream_writing;  /* a write upstream is in flight */
    bool retried_stale;
    unsigned char refused_retries;  /* tunnel streams refused so far */
    bool connect_timed_out;
    int status;
    uint64_t body_bytes;    /* request body bytes so far */
    uint64_t body_remaining;/* Content-Length request body still to come */
    enum { GH_BODY_NONE, GH_BODY_LENGTH, GH_BODY_CHUNKED, GH_BODY_CLOSE } resp_body;
    uint64_t resp_remaining;/* GH_BODY_LENGTH: response bytes still to come */
    bool uc_keep_alive;     /* the upstream allows reuse after this response */
    uint64_t bytes_in, bytes_out;
    uint64_t bytes_spliced; /* of bytes_in and bytes_out, moved by splice (proxy/splice.c) */
    struct gh_splice *splice; /* while it moves a body */
    bool upload_handed_back;  /* splice.c gave the upload back: it stays buffered */

    gh_upstream_t *up;
    gh_upserver_t *srv;
    const char *upstream_addr; /* last server tried, for the log */
    gh_uconn_t *uc;
    uint32_t tried;         /* bitmask of server indexes already tried (first 32) */
    unsigned attempts;
    struct gh_gai *gai;     /* DNS lookup in flight */

    char *uhead;            /* request head as sent upstream (kept for retries) */
    size_t uhead_len;
    bool uhead_sent;
    bool too_large;         /* request body went over max_body_bytes */
    bool resp_head_parsed;  /* upstream response head seen (not 1xx) */
    bool resp_head_pending; /* rhead still to be written with the next body bytes */
    bool tunnel_up_eof, tunnel_down_eof;
    size_t uc_consumed;     /* bytes of uc->buf already handed to llhttp */

    /* request body on its way upstream */
    char *qout;             /* chunk framing buffer */
    size_t qout_len;
    uv_buf_t qiov[4];
    unsigned nqiov;
    /* response on its way to the client */
    char *pout;
    size_t pout_len;
    uv_buf_t piov[6];
    unsigned npiov;
    char *rhead;            /* response head as sent to the client */
    size_t rhead_len;

    /* chunked bodies only: the request's and the response's decoders */
    llhttp_t qparser, pparser;

    /* plugins of the route, when it has any */
    struct gh_preq *preq;
    size_t plugins_ran;
    char *preq_strs;        /* NUL-terminated copies of the headers for plugins */

    /* Last, and not zeroed on allocation: the scanner fills what it uses. */
    gh_h1_head_t head;      /* slices into conn->buf, valid until the head is consumed */
};

/* One worker: an event loop thread with its own listeners (SO_REUSEPORT
 * sockets of the same addresses), connections, snapshot and upstream pools.
 * Worker 0 is the main thread; it also takes signals, reloads, serves the
 * admin listener, runs health checks and connectors. */
struct gh_server {
    uv_loop_t *loop;
    unsigned worker;        /* index; 0 is the main thread */
    struct gh_xloop *inbox; /* work posted by other workers */
    bool stop_done;         /* finish_stop ran */
    gh_snapshot_t *snap;    /* current */
    char *config_path;
    gh_listener_t *listeners;
    gh_listener_t *admin;   /* the admin listener, if configured */
    gh_conn_t *conns;       /* every open client connection */
    unsigned nconns;
    uv_signal_t sig_hup, sig_term, sig_int;
    uv_timer_t shutdown_timer;
    uv_timer_t deadline_timer;  /* fires for the earliest entry of the heap */
    bool deadline_timer_on;
    uint64_t deadline_timer_at;
    gh_dheap_t deadlines;   /* connections by timer_at (proxy/dheap.h) */
    uv_prepare_t flush;     /* flushes the access log once per loop turn */
    bool stopping;
    int exit_code;
    gh_tunnel_rt_t *tunnels;        /* connector sessions, by tunnel name */
    struct gh_connector **connectors;   /* this process dialing out */
    size_t nconnectors;
    struct gh_connector **retiring;     /* draining after a reload or at stop */
    size_t nretiring;
    struct gh_connector **superseded;   /* replaced by a reload, kept until the
                                           replacements are up */
    size_t nsuperseded;
    uv_timer_t *swap_timer;             /* watches the replacements; NULL if none */
    uint64_t swap_deadline;             /* loop time when superseded go anyway */
    uint64_t reloads_ok, reloads_failed;
    uint64_t started_ms;    /* wall clock at start, for /status */
    uint64_t last_reload_ms;/* wall clock of the last reload attempt */
    bool last_reload_ok;
    char last_reload_error[512];
};

#endif
