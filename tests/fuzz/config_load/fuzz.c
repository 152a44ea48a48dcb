/* Fuzz target: arbitrary bytes as a configuration file.  Whatever the input,
 * config_load_string must return either a config or errors (never both, never
 * neither), and everything must be released: the fuzzer's leak check fails
 * the run otherwise.  The dump is exercised on every accepted config. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config_errors errs;
    struct config *c = config_load_string("fuzz.yaml", (const char *)data, size, &errs);
    if ((c != NULL) == (errs.n != 0))
        abort();
    if (c) {
        FILE *out = fopen("/dev/null", "w");
        if (out) {
            config_dump(c, out);
            fclose(out);
        }
    }
    config_free(c);
    config_errors_release(&errs);
    return 0;
}
