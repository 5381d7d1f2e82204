/* Internal to plugins/: the list of built-in plugin types and the helpers
 * their files share. The proxy only needs plugins/plugin.h. */
#ifndef GH_PLUGINS_BUILTIN_H
#define GH_PLUGINS_BUILTIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conf/config-t.h"
#include "plugins/plugin.h"

/* The built-in types, in the order `unknown plugin type` lists them and
 * /metrics groups them. Adding a type is one file, plugins/NAME.c, that
 * defines `const gh_plugin_ops_t gh__NAME_ops`, and one line here; this
 * list declares the ops tables and registry.c builds its table from it. */
#define GH_BUILTIN_PLUGINS(X) \
    X(api_key)                \
    X(rate_limit)             \
    X(ip_filter)              \
    X(headers)

#define GH__DECLARE_PLUGIN(name) extern const gh_plugin_ops_t gh__##name##_ops;
GH_BUILTIN_PLUGINS(GH__DECLARE_PLUGIN)
#undef GH__DECLARE_PLUGIN

/* registry.c: two YAML trees say the same thing: same types, scalars with
 * the same text and quoting, lists in the same order, mappings with the same
 * keys (in any order) and equal values. Locations are ignored, so moving a
 * plugin in the file keeps its state across a reload. */
bool gh__node_equal(const gh_node_t *a, const gh_node_t *b);

/* registry.c: the plugin's own instance behind pc->instance (NULL before
 * gh_plugins_create), for tests that reach into one. */
void *gh__plugin_instance(const gh_plugin_conf_t *pc);

/* rate_limit.c: true when pc is a rate_limit keyed `by: api_key`, which
 * needs an api_key plugin before it on every route that lists it. */
bool gh__rate_limit_wants_key_id(const gh_plugin_conf_t *pc);

/* headers.c: an HTTP field name (RFC 9110 token) and a field value that is
 * safe to put on the wire (visible ASCII, obs-text, inner SP/HTAB; no CR, LF
 * or NUL). */
bool gh__header_name_ok(const char *s);
bool gh__header_value_ok(const char *s);

/* rate_limit.c: replaces the clock of a rate_limit instance (tests). */
void gh__rate_limit_set_clock(void *inst, uint64_t (*now)(void));

/* Monotonic clock in nanoseconds; rate_limit instances read time through a
 * pointer to this so that tests can drive a fake clock. */
uint64_t gh__now_ns(void);

#endif
