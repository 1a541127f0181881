/* chat.c - `discedge chat --node URL`: a terminal chat. The client keeps only
 * the session id and the turn counter; the node keeps the conversation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "client.h"
#include "../util/opts.h"

int chat_main(int argc, char **argv) {
    static const char *const modes[] = {"tokenized", "raw", "client-side", NULL};
    static const char intro[] = "usage: discedge chat --node URL [options]\n"
                                "Type a message and press Enter; /node URL switches node mid-conversation;\n"
                                "/quit or EOF ends.\n\n";
    const char *node = NULL, *mode = "tokenized", *user = NULL;
    int n_predict = 0;
    double temperature = -1;
    const opt rows[] = {
        {"node", OPT_STRING, "URL", "the node to talk to (required)", .to = &node},
        {"mode", OPT_ENUM, "MODE", "tokenized|raw|client-side", .to = &mode, .choices = modes},
        {"user-id", OPT_STRING, "ID", "the user to chat as", .to = &user, .dflt = "a new one"},
        {"n-predict", OPT_INT, "N", "reply length cap", OPT_TO(n_predict), .min = 0, .max = 1 << 20,
         .dflt = "the node's"},
        {"temperature", OPT_REAL, "T", "sampling temperature", .to = &temperature, .rmin = 0, .rmax = 100,
         .dflt = "the node's"},
        {0},
    };
    const opt *tables[] = {rows, NULL};
    opts_result args;
    int rc = opts_parse("chat", tables, argc, argv, 0, intro, &args);
    if (rc == 0 && !node) {
        fprintf(stderr, "chat: --node URL is required\n");
        rc = 2;
    }
    if (rc != 0) {
        opts_free(&args);
        return rc == 1 ? 0 : 2;
    }
    char *url = strdup(node);
    client_session s;
    client_session_init(&s, mode, user);
    s.n_predict = n_predict;
    s.temperature = temperature;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (;;) {
        printf("you> ");
        fflush(stdout);
        if ((n = getline(&line, &cap, stdin)) < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if (!strcmp(line, "/quit")) break;
        if (!strncmp(line, "/node ", 6)) {
            free(url);
            url = strdup(line + 6);
            printf("(now talking to %s)\n", url);
            continue;
        }
        client_turn t;
        if (client_session_send(&s, url, line, &t) == 0) {
            printf("bot> %s\n", t.content.s);
            printf("     [turn %u, node %s, %.0f ms, %d context tokens]\n", s.turn, t.node, t.http.ms,
                   t.context_tokens);
        } else {
            printf("error> %s\n", t.http.status ? t.http.body.s : t.http.error);
        }
        client_turn_free(&t);
    }
    if (s.session_id[0]) printf("\nsession %s (user %s), %u turns\n", s.session_id, s.user_id, s.turn);
    free(line);
    free(url);
    client_session_free(&s);
    opts_free(&args); /* the strings the options point at (a --config file's) */
    return 0;
}
