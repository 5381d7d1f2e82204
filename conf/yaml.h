/* Internal to conf/: YAML text into a gh_node_t tree. */
#ifndef GH_CONF_YAML_H
#define GH_CONF_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include "conf/arena.h"
#include "conf/config-t.h"

/* Nesting deeper than this is refused: no config needs it, and it bounds the
 * recursion of anything that walks the tree. */
#define GH_YAML_MAX_DEPTH 64

/* Parses buf[0..len) as one YAML document into nodes allocated in arena; the
 * locs point at file, which must live as long as the arena.
 * Every scalar (keys too) has ${NAME} replaced by the environment variable
 * NAME and $$ by $; quoted is set for any style but plain. Duplicate keys are
 * reported and the later pair dropped; aliases are refused.
 * Returns the root, or NULL after a syntax error or for an empty document
 * (the error is in errs). Errors that leave the tree usable (an unset
 * variable, a duplicate key, an alias) are added to errs while the root is
 * still returned; the scalars concerned are "poisoned" so that the decoders
 * stay quiet about them instead of adding a second, confusing error. */
gh_node_t *gh__yaml_parse(gh_arena_t *arena, const char *file, const char *buf,
                          size_t len, gh_errors_t *errs);

/* True for a scalar whose text is unusable because of an error already
 * reported (see above). */
bool gh__node_poisoned(const gh_node_t *n);

#endif
