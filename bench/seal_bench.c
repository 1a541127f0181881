/* seal_bench.c - what sealing stored context costs per record (seal.h),
 * next to what encoding it costs anyway (codec.h), on this machine.
 *
 * Records are commit records as a node writes them: a tokenized turn of
 * U user tokens and R reply tokens plus the session meta. Each size is
 * timed over enough iterations to take ~0.2 s; the table gives ns per
 * record for encode, seal, open and decode, and the bytes sealing adds.
 *
 * usage: build/seal_bench   (bench/run seal) */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "store/codec.h"
#include "store/seal.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(void) {
    static const uint8_t key[SEAL_KEY_BYTES] = {7};
    seal *k = seal_new(key);
    static const struct { int user, reply; const char *what; } sizes[] = {
        {20, 48, "a short turn"}, {40, 128, "the 9-turn scenario's turns"}, {200, 512, "a long turn"},
        {1000, 3000, "a 4k-token turn"}};
    printf("| turn (user + reply tokens) | record bytes | encode ns | seal ns | open ns | decode ns | seal+open / "
           "encode+decode |\n|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        turn_rec t = {.turn = 5, .kind = TURN_TOKENS, .fingerprint = 99};
        for (int i = 0; i < sizes[s].user; i++) tokvec_push(&t.tok[SEG_USER], (i * 7919) % 49152);
        for (int i = 0; i < sizes[s].reply; i++) tokvec_push(&t.tok[SEG_REPLY], (i * 104729) % 49152);
        session_meta m = {.mode = MODE_TOKENIZED, .turn = 5, .created_ms = 1, .last_ms = 2, .fingerprint = 99};
        strcpy(m.user_id, "bench-user");
        strcpy(m.model, "SmolLM2-135M-Instruct");
        strbuf rec = {0}, sealed = {0}, opened = {0};
        turn_rec back = {0};
        session_meta mb;
        codec_commit_encode(&m, &t, &rec);
        int n = 1;
        double enc, sea, ope, dec;
        for (;;) { /* grow n until one pass takes ~0.2 s */
            double t0 = now_ns();
            for (int i = 0; i < n; i++) {
                strbuf_clear(&rec);
                codec_commit_encode(&m, &t, &rec);
            }
            double t1 = now_ns();
            for (int i = 0; i < n; i++) {
                strbuf_clear(&sealed);
                strbuf_append(&sealed, rec.s, rec.n);
                seal_encrypt(k, "dce.kg.t.0123456789abcdef0123456789abcdef", &sealed);
            }
            double t2 = now_ns();
            for (int i = 0; i < n; i++)
                if (!seal_decrypt(k, "dce.kg.t.0123456789abcdef0123456789abcdef", sealed.s, sealed.n, &opened))
                    return 1;
            double t3 = now_ns();
            for (int i = 0; i < n; i++) {
                turn_rec_clear(&back);
                if (codec_commit_decode(opened.s, opened.n, &mb, &back) != CODEC_OK) return 1;
            }
            double t4 = now_ns();
            enc = (t1 - t0) / n, sea = (t2 - t1) / n, ope = (t3 - t2) / n, dec = (t4 - t3) / n;
            if (t4 - t0 > 2e8) break;
            n *= 2;
        }
        printf("| %d + %d (%s) | %zu (+%zu) | %.0f | %.0f | %.0f | %.0f | %.2f |\n", sizes[s].user, sizes[s].reply,
               sizes[s].what, rec.n, sealed.n - rec.n, enc, sea, ope, dec, (sea + ope) / (enc + dec));
        strbuf_free(&rec);
        strbuf_free(&sealed);
        strbuf_free(&opened);
        turn_rec_free(&t);
        turn_rec_free(&back);
    }
    seal_free(k);
    return 0;
}
