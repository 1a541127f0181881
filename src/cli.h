/* cli.h - what the two server commands (`serve`, `llm-serve`) share on
 * their command lines: the engine's options and --log-level, as rows of an
 * option table (util/opts.h), and the stop-signal setup. */
#ifndef DC_CLI_H
#define DC_CLI_H

#include <signal.h>

#include "llm/llm.h"
#include "util/opts.h"

/* The engine's options, writing into *lp (which holds the defaults that
 * --help shows), and --log-level (applied as it is read). The table lives
 * in static storage: one command per process. */
const opt *cli_engine_opts(llm_params *lp);

/* Blocks SIGINT and SIGTERM in this thread (call before any thread starts,
 * so every thread inherits the mask and only the command's own wait, a
 * sigwait or sigtimedwait on *stop, receives them) and ignores SIGPIPE (a
 * client that hangs up must not kill the server). */
void cli_block_stop(sigset_t *stop);

#endif
