/* Config loading (conf/): every error path with its exact text and position,
 * and the decoded values of complete configs. Fixtures are in unit/conf/; the
 * test runs with tests/ as its working directory. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include "conf/arena.h"
#include "conf/config.h"
#include "conf/decode.h"
#include "conf/node.h"
#include "conf/yaml.h"
#include "tests/unit/test.h"

/* An expected "... is not supported yet" line while feature F is off; once a
 * change turns F on, the line is no longer expected (and must not appear). */
#define NOT_YET(f, line) (gh__feature_on(f) ? "" : (line))

/* The expected lines without those "" leaves; returns their count. */
static size_t expected_lines(const char *const *in, const char **out)
{
    size_t n = 0;
    for (; *in; in++)
        if (**in)
            out[n++] = *in;
    out[n] = NULL;
    return n;
}

/* Loads FILE, expects it to fail with exactly the given lines, in order. */
static void expect_errors(int line, const char *file, const char *const *want)
{
    gh_errors_t e;
    gh_errors_init(&e);
    gh_config_t *c = gh_config_load(file, &e);
    const char *expected[64];
    size_t n = expected_lines(want, expected);
    CHECK(n == 0 ? c != NULL : c == NULL);
    size_t max = n > e.n ? n : e.n;
    int before = gh_test_failed;
    for (size_t i = 0; i < max; i++)
        CHECK_STR(i < e.n ? e.lines[i] : NULL, i < n ? expected[i] : NULL);
    CHECK_INT(e.n, n);
    if (gh_test_failed != before) {
        fprintf(stderr, "  (expectation at test_config.c:%d) got:\n", line);
        for (size_t i = 0; i < e.n; i++)
            fprintf(stderr, "    %s\n", e.lines[i]);
    }
    gh_config_release(c);
    gh_errors_free(&e);
}
#define EXPECT_ERRORS(file, ...) \
    expect_errors(__LINE__, file, (const char *const[]){ __VA_ARGS__, NULL })

/* Loads FILE and expects success with no error lines. */
static gh_config_t *load_ok(const char *file)
{
    gh_errors_t e;
    gh_errors_init(&e);
    gh_config_t *c = gh_config_load(file, &e);
    CHECK(c != NULL);
    CHECK_INT(e.n, 0);
    for (size_t i = 0; i < e.n; i++)
        fprintf(stderr, "  unexpected: %s\n", e.lines[i]);
    gh_errors_free(&e);
    return c;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static void test_full(void)
{
    gh_config_t *c = load_ok("unit/conf/full.yaml");
    if (!c)
        return;
    CHECK_STR(c->file, "unit/conf/full.yaml");
    CHECK_INT(atomic_load(&c->refcount), 1);
    CHECK(c->router != NULL);

    CHECK_INT(c->nlistens, 2);
    CHECK_STR(c->listens[0].address, "0.0.0.0:8080");
    CHECK_INT(c->listens[0].addr.ss_family, AF_INET);
    CHECK_INT(c->listens[0].addrlen, sizeof(struct sockaddr_in));
    CHECK_INT(port_of(&c->listens[0].addr), 8080);
    CHECK(!c->listens[0].tls && !c->listens[0].redirect_https && !c->listens[0].proxy_protocol);
    CHECK_INT(c->listens[0].loc.line, 4);
    CHECK_INT(c->listens[0].loc.col, 5);
    CHECK_STR(c->listens[1].address, "[::1]:8081");
    CHECK_INT(c->listens[1].addr.ss_family, AF_INET6);
    CHECK_INT(c->listens[1].addrlen, sizeof(struct sockaddr_in6));
    CHECK_INT(port_of(&c->listens[1].addr), 8081);
    CHECK(c->listens[1].redirect_https);
    CHECK(!c->listens[1].tls && !c->listens[1].proxy_protocol);

    CHECK_INT(c->timeouts.header_ms, 5000);
    CHECK_INT(c->timeouts.idle_ms, 60000);
    CHECK_INT(c->timeouts.upstream_connect_ms, 1500);
    CHECK_INT(c->timeouts.upstream_first_byte_ms, 600000);
    CHECK_INT(c->timeouts.stream_idle_ms, 7200000);
    CHECK_INT(c->timeouts.shutdown_ms, 0);

    CHECK_INT(c->limits.max_header_bytes, 32 * 1024);
    CHECK_INT(c->limits.max_body_bytes, 20 * 1024 * 1024);
    CHECK_INT(c->limits.max_connections, 500);

    CHECK_INT(c->ntrusted_proxies, 3);
    struct sockaddr_in in;
    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    CHECK(gh_cidr_match_any(c->trusted_proxies, c->ntrusted_proxies, (struct sockaddr *)&in));
    inet_pton(AF_INET, "11.1.2.3", &in.sin_addr);
    CHECK(!gh_cidr_match_any(c->trusted_proxies, c->ntrusted_proxies, (struct sockaddr *)&in));
    CHECK_INT(c->trusted_proxies[2].family, AF_INET6);
    CHECK_INT(c->trusted_proxies[2].prefix, 128);

    CHECK(c->access_log.enabled);
    CHECK_STR(c->access_log.path, "/tmp/gh-access.log");
    CHECK_INT(c->access_log.format, GH_ALOG_COMBINED);
    CHECK_INT(c->log_level, GH_LOG_DEBUG);
    CHECK_INT(c->workers, 0);
    CHECK_STR(c->pid_file, "/run/gatehouse.pid");
    CHECK(!c->admin.set);
    CHECK_INT(c->tls.ncerts, 0);
    CHECK_INT(c->tls.min_version, 0x0303);
    CHECK_INT(c->nplugins, 0);
    CHECK_INT(c->ntunnels, 0);
    CHECK_INT(c->nconnects, 0);

    /* Named upstreams first, then one inline upstream per distinct URL. */
    CHECK_INT(c->nupstreams, 5);
    const char *names[] = { "webui", "grafana", "http://paperless:8000",
                            "http://nginx-rtmp:8080", "http://n8n:5678" };
    for (size_t i = 0; i < 5 && i < c->nupstreams; i++) {
        CHECK_STR(c->upstreams[i]->name, names[i]);
        CHECK_INT(c->upstreams[i]->index, i);
        CHECK_INT(c->upstreams[i]->is_inline, i >= 2);
    }
    gh_upstream_conf_t *u = c->upstreams[0];
    CHECK_INT(u->nservers, 2);
    CHECK_INT(u->balance, GH_BALANCE_LEAST_CONN);
    CHECK_INT(u->keepalive, 8);
    CHECK(u->health.enabled);
    CHECK_STR(u->health.path, "/health");
    CHECK_INT(u->health.interval_ms, 10000);
    CHECK_INT(u->health.timeout_ms, 3000);
    CHECK_INT(u->health.rise, 4);
    CHECK_INT(u->health.fall, 5);
    CHECK(!u->tls.set);
    CHECK(u->tls.verify);
    CHECK_INT(u->loc.line, 30);
    CHECK_INT(u->loc.col, 3);
    CHECK_STR(u->servers[0].url, "http://10.0.0.5:8080");
    CHECK_INT(u->servers[0].scheme, GH_SCHEME_HTTP);
    CHECK_STR(u->servers[0].host, "10.0.0.5");
    CHECK_INT(u->servers[0].port, 8080);
    CHECK_STR(u->servers[0].authority, "10.0.0.5:8080");
    CHECK(u->servers[0].service == NULL);
    CHECK_STR(u->servers[1].url, "http://10.0.0.6:8080/");
    CHECK_STR(u->servers[1].authority, "10.0.0.6:8080");
    u = c->upstreams[1];
    CHECK_INT(u->balance, GH_BALANCE_HASH_CLIENT_IP);
    CHECK_INT(u->keepalive, 32);
    CHECK(u->health.enabled);               /* defaults, timeout cut to the interval */
    CHECK_STR(u->health.path, "/");
    CHECK_INT(u->health.interval_ms, 1000);
    CHECK_INT(u->health.timeout_ms, 1000);
    CHECK_INT(u->health.rise, 2);
    CHECK_INT(u->health.fall, 3);
    CHECK_STR(u->servers[0].host, "fd00::3");
    CHECK_STR(u->servers[0].authority, "[fd00::3]:3000");
    CHECK_STR(u->servers[1].host, "grafana.internal");
    CHECK_INT(u->servers[1].port, 80);
    CHECK_STR(u->servers[1].authority, "grafana.internal:80");
    u = c->upstreams[2];
    CHECK_INT(u->nservers, 1);
    CHECK_INT(u->balance, GH_BALANCE_ROUND_ROBIN);
    CHECK_INT(u->keepalive, 32);
    CHECK(!u->health.enabled);
    CHECK_STR(u->servers[0].authority, "paperless:8000");
    CHECK_INT(u->loc.line, 44);
    CHECK_INT(u->loc.col, 15);

    CHECK_INT(c->nroutes, 11);
    if (c->nroutes != 11)
        goto out;
    const gh_route_conf_t *r = c->routes;
    for (size_t i = 0; i < c->nroutes; i++)
        CHECK_INT(r[i].index, i);
    CHECK_STR(r[0].name, "chat.example.com/");
    CHECK_INT(r[0].action, GH_ACTION_UPSTREAM);
    CHECK(r[0].upstream == c->upstreams[0]);
    CHECK_INT(r[0].max_body_bytes, 20 * 1024 * 1024);     /* limits.max_body_bytes */
    CHECK_INT(r[0].nplugins, 0);
    CHECK_INT(r[0].loc.line, 41);
    CHECK_INT(r[0].loc.col, 5);
    CHECK_STR(r[1].host, "docs.example.com");       /* lower case, no trailing dot */
    CHECK_STR(r[1].path, "/");
    CHECK_STR(r[1].name, "docs.example.com/");
    CHECK(r[1].upstream == c->upstreams[2]);
    CHECK_INT(r[1].max_body_bytes, 200 * 1024 * 1024);
    CHECK(r[2].upstream == c->upstreams[3]);
    CHECK(r[3].upstream == c->upstreams[4]);
    CHECK(r[4].upstream == c->upstreams[1]);
    CHECK_STR(r[5].name, "api.example.com/v1/");
    CHECK_STR(r[5].path, "/v1/");
    CHECK(r[5].upstream == c->upstreams[2]);         /* the same URL: shared */
    CHECK_STR(r[6].host, "*.example.com");
    CHECK_STR(r[6].name, "*.example.com/static");
    CHECK(r[6].upstream == c->upstreams[4]);
    CHECK_INT(r[7].action, GH_ACTION_REDIRECT);
    CHECK_STR(r[7].redirect, "https://chat.example.com{path}");
    CHECK_INT(r[7].redirect_status, 308);
    CHECK(r[7].upstream == NULL);
    CHECK_STR(r[8].redirect, "https://example.com{uri}");
    CHECK_INT(r[8].redirect_status, 301);
    CHECK_INT(r[9].action, GH_ACTION_RESPOND);
    CHECK_STR(r[9].name, "*/");
    CHECK_INT(r[9].respond_status, 404);
    CHECK_STR(r[9].respond_body, "no such site\n");
    CHECK_INT(r[9].respond_body_len, 13);
    CHECK_STR(r[9].respond_content_type, "text/plain; charset=utf-8");
    CHECK_STR(r[10].name, "*/healthz");
    CHECK_INT(r[10].respond_status, 200);
    CHECK_STR(r[10].respond_body, "");
    CHECK_INT(r[10].respond_body_len, 0);
    CHECK_STR(r[10].respond_content_type, "application/json");

out:
    /* A reference taken by a request outlives the loader's. */
    gh_config_retain(c);
    CHECK_INT(atomic_load(&c->refcount), 2);
    gh_config_release(c);
    CHECK_INT(atomic_load(&c->refcount), 1);
    gh_config_release(c);
    gh_config_release(NULL);
}

static void test_defaults(void)
{
    gh_config_t *c = load_ok("unit/conf/defaults.yaml");
    if (!c)
        return;
    CHECK_INT(c->timeouts.header_ms, 10000);
    CHECK_INT(c->timeouts.idle_ms, 75000);
    CHECK_INT(c->timeouts.upstream_connect_ms, 5000);
    CHECK_INT(c->timeouts.upstream_first_byte_ms, 300000);
    CHECK_INT(c->timeouts.stream_idle_ms, 300000);
    CHECK_INT(c->timeouts.shutdown_ms, 30000);
    CHECK_INT(c->limits.max_header_bytes, 16384);
    CHECK_INT(c->limits.max_body_bytes, 10 * 1024 * 1024);
    CHECK_INT(c->limits.max_connections, 10000);
    CHECK(c->access_log.enabled);
    CHECK_STR(c->access_log.path, "stdout");
    CHECK_INT(c->access_log.format, GH_ALOG_JSON);
    CHECK_INT(c->log_level, GH_LOG_INFO);
    CHECK_INT(c->workers, 1);
    CHECK(c->pid_file == NULL);
    CHECK_INT(c->tls.min_version, 0x0303);
    CHECK_INT(c->ntrusted_proxies, 0);
    CHECK_INT(c->nupstreams, 0);
    CHECK_INT(c->nroutes, 1);
    CHECK_STR(c->routes[0].host, "*");
    CHECK_STR(c->routes[0].path, "/");
    CHECK_STR(c->routes[0].name, "*/");
    CHECK_INT(c->routes[0].respond_status, 200);
    CHECK_STR(c->routes[0].respond_content_type, "text/plain; charset=utf-8");
    CHECK_INT(c->routes[0].respond_body_len, 0);
    CHECK_INT(c->routes[0].max_body_bytes, 10 * 1024 * 1024);
    gh_config_release(c);
}

static void test_example(void)
{
    gh_config_t *c = load_ok("../conf/examples/rumple.yaml");
    if (!c)
        return;
    CHECK_INT(c->nlistens, 1);
    CHECK_STR(c->listens[0].address, "0.0.0.0:80");
    CHECK_INT(c->nroutes, 7);
    gh_config_release(c);
}

static void test_env(void)
{
    setenv("GH_TEST_ADDR", "127.0.0.1", 1);
    setenv("GH_TEST_PORT", "8099", 1);
    setenv("GH_TEST_HOST", "Env.Example.com", 1);
    gh_config_t *c = load_ok("unit/conf/env.yaml");
    if (c) {
        CHECK_STR(c->listens[0].address, "127.0.0.1:8099");
        CHECK_INT(port_of(&c->listens[0].addr), 8099);
        CHECK_STR(c->routes[0].host, "env.example.com");
        CHECK_STR(c->routes[0].respond_body, "price: $5, literal $x and Env.Example.com");
        CHECK_STR(c->routes[1].host, "b.env.example.com");
        CHECK_STR(c->routes[1].upstream->name, "http://Env.Example.com:8099");
        CHECK_STR(c->routes[1].upstream->servers[0].authority, "env.example.com:8099");
        gh_config_release(c);
    }
    unsetenv("GH_TEST_UNSET_PORT");
    unsetenv("GH_TEST_UNSET_A");
    unsetenv("GH_TEST_UNSET_B");
    unsetenv("GH_TEST_UNSET_KEY");
    EXPECT_ERRORS("unit/conf/env_unset.yaml",
        "unit/conf/env_unset.yaml:2:14: environment variable GH_TEST_UNSET_PORT is not set",
        "unit/conf/env_unset.yaml:4:9: environment variable GH_TEST_UNSET_A is not set",
        "unit/conf/env_unset.yaml:4:9: environment variable GH_TEST_UNSET_B is not set",
        "unit/conf/env_unset.yaml:5:11: invalid environment reference (expected ${NAME} or $$)",
        "unit/conf/env_unset.yaml:6:1: environment variable GH_TEST_UNSET_KEY is not set",
        "unit/conf/env_unset.yaml:9:22: invalid environment reference (expected ${NAME} or $$)");
}

static void test_unknown_keys(void)
{
    EXPECT_ERRORS("unit/conf/unknown_keys.yaml",
        "unit/conf/unknown_keys.yaml:1:1: unknown key 'lisen' (did you mean 'listen'?)",
        "unit/conf/unknown_keys.yaml:4:5: unknown key 'adress' in listen (did you mean 'address'?)",
        "unit/conf/unknown_keys.yaml:6:1: unknown key 'fooo'",
        "unit/conf/unknown_keys.yaml:8:3: unknown key 'headr' in timeouts (did you mean 'header'?)",
        "unit/conf/unknown_keys.yaml:9:3: unknown key 'upstream_conect' in timeouts (did you mean 'upstream_connect'?)",
        "unit/conf/unknown_keys.yaml:11:3: unknown key 'max_body' in limits",
        "unit/conf/unknown_keys.yaml:13:3: unknown key 'formt' in access_log (did you mean 'format'?)",
        "unit/conf/unknown_keys.yaml:16:5: unknown key 'server' in upstream (did you mean 'servers'?)",
        "unit/conf/unknown_keys.yaml:20:5: unknown key 'upstrem' in route (did you mean 'upstream'?)",
        "unit/conf/unknown_keys.yaml:23:16: unknown key 'bdy' in respond (did you mean 'body'?)",
        "unit/conf/unknown_keys.yaml:23:25: unknown key 'statsu' in respond (did you mean 'status'?)");
    EXPECT_ERRORS("unit/conf/unknown_keys_more.yaml",
        NOT_YET(GH_FEAT_ADMIN, "unit/conf/unknown_keys_more.yaml:3:1: the admin section is not supported yet"),
        "unit/conf/unknown_keys_more.yaml:4:3: unknown key 'adress' in admin (did you mean 'address'?)",
        "unit/conf/unknown_keys_more.yaml:4:3: missing 'address' in admin",
        NOT_YET(GH_FEAT_TLS_SECTION, "unit/conf/unknown_keys_more.yaml:5:1: the tls section is not supported yet"),
        "unit/conf/unknown_keys_more.yaml:9:7: unknown key 'chain' in certificate",
        "unit/conf/unknown_keys_more.yaml:10:3: unknown key 'min_verison' in tls (did you mean 'min_version'?)",
        NOT_YET(GH_FEAT_HEALTH_CHECK, "unit/conf/unknown_keys_more.yaml:14:5: health_check is not supported yet"),
        "unit/conf/unknown_keys_more.yaml:14:31: unknown key 'intervall' in health_check (did you mean 'interval'?)",
        NOT_YET(GH_FEAT_UPSTREAM_TLS, "unit/conf/unknown_keys_more.yaml:15:5: tls on an upstream is not supported yet"),
        "unit/conf/unknown_keys_more.yaml:15:12: unknown key 'verfy' in upstream tls (did you mean 'verify'?)",
        NOT_YET(GH_FEAT_TUNNELS, "unit/conf/unknown_keys_more.yaml:16:1: the tunnels section is not supported yet"),
        "unit/conf/unknown_keys_more.yaml:19:5: unknown key 'token' in tunnel",
        NOT_YET(GH_FEAT_CONNECT, "unit/conf/unknown_keys_more.yaml:20:1: the connect section is not supported yet"),
        "unit/conf/unknown_keys_more.yaml:24:5: unknown key 'service' in connect (did you mean 'services'?)");
}

static void test_types(void)
{
    EXPECT_ERRORS("unit/conf/types.yaml",
        "unit/conf/types.yaml:1:9: expected a list",
        "unit/conf/types.yaml:2:11: expected a mapping",
        "unit/conf/types.yaml:4:20: expected a number",
        "unit/conf/types.yaml:5:21: expected a size",
        "unit/conf/types.yaml:6:13: expected a mapping or off",
        "unit/conf/types.yaml:7:12: expected a string",
        "unit/conf/types.yaml:8:10: expected a number from 1 to 256 or auto",
        "unit/conf/types.yaml:9:11: expected a string",
        "unit/conf/types.yaml:10:18: expected a list",
        "unit/conf/types.yaml:13:14: expected a list",
        "unit/conf/types.yaml:14:6: expected a mapping",
        "unit/conf/types.yaml:17:16: expected a number",
        "unit/conf/types.yaml:20:15: expected a string",
        "unit/conf/types.yaml:21:5: expected a mapping",
        "unit/conf/types.yaml:22:11: expected a string",
        "unit/conf/types.yaml:23:14: expected a mapping");
    EXPECT_ERRORS("unit/conf/types2.yaml",
        "unit/conf/types2.yaml:3:21: expected true or false",
        "unit/conf/types2.yaml:4:5: expected a mapping",
        "unit/conf/types2.yaml:5:12: expected a mapping",
        "unit/conf/types2.yaml:6:9: expected a list");
}

static void test_units_in_config(void)
{
    EXPECT_ERRORS("unit/conf/units.yaml",
        "unit/conf/units.yaml:4:11: invalid duration '10 seconds' (expected e.g. 500ms, 10s, 5m, 1h)",
        "unit/conf/units.yaml:5:9: idle timeout must be greater than 0",
        "unit/conf/units.yaml:6:21: invalid duration '-5s' (expected e.g. 500ms, 10s, 5m, 1h)",
        "unit/conf/units.yaml:7:16: invalid duration '1.5s' (expected e.g. 500ms, 10s, 5m, 1h)",
        "unit/conf/units.yaml:10:21: max_header_bytes must be from 1k to 1m",
        "unit/conf/units.yaml:11:19: invalid size '10q' (expected e.g. 512, 64k, 10m, 1g)",
        "unit/conf/units.yaml:12:20: expected a number from 1 to 1000000",
        "unit/conf/units.yaml:13:10: expected a number from 1 to 256",
        "unit/conf/units.yaml:17:16: expected a number from 0 to 10000",
        "unit/conf/units.yaml:21:21: invalid size '1t' (expected e.g. 512, 64k, 10m, 1g)");
}

static void test_duplicates(void)
{
    EXPECT_ERRORS("unit/conf/dup_key.yaml",
        "unit/conf/dup_key.yaml:6:3: duplicate key 'idle'",
        "unit/conf/dup_key.yaml:7:1: duplicate key 'listen'",
        "unit/conf/dup_key.yaml:11:5: duplicate key 'host'");
    EXPECT_ERRORS("unit/conf/dup_route.yaml",
        "unit/conf/dup_route.yaml:8:5: duplicate route 'a.example.com/' (already defined at line 4)",
        "unit/conf/dup_route.yaml:14:5: duplicate route '*/' (already defined at line 6)",
        "unit/conf/dup_route.yaml:16:5: duplicate route 'a.example.com/v1/' (already defined at line 11)");
}

static void test_undefined(void)
{
    EXPECT_ERRORS("unit/conf/undefined.yaml",
        NOT_YET(GH_FEAT_PLUGINS_SECTION, "unit/conf/undefined.yaml:8:1: the plugins section is not supported yet"),
        NOT_YET(GH_FEAT_TUNNELS, "unit/conf/undefined.yaml:11:1: the tunnels section is not supported yet"),
        "unit/conf/undefined.yaml:16:15: undefined upstream 'webiu' (did you mean 'webui'?)",
        "unit/conf/undefined.yaml:18:15: undefined upstream 'nothing'",
        "unit/conf/undefined.yaml:20:15: undefined upstream 'localhost:8080' (an inline upstream needs a scheme, e.g. http://)",
        NOT_YET(GH_FEAT_TUNNEL_UPSTREAM, "unit/conf/undefined.yaml:22:15: a tunnel:// upstream is not supported yet"),
        "unit/conf/undefined.yaml:22:15: undefined tunnel 'phenix' (did you mean 'phoenix'?)",
        NOT_YET(GH_FEAT_TUNNEL_UPSTREAM, "unit/conf/undefined.yaml:24:15: a tunnel:// upstream is not supported yet"),
        "unit/conf/undefined.yaml:24:15: undefined tunnel 'zzz'",
        NOT_YET(GH_FEAT_ROUTE_PLUGINS, "unit/conf/undefined.yaml:27:5: plugins on a route is not supported yet"),
        "unit/conf/undefined.yaml:27:15: undefined plugin 'require_keys' (did you mean 'require_key'?)",
        "unit/conf/undefined.yaml:27:38: undefined plugin 'nope'",
        "unit/conf/undefined.yaml:27:44: plugin 'per_key' is listed twice");
}

static void test_listen(void)
{
    EXPECT_ERRORS("unit/conf/listen.yaml",
        "unit/conf/listen.yaml:2:14: invalid address 'localhost:80' (expected IP:PORT such as 0.0.0.0:80 or [::]:443)",
        "unit/conf/listen.yaml:3:14: invalid address '0.0.0.0' (expected IP:PORT such as 0.0.0.0:80 or [::]:443)",
        "unit/conf/listen.yaml:4:14: invalid address '[::1]:0' (expected IP:PORT such as 0.0.0.0:80 or [::]:443)",
        "unit/conf/listen.yaml:5:14: invalid address '1.2.3.4:99999' (expected IP:PORT such as 0.0.0.0:80 or [::]:443)",
        "unit/conf/listen.yaml:6:14: invalid address '::1:80' (expected IP:PORT such as 0.0.0.0:80 or [::]:443)",
        "unit/conf/listen.yaml:8:14: duplicate listen address '127.0.0.1:8080' (already at line 7)",
        "unit/conf/listen.yaml:10:14: duplicate listen address '[0::0]:8080' (already at line 9)",
        "unit/conf/listen.yaml:11:5: missing 'address' in listen",
        "unit/conf/listen.yaml:12:14: expected a non-empty string");
    EXPECT_ERRORS("unit/conf/nothing.yaml",
        "unit/conf/nothing.yaml: nothing to do: no listen or connect entries");
}

static void test_routes(void)
{
    EXPECT_ERRORS("unit/conf/routes_bad.yaml",
        "unit/conf/routes_bad.yaml:4:5: a route needs one of upstream, redirect or respond",
        "unit/conf/routes_bad.yaml:7:5: a route takes only one of upstream, redirect and respond",
        "unit/conf/routes_bad.yaml:8:5: a route takes only one of upstream, redirect and respond",
        "unit/conf/routes_bad.yaml:9:5: missing 'host' in route",
        "unit/conf/routes_bad.yaml:11:11: invalid route host 'exa mple.com' (expected a name, *.domain or *)",
        "unit/conf/routes_bad.yaml:13:11: invalid route host '*.*.example.com' (expected a name, *.domain or *)",
        "unit/conf/routes_bad.yaml:15:11: invalid route host 'example.com:8080' (expected a name, *.domain or *)",
        "unit/conf/routes_bad.yaml:18:11: route path must start with '/'",
        "unit/conf/routes_bad.yaml:22:13: redirect status must be 301, 302, 307 or 308",
        "unit/conf/routes_bad.yaml:25:5: status is only allowed with redirect (respond has its own)",
        "unit/conf/routes_bad.yaml:27:15: unknown placeholder '{pth}' in redirect (use {path}, {query}, {uri} or {host})",
        "unit/conf/routes_bad.yaml:29:15: URL 'http://x/api' must not have a path (upstream URLs are SCHEME://HOST[:PORT])",
        "unit/conf/routes_bad.yaml:31:15: unsupported URL scheme 'ftp' in 'ftp://x' (expected http://, https:// or tunnel://)",
        "unit/conf/routes_bad.yaml:33:15: invalid port in URL 'http://x:0' (expected 1 to 65535)",
        "unit/conf/routes_bad.yaml:35:15: invalid host in URL 'http://:80'",
        "unit/conf/routes_bad.yaml:37:15: invalid host in URL 'http://[::1:80'",
        "unit/conf/routes_bad.yaml:39:24: expected a number from 200 to 599",
        "unit/conf/routes_bad.yaml:39:42: expected a non-empty string",
        "unit/conf/routes_bad.yaml:41:15: invalid tunnel URL 'tunnel://only-a-name' (expected tunnel://TUNNEL/SERVICE)");
}

static void test_sections(void)
{
    EXPECT_ERRORS("unit/conf/sections_bad.yaml",
        "unit/conf/sections_bad.yaml:3:19: invalid CIDR '10.0.0.0/33' (expected e.g. 10.0.0.0/8 or ::1/128)",
        "unit/conf/sections_bad.yaml:3:34: invalid CIDR 'not-an-ip' (expected e.g. 10.0.0.0/8 or ::1/128)",
        "unit/conf/sections_bad.yaml:3:47: invalid CIDR '::1/129' (expected e.g. 10.0.0.0/8 or ::1/128)",
        "unit/conf/sections_bad.yaml:4:12: invalid log_level 'verbose' (expected error, warn, info or debug)",
        "unit/conf/sections_bad.yaml:5:23: invalid access_log format 'jsn' (did you mean 'json'?)",
        "unit/conf/sections_bad.yaml:7:3: invalid upstream name 'bad name!' (letters, digits, '-', '_' and '.' only)",
        "unit/conf/sections_bad.yaml:10:14: servers must not be empty",
        "unit/conf/sections_bad.yaml:11:14: invalid balance 'random' (expected round_robin, least_conn or hash_client_ip)",
        "unit/conf/sections_bad.yaml:13:5: missing 'servers' in upstream 'c'",
        "unit/conf/sections_bad.yaml:13:14: invalid balance 'round-robin' (did you mean 'round_robin'?)",
        "unit/conf/sections_bad.yaml:15:15: tunnel:// URLs are only allowed as a route's upstream");
}

static void test_files(void)
{
    EXPECT_ERRORS("unit/conf/unreadable.yaml",
        NOT_YET(GH_FEAT_TLS_SECTION, "unit/conf/unreadable.yaml:3:1: the tls section is not supported yet"),
        "unit/conf/unreadable.yaml:5:13: cannot read unit/conf/no-such-cert.pem: No such file or directory",
        "unit/conf/unreadable.yaml:6:12: cannot read unit/conf: Is a directory",
        "unit/conf/unreadable.yaml:7:7: missing 'key' in certificate",
        "unit/conf/unreadable.yaml:8:17: cannot read unit/conf/full.yaml: Not a directory",
        NOT_YET(GH_FEAT_UPSTREAM_TLS, "unit/conf/unreadable.yaml:12:5: tls on an upstream is not supported yet"),
        "unit/conf/unreadable.yaml:12:16: cannot read /nonexistent/ca.pem: No such file or directory",
        NOT_YET(GH_FEAT_CONNECT, "unit/conf/unreadable.yaml:13:1: the connect section is not supported yet"),
        "unit/conf/unreadable.yaml:16:17: cannot read unit/conf/missing.token: No such file or directory",
        "unit/conf/unreadable.yaml:17:9: cannot read unit: Is a directory");
    EXPECT_ERRORS("unit/conf/does-not-exist.yaml",
        "unit/conf/does-not-exist.yaml: cannot read: No such file or directory");
    EXPECT_ERRORS("unit/conf", "unit/conf: cannot read: Is a directory");
    EXPECT_ERRORS("unit/conf/empty.yaml", "unit/conf/empty.yaml: the configuration is empty");
    EXPECT_ERRORS("unit/conf/empty2.yaml", "unit/conf/empty2.yaml: the configuration is empty");
}

static void test_syntax(void)
{
    EXPECT_ERRORS("unit/conf/syntax.yaml",
        "unit/conf/syntax.yaml:5:4: YAML syntax error: did not find expected '-' indicator (while parsing a block collection at line 4)");
    EXPECT_ERRORS("unit/conf/syntax2.yaml",
        "unit/conf/syntax2.yaml:2:7: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at line 1)");
}

static void test_unsupported(void)
{
    EXPECT_ERRORS("unit/conf/unsupported.yaml",
        NOT_YET(GH_FEAT_LISTEN_TLS, "unit/conf/unsupported.yaml:3:5: tls on a listener is not supported yet"),
        NOT_YET(GH_FEAT_PROXY_PROTOCOL, "unit/conf/unsupported.yaml:4:5: proxy_protocol is not supported yet"),
        NOT_YET(GH_FEAT_ADMIN, "unit/conf/unsupported.yaml:7:1: the admin section is not supported yet"),
        NOT_YET(GH_FEAT_TLS_SECTION, "unit/conf/unsupported.yaml:9:1: the tls section is not supported yet"),
        NOT_YET(GH_FEAT_HTTPS_SERVER, "unit/conf/unsupported.yaml:16:15: an https:// server is not supported yet"),
        NOT_YET(GH_FEAT_HEALTH_CHECK, "unit/conf/unsupported.yaml:17:5: health_check is not supported yet"),
        NOT_YET(GH_FEAT_UPSTREAM_TLS, "unit/conf/unsupported.yaml:18:5: tls on an upstream is not supported yet"),
        NOT_YET(GH_FEAT_PLUGINS_SECTION, "unit/conf/unsupported.yaml:19:1: the plugins section is not supported yet"),
        NOT_YET(GH_FEAT_TUNNELS, "unit/conf/unsupported.yaml:21:1: the tunnels section is not supported yet"),
        NOT_YET(GH_FEAT_CONNECT, "unit/conf/unsupported.yaml:24:1: the connect section is not supported yet"),
        NOT_YET(GH_FEAT_TUNNEL_UPSTREAM, "unit/conf/unsupported.yaml:32:15: a tunnel:// upstream is not supported yet"),
        NOT_YET(GH_FEAT_ROUTE_PLUGINS, "unit/conf/unsupported.yaml:33:5: plugins on a route is not supported yet"),
        NOT_YET(GH_FEAT_HTTPS_SERVER, "unit/conf/unsupported.yaml:35:15: an https:// server is not supported yet"));
    /* Unsupported sections are still checked in full. */
    EXPECT_ERRORS("unit/conf/unsupported_bad.yaml",
        NOT_YET(GH_FEAT_TLS_SECTION, "unit/conf/unsupported_bad.yaml:3:1: the tls section is not supported yet"),
        "unit/conf/unsupported_bad.yaml:5:7: missing 'key' in certificate",
        "unit/conf/unsupported_bad.yaml:6:16: invalid min_version '1.1' (expected \"1.2\" or \"1.3\")",
        NOT_YET(GH_FEAT_HEALTH_CHECK, "unit/conf/unsupported_bad.yaml:10:5: health_check is not supported yet"),
        "unit/conf/unsupported_bad.yaml:10:27: health_check path must start with '/'",
        "unit/conf/unsupported_bad.yaml:10:58: health_check timeout must not be longer than its interval",
        "unit/conf/unsupported_bad.yaml:10:68: expected a number from 1 to 100",
        NOT_YET(GH_FEAT_UPSTREAM_TLS, "unit/conf/unsupported_bad.yaml:11:5: tls on an upstream is not supported yet"),
        "unit/conf/unsupported_bad.yaml:11:20: expected true or false",
        NOT_YET(GH_FEAT_PLUGINS_SECTION, "unit/conf/unsupported_bad.yaml:12:1: the plugins section is not supported yet"),
        "unit/conf/unsupported_bad.yaml:13:15: unknown plugin type 'api_keys' (did you mean 'api_key'?)",
        "unit/conf/unsupported_bad.yaml:14:7: missing 'type' in plugin 'p2'",
        "unit/conf/unsupported_bad.yaml:15:7: expected a mapping",
        NOT_YET(GH_FEAT_TUNNELS, "unit/conf/unsupported_bad.yaml:16:1: the tunnels section is not supported yet"),
        "unit/conf/unsupported_bad.yaml:17:21: token_hash must be 'sha256:' and 64 hex digits (gatehouse keygen prints one)",
        "unit/conf/unsupported_bad.yaml:18:7: missing 'token_hash' in tunnel 't2'",
        NOT_YET(GH_FEAT_CONNECT, "unit/conf/unsupported_bad.yaml:19:1: the connect section is not supported yet"),
        "unit/conf/unsupported_bad.yaml:20:5: missing 'edge' in connect",
        "unit/conf/unsupported_bad.yaml:20:5: missing 'token_file' in connect",
        "unit/conf/unsupported_bad.yaml:21:18: expected a number from 1 to 64",
        "unit/conf/unsupported_bad.yaml:22:15: services must not be empty");
}

/* Loads text from memory and compares the error lines. */
static void expect_buffer(int line, const char *text, const char *const *want)
{
    gh_errors_t e;
    gh_errors_init(&e);
    gh_config_t *c = gh_config_load_buffer("mem.yaml", text, strlen(text), &e);
    const char *expected[64];
    size_t n = expected_lines(want, expected);
    CHECK(n == 0 ? c != NULL : c == NULL);
    size_t max = n > e.n ? n : e.n;
    int before = gh_test_failed;
    for (size_t i = 0; i < max; i++)
        CHECK_STR(i < e.n ? e.lines[i] : NULL, i < n ? expected[i] : NULL);
    if (gh_test_failed != before)
        fprintf(stderr, "  (expectation at test_config.c:%d)\n", line);
    gh_config_release(c);
    gh_errors_free(&e);
}
#define EXPECT_BUFFER(text, ...) \
    expect_buffer(__LINE__, text, (const char *const[]){ __VA_ARGS__, NULL })
#define L "listen: [{address: 127.0.0.1:1}]\n"

static void test_yaml_edges(void)
{
    EXPECT_BUFFER(L "a: &x 1\nb: *x\n",
        "mem.yaml:2:1: unknown key 'a'",
        "mem.yaml:3:1: unknown key 'b'",
        "mem.yaml:3:4: YAML aliases are not supported (*x)");
    EXPECT_BUFFER("---\n" L "---\n" L,
        "mem.yaml:3:1: only one YAML document is allowed");
    EXPECT_BUFFER(L "? [a]\n: 1\n", "mem.yaml:2:3: expected a string as mapping key");
    EXPECT_BUFFER("- 1\n", "mem.yaml:1:1: expected a mapping");
    EXPECT_BUFFER("hello\n", "mem.yaml:1:1: expected a mapping");
    EXPECT_BUFFER("~\n", "mem.yaml: the configuration is empty");
    EXPECT_BUFFER("", "mem.yaml: the configuration is empty");
    EXPECT_BUFFER(L "log_level: \"info\x01\"\n",
        "mem.yaml:2:17: YAML syntax error: control characters are not allowed");
    EXPECT_BUFFER(L "pid_file: \"a\\0b\"\n", "mem.yaml:2:11: unexpected NUL character in string");

    /* Too deep to be a config: refused before anything walks it. */
    char deep[400];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "%s", L "x: ");
    for (int i = 0; i < 70; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    EXPECT_BUFFER(deep, "mem.yaml:2:67: nesting is too deep");

    /* Null-valued sections read as empty; `access_log: off`; quoted scalars. */
    gh_errors_t e;
    gh_errors_init(&e);
    const char *text = L "upstreams:\nroutes:\ntrusted_proxies: ~\naccess_log: off\n"
                       "workers: \"4\"\nlog_level: 'warn'\n";
    gh_config_t *c = gh_config_load_buffer("mem.yaml", text, strlen(text), &e);
    CHECK(c != NULL);
    CHECK_INT(e.n, 0);
    if (c) {
        CHECK(!c->access_log.enabled);
        CHECK_INT(c->workers, 4);
        CHECK_INT(c->log_level, GH_LOG_WARN);
        CHECK_INT(c->nroutes, 0);
        CHECK(c->router != NULL);
    }
    gh_config_release(c);
    gh_errors_free(&e);
    CHECK(gh_config_load_buffer("null.yaml", NULL, 0, &e) == NULL);
    CHECK_STR(e.n ? e.lines[0] : NULL, "null.yaml: the configuration is empty");
    gh_errors_free(&e);
}

static void test_more_values(void)
{
    const char *text = L "routes:\n- {host: a, redirect: /x, status: 302}\n"
                       "- {host: b, respond: {status: 503, body: \"a\\0b\"}}\n"
                       "- {host: c, upstream: \"http://[::1]\"}\n"
                       "- {host: d, upstream: \"HTTP://D:81/\"}\n"
                       "- {host: \"[::1]\", path: /x/../y, respond: {}}\n"
                       "- {host: \"*.\", respond: {}}\n";
    gh_errors_t e;
    gh_errors_init(&e);
    gh_config_t *c = gh_config_load_buffer("mem.yaml", text, strlen(text), &e);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->routes[0].redirect_status, 302);
        CHECK_INT(c->routes[1].respond_status, 503);
        CHECK_INT(c->routes[1].respond_body_len, 3);
        CHECK(memcmp(c->routes[1].respond_body, "a\0b", 4) == 0);
        const gh_server_conf_t *s = &c->routes[2].upstream->servers[0];
        CHECK_STR(s->host, "::1");
        CHECK_INT(s->port, 80);
        CHECK_STR(s->authority, "[::1]:80");
        s = &c->routes[3].upstream->servers[0];
        CHECK_STR(s->host, "d");
        CHECK_INT(s->port, 81);
        CHECK_STR(s->authority, "d:81");
        CHECK_STR(c->routes[4].host, "[::1]");
        CHECK_STR(c->routes[4].path, "/y");      /* normalised by routes/ */
        CHECK_STR(c->routes[4].name, "[::1]/y");
        CHECK_STR(c->routes[5].host, "*");
    }
    gh_config_release(c);
    gh_errors_free(&e);

    EXPECT_BUFFER(L "listen: []\n", "mem.yaml:2:1: duplicate key 'listen'");
    EXPECT_BUFFER("listen: []\n", "mem.yaml: nothing to do: no listen or connect entries");
    EXPECT_BUFFER(L "listen2: 1\nworkers: 0\naccess_log: {path: \"\"}\n",
        "mem.yaml:2:1: unknown key 'listen2' (did you mean 'listen'?)",
        "mem.yaml:3:10: expected a number from 1 to 256",
        "mem.yaml:4:20: expected a non-empty string");
    EXPECT_BUFFER(L "admin: {address: 127.0.0.1:1}\n",
        NOT_YET(GH_FEAT_ADMIN, "mem.yaml:2:1: the admin section is not supported yet"),
        "mem.yaml:2:18: admin address '127.0.0.1:1' is also a listen address (line 1)");
    EXPECT_BUFFER("listen: [{address: 127.0.0.1:1, tls: true, redirect_https: true}]\n",
        "mem.yaml:1:10: listener 127.0.0.1:1 has tls: true but tls.certificates is empty",
        NOT_YET(GH_FEAT_LISTEN_TLS, "mem.yaml:1:33: tls on a listener is not supported yet"),
        "mem.yaml:1:44: redirect_https on a tls listener would redirect to itself");
}

/* The gh_node_* helpers that plugins use to decode their own settings. */
static void test_node_helpers(void)
{
    gh_arena_t *a = gh_arena_new();
    gh_errors_t e;
    gh_errors_init(&e);
    const char *text = "rate: 10/s\nbad_rate: 0/s\nburst: 20\nflag: true\nname: x\n"
                       "by: api-key\nlist: [a]\nempty:\n";
    gh_node_t *root = gh__yaml_parse(a, "p.yaml", text, strlen(text), &e);
    CHECK(root != NULL);
    if (!root)
        goto out;
    double rate = 0;
    uint64_t burst = 0;
    bool flag = false;
    const char *s = NULL;
    int by = -1;
    static const char *const bys[] = { "client_ip", "api_key", "route", NULL };
    static const char *const known[] = { "rate", "burst", "flag", "name", "by", "list", NULL };
    CHECK_INT(gh_node_rate(&e, gh_node_get(root, "rate"), &rate), 0);
    CHECK(rate == 10.0);
    CHECK_INT(gh_node_rate(&e, gh_node_get(root, "bad_rate"), &rate), -1);
    CHECK_INT(gh_node_rate(&e, gh_node_get(root, "list"), &rate), -1);
    CHECK_INT(gh_node_uint(&e, gh_node_get(root, "burst"), 1, 100, &burst), 0);
    CHECK_INT(burst, 20);
    CHECK_INT(gh_node_bool(&e, gh_node_get(root, "flag"), &flag), 0);
    CHECK(flag);
    CHECK_INT(gh_node_string(&e, gh_node_get(root, "name"), &s), 0);
    CHECK_STR(s, "x");
    CHECK_INT(gh_node_enum(&e, gh_node_get(root, "by"), bys, "by", &by), -1);
    CHECK(gh_node_is_null(gh_node_get(root, "empty")));
    CHECK(gh_node_get(root, "nope") == NULL);
    CHECK_INT(gh_node_get_key(root, "burst")->loc.line, 3);
    CHECK_INT(gh_node_check_keys(&e, root, known, "plugin 'p'"), -1);
    CHECK_INT(gh_node_expect(&e, gh_node_get(root, "list"), GH_NODE_MAP), -1);
    CHECK(gh_did_you_mean("upstrem", known, 6) == NULL);
    CHECK_STR(gh_did_you_mean("brust", known, 6), "burst");
    CHECK_STR(gh_did_you_mean("nmae", known, 6), "name");
    CHECK(gh_did_you_mean("zz", known, 6) == NULL);

    const char *want[] = {
        "p.yaml:2:11: invalid rate '0/s' (expected e.g. 20/s, 600/m, 10000/h)",
        "p.yaml:7:7: expected a rate",
        "p.yaml:6:5: invalid by 'api-key' (did you mean 'api_key'?)",
        "p.yaml:2:1: unknown key 'bad_rate' in plugin 'p'",
        "p.yaml:8:1: unknown key 'empty' in plugin 'p'",
        "p.yaml:7:7: expected a mapping",
    };
    CHECK_INT(e.n, 6);
    for (size_t i = 0; i < 6 && i < e.n; i++)
        CHECK_STR(e.lines[i], want[i]);
out:
    gh_errors_free(&e);
    gh_arena_free(a);
}

static void test_errors_format(void)
{
    gh_errors_t e;
    gh_errors_init(&e);
    gh_loc_t loc = { "f.yaml", 3, 7 }, file_only = { "f.yaml", 0, 0 };
    gh_errors_add(&e, &loc, "bad %s", "thing");
    gh_errors_add(&e, &file_only, "whole file");
    gh_errors_add(&e, NULL, "as is: %d", 5);
    gh_errors_add(&e, &loc, "warning: deprecated");
    CHECK_INT(e.n, 4);
    CHECK_STR(e.lines[0], "f.yaml:3:7: bad thing");
    CHECK_STR(e.lines[1], "f.yaml: whole file");
    CHECK_STR(e.lines[2], "as is: 5");
    CHECK_INT(e.nwarnings, 1);
    for (int i = 0; i < 100; i++)
        gh_errors_add(&e, NULL, "%d", i);
    CHECK_INT(e.n, 104);
    CHECK_STR(e.lines[103], "99");
    gh_errors_free(&e);
    CHECK_INT(e.n, 0);
    gh_errors_free(&e);
}

static struct sockaddr_storage sa(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        ss.ss_family = AF_INET6;
        inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr);
    } else {
        ss.ss_family = AF_INET;
        inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr);
    }
    return ss;
}
#define MATCH(cidr, ip) (sa_tmp = sa(ip), gh_cidr_match(&(cidr), (struct sockaddr *)&sa_tmp))

static void test_cidr(void)
{
    struct sockaddr_storage sa_tmp;
    gh_cidr_t c;
    CHECK_INT(gh_cidr_parse("10.0.0.0/8", &c), 0);
    CHECK_INT(c.family, AF_INET);
    CHECK_INT(c.prefix, 8);
    CHECK(MATCH(c, "10.255.1.2"));
    CHECK(!MATCH(c, "11.0.0.1"));
    CHECK(MATCH(c, "::ffff:10.1.1.1"));     /* IPv4-mapped from a dual-stack socket */
    CHECK(!MATCH(c, "::1"));
    CHECK_INT(gh_cidr_parse("192.168.1.77/24", &c), 0);  /* host bits are cleared */
    CHECK_INT(c.addr[3], 0);
    CHECK(MATCH(c, "192.168.1.1"));
    CHECK(!MATCH(c, "192.168.2.1"));
    CHECK_INT(gh_cidr_parse("127.0.0.1", &c), 0);
    CHECK_INT(c.prefix, 32);
    CHECK(MATCH(c, "127.0.0.1"));
    CHECK(!MATCH(c, "127.0.0.2"));
    CHECK_INT(gh_cidr_parse("0.0.0.0/0", &c), 0);
    CHECK(MATCH(c, "8.8.8.8"));
    CHECK_INT(gh_cidr_parse("fd00::/8", &c), 0);
    CHECK(MATCH(c, "fdab::1"));
    CHECK(!MATCH(c, "fe80::1"));
    CHECK(!MATCH(c, "10.0.0.1"));
    CHECK_INT(gh_cidr_parse("10.0.0.0/12", &c), 0);
    CHECK(MATCH(c, "10.15.255.255"));
    CHECK(!MATCH(c, "10.16.0.0"));
    CHECK_INT(gh_cidr_parse("::ffff:0:0/96", &c), 0);
    CHECK(MATCH(c, "1.2.3.4"));             /* IPv4 peer against a mapped range */
    CHECK_INT(gh_cidr_parse("::1/128", &c), 0);
    CHECK(MATCH(c, "::1"));

    const char *bad[] = { "", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1",
                          "10.0.0.0/8x", "10.0.0/8", "host", "10.0.0.0/0008",
                          "1.2.3.4 ", "fe80::1%eth0" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (gh_cidr_parse(bad[i], &c) != -1)
            fprintf(stderr, "cidr '%s' accepted\n", bad[i]);
        CHECK_INT(gh_cidr_parse(bad[i], &c), -1);
    }

    gh_cidr_t list[2];
    gh_cidr_parse("10.0.0.0/8", &list[0]);
    gh_cidr_parse("::1", &list[1]);
    sa_tmp = sa("::1");
    CHECK(gh_cidr_match_any(list, 2, (struct sockaddr *)&sa_tmp));
    sa_tmp = sa("::2");
    CHECK(!gh_cidr_match_any(list, 2, (struct sockaddr *)&sa_tmp));
    CHECK(!gh_cidr_match_any(list, 0, (struct sockaddr *)&sa_tmp));
}

static void test_sockaddr(void)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    CHECK_INT(gh_parse_sockaddr("1.2.3.4:80", &ss, &len), 0);
    CHECK_INT(ss.ss_family, AF_INET);
    CHECK_INT(len, sizeof(struct sockaddr_in));
    CHECK_INT(port_of(&ss), 80);
    CHECK_INT(gh_parse_sockaddr("[::1]:443", &ss, &len), 0);
    CHECK_INT(ss.ss_family, AF_INET6);
    CHECK_INT(len, sizeof(struct sockaddr_in6));
    CHECK_INT(port_of(&ss), 443);
    CHECK_INT(gh_parse_sockaddr("0.0.0.0:65535", &ss, &len), 0);
    CHECK_INT(port_of(&ss), 65535);
    CHECK_INT(gh_parse_sockaddr("[::]:1", &ss, &len), 0);

    const char *bad[] = { "", ":80", "1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536",
                          "1.2.3.4:080000", "1.2.3.4:-1", "1.2.3.4:8a", "localhost:80",
                          "::1:80", "[::1]", "[::1]80", "[1.2.3.4]:80", "[::1:80",
                          "1.2.3:80", "*:80", " 1.2.3.4:80" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (gh_parse_sockaddr(bad[i], &ss, &len) != -1)
            fprintf(stderr, "address '%s' accepted\n", bad[i]);
        CHECK_INT(gh_parse_sockaddr(bad[i], &ss, &len), -1);
    }
}

static void test_arena(void)
{
    gh_arena_t *a = gh_arena_new();
    for (size_t i = 1; i < 3000; i += 7) {
        unsigned char *p = gh_arena_alloc(a, i);
        CHECK_INT((uintptr_t)p % 16, 0);
        size_t nonzero = 0;
        for (size_t j = 0; j < i; j++)
            nonzero += p[j] != 0;
        CHECK_INT(nonzero, 0);
        memset(p, 0xab, i);
    }
    unsigned char *big = gh_arena_alloc(a, 1 << 20);
    CHECK_INT((uintptr_t)big % 16, 0);
    CHECK_INT(big[(1 << 20) - 1], 0);
    memset(big, 1, 1 << 20);
    CHECK(gh_arena_alloc(a, 0) != gh_arena_alloc(a, 0));
    CHECK_STR(gh_arena_strdup(a, "hello"), "hello");
    CHECK_STR(gh_arena_strndup(a, "hello", 3), "hel");
    CHECK_STR(gh_arena_strndup(a, "hi", 10), "hi");
    gh_arena_free(a);
    gh_arena_free(NULL);
}

int main(void)
{
    test_full();
    test_defaults();
    test_example();
    test_env();
    test_unknown_keys();
    test_types();
    test_units_in_config();
    test_duplicates();
    test_undefined();
    test_listen();
    test_routes();
    test_sections();
    test_files();
    test_syntax();
    test_unsupported();
    test_yaml_edges();
    test_more_values();
    test_node_helpers();
    test_errors_format();
    test_cidr();
    test_sockaddr();
    test_arena();
    TEST_MAIN_END();
}
