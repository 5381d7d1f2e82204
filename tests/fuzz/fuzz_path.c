/* libFuzzer target for gh_path_normalize and gh_host_normalize.
 *
 * Besides the invariants (never longer, starts with '/', no dot segments,
 * a fixed point), the path result is compared with a second, deliberately
 * naive implementation that follows RFC 3986 5.2.4 rule by rule on strings,
 * so a clever in-place shortcut in normalize.c cannot drift from the RFC. */
#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "routes/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool starts(const char *s, size_t n, const char *p)
{
    size_t pl = strlen(p);
    return n >= pl && memcmp(s, p, pl) == 0;
}

/* RFC 3986 5.2.4 literally: in and out are NUL-free strings of length n and
 * *on; the input buffer is consumed from the front. */
static size_t rfc_remove_dots(const char *src, size_t n, char *out)
{
    char *buf = malloc(n + 1);
    assert(buf != NULL);
    memcpy(buf, src, n);
    const char *in = buf;
    size_t on = 0;

    while (n > 0) {
        if (starts(in, n, "../")) {
            in += 3, n -= 3;
        } else if (starts(in, n, "./")) {
            in += 2, n -= 2;
        } else if (starts(in, n, "/./")) {
            in += 2, n -= 2;
        } else if (n == 2 && starts(in, n, "/.")) {
            in += 1, n -= 1;
            buf[in - buf] = '/';
        } else if (starts(in, n, "/../")) {
            in += 3, n -= 3;
            while (on > 0 && out[--on] != '/')
                ;
        } else if (n == 3 && starts(in, n, "/..")) {
            in += 2, n -= 2;
            buf[in - buf] = '/';
            while (on > 0 && out[--on] != '/')
                ;
        } else if ((n == 1 && in[0] == '.') || (n == 2 && starts(in, n, ".."))) {
            n = 0;
        } else {
            size_t k = in[0] == '/' ? 1 : 0;
            while (k < n && in[k] != '/')
                k++;
            memcpy(out + on, in, k);
            on += k;
            in += k, n -= k;
        }
    }
    free(buf);
    return on;
}

static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static void check_path(const uint8_t *data, size_t size)
{
    char *out = malloc(size + 1), *out2 = malloc(size + 1);
    assert(out != NULL && out2 != NULL);

    ssize_t n = gh_path_normalize((const char *)data, size, out, size + 1);
    if (n < 0)
        goto done;
    size_t len = (size_t)n;
    assert(len <= size);
    assert(len >= 1 && out[0] == '/');
    assert(out[len] == '\0' && strlen(out) == len);

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        assert(c > 0x20 && c < 0x7f && c != '?' && c != '#');
        if (c == '%') {
            assert(i + 2 < len);
            unsigned v = 0;
            for (int k = 1; k <= 2; k++) {
                unsigned char d = (unsigned char)out[i + k];
                assert((d >= '0' && d <= '9') || (d >= 'A' && d <= 'F'));
                v = v * 16 + (unsigned)(d <= '9' ? d - '0' : d - 'A' + 10);
            }
            assert(v != 0 && !is_unreserved((unsigned char)v));
        }
    }
    /* No "." or ".." segment anywhere, at the end included. */
    for (size_t i = 0; i < len; i++) {
        if (out[i] != '/')
            continue;
        size_t e = i + 1;
        while (e < len && out[e] != '/')
            e++;
        size_t sl = e - i - 1;
        assert(!(sl == 1 && out[i + 1] == '.'));
        assert(!(sl == 2 && out[i + 1] == '.' && out[i + 2] == '.'));
    }

    /* A fixed point. */
    ssize_t n2 = gh_path_normalize(out, len, out2, size + 1);
    assert(n2 == n && memcmp(out, out2, len) == 0);

    /* Same as the RFC algorithm run on the input with unreserved escapes
     * decoded (which this normaliser accepted, so every escape is valid). */
    char *dec = malloc(size + 1);
    assert(dec != NULL);
    size_t dn = 0;
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '%') {
            char hex[3] = {(char)data[i + 1], (char)data[i + 2], 0};
            unsigned long v = strtoul(hex, NULL, 16);
            if (is_unreserved((unsigned char)v)) {
                dec[dn++] = (char)v;
            } else {
                dec[dn++] = '%';
                dec[dn++] = (char)(hex[0] >= 'a' ? hex[0] - 32 : hex[0]);
                dec[dn++] = (char)(hex[1] >= 'a' ? hex[1] - 32 : hex[1]);
            }
            i += 2;
        } else {
            dec[dn++] = (char)data[i];
        }
    }
    size_t rn = rfc_remove_dots(dec, dn, out2);
    /* The RFC may leave "" where a leading ".." climbed past the root;
     * ours always answers "/" there. */
    if (rn == 0)
        out2[rn++] = '/';
    assert(rn == len && memcmp(out, out2, len) == 0);
    free(dec);
done:
    free(out);
    free(out2);
}

static void check_host(const uint8_t *data, size_t size)
{
    char out[256], out2[256];
    ssize_t n = gh_host_normalize((const char *)data, size, out, sizeof(out));
    if (n < 0)
        return;
    size_t len = (size_t)n;
    assert(len >= 1 && len <= size && len < sizeof(out));
    assert(out[len] == '\0' && strlen(out) == len);
    bool v6 = out[0] == '[';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        assert(c > 0x20 && c < 0x7f && !(c >= 'A' && c <= 'Z'));
        assert(c != '/' && c != '@' && c != '%' && c != '?' && c != '#');
        if (!v6)
            assert(c != ':' && c != '[' && c != ']');
    }
    if (v6)
        assert(out[len - 1] == ']');
    ssize_t n2 = gh_host_normalize(out, len, out2, sizeof(out2));
    /* A second pass drops one more trailing dot ("a.." -> "a." -> "a"), so
     * only hosts without one are fixed points. */
    if (out[len - 1] != '.')
        assert(n2 == n && memcmp(out, out2, len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_path(data, size);
    check_host(data, size);
    return 0;
}
