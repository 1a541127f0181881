/* chat.c - `discedge chat --node URL`: a terminal chat. The client keeps only
 * the session id and the turn counter; the node keeps the conversation. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "client.h"

int chat_main(int argc, char **argv) {
    static struct option opts[] = {{"node", required_argument, 0, 'n'}, {"mode", required_argument, 0, 'm'},
                                   {"user-id", required_argument, 0, 'u'}, {"n-predict", required_argument, 0, 'p'},
                                   {"temperature", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},      {0, 0, 0, 0}};
    const char *node = NULL, *mode = "tokenized", *user = NULL;
    int n_predict = 0, c;
    double temperature = -1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': node = optarg; break;
        case 'm': mode = optarg; break;
        case 'u': user = optarg; break;
        case 'p': n_predict = atoi(optarg); break;
        case 't': temperature = atof(optarg); break;
        case 'h':
        default:
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: discedge chat --node URL [--mode tokenized|raw|client-side] [--user-id ID] [--n-predict N]\n"
                    "                     [--temperature T]\n"
                    "Type a message and press Enter; /node URL switches node mid-conversation; /quit or EOF ends.\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (!node) {
        fprintf(stderr, "chat: --node URL is required\n");
        return 2;
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
            printf("     [turn %u, node %s, %.0f ms, %d context tokens]\n", s.turn, t.node, t.http.ms, t.context_tokens);
        } else {
            printf("error> %s\n", t.http.status ? t.http.body.s : t.http.error);
        }
        client_turn_free(&t);
    }
    if (s.session_id[0]) printf("\nsession %s (user %s), %u turns\n", s.session_id, s.user_id, s.turn);
    free(line);
    free(url);
    client_session_free(&s);
    return 0;
}
