/* cli.h - what the two server commands (`serve`, `llm-serve`) share on
 * their command lines: the engine's options and --log-level, parsed in one
 * place, and the stop-signal setup. */
#ifndef DC_CLI_H
#define DC_CLI_H

#include <getopt.h>
#include <signal.h>
#include <stdio.h>

#include "llm/llm.h"

/* Option codes from CLI_ENGINE_FIRST up belong to the engine; a command's
 * own long options use codes below it. */
#define CLI_ENGINE_FIRST 1000

/* The command's options followed by the engine's, for getopt_long; free() it. */
struct option *cli_options(const struct option *own);

/* Applies an engine option (code from cli_options) to lp. Returns 0, or -1
 * after printing why the value is wrong. */
int cli_engine_option(const char *cmd, int code, const char *arg, llm_params *lp);

/* The engine options' lines for --help. */
void cli_engine_usage(FILE *f);

/* Blocks SIGINT and SIGTERM in this thread (call before any thread starts,
 * so every thread inherits the mask and cli_wait_stop alone receives them)
 * and ignores SIGPIPE (a client that hangs up must not kill the server). */
void cli_block_stop(sigset_t *stop);

#endif
