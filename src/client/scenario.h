/* scenario.h - scenario files: a scripted conversation, optionally roaming.
 *
 *   name: "..."
 *   user_id: "..."                 optional
 *   messages: ["...", ...]         a conversation on the default node
 * or
 *   locations:                     the client moves: each block runs on a node
 *     - node: "edge-1"
 *       messages: ["...", ...]
 *
 * Node names are logical; the runner maps them to URLs (--node NAME=URL). */
#ifndef DC_SCENARIO_H
#define DC_SCENARIO_H

#include <stddef.h>

typedef struct {
    char *node;     /* NULL: the first --node given */
    char *message;
} scenario_turn;

typedef struct {
    char *name;
    char *user_id;
    scenario_turn *turns;
    size_t n_turns;
} scenario;

/* Parses a scenario file. Returns 0, or -1 with a reason in err. */
int scenario_load(const char *path, scenario *out, char *err, size_t errlen);
int scenario_parse(const char *text, size_t len, scenario *out, char *err, size_t errlen);
void scenario_free(scenario *s);

/* `discedge scenario` */
int scenario_main(int argc, char **argv);

#endif
