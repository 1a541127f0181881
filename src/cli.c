/* cli.c - see cli.h. */
#include "cli.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/lines.h"
#include "util/log.h"
#include "util/vec.h"

enum { O_CTX = CLI_ENGINE_FIRST, O_THREADS, O_PARALLEL, O_QUEUE, O_KVSESS, O_SPILL_MIB, O_SPILL_DIR, O_BACKEND, O_LOG, O_KV_TYPE };

static const struct option engine_opts[] = {{"ctx-size", required_argument, 0, O_CTX},
                                            {"threads", required_argument, 0, O_THREADS},
                                            {"parallel", required_argument, 0, O_PARALLEL},
                                            {"queue", required_argument, 0, O_QUEUE},
                                            {"kv-cache-sessions", required_argument, 0, O_KVSESS},
                                            {"kv-spill-mib", required_argument, 0, O_SPILL_MIB},
                                            {"kv-spill-dir", required_argument, 0, O_SPILL_DIR},
                                            {"backend-dir", required_argument, 0, O_BACKEND},
                                            {"log-level", required_argument, 0, O_LOG},
                                            {"kv-type", required_argument, 0, O_KV_TYPE},
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
    case O_KV_TYPE:
        ok = !strcmp(arg, "f16") || !strcmp(arg, "q8_0");
        lp->kv_type = arg;
        break;
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
          "  --kv-type T           KV cache element type: f16 (default) or q8_0 (about half\n"
          "                        the memory, spill and KV transfer bytes; a KV state moves\n"
          "                        only between nodes of the same type)\n"
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

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    if (n >= 2 && (s[0] == '"' || s[0] == '\'') && s[n - 1] == s[0]) { /* a quoted value */
        s[n - 1] = '\0';
        s++;
    }
    return s;
}

static void add_owned(cli_args *a, char *s) {
    a->owned = dc_xrealloc(a->owned, (size_t)(a->n_owned + 1) * sizeof *a->owned);
    a->owned[a->n_owned++] = s;
}

/* Reads path's settings into a's owned strings ("--name=value", "--flag"). */
static int read_config(const char *cmd, const struct option *opts, const char *path, cli_args *a) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: cannot read the configuration file %s\n", cmd, path);
        return -1;
    }
    char buf[4096], *name;
    int lineno = 0, rc = 0;
    while (!rc && (name = lines_next(f, buf, sizeof buf, &lineno))) {
        char *value = name + strcspn(name, " \t=");
        if (*value) {
            *value++ = '\0';
            value = trim(value);
            if (*value == '=') value = trim(value + 1);
        }
        const struct option *o = opts;
        while (o->name && strcmp(o->name, name) != 0) o++;
        if (!o->name || !strcmp(name, "config") || !strcmp(name, "help")) {
            fprintf(stderr, "%s: %s:%d: unknown setting \"%s\" (settings are the long options of --help)\n", cmd,
                    path, lineno, name);
            rc = -1;
        } else if (o->has_arg == no_argument) {
            if (*value && strcmp(value, "true") && strcmp(value, "false")) {
                fprintf(stderr, "%s: %s:%d: %s is a flag: true, false, or no value\n", cmd, path, lineno, name);
                rc = -1;
            } else if (strcmp(value, "false") != 0) {
                strbuf b = {0};
                strbuf_printf(&b, "--%s", name);
                add_owned(a, b.s);
            }
        } else if (!*value) {
            fprintf(stderr, "%s: %s:%d: %s needs a value\n", cmd, path, lineno, name);
            rc = -1;
        } else {
            strbuf b = {0};
            strbuf_printf(&b, "--%s=%s", name, value);
            add_owned(a, b.s);
        }
    }
    fclose(f);
    return rc;
}

int cli_config_expand(const char *cmd, const struct option *opts, int argc, char **argv, cli_args *out) {
    *out = (cli_args){0};
    const char *path = NULL;
    int at = -1, span = 0;
    for (int i = 1; i < argc && !path; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strncmp(argv[i], "--config=", 9)) path = argv[i] + 9, at = i, span = 1;
        else if (!strcmp(argv[i], "--config") && i + 1 < argc) path = argv[i + 1], at = i, span = 2;
    }
    if (path && read_config(cmd, opts, path, out) != 0) {
        cli_args_free(out);
        return -1;
    }
    out->argv = dc_xrealloc(NULL, (size_t)(argc + out->n_owned + 1) * sizeof *out->argv);
    out->argv[out->argc++] = argv[0];
    for (int i = 0; i < out->n_owned; i++) out->argv[out->argc++] = out->owned[i];
    for (int i = 1; i < argc; i++)
        if (i < at || i >= at + span) out->argv[out->argc++] = argv[i];
    out->argv[out->argc] = NULL;
    return 0;
}

void cli_args_free(cli_args *a) {
    for (int i = 0; i < a->n_owned; i++) free(a->owned[i]);
    free(a->owned);
    free(a->argv);
    *a = (cli_args){0};
}
