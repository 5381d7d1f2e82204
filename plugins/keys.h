/* Internal to plugins/: the key set of an api_key instance, from the YAML
 * `keys` list and from a keys_file. A keys_file has one key a line:
 *
 *     # comments and blank lines are ignored
 *     openwebui sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
 *     n8n       sha256:...     # a comment may follow
 *
 * Errors are "FILE:LINE:COL: message" (the keys file's own lines). No message
 * ever quotes an id or hash that failed to parse: a key pasted by mistake
 * where its hash belongs must not end up in a log. */
#ifndef GH_PLUGINS_KEYS_H
#define GH_PLUGINS_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include "conf/config-t.h"

/* An id fits gh_preq_t.key_id with its NUL. */
#define GH__KEY_ID_MAX 63

typedef struct gh__key {
    char id[GH__KEY_ID_MAX + 1];
    uint8_t hash[32];
    gh_loc_t loc;           /* for errors while decoding only */
} gh__key_t;

typedef struct gh__keyset {
    gh__key_t *v;
    size_t n, cap;
} gh__keyset_t;

/* "sha256:" and 64 hex digits (either case) into 32 bytes; 0 or -1. */
int gh__parse_sha256(const char *s, size_t len, uint8_t out[32]);

/* Adds the `keys` list at list ({id, hash} mappings). plugin names the
 * plugin in "unknown key" errors. Returns 0, or -1 after reporting. */
int gh__keyset_add_yaml(gh__keyset_t *ks, const gh_node_t *list, const char *plugin,
                        gh_errors_t *errs);
/* Reads the keys file at path; at is the node naming it, for "cannot read".
 * Returns 0, or -1 after reporting every bad line. */
int gh__keyset_add_file(gh__keyset_t *ks, const gh_node_t *at, const char *path,
                        gh_errors_t *errs);
/* Reports ids given twice and hashes given twice (two ids for one key). */
int gh__keyset_check_unique(const gh__keyset_t *ks, gh_errors_t *errs);
void gh__keyset_free(gh__keyset_t *ks);

#endif
