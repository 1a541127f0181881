/* cli.c - see cli.h. */
#include "cli.h"

#include <pthread.h>
#include <stdio.h>

#include "util/log.h"

static int set_log_level(void *ud, const char *value, char *why, size_t n) {
    (void)ud;
    int level = log_level_parse(value);
    if (level < 0) return snprintf(why, n, "\"%s\" is not one of debug|info|warn|error", value), -1;
    log_set_level(level);
    return 0;
}

const opt *cli_engine_opts(llm_params *lp) {
    static const char *const kv_types[] = {"f16", "q8_0", NULL};
    static opt rows[16];
    const opt t[] = {
        {.kind = OPT_TEXT, .help = "The engine (with serve --llm, set these on the LLM service instead) and logging:"},
        {"ctx-size", OPT_INT, "N", "tokens per conversation", OPT_TO(lp->n_ctx), .min = 0, .max = 1 << 20,
         .dflt = "the model's, at most 4096"},
        {"threads", OPT_INT, "N", "inference threads", OPT_TO(lp->n_threads), .min = 0, .max = 1024,
         .dflt = "physical cores"},
        {"parallel", OPT_INT, "N",
         "requests generating at once, batched together; each has a KV stream of ctx-size tokens, reserved at "
         "start",
         OPT_TO(lp->n_parallel), .min = 1, .max = 64},
        {"queue", OPT_INT, "N", "requests waiting beyond those; more get 429", OPT_TO(lp->n_queue), .min = 0,
         .max = 1 << 16},
        {"kv-cache-sessions", OPT_INT, "N",
         "conversations whose KV cache stays in memory, least recently used out first; 0 disables reuse. "
         "Those beyond --parallel take the KV bytes of the tokens they hold, not a window each",
         OPT_TO(lp->kv_sessions), .min = 0, .max = 256},
        {"kv-spill-mib", OPT_SIZE, "N",
         "disk for the KV of conversations pushed out of memory, restored when they return, in MiB (or with a "
         "unit: 2G); 0: off",
         OPT_TO(lp->spill_mib), .min = 0, .max = 1 << 24, .unit = 1 << 20},
        {"kv-spill-dir", OPT_PATH, "DIR", "where", .to = &lp->spill_dir,
         .dflt = "serve: DATA-DIR/kv-spill; llm-serve: off unless given"},
        {"kv-type", OPT_ENUM, "T",
         "KV cache element type: f16 or q8_0 (about half the memory, spill and KV transfer bytes; a KV state "
         "moves only between nodes of the same type)",
         .to = &lp->kv_type, .choices = kv_types, .dflt = "f16"},
        {"backend-dir", OPT_PATH, "DIR", "folder with libggml-cpu-*.so", .to = &lp->backend_dir, .dflt = "the build's"},
        {"log-level", OPT_CALL, "LEVEL", "debug|info|warn|error", .call = set_log_level, .dflt = "info"},
        {0},
    };
    _Static_assert(sizeof t <= sizeof rows, "cli_engine_opts: rows too small");
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) rows[i] = t[i];
    return rows;
}

void cli_block_stop(sigset_t *stop) {
    sigemptyset(stop);
    sigaddset(stop, SIGINT);
    sigaddset(stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, stop, NULL);
    signal(SIGPIPE, SIG_IGN);
}
