/* libFuzzer target for the config loader: arbitrary bytes through the YAML
 * parser, ${ENV} substitution and the whole schema decoder. Everything the
 * loader allocates must come back, whatever the input. */
#include <stddef.h>
#include <stdint.h>
#include "conf/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gh_errors_t errs;
    gh_errors_init(&errs);
    gh_config_t *c = gh_config_load_buffer("fuzz.yaml", (const char *)data, size, &errs);
    /* Exactly one of: a snapshot, or at least one error. */
    if ((c == NULL) == (errs.n == 0))
        __builtin_trap();
    gh_config_release(c);
    gh_errors_free(&errs);
    return 0;
}
