/* Request counters and the Prometheus text exposition (SPEC.md section 3,
 * "Admin"). Counters are kept by route name, not by route pointer, so they
 * survive reloads and keep counting when a route comes back.
 *
 * Everything counted lives in per-thread copies (copy_t below): the first
 * request a worker thread finishes makes its own copy, which joins the
 * process-wide list `copies` (copies_mu is taken only then and by readers).
 * The owner updates its copy under the copy's own mutex, which nobody else
 * takes except a reader (the admin endpoints on worker 0), so the request
 * path never waits on another worker. Readers take copies_mu, then each
 * copy's mutex in turn, and sum: routes with the same name add up, their
 * status codes merge. Copies stay for the life of the process, a stopped
 * worker's included, so totals never go backwards. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plugins/plugin.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"
#include "proxy/tunnel_edge.h"

/* Upper bounds in seconds. Long-lived streams (SSE, LLM answers) are the
 * reason for the buckets past 10 s. The label text is kept as written so the
 * exposition never depends on float formatting. */
static const double bucket_le[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                    10, 30, 60, 120, 300 };
static const char *const bucket_text[] = { "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                           "0.5", "1", "2.5", "5", "10", "30", "60", "120",
                                           "300" };
#define NBUCKETS (sizeof bucket_le / sizeof bucket_le[0])

typedef struct code_count {
    int code;
    uint64_t n;
} code_count_t;

/* One route name with its counts by status code. A route sees a handful of
 * codes, so a short array scanned linearly beats a second table. */
typedef struct route_entry {
    char *name;
    uint64_t hash;
    gh_route_stats_t st;
    code_count_t *codes;
    size_t ncodes, capcodes;
} route_entry_t;

/* One thread's counts (or, at render, the sum of all of them). */
typedef struct copy {
    pthread_mutex_t mu;             /* the owner while updating, a reader while reading */
    struct copy *next;              /* in copies, under copies_mu */
    /* open addressing, linear probing; nslots is 0 or a power of two */
    route_entry_t **slots;
    size_t nslots, nused;
    uint64_t bucket[NBUCKETS];      /* not cumulative; summed at render */
    uint64_t duration_count;
    double duration_sum;
    uint64_t bytes_in, bytes_out;
    uint64_t bytes_spliced;
} copy_t;

static pthread_mutex_t copies_mu = PTHREAD_MUTEX_INITIALIZER;
static copy_t *copies, **copies_tail = &copies;    /* in the order they were made */
static _Thread_local copy_t *mine;

/* This thread's copy, made and registered on first use; NULL when out of
 * memory (the count is dropped, as a failed allocation below does). */
static copy_t *my_copy(void)
{
    if (mine)
        return mine;
    copy_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_lock(&copies_mu);
    *copies_tail = c;
    copies_tail = &c->next;
    pthread_mutex_unlock(&copies_mu);
    return mine = c;
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;    /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static route_entry_t *route_lookup(const copy_t *m, const char *name, uint64_t h)
{
    if (!m->nslots)
        return NULL;
    for (size_t i = h & (m->nslots - 1);; i = (i + 1) & (m->nslots - 1)) {
        route_entry_t *e = m->slots[i];
        if (!e)
            return NULL;
        if (e->hash == h && strcmp(e->name, name) == 0)
            return e;
    }
}

static int table_grow(copy_t *m)
{
    size_t n = m->nslots ? m->nslots * 2 : 64;
    route_entry_t **s = calloc(n, sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < m->nslots; i++) {
        route_entry_t *e = m->slots[i];
        if (!e)
            continue;
        size_t j = e->hash & (n - 1);
        while (s[j])
            j = (j + 1) & (n - 1);
        s[j] = e;
    }
    free(m->slots);
    m->slots = s;
    m->nslots = n;
    return 0;
}

static route_entry_t *route_get(copy_t *m, const char *name)
{
    uint64_t h = hash_name(name);
    route_entry_t *e = route_lookup(m, name, h);
    if (e)
        return e;
    /* keep the load under 3/4 so probes stay short */
    if ((m->nused + 1) * 4 > m->nslots * 3 && table_grow(m) != 0)
        return NULL;
    e = calloc(1, sizeof *e);
    if (!e || !(e->name = strdup(name))) {
        free(e);
        return NULL;
    }
    e->hash = h;
    size_t i = h & (m->nslots - 1);
    while (m->slots[i])
        i = (i + 1) & (m->nslots - 1);
    m->slots[i] = e;
    m->nused++;
    return e;
}

/* Adds n to e's count of code; false when out of memory. */
static bool count_code(route_entry_t *e, int code, uint64_t n)
{
    for (size_t i = 0; i < e->ncodes; i++) {
        if (e->codes[i].code == code) {
            e->codes[i].n += n;
            return true;
        }
    }
    if (e->ncodes == e->capcodes) {
        size_t cap = e->capcodes ? e->capcodes * 2 : 4;
        code_count_t *c = realloc(e->codes, cap * sizeof *c);
        if (!c)
            return false;
        e->codes = c;
        e->capcodes = cap;
    }
    e->codes[e->ncodes++] = (code_count_t){ code, n };
    return true;
}

void gh_metrics_request(const gh_req_t *r)
{
    /* scrapes of the admin endpoints are not traffic */
    if (r->conn && r->conn->admin)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    double secs = r->start_ns && now > r->start_ns ? (double)(now - r->start_ns) / 1e9 : 0;

    size_t b = 0;
    while (b < NBUCKETS && secs > bucket_le[b])
        b++;
    copy_t *m = my_copy();
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    if (b < NBUCKETS)
        m->bucket[b]++;
    m->duration_count++;
    m->duration_sum += secs;
    m->bytes_in += r->bytes_in;
    m->bytes_out += r->bytes_out;
    m->bytes_spliced += r->bytes_spliced;

    route_entry_t *e = route_get(m, r->route && r->route->name ? r->route->name : "");
    if (e) {
        e->st.requests++;
        if (r->status >= 500 && r->status <= 599)
            e->st.errors++;
        else if (r->status >= 400 && r->status <= 499 && r->status != 499)
            e->st.client_errors++;
        if (r->status == 429)
            e->st.limited++;
        /* the request is over; losing one count beats failing */
        (void)count_code(e, r->status, 1);
    }
    pthread_mutex_unlock(&m->mu);
}

static void stats_add(gh_route_stats_t *to, const gh_route_stats_t *from)
{
    to->requests += from->requests;
    to->errors += from->errors;
    to->client_errors += from->client_errors;
    to->limited += from->limited;
}

void gh_metrics_route_stats(const char *name, gh_route_stats_t *out)
{
    const char *n = name ? name : "";
    uint64_t h = hash_name(n);
    *out = (gh_route_stats_t){ 0 };
    pthread_mutex_lock(&copies_mu);
    for (copy_t *m = copies; m; m = m->next) {
        pthread_mutex_lock(&m->mu);
        const route_entry_t *e = route_lookup(m, n, h);
        if (e) {
            stats_add(out, &e->st);
        }
        pthread_mutex_unlock(&m->mu);
    }
    pthread_mutex_unlock(&copies_mu);
}

void gh_metrics_totals(gh_route_stats_t *out, uint64_t *bytes_in, uint64_t *bytes_out)
{
    *out = (gh_route_stats_t){ 0 };
    *bytes_in = *bytes_out = 0;
    pthread_mutex_lock(&copies_mu);
    for (copy_t *m = copies; m; m = m->next) {
        pthread_mutex_lock(&m->mu);
        for (size_t i = 0; i < m->nslots; i++) {
            const route_entry_t *e = m->slots[i];
            if (!e)
                continue;
            stats_add(out, &e->st);
        }
        *bytes_in += m->bytes_in;
        *bytes_out += m->bytes_out;
        pthread_mutex_unlock(&m->mu);
    }
    pthread_mutex_unlock(&copies_mu);
}

/* Frees a copy that is in no list (a sum made for rendering). */
static void copy_free(copy_t *m)
{
    for (size_t i = 0; i < m->nslots; i++) {
        route_entry_t *e = m->slots[i];
        if (!e)
            continue;
        free(e->name);
        free(e->codes);
        free(e);
    }
    free(m->slots);
}

/* Adds src into sum; false when out of memory. The first copy added to an
 * empty sum keeps its slot layout, so with one thread the routes come out
 * in the order they always did. */
static bool copy_add(copy_t *sum, const copy_t *src)
{
    for (size_t i = 0; i < NBUCKETS; i++)
        sum->bucket[i] += src->bucket[i];
    sum->duration_count += src->duration_count;
    sum->duration_sum += src->duration_sum;
    sum->bytes_in += src->bytes_in;
    sum->bytes_out += src->bytes_out;
    sum->bytes_spliced += src->bytes_spliced;
    if (!sum->nslots && src->nslots) {
        if (!(sum->slots = calloc(src->nslots, sizeof *sum->slots)))
            return false;
        sum->nslots = src->nslots;
        for (size_t i = 0; i < src->nslots; i++) {
            const route_entry_t *s = src->slots[i];
            if (!s)
                continue;
            route_entry_t *e = calloc(1, sizeof *e);
            if (!e || !(e->name = strdup(s->name)) ||
                (s->ncodes && !(e->codes = malloc(s->ncodes * sizeof *e->codes)))) {
                if (e)
                    free(e->name);
                free(e);
                return false;
            }
            e->hash = s->hash;
            e->st = s->st;
            if (s->ncodes)
                memcpy(e->codes, s->codes, s->ncodes * sizeof *e->codes);
            e->ncodes = e->capcodes = s->ncodes;
            sum->slots[i] = e;
            sum->nused++;
        }
        return true;
    }
    for (size_t i = 0; i < src->nslots; i++) {
        const route_entry_t *s = src->slots[i];
        if (!s)
            continue;
        route_entry_t *e = route_get(sum, s->name);
        if (!e)
            return false;
        stats_add(&e->st, &s->st);
        for (size_t j = 0; j < s->ncodes; j++)
            if (!count_code(e, s->codes[j].code, s->codes[j].n))
                return false;
    }
    return true;
}

/* Every thread's counts summed into *sum (free with copy_free); false when
 * out of memory. */
static bool copies_sum(copy_t *sum)
{
    bool ok = true;
    *sum = (copy_t){ .next = NULL };
    pthread_mutex_lock(&copies_mu);
    for (copy_t *m = copies; m && ok; m = m->next) {
        pthread_mutex_lock(&m->mu);
        ok = copy_add(sum, m);
        pthread_mutex_unlock(&m->mu);
    }
    pthread_mutex_unlock(&copies_mu);
    return ok;
}

static void conn_counts_here(gh_server_t *srv, const void *arg, void *slot)
{
    gh_conn_counts_t *out = slot;
    (void)arg;
    for (const gh_conn_t *c = srv->conns; c; c = c->next) {
        if (c->state == GH_C_CLOSING)
            out->closing++;
        else if (c->state == GH_C_HEAD && c->len == c->off)
            out->idle++;
        else
            out->active++;
    }
}

void gh_metrics_conn_counts(const gh_server_t *srv, gh_conn_counts_t *out)
{
    /* every worker counts its own connections, on its own thread */
    unsigned nw = gh__nworkers() ? gh__nworkers() : 1;
    gh_conn_counts_t *all = calloc(nw, sizeof *all);
    *out = (gh_conn_counts_t){ 0 };
    if (!all)
        return;
    gh__workers_gather((gh_server_t *)srv, conn_counts_here, "", 1, all, sizeof *all);
    for (unsigned k = 0; k < nw; k++) {
        out->active += all[k].active;
        out->idle += all[k].idle;
        out->closing += all[k].closing;
    }
    free(all);
}

bool gh_metrics_server_up(const gh_upserver_t *sv, uint64_t now_ms, char *why, size_t cap)
{
    if (cap)
        why[0] = '\0';
    if (sv->health_down) {
        snprintf(why, cap, "health check failed%s%s", sv->health_error[0] ? ": " : "",
                 sv->health_error);
        return false;
    }
    if (sv->down_until > now_ms) {
        uint64_t left = (sv->down_until - now_ms + 999) / 1000;
        snprintf(why, cap, "%u failed connect%s; next try in %llus", sv->fails,
                 sv->fails == 1 ? "" : "s", (unsigned long long)left);
        return false;
    }
    if (sv->up && sv->up->conf && sv->up->conf->health.enabled && !sv->health_last_ms)
        snprintf(why, cap, "not checked yet");
    return true;
}

/* ---- plugins ---- */

/* Everything plugins/ reports for cfg (gh_plugins_metrics), NUL-terminated
 * in a malloc'd buffer; NULL when out of memory. It writes whole lines only,
 * so a buffer it nearly filled may have left some out: retry bigger. */
static char *plugin_text(const gh_config_t *cfg, size_t *len)
{
    for (size_t cap = 64 * 1024;; cap *= 4) {
        char *buf = malloc(cap);
        if (!buf)
            return NULL;
        size_t n = cfg->nplugins ? gh_plugins_metrics(cfg, buf, cap - 1) : 0;
        if (n > cap - 1)
            n = cap - 1;
        if (cap - 1 - n >= 4096 || cap >= ((size_t)64 << 20)) {
            buf[n] = '\0';
            *len = n;
            return buf;
        }
        free(buf);
    }
}

/* Length of the metric name a sample line starts with, 0 if it is not one. */
static size_t sample_name_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (s[i] == '_' || s[i] == ':' || (s[i] >= 'a' && s[i] <= 'z') ||
                     (s[i] >= 'A' && s[i] <= 'Z') || (i > 0 && s[i] >= '0' && s[i] <= '9')))
        i++;
    return i < n && (s[i] == '{' || s[i] == ' ') ? i : 0;
}

/* Whether sample line l carries plugin="name". Plugin names are letters,
 * digits, '-', '_' and '.' (conf/), so there are no escapes to undo. */
static bool line_has_plugin(const char *l, size_t len, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = l, *end = l + len; (p = memmem(p, (size_t)(end - p), "plugin=\"", 8));
         p += 8) {
        if (p > l && p[-1] != '{' && p[-1] != ',')
            continue;
        if ((size_t)(end - p) > 8 + nl && memcmp(p + 8, name, nl) == 0 && p[8 + nl] == '"')
            return true;
    }
    return false;
}

/* Plugin lines are regrouped by family: the text format wants each family's
 * samples together under one HELP and TYPE, and promtool wants HELP, which
 * plugins do not write. The families of the SPEC come first with our own
 * HELP and TYPE, and get an explicit 0 for an instance that reports nothing,
 * so a dashboard sees every configured plugin from the start. */
typedef struct pfam {
    size_t name, nlen;              /* offsets into text */
    size_t type, tlen;              /* tlen 0: untyped */
    size_t help, hlen;              /* hlen 0: none */
    const char *fixed_help;         /* ours, for the SPEC families */
} pfam_t;

typedef struct psample {
    size_t fam, line, len;
} psample_t;

typedef struct pset {
    gh_obuf_t text;                 /* the SPEC family names, then the plugins' lines */
    pfam_t *fams;
    size_t nfams, capfams;
    psample_t *samples;
    size_t nsamples, capsamples;
    bool oom;
} pset_t;

static const struct {
    const char *name, *help, *plugin_type;
} spec_fams[] = {
    { "gatehouse_rate_limited_total", "Requests rejected with 429 by a rate_limit plugin.",
      "rate_limit" },
    { "gatehouse_auth_failures_total", "Requests rejected with 401 by an api_key plugin.",
      "api_key" },
};
#define NSPEC (sizeof spec_fams / sizeof spec_fams[0])

void gh_metrics_plugin_counts(const gh_config_t *cfg, uint64_t *limited, uint64_t *auth_failures)
{
    uint64_t *into[NSPEC] = { limited, auth_failures };
    memset(limited, 0, cfg->nplugins * sizeof *limited);
    memset(auth_failures, 0, cfg->nplugins * sizeof *auth_failures);
    size_t len;
    char *text = plugin_text(cfg, &len);
    for (char *l = text, *end = text + (text ? len : 0); l && l < end;) {
        char *nl = memchr(l, '\n', (size_t)(end - l));
        size_t ll = nl ? (size_t)(nl - l) : (size_t)(end - l), n = sample_name_len(l, ll);
        for (size_t k = 0; n && k < NSPEC; k++) {
            if (strlen(spec_fams[k].name) != n || memcmp(l, spec_fams[k].name, n) != 0)
                continue;
            const char *sp = memrchr(l, ' ', ll);
            double v = sp ? strtod(sp + 1, NULL) : 0;
            for (size_t i = 0; i < cfg->nplugins && v > 0; i++)
                if (line_has_plugin(l, ll, cfg->plugins[i]->name))
                    into[k][i] += (uint64_t)v;
        }
        l += ll + 1;
    }
    free(text);
}

static bool grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return true;
    size_t c = *cap ? *cap * 2 : 16;
    void *q = realloc(*p, c * size);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

static size_t fam_find(pset_t *ps, const char *s, size_t n)
{
    for (size_t i = 0; i < ps->nfams; i++)
        if (ps->fams[i].nlen == n && memcmp(ps->text.p + ps->fams[i].name, s, n) == 0)
            return i;
    return SIZE_MAX;
}

static size_t fam_add(pset_t *ps, size_t off, size_t n)
{
    if (!grow((void **)&ps->fams, &ps->capfams, ps->nfams, sizeof *ps->fams)) {
        ps->oom = true;
        return SIZE_MAX;
    }
    ps->fams[ps->nfams] = (pfam_t){ .name = off, .nlen = n };
    return ps->nfams++;
}

static bool fam_is(const pset_t *ps, size_t f, const char *type)
{
    const pfam_t *pf = &ps->fams[f];
    return pf->tlen == strlen(type) && memcmp(ps->text.p + pf->type, type, pf->tlen) == 0;
}

/* The family a sample belongs to: its own name, or the histogram or summary
 * it is a _bucket/_sum/_count of. */
static size_t fam_of_sample(pset_t *ps, size_t off, size_t n)
{
    const char *s = ps->text.p + off;
    size_t f = fam_find(ps, s, n);
    if (f != SIZE_MAX)
        return f;
    static const char *const suffix[] = { "_bucket", "_sum", "_count" };
    for (size_t i = 0; i < 3; i++) {
        size_t sl = strlen(suffix[i]);
        if (n <= sl || memcmp(s + n - sl, suffix[i], sl) != 0)
            continue;
        f = fam_find(ps, s, n - sl);
        if (f != SIZE_MAX && (fam_is(ps, f, "histogram") || fam_is(ps, f, "summary")))
            return f;
    }
    return fam_add(ps, off, n);
}

static bool valid_type(const char *t, size_t n)
{
    static const char *const types[] = { "counter", "gauge", "histogram", "summary", "untyped" };
    for (size_t i = 0; i < 5; i++)
        if (strlen(types[i]) == n && memcmp(types[i], t, n) == 0)
            return true;
    return false;
}

/* "# TYPE name type" or "# HELP name text" at text offset off. */
static void parse_comment(pset_t *ps, size_t off, size_t len)
{
    const char *l = ps->text.p + off;
    bool is_type = len > 7 && memcmp(l, "# TYPE ", 7) == 0;
    bool is_help = len > 7 && memcmp(l, "# HELP ", 7) == 0;
    size_t n = is_type || is_help ? sample_name_len(l + 7, len - 7) : 0;
    if (!n)
        return;
    size_t f = fam_find(ps, l + 7, n);
    if (f == SIZE_MAX && (f = fam_add(ps, off + 7, n)) == SIZE_MAX)
        return;
    pfam_t *pf = &ps->fams[f];
    size_t rest = off + 7 + n + 1, rlen = len - 7 - n - 1;
    if (pf->fixed_help)
        return;     /* a SPEC family: our HELP and TYPE */
    if (is_type && !pf->tlen && valid_type(ps->text.p + rest, rlen)) {
        pf->type = rest;
        pf->tlen = rlen;
    } else if (is_help && !pf->hlen && rlen) {
        pf->help = rest;
        pf->hlen = rlen;
    }
}

static void parse_lines(pset_t *ps, size_t from, size_t to)
{
    for (size_t off = from; off < to;) {
        char *l = ps->text.p + off;
        char *nl = memchr(l, '\n', to - off);
        size_t len = nl ? (size_t)(nl - l) : to - off;
        size_t next = off + len + 1;
        if (len && l[len - 1] == '\r')
            len--;
        size_t n;
        if (len && l[0] == '#') {
            parse_comment(ps, off, len);
        } else if (len && (n = sample_name_len(l, len))) {
            size_t f = fam_of_sample(ps, off, n);
            if (f == SIZE_MAX ||
                !grow((void **)&ps->samples, &ps->capsamples, ps->nsamples, sizeof *ps->samples)) {
                ps->oom = true;
                return;
            }
            ps->samples[ps->nsamples++] = (psample_t){ f, off, len };
        }
        off = next;
    }
}

static void render_family(gh_obuf_t *b, const pset_t *ps, size_t f, const gh_config_t *cfg)
{
    const pfam_t *pf = &ps->fams[f];
    const char *name = ps->text.p + pf->name;
    const char *type = f < NSPEC ? "counter" : pf->tlen ? ps->text.p + pf->type : "untyped";
    int tlen = pf->tlen ? (int)pf->tlen : (int)strlen(type);
    if (pf->fixed_help)
        gh_obuf_printf(b, "# HELP %.*s %s\n", (int)pf->nlen, name, pf->fixed_help);
    else if (pf->hlen)
        gh_obuf_printf(b, "# HELP %.*s %.*s\n", (int)pf->nlen, name, (int)pf->hlen,
                       ps->text.p + pf->help);
    else
        gh_obuf_printf(b, "# HELP %.*s Reported by a plugin.\n", (int)pf->nlen, name);
    gh_obuf_printf(b, "# TYPE %.*s %.*s\n", (int)pf->nlen, name, tlen, type);
    for (size_t s = 0; s < ps->nsamples; s++) {
        if (ps->samples[s].fam != f)
            continue;
        gh_obuf_put(b, ps->text.p + ps->samples[s].line, ps->samples[s].len);
        gh_obuf_puts(b, "\n");
    }
    for (size_t i = 0; f < NSPEC && i < cfg->nplugins; i++) {
        const gh_plugin_conf_t *pc = cfg->plugins[i];
        if (!pc->type || strcmp(pc->type, spec_fams[f].plugin_type) != 0)
            continue;
        bool has = false;
        for (size_t s = 0; s < ps->nsamples && !has; s++)
            has = ps->samples[s].fam == f &&
                  line_has_plugin(ps->text.p + ps->samples[s].line, ps->samples[s].len, pc->name);
        if (has)
            continue;
        gh_obuf_printf(b, "%.*s{plugin=\"", (int)pf->nlen, name);
        gh_obuf_esc(b, pc->name, GH_ESC_PROM_LABEL);
        gh_obuf_puts(b, "\"} 0\n");
    }
}

static void render_plugins(gh_obuf_t *b, const gh_config_t *cfg)
{
    pset_t ps = { 0 };
    size_t len;
    char *text = plugin_text(cfg, &len);
    if (!text) {
        b->oom = true;
        return;
    }
    /* the SPEC families are families 0..NSPEC-1, their names in text */
    for (size_t k = 0; k < NSPEC; k++) {
        size_t off = ps.text.len;
        gh_obuf_puts(&ps.text, spec_fams[k].name);
        size_t f = fam_add(&ps, off, strlen(spec_fams[k].name));
        if (f != SIZE_MAX)
            ps.fams[f].fixed_help = spec_fams[k].help;
    }
    size_t from = ps.text.len;
    gh_obuf_put(&ps.text, text, len);
    free(text);
    if (!ps.text.oom)
        parse_lines(&ps, from, ps.text.len);
    if (ps.oom || ps.text.oom) {
        b->oom = true;
    } else {
        for (size_t f = 0; f < ps.nfams; f++) {
            bool any = f < NSPEC;
            for (size_t s = 0; s < ps.nsamples && !any; s++)
                any = ps.samples[s].fam == f;
            if (any)    /* a TYPE or HELP without samples says nothing */
                render_family(b, &ps, f, cfg);
        }
    }
    free(ps.fams);
    free(ps.samples);
    gh_obuf_free(&ps.text);
}

/* ---- the exposition ---- */

static void family(gh_obuf_t *b, const char *name, const char *type, const char *help)
{
    gh_obuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_requests(gh_obuf_t *b)
{
    copy_t sum;
    if (!copies_sum(&sum)) {
        copy_free(&sum);
        b->oom = true;
        return;
    }
    const copy_t *m = &sum;
    family(b, "gatehouse_requests_total", "counter",
           "Finished requests by route (host/path; empty: no route matched) and status code.");
    for (size_t i = 0; i < m->nslots; i++) {
        const route_entry_t *e = m->slots[i];
        for (size_t j = 0; e && j < e->ncodes; j++) {
            gh_obuf_puts(b, "gatehouse_requests_total{route=\"");
            gh_obuf_esc(b, e->name, GH_ESC_PROM_LABEL);
            gh_obuf_printf(b, "\",code=\"%d\"} %llu\n", e->codes[j].code,
                           (unsigned long long)e->codes[j].n);
        }
    }
    family(b, "gatehouse_request_duration_seconds", "histogram",
           "Time from the first byte of a request head to the end of its response.");
    uint64_t cum = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        cum += m->bucket[i];
        gh_obuf_printf(b, "gatehouse_request_duration_seconds_bucket{le=\"%s\"} %llu\n",
                       bucket_text[i], (unsigned long long)cum);
    }
    gh_obuf_printf(b, "gatehouse_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                      "gatehouse_request_duration_seconds_sum %.9g\n"
                      "gatehouse_request_duration_seconds_count %llu\n",
                   (unsigned long long)m->duration_count, m->duration_sum,
                   (unsigned long long)m->duration_count);
    family(b, "gatehouse_bytes_total", "counter",
           "Bytes received from clients (in) and sent to them (out), heads included.");
    gh_obuf_printf(b, "gatehouse_bytes_total{direction=\"in\"} %llu\n"
                      "gatehouse_bytes_total{direction=\"out\"} %llu\n",
                   (unsigned long long)m->bytes_in, (unsigned long long)m->bytes_out);
    family(b, "gatehouse_bytes_spliced_total", "counter",
           "Body bytes passed between client and upstream inside the kernel (splice), both ways; also in gatehouse_bytes_total.");
    gh_obuf_printf(b, "gatehouse_bytes_spliced_total %llu\n", (unsigned long long)m->bytes_spliced);
    copy_free(&sum);
}

/* Two servers of one upstream may share host:port (http and https); one
 * series each is all the format allows. */
static bool seen_before(const gh_upstream_t *up, size_t j)
{
    for (size_t k = 0; k < j; k++)
        if (strcmp(up->servers[k].conf->authority, up->servers[j].conf->authority) == 0)
            return true;
    return false;
}

static void upstream_series(gh_obuf_t *b, const char *metric, const gh_upstream_t *up,
                            const gh_upserver_t *sv)
{
    gh_obuf_printf(b, "%s{upstream=\"", metric);
    gh_obuf_esc(b, up->conf->name, GH_ESC_PROM_LABEL);
    gh_obuf_puts(b, "\",server=\"");
    gh_obuf_esc(b, sv->conf->authority, GH_ESC_PROM_LABEL);
    gh_obuf_puts(b, "\"} ");
}

static void render_upstreams(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_snapshot_t *snap = srv->snap;
    uint64_t now = uv_now(srv->loop);
    static const char *const names[] = { "gatehouse_upstream_up",
                                         "gatehouse_upstream_active_requests",
                                         "gatehouse_upstream_idle_connections" };
    static const char *const helps[] = {
        "1 when the server takes requests, 0 while marked down (health check or failed connects).",
        "Requests using the server now.",
        "Pooled keep-alive connections to the server.",
    };
    for (size_t k = 0; k < 3; k++) {
        family(b, names[k], "gauge", helps[k]);
        for (size_t i = 0; i < snap->cfg->nupstreams; i++) {
            const gh_upstream_t *up = &snap->ups[i];
            for (size_t j = 0; j < up->n; j++) {
                const gh_upserver_t *sv = &up->servers[j];
                if (seen_before(up, j))
                    continue;
                upstream_series(b, names[k], up, sv);
                unsigned v = k == 0 ? gh_metrics_server_up(sv, now, NULL, 0)
                           : k == 1 ? atomic_load(sv->active) : sv->nidle;
                gh_obuf_printf(b, "%u\n", v);
            }
        }
    }
}

static void render_server(gh_obuf_t *b, const gh_server_t *srv)
{
    const gh_config_t *cfg = srv->snap->cfg;
    gh_conn_counts_t cc;
    gh_metrics_conn_counts(srv, &cc);
    family(b, "gatehouse_connections", "gauge",
           "Open client connections: active (a request in progress), idle (keep-alive), closing.");
    gh_obuf_printf(b, "gatehouse_connections{state=\"active\"} %u\n"
                      "gatehouse_connections{state=\"idle\"} %u\n"
                      "gatehouse_connections{state=\"closing\"} %u\n",
                   cc.active, cc.idle, cc.closing);
    family(b, "gatehouse_connections_limit", "gauge", "limits.max_connections.");
    gh_obuf_printf(b, "gatehouse_connections_limit %llu\n",
                   (unsigned long long)cfg->limits.max_connections);
    family(b, "gatehouse_config_reloads_total", "counter", "Configuration reloads by result.");
    gh_obuf_printf(b, "gatehouse_config_reloads_total{result=\"ok\"} %llu\n"
                      "gatehouse_config_reloads_total{result=\"error\"} %llu\n",
                   (unsigned long long)srv->reloads_ok, (unsigned long long)srv->reloads_failed);
    family(b, "gatehouse_config_last_reload_successful", "gauge",
           "0 when the last reload failed (the previous configuration is serving), else 1.");
    gh_obuf_printf(b, "gatehouse_config_last_reload_successful %d\n",
                   srv->last_reload_ms && !srv->last_reload_ok ? 0 : 1);

    /* Every configured tunnel is exported, connected or not, so an alert
     * on 0 connections works. */
    family(b, "gatehouse_tunnel_connections", "gauge", "Connector connections open per tunnel.");
    for (size_t i = 0; i < cfg->ntunnels; i++) {
        unsigned conns, streams;
        gh__tunnel_counts(srv, cfg->tunnels[i].name, &conns, &streams);
        gh_obuf_puts(b, "gatehouse_tunnel_connections{tunnel=\"");
        gh_obuf_esc(b, cfg->tunnels[i].name, GH_ESC_PROM_LABEL);
        gh_obuf_printf(b, "\"} %u\n", conns);
    }
    family(b, "gatehouse_tunnel_streams", "gauge", "Streams open per tunnel.");
    for (size_t i = 0; i < cfg->ntunnels; i++) {
        unsigned conns, streams;
        gh__tunnel_counts(srv, cfg->tunnels[i].name, &conns, &streams);
        gh_obuf_puts(b, "gatehouse_tunnel_streams{tunnel=\"");
        gh_obuf_esc(b, cfg->tunnels[i].name, GH_ESC_PROM_LABEL);
        gh_obuf_printf(b, "\"} %u\n", streams);
    }
}

char *gh_metrics_render(gh_server_t *srv, size_t *len)
{
    gh_obuf_t b = { 0 };
    family(&b, "gatehouse_build_info", "gauge", "Always 1; the version is in the label.");
    gh_obuf_puts(&b, "gatehouse_build_info{version=\"");
    gh_obuf_esc(&b, GH_VERSION, GH_ESC_PROM_LABEL);
    gh_obuf_puts(&b, "\"} 1\n");
    family(&b, "process_start_time_seconds", "gauge", "Start time of the process, Unix seconds.");
    gh_obuf_printf(&b, "process_start_time_seconds %llu\n",
                   (unsigned long long)(srv->started_ms / 1000));
    render_requests(&b);
    if (srv->snap) {
        render_server(&b, srv);
        render_upstreams(&b, srv);
        render_plugins(&b, srv->snap->cfg);
    }
    if (b.oom || !b.p) {
        gh_obuf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
