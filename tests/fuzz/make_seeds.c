/* make_seeds.c - writes the codec harness's seed corpus (corpus/codec): one
 * valid record of each kind, as the store writes them. Built with the
 * harnesses; run it from tests/fuzz after a change to the record format. */
#include <stdio.h>
#include <string.h>

#include "store/codec.h"

static void save(const char *name, const strbuf *b) {
    char path[256];
    snprintf(path, sizeof path, "corpus/codec/%s", name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b->s, 1, b->n, f) != b->n || fclose(f) != 0) perror(path);
}

int main(void) {
    static const int32_t user[] = {1, 9690, 198, 31530, 314, 260, 2, 198, 1, 520, 9531, 198};
    static const int32_t reply[] = {19556, 17, 2000000, 28};
    static const int32_t end[] = {2, 198};
    turn_rec t = {.turn = 3, .kind = TURN_TOKENS, .fingerprint = 0x1234567890abcdefULL};
    tokvec_append(&t.tok[SEG_USER], user, sizeof user / sizeof user[0]);
    tokvec_append(&t.tok[SEG_REPLY], reply, sizeof reply / sizeof reply[0]);
    tokvec_append(&t.tok[SEG_END], end, 2);
    session_meta m = {.mode = MODE_TOKENIZED,
                      .turn = 3,
                      .created_ms = 1700000000000,
                      .last_ms = 1700000100000,
                      .fingerprint = t.fingerprint,
                      .n_tokens = 48};
    strcpy(m.user_id, "alice");
    strcpy(m.model, "SmolLM2-135M-Instruct");
    strcpy(m.request_id, "req-7");
    strbuf b = {0};
    codec_turn_encode(&t, &b);
    save("turn_tokens", &b);
    strbuf_clear(&b);
    codec_meta_encode(&m, &b);
    save("meta", &b);
    strbuf_clear(&b);
    codec_commit_encode(&m, &t, &b);
    save("commit_tokens", &b);

    turn_rec x = {.turn = 1, .kind = TURN_TEXT, .fingerprint = 7};
    strbuf_puts(&x.text[SEG_SYSTEM], "You are a helpful robot.");
    strbuf_puts(&x.text[SEG_USER], "<|im_start|>user\nWhere is the charger?<|im_end|>\n<|im_start|>assistant\n");
    strbuf_puts(&x.text[SEG_REPLY], "In the hall \xc3\xa9.");
    m.mode = MODE_RAW;
    m.turn = 1;
    m.request_id[0] = '\0';
    strbuf_clear(&b);
    codec_turn_encode(&x, &b);
    save("turn_text", &b);
    strbuf_clear(&b);
    codec_commit_encode(&m, &x, &b);
    save("commit_text", &b);

    turn_rec tomb = {.turn = 0, .kind = TURN_TOKENS};
    m.turn = 0;
    strbuf_clear(&b);
    codec_commit_encode(&m, &tomb, &b);
    save("commit_tombstone", &b);
    strbuf_free(&b);
    turn_rec_free(&t);
    turn_rec_free(&x);
    return 0;
}
