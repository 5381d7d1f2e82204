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
/* As gh_tls_client_new, with errors reported at loc (the upstream's or the
 * connect entry's; gh_upstream_tls_conf_t has none of its own). conf may be
 * NULL or unset: verify against the system store. */
gh_tls_client_t *gh_tls_client_new_at(const gh_upstream_tls_conf_t *conf, const gh_loc_t *loc,
                                      gh_errors_t *errs);

/* Lifetimes: every stream holds a reference to the server or client it was
 * made from, so the *_free functions above may run (on reload) while
 * connections made from them are still open; the last one frees it. */

/* Wraps tcp (already accepted or connected) and returns the TLS stream.
 * The TLS stream takes over tcp's callbacks; closing the TLS stream closes
 * tcp, and the TLS stream's on_close runs after tcp is closed. The
 * handshake starts with read_start (server) or at once (client); writes
 * issued before it completes are queued. Idle connections keep no
 * OpenSSL buffers (SSL_MODE_RELEASE_BUFFERS). */
gh_stream_t *gh_tls_stream_server(gh_tls_server_t *t, gh_tcp_stream_t *tcp);
gh_stream_t *gh_tls_stream_client(gh_tls_client_t *t, gh_tcp_stream_t *tcp, const char *sni);
/* As gh_tls_stream_server, for a connection whose first bytes were read
 * before TLS began (a PROXY protocol header came first): head[0..len) is
 * what followed the header in that read, and is handed to OpenSSL before
 * anything tcp delivers later. Stop reading tcp before calling this. */
gh_stream_t *gh_tls_stream_server_prefixed(gh_tls_server_t *t, gh_tcp_stream_t *tcp,
                                           const void *head, size_t len);
/* Details of the three above:
 * - The TLS stream starts with tcp's data, on_alloc, on_read and on_close;
 *   set the ones it should have after wrapping. Do not use tcp directly
 *   afterwards (only through the TLS stream). NULL (no memory) leaves tcp
 *   untouched and still the caller's to close.
 * - The TLS stream is allocated here and freed by this module right after
 *   its on_close returns; tcp may be freed from that on_close.
 * - sni (client): sent as SNI and, unless verify is false, the name the
 *   certificate must cover (an IP literal is checked against IP SANs and not
 *   sent). NULL sends no SNI and checks only the chain.
 * - Write callbacks of writes queued before the handshake run with the
 *   handshake's error if it fails, so a caller waiting on a write learns of
 *   it; the read callback gets UV_EPROTO when reading. A peer that closes
 *   without close_notify at a record boundary reads as UV_EOF.
 * - shutdown sends close_notify after queued writes, then half-closes TCP;
 *   reading goes on. */

/* After the handshake: the SNI name the client sent (or NULL), and the
 * negotiated protocol version ("TLSv1.3"). */
const char *gh_tls_stream_sni(const gh_stream_t *s);
const char *gh_tls_stream_version(const gh_stream_t *s);
/* After the handshake: "http/1.1" if ALPN chose it, else NULL. */
const char *gh_tls_stream_alpn(const gh_stream_t *s);
/* Why the stream failed, for logs, or NULL: "certificate verify failed:
 * self-signed certificate", "handshake failed: wrong version number",
 * "connection closed during the handshake". NULL for non-TLS streams. */
const char *gh_tls_stream_error(const gh_stream_t *s);

/* Counters for metrics: handshakes completed and failed since start. */
typedef struct gh_tls_stats {
    unsigned long long handshakes, handshake_failures;
} gh_tls_stats_t;
void gh_tls_stats(gh_tls_stats_t *out);
/* gh_tls_stats counts client-facing (server side) handshakes only; a failure
 * is one that had begun (the peer sent a byte) and did not complete, whether
 * by garbage, an alert or a close. These are the upstream-side ones. The
 * counters are atomic: any thread may update and read them. */
void gh_tls_client_stats(gh_tls_stats_t *out);

/* Frees the write chunks this thread keeps for reuse; each thread that ran
 * TLS streams calls it once its loop is done. */
void gh_tls_thread_done(void);

#endif
