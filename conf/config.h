/* Loading and checking the YAML configuration (SPEC.md section 2).
 * Return convention: pointers are NULL on failure, ints are 0 on success and
 * -1 on failure; every failure adds a "FILE:LINE:COL: message" line to errs. */
#ifndef GH_CONFIG_H
#define GH_CONFIG_H

#include <stdarg.h>
#include "conf/config-t.h"

#define GH_DEFAULT_CONFIG "/etc/gatehouse/gatehouse.yaml"

/* Reads, parses and deeply checks PATH. Returns a snapshot with refcount 1,
 * or NULL with errs filled. Never exits or prints. */
gh_config_t *gh_config_load(const char *path, gh_errors_t *errs);

/* As gh_config_load, from len bytes at data; name is the file name used in
 * error lines. For tests, fuzzing and configs that do not come from a file. */
gh_config_t *gh_config_load_buffer(const char *name, const char *data, size_t len,
                                   gh_errors_t *errs);

void gh_config_retain(gh_config_t *c);
/* Drops one reference; the last one frees the snapshot and all it owns. */
void gh_config_release(gh_config_t *c);

void gh_errors_init(gh_errors_t *e);
void gh_errors_free(gh_errors_t *e);
/* Adds "FILE:LINE:COL: message"; a loc whose line is 0 gives "FILE: message",
 * and a NULL loc adds the message as it is. */
void gh_errors_add(gh_errors_t *e, const gh_loc_t *loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void gh_errors_vadd(gh_errors_t *e, const gh_loc_t *loc, const char *fmt, va_list ap);

/* CIDR helpers. gh_cidr_parse accepts "10.0.0.0/8", "::1/128", or a bare
 * address (a full-length prefix). gh_cidr_match compares an AF_INET or
 * AF_INET6 sockaddr; an IPv4-mapped IPv6 address matches IPv4 entries. */
int gh_cidr_parse(const char *s, gh_cidr_t *out);
bool gh_cidr_match(const gh_cidr_t *c, const struct sockaddr *sa);
bool gh_cidr_match_any(const gh_cidr_t *list, size_t n, const struct sockaddr *sa);

/* Parses "host:port", "[v6]:port" into a sockaddr (numeric only). */
int gh_parse_sockaddr(const char *s, struct sockaddr_storage *out, socklen_t *len);

#endif
