/* main.c - the discedge command: serve (an edge node), chat, scenario. */
#include <stdio.h>
#include <string.h>

#include "client/chat.h"
#include "client/scenario.h"
#include "llm_serve.h"
#include "serve.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: discedge <command> [options]   (discedge <command> --help for more)\n"
            "\n"
            "  serve     run an edge node: HTTP API, context manager, LLM, store\n"
            "  llm-serve run only the LLM engine, for nodes started with --llm URL\n"
            "  chat      chat with a node from the terminal\n"
            "  scenario  run a scenario file against one or more nodes\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) return serve_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "llm-serve")) return llm_serve_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat")) return chat_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "scenario")) return scenario_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "discedge: unknown command %s\n", cmd);
    usage(stderr);
    return 2;
}
