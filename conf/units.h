/* Units of SPEC.md section 2: durations, sizes and rates. Each returns 0 on
 * success and -1 on anything else (empty, junk, overflow, negative). */
#ifndef GH_UNITS_H
#define GH_UNITS_H

#include <stdint.h>

/* "500ms", "10s", "5m", "1h"; a bare number is seconds. */
int gh_parse_duration_ms(const char *s, uint64_t *out_ms);
/* "512", "64k", "10m", "1g" (also upper case, and "kb"/"mb"/"gb"); powers of 1024. */
int gh_parse_size(const char *s, uint64_t *out);
/* "20/s", "600/m", "10000/h": events per second as a double (> 0). */
int gh_parse_rate(const char *s, double *per_second);

#endif
