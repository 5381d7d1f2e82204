/* The plugins (plugins/): config checks with their exact error text, the
 * decisions of api_key, rate_limit, ip_filter and headers on requests, the
 * edit helpers, reload reuse and metrics. Configs are built here from YAML
 * text (the loader does not take plugins yet); keys files are written to a
 * temporary directory. Runs with tests/ as its working directory. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "conf/arena.h"
#include "conf/config.h"
#include "conf/node.h"
#include "conf/yaml.h"
#include "plugins/builtin.h"
#include "plugins/gcra.h"
#include "plugins/plugin.h"
#include "tests/unit/test.h"

/* ---- fixtures ---------------------------------------------------------- */

/* A config with the `plugins` and `routes` of a YAML text; routes are
 * `- { name: N, plugins: [a, b] }`. */
typedef struct fixture {
    gh_arena_t *arena;
    gh_config_t *cfg;
    gh_errors_t errs;
} fixture_t;

static void fixture_load(fixture_t *f, const char *file, const char *yaml)
{
    memset(f, 0, sizeof(*f));
    gh_errors_init(&f->errs);
    f->arena = gh_arena_new();
    gh_config_t *c = gh_arena_alloc(f->arena, sizeof(*c));
    f->cfg = c;
    c->file = gh_arena_strdup(f->arena, file);
    gh_node_t *root = gh__yaml_parse(f->arena, c->file, yaml, strlen(yaml), &f->errs);
    CHECK(root != NULL);
    const gh_node_t *pl = gh_node_get(root, "plugins"), *rl = gh_node_get(root, "routes");
    if (pl) {
        c->plugins = gh_arena_alloc(f->arena, (pl->n + 1) * sizeof(*c->plugins));
        for (size_t i = 0; i < pl->n; i++) {
            gh_plugin_conf_t *p = gh_arena_alloc(f->arena, sizeof(*p));
            const gh_node_t *t = gh_node_get(pl->items[2 * i + 1], "type");
            p->name = pl->items[2 * i]->str;
            p->node = pl->items[2 * i + 1];
            p->type = t ? t->str : NULL;
            p->loc = pl->items[2 * i]->loc;
            p->index = i;
            c->plugins[c->nplugins++] = p;
        }
    }
    if (rl) {
        c->routes = gh_arena_alloc(f->arena, (rl->n + 1) * sizeof(*c->routes));
        for (size_t i = 0; i < rl->n; i++) {
            gh_route_conf_t *r = &c->routes[c->nroutes++];
            const gh_node_t *m = rl->items[i], *ps = gh_node_get(m, "plugins");
            r->name = gh_node_get(m, "name")->str;
            r->loc = m->loc;
            r->index = i;
            r->plugins = gh_arena_alloc(f->arena, (ps->n + 1) * sizeof(*r->plugins));
            for (size_t j = 0; j < ps->n; j++)
                for (size_t k = 0; k < c->nplugins; k++)
                    if (strcmp(c->plugins[k]->name, ps->items[j]->str) == 0)
                        r->plugins[r->nplugins++] = c->plugins[k];
        }
    }
}

static void fixture_free(fixture_t *f)
{
    gh_plugins_destroy(f->cfg);
    gh_errors_free(&f->errs);
    gh_arena_free(f->arena);
}

/* Checks and creates; expects no error. */
static void fixture_ok(fixture_t *f, const char *file, const char *yaml, fixture_t *prev)
{
    fixture_load(f, file, yaml);
    CHECK_INT(gh_plugins_check(f->cfg, &f->errs), 0);
    CHECK_INT(gh_plugins_create(f->cfg, prev ? prev->cfg : NULL, &f->errs), 0);
    CHECK_INT(f->errs.n, 0);
    for (size_t i = 0; i < f->errs.n; i++)
        fprintf(stderr, "  unexpected: %s\n", f->errs.lines[i]);
}

/* gh_plugins_check on YAML must fail with exactly these lines. */
static void expect_check(int line, const char *yaml, const char *const *want)
{
    fixture_t f;
    fixture_load(&f, "p.yaml", yaml);
    CHECK_INT(gh_plugins_check(f.cfg, &f.errs), -1);
    size_t n = 0;
    while (want[n])
        n++;
    int before = gh_test_failed;
    for (size_t i = 0; i < n || i < f.errs.n; i++)
        CHECK_STR(i < f.errs.n ? f.errs.lines[i] : NULL, i < n ? want[i] : NULL);
    if (gh_test_failed != before) {
        fprintf(stderr, "  (expectation at test_plugins.c:%d) got:\n", line);
        for (size_t i = 0; i < f.errs.n; i++)
            fprintf(stderr, "    %s\n", f.errs.lines[i]);
    }
    fixture_free(&f);
}
#define EXPECT_CHECK(yaml, ...) \
    expect_check(__LINE__, yaml, (const char *const[]){ __VA_ARGS__, NULL })

static void sha256_hex(const char *s, char out[65])
{
    unsigned char md[32];
    unsigned len = 0;
    EVP_Digest(s, strlen(s), md, &len, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* A request on route r from ip with the given headers (name, value, ...). */
typedef struct request {
    gh_preq_t pr;
    gh_preq_header_t h[8];
    struct sockaddr_storage addr;
    size_t ran;
} request_t;

static void request_init(request_t *q, const gh_route_conf_t *r, const char *ip, ...)
{
    gh_preq_init(&q->pr);
    memset(&q->addr, 0, sizeof(q->addr));
    q->ran = 0;
    struct sockaddr_in *in = (struct sockaddr_in *)&q->addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&q->addr;
    if (ip && inet_pton(AF_INET, ip, &in->sin_addr) == 1)
        in->sin_family = AF_INET;
    else if (ip && inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1)
        in6->sin6_family = AF_INET6;
    q->pr.route = r;
    q->pr.client_addr = ip ? (struct sockaddr *)&q->addr : NULL;
    q->pr.client_ip = ip;
    q->pr.method = "GET";
    q->pr.host = "api.example.com";
    q->pr.path = "/v1/x";
    q->pr.headers = q->h;
    va_list ap;
    va_start(ap, ip);
    const char *name;
    while ((name = va_arg(ap, const char *)) && q->pr.nheaders < 8) {
        q->h[q->pr.nheaders].name = name;
        q->h[q->pr.nheaders].value = va_arg(ap, const char *);
        q->pr.nheaders++;
    }
    va_end(ap);
}

/* Runs the route's plugins on q; returns the status and ends the request
 * when asked. */
static int run(request_t *q, bool end)
{
    int status = gh_plugins_request(q->pr.route, &q->pr, &q->ran);
    if (end)
        gh_plugins_end(q->pr.route, &q->pr, q->ran);
    return status;
}

static const char *resp_set(const gh_preq_t *r, const char *name)
{
    for (size_t i = 0; i < r->nresp_set; i++)
        if (strcasecmp(r->resp_set[i].name, name) == 0)
            return r->resp_set[i].value;
    return NULL;
}

static const char *req_set(const gh_preq_t *r, const char *name)
{
    for (size_t i = 0; i < r->nreq_set; i++)
        if (strcasecmp(r->req_set[i].name, name) == 0)
            return r->req_set[i].value;
    return NULL;
}

static bool req_removed(const gh_preq_t *r, const char *name)
{
    for (size_t i = 0; i < r->nreq_remove; i++)
        if (strcasecmp(r->req_remove[i], name) == 0)
            return true;
    return false;
}

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
    return fake_now;
}

static char tmpdir[64];

static const char *write_file(const char *name, const char *text)
{
    static char path[8][128];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 128, "%s/%s", tmpdir, name);
    FILE *fp = fopen(p, "w");
    CHECK(fp != NULL);
    if (fp) {
        fputs(text, fp);
        fclose(fp);
    }
    return p;
}

/* ---- tests -------------------------------------------------------------- */

static void test_registry(void)
{
    CHECK(gh_plugin_find("api_key") == &gh__api_key_ops);
    CHECK(gh_plugin_find("rate_limit") == &gh__rate_limit_ops);
    CHECK(gh_plugin_find("ip_filter") == &gh__ip_filter_ops);
    CHECK(gh_plugin_find("headers") == &gh__headers_ops);
    CHECK(gh_plugin_find("nope") == NULL);
    CHECK(gh_plugin_find(NULL) == NULL);
}

static void test_node_equal(void)
{
    gh_arena_t *a = gh_arena_new();
    gh_errors_t e;
    gh_errors_init(&e);
    const char *t1 = "type: rate_limit\nrate: 10/s\noverrides: { a: { burst: 2 } }\nl: [1, 2]\n";
    const char *t2 = "\n\nrate: 10/s\ntype: rate_limit\nl: [1, 2]\noverrides:\n  a: {burst: 2}\n";
    const char *t3 = "type: rate_limit\nrate: 10/s\noverrides: { a: { burst: 3 } }\nl: [1, 2]\n";
    const char *t4 = "type: rate_limit\nrate: 10/s\noverrides: { a: { burst: 2 } }\nl: [2, 1]\n";
    const char *t5 = "type: rate_limit\nrate: \"10/s\"\noverrides: { a: { burst: 2 } }\nl: [1, 2]\n";
    const char *t6 = "type: rate_limit\nrate: 10/s\noverrides: { a: { burst: 2 } }\n";
    gh_node_t *n1 = gh__yaml_parse(a, "a.yaml", t1, strlen(t1), &e);
    gh_node_t *n2 = gh__yaml_parse(a, "b.yaml", t2, strlen(t2), &e);
    gh_node_t *n3 = gh__yaml_parse(a, "c.yaml", t3, strlen(t3), &e);
    gh_node_t *n4 = gh__yaml_parse(a, "d.yaml", t4, strlen(t4), &e);
    gh_node_t *n5 = gh__yaml_parse(a, "e.yaml", t5, strlen(t5), &e);
    gh_node_t *n6 = gh__yaml_parse(a, "f.yaml", t6, strlen(t6), &e);
    CHECK_INT(e.n, 0);
    CHECK(gh__node_equal(n1, n1));
    CHECK(gh__node_equal(n1, n2));      /* other order and lines */
    CHECK(gh__node_equal(n2, n1));
    CHECK(!gh__node_equal(n1, n3));     /* a nested value */
    CHECK(!gh__node_equal(n1, n4));     /* list order matters */
    CHECK(!gh__node_equal(n1, n5));     /* quoting */
    CHECK(!gh__node_equal(n1, n6));
    CHECK(!gh__node_equal(n6, n1));
    CHECK(!gh__node_equal(n1, NULL));
    gh_errors_free(&e);
    gh_arena_free(a);
}

static void test_check_errors(void)
{
    EXPECT_CHECK("plugins:\n"
                 "  k:\n"
                 "    type: api_key\n"
                 "    keys:\n"
                 "      - { id: a, hash: \"sha256:abc\" }\n"
                 "      - { id: \"no spaces\", hash: \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\" }\n"
                 "      - { hash: x, idd: b }\n"
                 "    forwrd_key_id: X-Key\n"
                 "  r:\n"
                 "    type: rate_limit\n"
                 "    rate: 10/x\n"
                 "    brust: 5\n"
                 "    by: client-ip\n"
                 "  t:\n"
                 "    type: rate_limt\n"
                 "  u:\n"
                 "    type: geoip\n",
                 "p.yaml:8:5: unknown key 'forwrd_key_id' in plugin 'k' (did you mean 'forward_key_id'?)",
                 "p.yaml:5:24: expected sha256:<64 hex digits> (gatehouse hash-key prints one)",
                 "p.yaml:6:15: invalid key id (1 to 63 letters, digits, '-', '_', '.' or '@')",
                 "p.yaml:6:34: expected sha256:<64 hex digits> (gatehouse hash-key prints one)",
                 "p.yaml:7:20: unknown key 'idd' in a key of plugin 'k' (did you mean 'id'?)",
                 "p.yaml:7:9: missing 'id' in a key of plugin 'k'",
                 "p.yaml:7:17: expected sha256:<64 hex digits> (gatehouse hash-key prints one)",
                 "p.yaml:12:5: unknown key 'brust' in plugin 'r' (did you mean 'burst'?)",
                 "p.yaml:11:11: invalid rate '10/x' (expected e.g. 20/s, 600/m, 10000/h)",
                 "p.yaml:13:9: invalid by 'client-ip' (did you mean 'client_ip'?)",
                 "p.yaml:15:11: unknown plugin type 'rate_limt' (did you mean 'rate_limit'?)",
                 "p.yaml:17:11: unknown plugin type 'geoip' (expected api_key, rate_limit, ip_filter or headers)");

    EXPECT_CHECK("plugins:\n"
                 "  r:\n"
                 "    type: rate_limit\n"
                 "    burst: 0\n"
                 "    concurrency: many\n"
                 "    overrides:\n"
                 "      n8n: { rate: 2/s, burts: 5 }\n"
                 "  r2:\n"
                 "    type: rate_limit\n"
                 "    rate: 5/m\n"
                 "    by: \"header:Bad Name\"\n"
                 "  r3:\n"
                 "    type: rate_limit\n"
                 "    rate: 5/m\n"
                 "    overrides:\n"
                 "      x: { burst: 2000000 }\n"
                 "      y: {}\n"
                 "    by: ip\n",
                 "p.yaml:3:5: missing 'rate'",
                 "p.yaml:4:12: expected a number from 1 to 1000000",
                 "p.yaml:5:18: expected a number",
                 "p.yaml:11:9: invalid header name 'Bad Name' in by",
                 "p.yaml:18:9: invalid by 'ip' (expected client_ip, api_key, route or header:NAME)");

    /* Overrides are checked once the plugin's own limits are good. */
    EXPECT_CHECK("plugins:\n"
                 "  r:\n"
                 "    type: rate_limit\n"
                 "    rate: 5/m\n"
                 "    overrides:\n"
                 "      x: { burst: 2000000 }\n"
                 "      y: {}\n"
                 "      z: { rate: 1/s, burts: 5 }\n",
                 "p.yaml:6:19: expected a number from 1 to 1000000",
                 "p.yaml:7:10: an override needs rate, burst or concurrency",
                 "p.yaml:8:23: unknown key 'burts' in an override of plugin 'r' (did you mean 'burst'?)");

    EXPECT_CHECK("plugins:\n"
                 "  f:\n"
                 "    type: ip_filter\n"
                 "    allow: [\"10.0.0.0/33\", \"::1/128\", 12]\n"
                 "    deny: []\n"
                 "  g:\n"
                 "    type: ip_filter\n"
                 "  h:\n"
                 "    type: headers\n"
                 "    request_set: { \"X Bad\": 1, Content-Length: 5, X-Ok: \" padded\" }\n"
                 "    response_remove: [ Server, server ]\n"
                 "    reqest_remove: [ X ]\n"
                 "  k:\n"
                 "    type: api_key\n"
                 "    forward_key_id: \"Bad:Header\"\n",
                 "p.yaml:4:13: invalid CIDR '10.0.0.0/33' (expected e.g. 10.0.0.0/8 or ::1/128)",
                 "p.yaml:4:39: invalid CIDR '12' (expected e.g. 10.0.0.0/8 or ::1/128)",
                 "p.yaml:5:11: expected a non-empty list",
                 "p.yaml:6:3: plugin 'g' needs allow or deny",
                 "p.yaml:12:5: unknown key 'reqest_remove' in plugin 'h' (did you mean 'request_remove'?)",
                 "p.yaml:10:20: invalid header name 'X Bad'",
                 "p.yaml:10:32: header 'Content-Length' is managed by gatehouse and cannot be changed",
                 "p.yaml:10:57: invalid header value (control characters, or spaces at either end)",
                 "p.yaml:11:32: header 'server' is listed twice in response_remove",
                 "p.yaml:13:3: plugin 'k' needs keys or keys_file",
                 "p.yaml:15:21: invalid header name 'Bad:Header'");

    /* Routes: by: api_key needs an api_key before it; at most 16 plugins. */
    EXPECT_CHECK("plugins:\n"
                 "  k: { type: api_key, keys: [] }\n"
                 "  r: { type: rate_limit, rate: 1/s, by: api_key }\n"
                 "routes:\n"
                 "  - { name: ok, plugins: [k, r] }\n"
                 "  - { name: bad, plugins: [r, k] }\n"
                 "  - { name: worse, plugins: [r] }\n",
                 "p.yaml:6:5: rate_limit plugin 'r' has by: api_key but no api_key plugin comes "
                 "before it on this route",
                 "p.yaml:7:5: rate_limit plugin 'r' has by: api_key but no api_key plugin comes "
                 "before it on this route");
}

static void test_keys_file(void)
{
    char ha[65], hb[65], line[512];
    sha256_hex("secret-a", ha);
    sha256_hex("secret-b", hb);
    char text[1024];
    snprintf(text, sizeof(text),
             "# the keys of the team\n"
             "\n"
             "alice sha256:%s\r\n"
             "   bob\tsha256:%s   # added in May\n",
             ha, hb);
    const char *good = write_file("good.keys", text);
    snprintf(text, sizeof(text),
             "alice sha256:%s\n"
             "sk-live-0123456789\n"
             "bob sha256:%.60s\n"
             "bad/id sha256:%s\n"
             "carol sha256:%s trailing\n"
             "alice sha256:%s\n"
             "dave sha256:%s\n",
             ha, hb, hb, hb, hb, ha);
    const char *bad = write_file("bad.keys", text);

    fixture_t f;
    snprintf(line, sizeof(line),
             "plugins:\n  k:\n    type: api_key\n    keys_file: %s\n", good);
    fixture_ok(&f, "p.yaml", line, NULL);
    gh_route_conf_t *r = &(gh_route_conf_t){ .name = "x" };
    gh_plugin_conf_t *list[1] = { f.cfg->plugins[0] };
    r->plugins = list;
    r->nplugins = 1;
    request_t q;
    request_init(&q, r, "10.0.0.1", "X-API-Key", "secret-b", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(q.pr.key_id, "bob");
    fixture_free(&f);

    /* Errors point into the keys file, and never quote what failed. */
    char want[8][256];
    snprintf(want[0], 256, "%s:2:1: expected 'ID sha256:<64 hex digits>'", bad);
    snprintf(want[1], 256, "%s:3:5: expected sha256:<64 hex digits> (gatehouse hash-key prints one)", bad);
    snprintf(want[2], 256, "%s:4:1: invalid key id (1 to 63 letters, digits, '-', '_', '.' or '@')", bad);
    snprintf(want[3], 256, "%s:5:79: unexpected text after the hash (comments start with '#')", bad);
    snprintf(want[4], 256, "p.yaml:4:16: cannot read %s/missing.keys: No such file or directory", tmpdir);
    snprintf(line, sizeof(line),
             "plugins:\n  k:\n    type: api_key\n    keys_file: %s\n"
             "  m:\n    type: api_key\n    keys_file: %s/missing.keys\n", bad, tmpdir);
    snprintf(want[4], 256, "p.yaml:7:16: cannot read %s/missing.keys: No such file or directory", tmpdir);
    expect_check(__LINE__, line, (const char *const[]){ want[0], want[1], want[2], want[3],
                                                        want[4], NULL });

    /* Duplicates, once the lines themselves are fine. */
    snprintf(text, sizeof(text), "alice sha256:%s\nbob sha256:%s\nalice sha256:%s\n", ha, hb, hb);
    const char *dup = write_file("dup.keys", text);
    snprintf(line, sizeof(line),
             "plugins:\n  k:\n    type: api_key\n    keys: [{ id: carol, hash: \"sha256:%s\" }]\n"
             "    keys_file: %s\n", ha, dup);
    snprintf(want[0], 256, "%s:3:1: duplicate key id 'alice'", dup);
    snprintf(want[1], 256, "%s:1:1: key 'alice' has the same hash as key 'carol'", dup);
    snprintf(want[2], 256, "%s:3:1: key 'alice' has the same hash as key 'bob'", dup);
    expect_check(__LINE__, line, (const char *const[]){ want[0], want[1], want[2], NULL });
}

static void test_api_key(void)
{
    char ha[65], hb[65], yaml[1024];
    sha256_hex("secret-a", ha);
    sha256_hex("secret-b", hb);
    snprintf(yaml, sizeof(yaml),
             "plugins:\n"
             "  k:\n"
             "    type: api_key\n"
             "    keys:\n"
             "      - { id: openwebui, hash: \"sha256:%s\" }\n"
             "      - { id: n8n, hash: \"SHA256:%s\" }\n"
             "    forward_key_id: X-Gatehouse-Key-Id\n"
             "  plain:\n"
             "    type: api_key\n"
             "    keys: [{ id: n8n, hash: \"sha256:%s\" }]\n"
             "routes:\n"
             "  - { name: r, plugins: [k] }\n"
             "  - { name: p, plugins: [plain] }\n",
             ha, hb, hb);
    /* "SHA256:" is not the prefix keygen prints. */
    fixture_t f;
    fixture_load(&f, "p.yaml", yaml);
    CHECK_INT(gh_plugins_check(f.cfg, &f.errs), -1);
    CHECK_INT(f.errs.n, 1);
    CHECK_STR(f.errs.n ? f.errs.lines[0] : NULL,
              "p.yaml:6:26: expected sha256:<64 hex digits> (gatehouse hash-key prints one)");
    fixture_free(&f);

    snprintf(yaml, sizeof(yaml),
             "plugins:\n"
             "  k:\n"
             "    type: api_key\n"
             "    keys:\n"
             "      - { id: openwebui, hash: \"sha256:%s\" }\n"
             "      - { id: n8n, hash: \"sha256:%s\" }\n"
             "    forward_key_id: X-Gatehouse-Key-Id\n"
             "  plain:\n"
             "    type: api_key\n"
             "    keys: [{ id: n8n, hash: \"sha256:%s\" }]\n"
             "routes:\n"
             "  - { name: r, plugins: [k] }\n"
             "  - { name: p, plugins: [plain] }\n",
             ha, hb, hb);
    fixture_ok(&f, "p.yaml", yaml, NULL);
    const gh_route_conf_t *r = &f.cfg->routes[0], *p = &f.cfg->routes[1];
    request_t q;

    request_init(&q, r, "10.0.0.1", "Authorization", "Bearer secret-a", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(q.pr.key_id, "openwebui");
    CHECK(req_removed(&q.pr, "Authorization"));
    CHECK(req_removed(&q.pr, "X-API-Key"));
    CHECK_STR(req_set(&q.pr, "X-Gatehouse-Key-Id"), "openwebui");
    CHECK_INT(q.pr.nresp_set, 0);

    request_init(&q, r, "10.0.0.1", "x-api-key", "  secret-b ", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(q.pr.key_id, "n8n");
    CHECK_STR(req_set(&q.pr, "X-Gatehouse-Key-Id"), "n8n");

    request_init(&q, r, "10.0.0.1", "authorization", "bEaReR \t secret-a  ", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(q.pr.key_id, "openwebui");

    /* Bearer wins over X-API-Key; both go. */
    request_init(&q, r, "10.0.0.1", "Authorization", "Bearer wrong", "X-API-Key", "secret-a",
                 NULL);
    CHECK_INT(run(&q, true), 401);
    CHECK_STR(resp_set(&q.pr, "WWW-Authenticate"),
              "Bearer realm=\"gatehouse\", error=\"invalid_token\"");
    CHECK_STR(q.pr.key_id, "");
    CHECK(req_set(&q.pr, "X-Gatehouse-Key-Id") == NULL);

    request_init(&q, r, "10.0.0.1", NULL);
    CHECK_INT(run(&q, true), 401);
    CHECK_STR(resp_set(&q.pr, "WWW-Authenticate"), "Bearer realm=\"gatehouse\"");

    /* Another scheme is no key at all; X-API-Key is then read. */
    request_init(&q, r, "10.0.0.1", "Authorization", "Basic c2VjcmV0LWE=", NULL);
    CHECK_INT(run(&q, true), 401);
    CHECK_STR(resp_set(&q.pr, "WWW-Authenticate"), "Bearer realm=\"gatehouse\"");
    request_init(&q, r, "10.0.0.1", "Authorization", "Basic x", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK(req_removed(&q.pr, "Authorization"));
    request_init(&q, r, "10.0.0.1", "Authorization", "Bearer ", NULL);
    CHECK_INT(run(&q, true), 401);
    CHECK_STR(resp_set(&q.pr, "WWW-Authenticate"), "Bearer realm=\"gatehouse\"");
    request_init(&q, r, "10.0.0.1", "Authorization", "Bearersecret-a", NULL);
    CHECK_INT(run(&q, true), 401);
    /* A key that is a prefix of a good one, or the hash itself, is wrong. */
    request_init(&q, r, "10.0.0.1", "X-API-Key", "secret-", NULL);
    CHECK_INT(run(&q, true), 401);
    char hashed[80];
    snprintf(hashed, sizeof(hashed), "sha256:%s", ha);
    request_init(&q, r, "10.0.0.1", "X-API-Key", hashed, NULL);
    CHECK_INT(run(&q, true), 401);

    /* Without forward_key_id nothing is set upstream. */
    request_init(&q, p, "10.0.0.1", "X-API-Key", "secret-b", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_INT(q.pr.nreq_set, 0);
    CHECK_STR(q.pr.key_id, "n8n");
    request_init(&q, p, "10.0.0.1", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q, true), 401);

    /* No room left to remove the key: fail closed. */
    request_init(&q, r, "10.0.0.1", "X-API-Key", "secret-a", NULL);
    for (int i = 0; i < GH_PREQ_MAX_EDITS - 1; i++) {
        char *name = gh_arena_alloc(f.arena, 16);
        snprintf(name, 16, "X-%d", i);
        gh_preq_remove_request_header(&q.pr, name);
    }
    CHECK_INT(run(&q, true), 500);

    char m[512];
    size_t n = gh_plugins_metrics(f.cfg, m, sizeof(m));
    m[n] = '\0';
    CHECK_STR(m, "# TYPE gatehouse_auth_failures_total counter\n"
                 "gatehouse_auth_failures_total{plugin=\"k\"} 7\n"
                 "gatehouse_auth_failures_total{plugin=\"plain\"} 1\n");
    /* Too small a buffer: whole lines or nothing. */
    CHECK_INT(gh_plugins_metrics(f.cfg, m, 20), 0);

    /* A reload with the same definition keeps counting where it was. */
    fixture_t f2;
    fixture_ok(&f2, "p.yaml", yaml, &f);
    CHECK(f2.cfg->plugins[0]->instance != f.cfg->plugins[0]->instance);
    n = gh_plugins_metrics(f2.cfg, m, sizeof(m));
    m[n] = '\0';
    CHECK(strstr(m, "gatehouse_auth_failures_total{plugin=\"k\"} 7\n") != NULL);
    fixture_free(&f);
    fixture_free(&f2);
}

static void test_keys_file_reload(void)
{
    char ha[65], hb[65], text[256], yaml[256];
    sha256_hex("secret-a", ha);
    sha256_hex("secret-b", hb);
    snprintf(text, sizeof(text), "alice sha256:%s\n", ha);
    const char *path = write_file("reload.keys", text);
    snprintf(yaml, sizeof(yaml),
             "plugins:\n  k: { type: api_key, keys_file: %s }\nroutes:\n"
             "  - { name: r, plugins: [k] }\n", path);
    fixture_t f1, f2;
    fixture_ok(&f1, "p.yaml", yaml, NULL);
    snprintf(text, sizeof(text), "bob sha256:%s\n", hb);
    write_file("reload.keys", text);
    /* Same YAML, new file contents: the reload sees them. */
    fixture_ok(&f2, "p.yaml", yaml, &f1);
    request_t q;
    request_init(&q, &f2.cfg->routes[0], "10.0.0.1", "X-API-Key", "secret-b", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(q.pr.key_id, "bob");
    request_init(&q, &f2.cfg->routes[0], "10.0.0.1", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q, true), 401);
    /* Requests still on the old config keep the old keys. */
    request_init(&q, &f1.cfg->routes[0], "10.0.0.1", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    fixture_free(&f1);
    fixture_free(&f2);
}

static void test_rate_limit(void)
{
    const char *yaml = "plugins:\n"
                       "  per_ip:\n"
                       "    type: rate_limit\n"
                       "    rate: 10/s\n"
                       "    burst: 20\n"
                       "    overrides: { 10.9.9.9: { rate: 1/s, burst: 1 } }\n"
                       "routes:\n"
                       "  - { name: r, plugins: [per_ip] }\n";
    fixture_t f;
    fixture_ok(&f, "p.yaml", yaml, NULL);
    gh__rate_limit_set_clock(gh__plugin_instance(f.cfg->plugins[0]), fake_clock);
    const gh_route_conf_t *r = &f.cfg->routes[0];
    request_t q;

    /* 3 s as fast as possible from one address: 20 + 30 (t = 0 .. 3.0). */
    fake_now = 1000 * GH_NS_PER_S;
    int ok = 0, limited = 0;
    for (uint64_t t = 0; t <= 3000; t++) {
        fake_now = 1000 * GH_NS_PER_S + t * 1000000;
        for (;;) {
            request_init(&q, r, "10.0.0.1", NULL);
            if (run(&q, true) != GH_PLUGIN_PASS)
                break;
            ok++;
        }
        limited++;
    }
    CHECK_INT(ok, 50);

    /* Headers of an allowed and of a refused request. */
    fake_now = 2000 * GH_NS_PER_S;
    request_init(&q, r, "10.0.0.2", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(resp_set(&q.pr, "RateLimit-Limit"), "20");
    CHECK_STR(resp_set(&q.pr, "RateLimit-Remaining"), "19");
    CHECK_STR(resp_set(&q.pr, "RateLimit-Reset"), "1");
    CHECK(resp_set(&q.pr, "Retry-After") == NULL);
    for (int i = 0; i < 19; i++) {
        request_init(&q, r, "10.0.0.2", NULL);
        run(&q, true);
    }
    CHECK_STR(resp_set(&q.pr, "RateLimit-Remaining"), "0");
    CHECK_STR(resp_set(&q.pr, "RateLimit-Reset"), "2");
    request_init(&q, r, "10.0.0.2", NULL);
    CHECK_INT(run(&q, true), 429);
    CHECK_STR(resp_set(&q.pr, "Retry-After"), "1");
    CHECK_STR(resp_set(&q.pr, "RateLimit-Limit"), "20");
    CHECK_STR(resp_set(&q.pr, "RateLimit-Remaining"), "0");
    CHECK_STR(resp_set(&q.pr, "RateLimit-Reset"), "2");

    /* Another address has its own bucket; the override has a smaller one. */
    request_init(&q, r, "10.0.0.3", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    request_init(&q, r, "10.9.9.9", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_STR(resp_set(&q.pr, "RateLimit-Limit"), "1");
    request_init(&q, r, "10.9.9.9", NULL);
    CHECK_INT(run(&q, true), 429);
    CHECK_STR(resp_set(&q.pr, "Retry-After"), "1");

    char m[256];
    size_t n = gh_plugins_metrics(f.cfg, m, sizeof(m));
    m[n] = '\0';
    char want[256];
    snprintf(want, sizeof(want),
             "# TYPE gatehouse_rate_limited_total counter\n"
             "gatehouse_rate_limited_total{plugin=\"per_ip\"} %d\n", limited + 2);
    CHECK_STR(m, want);

    /* Reload: the same definition, moved and reordered, keeps the state. */
    const char *moved = "\nplugins:\n"
                        "  per_ip:\n"
                        "    burst: 20\n"
                        "    type: rate_limit\n"
                        "    overrides: { 10.9.9.9: { burst: 1, rate: 1/s } }\n"
                        "    rate: 10/s\n"
                        "routes:\n"
                        "  - { name: r, plugins: [per_ip] }\n";
    fixture_t f2, f3;
    fixture_ok(&f2, "q.yaml", moved, &f);
    CHECK(f2.cfg->plugins[0]->instance == f.cfg->plugins[0]->instance);
    request_init(&q, &f2.cfg->routes[0], "10.0.0.2", NULL);
    CHECK_INT(run(&q, true), 429);
    /* A changed definition starts afresh. */
    const char *changed = "plugins:\n"
                          "  per_ip: { type: rate_limit, rate: 10/s, burst: 21 }\n"
                          "routes:\n"
                          "  - { name: r, plugins: [per_ip] }\n";
    fixture_ok(&f3, "q.yaml", changed, &f2);
    CHECK(f3.cfg->plugins[0]->instance != f2.cfg->plugins[0]->instance);
    request_init(&q, &f3.cfg->routes[0], "10.0.0.2", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    /* The old config goes first; the shared instance lives on in f2. */
    fixture_free(&f);
    request_init(&q, &f2.cfg->routes[0], "10.0.0.2", NULL);
    CHECK_INT(run(&q, true), 429);
    fixture_free(&f2);
    fixture_free(&f3);
}

static void test_rate_limit_keys(void)
{
    char ha[65], hb[65], yaml[1024];
    sha256_hex("secret-a", ha);
    sha256_hex("secret-b", hb);
    snprintf(yaml, sizeof(yaml),
             "plugins:\n"
             "  k:\n"
             "    type: api_key\n"
             "    keys: [{ id: a, hash: \"sha256:%s\" }, { id: n8n, hash: \"sha256:%s\" }]\n"
             "  per_key:\n"
             "    type: rate_limit\n"
             "    rate: 1/m\n"
             "    burst: 2\n"
             "    by: api_key\n"
             "    concurrency: 1\n"
             "    overrides: { n8n: { concurrency: 2 } }\n"
             "  per_tenant: { type: rate_limit, rate: 1/m, burst: 1, by: \"header:X-Tenant\" }\n"
             "  per_route: { type: rate_limit, rate: 1/m, burst: 1, by: route }\n"
             "routes:\n"
             "  - { name: keyed, plugins: [k, per_key] }\n"
             "  - { name: tenant, plugins: [per_tenant] }\n"
             "  - { name: route1, plugins: [per_route] }\n"
             "  - { name: route2, plugins: [per_route] }\n",
             ha, hb);
    fixture_t f;
    fixture_ok(&f, "p.yaml", yaml, NULL);
    for (size_t i = 1; i < 4; i++)
        gh__rate_limit_set_clock(gh__plugin_instance(f.cfg->plugins[i]), fake_clock);
    fake_now = 5000 * GH_NS_PER_S;
    const gh_route_conf_t *keyed = &f.cfg->routes[0], *tenant = &f.cfg->routes[1];
    request_t q1, q2, q3;

    /* Concurrency 1 for key a, whatever address it comes from. */
    request_init(&q1, keyed, "10.0.0.1", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q1, false), GH_PLUGIN_PASS);
    CHECK_INT(q1.ran, 2);
    request_init(&q2, keyed, "10.0.0.2", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q2, true), 429);
    CHECK_STR(resp_set(&q2.pr, "Retry-After"), "1");
    CHECK_STR(resp_set(&q2.pr, "RateLimit-Remaining"), "0");
    /* The stream ends (or the client goes): the slot comes back. */
    gh_plugins_end(keyed, &q1.pr, q1.ran);
    request_init(&q2, keyed, "10.0.0.2", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q2, true), GH_PLUGIN_PASS);
    CHECK_STR(resp_set(&q2.pr, "RateLimit-Remaining"), "0");
    request_init(&q2, keyed, "10.0.0.2", "X-API-Key", "secret-a", NULL);
    CHECK_INT(run(&q2, true), 429);
    CHECK_STR(resp_set(&q2.pr, "Retry-After"), "60");

    /* n8n overrides concurrency only: 2 in flight, the same rate. */
    request_init(&q1, keyed, "10.0.0.1", "X-API-Key", "secret-b", NULL);
    request_init(&q2, keyed, "10.0.0.1", "X-API-Key", "secret-b", NULL);
    request_init(&q3, keyed, "10.0.0.1", "X-API-Key", "secret-b", NULL);
    CHECK_INT(run(&q1, false), GH_PLUGIN_PASS);
    CHECK_INT(run(&q2, false), GH_PLUGIN_PASS);
    CHECK_INT(run(&q3, true), 429);
    CHECK_STR(resp_set(&q3.pr, "RateLimit-Limit"), "2");
    gh_plugins_end(keyed, &q1.pr, q1.ran);
    gh_plugins_end(keyed, &q2.pr, q2.ran);
    /* A request refused by api_key never reaches rate_limit. */
    request_init(&q1, keyed, "10.0.0.1", "X-API-Key", "nope", NULL);
    CHECK_INT(run(&q1, true), 401);
    CHECK_INT(q1.ran, 1);

    /* by: header: the value is the key; without the header, the address. */
    request_init(&q1, tenant, "10.0.0.1", "X-Tenant", "acme", NULL);
    CHECK_INT(run(&q1, true), GH_PLUGIN_PASS);
    request_init(&q1, tenant, "10.0.0.2", "x-tenant", "acme", NULL);
    CHECK_INT(run(&q1, true), 429);
    request_init(&q1, tenant, "10.0.0.1", "X-Tenant", "other", NULL);
    CHECK_INT(run(&q1, true), GH_PLUGIN_PASS);
    request_init(&q1, tenant, "10.0.0.1", NULL);
    CHECK_INT(run(&q1, true), GH_PLUGIN_PASS);
    request_init(&q1, tenant, "10.0.0.1", NULL);
    CHECK_INT(run(&q1, true), 429);
    request_init(&q1, tenant, "10.0.0.3", NULL);
    CHECK_INT(run(&q1, true), GH_PLUGIN_PASS);

    /* by: route: one bucket per route, shared by every client. */
    request_init(&q1, &f.cfg->routes[2], "10.0.0.1", NULL);
    CHECK_INT(run(&q1, true), GH_PLUGIN_PASS);
    request_init(&q1, &f.cfg->routes[2], "10.0.0.2", NULL);
    CHECK_INT(run(&q1, true), 429);
    request_init(&q1, &f.cfg->routes[3], "10.0.0.2", NULL);
    CHECK_INT(run(&q1, true), GH_PLUGIN_PASS);

    /* Each family in one group, in table order, whatever the file order. */
    char m[1024];
    size_t n = gh_plugins_metrics(f.cfg, m, sizeof(m));
    m[n] = '\0';
    CHECK_STR(m, "# TYPE gatehouse_auth_failures_total counter\n"
                 "gatehouse_auth_failures_total{plugin=\"k\"} 1\n"
                 "# TYPE gatehouse_rate_limited_total counter\n"
                 "gatehouse_rate_limited_total{plugin=\"per_key\"} 3\n"
                 "gatehouse_rate_limited_total{plugin=\"per_tenant\"} 2\n"
                 "gatehouse_rate_limited_total{plugin=\"per_route\"} 1\n");
    /* Room for the first family only: the second is left out whole. */
    size_t first = strlen("# TYPE gatehouse_auth_failures_total counter\n"
                          "gatehouse_auth_failures_total{plugin=\"k\"} 1\n");
    CHECK_INT(gh_plugins_metrics(f.cfg, m, first + 60), first);
    fixture_free(&f);
}

static void test_ip_filter(void)
{
    const char *yaml = "plugins:\n"
                       "  office: { type: ip_filter, allow: [\"10.0.0.0/8\", \"2001:db8::/32\"] }\n"
                       "  block: { type: ip_filter, deny: [\"10.9.0.0/16\", \"::1\"] }\n"
                       "  both:\n"
                       "    type: ip_filter\n"
                       "    allow: [\"10.0.0.0/8\"]\n"
                       "    deny: [\"10.9.0.0/16\"]\n"
                       "routes:\n"
                       "  - { name: office, plugins: [office] }\n"
                       "  - { name: block, plugins: [block] }\n"
                       "  - { name: both, plugins: [both] }\n";
    fixture_t f;
    fixture_ok(&f, "p.yaml", yaml, NULL);
    static const struct {
        int route;
        const char *ip;
        int status;
    } cases[] = {
        { 0, "10.1.2.3", 0 }, { 0, "11.1.2.3", 403 }, { 0, "2001:db8::1", 0 },
        { 0, "2001:db9::1", 403 }, { 0, "::ffff:10.1.2.3", 0 }, { 0, NULL, 403 },
        { 1, "10.9.1.1", 403 }, { 1, "10.8.1.1", 0 }, { 1, "::1", 403 },
        { 1, "::2", 0 }, { 1, NULL, 0 }, { 1, "::ffff:10.9.0.1", 403 },
        { 2, "10.1.1.1", 0 }, { 2, "10.9.1.1", 403 }, { 2, "192.168.1.1", 403 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        request_t q;
        request_init(&q, &f.cfg->routes[cases[i].route], cases[i].ip, NULL);
        int st = run(&q, true);
        if (st != cases[i].status)
            fprintf(stderr, "  ip_filter case %zu (%s)\n", i, cases[i].ip ? cases[i].ip : "-");
        CHECK_INT(st, cases[i].status);
    }
    fixture_free(&f);
}

static void test_headers_plugin(void)
{
    const char *yaml = "plugins:\n"
                       "  h:\n"
                       "    type: headers\n"
                       "    request_set: { X-Env: prod, X-Debug: \"on\" }\n"
                       "    request_remove: [ X-Debug, Cookie ]\n"
                       "    response_set: { Strict-Transport-Security: \"max-age=31536000\" }\n"
                       "    response_remove: [ Server ]\n"
                       "  ip: { type: ip_filter, deny: [\"10.9.0.0/16\"] }\n"
                       "routes:\n"
                       "  - { name: r, plugins: [h, ip] }\n";
    fixture_t f;
    fixture_ok(&f, "p.yaml", yaml, NULL);
    request_t q;
    request_init(&q, &f.cfg->routes[0], "10.0.0.1", "Cookie", "a=b", NULL);
    CHECK_INT(run(&q, true), GH_PLUGIN_PASS);
    CHECK_INT(q.ran, 2);
    CHECK_STR(req_set(&q.pr, "X-Env"), "prod");
    CHECK_STR(req_set(&q.pr, "X-Debug"), "on");     /* set wins within the plugin */
    CHECK(req_removed(&q.pr, "cookie"));
    CHECK(req_removed(&q.pr, "X-Debug"));
    CHECK_STR(resp_set(&q.pr, "Strict-Transport-Security"), "max-age=31536000");
    CHECK_INT(q.pr.nresp_remove, 1);
    CHECK_STR(q.pr.resp_remove[0], "Server");
    /* A plugin that answers stops the chain, edits so far stay (the proxy
     * applies resp_set to local answers too). */
    request_init(&q, &f.cfg->routes[0], "10.9.0.1", NULL);
    CHECK_INT(run(&q, true), 403);
    CHECK_INT(q.ran, 2);
    CHECK_STR(resp_set(&q.pr, "Strict-Transport-Security"), "max-age=31536000");
    /* Without room for all of its edits it fails rather than drop one. */
    request_init(&q, &f.cfg->routes[0], "10.0.0.1", NULL);
    for (int i = 0; i < GH_PREQ_MAX_EDITS; i++) {
        char *name = gh_arena_alloc(f.arena, 16);
        snprintf(name, 16, "X-%d", i);
        gh_preq_set_response_header(&q.pr, name, "1");
    }
    CHECK_INT(run(&q, true), 500);
    CHECK_INT(q.ran, 1);
    fixture_free(&f);
}

static void test_preq_helpers(void)
{
    gh_preq_t r;
    gh_preq_init(&r);
    gh_preq_header_t h[] = { { "Host", "a" }, { "X-Api-Key", "k1" }, { "x-api-key", "k2" } };
    r.headers = h;
    r.nheaders = 3;
    CHECK_STR(gh_preq_header(&r, "X-API-KEY"), "k1");
    CHECK(gh_preq_header(&r, "Cookie") == NULL);

    gh_preq_set_request_header(&r, "X-A", "1");
    gh_preq_set_request_header(&r, "x-a", "2");         /* replaces */
    CHECK_INT(r.nreq_set, 1);
    CHECK_STR(r.req_set[0].value, "2");
    gh_preq_remove_request_header(&r, "X-A");           /* cancels the set */
    CHECK_INT(r.nreq_set, 0);
    CHECK_INT(r.nreq_remove, 1);
    gh_preq_remove_request_header(&r, "x-a");           /* listed once */
    CHECK_INT(r.nreq_remove, 1);
    gh_preq_set_request_header(&r, "X-A", "3");         /* a later set wins again */
    CHECK_INT(r.nreq_set, 1);
    CHECK_INT(r.nreq_remove, 1);

    gh_preq_set_response_header(&r, "Retry-After", "1");
    gh_preq_remove_response_header(&r, "Server");
    gh_preq_remove_response_header(&r, "retry-after");
    CHECK_INT(r.nresp_set, 0);
    CHECK_INT(r.nresp_remove, 2);
    for (int i = 0; i < 40; i++)
        gh_preq_remove_response_header(&r, i % 2 ? "A" : "B");
    CHECK_INT(r.nresp_remove, 4);
    static const char *names[] = { "a", "b", "c", "d", "e", "f", "g", "h", "i", "j",
                                   "k", "l", "m", "n", "o", "p", "q", "r" };
    for (int i = 0; i < 18; i++)
        gh_preq_set_response_header(&r, names[i], "v");
    CHECK_INT(r.nresp_set, GH_PREQ_MAX_EDITS);

    char big[600];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    const char *s1 = gh_preq_strdup(&r, big);
    CHECK(s1 != NULL && strcmp(s1, big) == 0);
    CHECK(gh_preq_strdup(&r, big) == NULL);             /* no room for a second */
    CHECK_STR(gh_preq_strdup(&r, "42"), "42");
    big[1024 - 600 - 3 - 1] = '\0';
    CHECK(gh_preq_strdup(&r, big) != NULL);             /* exactly full */
    CHECK_INT(r.scratch_len, sizeof(r.scratch));
    CHECK(gh_preq_strdup(&r, "") == NULL);
}

static void test_create_failure(void)
{
    /* A keys file that went missing between check and create: the reload
     * fails, and nothing of the new config is left behind. */
    char ha[65], text[128], yaml[512];
    sha256_hex("secret-a", ha);
    snprintf(text, sizeof(text), "alice sha256:%s\n", ha);
    const char *path = write_file("gone.keys", text);
    snprintf(yaml, sizeof(yaml),
             "plugins:\n  r: { type: rate_limit, rate: 1/s }\n"
             "  k: { type: api_key, keys_file: %s }\n", path);
    fixture_t f;
    fixture_load(&f, "p.yaml", yaml);
    CHECK_INT(gh_plugins_check(f.cfg, &f.errs), 0);
    unlink(path);
    CHECK_INT(gh_plugins_create(f.cfg, NULL, &f.errs), -1);
    CHECK_INT(f.errs.n, 1);
    CHECK(f.cfg->plugins[0]->instance == NULL);
    CHECK(f.cfg->plugins[1]->instance == NULL);
    /* Requests on a route whose plugins were never created are refused. */
    gh_route_conf_t r = { .name = "x", .plugins = f.cfg->plugins, .nplugins = 2 };
    request_t q;
    request_init(&q, &r, "10.0.0.1", NULL);
    CHECK_INT(run(&q, true), 500);
    fixture_free(&f);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/gh-test-plugins-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_registry();
    test_node_equal();
    test_check_errors();
    test_keys_file();
    test_api_key();
    test_keys_file_reload();
    test_rate_limit();
    test_rate_limit_keys();
    test_ip_filter();
    test_headers_plugin();
    test_preq_helpers();
    test_create_failure();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
