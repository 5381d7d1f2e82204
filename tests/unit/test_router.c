/* routes/: path and host normalisation, and the host/path table. */
#include <stdio.h>
#include <string.h>
#include "conf/arena.h"
#include "routes/router.h"
#include "test.h"

/* Normalised path of s as a static string, or "(reject)". */
static const char *norm(const char *s)
{
    static char out[512];
    ssize_t n = gh_path_normalize(s, strlen(s), out, sizeof(out));
    if (n < 0)
        return "(reject)";
    if ((size_t)n != strlen(out))
        return "(length mismatch)";
    return out;
}

static const char *host(const char *s)
{
    static char out[256];
    ssize_t n = gh_host_normalize(s, strlen(s), out, sizeof(out));
    if (n < 0)
        return "(reject)";
    if ((size_t)n != strlen(out))
        return "(length mismatch)";
    return out;
}

static void test_path_normalize(void)
{
    CHECK_STR(norm("/"), "/");
    CHECK_STR(norm("/a/b/c"), "/a/b/c");
    CHECK_STR(norm("/a/../b"), "/b");
    CHECK_STR(norm("/public/../admin"), "/admin");
    CHECK_STR(norm("/../x"), "/x");
    CHECK_STR(norm("/../../../x"), "/x");
    CHECK_STR(norm("/a/./b/"), "/a/b/");
    CHECK_STR(norm("/a/.."), "/");
    CHECK_STR(norm("/a/."), "/a/");
    CHECK_STR(norm("/."), "/");
    CHECK_STR(norm("/.."), "/");
    CHECK_STR(norm("/a/b/../../c"), "/c");
    CHECK_STR(norm("/a/b/../c/./d"), "/a/c/d");
    CHECK_STR(norm("//a"), "//a");
    CHECK_STR(norm("/a//b"), "/a//b");
    CHECK_STR(norm("/a//.."), "/a/");
    CHECK_STR(norm("/a/.b/..c/...d/..."), "/a/.b/..c/...d/...");

    /* Unreserved escapes are decoded, others kept with upper-case hex. */
    CHECK_STR(norm("/%41%62%2D%2e%5F%7e%30"), "/Ab-._~0");
    CHECK_STR(norm("/a%2Fb"), "/a%2Fb");
    CHECK_STR(norm("/a%2fb"), "/a%2Fb");
    CHECK_STR(norm("/%3f%23%25%20%c3%a9"), "/%3F%23%25%20%C3%A9");
    CHECK_STR(norm("/%252e%252e/x"), "/%252e%252e/x");

    /* Dots written as escapes are dots. */
    CHECK_STR(norm("/a/%2e%2E/b"), "/b");
    CHECK_STR(norm("/public/%2e%2e/admin"), "/admin");
    CHECK_STR(norm("/public/.%2E/admin"), "/admin");
    CHECK_STR(norm("/a/%2E/b"), "/a/b");
    CHECK_STR(norm("/a/%2e"), "/a/");

    /* Every pchar byte passes as it is. */
    CHECK_STR(norm("/!$&'()*+,;=:@-._~az09AZ"), "/!$&'()*+,;=:@-._~az09AZ");

    /* Rejected. */
    CHECK_STR(norm(""), "(reject)");
    CHECK_STR(norm("a/b"), "(reject)");
    CHECK_STR(norm("*"), "(reject)");
    CHECK_STR(norm("/a%"), "(reject)");
    CHECK_STR(norm("/a%4"), "(reject)");
    CHECK_STR(norm("/a%4g"), "(reject)");
    CHECK_STR(norm("/a%g4"), "(reject)");
    CHECK_STR(norm("/a%00b"), "(reject)");
    CHECK_STR(norm("/a b"), "(reject)");
    CHECK_STR(norm("/a\tb"), "(reject)");
    CHECK_STR(norm("/a\x7f"), "(reject)");
    CHECK_STR(norm("/a\xc3\xa9"), "(reject)");
    CHECK_STR(norm("/a?b=1"), "(reject)");
    CHECK_STR(norm("/a#frag"), "(reject)");
    CHECK_STR(norm("/a\\b"), "(reject)");
    CHECK_STR(norm("/a\"b"), "(reject)");
    CHECK_STR(norm("/a<b>"), "(reject)");
    CHECK_STR(norm("/[a]"), "(reject)");

    /* Raw NUL inside the given length, and an output buffer too small. */
    char out[16];
    CHECK_INT(gh_path_normalize("/a\0b", 4, out, sizeof(out)), -1);
    CHECK_INT(gh_path_normalize("/abc", 4, out, 4), -1);
    CHECK_INT(gh_path_normalize("/abc", 4, out, 5), 4);
    CHECK_STR(out, "/abc");

    /* Normalising twice changes nothing. */
    const char *again[] = {"/a/%2e%2e/%2E/b/", "/%7euser/%2f/x/..", "//a/../b/./"};
    for (size_t i = 0; i < sizeof(again) / sizeof(again[0]); i++) {
        char once[64];
        CHECK(strlen(norm(again[i])) < sizeof(once));
        snprintf(once, sizeof(once), "%s", norm(again[i]));
        CHECK_STR(norm(once), once);
    }
}

static void test_host_normalize(void)
{
    CHECK_STR(host("example.com"), "example.com");
    CHECK_STR(host("Example.COM"), "example.com");
    CHECK_STR(host("example.com:8080"), "example.com");
    CHECK_STR(host("example.com:"), "example.com");
    CHECK_STR(host("example.com."), "example.com");
    CHECK_STR(host("Example.com.:443"), "example.com");
    CHECK_STR(host("example.com.."), "example.com.");
    CHECK_STR(host("[::1]"), "[::1]");
    CHECK_STR(host("[::1]:8443"), "[::1]");
    CHECK_STR(host("[2001:DB8::A]:80"), "[2001:db8::a]");
    CHECK_STR(host("[::ffff:192.0.2.1]"), "[::ffff:192.0.2.1]");
    CHECK_STR(host("192.0.2.1:80"), "192.0.2.1");
    CHECK_STR(host("*.example.com"), "*.example.com");
    CHECK_STR(host("under_score.example"), "under_score.example");

    CHECK_STR(host(""), "(reject)");
    CHECK_STR(host("."), "(reject)");
    CHECK_STR(host(":80"), "(reject)");
    CHECK_STR(host("example.com:80a"), "(reject)");
    CHECK_STR(host("example.com:80:90"), "(reject)");
    CHECK_STR(host("exa mple.com"), "(reject)");
    CHECK_STR(host("example.com\r"), "(reject)");
    CHECK_STR(host("example.com/x"), "(reject)");
    CHECK_STR(host("user@example.com"), "(reject)");
    CHECK_STR(host("ex%41mple.com"), "(reject)");
    CHECK_STR(host("\xc3\xa9.example"), "(reject)");
    CHECK_STR(host("[::1"), "(reject)");
    CHECK_STR(host("[]"), "(reject)");
    CHECK_STR(host("[1.2.3.4]"), "(reject)");
    CHECK_STR(host("[::1]x"), "(reject)");
    CHECK_STR(host("[::1]:8x"), "(reject)");
    CHECK_STR(host("[::g]"), "(reject)");
    CHECK_STR(host("a]b"), "(reject)");

    char out[8];
    CHECK_INT(gh_host_normalize("abcdefg", 7, out, sizeof(out)), 7);
    CHECK_INT(gh_host_normalize("abcdefgh", 8, out, sizeof(out)), -1);
    CHECK_INT(gh_host_normalize("abcdefg.:1", 10, out, sizeof(out)), 7);
}

/* Route index of a match, -1 for none. */
static gh_route_conf_t *g_routes;

static long match(const gh_router_t *r, const char *h, const char *p)
{
    const gh_route_conf_t *route = gh_router_match(r, h, h ? strlen(h) : 0, p, strlen(p));
    return route ? (long)(route - g_routes) : -1;
}

static gh_route_conf_t *make_routes(gh_arena_t *a, const char *const (*spec)[2], size_t n)
{
    gh_route_conf_t *routes = gh_arena_alloc(a, n * sizeof(*routes));
    for (size_t i = 0; i < n; i++) {
        routes[i].host = spec[i][0] ? gh_arena_strdup(a, spec[i][0]) : NULL;
        routes[i].path = spec[i][1] ? gh_arena_strdup(a, spec[i][1]) : NULL;
        routes[i].index = i;
    }
    return routes;
}

/* Every byte value, one at a time, against RFC 3986's sets written out
 * here: which bytes a host keeps (lower-cased), which a path keeps, which
 * an escape decodes. */
static void test_byte_classes(void)
{
    const char *unreserved_other = "-._~", *sub_delims = "!$&'()*+,;=";
    for (int c = 1; c < 256; c++) {
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        bool unres = alnum || strchr(unreserved_other, c);
        bool host = unres || strchr(sub_delims, c);
        bool path = host || c == ':' || c == '@' || c == '/';
        char in[8], out[16];

        snprintf(in, sizeof in, "a%cb", c);
        ssize_t n = gh_host_normalize(in, 3, out, sizeof out);
        if (c == ':') {
            CHECK_INT(n, -1);   /* "a:b": a port that is not digits */
        } else if (host) {
            char want = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            CHECK(n == 3 && out[0] == 'a' && out[1] == want && out[2] == 'b');
        } else {
            CHECK_INT(n, -1);
        }

        in[0] = '/';
        in[1] = (char)c;
        n = gh_path_normalize(in, 2, out, sizeof out);
        if (path && c != '.')
            CHECK(n == 2 && out[1] == (char)c);
        else if (c != '.' && c != '%')
            CHECK_INT(n, -1);

        snprintf(in, sizeof in, "/%%%02X", c);
        n = gh_path_normalize(in, 4, out, sizeof out);
        if (unres && c != '.')
            CHECK(n == 2 && out[1] == (char)c);
        else if (c != '.')
            CHECK(n == 4 && strncmp(out, in, 4) == 0);
    }
}

static void test_match_order(void)
{
    static const char *const spec[][2] = {
        {"api.example.com", "/"},          /* 0 */
        {"api.example.com", "/v1"},        /* 1 */
        {"api.example.com", "/v1/users/"}, /* 2 */
        {"*.example.com", "/"},            /* 3 */
        {"*.b.example.com", "/"},          /* 4 */
        {"*", "/"},                        /* 5 */
        {"only.example.org", "/x"},        /* 6 */
        {"*.example.org", "/y"},           /* 7 */
        {"[::1]", "/v6"},                  /* 8 */
        {"*", "/static/"},                 /* 9 */
        {"docs.example.net", "/v1/"},      /* 10 */
        {"*.com", "/com"},                 /* 11 */
        {"Mixed.Example.NET", NULL},       /* 12: NULL path is "/" */
    };
    size_t n = sizeof(spec) / sizeof(spec[0]);
    gh_arena_t *a = gh_arena_new();
    g_routes = make_routes(a, spec, n);
    gh_router_t *r = gh_router_build(a, g_routes, n);

    /* Exact beats wildcard beats "*". */
    CHECK_INT(match(r, "api.example.com", "/"), 0);
    CHECK_INT(match(r, "www.example.com", "/"), 3);
    CHECK_INT(match(r, "other.test", "/"), 5);

    /* Longest path prefix, on segment boundaries only. */
    CHECK_INT(match(r, "api.example.com", "/v1"), 1);
    CHECK_INT(match(r, "api.example.com", "/v1/"), 1);
    CHECK_INT(match(r, "api.example.com", "/v1/x"), 1);
    CHECK_INT(match(r, "api.example.com", "/v10"), 0);
    CHECK_INT(match(r, "api.example.com", "/v1x/y"), 0);
    CHECK_INT(match(r, "api.example.com", "/v1/users"), 2);
    CHECK_INT(match(r, "api.example.com", "/v1/users/"), 2);
    CHECK_INT(match(r, "api.example.com", "/v1/users/42/posts"), 2);
    CHECK_INT(match(r, "api.example.com", "/v1/usersx"), 1);
    CHECK_INT(match(r, "api.example.com", "/v2/users"), 0);
    CHECK_INT(match(r, "docs.example.net", "/v1"), 10);
    CHECK_INT(match(r, "docs.example.net", "/v1/"), 10);
    CHECK_INT(match(r, "docs.example.net", "/v1/a/b"), 10);
    CHECK_INT(match(r, "docs.example.net", "/v10"), 5);
    CHECK_INT(match(r, "docs.example.net", "//v1"), 5);

    /* Longest wildcard suffix; a wildcard is not its own apex. */
    CHECK_INT(match(r, "a.b.example.com", "/"), 4);
    CHECK_INT(match(r, "x.y.a.b.example.com", "/"), 4);
    CHECK_INT(match(r, "b.example.com", "/"), 3);
    CHECK_INT(match(r, "example.com", "/"), 5);
    CHECK_INT(match(r, "example.com", "/com"), 11);
    CHECK_INT(match(r, ".example.com", "/"), 5);

    /* Case, port and trailing dot do not matter. */
    CHECK_INT(match(r, "API.Example.COM", "/v1"), 1);
    CHECK_INT(match(r, "api.example.com:8443", "/v1"), 1);
    CHECK_INT(match(r, "api.example.com.", "/v1"), 1);
    CHECK_INT(match(r, "API.EXAMPLE.COM.:80", "/v1/users/1"), 2);
    CHECK_INT(match(r, "mixed.example.net", "/anything"), 12);

    /* IPv6 literal. */
    CHECK_INT(match(r, "[::1]:8080", "/v6/x"), 8);
    CHECK_INT(match(r, "[::1]", "/v6"), 8);
    CHECK_INT(match(r, "[::1]", "/v7"), 5);

    /* Fall-through to a less specific host when no path matches. */
    CHECK_INT(match(r, "only.example.org", "/x/1"), 6);
    CHECK_INT(match(r, "only.example.org", "/y/1"), 7);
    CHECK_INT(match(r, "only.example.org", "/z"), 5);
    CHECK_INT(match(r, "only.example.org", "/static/a.css"), 9);
    CHECK_INT(match(r, "q.example.org", "/y"), 7);
    CHECK_INT(match(r, "a.b.example.com", "/com/x"), 4);

    /* "*" answers for hosts that are absent; bad hosts match nothing. */
    CHECK_INT(match(r, NULL, "/static/x"), 9);
    CHECK_INT(match(r, "", "/"), 5);
    CHECK_INT(match(r, "bad host", "/"), -1);
    CHECK_INT(match(r, "a/b", "/"), -1);
    char big[400];
    memset(big, 'a', sizeof(big));
    CHECK(gh_router_match(r, big, 255, "/", 1) == &g_routes[5]);
    CHECK(gh_router_match(r, big, 256, "/", 1) == NULL);
    CHECK(gh_router_match(r, big, sizeof(big), "/", 1) == NULL);

    gh_arena_free(a);
}

static void test_no_catch_all(void)
{
    static const char *const spec[][2] = {
        {"a.test", "/v1"},  /* 0 */
        {"a.test", "/v1/"}, /* 1: same key as 0, must not crash; 0 wins */
        {"*.test", "/w"},   /* 2 */
    };
    gh_arena_t *a = gh_arena_new();
    g_routes = make_routes(a, spec, 3);
    gh_router_t *r = gh_router_build(a, g_routes, 3);

    CHECK_INT(match(r, "a.test", "/v1/x"), 0);
    CHECK_INT(match(r, "a.test", "/"), -1);
    CHECK_INT(match(r, "a.test", "/w"), 2);
    CHECK_INT(match(r, "b.test", "/v1"), -1);
    CHECK_INT(match(r, "other", "/w"), -1);
    CHECK_INT(match(r, NULL, "/w"), -1);

    gh_router_t *empty = gh_router_build(a, NULL, 0);
    CHECK(gh_router_match(empty, "a.test", 6, "/", 1) == NULL);
    gh_arena_free(a);
}

static void test_many_routes(void)
{
    enum { NHOSTS = 10000 };
    size_t n = 2 * NHOSTS + 2;
    gh_arena_t *a = gh_arena_new();
    g_routes = gh_arena_alloc(a, n * sizeof(*g_routes));
    char name[64];

    for (size_t i = 0; i < NHOSTS; i++) {
        snprintf(name, sizeof(name), "h%zu.example.com", i);
        g_routes[2 * i].host = gh_arena_strdup(a, name);
        g_routes[2 * i].path = "/";
        g_routes[2 * i + 1].host = g_routes[2 * i].host;
        snprintf(name, sizeof(name), "/api/v%zu", i);
        g_routes[2 * i + 1].path = gh_arena_strdup(a, name);
    }
    g_routes[2 * NHOSTS].host = "*.example.com";
    g_routes[2 * NHOSTS].path = "/";
    g_routes[2 * NHOSTS + 1].host = "*";
    g_routes[2 * NHOSTS + 1].path = "/";
    gh_router_t *r = gh_router_build(a, g_routes, n);

    int bad = 0;
    for (size_t i = 0; i < NHOSTS; i++) {
        char path[64];
        snprintf(name, sizeof(name), "H%zu.Example.com:443", i);
        snprintf(path, sizeof(path), "/api/v%zu/items", i);
        bad += match(r, name, path) != (long)(2 * i + 1);
        bad += match(r, name, "/api/v") != (long)(2 * i);
        snprintf(path, sizeof(path), "/api/v%zu", i + 1);
        bad += match(r, name, path) != (long)(2 * i);
    }
    CHECK_INT(bad, 0);
    CHECK_INT(match(r, "h10000.example.com", "/"), 2 * NHOSTS);
    CHECK_INT(match(r, "h1.example.org", "/"), 2 * NHOSTS + 1);
    gh_arena_free(a);
}

/* Deep paths only probe as deep as the host's deepest route. */
static void test_deep_path(void)
{
    static const char *const spec[][2] = {
        {"d.test", "/a"},
        {"d.test", "/a/b/c"},
    };
    gh_arena_t *a = gh_arena_new();
    g_routes = make_routes(a, spec, 2);
    gh_router_t *r = gh_router_build(a, g_routes, 2);
    static char path[8192];
    for (size_t i = 0; i + 2 < sizeof(path); i += 2) {
        path[i] = '/';
        path[i + 1] = i < 6 ? "abc"[i / 2] : 'x';
    }
    CHECK_INT(match(r, "d.test", path), 1);
    path[5] = 'z';
    CHECK_INT(match(r, "d.test", path), 0);
    gh_arena_free(a);
}

int main(void)
{
    test_path_normalize();
    test_host_normalize();
    test_byte_classes();
    test_match_order();
    test_no_catch_all();
    test_many_routes();
    test_deep_path();
    TEST_MAIN_END();
}
