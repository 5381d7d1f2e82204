/* Internals shared by the files of tls/: the server and client contexts, the
 * certificate name table used for SNI, and the settings every SSL_CTX gets.
 * Not for use outside tls/ (unit tests may include it). */
#ifndef GH_TLS_INT_H
#define GH_TLS_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include "tls/tls.h"

/* One DNS name of a certificate: lower case, "*." kept for wildcards. */
typedef struct gh__tls_name {
    char *name;
    size_t cert;            /* index into gh_tls_server.ctx */
} gh__tls_name_t;

/* Shared by the listeners of one config snapshot and referenced by every
 * stream created from it: a reload frees the snapshot's reference while
 * connections in the middle of a handshake still need the SNI table. */
struct gh_tls_server {
    atomic_int refs;
    SSL_CTX **ctx;          /* one per tls.certificates pair, same settings */
    size_t nctx;
    gh__tls_name_t *names;  /* sorted by name; first certificate wins a tie */
    size_t nnames;
};

/* The last session per peer name, so new upstream connections resume
 * (one round trip and no certificate check instead of a full handshake). */
#define GH_TLS_CLIENT_SESSIONS 16

struct gh_tls_client {
    atomic_int refs;
    SSL_CTX *ctx;
    bool verify;
    pthread_mutex_t mu;     /* workers share a client */
    struct {
        char *key;          /* the sni the stream was made with */
        SSL_SESSION *sess;
    } sessions[GH_TLS_CLIENT_SESSIONS];
    unsigned next_slot;
};

/* Protocol versions, suites, groups and options for both sides: TLS 1.2 and
 * 1.3 only (min_version 0x0304 makes it 1.3 only), forward-secret AEAD suites,
 * no compression, no renegotiation, buffers released when idle. Returns 0 or
 * -1 with a reason in err. */
int gh__tls_ctx_common(SSL_CTX *ctx, int min_version, char *err, size_t errlen);

/* Installs the process-wide rotating session ticket keys on a server ctx. */
int gh__tls_tickets_install(SSL_CTX *ctx);
/* For tests: moves the ticket key clock forward by seconds. */
void gh__tls_tickets_advance(long seconds);

/* The index in t->ctx of the certificate that covers host (exact DNS name
 * first, then a one-label wildcard), or -1. host need not be lower case. */
long gh__tls_server_lookup(const gh_tls_server_t *t, const char *host);

void gh__tls_server_retain(gh_tls_server_t *t);
void gh__tls_server_release(gh_tls_server_t *t);
/* A session to resume with for key (the stream's sni), referenced for the
 * caller, or NULL. Streams set key as the SSL's app data, where the
 * new-session callback finds it. */
SSL_SESSION *gh__tls_client_session(gh_tls_client_t *t, const char *key);
/* Keeps sess (taking the caller's reference) as the one to resume key with,
 * if it is resumable and not already kept; returns 1 if the reference was
 * taken, 0 if the caller still owns it. */
int gh__tls_client_session_put(gh_tls_client_t *t, const char *key, SSL_SESSION *sess);

void gh__tls_client_retain(gh_tls_client_t *t);
void gh__tls_client_release(gh_tls_client_t *t);

/* The DNS names a certificate is valid for, lower case: its subjectAltName
 * DNS entries, or its subject CN when it has no DNS entry at all. Returns the
 * count, names in *out (each and the array malloc'd), or -1 on allocation
 * failure. */
long gh__tls_cert_names(X509 *cert, char ***out);

/* Formats the first error on OpenSSL's queue of this thread ("no start line")
 * into buf and clears the queue; fallback when the queue is empty. */
const char *gh__tls_errstr(char *buf, size_t len, const char *fallback);

/* Empties this thread's OpenSSL error queue, as SSL_get_error needs before
 * each I/O call. ERR_clear_error walks every slot of the queue even when it
 * is empty (a few hundred instructions, several times a request), so it
 * runs only when there is something to clear. */
static inline void gh__tls_clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* The SSL of a TLS stream, for tests and diagnostics. */
SSL *gh__tls_stream_ssl(const gh_stream_t *s);

#endif
