/* fuzz_scenario.c - libFuzzer harness: scenario files (YAML), which
 * `discedge scenario` reads from wherever a user points it. */
#include <stdint.h>
#include <stdlib.h>

#include "client/scenario.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    scenario s;
    char err[256];
    if (scenario_parse((const char *)data, n, &s, err, sizeof err) == 0) {
        for (size_t i = 0; i < s.n_turns; i++)
            if (!s.turns[i].message) abort(); /* a parsed turn always has its message */
        scenario_free(&s);
    }
    return 0;
}
