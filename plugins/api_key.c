/* api_key: requests must present a key whose SHA-256 is configured.
 *
 *   type: api_key
 *   keys:
 *     - { id: openwebui, hash: "sha256:9f86d0..." }
 *   keys_file: /etc/gatehouse/keys      # "ID sha256:HEX" lines (plugins/keys.c)
 *   forward_key_id: X-Gatehouse-Key-Id  # optional
 *
 * The key is read from `Authorization: Bearer K`, else from `X-API-Key: K`.
 * Only hashes are stored, so a leaked config leaks no key; the hash of the
 * presented key is compared with every configured hash in constant time and
 * without stopping at a match, so response time says nothing about which
 * hash matched or how much of it. Neither header ever goes upstream; the key
 * id (never the key) goes into req->key_id and, if asked, a request header.
 * No key material is logged: errors about hashes never echo the value.
 *
 * keys_file is read again whenever a config is created, so a reload picks up
 * its changes even when the YAML did not change; that is also why create()
 * never takes over the previous instance. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "conf/config.h"
#include "conf/node.h"
#include "plugins/builtin.h"
#include "plugins/keys.h"

typedef struct api_key {
    gh__keyset_t keys;
    char *forward;          /* forward_key_id, or NULL */
    EVP_MD *md;             /* fetched once: not per request */
    atomic_ullong failures;
} api_key_t;

static void ak_free(api_key_t *a)
{
    if (!a)
        return;
    gh__keyset_free(&a->keys);
    free(a->forward);
    EVP_MD_free(a->md);
    free(a);
}

/* The whole definition, keys_file read, into a new instance; NULL after
 * reporting every problem. */
static api_key_t *decode(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    static const char *const keys[] = { "type", "keys", "keys_file", "forward_key_id", NULL };
    char where[160];
    snprintf(where, sizeof(where), "plugin '%s'", pc->name);
    api_key_t *a = calloc(1, sizeof(*a));
    if (!a)
        abort();
    int rc = gh_node_check_keys(errs, pc->node, keys, where);
    const gh_node_t *list = gh_node_get(pc->node, "keys");
    const gh_node_t *file = gh_node_get(pc->node, "keys_file");
    const gh_node_t *fwd = gh_node_get(pc->node, "forward_key_id");
    if (!list && !file) {
        gh_errors_add(errs, &pc->loc, "plugin '%s' needs keys or keys_file", pc->name);
        rc = -1;
    }
    if (list && gh__keyset_add_yaml(&a->keys, list, pc->name, errs) < 0)
        rc = -1;
    const char *path;
    if (file && (gh_node_string(errs, file, &path) < 0 ||
                 gh__keyset_add_file(&a->keys, file, path, errs) < 0))
        rc = -1;
    if (rc == 0 && gh__keyset_check_unique(&a->keys, errs) < 0)
        rc = -1;
    const char *name;
    if (fwd) {
        if (gh_node_string(errs, fwd, &name) < 0) {
            rc = -1;
        } else if (!gh__header_name_ok(name)) {
            gh_node_error(errs, fwd, "invalid header name '%s'", name);
            rc = -1;
        } else if (!(a->forward = strdup(name))) {
            abort();
        }
    }
    if (rc < 0) {
        ak_free(a);
        return NULL;
    }
    return a;
}

static int ak_check(const gh_plugin_conf_t *pc, gh_errors_t *errs)
{
    api_key_t *a = decode(pc, errs);
    ak_free(a);
    return a ? 0 : -1;
}

static void *ak_create(const gh_plugin_conf_t *pc, void *previous, gh_errors_t *errs)
{
    api_key_t *a = decode(pc, errs);
    if (!a)
        return NULL;
    if (!(a->md = EVP_MD_fetch(NULL, "SHA256", NULL))) {
        gh_errors_add(errs, &pc->loc, "plugin '%s': SHA-256 is not available from OpenSSL",
                      pc->name);
        ak_free(a);
        return NULL;
    }
    /* An unchanged definition keeps counting where it was. */
    const api_key_t *prev = previous;
    atomic_init(&a->failures, prev ? atomic_load(&prev->failures) : 0);
    return a;
}

static void ak_destroy(void *inst)
{
    ak_free(inst);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* The token of `Bearer TOKEN` (scheme in any case, RFC 9110 11.1), trimmed;
 * NULL for another scheme or no token. */
static const char *bearer(const char *v, size_t *len)
{
    while (is_space(*v))
        v++;
    if (strncasecmp(v, "Bearer", 6) != 0 || !is_space(v[6]))
        return NULL;
    v += 6;
    while (is_space(*v))
        v++;
    size_t n = strlen(v);
    while (n && is_space(v[n - 1]))
        n--;
    *len = n;
    return n ? v : NULL;
}

static const char *trimmed(const char *v, size_t *len)
{
    while (is_space(*v))
        v++;
    size_t n = strlen(v);
    while (n && is_space(v[n - 1]))
        n--;
    *len = n;
    return n ? v : NULL;
}

static int reject(api_key_t *a, gh_preq_t *req, bool presented)
{
    atomic_fetch_add_explicit(&a->failures, 1, memory_order_relaxed);
    /* RFC 6750 3.1: no error code when no credentials came at all. */
    gh_preq_set_response_header(req, "WWW-Authenticate",
                                presented ? "Bearer realm=\"gatehouse\", error=\"invalid_token\""
                                          : "Bearer realm=\"gatehouse\"");
    return 401;
}

static int ak_request(void *inst, gh_preq_t *req)
{
    api_key_t *a = inst;
    /* The key must never reach the upstream: without room to say so, fail. */
    if (GH_PREQ_MAX_EDITS - req->nreq_remove < 2 || GH_PREQ_MAX_EDITS - req->nreq_set < 1 ||
        GH_PREQ_MAX_EDITS - req->nresp_set < 1)
        return 500;
    size_t len = 0;
    const char *key = NULL, *v;
    if ((v = gh_preq_header(req, "Authorization")))
        key = bearer(v, &len);
    if (!key && (v = gh_preq_header(req, "X-API-Key")))
        key = trimmed(v, &len);
    gh_preq_remove_request_header(req, "Authorization");
    gh_preq_remove_request_header(req, "X-API-Key");
    if (!key)
        return reject(a, req, false);

    uint8_t digest[32];
    unsigned dlen = 0;
    if (EVP_Digest(key, len, digest, &dlen, a->md, NULL) != 1 || dlen != sizeof(digest))
        return 500;
    /* Every hash is compared, and the match is picked with masks rather than
     * a branch, so the time taken depends on the number of keys only. */
    size_t found = 0, any = 0;
    for (size_t i = 0; i < a->keys.n; i++) {
        size_t eq = (size_t)(CRYPTO_memcmp(digest, a->keys.v[i].hash, sizeof(digest)) == 0);
        size_t mask = (size_t)0 - eq;
        found = (found & ~mask) | (i & mask);
        any |= eq;
    }
    OPENSSL_cleanse(digest, sizeof(digest));
    if (!any)
        return reject(a, req, true);

    const char *id = a->keys.v[found].id;
    size_t idlen = strlen(id);     /* ids are at most 63 bytes (keys.c) */
    memcpy(req->key_id, id, idlen + 1);
    if (a->forward)
        gh_preq_set_request_header(req, a->forward, id);
    return GH_PLUGIN_PASS;
}

static size_t ak_metrics(void *inst, const gh_plugin_conf_t *pc, char *out, size_t cap)
{
    api_key_t *a = inst;
    /* Plugin names are letters, digits, '-', '_' and '.' (conf/). */
    int w = snprintf(out, cap, "gatehouse_auth_failures_total{plugin=\"%s\"} %llu\n", pc->name,
                     (unsigned long long)atomic_load(&a->failures));
    return w > 0 && (size_t)w < cap ? (size_t)w : 0;
}

const gh_plugin_ops_t gh__api_key_ops = {
    .type = "api_key",
    .check = ak_check,
    .create = ak_create,
    .destroy = ak_destroy,
    .on_request = ak_request,
    .metrics = ak_metrics,
};
