/* Session ticket keys that rotate.
 *
 * Why not OpenSSL's built-in keys: OpenSSL makes one random key per SSL_CTX
 * and keeps it for the life of the context. A proxy that runs for months
 * would encrypt every ticket with one key, and a TLS 1.2 ticket carries the
 * session's master secret: whoever reads that key from memory once can
 * decrypt every recorded resumed session since start. Forward secrecy needs
 * the key to change and the old one to be erased. The built-in keys are also
 * per context, so a reload (which builds new contexts) would throw every
 * client's ticket away, and workers with separate contexts could not resume
 * each other's sessions.
 *
 * So: one process-wide ring, shared by every server context of every
 * snapshot and worker. A key encrypts new tickets for ROTATE_S seconds, then
 * only decrypts for ROTATE_S more (a ticket it opens is renewed under the
 * current key), then it is erased. Tickets live TICKET_LIFETIME_S (the
 * session timeout), no longer than a key encrypts, so every ticket stays
 * valid for its whole life and a leaked key exposes at most two periods.
 * Rotation is lazy, done by the first handshake after the period ends. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "tls/tls-int.h"

#define ROTATE_S (2 * 3600)
#define TICKET_LIFETIME_S ROTATE_S
#define NKEYS 2

typedef struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t born;
    int used;
} ticket_key_t;

static ticket_key_t keys[NKEYS];
static unsigned cur;
static int64_t skew;        /* tests move the clock with gh__tls_tickets_advance */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec + skew;
}

/* With mu held: erases keys too old to decrypt and makes sure the current
 * key is young enough to encrypt. Returns 0, or -1 if no randomness. */
static int rotate_locked(int64_t now)
{
    for (unsigned i = 0; i < NKEYS; i++) {
        if (keys[i].used && now - keys[i].born >= 2 * ROTATE_S)
            OPENSSL_cleanse(&keys[i], sizeof(keys[i]));
    }
    if (keys[cur].used && now - keys[cur].born < ROTATE_S)
        return 0;
    unsigned next = keys[cur].used ? (cur + 1) % NKEYS : cur;
    ticket_key_t k;
    if (RAND_bytes(k.name, sizeof(k.name)) <= 0 ||
        RAND_priv_bytes(k.aes, sizeof(k.aes)) <= 0 ||
        RAND_priv_bytes(k.hmac, sizeof(k.hmac)) <= 0) {
        OPENSSL_cleanse(&k, sizeof(k));
        return -1;
    }
    k.born = now;
    k.used = 1;
    keys[next] = k;
    OPENSSL_cleanse(&k, sizeof(k));
    cur = next;
    return 0;
}

/* OpenSSL's ticket callback: enc = 1 to seal a new ticket (fill name and
 * iv, set up both contexts), 0 to open one by name. Returns 1 to go on, 2
 * to accept a ticket and issue a fresh one, 0 for "no ticket" (a full
 * handshake follows; never a failed connection). */
static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv,
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    ticket_key_t k;
    int renew = 0;

    pthread_mutex_lock(&mu);
    int64_t now = now_s();
    if (rotate_locked(now) < 0) {
        pthread_mutex_unlock(&mu);
        return 0;
    }
    if (enc) {
        k = keys[cur];
    } else {
        unsigned i;
        for (i = 0; i < NKEYS; i++) {
            if (keys[i].used && memcmp(keys[i].name, name, sizeof(keys[i].name)) == 0)
                break;
        }
        if (i == NKEYS) {
            pthread_mutex_unlock(&mu);
            return 0;
        }
        k = keys[i];
        /* Renew when the key is no longer current, and always in TLS 1.3:
         * its clients use a ticket once (RFC 8446 C.4; OpenSSL, browsers),
         * and OpenSSL sends a resumed client a new one only when asked. */
        renew = i != cur || SSL_version(s) >= TLS1_3_VERSION;
    }
    pthread_mutex_unlock(&mu);

    int ok;
    if (enc) {
        memcpy(name, k.name, sizeof(k.name));
        ok = RAND_bytes(iv, 16) > 0 &&
             EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv);
    } else {
        ok = EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv);
    }
    if (ok) {
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end(),
        };
        ok = EVP_MAC_CTX_set_params(hctx, params);
    }
    OPENSSL_cleanse(&k, sizeof(k));
    if (!ok)
        return 0;
    return renew ? 2 : 1;
}

int gh__tls_tickets_install(SSL_CTX *ctx)
{
    /* Tickets only: no server-side session cache, so resumption costs the
     * server no memory per client and works across workers. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ctx, TICKET_LIFETIME_S);
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) == 1 ? 0 : -1;
}

void gh__tls_tickets_advance(long seconds)
{
    pthread_mutex_lock(&mu);
    skew += seconds;
    pthread_mutex_unlock(&mu);
}
