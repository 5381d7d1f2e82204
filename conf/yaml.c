/* YAML events into a gh_node_t tree (conf/yaml.h).
 * libyaml's event API is used instead of its document API so that the tree
 * lands directly in the snapshot's arena, duplicate keys are caught while the
 * mapping is read, and aliases are refused before they can expand.
 * Containers under construction sit on an explicit stack with their children
 * in a heap vector; at the end event the children are copied into the arena. */
#include "conf/yaml.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "conf/config.h"

/* Poisoned scalars point here; nothing ever writes through it. */
static char poison_text[1];

typedef struct frame {
    gh_node_t *node;
    gh_node_t **items;
    size_t count, cap;
    bool skip_value;        /* the key before was a duplicate: drop its value */
} frame_t;

typedef struct builder {
    gh_arena_t *arena;
    const char *file;
    gh_errors_t *errs;
    frame_t stack[GH_YAML_MAX_DEPTH];
    size_t depth;
    gh_node_t *root;
    bool failed;            /* a fatal error: no tree comes back */
} builder_t;

static void oom(void)
{
    fputs("gatehouse: out of memory\n", stderr);
    abort();
}

bool gh__node_poisoned(const gh_node_t *n)
{
    return n && n->type == GH_NODE_SCALAR && n->str == poison_text;
}

static void poison(gh_node_t *n)
{
    n->str = poison_text;
    n->len = 0;
}

static gh_loc_t mark_loc(const builder_t *b, yaml_mark_t m)
{
    gh_loc_t loc = { b->file, (uint32_t)m.line + 1, (uint32_t)m.column + 1 };
    return loc;
}

/* A growable heap string used while substituting. */
typedef struct buf {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_put(buf_t *s, const char *p, size_t n)
{
    if (s->cap - s->len < n + 1) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap - s->len < n + 1) {
            if (cap > SIZE_MAX / 2)
                oom();
            cap *= 2;
        }
        char *np = realloc(s->p, cap);
        if (!np)
            oom();
        s->p = np;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static bool name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool name_char(char c)
{
    return name_start(c) || (c >= '0' && c <= '9');
}

/* Fills n->str/len with text after ${NAME} and $$ substitution. A reference
 * that cannot be resolved is reported at n->loc and poisons n; every problem in
 * the scalar is reported, not only the first. */
static void substitute(builder_t *b, gh_node_t *n, const char *text, size_t len)
{
    if (!memchr(text, '$', len)) {
        n->str = gh_arena_alloc(b->arena, len + 1);
        memcpy(n->str, text, len);
        n->len = len;
        return;
    }

    buf_t out = { 0 };
    bool bad = false;
    size_t i = 0;
    while (i < len) {
        const char *dollar = memchr(text + i, '$', len - i);
        size_t run = dollar ? (size_t)(dollar - (text + i)) : len - i;
        buf_put(&out, text + i, run);
        i += run;
        if (i == len)
            break;
        /* text[i] == '$' */
        if (i + 1 < len && text[i + 1] == '$') {
            buf_put(&out, "$", 1);
            i += 2;
        } else if (i + 1 < len && text[i + 1] == '{') {
            size_t start = i + 2, j = start;
            if (j < len && name_start(text[j]))
                for (j++; j < len && name_char(text[j]); j++)
                    ;
            if (j == start || j >= len || text[j] != '}') {
                gh_errors_add(b->errs, &n->loc,
                              "invalid environment reference (expected ${NAME} or $$)");
                bad = true;
                break;
            }
            char name[256];
            size_t nlen = j - start;
            const char *value = NULL;
            if (nlen < sizeof(name)) {
                memcpy(name, text + start, nlen);
                name[nlen] = '\0';
                value = getenv(name);
            }
            if (!value) {
                gh_errors_add(b->errs, &n->loc, "environment variable %.*s is not set",
                              (int)nlen, text + start);
                bad = true;
            } else {
                buf_put(&out, value, strlen(value));
            }
            i = j + 1;
        } else {
            buf_put(&out, "$", 1);     /* a lone $ is just a dollar sign */
            i++;
        }
    }

    if (bad) {
        poison(n);
    } else {
        n->str = gh_arena_alloc(b->arena, out.len + 1);
        if (out.len)
            memcpy(n->str, out.p, out.len);
        n->len = out.len;
    }
    free(out.p);
}

static void fatal(builder_t *b, yaml_mark_t m, const char *msg)
{
    gh_loc_t loc = mark_loc(b, m);
    gh_errors_add(b->errs, &loc, "%s", msg);
    b->failed = true;
}

static void frame_push_item(frame_t *f, gh_node_t *n)
{
    if (f->count == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        gh_node_t **items = realloc(f->items, cap * sizeof(*items));
        if (!items)
            oom();
        f->items = items;
        f->cap = cap;
    }
    f->items[f->count++] = n;
}

/* Hands a finished node to its parent (or makes it the root). */
static void attach(builder_t *b, gh_node_t *n)
{
    if (b->depth == 0) {
        b->root = n;
        return;
    }
    frame_t *f = &b->stack[b->depth - 1];
    if (f->node->type == GH_NODE_SEQ) {
        frame_push_item(f, n);
        return;
    }
    if (f->count % 2 == 1) {    /* a value */
        frame_push_item(f, n);
        return;
    }
    if (f->skip_value) {        /* the value of a dropped duplicate key, which
                                   was never pushed, so the count is even */
        f->skip_value = false;
        return;
    }
    /* A key. Only scalars make sense as keys in a config. */
    if (n->type != GH_NODE_SCALAR) {
        gh_errors_add(b->errs, &n->loc, "expected a string as mapping key");
        b->failed = true;
        return;
    }
    if (!gh__node_poisoned(n)) {
        for (size_t i = 0; i < f->count; i += 2) {
            const gh_node_t *k = f->items[i];
            if (k->len == n->len && memcmp(k->str, n->str, n->len) == 0 &&
                !gh__node_poisoned(k)) {
                gh_errors_add(b->errs, &n->loc, "duplicate key '%s'", n->str);
                f->skip_value = true;
                return;
            }
        }
    }
    frame_push_item(f, n);
}

static gh_node_t *node_new(builder_t *b, gh_node_type_t type, yaml_mark_t m)
{
    gh_node_t *n = gh_arena_alloc(b->arena, sizeof(*n));
    n->type = type;
    n->loc = mark_loc(b, m);
    return n;
}

static void open_container(builder_t *b, gh_node_type_t type, yaml_mark_t m)
{
    if (b->depth == GH_YAML_MAX_DEPTH) {
        fatal(b, m, "nesting is too deep");
        return;
    }
    frame_t *f = &b->stack[b->depth++];
    memset(f, 0, sizeof(*f));
    f->node = node_new(b, type, m);
    f->node->str = "";          /* never NULL, even where no text is expected */
}

static void close_container(builder_t *b)
{
    frame_t *f = &b->stack[--b->depth];
    gh_node_t *n = f->node;
    n->items = gh_arena_alloc(b->arena, (f->count ? f->count : 1) * sizeof(*n->items));
    if (f->count)
        memcpy(n->items, f->items, f->count * sizeof(*n->items));
    n->n = n->type == GH_NODE_MAP ? f->count / 2 : f->count;
    free(f->items);
    memset(f, 0, sizeof(*f));
    attach(b, n);
}

static void report_parser_error(builder_t *b, const yaml_parser_t *p,
                                const char *buf, size_t len)
{
    const char *problem = p->problem ? p->problem : "invalid YAML";
    gh_loc_t loc = { b->file, 0, 0 };

    if (p->error == YAML_MEMORY_ERROR)
        oom();
    if (p->error == YAML_READER_ERROR) {
        /* The reader knows a byte offset, not a line: count it here. */
        size_t off = p->problem_offset < len ? p->problem_offset : len;
        loc.line = 1;
        loc.col = 1;
        for (size_t i = 0; i < off; i++) {
            if (buf[i] == '\n') {
                loc.line++;
                loc.col = 1;
            } else {
                loc.col++;
            }
        }
        gh_errors_add(b->errs, &loc, "YAML syntax error: %s", problem);
        return;
    }
    loc = mark_loc(b, p->problem_mark);
    if (p->context)
        gh_errors_add(b->errs, &loc, "YAML syntax error: %s (%s at line %u)", problem,
                      p->context, (unsigned)p->context_mark.line + 1);
    else
        gh_errors_add(b->errs, &loc, "YAML syntax error: %s", problem);
}

static bool is_empty_root(const gh_node_t *n)
{
    if (!n)
        return true;
    if (n->type != GH_NODE_SCALAR || n->quoted)
        return false;
    return n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0;
}

gh_node_t *gh__yaml_parse(gh_arena_t *arena, const char *file, const char *buf,
                          size_t len, gh_errors_t *errs)
{
    builder_t b;
    memset(&b, 0, sizeof(b));
    b.arena = arena;
    b.file = file;
    b.errs = errs;

    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        oom();
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);

    size_t ndocs = 0;
    bool done = false;
    while (!done && !b.failed) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            report_parser_error(&b, &p, buf, len);
            b.failed = true;
            break;
        }
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (++ndocs > 1)
                fatal(&b, ev.start_mark, "only one YAML document is allowed");
            break;
        case YAML_SCALAR_EVENT: {
            gh_node_t *n = node_new(&b, GH_NODE_SCALAR, ev.start_mark);
            n->quoted = ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            substitute(&b, n, (const char *)ev.data.scalar.value, ev.data.scalar.length);
            attach(&b, n);
            break;
        }
        case YAML_ALIAS_EVENT: {
            gh_node_t *n = node_new(&b, GH_NODE_SCALAR, ev.start_mark);
            gh_errors_add(errs, &n->loc, "YAML aliases are not supported (*%s)",
                          (const char *)ev.data.alias.anchor);
            poison(n);
            attach(&b, n);
            break;
        }
        case YAML_SEQUENCE_START_EVENT:
            open_container(&b, GH_NODE_SEQ, ev.start_mark);
            break;
        case YAML_MAPPING_START_EVENT:
            open_container(&b, GH_NODE_MAP, ev.start_mark);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            close_container(&b);
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);

    while (b.depth > 0)
        free(b.stack[--b.depth].items);
    if (b.failed)
        return NULL;
    if (is_empty_root(b.root)) {
        gh_loc_t loc = { file, 0, 0 };
        gh_errors_add(errs, &loc, "the configuration is empty");
        return NULL;
    }
    return b.root;
}
