/* llm_serve.c - `discedge llm-serve`: this machine's LLM engine over HTTP,
 * with the llama-server subset that `discedge serve --llm URL` drives (see
 * api/llm_server.h). Typically a GPU box serving several context managers;
 * the KV cache of their sessions stays here, only token ids travel. */
#include "llm_serve.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/llm_server.h"
#include "llm/llm.h"
#include "util/log.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: discedge llm-serve --model PATH [options]\n"
            "\n"
            "Serves a GGUF model with llama-server's /completion (token-array prompts,\n"
            "cache_prompt), /tokenize, /detokenize, /apply-template and /props, for\n"
            "`discedge serve --llm http://HOST:PORT` on other machines.\n"
            "\n"
            "  --model PATH          GGUF model (required)\n"
            "  --host ADDR           IPv4 address to listen on (default 127.0.0.1)\n"
            "  --port N              TCP port (default 8090; 0 picks a free one and prints it)\n"
            "  --ctx-size N          tokens per conversation (default: model's, at most 4096)\n"
            "  --threads N           inference threads (default: physical cores)\n"
            "  --parallel N          requests generating at once (default 4)\n"
            "  --queue N             requests waiting beyond those; more get 429 (default 16)\n"
            "  --kv-cache-sessions N conversations whose KV cache is kept (default 8; 0: none)\n"
            "  --kv-spill-dir DIR    keep the KV of conversations pushed out of memory here,\n"
            "                        restored when they return (default: off)\n"
            "  --kv-spill-mib N      disk budget for those (default 1024)\n"
            "  --n-predict N         reply cap when a request gives none (default 128)\n"
            "  --backend-dir DIR     folder with libggml-cpu-*.so (default: the build's)\n"
            "  --log-level LEVEL     debug|info|warn|error (default info)\n");
}

int llm_serve_main(int argc, char **argv) {
    enum { O_PARALLEL = 256, O_QUEUE, O_KVSESS, O_NPRED, O_BACKEND, O_LOG, O_SPILL_DIR, O_SPILL_MIB };
    static struct option opts[] = {{"model", required_argument, 0, 'm'},
                                   {"host", required_argument, 0, 'H'},
                                   {"port", required_argument, 0, 'p'},
                                   {"ctx-size", required_argument, 0, 'c'},
                                   {"threads", required_argument, 0, 't'},
                                   {"parallel", required_argument, 0, O_PARALLEL},
                                   {"queue", required_argument, 0, O_QUEUE},
                                   {"kv-cache-sessions", required_argument, 0, O_KVSESS},
                                   {"n-predict", required_argument, 0, O_NPRED},
                                   {"kv-spill-dir", required_argument, 0, O_SPILL_DIR},
                                   {"kv-spill-mib", required_argument, 0, O_SPILL_MIB},
                                   {"backend-dir", required_argument, 0, O_BACKEND},
                                   {"log-level", required_argument, 0, O_LOG},
                                   {"help", no_argument, 0, 'h'},
                                   {0, 0, 0, 0}};
    llm_params lp = llm_default_params();
    lp.spill_mib = 1024;
    llm_server_params sp = llm_server_default_params();
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': lp.model_path = sp.model_path = optarg; break;
        case 'H': sp.host = optarg; break;
        case 'p': sp.port = atoi(optarg); break;
        case 'c': lp.n_ctx = atoi(optarg); break;
        case 't': lp.n_threads = atoi(optarg); break;
        case O_PARALLEL: lp.n_parallel = atoi(optarg); break;
        case O_QUEUE: lp.n_queue = atoi(optarg); break;
        case O_KVSESS: lp.kv_sessions = atoi(optarg); break;
        case O_NPRED: sp.default_n_predict = atoi(optarg); break;
        case O_SPILL_DIR: lp.spill_dir = optarg; break;
        case O_SPILL_MIB: lp.spill_mib = (size_t)atol(optarg); break;
        case O_BACKEND: lp.backend_dir = optarg; break;
        case O_LOG:
            if (log_level_parse(optarg) < 0) {
                fprintf(stderr, "llm-serve: unknown --log-level %s\n", optarg);
                return 2;
            }
            log_set_level(log_level_parse(optarg));
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || !lp.model_path) {
        usage(stderr);
        return 2;
    }
    if (sp.port < 0 || sp.port > 65535 || lp.n_ctx < 0 || lp.n_threads < 0 || lp.n_parallel < 1 ||
        lp.n_parallel > 64 || lp.n_queue < 0 || lp.kv_sessions < 0 || lp.kv_sessions > 256 || sp.default_n_predict < 1) {
        fprintf(stderr, "llm-serve: a numeric option is out of range (see --help)\n");
        return 2;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[256];
    llm *m = llm_load(&lp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "llm-serve: %s\n", err);
        return 1;
    }
    llm_server *srv = llm_server_start(&sp, m, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "llm-serve: %s\n", err);
        llm_free(m);
        return 1;
    }
    printf("discedge: llm-serve listening on http://%s:%d (model %s, ctx %d, threads %d)\n", sp.host,
           llm_server_port(srv), llm_model_name(m), llm_n_ctx(m), llm_n_threads(m));
    fflush(stdout);
    int sig;
    sigwait(&stop, &sig);
    log_info("stopping");
    llm_server_stop(srv);
    llm_free(m);
    return 0;
}
