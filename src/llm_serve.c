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

static int run(const llm_params *lp, const llm_server_params *sp);

static const char intro[] = "usage: discedge llm-serve --model PATH [options]\n"
                            "\n"
                            "Serves a GGUF model with llama-server's /completion (token-array prompts,\n"
                            "cache_prompt), /tokenize, /detokenize, /apply-template and /props, and\n"
                            "/render (messages to token ids in one call), for\n"
                            "`discedge serve --llm http://HOST:PORT` on other machines.\n"
                            "\n"
                            "  --config FILE         read settings from FILE: one \"name = value\" per line,\n"
                            "                        named as the long options here; options on the\n"
                            "                        command line win over the file\n";

int llm_serve_main(int argc, char **argv) {
    llm_params lp = llm_default_params();
    llm_server_params sp = llm_server_default_params();
    const opt own[] = {
        {"model", OPT_PATH, "PATH", "GGUF model (required)", .to = &lp.model_path},
        {"host", OPT_STRING, "ADDR", "IPv4 address to listen on", .to = &sp.host},
        {"port", OPT_INT, "N", "TCP port (0 picks a free one and prints it)", OPT_TO(sp.port), .min = 0, .max = 65535},
        {"n-predict", OPT_INT, "N", "reply cap when a request gives none", OPT_TO(sp.default_n_predict), .min = 1,
         .max = 1 << 20},
        {0},
    };
    const opt *tables[] = {own, cli_engine_opts(&lp), NULL};
    opts_result args;
    int rc = opts_parse("llm-serve", tables, argc, argv, 0, intro, &args);
    if (rc == 0 && !lp.model_path) {
        fprintf(stderr, "llm-serve: --model PATH is required (see --help)\n");
        rc = 2;
    }
    if (rc != 0) {
        opts_free(&args);
        return rc == 1 ? 0 : 2;
    }
    sp.model_path = lp.model_path;
    rc = run(&lp, &sp);
    opts_free(&args); /* the strings the options point at (the file's settings) */
    return rc;
}

static int run(const llm_params *lp, const llm_server_params *sp) {
    sigset_t stop;
    cli_block_stop(&stop);

    char err[256];
    llm *m = llm_load(lp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "llm-serve: %s\n", err);
        return 1;
    }
    llm_server *srv = llm_server_start(sp, m, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "llm-serve: %s\n", err);
        llm_free(m);
        return 1;
    }
    printf("discedge: llm-serve listening on http://%s:%d (model %s, ctx %d, threads %d)\n", sp->host,
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
