/* llm_serve.c - `discedge llm-serve`: this machine's LLM engine over HTTP,
 * with the llama-server subset that `discedge serve --llm URL` drives (see
 * api/llm_server.h). Typically a GPU box serving several context managers;
 * the KV cache of their sessions stays here, only token ids travel. */
#include "llm_serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/llm_server.h"
#include "cli.h"
#include "llm/llm.h"
#include "util/log.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: discedge llm-serve --model PATH [options]\n"
            "\n"
            "Serves a GGUF model with llama-server's /completion (token-array prompts,\n"
            "cache_prompt), /tokenize, /detokenize, /apply-template and /props, and\n"
            "/render (messages to token ids in one call), for\n"
            "`discedge serve --llm http://HOST:PORT` on other machines.\n"
            "\n"
            "  --model PATH          GGUF model (required)\n"
            "  --host ADDR           IPv4 address to listen on (default 127.0.0.1)\n"
            "  --port N              TCP port (default 8090; 0 picks a free one and prints it)\n"
            "  --n-predict N         reply cap when a request gives none (default 128)\n"
            "\n");
    cli_engine_usage(f);
}

int llm_serve_main(int argc, char **argv) {
    enum { O_NPRED = 256 };
    static const struct option own[] = {{"model", required_argument, 0, 'm'},
                                        {"host", required_argument, 0, 'H'},
                                        {"port", required_argument, 0, 'p'},
                                        {"n-predict", required_argument, 0, O_NPRED},
                                        {"help", no_argument, 0, 'h'},
                                        {0, 0, 0, 0}};
    llm_params lp = llm_default_params();
    llm_server_params sp = llm_server_default_params();
    struct option *opts = cli_options(own);
    int c, bad = 0;
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c >= CLI_ENGINE_FIRST) {
            bad = cli_engine_option("llm-serve", c, optarg, &lp);
            continue;
        }
        switch (c) {
        case 'm': lp.model_path = sp.model_path = optarg; break;
        case 'H': sp.host = optarg; break;
        case 'p': sp.port = atoi(optarg); break;
        case O_NPRED: sp.default_n_predict = atoi(optarg); break;
        case 'h': usage(stdout); free(opts); return 0;
        default: bad = 1; break;
        }
    }
    free(opts);
    if (bad || optind != argc || !lp.model_path) {
        usage(stderr);
        return 2;
    }
    if (sp.port < 0 || sp.port > 65535 || sp.default_n_predict < 1) {
        fprintf(stderr, "llm-serve: a numeric option is out of range (see --help)\n");
        return 2;
    }
    sigset_t stop;
    cli_block_stop(&stop);

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
    log_info("compute: %s", llm_backend(m));
    int sig;
    sigwait(&stop, &sig);
    log_info("stopping");
    llm_server_stop(srv);
    llm_free(m);
    return 0;
}
