/* fuzz_codec.c - libFuzzer harness: the store's record decoders.
 *
 * Bytes read from LMDB or from a NATS stream are untrusted: another node, a
 * store operator or a damaged disk may have written them. Every decoder must
 * refuse them cleanly or decode them into records whose encoding decodes to
 * the same encoding again; and sealed records (seal.h) must fail to open
 * unless sealed with the key. This build skips the decoders' checksum
 * (codec.c), so mutations reach the parsing behind it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/codec.h"
#include "store/seal.h"

static seal *key;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static const uint8_t k[SEAL_KEY_BYTES] = {42};
    key = seal_new(k);
    return 0;
}

static void same_bytes(const strbuf *b, const void *data, size_t n) {
    if (b->n != n || memcmp(b->s, data, n) != 0) abort();
}

/* enc(dec(x)) must decode, and encode to itself: what the store writes back
 * after reading a record is stable. */
static void turn_stable(const turn_rec *t) {
    strbuf a = {0}, b = {0};
    turn_rec u = {0};
    codec_turn_encode(t, &a);
    if (codec_turn_decode(a.s, a.n, &u) != CODEC_OK) abort();
    codec_turn_encode(&u, &b);
    same_bytes(&b, a.s, a.n);
    turn_rec_free(&u);
    strbuf_free(&a);
    strbuf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    strbuf again = {0}, a = {0};
    turn_rec t = {0};
    session_meta m, m2;
    if (codec_turn_decode(data, n, &t) == CODEC_OK) turn_stable(&t);
    turn_rec_clear(&t);
    if (codec_meta_decode(data, n, &m) == CODEC_OK) {
        codec_meta_encode(&m, &a);
        if (codec_meta_decode(a.s, a.n, &m2) != CODEC_OK) abort();
        codec_meta_encode(&m2, &again);
        same_bytes(&again, a.s, a.n);
    }
    strbuf_clear(&a);
    if (codec_commit_decode(data, n, &m, &t) == CODEC_OK) {
        turn_stable(&t);
        codec_commit_encode(&m, &t, &a);
        if (codec_commit_decode(a.s, a.n, &m2, NULL) != CODEC_OK) abort();
    }
    strbuf_free(&a);
    turn_rec_free(&t);
    /* random bytes never open; a sealed copy of them always does */
    if (seal_decrypt(key, "fuzz", data, n, &again)) abort();
    strbuf rec = {0};
    strbuf_append(&rec, data, n);
    seal_encrypt(key, "fuzz", &rec);
    if (!seal_decrypt(key, "fuzz", rec.s, rec.n, &again)) abort();
    same_bytes(&again, data, n);
    strbuf_free(&rec);
    strbuf_free(&again);
    return 0;
}
