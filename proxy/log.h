/* Diagnostic log on stderr, one line an event, with a level from log_level. */
#ifndef GH_LOG_H
#define GH_LOG_H

#include <stdatomic.h>

#include "conf/config-t.h"

/* Read by every worker, set on start and reload: atomic, so a plain
 * `gh_log_level = x` is a race-free store. The macros read it relaxed. */
extern _Atomic gh_log_level_t gh_log_level;

#define gh_log_enabled(level) \
    (atomic_load_explicit(&gh_log_level, memory_order_relaxed) >= (level))

/* Writes one whole line (at most 2 KiB) to stderr with a single write(). */
void gh_log(gh_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define gh_log_error(...) gh_log(GH_LOG_ERROR, __VA_ARGS__)
#define gh_log_warn(...) do { if (gh_log_enabled(GH_LOG_WARN)) gh_log(GH_LOG_WARN, __VA_ARGS__); } while (0)
#define gh_log_info(...) do { if (gh_log_enabled(GH_LOG_INFO)) gh_log(GH_LOG_INFO, __VA_ARGS__); } while (0)
#define gh_log_debug(...) do { if (gh_log_enabled(GH_LOG_DEBUG)) gh_log(GH_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
