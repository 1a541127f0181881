/* cli.c - see cli.h. */
#include "cli.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/vec.h"

enum { O_CTX = CLI_ENGINE_FIRST, O_THREADS, O_PARALLEL, O_QUEUE, O_KVSESS, O_SPILL_MIB, O_SPILL_DIR, O_BACKEND, O_LOG };

static const struct option engine_opts[] = {{"ctx-size", required_argument, 0, O_CTX},
                                            {"threads", required_argument, 0, O_THREADS},
                                            {"parallel", required_argument, 0, O_PARALLEL},
                                            {"queue", required_argument, 0, O_QUEUE},
                                            {"kv-cache-sessions", required_argument, 0, O_KVSESS},
                                            {"kv-spill-mib", required_argument, 0, O_SPILL_MIB},
                                            {"kv-spill-dir", required_argument, 0, O_SPILL_DIR},
                                            {"backend-dir", required_argument, 0, O_BACKEND},
                                            {"log-level", required_argument, 0, O_LOG},
                                            {0, 0, 0, 0}};

struct option *cli_options(const struct option *own) {
    size_t a = 0, b = sizeof engine_opts / sizeof engine_opts[0];
    while (own[a].name) a++;
    struct option *all = dc_xrealloc(NULL, (a + b) * sizeof *all);
    memcpy(all, own, a * sizeof *all);
    memcpy(all + a, engine_opts, b * sizeof *all);
    return all;
}

/* A whole decimal number in [lo, hi], or -1 with *ok false. */
static long number(const char *arg, long lo, long hi, bool *ok) {
    char *end;
    long v = strtol(arg, &end, 10);
    *ok = *arg && !*end && v >= lo && v <= hi;
    return v;
}

int cli_engine_option(const char *cmd, int code, const char *arg, llm_params *lp) {
    bool ok = true;
    switch (code) {
    case O_CTX: lp->n_ctx = (int)number(arg, 0, 1 << 20, &ok); break;
    case O_THREADS: lp->n_threads = (int)number(arg, 0, 1024, &ok); break;
    case O_PARALLEL: lp->n_parallel = (int)number(arg, 1, 64, &ok); break;
    case O_QUEUE: lp->n_queue = (int)number(arg, 0, 1 << 16, &ok); break;
    case O_KVSESS: lp->kv_sessions = (int)number(arg, 0, 256, &ok); break;
    case O_SPILL_MIB: lp->spill_mib = (size_t)number(arg, 0, 1 << 24, &ok); break;
    case O_SPILL_DIR: lp->spill_dir = arg; break;
    case O_BACKEND: lp->backend_dir = arg; break;
    case O_LOG:
        ok = log_level_parse(arg) >= 0;
        if (ok) log_set_level(log_level_parse(arg));
        break;
    default: ok = false; break;
    }
    if (!ok) fprintf(stderr, "%s: bad value \"%s\" for an engine option (see --help)\n", cmd, arg);
    return ok ? 0 : -1;
}

void cli_engine_usage(FILE *f) {
    fputs("The engine (with serve --llm, set these on the LLM service instead) and logging:\n"
          "  --ctx-size N          tokens per conversation (default: model's, at most 4096)\n"
          "  --threads N           inference threads (default: physical cores)\n"
          "  --parallel N          requests generating at once, batched together (default 4)\n"
          "  --queue N             requests waiting beyond those; more get 429 (default 16)\n"
          "  --kv-cache-sessions N conversations whose KV cache stays in memory, least\n"
          "                        recently used out first; 0 disables reuse (default 8).\n"
          "                        Memory: N x ctx-size x the model's KV bytes per token\n"
          "  --kv-spill-mib N      disk for the KV of conversations pushed out of memory,\n"
          "                        restored when they return (default 1024; 0: off)\n"
          "  --kv-spill-dir DIR    where (serve: DATA-DIR/kv-spill; llm-serve: off unless given)\n"
          "  --backend-dir DIR     folder with libggml-cpu-*.so (default: the build's)\n"
          "  --log-level LEVEL     debug|info|warn|error (default info)\n",
          f);
}

void cli_block_stop(sigset_t *stop) {
    sigemptyset(stop);
    sigaddset(stop, SIGINT);
    sigaddset(stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, stop, NULL);
    signal(SIGPIPE, SIG_IGN);
}
