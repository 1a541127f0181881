/* serve.c - `discedge serve`: one edge node. Loads the model, opens the
 * store, starts the HTTP API, then waits for SIGINT/SIGTERM, sweeping
 * expired sessions once a minute meanwhile and reloading the API keys on
 * SIGHUP. */
#include "serve.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/peer.h"
#include "api/server.h"
#include "cli.h"
#include "ctx/ctx.h"
#include "llm/llm.h"
#include "store/seal.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/log.h"

/* The model's keygroup: its sessions live in their own stream, which nodes
 * serving other models never join. Named by the model (readable in NATS
 * tooling) and a hash of its name and tokenizer fingerprint (two models that
 * share a tokenizer still get separate keygroups). */
static void keygroup_of(const llm *m, char *out, size_t n) {
    const char *name = llm_model_name(m);
    uint64_t fp = llm_fingerprint(m);
    unsigned char le[8]; /* the fingerprint's bytes, least significant first, on any machine */
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(fp >> (8 * i));
    uint64_t h = hash_fnv1a(hash_fnv1a(HASH_FNV_BASIS, name, strlen(name)), le, sizeof le);
    char clean[33];
    size_t k = 0;
    for (const char *p = name; *p && k < sizeof clean - 1; p++)
        clean[k++] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')) ? *p : '_';
    clean[k] = '\0';
    snprintf(out, n, "%s_%016llx", clean, (unsigned long long)h);
}

static int serve_run(llm_params *lpp, store_params *spp, ctx_params *cpp, api_params *app, peer_params *ppp,
                     const char *keys_path, const char *store_key);

static const char intro[] = "usage: discedge serve (--model PATH | --llm URL) [options]\n"
                            "       discedge serve --config FILE [options]\n"
                            "\n"
                            "Runs one DisCEdge edge node. Clients talk to it over HTTP and their\n"
                            "conversations are kept on the server, as tokens, in a store that every node\n"
                            "of a deployment shares; a client can move to another node mid-conversation.\n"
                            "\n"
                            "Start one on this machine and chat with it:\n"
                            "  discedge serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8080\n"
                            "  then open http://127.0.0.1:8080/ in a browser, or use any OpenAI SDK with\n"
                            "  base_url http://127.0.0.1:8080/v1 (README.md has curl examples).\n"
                            "\n"
                            "Endpoints: POST /v1/chat/completions, POST /v1/responses, GET /v1/models\n"
                            "(OpenAI's), POST /completion (llama.cpp's), GET|DELETE /v1/sessions/{id},\n"
                            "POST /v1/sessions/{id}/warm (the handover hint),\n"
                            "GET /health, GET /metrics (Prometheus), GET / (a chat page).\n"
                            "\n"
                            "A SECS or MS option takes a plain number in that unit, or a duration with\n"
                            "its unit (500ms, 30s, 10m, 1h, 1d); a BYTES option, a plain number of bytes\n"
                            "or a size with its unit (512K, 64MiB, 2G; 1K = 1024). A bad value stops the\n"
                            "command with status 2 and says which option and what it accepts.\n"
                            "\n"
                            "  --config FILE         read settings from FILE: one \"name = value\" per line,\n"
                            "                        named as the long options here (deploy/discedge.conf);\n"
                            "                        options on the command line win over the file\n";

int serve_main(int argc, char **argv) {
    static const char *const http_urls[] = {"http://", "https://", NULL};
    static const char *const nats_urls[] = {"nats://", "tls://", NULL};
    llm_params lp = llm_default_params();
    store_params sp = store_default_params();
    ctx_params cp = ctx_default_params();
    api_params ap = api_default_params();
    peer_params pp = peer_default_params();
    char host[64] = "node";
    gethostname(host, sizeof host - 1);
    const char *node_id = host, *keys_path = NULL, *store_key = NULL;
    long long ttl_s = sp.ttl_ms / 1000;
    int warm_sessions = -1; /* not given: on (4) with a shared store, off without */
    const opt own[] = {
        {"model", OPT_PATH, "PATH", "GGUF model to serve in this process", .to = &lp.model_path},
        {"llm", OPT_URL, "URL",
         "or: use the LLM service at http://HOST:PORT instead, a `discedge llm-serve` or llama-server", .to = &lp.url,
         .choices = http_urls},
        {"host", OPT_STRING, "ADDR", "IPv4 address to listen on", .to = &ap.host},
        {"port", OPT_INT, "N", "TCP port (0 picks a free one and prints it)", OPT_TO(ap.port), .min = 0, .max = 65535},
        {"node-id", OPT_STRING, "NAME", "this node's name in responses", .to = &node_id, .dflt = "hostname"},
        {"data-dir", OPT_PATH, "DIR", "embedded store folder", .to = &sp.data_dir},
        {"store", OPT_URL, "URL",
         "nats://HOST:PORT[,HOST:PORT...]: keep sessions in NATS JetStream, shared by every node on that store "
         "(tls://... for TLS; USER:PASSWORD@ before a host logs in as that NATS user: put it in a --config file, "
         "mode 600)",
         .to = &sp.url, .choices = nats_urls, .dflt = "the embedded store in --data-dir"},
        {"store-ca", OPT_PATH, "FILE",
         "require TLS to the NATS servers, their certificates signed by the CA in FILE (deploy/nats)",
         .to = &sp.tls_ca},
        {"store-core-domain", OPT_STRING, "D",
         "the core cluster's JetStream domain, when --store is this host's own leaf nats-server: reads then come "
         "from a local mirror of the model's stream (see docs/DEPLOY.md)",
         .to = &sp.core_domain},
        {"store-replicas", OPT_INT, "N",
         "replicas of the model's stream when this node creates it (3 on a 3-server core cluster)", OPT_TO(sp.replicas),
         .min = 1, .max = 5},
        {"session-ttl", OPT_DURATION, "SECS", "drop sessions idle this long", OPT_TO(ttl_s), .min = 0,
         .max = 100LL * 365 * 86400, .unit = 1000},
        {"n-predict", OPT_INT, "N", "default reply length cap", OPT_TO(ap.default_n_predict), .min = 1, .max = 1 << 20},
        {"sync-timeout", OPT_DURATION, "MS",
         "longest wait for a client's previous turn to replicate here before `strong` requests get 503",
         OPT_TO(cp.sync_timeout_ms), .min = 0, .max = 3600000, .unit = 1},
        {"stale-retries", OPT_INT, "N", "re-reads when the stored turn is behind", OPT_TO(cp.stale_retries), .min = 0,
         .max = 1000},
        {"stale-retry-ms", OPT_DURATION, "MS", "pause between re-reads", OPT_TO(cp.stale_retry_ms), .min = 0,
         .max = 60000, .unit = 1},
        {"max-body", OPT_SIZE, "BYTES", "request body limit", OPT_TO(ap.max_body), .min = 1, .max = 1LL << 32,
         .unit = 1},
        {"max-n-predict", OPT_INT, "N", "longest reply a request may ask for (at least --n-predict)",
         OPT_TO(ap.max_n_predict), .min = 1, .max = 1 << 20},
        {"max-streams-per-key", OPT_INT, "N",
         "generations at once per API key's user (without keys: per client address and user it names); more get "
         "429; 0: off",
         OPT_TO(ap.max_streams), .min = 0, .max = 1 << 20},
        {"max-sessions-per-user", OPT_INT, "N",
         "live sessions a user may create through this node (without keys: per client address and user it "
         "names); more get 429; 0: off",
         OPT_TO(cp.max_sessions_per_user), .min = 0, .max = INT32_MAX},
        {"max-session-tokens", OPT_INT, "N",
         "longest conversation a session may hold, in tokens (its context_tokens); a turn whose message and "
         "n_predict would pass it gets 400 session_full; 0: off",
         OPT_TO(cp.max_session_tokens), .min = 0, .max = INT32_MAX},
        {"max-connections", OPT_INT, "N", "open client connections, all clients together; more are closed at once",
         OPT_TO(ap.max_connections), .min = 1, .max = 65536},
        {"max-connections-per-address", OPT_INT, "N",
         "open connections from one client address (behind a proxy every client has the proxy's address)",
         OPT_TO(ap.max_per_address), .min = 1, .max = 65536},
        {"request-timeout", OPT_DURATION, "SECS",
         "silence allowed while a request's headers and body arrive, and between requests on a kept-alive "
         "connection; a generation is not bound by it",
         OPT_TO(ap.request_timeout_s), .min = 1, .max = 3600, .unit = 1000},
        {"warm-sessions", OPT_INT, "N",
         "warm handover: conversations served by other nodes whose KV this node prefills in the background, on idle "
         "engine "
         "time, so that their next turn here prefills only the new message; at most --parallel (they are "
         "prefilled into its streams); 0: off",
         OPT_TO(warm_sessions), .min = 0, .max = 256, .dflt = "4 with --store, 0 without"},
        {"warm-window", OPT_DURATION, "SECS",
         "warm only turns committed this recently; a warmed conversation unused this long is evicted first",
         OPT_TO(cp.warm.window_s), .min = 1, .max = 86400 * 365, .unit = 1000},
        {"warm-peers", OPT_STRING, "LIST",
         "warm only turns committed by these nodes, e.g. edge-1,edge-3 (neighbour cells)", .to = &cp.warm.peers,
         .dflt = "every node"},
        {"api-keys", OPT_PATH, "FILE",
         "require API keys: FILE has one \"KEY USER_ID\" per line; requests need \"Authorization: Bearer KEY\" "
         "and the key's user owns the sessions it creates (kill -HUP reloads it)",
         .to = &keys_path},
        {"store-key", OPT_PATH, "FILE",
         "encrypt and authenticate every stored record with the deployment key in FILE (`discedge keygen FILE`); "
         "every node sharing a store needs the same key",
         .to = &store_key},
        {"advertise-url", OPT_URL, "URL",
         "how other nodes reach this one (http://HOST:PORT, at most 200 bytes), recorded with every turn it "
         "commits, so that the node serving the session's next turn can fetch this node's KV of it; every node "
         "sharing the store must run a version that reads it",
         .to = &cp.advertise_url, .choices = http_urls},
        {"peer-key-file", OPT_PATH, "FILE",
         "the key nodes present to each other (one line, 16+ bytes, mode 600, the same on every node); turns on "
         "KV transfer: a turn whose session this node holds no KV of fetches it from the node that served the "
         "previous turn when that is predicted faster than prefilling (GET /v1/peer/kv/{id})",
         .to = &pp.key_file},
        {"peer-link-mbps", OPT_REAL, "N",
         "the throughput assumed for a link to a peer until one transfer has measured it", .to = &pp.link_mbps,
         .rmin = 0.001, .rmax = 1e6},
        {"log-content", OPT_FLAG, NULL,
         "also log each turn's prompt and reply (never logged otherwise); for debugging, not for shared logs",
         .to = &ap.log_content},
        {0},
    };
    const opt *tables[] = {own, cli_engine_opts(&lp), NULL};
    opts_result args;
    int rc = opts_parse("serve", tables, argc, argv, 0, intro, &args);
    const char *bad = rc                                     ? NULL
        : !lp.model_path && !lp.url                          ? "--model PATH or --llm URL is required (see --help)"
        : ap.max_n_predict < ap.default_n_predict            ? "--max-n-predict is below --n-predict"
        : cp.advertise_url && strlen(cp.advertise_url) > 200 ? "--advertise-url: longer than 200 bytes"
                                                             : NULL;
    if (bad) {
        fprintf(stderr, "serve: %s\n", bad);
        rc = 2;
    }
    if (rc != 0) {
        opts_free(&args);
        return rc == 1 ? 0 : 2;
    }
    cp.node_id = ap.node_id = sp.node_id = node_id;
    sp.ttl_ms = ttl_s * 1000;
    lp.warm_window_s = cp.warm.window_s;
    /* warm handover pays only where another node commits turns */
    lp.warm_sessions = warm_sessions >= 0 ? warm_sessions : sp.url ? 4 : 0;
    /* the strings the options point at (the file's settings) live in args */
    rc = serve_run(&lp, &sp, &cp, &ap, &pp, keys_path, store_key);
    opts_free(&args);
    return rc;
}

static int serve_run(llm_params *lpp, store_params *spp, ctx_params *cpp, api_params *app, peer_params *ppp,
                     const char *keys_path, const char *store_key) {
    llm_params lp = *lpp;
    store_params sp = *spp;
    ctx_params cp = *cpp;
    api_params ap = *app;
    char err[256];
    if (keys_path && !(ap.keys = auth_load(keys_path, err, sizeof err))) {
        fprintf(stderr, "serve: --api-keys: %s\n", err);
        return 2;
    }
    seal *sealer = NULL;
    if (store_key && !(sealer = seal_load(store_key, err, sizeof err))) {
        fprintf(stderr, "serve: --store-key: %s\n", err);
        auth_free(ap.keys);
        return 2;
    }
    sp.seal = sealer;

    /* Block the stop signals before any thread starts, so they all inherit
     * the mask and the signals reach only sigtimedwait below. */
    sigset_t stop;
    cli_block_stop(&stop);
    sigaddset(&stop, SIGHUP); /* reloads the keys (below) */
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    char spill_dir[1024];
    if (!lp.spill_dir) {
        snprintf(spill_dir, sizeof spill_dir, "%s/kv-spill", sp.data_dir);
        lp.spill_dir = spill_dir;
    }
    int rc = 1;
    store *s = NULL;
    ctx *cx = NULL;
    api_server *srv = NULL;
    llm *m = llm_load(&lp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "serve: %s\n", err);
        goto out;
    }
    char keygroup[80];
    keygroup_of(m, keygroup, sizeof keygroup);
    sp.keygroup = keygroup;
    if (!(s = store_open(&sp, err, sizeof err))) {
        fprintf(stderr, "serve: %s\n", err);
        goto out;
    }
    long expired = store_expire(s, clock_wall_ms());
    if (ppp->key_file) {
        peer_params pp = *ppp;
        pp.m = m;
        if (!(ap.peer = peer_new(&pp, err, sizeof err))) {
            fprintf(stderr, "serve: --peer-key-file: %s\n", err);
            goto out;
        }
        cp.kv_fetch = peer_kv_fetch;
        cp.kv_fetch_ud = ap.peer;
    } else if (cp.advertise_url) {
        log_warn("--advertise-url without --peer-key-file: this node records its URL but serves no KV to peers");
    }
    cx = ctx_new(&cp, m, s);
    if (!(srv = api_server_start(&ap, cx, m, err, sizeof err))) {
        fprintf(stderr, "serve: %s\n", err);
        goto out;
    }
    /* Tests and scripts read this line to find the port. */
    char where[512], llm_where[512] = "";
    if (sp.url) store_url_redact(sp.url, where, sizeof where);
    else snprintf(where, sizeof where, "%s", sp.data_dir);
    if (lp.url) store_url_redact(lp.url, llm_where, sizeof llm_where); /* the same rule for both URLs */
    printf("discedge: node %s listening on http://%s:%d (model %s%s%s, ctx %d, threads %d, store %s %s%s, keygroup "
           "%s)\n",
           ap.node_id, ap.host, api_server_port(srv), llm_model_name(m), lp.url ? " at " : "", llm_where, llm_n_ctx(m),
           llm_n_threads(m), store_kind(s), where, sealer ? " sealed" : "", keygroup);
    fflush(stdout);
    if (expired > 0) log_info("removed %ld expired sessions", expired);
    log_info("compute: %s", llm_backend(m));
    llm_stats ls;
    llm_stats_get(m, &ls);
    if (!lp.url)
        log_info("engine: %d sequences (%d generating at once), KV cache %.0f MiB", ls.n_slots, ls.n_parallel,
                 ls.kv_bytes / 1048576.0);

    struct timespec sweep = {60, 0};
    for (;;) {
        int sig = sigtimedwait(&stop, NULL, &sweep);
        if (sig == SIGINT || sig == SIGTERM) break;
        if (sig == SIGHUP) {
            if (!ap.keys) continue;
            int n = auth_reload(ap.keys, err, sizeof err);
            if (n < 0) log_error("API keys not reloaded, the previous ones stay: %s", err);
            else log_info("API keys reloaded: %d keys", n);
            continue;
        }
        long n = store_expire(s, clock_wall_ms());
        if (n > 0) log_info("removed %ld expired sessions", n);
        else if (n < 0) log_warn("session expiry sweep failed: %s", store_last_error());
        /* the per-user session counts' upkeep: here, not in a request */
        int gone = ctx_sweep(cx);
        if (gone > 0) log_info("forgot %d ended sessions counted for --max-sessions-per-user", gone);
    }
    log_info("stopping");
    rc = 0;
out:
    api_server_stop(srv);
    ctx_free(cx);
    store_close(s);
    llm_free(m);
    peer_free(ap.peer);
    auth_free(ap.keys);
    seal_free(sealer);
    return rc;
}
