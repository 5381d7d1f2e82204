/* Settings shared by server and client contexts, certificate names, and
 * OpenSSL error text. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "tls/tls-int.h"

/* TLS 1.2: ECDHE key exchange (forward secrecy) with AEAD ciphers only. The
 * order is the server's preference: AES-GCM is fastest where the CPU has
 * AES instructions; SSL_OP_PRIORITIZE_CHACHA still gives ChaCha20 to clients
 * that put it first (phones without them). */
static const char tls12_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/* TLS 1.3: OpenSSL's defaults, written out so that a system-wide
 * openssl.cnf cannot add or remove suites behind our back. All are AEAD and
 * every 1.3 key exchange is forward secret. */
static const char tls13_suites[] =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";

static const char groups[] = "X25519:P-256:P-384";

const char *gh__tls_errstr(char *buf, size_t len, const char *fallback)
{
    unsigned long e = ERR_peek_error();
    if (!e) {
        snprintf(buf, len, "%s", fallback);
        return buf;
    }
    const char *reason = ERR_reason_error_string(e);
    if (reason)
        snprintf(buf, len, "%s", reason);
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

int gh__tls_ctx_common(SSL_CTX *ctx, int min_version, char *err, size_t errlen)
{
    int min = min_version >= 0x0304 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(ctx, min) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
        gh__tls_errstr(err, errlen, "cannot set protocol versions");
        return -1;
    }
    if (!SSL_CTX_set_cipher_list(ctx, tls12_ciphers) ||
        !SSL_CTX_set_ciphersuites(ctx, tls13_suites)) {
        gh__tls_errstr(err, errlen, "cannot set cipher suites");
        return -1;
    }
    if (!SSL_CTX_set1_groups_list(ctx, groups)) {
        gh__tls_errstr(err, errlen, "cannot set key exchange groups");
        return -1;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
    /* RELEASE_BUFFERS: OpenSSL frees its 16 kB+ record buffers whenever they
     * are empty, which is what keeps an idle connection small. The two write
     * modes let SSL_write take data in pieces from buffers that move; our
     * BIO never refuses bytes, so they are insurance rather than needed. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One TLS 1.3 ticket per handshake rather than two: a resumed client
     * gets a fresh one every time (tickets.c), and each costs the handshake
     * a session encoding, an encryption and an HMAC. */
    SSL_CTX_set_num_tickets(ctx, 1);
    return 0;
}

/* Appends a lower-cased copy of s[0..len) to the list, dropping one trailing
 * dot. Names with NUL bytes or empty ones are skipped: they can only be
 * attempts to fool a matcher. */
static int add_name(char ***list, long *n, const unsigned char *s, size_t len)
{
    if (len && s[len - 1] == '.')
        len--;
    if (!len || memchr(s, '\0', len))
        return 0;
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    for (size_t i = 0; i < len; i++)
        copy[i] = (char)tolower(s[i]);
    copy[len] = '\0';
    char **grown = realloc(*list, (size_t)(*n + 1) * sizeof(*grown));
    if (!grown) {
        free(copy);
        return -1;
    }
    grown[(*n)++] = copy;
    *list = grown;
    return 0;
}

long gh__tls_cert_names(X509 *cert, char ***out)
{
    char **list = NULL;
    long n = 0;
    int failed = 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type != GEN_DNS)
            continue;
        const ASN1_STRING *s = g->d.dNSName;
        if (add_name(&list, &n, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s)) < 0)
            failed = 1;
    }
    GENERAL_NAMES_free(sans);

    /* RFC 6125 lets the CN stand in only when there is no DNS name at all;
     * old self-signed certificates for internal hosts still look like that. */
    if (n == 0 && !failed) {
        X509_NAME *subj = X509_get_subject_name(cert);
        int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
        if (idx >= 0) {
            unsigned char *utf8 = NULL;
            int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(
                                                     X509_NAME_get_entry(subj, idx)));
            if (len > 0 && add_name(&list, &n, utf8, (size_t)len) < 0)
                failed = 1;
            OPENSSL_free(utf8);
        }
    }
    ERR_clear_error();
    if (failed) {
        for (long i = 0; i < n; i++)
            free(list[i]);
        free(list);
        return -1;
    }
    *out = list;
    return n;
}
