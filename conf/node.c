/* Decoding helpers over gh_node_t trees (conf/node.h). Every helper is silent
 * about a poisoned scalar (conf/yaml.h): its error is already in the list. */
#include "conf/node.h"

#include <stdarg.h>
#include <string.h>
#include "conf/config.h"
#include "conf/units.h"
#include "conf/yaml.h"

static const gh_node_t *find(const gh_node_t *map, const char *key, size_t which)
{
    if (!map || map->type != GH_NODE_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i < map->n; i++) {
        const gh_node_t *k = map->items[2 * i];
        if (k->type == GH_NODE_SCALAR && k->len == klen && memcmp(k->str, key, klen) == 0)
            return map->items[2 * i + which];
    }
    return NULL;
}

const gh_node_t *gh_node_get(const gh_node_t *map, const char *key)
{
    return find(map, key, 1);
}

const gh_node_t *gh_node_get_key(const gh_node_t *map, const char *key)
{
    return find(map, key, 0);
}

bool gh_node_is_null(const gh_node_t *n)
{
    if (!n || n->type != GH_NODE_SCALAR || n->quoted || gh__node_poisoned(n))
        return false;
    return n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0 ||
           strcmp(n->str, "Null") == 0 || strcmp(n->str, "NULL") == 0;
}

void gh_node_error(gh_errors_t *errs, const gh_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gh_errors_vadd(errs, &n->loc, fmt, ap);
    va_end(ap);
}

/* Optimal string alignment distance, or 3 when it is surely more than 2. */
static size_t edit_distance(const char *a, const char *b)
{
    enum { MAXLEN = 64 };
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAXLEN || lb > MAXLEN || (la > lb ? la - lb : lb - la) > 2)
        return 3;
    size_t d[MAXLEN + 1][MAXLEN + 1];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb];
}

const char *gh_did_you_mean(const char *word, const char *const *cands, size_t n)
{
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < n; i++) {
        if (!cands[i])
            continue;
        size_t d = edit_distance(word, cands[i]);
        /* "ab" is two edits from any two-letter word: not a real hint. */
        if (d < best_d && d < strlen(cands[i])) {
            best = cands[i];
            best_d = d;
        }
    }
    return best;
}

int gh_node_check_keys(gh_errors_t *errs, const gh_node_t *map,
                       const char *const *known, const char *where)
{
    if (gh_node_expect(errs, map, GH_NODE_MAP) < 0)
        return -1;
    size_t nknown = 0;
    while (known[nknown])
        nknown++;

    int rc = 0;
    for (size_t i = 0; i < map->n; i++) {
        const gh_node_t *k = map->items[2 * i];
        if (gh__node_poisoned(k))
            continue;
        bool found = false;
        for (size_t j = 0; j < nknown && !found; j++)
            found = strcmp(k->str, known[j]) == 0 && strlen(known[j]) == k->len;
        if (found)
            continue;
        const char *hint = gh_did_you_mean(k->str, known, nknown);
        gh_node_error(errs, k, "unknown key '%s'%s%s%s%s%s", k->str,
                      where ? " in " : "", where ? where : "",
                      hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
        rc = -1;
    }
    return rc;
}

int gh_node_expect(gh_errors_t *errs, const gh_node_t *n, gh_node_type_t type)
{
    if (n->type == type)
        return 0;
    if (gh__node_poisoned(n))
        return -1;
    gh_node_error(errs, n, "expected %s",
                  type == GH_NODE_MAP ? "a mapping" : type == GH_NODE_SEQ ? "a list" : "a string");
    return -1;
}

/* The scalar text of n, or NULL after reporting why there is none. */
static const char *scalar(gh_errors_t *errs, const gh_node_t *n, const char *expected)
{
    if (gh__node_poisoned(n))
        return NULL;
    if (n->type != GH_NODE_SCALAR) {
        gh_node_error(errs, n, "expected %s", expected);
        return NULL;
    }
    return n->str;
}

int gh_node_string(gh_errors_t *errs, const gh_node_t *n, const char **out)
{
    const char *s = scalar(errs, n, "a string");
    if (!s)
        return -1;
    if (n->len == 0) {
        gh_node_error(errs, n, "expected a non-empty string");
        return -1;
    }
    if (strlen(s) != n->len) {
        gh_node_error(errs, n, "unexpected NUL character in string");
        return -1;
    }
    *out = s;
    return 0;
}

int gh_node_bool(gh_errors_t *errs, const gh_node_t *n, bool *out)
{
    static const char *const truths[] = { "true", "True", "TRUE" };
    static const char *const lies[] = { "false", "False", "FALSE" };
    const char *s = scalar(errs, n, "true or false");
    if (!s)
        return -1;
    for (size_t i = 0; i < 3; i++) {
        if (strcmp(s, truths[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, lies[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    gh_node_error(errs, n, "expected true or false");
    return -1;
}

int gh_node_uint(gh_errors_t *errs, const gh_node_t *n, uint64_t min, uint64_t max,
                 uint64_t *out)
{
    const char *s = scalar(errs, n, "a number");
    if (!s)
        return -1;
    uint64_t v = 0;
    bool digits = n->len > 0, overflow = false;
    for (size_t i = 0; i < n->len && digits; i++) {
        if (s[i] < '0' || s[i] > '9') {
            digits = false;
        } else {
            unsigned d = (unsigned)(s[i] - '0');
            if (v > (UINT64_MAX - d) / 10)
                overflow = true;
            else
                v = v * 10 + d;
        }
    }
    if (!digits) {
        gh_node_error(errs, n, "expected a number");
        return -1;
    }
    if (overflow || v < min || v > max) {
        gh_node_error(errs, n, "expected a number from %llu to %llu",
                      (unsigned long long)min, (unsigned long long)max);
        return -1;
    }
    *out = v;
    return 0;
}

int gh_node_duration(gh_errors_t *errs, const gh_node_t *n, uint64_t *ms)
{
    const char *s = scalar(errs, n, "a duration");
    if (!s)
        return -1;
    if (gh_parse_duration_ms(s, ms) < 0) {
        gh_node_error(errs, n, "invalid duration '%s' (expected e.g. 500ms, 10s, 5m, 1h)", s);
        return -1;
    }
    return 0;
}

int gh_node_size(gh_errors_t *errs, const gh_node_t *n, uint64_t *bytes)
{
    const char *s = scalar(errs, n, "a size");
    if (!s)
        return -1;
    if (gh_parse_size(s, bytes) < 0) {
        gh_node_error(errs, n, "invalid size '%s' (expected e.g. 512, 64k, 10m, 1g)", s);
        return -1;
    }
    return 0;
}

int gh_node_rate(gh_errors_t *errs, const gh_node_t *n, double *per_second)
{
    const char *s = scalar(errs, n, "a rate");
    if (!s)
        return -1;
    if (gh_parse_rate(s, per_second) < 0) {
        gh_node_error(errs, n, "invalid rate '%s' (expected e.g. 20/s, 600/m, 10000/h)", s);
        return -1;
    }
    return 0;
}

int gh_node_enum(gh_errors_t *errs, const gh_node_t *n, const char *const *names,
                 const char *what, int *out)
{
    const char *s = scalar(errs, n, "a string");
    if (!s)
        return -1;
    size_t count = 0;
    for (; names[count]; count++) {
        if (strcmp(s, names[count]) == 0 && strlen(s) == n->len) {
            *out = (int)count;
            return 0;
        }
    }
    const char *hint = gh_did_you_mean(s, names, count);
    if (hint) {
        gh_node_error(errs, n, "invalid %s '%s' (did you mean '%s'?)", what, s, hint);
        return -1;
    }
    /* "expected a, b or c"; a list too long for the buffer is cut short. */
    char list[512];
    size_t len = 0;
    for (size_t i = 0; i < count; i++) {
        const char *parts[2] = { i == 0 ? "" : i + 1 == count ? " or " : ", ", names[i] };
        for (size_t k = 0; k < 2; k++) {
            size_t plen = strlen(parts[k]);
            if (plen > sizeof(list) - 1 - len)
                plen = sizeof(list) - 1 - len;
            memcpy(list + len, parts[k], plen);
            len += plen;
        }
    }
    list[len] = '\0';
    gh_node_error(errs, n, "invalid %s '%s' (expected %s)", what, s, list);
    return -1;
}
