/* Loading a config snapshot (conf/config.h): reading the file, the top level
 * of the schema (SPEC.md section 2) and the small sections, the table of
 * features not served yet, and the snapshot's reference count. The larger
 * sections live in config_listen.c, config_upstreams.c, config_routes.c and
 * config_tunnels.c. */
#include "conf/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "conf/arena.h"
#include "conf/decode.h"
#include "conf/yaml.h"
#include "plugins/plugin.h"
#include "routes/router.h"

/* A config is a few kilobytes; anything near this is a mistake. */
#define GH_CONFIG_MAX_BYTES (16u * 1024 * 1024)

/* Flip a flag when the proxy starts serving the feature: its settings are
 * already decoded and checked. */
static const struct {
    const char *what;
    bool supported;
} features[GH_FEAT_COUNT] = {
    [GH_FEAT_LISTEN_TLS]      = { "tls on a listener", true },
    [GH_FEAT_PROXY_PROTOCOL]  = { "proxy_protocol", true },
    [GH_FEAT_TLS_SECTION]     = { "the tls section", true },
    [GH_FEAT_ADMIN]           = { "the admin section", true },
    [GH_FEAT_TUNNELS]         = { "the tunnels section", true },
    [GH_FEAT_CONNECT]         = { "the connect section", true },
    [GH_FEAT_TUNNEL_UPSTREAM] = { "a tunnel:// upstream", true },
    [GH_FEAT_HTTPS_SERVER]    = { "an https:// server", true },
    [GH_FEAT_UPSTREAM_TLS]    = { "tls on an upstream", true },
    [GH_FEAT_HEALTH_CHECK]    = { "health_check", true },
    [GH_FEAT_PLUGINS_SECTION] = { "the plugins section", true },
    [GH_FEAT_ROUTE_PLUGINS]   = { "plugins on a route", true },
};

bool gh__feature(gh__decoder_t *d, gh__feature_t f, const gh_node_t *n)
{
    if (features[f].supported)
        return true;
    gh_node_error(d->errs, n, "%s is not supported yet", features[f].what);
    return false;
}

bool gh__feature_on(gh__feature_t f)
{
    return features[f].supported;
}

int gh__check_readable(gh__decoder_t *d, const gh_node_t *n, const char *path, bool dir)
{
    /* O_NONBLOCK: a FIFO named by mistake must not hang the check. */
    int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY | (dir ? O_DIRECTORY : 0);
    int fd = open(path, flags);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
        struct stat st;
        if (!dir && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
            err = EISDIR;
        close(fd);
    }
    if (err) {
        gh_node_error(d->errs, n, "cannot read %s: %s", path, strerror(err));
        return -1;
    }
    return 0;
}

bool gh__map(gh__decoder_t *d, const gh_node_t *v, const char *const *keys, const char *where)
{
    if (gh_node_expect(d->errs, v, GH_NODE_MAP) < 0)
        return false;
    gh_node_check_keys(d->errs, v, keys, where);
    return true;
}

bool gh__valid_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static void set_defaults(gh_config_t *c)
{
    c->timeouts.header_ms = 10 * 1000;
    c->timeouts.idle_ms = 75 * 1000;
    c->timeouts.upstream_connect_ms = 5 * 1000;
    c->timeouts.upstream_first_byte_ms = 300 * 1000;
    c->timeouts.stream_idle_ms = 300 * 1000;
    c->timeouts.shutdown_ms = 30 * 1000;
    c->limits.max_header_bytes = 16 * 1024;
    c->limits.max_body_bytes = 10 * 1024 * 1024;
    c->limits.max_connections = 10000;
    c->access_log.enabled = true;
    c->access_log.path = "stdout";
    c->access_log.format = GH_ALOG_JSON;
    c->log_level = GH_LOG_INFO;
    c->workers = 1;
    c->tls.min_version = 0x0303;
}

static void decode_timeouts(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    static const char *const keys[] = { "header", "idle", "upstream_connect",
                                        "upstream_first_byte", "stream_idle", "shutdown", NULL };
    uint64_t *fields[] = {
        &d->cfg->timeouts.header_ms, &d->cfg->timeouts.idle_ms,
        &d->cfg->timeouts.upstream_connect_ms, &d->cfg->timeouts.upstream_first_byte_ms,
        &d->cfg->timeouts.stream_idle_ms, &d->cfg->timeouts.shutdown_ms,
    };
    if (gh_node_is_null(v) || !gh__map(d, v, keys, "timeouts"))
        return;
    for (size_t i = 0; keys[i]; i++) {
        const gh_node_t *n = gh_node_get(v, keys[i]);
        uint64_t ms;
        if (!n || gh_node_duration(d->errs, n, &ms) < 0)
            continue;
        /* A zero shutdown means "stop at once"; other zeros make no sense. */
        if (ms == 0 && fields[i] != &d->cfg->timeouts.shutdown_ms) {
            gh_node_error(d->errs, n, "%s timeout must be greater than 0", keys[i]);
            continue;
        }
        *fields[i] = ms;
    }
}

static void decode_limits(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    static const char *const keys[] = { "max_header_bytes", "max_body_bytes",
                                        "max_connections", NULL };
    if (gh_node_is_null(v) || !gh__map(d, v, keys, "limits"))
        return;
    const gh_node_t *n;
    uint64_t x;
    if ((n = gh_node_get(v, "max_header_bytes")) && gh_node_size(d->errs, n, &x) == 0) {
        if (x < 1024 || x > 1024 * 1024)
            gh_node_error(d->errs, n, "max_header_bytes must be from 1k to 1m");
        else
            d->cfg->limits.max_header_bytes = x;
    }
    if ((n = gh_node_get(v, "max_body_bytes")) && gh_node_size(d->errs, n, &x) == 0)
        d->cfg->limits.max_body_bytes = x;
    if ((n = gh_node_get(v, "max_connections")) &&
        gh_node_uint(d->errs, n, 1, 1000000, &x) == 0)
        d->cfg->limits.max_connections = x;
}

static void decode_trusted_proxies(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_SEQ) < 0)
        return;
    gh_config_t *c = d->cfg;
    c->trusted_proxies = gh_arena_alloc(d->arena, v->n * sizeof(*c->trusted_proxies));
    for (size_t i = 0; i < v->n; i++) {
        const char *s;
        if (gh_node_string(d->errs, v->items[i], &s) < 0)
            continue;
        if (gh_cidr_parse(s, &c->trusted_proxies[c->ntrusted_proxies]) < 0) {
            gh_node_error(d->errs, v->items[i],
                          "invalid CIDR '%s' (expected e.g. 10.0.0.0/8 or ::1/128)", s);
            continue;
        }
        c->ntrusted_proxies++;
    }
}

static void decode_access_log(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    static const char *const keys[] = { "path", "format", NULL };
    static const char *const formats[] = { "json", "combined", NULL };
    if (v->type == GH_NODE_SCALAR && !gh__node_poisoned(v) && strcmp(v->str, "off") == 0) {
        d->cfg->access_log.enabled = false;
        return;
    }
    if (v->type != GH_NODE_MAP) {
        if (!gh__node_poisoned(v))
            gh_node_error(d->errs, v, "expected a mapping or off");
        return;
    }
    gh__map(d, v, keys, "access_log");
    const gh_node_t *n;
    const char *s;
    int f;
    if ((n = gh_node_get(v, "path")) && gh_node_string(d->errs, n, &s) == 0)
        d->cfg->access_log.path = (char *)s;
    if ((n = gh_node_get(v, "format")) &&
        gh_node_enum(d->errs, n, formats, "access_log format", &f) == 0)
        d->cfg->access_log.format = (gh_alog_format_t)f;
}

static void decode_log_level(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    /* In the order of gh_log_level_t. */
    static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
    int level;
    if (gh_node_enum(d->errs, v, levels, "log_level", &level) == 0)
        d->cfg->log_level = (gh_log_level_t)level;
}

static void decode_workers(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    if (v->type == GH_NODE_SCALAR && strcmp(v->str, "auto") == 0) {
        d->cfg->workers = 0;
        return;
    }
    uint64_t n;
    if (v->type == GH_NODE_SCALAR && v->len && strspn(v->str, "0123456789") != v->len) {
        gh_node_error(d->errs, v, "expected a number from 1 to 256 or auto");
        return;
    }
    if (gh_node_uint(d->errs, v, 1, 256, &n) == 0)
        d->cfg->workers = (uint32_t)n;
}

static void decode_pid_file(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    const char *s;
    if (gh_node_string(d->errs, v, &s) == 0)
        d->cfg->pid_file = (char *)s;
}

typedef void (*section_fn)(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v);

/* Sections are decoded in file order, so errors come out in file order too,
 * except routes: they refer to everything else and go last. */
static const struct {
    const char *name;
    section_fn fn;
} sections[] = {
    { "listen", gh__decode_listen },
    { "admin", gh__decode_admin },
    { "tls", gh__decode_tls },
    { "timeouts", decode_timeouts },
    { "limits", decode_limits },
    { "trusted_proxies", decode_trusted_proxies },
    { "access_log", decode_access_log },
    { "log_level", decode_log_level },
    { "workers", decode_workers },
    { "pid_file", decode_pid_file },
    { "upstreams", gh__decode_upstreams },
    { "plugins", gh__decode_plugins },
    { "routes", gh__decode_routes },
    { "tunnels", gh__decode_tunnels },
    { "connect", gh__decode_connect },
};
#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

static void decode_root(gh__decoder_t *d, const gh_node_t *root)
{
    const char *names[NSECTIONS + 1];
    for (size_t i = 0; i < NSECTIONS; i++)
        names[i] = sections[i].name;
    names[NSECTIONS] = NULL;
    if (gh_node_expect(d->errs, root, GH_NODE_MAP) < 0)
        return;
    gh_node_check_keys(d->errs, root, names, NULL);

    /* upstreams, plugins and tunnels are looked up by routes: decode them
     * before routes wherever they are in the file. */
    for (size_t i = 0; i < root->n; i++) {
        const gh_node_t *k = root->items[2 * i], *v = root->items[2 * i + 1];
        for (size_t j = 0; j < NSECTIONS; j++)
            if (sections[j].fn != gh__decode_routes && strcmp(k->str, sections[j].name) == 0)
                sections[j].fn(d, k, v);
    }
    const gh_node_t *rk = gh_node_get_key(root, "routes");
    if (rk)
        gh__decode_routes(d, rk, gh_node_get(root, "routes"));

    gh_config_t *c = d->cfg;
    /* Only when nothing was written: a broken entry has its own error. */
    if (!d->serves) {
        gh_loc_t loc = { c->file, 0, 0 };
        gh_errors_add(d->errs, &loc, "nothing to do: no listen or connect entries");
    }
    for (size_t i = 0; c->admin.set && i < c->nlistens; i++)
        if (gh__same_sockaddr(&c->admin.addr, &c->listens[i].addr))
            gh_errors_add(d->errs, &c->admin.loc,
                          "admin address '%s' is also a listen address (line %u)",
                          c->admin.address, (unsigned)c->listens[i].loc.line);
    /* Plugins decode their own settings; they see the routes using them. */
    gh_plugins_check(c, d->errs);
    for (size_t i = 0; i < c->nlistens; i++)
        if (c->listens[i].tls && d->certs_written == 0)
            gh_errors_add(d->errs, &c->listens[i].loc,
                          "listener %s has tls: true but tls.certificates is empty",
                          c->listens[i].address);
}

/* The position in "FILE:LINE:COL: ..." as one number; errors about the whole
 * file, or about another one, sort last. */
static uint64_t error_pos(const char *line, const char *file)
{
    size_t flen = strlen(file);
    if (strncmp(line, file, flen) != 0 || line[flen] != ':')
        return UINT64_MAX;
    char *end;
    unsigned long l = strtoul(line + flen + 1, &end, 10);
    if (end == line + flen + 1 || *end != ':')
        return UINT64_MAX;
    unsigned long col = strtoul(end + 1, &end, 10);
    if (*end != ':')
        return UINT64_MAX;
    return (uint64_t)l << 32 | (col & 0xffffffffu);
}

typedef struct {
    uint64_t pos;
    size_t seq;
    char *line;
} error_key_t;

static int error_key_cmp(const void *x, const void *y)
{
    const error_key_t *a = x, *b = y;
    if (a->pos != b->pos)
        return a->pos < b->pos ? -1 : 1;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

/* Sections are decoded in dependency order, not file order: put the new
 * errors in file order (stable, so one node's errors keep their order). */
static void sort_errors(gh_errors_t *e, size_t from, const char *file)
{
    size_t n = e->n - from;
    if (n < 2)
        return;
    error_key_t *keys = malloc(n * sizeof(*keys));
    if (!keys)
        abort();
    for (size_t i = 0; i < n; i++) {
        keys[i].line = e->lines[from + i];
        keys[i].pos = error_pos(keys[i].line, file);
        keys[i].seq = i;
    }
    qsort(keys, n, sizeof(*keys), error_key_cmp);
    for (size_t i = 0; i < n; i++)
        e->lines[from + i] = keys[i].line;
    free(keys);
}

static size_t error_count(const gh_errors_t *e)
{
    return e->n - e->nwarnings;
}

gh_config_t *gh_config_load_buffer(const char *name, const char *data, size_t len,
                                   gh_errors_t *errs)
{
    size_t before = error_count(errs), first_line = errs->n;
    gh_arena_t *a = gh_arena_new();
    gh_config_t *c = gh_arena_alloc(a, sizeof(*c));
    atomic_init(&c->refcount, 1);
    c->arena = a;
    c->file = gh_arena_strdup(a, name);
    set_defaults(c);

    gh__decoder_t d = { c, a, errs, 0, false };
    gh_node_t *root = gh__yaml_parse(a, c->file, data ? data : "", data ? len : 0, errs);
    if (root)
        decode_root(&d, root);
    sort_errors(errs, first_line, c->file);

    if (error_count(errs) == before) {
        c->router = gh_router_build(a, c->routes, c->nroutes);
        if (!c->router && c->nroutes) {
            gh_loc_t loc = { c->file, 0, 0 };
            gh_errors_add(errs, &loc, "cannot build the route table");
        }
    }
    if (error_count(errs) != before) {
        gh_arena_free(a);
        return NULL;
    }
    return c;
}

/* Reads the whole file into a malloc'd buffer; errno is set on failure. */
static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        errno = EISDIR;
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *nb = cap < GH_CONFIG_MAX_BYTES ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                errno = cap < GH_CONFIG_MAX_BYTES ? ENOMEM : EFBIG;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            free(buf);
            buf = NULL;
            errno = err;
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    int err = errno;
    close(fd);
    errno = err;
    *len = n;
    return buf;
}

gh_config_t *gh_config_load(const char *path, gh_errors_t *errs)
{
    size_t len;
    char *buf = read_file(path, &len);
    if (!buf) {
        gh_errors_add(errs, NULL, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    gh_config_t *c = gh_config_load_buffer(path, buf, len, errs);
    free(buf);
    return c;
}

void gh_config_retain(gh_config_t *c)
{
    atomic_fetch_add_explicit(&c->refcount, 1, memory_order_relaxed);
}

void gh_config_release(gh_config_t *c)
{
    if (!c)
        return;
    /* acq_rel: the thread that frees must see every other thread's last use. */
    if (atomic_fetch_sub_explicit(&c->refcount, 1, memory_order_acq_rel) == 1)
        gh_arena_free(c->arena);
}
