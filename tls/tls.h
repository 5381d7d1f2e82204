/* TLS over the gh_stream_t interface (OpenSSL 3 with memory BIOs on top of
 * a plain TCP stream), server contexts with SNI certificate choice, and
 * client contexts for https:// upstreams.
 *
 * Conventions: constructors return NULL on failure and add
 * "FILE:LINE:COL: message" lines to errs (locations from the config);
 * streams report errors through their read callback like TCP (negative
 * libuv codes; a failed handshake or a bad record is UV_EPROTO). */
#ifndef GH_TLS_H
#define GH_TLS_H

#include "conf/config-t.h"
#include "proxy/stream.h"

typedef struct gh_tls_server gh_tls_server_t;
typedef struct gh_tls_client gh_tls_client_t;

/* Loads every tls.certificates pair of cfg (key must match cert), with
 * tls.min_version, forward-secret AEAD suites only, server preference,
 * ALPN "http/1.1", session tickets with rotating keys. Certificates are
 * chosen by SNI: exact SAN, then wildcard SAN, then the first pair.
 * Warnings (a certificate expiring within 14 days, a route host no
 * certificate covers) are added to errs with the prefix "warning: " and
 * counted in errs->nwarnings; they do not fail the call. */
gh_tls_server_t *gh_tls_server_new(const gh_config_t *cfg, gh_errors_t *errs);
void gh_tls_server_free(gh_tls_server_t *t);

/* For https:// upstream servers: verify against ca (or the system store)
 * unless verify is false. */
gh_tls_client_t *gh_tls_client_new(const gh_upstream_tls_conf_t *conf, gh_errors_t *errs);
void gh_tls_client_free(gh_tls_client_t *t);

/* Wraps tcp (already accepted or connected) and returns the TLS stream.
 * The TLS stream takes over tcp's callbacks; closing the TLS stream closes
 * tcp, and the TLS stream's on_close runs after tcp is closed. The
 * handshake starts with read_start (server) or at once (client); writes
 * issued before it completes are queued. Idle connections keep no
 * OpenSSL buffers (SSL_MODE_RELEASE_BUFFERS). */
gh_stream_t *gh_tls_stream_server(gh_tls_server_t *t, gh_tcp_stream_t *tcp);
gh_stream_t *gh_tls_stream_client(gh_tls_client_t *t, gh_tcp_stream_t *tcp, const char *sni);

/* After the handshake: the SNI name the client sent (or NULL), and the
 * negotiated protocol version ("TLSv1.3"). */
const char *gh_tls_stream_sni(const gh_stream_t *s);
const char *gh_tls_stream_version(const gh_stream_t *s);

/* Counters for metrics: handshakes completed and failed since start. */
typedef struct gh_tls_stats {
    unsigned long long handshakes, handshake_failures;
} gh_tls_stats_t;
void gh_tls_stats(gh_tls_stats_t *out);

#endif
