/* Key sets of api_key (plugins/keys.h). */
#include "plugins/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include "conf/config.h"
#include "conf/node.h"

/* A keys file is a list of short lines; anything this big is a mistake. */
#define MAX_FILE (16u << 20)

#define HASH_MSG "expected sha256:<64 hex digits> (gatehouse hash-key prints one)"
#define ID_MSG "invalid key id (1 to 63 letters, digits, '-', '_', '.' or '@')"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int gh__parse_sha256(const char *s, size_t len, uint8_t out[32])
{
    if (len != 7 + 64 || memcmp(s, "sha256:", 7) != 0)
        return -1;
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(s[7 + 2 * i]), lo = hexval(s[8 + 2 * i]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static bool id_ok(const char *s, size_t len)
{
    if (len == 0 || len > GH__KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '@'))
            return false;
    }
    return true;
}

static gh__key_t *push(gh__keyset_t *ks)
{
    if (ks->n == ks->cap) {
        size_t cap = ks->cap ? ks->cap * 2 : 8;
        gh__key_t *v = realloc(ks->v, cap * sizeof(*v));
        if (!v)
            abort();    /* config time: as conf/ does */
        ks->v = v;
        ks->cap = cap;
    }
    gh__key_t *k = &ks->v[ks->n++];
    memset(k, 0, sizeof(*k));
    return k;
}

int gh__keyset_add_yaml(gh__keyset_t *ks, const gh_node_t *list, const char *plugin,
                        gh_errors_t *errs)
{
    static const char *const keys[] = { "id", "hash", NULL };
    if (gh_node_expect(errs, list, GH_NODE_SEQ) < 0)
        return -1;
    char where[160];
    snprintf(where, sizeof(where), "a key of plugin '%s'", plugin);
    int rc = 0;
    for (size_t i = 0; i < list->n; i++) {
        const gh_node_t *m = list->items[i], *id, *hash;
        if (gh_node_check_keys(errs, m, keys, where) < 0)
            rc = -1;
        if (m->type != GH_NODE_MAP)
            continue;
        const char *ids = NULL, *hs = NULL;
        if (!(id = gh_node_get(m, "id"))) {
            gh_node_error(errs, m, "missing 'id' in %s", where);
            rc = -1;
        } else if (gh_node_string(errs, id, &ids) < 0) {
            rc = -1;
        } else if (!id_ok(ids, id->len)) {
            gh_node_error(errs, id, ID_MSG);
            rc = -1;
            ids = NULL;
        }
        uint8_t h[32];
        if (!(hash = gh_node_get(m, "hash"))) {
            gh_node_error(errs, m, "missing 'hash' in %s", where);
            rc = -1;
        } else if (hash->type != GH_NODE_SCALAR ||
                   gh__parse_sha256(hash->str, hash->len, h) < 0) {
            gh_node_error(errs, hash, HASH_MSG);
            rc = -1;
        } else {
            hs = hash->str;
        }
        if (ids && hs) {
            gh__key_t *k = push(ks);
            memcpy(k->id, ids, id->len);
            memcpy(k->hash, h, sizeof(h));
            k->loc = m->loc;
        }
    }
    return rc;
}

/* Reads the whole of path (at most MAX_FILE bytes) into a new buffer. */
static char *slurp(const gh_node_t *at, const char *path, size_t *len, gh_errors_t *errs)
{
    /* O_NONBLOCK: a FIFO named by mistake must not hang a reload. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    int err = 0;
    char *buf = NULL;
    if (fd < 0 || fstat(fd, &st) < 0)
        err = errno;
    else if (!S_ISREG(st.st_mode))
        err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    else if (st.st_size > (off_t)MAX_FILE)
        err = EFBIG;
    if (!err) {
        size_t cap = (size_t)st.st_size + 1, n = 0;
        if (!(buf = malloc(cap)))
            abort();
        /* Read to EOF, not to st_size: the file may change under us. */
        for (;;) {
            ssize_t r = read(fd, buf + n, cap - n);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                err = errno;
                break;
            }
            if (r == 0)
                break;
            n += (size_t)r;
            if (n == cap) {
                if (cap > MAX_FILE) {
                    err = EFBIG;
                    break;
                }
                char *nb = realloc(buf, cap * 2);
                if (!nb)
                    abort();
                buf = nb;
                cap *= 2;
            }
        }
        *len = n;
    }
    if (fd >= 0)
        close(fd);
    if (err) {
        free(buf);
        gh_node_error(errs, at, "cannot read %s: %s", path, strerror(err));
        return NULL;
    }
    return buf;
}

static bool ws(char c)
{
    return c == ' ' || c == '\t';
}

/* One line (without its newline) of a keys file. */
static int parse_line(gh__keyset_t *ks, const char *path, uint32_t lineno, const char *s,
                      size_t len, gh_errors_t *errs)
{
    if (len && s[len - 1] == '\r')
        len--;
    size_t i = 0;
    while (i < len && ws(s[i]))
        i++;
    if (i == len || s[i] == '#')
        return 0;
    gh_loc_t loc = { path, lineno, (uint32_t)i + 1 };
    size_t id0 = i;
    while (i < len && !ws(s[i]))
        i++;
    size_t idlen = i - id0;
    while (i < len && ws(s[i]))
        i++;
    size_t h0 = i;
    while (i < len && !ws(s[i]))
        i++;
    size_t hlen = i - h0;
    while (i < len && ws(s[i]))
        i++;
    if (hlen == 0 || s[h0] == '#') {
        gh_errors_add(errs, &loc, "expected 'ID sha256:<64 hex digits>'");
        return -1;
    }
    if (!id_ok(s + id0, idlen)) {
        gh_errors_add(errs, &loc, ID_MSG);
        return -1;
    }
    uint8_t h[32];
    if (gh__parse_sha256(s + h0, hlen, h) < 0) {
        loc.col = (uint32_t)h0 + 1;
        gh_errors_add(errs, &loc, HASH_MSG);
        return -1;
    }
    if (i < len && s[i] != '#') {
        loc.col = (uint32_t)i + 1;
        gh_errors_add(errs, &loc, "unexpected text after the hash (comments start with '#')");
        return -1;
    }
    gh__key_t *k = push(ks);
    memcpy(k->id, s + id0, idlen);
    memcpy(k->hash, h, sizeof(h));
    k->loc = loc;
    return 0;
}

int gh__keyset_add_file(gh__keyset_t *ks, const gh_node_t *at, const char *path,
                        gh_errors_t *errs)
{
    size_t len;
    char *buf = slurp(at, path, &len, errs);
    if (!buf)
        return -1;
    int rc = 0;
    uint32_t lineno = 1;
    for (size_t start = 0; start < len; lineno++) {
        const char *nl = memchr(buf + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - buf) : len;
        if (parse_line(ks, path, lineno, buf + start, end - start, errs) < 0)
            rc = -1;
        start = end + 1;
    }
    /* The file should hold hashes only, but a key pasted by mistake must
     * not linger in freed memory. */
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

static int by_id(const void *a, const void *b)
{
    const gh__key_t *x = *(const gh__key_t *const *)a, *y = *(const gh__key_t *const *)b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x > y) - (x < y);
}

static int by_hash(const void *a, const void *b)
{
    const gh__key_t *x = *(const gh__key_t *const *)a, *y = *(const gh__key_t *const *)b;
    int c = memcmp(x->hash, y->hash, sizeof(x->hash));
    return c ? c : (x > y) - (x < y);
}

int gh__keyset_check_unique(const gh__keyset_t *ks, gh_errors_t *errs)
{
    if (ks->n < 2)
        return 0;
    /* Sorted, so that thousands of keys cost n log n, not n squared; equal
     * ones keep their order, and the later one is reported. */
    const gh__key_t **p = malloc(ks->n * sizeof(*p));
    if (!p)
        abort();
    for (size_t i = 0; i < ks->n; i++)
        p[i] = &ks->v[i];
    int rc = 0;
    qsort(p, ks->n, sizeof(*p), by_id);
    for (size_t i = 1; i < ks->n; i++) {
        if (strcmp(p[i]->id, p[i - 1]->id) == 0) {
            gh_errors_add(errs, &p[i]->loc, "duplicate key id '%s'", p[i]->id);
            rc = -1;
        }
    }
    qsort(p, ks->n, sizeof(*p), by_hash);
    for (size_t i = 1; i < ks->n; i++) {
        if (memcmp(p[i]->hash, p[i - 1]->hash, sizeof(p[i]->hash)) == 0) {
            gh_errors_add(errs, &p[i]->loc, "key '%s' has the same hash as key '%s'", p[i]->id,
                          p[i - 1]->id);
            rc = -1;
        }
    }
    free(p);
    return rc;
}

void gh__keyset_free(gh__keyset_t *ks)
{
    free(ks->v);
    memset(ks, 0, sizeof(*ks));
}
