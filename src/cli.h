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

/* A command line with a configuration file's settings in it. */
typedef struct {
    int argc;
    char **argv;
    char **owned; /* the strings made from the file */
    int n_owned;
} cli_args;

/* With --config FILE (or --config=FILE) in argv: out gets argv[0], then the
 * file's settings as long options, then the rest of argv, so that the
 * command line wins over the file. The file has one setting per line,
 * "name = value" or "name value" (or a flag's bare name), named as the long
 * options in opts are; '#' starts a comment. Without --config, out is argv
 * as it is. Returns 0, or -1 after printing what is wrong. */
int cli_config_expand(const char *cmd, const struct option *opts, int argc, char **argv, cli_args *out);
void cli_args_free(cli_args *a);

/* Blocks SIGINT and SIGTERM in this thread (call before any thread starts,
 * so every thread inherits the mask and cli_wait_stop alone receives them)
 * and ignores SIGPIPE (a client that hangs up must not kill the server). */
void cli_block_stop(sigset_t *stop);

#endif
