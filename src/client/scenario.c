/* scenario.c - `discedge scenario FILE --node NAME=URL ...`: runs a scenario
 * file turn by turn, moving between nodes where it says so, and prints a
 * per-turn table (and CSV with --csv). The benchmark is built on this. */
#include "scenario.h"

#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "../util/opts.h"

typedef struct {
    char name[32];
    const char *url;
} node_map;

static const char intro[] = "usage: discedge scenario FILE.yaml --node NAME=URL [--node NAME=URL ...]\n"
                            "                         [options]\n"
                            "Runs the scenario's turns in order; a `locations` list switches node.\n"
                            "The first --node is the default for scenarios without locations;\n"
                            "--node URL alone names it after its position (node1, node2, ...).\n"
                            "\n";

typedef struct {
    node_map v[16];
    int n;
} nodes_seen;

/* --node NAME=URL or --node URL, up to 16 of them. */
static int add_node(void *ud, const char *arg, char *why, size_t whylen) {
    nodes_seen *ns = ud;
    if (ns->n == 16) return snprintf(why, whylen, "at most 16 nodes"), -1;
    node_map *nm = &ns->v[ns->n];
    const char *eq = strchr(arg, '=');
    /* a bare URL ("http://...") has its '=' nowhere before "://" */
    if (eq && (!strstr(arg, "://") || eq < strstr(arg, "://"))) {
        snprintf(nm->name, sizeof nm->name, "%.*s", (int)(eq - arg), arg);
        nm->url = eq + 1;
    } else {
        snprintf(nm->name, sizeof nm->name, "node%d", ns->n + 1);
        nm->url = arg;
    }
    ns->n++;
    return 0;
}

static const char *lookup(node_map *nodes, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(nodes[i].name, name)) return nodes[i].url;
    return NULL;
}

/* One line of the reply for the table: newlines flattened, cut at width. */
static void preview(const char *s, char *out, size_t width) {
    size_t k = 0;
    while (*s == ' ' || *s == '\n') s++;
    for (; *s && k + 1 < width; s++) out[k++] = (*s == '\n' || *s == '\t' || *s == '\r') ? ' ' : *s;
    /* cut before a character, not inside one: drop a partial UTF-8 sequence */
    if (((unsigned char)*s & 0xC0) == 0x80) {
        while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80) k--;
        if (k > 0) k--; /* its lead byte */
    }
    out[k] = '\0';
}

static void csv_field(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int scenario_main(int argc, char **argv) {
    static const char *const modes[] = {"tokenized", "raw", "client-side", NULL};
    nodes_seen ns = {.n = 0};
    bool quiet = false, no_cache = false, ignore_eos = false, hint = false;
    long think_ms = 0;
    const char *mode = "tokenized", *csv_path = NULL, *user = NULL, *after_turn = NULL;
    client_session sess;
    long max_turns = -1;
    int n_predict = 0;
    double temperature = -1;
    long seed = -1;
    const opt rows[] = {
        {"node", OPT_CALL, "NAME=URL", "a node the scenario's turns go to (repeatable)", .to = &ns, .call = add_node},
        {"mode", OPT_ENUM, "MODE", "tokenized|raw|client-side", .to = &mode, .choices = modes},
        {"csv", OPT_PATH, "FILE", "also write a per-turn CSV to FILE", .to = &csv_path},
        {"n-predict", OPT_INT, "N", "reply length cap per turn", OPT_TO(n_predict), .min = 0, .max = 1 << 20,
         .dflt = "the node's"},
        {"temperature", OPT_REAL, "T", "sampling temperature", .to = &temperature, .rmin = 0, .rmax = 100,
         .dflt = "the node's"},
        {"seed", OPT_INT, "S", "sampling seed", OPT_TO(seed), .min = 0, .max = UINT32_MAX, .dflt = "the node's"},
        {"user-id", OPT_STRING, "ID", "the user the turns are sent as", .to = &user, .dflt = "the scenario's"},
        {"quiet", OPT_FLAG, NULL, "print no table", .to = &quiet},
        {"no-cache", OPT_FLAG, NULL, "ask the node not to reuse KV (cache_prompt false)", .to = &no_cache},
        {"ignore-eos", OPT_FLAG, NULL, "generate exactly --n-predict tokens per turn", .to = &ignore_eos},
        {"turns", OPT_INT, "N", "stop after N turns", OPT_TO(max_turns), .min = 0, .max = INT32_MAX, .dflt = "all"},
        {"after-turn", OPT_STRING, "CMD",
         "run CMD through the shell after every turn, with DC_TURN set to its number, before the next one starts "
         "(the testbed samples its link counters this way)",
         .to = &after_turn},
        {"think-ms", OPT_DURATION, "MS", "pause that long between turns (a user reading and typing)", OPT_TO(think_ms),
         .min = 0, .max = 3600000, .unit = 1},
        {"hint", OPT_FLAG, NULL,
         "after the last turn before each move, tell the next node to prepare (POST /v1/sessions/{id}/warm) "
         "before the turn goes there",
         .to = &hint},
        {0},
    };
    const opt *tables[] = {rows, NULL};
    opts_result args;
    int prc = opts_parse("scenario", tables, argc, argv, 1, intro, &args);
    if (prc != 0) {
        opts_free(&args);
        return prc == 1 ? 0 : 2;
    }
    node_map *nodes = ns.v;
    int n_nodes = ns.n;
    scenario sc = {0};
    char err[256];
    int rc = 0;
    FILE *csv = NULL;
    if (args.n_args != 1 || n_nodes == 0) {
        fprintf(stderr, "scenario: a FILE.yaml and at least one --node are required (see --help)\n");
        rc = 2;
    } else if (scenario_load(args.args[0], &sc, err, sizeof err) != 0) {
        fprintf(stderr, "scenario: %s\n", err);
        rc = 2;
    } else if (max_turns == 0) {
        fprintf(stderr, "scenario: --turns must be at least 1\n");
        rc = 2;
    }
    size_t n_run = max_turns > 0 && (size_t)max_turns < sc.n_turns ? (size_t)max_turns : sc.n_turns;
    for (size_t i = 0; i < sc.n_turns; i++)
        if (sc.turns[i].node && !lookup(nodes, n_nodes, sc.turns[i].node)) {
            fprintf(stderr, "scenario: turn %zu runs on node %s; map it with --node %s=URL\n", i + 1, sc.turns[i].node,
                    sc.turns[i].node);
            rc = 2;
        }
    if (!rc && csv_path && !(csv = fopen(csv_path, "w"))) {
        fprintf(stderr, "scenario: cannot write %s\n", csv_path);
        rc = 2;
    }
    if (rc) goto out;
    if (csv)
        fprintf(
            csv,
            "turn,node,mode,status,latency_ms,request_bytes,context_tokens,tokens_predicted,tokenize_ms,"
            "prompt_ms,predicted_ms,store_read_ms,store_commit_ms,wait_ms,answered_by,store_read_core_trips,reply\n");

    client_session_init(&sess, mode, user ? user : sc.user_id);
    sess.n_predict = n_predict;
    sess.temperature = temperature;
    sess.seed = seed;
    sess.no_cache = no_cache;
    sess.ignore_eos = ignore_eos;
    if (!quiet) {
        printf("%s (%s mode, %zu turns)\n", sc.name, mode, n_run);
        printf("%4s  %-10s %-10s %6s %10s %8s %9s %8s  %s\n", "turn", "node", "answered", "status", "latency_ms",
               "wait_ms", "req_bytes", "ctx_tok", "reply");
    }
    for (size_t i = 0; i < n_run; i++) {
        const char *name = sc.turns[i].node ? sc.turns[i].node : nodes[0].name;
        const char *url = lookup(nodes, n_nodes, name);
        client_turn t;
        int ok = client_session_send(&sess, url, sc.turns[i].message, &t) == 0;
        char pv[61];
        preview(ok ? t.content.s : (t.http.status ? t.http.body.s : t.http.error), pv, sizeof pv);
        if (!quiet)
            printf("%4zu  %-10s %-10s %6ld %10.1f %8.1f %9ld %8d  %s\n", i + 1, name, t.node[0] ? t.node : "-",
                   t.http.status, t.http.ms, t.wait_ms, t.http.request_bytes, t.context_tokens, pv);
        if (csv) {
            fprintf(csv, "%zu,%s,%s,%ld,%.3f,%ld,%d,%d,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%d,", i + 1, name, mode,
                    t.http.status, t.http.ms, t.http.request_bytes, t.context_tokens, t.tokens_predicted, t.tokenize_ms,
                    t.prompt_ms, t.predicted_ms, t.store_read_ms, t.store_commit_ms, t.wait_ms,
                    t.node[0] ? t.node : "-", t.store_read_core_trips);
            csv_field(csv, ok ? t.content.s : t.http.body.s ? t.http.body.s : t.http.error);
            fputc('\n', csv);
        }
        fflush(stdout);
        if (csv) fflush(csv);
        client_turn_free(&t);
        if (!ok) {
            fprintf(stderr, "scenario: turn %zu failed on %s\n", i + 1, name);
            rc = 1;
            break;
        }
        const char *next = i + 1 < n_run ? (sc.turns[i + 1].node ? sc.turns[i + 1].node : nodes[0].name) : NULL;
        if (hint && next && strcmp(next, name) != 0) {
            /* the client knows it moves: the next node prepares meanwhile */
            char path[256];
            snprintf(path, sizeof path, "/v1/sessions/%s/warm?user_id=%s", sess.session_id, sess.user_id);
            client_response hr = {0};
            if (client_post_json(lookup(nodes, n_nodes, next), path, "{}", &hr) != 0 || hr.status != 202)
                fprintf(stderr, "scenario: the hint to %s after turn %zu got %ld %s\n", next, i + 1, hr.status,
                        hr.status ? "" : hr.error);
            client_response_free(&hr);
        }
        if (think_ms > 0 && i + 1 < n_run) {
            struct timespec ts = {think_ms / 1000, (think_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (after_turn) {
            char num[24];
            snprintf(num, sizeof num, "%zu", i + 1);
            setenv("DC_TURN", num, 1);
            int st = system(after_turn);
            if (st != 0) {
                fprintf(stderr, "scenario: --after-turn command failed (status %d) after turn %zu\n", st, i + 1);
                rc = 1;
                break;
            }
        }
    }
    if (!quiet && !rc)
        printf("session %s, user %s: %u turns\n", sess.session_id[0] ? sess.session_id : "-", sess.user_id, sess.turn);
    client_session_free(&sess);
out:
    if (csv) fclose(csv);
    scenario_free(&sc);
    opts_free(&args);
    return rc;
}
