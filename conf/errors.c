/* The error list filled while loading a config (conf/config.h).
 * Formatting: a loc with a line gives "FILE:LINE:COL: message"; a loc with
 * line 0 gives "FILE: message" (errors about the whole file); a NULL loc adds
 * the message as it is, for callers that format the whole line themselves. */
#include "conf/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(void)
{
    fputs("gatehouse: out of memory\n", stderr);
    abort();
}

void gh_errors_init(gh_errors_t *e)
{
    memset(e, 0, sizeof(*e));
}

void gh_errors_free(gh_errors_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->lines[i]);
    free(e->lines);
    memset(e, 0, sizeof(*e));
}

static void push(gh_errors_t *e, char *line)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 8;
        char **lines = realloc(e->lines, cap * sizeof(*lines));
        if (!lines)
            oom();
        e->lines = lines;
        e->cap = cap;
    }
    e->lines[e->n++] = line;
}

void gh_errors_vadd(gh_errors_t *e, const gh_loc_t *loc, const char *fmt, va_list ap)
{
    char prefix[64 + 4096];
    int plen = 0;
    if (loc && loc->file) {
        if (loc->line)
            plen = snprintf(prefix, sizeof(prefix), "%s:%u:%u: ", loc->file,
                            (unsigned)loc->line, (unsigned)loc->col);
        else
            plen = snprintf(prefix, sizeof(prefix), "%s: ", loc->file);
        if (plen < 0)
            plen = 0;
        if ((size_t)plen >= sizeof(prefix))
            plen = (int)sizeof(prefix) - 1;     /* absurd file name: cut it */
    }

    va_list ap2;
    va_copy(ap2, ap);
    int mlen = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (mlen < 0)
        mlen = 0;

    char *line = malloc((size_t)plen + (size_t)mlen + 1);
    if (!line)
        oom();
    memcpy(line, prefix, (size_t)plen);
    line[plen] = '\0';
    if (mlen)
        vsnprintf(line + plen, (size_t)mlen + 1, fmt, ap);
    push(e, line);
    if (strncmp(line + plen, "warning", 7) == 0)
        e->nwarnings++;
}

void gh_errors_add(gh_errors_t *e, const gh_loc_t *loc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gh_errors_vadd(e, loc, fmt, ap);
    va_end(ap);
}
