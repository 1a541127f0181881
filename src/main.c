/* main.c - the discedge command: serve (an edge node), llm-serve, chat, scenario, keygen, sysinfo. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "client/chat.h"
#include "client/scenario.h"
#include "llm/llm.h"
#include "llm_serve.h"
#include "serve.h"
#include "store/seal.h"

/* discedge keygen FILE: a new deployment key for serve --store-key. */
static int keygen_main(int argc, char **argv) {
    bool help = argc == 2 && !strcmp(argv[1], "--help");
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(help ? stdout : stderr,
                "usage: discedge keygen FILE\n"
                "Writes a new random 32-byte key, as hex, to FILE (mode 0600; an existing\n"
                "FILE is never overwritten). Give the same FILE to every node of a deployment\n"
                "with --store-key: they then seal every stored record with it.\n");
        return help ? 0 : 2;
    }
    char err[256];
    if (seal_keygen(argv[1], err, sizeof err) != 0) {
        fprintf(stderr, "keygen: %s\n", err);
        return 1;
    }
    return 0;
}

/* discedge sysinfo: what llama.cpp computes on here. llama.cpp's numerics
 * differ between CPU variants, so CI prints this before the suite. */
static int sysinfo_main(int argc, char **argv) {
    if (argc != 1) {
        bool help = argc == 2 && !strcmp(argv[1], "--help");
        fprintf(help ? stdout : stderr,
                "usage: discedge sysinfo\n"
                "Prints the CPU, its cores, and the ggml CPU backend variant a node loads here\n"
                "with the instruction sets it was built for.\n");
        return help ? 0 : 2;
    }
    char backend[512], cpu[256];
    int rc = llm_cpu_backend(NULL, backend, sizeof backend);
    llm_cpu_name(cpu, sizeof cpu);
    printf("cpu: %s, %d physical cores, %ld online CPUs\n", cpu, llm_physical_cores(), sysconf(_SC_NPROCESSORS_ONLN));
    printf("ggml cpu backend: %s\n", backend);
    return rc ? 1 : 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: discedge <command> [options]   (discedge <command> --help for more)\n"
            "\n"
            "  serve     run an edge node: HTTP API, context manager, LLM, store\n"
            "  llm-serve run only the LLM engine, for nodes started with --llm URL\n"
            "  chat      chat with a node from the terminal\n"
            "  scenario  run a scenario file against one or more nodes\n"
            "  keygen    write a new key for serve --store-key\n"
            "  sysinfo   the CPU and the ggml CPU backend variant a node loads here\n");
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
    if (!strcmp(cmd, "keygen")) return keygen_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "sysinfo")) return sysinfo_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "discedge: unknown command %s\n", cmd);
    usage(stderr);
    return 2;
}
