/* Durations, sizes and rates (conf/units.h). A value is one run of decimal
 * digits and a unit suffix; no sign, no spaces, no fraction, no overflow. */
#include "conf/units.h"

#include <stddef.h>
#include <stdint.h>
#include <strings.h>

/* Reads the leading digits of s into *out; *end points past them.
 * Fails on no digits or on a value that does not fit in 64 bits. */
static int parse_digits(const char *s, uint64_t *out, const char **end)
{
    uint64_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        p++;
    }
    if (p == s)
        return -1;
    *out = v;
    *end = p;
    return 0;
}

static int mul_checked(uint64_t v, uint64_t m, uint64_t *out)
{
    if (m && v > UINT64_MAX / m)
        return -1;
    *out = v * m;
    return 0;
}

int gh_parse_duration_ms(const char *s, uint64_t *out_ms)
{
    static const struct { const char *suffix; uint64_t ms; } units[] = {
        { "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
    };
    uint64_t v;
    const char *rest;
    if (!s || parse_digits(s, &v, &rest) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcasecmp(rest, units[i].suffix) == 0)
            return mul_checked(v, units[i].ms, out_ms);
    return -1;
}

int gh_parse_size(const char *s, uint64_t *out)
{
    static const struct { const char *suffix; uint64_t mul; } units[] = {
        { "", 1 },
        { "k", 1024 }, { "kb", 1024 },
        { "m", 1024 * 1024 }, { "mb", 1024 * 1024 },
        { "g", 1024 * 1024 * 1024 }, { "gb", 1024 * 1024 * 1024 },
    };
    uint64_t v;
    const char *rest;
    if (!s || parse_digits(s, &v, &rest) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcasecmp(rest, units[i].suffix) == 0)
            return mul_checked(v, units[i].mul, out);
    return -1;
}

int gh_parse_rate(const char *s, double *per_second)
{
    uint64_t v;
    const char *rest;
    if (!s || parse_digits(s, &v, &rest) < 0 || v == 0 || rest[0] != '/')
        return -1;
    double per;
    if (strcasecmp(rest + 1, "s") == 0)
        per = 1.0;
    else if (strcasecmp(rest + 1, "m") == 0)
        per = 60.0;
    else if (strcasecmp(rest + 1, "h") == 0)
        per = 3600.0;
    else
        return -1;
    *per_second = (double)v / per;
    return 0;
}
