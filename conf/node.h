/* Decoding helpers over the gh_node_t tree of a config, shared by conf/ and
 * by plugins/, which decode their own settings from gh_plugin_conf_t.node.
 * Convention: int functions return 0 on success and -1 on failure, and every
 * failure adds one "FILE:LINE:COL: message" line to errs at the node's
 * location; messages are the same wherever a value of that kind appears. */
#ifndef GH_NODE_H
#define GH_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "conf/config-t.h"

/* The value stored under KEY in MAP, or NULL when MAP has no such key (or is
 * not a mapping). */
const gh_node_t *gh_node_get(const gh_node_t *map, const char *key);
/* The key node itself, for errors that point at the key. */
const gh_node_t *gh_node_get_key(const gh_node_t *map, const char *key);

/* A plain (unquoted) empty value, "~" or "null": what YAML writes for a key
 * given with nothing after it. */
bool gh_node_is_null(const gh_node_t *n);

/* Adds "FILE:LINE:COL: message" at n. */
void gh_node_error(gh_errors_t *errs, const gh_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reports every key of MAP not in KNOWN (NULL-terminated) as
 * "unknown key 'k' in WHERE (did you mean 'x'?)" at the key; WHERE NULL drops
 * the " in WHERE". Returns -1 if any key was unknown. */
int gh_node_check_keys(gh_errors_t *errs, const gh_node_t *map,
                       const char *const *known, const char *where);

/* "expected a mapping" / "expected a list" / "expected a string". */
int gh_node_expect(gh_errors_t *errs, const gh_node_t *n, gh_node_type_t type);

/* A non-empty scalar without NUL bytes ("expected a non-empty string"). */
int gh_node_string(gh_errors_t *errs, const gh_node_t *n, const char **out);
/* true or false, nothing else. */
int gh_node_bool(gh_errors_t *errs, const gh_node_t *n, bool *out);
/* A decimal integer in [min, max]: "expected a number", or "expected a number
 * from MIN to MAX". */
int gh_node_uint(gh_errors_t *errs, const gh_node_t *n, uint64_t min, uint64_t max,
                 uint64_t *out);
/* Units of conf/units.h, with "invalid duration 'x' (...)" and the like. */
int gh_node_duration(gh_errors_t *errs, const gh_node_t *n, uint64_t *ms);
int gh_node_size(gh_errors_t *errs, const gh_node_t *n, uint64_t *bytes);
int gh_node_rate(gh_errors_t *errs, const gh_node_t *n, double *per_second);
/* One of NAMES (NULL-terminated); *out is its index. WHAT names the setting
 * in "invalid WHAT 'x' (expected a, b or c)", with a did-you-mean. */
int gh_node_enum(gh_errors_t *errs, const gh_node_t *n, const char *const *names,
                 const char *what, int *out);

/* The candidate closest to WORD within edit distance 2 (a swap of two
 * neighbours counts as one edit), or NULL. Candidates may be NULL. */
const char *gh_did_you_mean(const char *word, const char *const *cands, size_t n);

#endif
