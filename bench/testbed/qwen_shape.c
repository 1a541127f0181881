/* qwen_shape.c - the paper's model size without the paper's model: a GGUF
 * with exactly Qwen1.5-0.5B-Chat's shape (qwen2 architecture, 24 layers,
 * n_embd 1024, 16 heads and 16 KV heads, feed-forward 2816, output matrix
 * not tied to the embeddings, the real Qwen2 tokenizer and chat template)
 * and random weights, quantized to Q4_K_M as the paper ran it.
 *
 * Why: the evaluation's figures depend on how much compute a turn costs,
 * which depends on the shape, not on the weights. The replies are
 * meaningless, so experiments on it generate a fixed n_predict tokens with
 * EOS ignored, as the paper fixes 128.
 *
 * The tokenizer and chat template come from models/ggml-vocab-qwen2.gguf in
 * the llama.cpp sources bundled with the npm package (scripts/setup.sh puts
 * them in third_party/llama.cpp). Tensors are written with gguf.h at F16,
 * then llama_model_quantize makes the Q4_K_M file and the F16 one is removed.
 *
 * usage: qwen_shape VOCAB.gguf OUT.gguf [SEED] */
#include <ggml.h>
#include <gguf.h>
#include <llama.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { N_LAYER = 24, N_EMBD = 1024, N_HEAD = 16, N_HEAD_KV = 16, N_FF = 2816 };

static uint64_t rng;

/* xorshift64*: fast, and the same file for the same seed */
static float uniform(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((rng * 0x2545F4914F6CDD1DULL) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

/* Weights of standard deviation 0.02 (uniform in [-a, a], a = 0.02*sqrt(3)),
 * as models are initialized; norms 1, biases 0. */
static void fill(struct ggml_tensor *t, float kind) {
    int64_t n = ggml_nelements(t);
    if (t->type == GGML_TYPE_F32) {
        float *v = t->data;
        for (int64_t i = 0; i < n; i++) v[i] = kind;
        return;
    }
    float buf[4096];
    ggml_fp16_t *out = t->data;
    const float a = 0.02f * sqrtf(3.0f);
    for (int64_t i = 0; i < n; i += 4096) {
        int64_t k = n - i < 4096 ? n - i : 4096;
        for (int64_t j = 0; j < k; j++) buf[j] = a * uniform();
        ggml_fp32_to_fp16_row(buf, out + i, k);
    }
}

static struct ggml_tensor *add(struct ggml_context *g, struct gguf_context *gg, const char *name, enum ggml_type type,
                               int64_t ne0, int64_t ne1, float kind) {
    struct ggml_tensor *t = ne1 ? ggml_new_tensor_2d(g, type, ne0, ne1) : ggml_new_tensor_1d(g, type, ne0);
    ggml_set_name(t, name);
    fill(t, kind);
    gguf_add_tensor(gg, t);
    return t;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s VOCAB.gguf OUT.gguf [SEED]\n", argv[0]);
        return 2;
    }
    rng = argc == 4 ? strtoull(argv[3], NULL, 10) | 1 : 123;
    struct ggml_context *meta = NULL;
    struct gguf_init_params ip = {.no_alloc = true, .ctx = &meta};
    struct gguf_context *vocab = gguf_init_from_file(argv[1], ip);
    if (!vocab) {
        fprintf(stderr, "qwen_shape: cannot read %s\n", argv[1]);
        return 1;
    }
    int64_t tok = gguf_find_key(vocab, "tokenizer.ggml.tokens");
    if (tok < 0 || strcmp(gguf_get_val_str(vocab, gguf_find_key(vocab, "general.architecture")), "qwen2") != 0) {
        fprintf(stderr, "qwen_shape: %s is not a qwen2 vocabulary\n", argv[1]);
        return 1;
    }
    int64_t n_vocab = (int64_t)gguf_get_arr_n(vocab, tok);

    /* every key of the vocabulary file (tokenizer, chat template), then the shape */
    struct gguf_context *gg = gguf_init_empty();
    gguf_set_kv(gg, vocab);
    gguf_set_val_str(gg, "general.name", "Qwen1.5-0.5B-Chat shape, random weights (DisCEdge testbed)");
    gguf_set_val_u32(gg, "qwen2.block_count", N_LAYER);
    gguf_set_val_u32(gg, "qwen2.context_length", 32768);
    gguf_set_val_u32(gg, "qwen2.embedding_length", N_EMBD);
    gguf_set_val_u32(gg, "qwen2.feed_forward_length", N_FF);
    gguf_set_val_u32(gg, "qwen2.attention.head_count", N_HEAD);
    gguf_set_val_u32(gg, "qwen2.attention.head_count_kv", N_HEAD_KV);
    gguf_set_val_f32(gg, "qwen2.rope.freq_base", 1000000.0f);
    gguf_set_val_f32(gg, "qwen2.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_set_val_u32(gg, "general.file_type", 1); /* F16 */

    size_t f16 = 2 * (size_t)N_EMBD * (size_t)n_vocab +
                 N_LAYER * ((size_t)4 * N_EMBD * N_EMBD + (size_t)3 * N_EMBD * N_FF);
    struct ggml_init_params gp = {.mem_size = f16 * 2 + ((size_t)N_LAYER * 8 + 4) * (N_EMBD * 4 + 1024) + (64 << 20),
                                  .mem_buffer = NULL, .no_alloc = false};
    struct ggml_context *g = ggml_init(gp);
    if (!g) {
        fprintf(stderr, "qwen_shape: cannot allocate %zu MB\n", gp.mem_size >> 20);
        return 1;
    }
    const int64_t n_kv = (int64_t)N_EMBD / N_HEAD * N_HEAD_KV;
    add(g, gg, "token_embd.weight", GGML_TYPE_F16, N_EMBD, n_vocab, 0);
    add(g, gg, "output_norm.weight", GGML_TYPE_F32, N_EMBD, 0, 1.0f);
    add(g, gg, "output.weight", GGML_TYPE_F16, N_EMBD, n_vocab, 0);
    for (int l = 0; l < N_LAYER; l++) {
        char name[64];
#define T(suffix, type, ne0, ne1, kind)                                \
    snprintf(name, sizeof name, "blk.%d." suffix, l);                  \
    add(g, gg, name, type, ne0, ne1, kind)
        T("attn_norm.weight", GGML_TYPE_F32, N_EMBD, 0, 1.0f);
        T("attn_q.weight", GGML_TYPE_F16, N_EMBD, N_EMBD, 0);
        T("attn_q.bias", GGML_TYPE_F32, N_EMBD, 0, 0.0f);
        T("attn_k.weight", GGML_TYPE_F16, N_EMBD, n_kv, 0);
        T("attn_k.bias", GGML_TYPE_F32, n_kv, 0, 0.0f);
        T("attn_v.weight", GGML_TYPE_F16, N_EMBD, n_kv, 0);
        T("attn_v.bias", GGML_TYPE_F32, n_kv, 0, 0.0f);
        T("attn_output.weight", GGML_TYPE_F16, N_EMBD, N_EMBD, 0);
        T("ffn_norm.weight", GGML_TYPE_F32, N_EMBD, 0, 1.0f);
        T("ffn_gate.weight", GGML_TYPE_F16, N_EMBD, N_FF, 0);
        T("ffn_up.weight", GGML_TYPE_F16, N_EMBD, N_FF, 0);
        T("ffn_down.weight", GGML_TYPE_F16, N_FF, N_EMBD, 0);
#undef T
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.f16.tmp", argv[2]);
    time_t t0 = time(NULL);
    if (!gguf_write_to_file(gg, tmp, false)) {
        fprintf(stderr, "qwen_shape: cannot write %s\n", tmp);
        return 1;
    }
    fprintf(stderr, "qwen_shape: F16 written in %lds; quantizing to Q4_K_M\n", (long)(time(NULL) - t0));
    ggml_free(g);
    gguf_free(gg);
    gguf_free(vocab);
    ggml_free(meta);

    llama_backend_init();
    struct llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    qp.nthread = cores > 0 ? (int)cores : 1;
    t0 = time(NULL);
    uint32_t rc = llama_model_quantize(tmp, argv[2], &qp);
    unlink(tmp);
    if (rc != 0) {
        fprintf(stderr, "qwen_shape: quantization failed (%u)\n", rc);
        unlink(argv[2]);
        return 1;
    }
    fprintf(stderr, "qwen_shape: %s written (Q4_K_M) in %lds\n", argv[2], (long)(time(NULL) - t0));
    llama_backend_free();
    return 0;
}
