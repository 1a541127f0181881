/* test_codec.c - the stored/replicated encoding: round trips, and every way a
 * damaged or hostile record must be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "store/codec.h"

static void fill_tokens(turn_rec *t) {
    t->kind = TURN_TOKENS;
    t->turn = 7;
    t->fingerprint = 0x0123456789abcdefULL;
    int32_t sys[] = {1, 2, 3}, user[] = {1, 882, 198, 127, 128, 16383, 16384, 49151}, reply[] = {0, 2097151, 16777215},
            end[] = {2, 198};
    tokvec_append(&t->tok[SEG_SYSTEM], sys, 3);
    tokvec_append(&t->tok[SEG_USER], user, 8);
    tokvec_append(&t->tok[SEG_REPLY], reply, 3);
    tokvec_append(&t->tok[SEG_END], end, 2);
}

static void tokens_round_trip(void **state) {
    (void)state;
    turn_rec in = {0}, out = {0};
    fill_tokens(&in);
    strbuf b = {0};
    codec_turn_encode(&in, &b);
    assert_int_equal(codec_turn_decode(b.s, b.n, &out), CODEC_OK);
    assert_int_equal(out.kind, TURN_TOKENS);
    assert_int_equal(out.turn, 7);
    assert_true(out.fingerprint == in.fingerprint);
    for (int s = 0; s < SEG_COUNT; s++) {
        assert_int_equal(out.tok[s].n, in.tok[s].n);
        assert_memory_equal(out.tok[s].v, in.tok[s].v, in.tok[s].n * sizeof(int32_t));
    }
    /* decoding into a used record replaces its contents */
    assert_int_equal(codec_turn_decode(b.s, b.n, &out), CODEC_OK);
    assert_int_equal(out.tok[SEG_USER].n, 8);
    strbuf_free(&b);
    turn_rec_free(&in);
    turn_rec_free(&out);
}

static void tokens_are_compact(void **state) {
    (void)state;
    /* 100 ids below 2^14 cost 2 bytes each, not 4 */
    turn_rec t = {0};
    t.kind = TURN_TOKENS;
    t.turn = 1;
    for (int i = 0; i < 100; i++) tokvec_push(&t.tok[SEG_REPLY], 1000 + i);
    strbuf b = {0};
    codec_turn_encode(&t, &b);
    /* header 16 + 4 counts (1 each, 100 needs 1) + 200 + crc 4 */
    assert_int_equal(b.n, 16 + 4 + 200 + 4);
    strbuf_free(&b);
    turn_rec_free(&t);
}

static void text_round_trip(void **state) {
    (void)state;
    turn_rec in = {0}, out = {0};
    in.kind = TURN_TEXT;
    in.turn = 3;
    strbuf_puts(&in.text[SEG_USER], "What is SLAM? <|im_end|> \xc3\xa9");
    strbuf_puts(&in.text[SEG_REPLY], "Simultaneous localization and mapping.");
    strbuf b = {0};
    codec_turn_encode(&in, &b);
    assert_int_equal(codec_turn_decode(b.s, b.n, &out), CODEC_OK);
    assert_int_equal(out.kind, TURN_TEXT);
    assert_string_equal(out.text[SEG_USER].s, in.text[SEG_USER].s);
    assert_string_equal(out.text[SEG_REPLY].s, in.text[SEG_REPLY].s);
    assert_int_equal(out.text[SEG_SYSTEM].n, 0);
    strbuf_free(&b);
    turn_rec_free(&in);
    turn_rec_free(&out);
}

static void every_truncation_is_refused(void **state) {
    (void)state;
    turn_rec in = {0}, out = {0};
    fill_tokens(&in);
    strbuf b = {0};
    codec_turn_encode(&in, &b);
    for (size_t n = 0; n < b.n; n++) assert_int_not_equal(codec_turn_decode(b.s, n, &out), CODEC_OK);
    strbuf_free(&b);
    turn_rec_free(&in);
    turn_rec_free(&out);
}

static void every_bit_flip_is_refused(void **state) {
    (void)state;
    turn_rec in = {0}, out = {0};
    fill_tokens(&in);
    strbuf b = {0};
    codec_turn_encode(&in, &b);
    for (size_t i = 0; i < b.n; i++)
        for (int bit = 0; bit < 8; bit++) {
            b.s[i] ^= (char)(1 << bit);
            assert_int_not_equal(codec_turn_decode(b.s, b.n, &out), CODEC_OK);
            b.s[i] ^= (char)(1 << bit);
        }
    strbuf_free(&b);
    turn_rec_free(&in);
    turn_rec_free(&out);
}

/* Re-seals a record after editing it, so the check under test is not the CRC. */
static void reseal(strbuf *b) {
    uint32_t c = codec_crc32(b->s, b->n - 4);
    for (int i = 0; i < 4; i++) b->s[b->n - 4 + i] = (char)(c >> (8 * i));
}

static void bad_fields_are_refused(void **state) {
    (void)state;
    turn_rec in = {0}, out = {0};
    fill_tokens(&in);
    strbuf b = {0};
    codec_turn_encode(&in, &b);
    b.s[0] = 'X';
    reseal(&b);
    assert_int_equal(codec_turn_decode(b.s, b.n, &out), CODEC_BAD_MAGIC);
    b.s[0] = 'D';
    b.s[2] = 2;
    reseal(&b);
    assert_int_equal(codec_turn_decode(b.s, b.n, &out), CODEC_BAD_VERSION);
    b.s[2] = 1;
    b.s[3] = 9; /* kind */
    reseal(&b);
    assert_int_equal(codec_turn_decode(b.s, b.n, &out), CODEC_BAD_VALUE);
    b.s[3] = TURN_TOKENS;
    /* a segment count larger than the record: refused before allocating */
    b.s[16] = (char)0xff;
    b.s[17] = (char)0xff;
    reseal(&b);
    assert_int_not_equal(codec_turn_decode(b.s, b.n, &out), CODEC_OK);
    strbuf_free(&b);
    turn_rec_free(&in);
    turn_rec_free(&out);
}

static void meta_round_trip_and_damage(void **state) {
    (void)state;
    session_meta m = {.mode = MODE_RAW,
                      .turn = 9,
                      .created_ms = 1700000000000,
                      .last_ms = 1700000009999,
                      .fingerprint = 42,
                      .n_tokens = 1234};
    strcpy(m.user_id, "robotics_dev");
    strcpy(m.model, "SmolLM2");
    strcpy(m.request_id, "req-9");
    strbuf b = {0};
    codec_meta_encode(&m, &b);
    session_meta out;
    assert_int_equal(codec_meta_decode(b.s, b.n, &out), CODEC_OK);
    assert_memory_equal(&m, &out, sizeof m);
    for (size_t n = 0; n < b.n; n++) assert_int_not_equal(codec_meta_decode(b.s, n, &out), CODEC_OK);
    b.s[5] ^= 1;
    assert_int_equal(codec_meta_decode(b.s, b.n, &out), CODEC_BAD_CHECKSUM);
    strbuf_free(&b);
}

/* Issue 15 item 3: the committing node's URL is an optional trailing field
 * of the meta: absent, the record is byte for byte what it was before; present,
 * it round-trips; a record with it differs from one without only by it. */
static void meta_node_url_is_optional(void **state) {
    (void)state;
    session_meta m = {
        .mode = MODE_TOKENIZED, .turn = 3, .created_ms = 1, .last_ms = 2, .fingerprint = 7, .n_tokens = 99};
    strcpy(m.user_id, "u1");
    strcpy(m.model, "SmolLM2");
    strbuf plain = {0}, with = {0};
    codec_meta_encode(&m, &plain);
    /* the version-1 layout: 3 + 1 + 4 + 8 + 8 + 8 + 4, three spans, the CRC */
    assert_int_equal(plain.n, 36 + 1 + 2 + 1 + 7 + 1 + 0 + 4);
    session_meta out;
    assert_int_equal(codec_meta_decode(plain.s, plain.n, &out), CODEC_OK);
    assert_string_equal(out.node_url, "");
    strcpy(m.node_url, "http://10.0.0.7:8080");
    codec_meta_encode(&m, &with);
    assert_int_equal(with.n, plain.n + 1 + strlen(m.node_url));
    assert_memory_equal(with.s + 3, plain.s + 3, plain.n - 4 - 3); /* same fields before it */
    assert_int_equal(codec_meta_decode(with.s, with.n, &out), CODEC_OK);
    assert_memory_equal(&m, &out, sizeof m);
    for (size_t n = 0; n < with.n; n++) assert_int_not_equal(codec_meta_decode(with.s, n, &out), CODEC_OK);
    strbuf_free(&plain);
    strbuf_free(&with);
}

static void crc_known_value(void **state) {
    (void)state;
    assert_int_equal(codec_crc32("123456789", 9), 0xCBF43926u);
}

/* Issue 14 item 10: the CRC table is a compile-time constant (no lazy
 * build, so no race between threads computing the first checksums), and it
 * is the IEEE CRC-32 table. */
static void crc_table_is_constant_and_correct(void **state) {
    (void)state;
    /* const-qualified at compile time: a mutable table selects 0 */
    int is_const = _Generic(&codec_crc32_table, const uint32_t(*)[256]: 1, default: 0);
    assert_int_equal(is_const, 1);
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        assert_int_equal(codec_crc32_table[i], c);
    }
    /* check values of CRC-32/ISO-HDLC */
    assert_int_equal(codec_crc32("", 0), 0x00000000u);
    assert_int_equal(codec_crc32("a", 1), 0xE8B7BE43u);
    assert_int_equal(codec_crc32("The quick brown fox jumps over the lazy dog", 43), 0x414FA339u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tokens_round_trip),
        cmocka_unit_test(tokens_are_compact),
        cmocka_unit_test(text_round_trip),
        cmocka_unit_test(every_truncation_is_refused),
        cmocka_unit_test(every_bit_flip_is_refused),
        cmocka_unit_test(bad_fields_are_refused),
        cmocka_unit_test(meta_round_trip_and_damage),
        cmocka_unit_test(crc_known_value),
        cmocka_unit_test(crc_table_is_constant_and_correct),
        cmocka_unit_test(meta_node_url_is_optional),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
