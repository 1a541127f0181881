/* serve.c - `discedge serve`: one edge node. Loads the model, opens the
 * store, starts the HTTP API, then waits for SIGINT/SIGTERM, sweeping
 * expired sessions once a minute meanwhile and reloading the API keys on
 * SIGHUP. */
#include "serve.h"

#include <getopt.h>
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

static void usage(FILE *f) {
    fprintf(f,
            "usage: discedge serve (--model PATH | --llm URL) [options]\n"
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
            "  --config FILE         read settings from FILE: one \"name = value\" per line,\n"
            "                        named as the long options here (deploy/discedge.conf);\n"
            "                        options on the command line win over the file\n"
            "  --model PATH          GGUF model to serve in this process\n"
            "  --llm URL             or: use the LLM service at http://HOST:PORT instead, a\n"
            "                        `discedge llm-serve` or llama-server\n"
            "  --host ADDR           IPv4 address to listen on (default 127.0.0.1)\n"
            "  --port N              TCP port (default 8080; 0 picks a free one and prints it)\n"
            "  --node-id NAME        this node's name in responses (default: hostname)\n"
            "  --data-dir DIR        embedded store folder (default ./data)\n"
            "  --store URL           nats://HOST:PORT[,HOST:PORT...]: keep sessions in NATS\n"
            "                        JetStream, shared by every node on that store (default:\n"
            "                        the embedded store in --data-dir)\n"
            "                        (tls://... for TLS; USER:PASSWORD@ before a host logs in\n"
            "                        as that NATS user: put it in a --config file, mode 600)\n"
            "  --store-ca FILE       require TLS to the NATS servers, their certificates signed\n"
            "                        by the CA in FILE (deploy/nats)\n"
            "  --store-core-domain D the core cluster's JetStream domain, when --store is this\n"
            "                        host's own leaf nats-server: reads then come from a local\n"
            "                        mirror of the model's stream (see docs/DEPLOY.md)\n"
            "  --store-replicas N    replicas of the model's stream when this node creates it\n"
            "                        (default 1; 3 on a 3-server core cluster)\n"
            "  --session-ttl SECS    drop sessions idle this long (default 86400)\n"
            "  --n-predict N         default reply length cap (default 128)\n"
            "  --sync-timeout MS     longest wait for a client's previous turn to replicate\n"
            "                        here before `strong` requests get 503 (default 2000)\n"
            "  --stale-retries N     re-reads when the stored turn is behind (default 3)\n"
            "  --stale-retry-ms MS   pause between re-reads (default 10)\n"
            "  --max-body BYTES      request body limit (default 1048576)\n"
            "  --max-n-predict N     longest reply a request may ask for (default 4096)\n"
            "  --max-streams-per-key N  generations at once per API key's user (without keys:\n"
            "                        per client address and user it names); more get 429\n"
            "                        (default 4; 0: off)\n"
            "  --max-sessions-per-user N  live sessions a user may create through this\n"
            "                        node (without keys: per client address and user it\n"
            "                        names); more get 429 (default 1000; 0: off)\n"
            "  --max-session-tokens N  longest conversation a session may hold, in tokens\n"
            "                        (its context_tokens); a turn whose message and n_predict\n"
            "                        would pass it gets 400 session_full (default 131072; 0: off)\n"
            "  --max-connections N   open client connections, all clients together; more are\n"
            "                        closed at once (default 512, 1-65536)\n"
            "  --max-connections-per-address N  open connections from one client address\n"
            "                        (default 64, 1-65536; behind a proxy every client has\n"
            "                        the proxy's address)\n"
            "  --request-timeout SECS  silence allowed while a request's headers and body\n"
            "                        arrive, and between requests on a kept-alive connection;\n"
            "                        a generation is not bound by it (default 30, 1-3600)\n"
            "  --warm-sessions N     warm handover: conversations served by other nodes whose\n"
            "                        KV this node prefills in the background, on idle engine\n"
            "                        time, so that their next turn here prefills only the new\n"
            "                        message; among --kv-cache-sessions (default 4 with --store,\n"
            "                        0 without; 0: off; 0-256)\n"
            "  --warm-window SECS    warm only turns committed this recently; a warmed\n"
            "                        conversation unused this long is evicted first (default 600)\n"
            "  --warm-peers LIST     warm only turns committed by these nodes, e.g.\n"
            "                        edge-1,edge-3 (neighbour cells; default: every node)\n"
            "  --api-keys FILE       require API keys: FILE has one \"KEY USER_ID\" per line;\n"
            "                        requests need \"Authorization: Bearer KEY\" and the key's\n"
            "                        user owns the sessions it creates (kill -HUP reloads it)\n"
            "  --store-key FILE      encrypt and authenticate every stored record with the\n"
            "                        deployment key in FILE (`discedge keygen FILE`); every\n"
            "                        node sharing a store needs the same key\n"
            "  --advertise-url URL   how other nodes reach this one (http://HOST:PORT), recorded\n"
            "                        with every turn it commits, so that the node serving the\n"
            "                        session's next turn can fetch this node's KV of it; every\n"
            "                        node sharing the store must run a version that reads it\n"
            "  --peer-key-file FILE  the key nodes present to each other (one line, 16+ bytes,\n"
            "                        mode 600, the same on every node); turns on KV transfer:\n"
            "                        a turn whose session this node holds no KV of fetches it\n"
            "                        from the node that served the previous turn when that is\n"
            "                        predicted faster than prefilling (GET /v1/peer/kv/{id})\n"
            "  --peer-link-mbps N    the throughput assumed for a link to a peer until one\n"
            "                        transfer has measured it (default 100)\n"
            "  --log-content         also log each turn's prompt and reply (never logged\n"
            "                        otherwise); for debugging, not for shared logs\n"
            "\n");
    cli_engine_usage(f);
}

int serve_main(int argc, char **argv) {
    enum { O_STORE = 256, O_REPLICAS, O_DOMAIN, O_SYNC, O_TTL, O_NPRED, O_RETRIES, O_RETRY_MS, O_MAXBODY, O_LLM,
           O_KEYS, O_STORE_KEY, O_LOG_CONTENT, O_MAX_NPRED, O_MAX_STREAMS, O_MAX_SESSIONS, O_STORE_CA,
           O_MAX_SESSION_TOKENS, O_MAX_CONNS, O_MAX_PER_ADDR, O_REQ_TIMEOUT, O_WARM_SESSIONS, O_WARM_WINDOW,
           O_WARM_PEERS, O_ADVERTISE, O_PEER_KEY, O_PEER_MBPS };
    static const struct option own[] = {{"model", required_argument, 0, 'm'},
                                        {"llm", required_argument, 0, O_LLM},
                                        {"host", required_argument, 0, 'H'},
                                        {"port", required_argument, 0, 'p'},
                                        {"node-id", required_argument, 0, 'n'},
                                        {"data-dir", required_argument, 0, 'd'},
                                        {"store", required_argument, 0, O_STORE},
                                        {"store-replicas", required_argument, 0, O_REPLICAS},
                                        {"sync-timeout", required_argument, 0, O_SYNC},
                                        {"store-core-domain", required_argument, 0, O_DOMAIN},
                                        {"session-ttl", required_argument, 0, O_TTL},
                                        {"n-predict", required_argument, 0, O_NPRED},
                                        {"stale-retries", required_argument, 0, O_RETRIES},
                                        {"stale-retry-ms", required_argument, 0, O_RETRY_MS},
                                        {"max-body", required_argument, 0, O_MAXBODY},
                                        {"api-keys", required_argument, 0, O_KEYS},
                                        {"store-key", required_argument, 0, O_STORE_KEY},
                                        {"store-ca", required_argument, 0, O_STORE_CA},
                                        {"log-content", no_argument, 0, O_LOG_CONTENT},
                                        {"max-n-predict", required_argument, 0, O_MAX_NPRED},
                                        {"max-streams-per-key", required_argument, 0, O_MAX_STREAMS},
                                        {"max-sessions-per-user", required_argument, 0, O_MAX_SESSIONS},
                                        {"max-session-tokens", required_argument, 0, O_MAX_SESSION_TOKENS},
                                        {"max-connections", required_argument, 0, O_MAX_CONNS},
                                        {"max-connections-per-address", required_argument, 0, O_MAX_PER_ADDR},
                                        {"request-timeout", required_argument, 0, O_REQ_TIMEOUT},
                                        {"warm-sessions", required_argument, 0, O_WARM_SESSIONS},
                                        {"warm-window", required_argument, 0, O_WARM_WINDOW},
                                        {"warm-peers", required_argument, 0, O_WARM_PEERS},
                                        {"advertise-url", required_argument, 0, O_ADVERTISE},
                                        {"peer-key-file", required_argument, 0, O_PEER_KEY},
                                        {"peer-link-mbps", required_argument, 0, O_PEER_MBPS},
                                        {"help", no_argument, 0, 'h'},
                                        {0, 0, 0, 0}};
    llm_params lp = llm_default_params();
    store_params sp = store_default_params();
    ctx_params cp = ctx_default_params();
    api_params ap = api_default_params();
    char host[64] = "node";
    gethostname(host, sizeof host - 1);
    cp.node_id = ap.node_id = host;
    struct option *opts = cli_options(own);
    const char *keys_path = NULL, *store_key = NULL;
    peer_params pp = peer_default_params();
    long conns = ap.max_connections, per_addr = ap.max_per_address, req_timeout = ap.request_timeout_s;
    long warm_sessions = -1; /* not given: on (4) with a shared store, off without */
    cli_args args;
    if (cli_config_expand("serve", opts, argc, argv, &args) != 0) {
        free(opts);
        return 2;
    }
    argc = args.argc;
    argv = args.argv;
    int c, bad = 0;
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c >= CLI_ENGINE_FIRST) {
            bad = cli_engine_option("serve", c, optarg, &lp);
            continue;
        }
        switch (c) {
        case 'm': lp.model_path = optarg; break;
        case 'H': ap.host = optarg; break;
        case 'p': ap.port = atoi(optarg); break;
        case 'n': cp.node_id = ap.node_id = optarg; break;
        case 'd': sp.data_dir = optarg; break;
        case O_STORE: sp.url = optarg; break;
        case O_REPLICAS: sp.replicas = atoi(optarg); break;
        case O_SYNC: cp.sync_timeout_ms = atoi(optarg); break;
        case O_DOMAIN: sp.core_domain = optarg; break;
        case O_TTL: sp.ttl_ms = atoll(optarg) * 1000; break;
        case O_NPRED: ap.default_n_predict = atoi(optarg); break;
        case O_RETRIES: cp.stale_retries = atoi(optarg); break;
        case O_RETRY_MS: cp.stale_retry_ms = atoi(optarg); break;
        case O_MAXBODY: ap.max_body = (size_t)atoll(optarg); break;
        case O_LLM: lp.url = optarg; break;
        case O_KEYS: keys_path = optarg; break;
        case O_STORE_KEY: store_key = optarg; break;
        case O_STORE_CA: sp.tls_ca = optarg; break;
        case O_LOG_CONTENT: ap.log_content = true; break;
        case O_MAX_NPRED: ap.max_n_predict = atoi(optarg); break;
        case O_MAX_STREAMS: ap.max_streams = atoi(optarg); break;
        case O_MAX_SESSIONS: cp.max_sessions_per_user = atoi(optarg); break;
        case O_MAX_SESSION_TOKENS: cp.max_session_tokens = atol(optarg); break;
        case O_MAX_CONNS: conns = atol(optarg); break;
        case O_MAX_PER_ADDR: per_addr = atol(optarg); break;
        case O_REQ_TIMEOUT: req_timeout = atol(optarg); break;
        case O_WARM_SESSIONS: warm_sessions = strtol(optarg, NULL, 10); bad = warm_sessions < 0 || warm_sessions > 256; break;
        case O_WARM_WINDOW: cp.warm.window_s = lp.warm_window_s = atoi(optarg); bad = lp.warm_window_s < 1; break;
        case O_WARM_PEERS: cp.warm.peers = optarg; break;
        case O_ADVERTISE: cp.advertise_url = optarg; break;
        case O_PEER_KEY: pp.key_file = optarg; break;
        case O_PEER_MBPS: pp.link_mbps = atof(optarg); break;
        case 'h': usage(stdout); free(opts); cli_args_free(&args); return 0;
        default: bad = 1; break;
        }
    }
    free(opts);
    bool done = bad || optind != argc || !(lp.model_path || lp.url);
    if (done) usage(stderr);
    else if (ap.port < 0 || ap.port > 65535 || ap.default_n_predict < 1 || cp.stale_retries < 0 ||
             cp.sync_timeout_ms < 0 || cp.stale_retry_ms < 0 || sp.ttl_ms < 0 || ap.max_body < 1 || sp.replicas < 1 ||
             sp.replicas > 5 || ap.max_n_predict < ap.default_n_predict || ap.max_streams < 0 || cp.max_sessions_per_user < 0 ||
             cp.max_session_tokens < 0 || conns < 1 || conns > 65536 || per_addr < 1 || per_addr > 65536 ||
             req_timeout < 1 || req_timeout > 3600 || !(pp.link_mbps > 0 && pp.link_mbps <= 1e6) ||
             (cp.advertise_url && (strlen(cp.advertise_url) > 200 || (strncmp(cp.advertise_url, "http://", 7) != 0 &&
                                                                       strncmp(cp.advertise_url, "https://", 8) != 0))))
        done = fprintf(stderr, "serve: a numeric option is out of range (see --help)\n") > 0;
    if (done) {
        cli_args_free(&args);
        return 2;
    }
    /* warm handover pays only where another node commits turns */
    lp.warm_sessions = (int)(warm_sessions >= 0 ? warm_sessions : sp.url ? 4 : 0);
    sp.node_id = cp.node_id;
    ap.max_connections = (unsigned)conns;
    ap.max_per_address = (unsigned)per_addr;
    ap.request_timeout_s = (unsigned)req_timeout;
    /* the strings optarg pointed at (the file's settings) live in args */
    int rc = serve_run(&lp, &sp, &cp, &ap, &pp, keys_path, store_key);
    cli_args_free(&args);
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
           ap.node_id, ap.host, api_server_port(srv), llm_model_name(m), lp.url ? " at " : "", llm_where,
           llm_n_ctx(m), llm_n_threads(m), store_kind(s), where, sealer ? " sealed" : "", keygroup);
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
