/* engine_bare.c - the engine's bare cost, straight through the llama.cpp
 * API, for bench/engine.py to put next to what a node takes for the same
 * work in the same run.
 *
 *   engine_bare turns   MODEL TRACE.json THREADS CTX
 *       per turn of the trace: with the turn's first `cached` input tokens
 *       already in the KV cache (untimed), prefill the rest and decode the
 *       reply's tokens one by one with greedy sampling after each step,
 *       exactly the llama_decode calls a node makes for that turn
 *   engine_bare batched MODEL TRACE.json THREADS CTX N
 *       the whole trace for N sequences in lockstep in one context: each
 *       turn's new tokens of all N prefilled together, then decode steps of
 *       N tokens each - a perfect scheduler's aggregate throughput
 *   engine_bare staggered MODEL TRACE.json THREADS CTX N
 *       the same N sessions out of phase, as clients of a node are: session
 *       s starts s/N of a turn late and starts each next turn right after
 *       its previous one, so a turn's prefill shares a batch with the other
 *       sessions' decode steps - the node's traffic without the node
 *   engine_bare spill   MODEL THREADS CTX DIR
 *       for several context lengths: prefill time against saving the
 *       sequence state to a file (fsync) and restoring it, warm and after
 *       dropping the page cache (posix_fadvise)
 *
 * Knobs for comparisons (not used by engine.py): BARE_UNIFIED=1 makes the
 * context one unified KV buffer instead of a stream per sequence;
 * BARE_STREAMS=N runs `turns` in a context of N streams, as a node keeping
 * N conversations has.
 *
 * TRACE.json: {"turns":[{"input":[ids], "cached":N, "reply":[ids],
 * "decode_steps":N}, ...]} written by bench/engine.py from a node's own
 * session and timings. Output: one JSON object per line on stdout. */
#include <fcntl.h>
#include <ggml-backend.h>
#include <jansson.h>
#include <llama.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef DC_BACKEND_DIR
#define DC_BACKEND_DIR "."
#endif

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void quiet(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static void die(const char *msg) {
    fprintf(stderr, "engine_bare: %s\n", msg);
    exit(1);
}

typedef struct {
    int32_t *input, *reply;
    int n_input, n_reply, cached, steps;
} turn;

static int32_t *ids(json_t *a, int *n) {
    *n = (int)json_array_size(a);
    int32_t *v = malloc(sizeof *v * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

static turn *load_trace(const char *path, int *n) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) die(je.text);
    json_t *ts = json_object_get(root, "turns");
    *n = (int)json_array_size(ts);
    turn *t = calloc((size_t)*n, sizeof *t);
    for (int i = 0; i < *n; i++) {
        json_t *o = json_array_get(ts, (size_t)i);
        t[i].input = ids(json_object_get(o, "input"), &t[i].n_input);
        t[i].reply = ids(json_object_get(o, "reply"), &t[i].n_reply);
        t[i].cached = (int)json_integer_value(json_object_get(o, "cached"));
        t[i].steps = (int)json_integer_value(json_object_get(o, "decode_steps"));
    }
    json_decref(root);
    return t;
}

static struct llama_model *model_load(const char *path) {
    llama_log_set(quiet, NULL);
    ggml_backend_load_all_from_path(DC_BACKEND_DIR);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *m = llama_model_load_from_file(path, mp);
    if (!m) die("cannot load the model");
    return m;
}

/* The same context shape as a node's: n_seq streams of ctx cells each. */
static struct llama_context *context_new(struct llama_model *m, int threads, int ctx, int n_seq) {
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(ctx * n_seq);
    cp.n_batch = cp.n_ubatch = 512;
    cp.n_seq_max = (uint32_t)n_seq;
    cp.kv_unified = getenv("BARE_UNIFIED") != NULL; /* for comparison only: nodes use streams */
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = true;
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c) die("cannot create the context");
    return c;
}

/* What every command runs on: the model, a context shaped like a node's,
 * a batch and a greedy sampler. */
typedef struct {
    struct llama_model *m;
    struct llama_context *c;
    struct llama_batch b;
    struct llama_sampler *smpl;
} rig;

static rig rig_open(const char *model, int threads, int ctx, int n_seq) {
    rig r;
    r.m = model_load(model);
    r.c = context_new(r.m, threads, ctx, n_seq);
    r.b = llama_batch_init(512, 0, 1);
    r.smpl = llama_sampler_init_greedy();
    return r;
}

static void rig_close(rig *r) {
    llama_sampler_free(r->smpl);
    llama_batch_free(r->b);
    llama_free(r->c);
    llama_model_free(r->m);
}

static void batch_add(struct llama_batch *b, int32_t tok, int pos, int seq, bool logits) {
    int k = b->n_tokens++;
    b->token[k] = tok;
    b->pos[k] = pos;
    b->n_seq_id[k] = 1;
    b->seq_id[k][0] = seq;
    b->logits[k] = logits;
}

/* Feeds toks[0..n) at positions pos.. of each of n_seq sequences, in
 * batches of up to 512 tokens, position by position so that every
 * sequence's last token (the one with logits) lands in the final batch. */
static void feed(struct llama_context *c, struct llama_batch *b, const int32_t *toks, int n, int pos, int n_seq) {
    int total = n * n_seq, done = 0, cap = 512 - 512 % n_seq;
    while (done < total) {
        b->n_tokens = 0;
        while (done < total && b->n_tokens < cap) {
            int s = done % n_seq, i = done / n_seq;
            batch_add(b, toks[i], pos + i, s, i == n - 1);
            done++;
        }
        if (llama_decode(c, *b) != 0) die("llama_decode failed");
    }
}

/* Greedy sampling over every sequence's logits in the last batch, as a node
 * samples after each step. */
static void sample_all(struct llama_context *c, struct llama_sampler *smpl, int n_seq, int batch_n) {
    for (int s = 0; s < n_seq; s++) llama_sampler_sample(smpl, c, batch_n - n_seq + s);
}

/* One untimed prefill and a few decode steps: the model's pages mapped in
 * and the compute buffers sized, as on a node that has served a request. */
static void warm_up(struct llama_context *c, struct llama_batch *b, const turn *t) {
    feed(c, b, t->input, t->n_input, 0, 1);
    for (int k = 0; k < 8 && k < t->n_reply; k++) feed(c, b, &t->reply[k], 1, t->n_input + k, 1);
    llama_memory_clear(llama_get_memory(c), true);
}

static int cmd_turns(const char *model, const char *trace, int threads, int ctx) {
    int n;
    turn *t = load_trace(trace, &n);
    /* BARE_STREAMS=N: the same work in a context of N streams, as a node
     * keeping N conversations has (for measuring what that costs) */
    int streams = getenv("BARE_STREAMS") ? atoi(getenv("BARE_STREAMS")) : 1;
    rig r = rig_open(model, threads, ctx, streams > 1 ? streams : 1);
    warm_up(r.c, &r.b, &t[0]);
    for (int i = 0; i < n; i++) {
        llama_memory_clear(llama_get_memory(r.c), true);
        if (t[i].cached > 0) feed(r.c, &r.b, t[i].input, t[i].cached, 0, 1);
        double t0 = now_ms();
        feed(r.c, &r.b, t[i].input + t[i].cached, t[i].n_input - t[i].cached, t[i].cached, 1);
        sample_all(r.c, r.smpl, 1, r.b.n_tokens);
        double t1 = now_ms();
        for (int k = 0; k < t[i].steps; k++) {
            feed(r.c, &r.b, &t[i].reply[k], 1, t[i].n_input + k, 1);
            sample_all(r.c, r.smpl, 1, 1);
        }
        double t2 = now_ms();
        printf("{\"turn\":%d,\"cached\":%d,\"prefill_n\":%d,\"decode_steps\":%d,\"prefill_ms\":%.3f,\"decode_ms\":%.3f,"
               "\"bare_ms\":%.3f}\n",
               i + 1, t[i].cached, t[i].n_input - t[i].cached, t[i].steps, t1 - t0, t2 - t1, t2 - t0);
        fflush(stdout);
    }
    rig_close(&r);
    return 0;
}

static int cmd_batched(const char *model, const char *trace, int threads, int ctx, int n_seq) {
    int n;
    turn *t = load_trace(trace, &n);
    rig r = rig_open(model, threads, ctx, n_seq);
    warm_up(r.c, &r.b, &t[0]);
    double t0 = now_ms();
    long generated = 0;
    int pos = 0;
    for (int i = 0; i < n; i++) {
        /* the node kept t[i].cached tokens; the rest of this turn's input is new */
        int from = t[i].cached < pos ? t[i].cached : pos;
        if (from < pos)
            for (int s = 0; s < n_seq; s++) llama_memory_seq_rm(llama_get_memory(r.c), s, from, -1);
        feed(r.c, &r.b, t[i].input + from, t[i].n_input - from, from, n_seq);
        sample_all(r.c, r.smpl, n_seq, r.b.n_tokens);
        for (int k = 0; k < t[i].steps; k++) {
            r.b.n_tokens = 0;
            for (int s = 0; s < n_seq; s++) batch_add(&r.b, t[i].reply[k], t[i].n_input + k, s, true);
            if (llama_decode(r.c, r.b) != 0) die("llama_decode failed");
            sample_all(r.c, r.smpl, n_seq, n_seq);
        }
        pos = t[i].n_input + t[i].steps;
        generated += (long)n_seq * t[i].n_reply;
    }
    double ms = now_ms() - t0;
    printf("{\"n\":%d,\"total_ms\":%.1f,\"generated\":%ld,\"tokens_per_s\":%.2f}\n", n_seq, ms, generated,
           generated * 1e3 / ms);
    rig_close(&r);
    return 0;
}

typedef struct {
    int turn, k, pos, delay;
    bool prefill, done;
    int logits_at;
} seq_state;

static int cmd_staggered(const char *model, const char *trace, int threads, int ctx, int n_seq) {
    int n;
    turn *t = load_trace(trace, &n);
    rig r = rig_open(model, threads, ctx, n_seq);
    warm_up(r.c, &r.b, &t[0]);
    seq_state *st = calloc((size_t)n_seq, sizeof *st);
    for (int s = 0; s < n_seq; s++) st[s] = (seq_state){.delay = s * (t[0].steps + 1) / n_seq, .prefill = true};
    double t0 = now_ms();
    long generated = 0;
    for (int left = n_seq; left > 0;) {
        r.b.n_tokens = 0;
        for (int s = 0; s < n_seq; s++) {
            seq_state *q = &st[s];
            q->logits_at = -1;
            if (q->done) continue;
            if (q->delay > 0) {
                q->delay--;
                continue;
            }
            const turn *T = &t[q->turn];
            if (q->prefill) {
                int from = T->cached < q->pos ? T->cached : q->pos;
                if (r.b.n_tokens + T->n_input - from > 512) continue; /* next step */
                if (from < q->pos) llama_memory_seq_rm(llama_get_memory(r.c), s, from, -1);
                for (int i = from; i < T->n_input; i++) batch_add(&r.b, T->input[i], i, s, i == T->n_input - 1);
                q->logits_at = r.b.n_tokens - 1;
            } else {
                q->logits_at = r.b.n_tokens;
                batch_add(&r.b, T->reply[q->k], T->n_input + q->k, s, true);
            }
        }
        if (r.b.n_tokens && llama_decode(r.c, r.b) != 0) die("llama_decode failed");
        for (int s = 0; s < n_seq; s++) {
            seq_state *q = &st[s];
            if (q->logits_at < 0) continue;
            llama_sampler_sample(r.smpl, r.c, q->logits_at);
            const turn *T = &t[q->turn];
            generated++;
            if (q->prefill) {
                q->prefill = false;
                q->k = 0;
            } else {
                q->k++;
            }
            if (!q->prefill && q->k >= T->steps) {
                /* the turn's last token was sampled (and, at a limit, not fed back) */
                generated += T->n_reply - 1 - T->steps;
                q->pos = T->n_input + T->steps;
                q->prefill = true;
                if (++q->turn == n) {
                    q->done = true;
                    left--;
                }
            }
        }
    }
    double ms = now_ms() - t0;
    printf("{\"n\":%d,\"total_ms\":%.1f,\"generated\":%ld,\"tokens_per_s\":%.2f}\n", n_seq, ms, generated,
           generated * 1e3 / ms);
    free(st);
    rig_close(&r);
    return 0;
}

static int cmd_spill(const char *model, int threads, int ctx, const char *dir) {
    rig r = rig_open(model, threads, ctx, 1);
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(r.m));
    char path[512];
    snprintf(path, sizeof path, "%s/spill.bin", dir);
    for (int len = 128; len <= ctx / 2; len *= 2) {
        int32_t *toks = malloc(sizeof *toks * (size_t)len);
        for (int i = 0; i < len; i++) toks[i] = (int32_t)((i * 7919 + 13) % nv);
        llama_memory_clear(llama_get_memory(r.c), true);
        double t0 = now_ms();
        feed(r.c, &r.b, toks, len, 0, 1);
        double prefill = now_ms() - t0;

        t0 = now_ms();
        size_t size = llama_state_seq_get_size(r.c, 0);
        uint8_t *buf = malloc(size);
        size_t got = llama_state_seq_get_data(r.c, buf, size, 0);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || write(fd, buf, got) != (ssize_t)got || fsync(fd) != 0) die("cannot write the state file");
        close(fd);
        double save = now_ms() - t0;

        double restore[2];
        for (int cold = 0; cold < 2; cold++) {
            llama_memory_clear(llama_get_memory(r.c), true);
            fd = open(path, O_RDONLY);
            if (cold) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            t0 = now_ms();
            if (read(fd, buf, got) != (ssize_t)got) die("cannot read the state file");
            if (llama_state_seq_set_data(r.c, buf, got, 0) == 0) die("restore failed");
            restore[cold] = now_ms() - t0;
            close(fd);
        }
        printf("{\"tokens\":%d,\"state_bytes\":%zu,\"prefill_ms\":%.2f,\"save_ms\":%.2f,\"restore_warm_ms\":%.2f,"
               "\"restore_cold_ms\":%.2f}\n",
               len, got, prefill, save, restore[0], restore[1]);
        fflush(stdout);
        free(buf);
        free(toks);
    }
    unlink(path);
    rig_close(&r);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "turns")) return cmd_turns(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 7 && !strcmp(argv[1], "batched"))
        return cmd_batched(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    if (argc == 7 && !strcmp(argv[1], "staggered"))
        return cmd_staggered(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    if (argc == 6 && !strcmp(argv[1], "spill")) return cmd_spill(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5]);
    fprintf(stderr, "usage: engine_bare turns MODEL TRACE THREADS CTX | batched MODEL TRACE THREADS CTX N |"
                    " staggered MODEL TRACE THREADS CTX N | spill MODEL THREADS CTX DIR\n");
    return 2;
}
