/* The growable output buffer and the escaping that /metrics, /status and
 * /status.json share (declared in proxy/metrics.h): every byte taken from a
 * config or a request goes through gh_obuf_esc on its way out. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/metrics.h"

static bool obuf_reserve(gh_obuf_t *b, size_t n)
{
    if (b->oom)
        return false;
    if (b->cap - b->len > n)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len <= n) {
        if (cap > SIZE_MAX / 2) {
            b->oom = true;
            return false;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void gh_obuf_put(gh_obuf_t *b, const char *s, size_t n)
{
    if (!obuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void gh_obuf_puts(gh_obuf_t *b, const char *s)
{
    gh_obuf_put(b, s, strlen(s));
}

void gh_obuf_printf(gh_obuf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        gh_obuf_put(b, tmp, (size_t)n);
        return;
    }
    if (!obuf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (NUL-terminated), 0 if invalid:
 * overlong forms, surrogates and code points past U+10FFFF included. */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static const char *esc_char(unsigned char c, gh_esc_t ctx, char tmp[8])
{
    switch (ctx) {
    case GH_ESC_PROM_LABEL:
        return c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : NULL;
    case GH_ESC_PROM_HELP:
        return c == '\\' ? "\\\\" : c == '\n' ? "\\n" : NULL;
    case GH_ESC_JSON:
        if (c == '"' || c == '\\') {
            tmp[0] = '\\', tmp[1] = (char)c, tmp[2] = '\0';
            return tmp;
        }
        if (c == '\n')
            return "\\n";
        if (c < 0x20 || c == 0x7f) {
            snprintf(tmp, 8, "\\u%04x", c);
            return tmp;
        }
        return NULL;
    case GH_ESC_HTML:
        switch (c) {
        case '&': return "&amp;";
        case '<': return "&lt;";
        case '>': return "&gt;";
        case '"': return "&quot;";
        case '\'': return "&#39;";
        case '\t': case '\n': case '\r': return NULL;
        default: return c < 0x20 || c == 0x7f ? "\xEF\xBF\xBD" : NULL;
        }
    }
    return NULL;
}

void gh_obuf_esc(gh_obuf_t *b, const char *s, gh_esc_t ctx)
{
    if (!s)
        return;
    const unsigned char *p = (const unsigned char *)s, *run = p;
    while (*p) {
        size_t n = utf8_seq(p);
        char tmp[8];
        const char *rep = n == 0 ? "\xEF\xBF\xBD" : n == 1 ? esc_char(*p, ctx, tmp) : NULL;
        if (!rep) {
            p += n;
            continue;
        }
        gh_obuf_put(b, (const char *)run, (size_t)(p - run));
        gh_obuf_puts(b, rep);
        p += n ? n : 1;
        run = p;
    }
    gh_obuf_put(b, (const char *)run, (size_t)(p - run));
}

void gh_obuf_free(gh_obuf_t *b)
{
    free(b->p);
    *b = (gh_obuf_t){ 0 };
}
