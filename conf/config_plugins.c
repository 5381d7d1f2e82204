/* The plugins section (SPEC.md section 2): named instances with a type. Only
 * the name and the presence of a type are checked here; the registry checks
 * the type, and each plugin decodes the rest of its mapping from
 * gh_plugin_conf_t.node with the helpers of conf/node.h. */
#include "conf/config.h"
#include "conf/decode.h"

void gh__decode_plugins(gh__decoder_t *d, const gh_node_t *key, const gh_node_t *v)
{
    gh__feature(d, GH_FEAT_PLUGINS_SECTION, key);
    if (gh_node_is_null(v) || gh_node_expect(d->errs, v, GH_NODE_MAP) < 0)
        return;
    gh_config_t *c = d->cfg;
    c->plugins = gh_arena_alloc(d->arena, v->n * sizeof(*c->plugins));
    for (size_t i = 0; i < v->n; i++) {
        const gh_node_t *k = v->items[2 * i], *m = v->items[2 * i + 1], *t;
        if (gh__node_poisoned(k))
            continue;
        /* Registered even when broken, so routes naming it get no second error. */
        gh_plugin_conf_t *p = gh_arena_alloc(d->arena, sizeof(*p));
        p->name = k->str;
        p->node = m;
        p->loc = k->loc;
        p->index = c->nplugins;
        c->plugins[c->nplugins++] = p;
        if (!gh__valid_name(k->str))
            gh_node_error(d->errs, k,
                          "invalid plugin name '%s' (letters, digits, '-', '_' and '.' only)",
                          k->str);
        /* The other keys belong to the plugin, which decodes them itself. */
        if (gh_node_expect(d->errs, m, GH_NODE_MAP) < 0)
            continue;
        /* the type is checked against the registry by gh_plugins_check */
        if (!(t = gh_node_get(m, "type")))
            gh_node_error(d->errs, m, "missing 'type' in plugin '%s'", k->str);
        else if (gh_node_expect(d->errs, t, GH_NODE_SCALAR) == 0)
            p->type = t->str;
    }
}
