/* codec.c - see codec.h for the format and why it looks like this. */
#include "codec.h"

#include <string.h>

#define TURN_MAGIC "DT"
#define META_MAGIC "DM"
#define CODEC_VERSION 1
/* No vocabulary we support comes near this; a larger id in a record means the
 * record is damaged or hostile, not that a model is huge. */
#define TOKEN_ID_MAX (1u << 24)

/* A fuzzing build (tests/fuzz) skips the checksum, as libFuzzer's convention
 * allows, so that mutated records reach the parser behind it. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define CRC_CHECKED 0
#else
#define CRC_CHECKED 1
#endif

uint32_t codec_crc32(const void *data, size_t n) {
    /* CRC-32 (IEEE, reflected), table built on first use. */
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1; /* benign race: every thread writes the same values */
    }
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* --- writers ------------------------------------------------------------- */

static void put_u8(strbuf *b, uint8_t v) { strbuf_append(b, &v, 1); }

static void put_le(strbuf *b, uint64_t v, int bytes) {
    unsigned char tmp[8];
    for (int i = 0; i < bytes; i++) tmp[i] = (unsigned char)(v >> (8 * i));
    strbuf_append(b, tmp, (size_t)bytes);
}

static void put_varint(strbuf *b, uint64_t v) {
    unsigned char tmp[10];
    int n = 0;
    do {
        tmp[n] = (unsigned char)(v & 0x7F);
        v >>= 7;
        if (v) tmp[n] |= 0x80;
        n++;
    } while (v);
    strbuf_append(b, tmp, (size_t)n);
}

static void put_bytes(strbuf *b, const void *p, size_t n) {
    put_varint(b, n);
    strbuf_append(b, p, n);
}

static void put_crc(strbuf *b, size_t start) {
    put_le(b, codec_crc32(b->s + start, b->n - start), 4);
}

/* --- readers: a cursor that fails sticky on the first overrun ------------- */

typedef struct {
    const unsigned char *p, *end;
    codec_status st;
} reader;

static uint64_t get_le(reader *r, int bytes) {
    if (r->st || r->end - r->p < bytes) {
        if (!r->st) r->st = CODEC_TRUNCATED;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)r->p[i] << (8 * i);
    r->p += bytes;
    return v;
}

static uint64_t get_varint(reader *r) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->st || r->p >= r->end) {
            if (!r->st) r->st = CODEC_TRUNCATED;
            return 0;
        }
        unsigned char c = *r->p++;
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return v;
    }
    r->st = CODEC_BAD_VALUE; /* more than 10 bytes: not a varint we wrote */
    return 0;
}

static const unsigned char *get_span(reader *r, size_t *len) {
    uint64_t n = get_varint(r);
    if (r->st) return NULL;
    if (n > (uint64_t)(r->end - r->p)) {
        r->st = CODEC_TRUNCATED;
        return NULL;
    }
    const unsigned char *s = r->p;
    r->p += n;
    *len = (size_t)n;
    return s;
}

/* Checks magic, version and trailing CRC; leaves r positioned after the
 * 4-byte header and with end moved before the CRC. */
static codec_status open_record(reader *r, const void *data, size_t n, const char *magic) {
    r->p = data;
    r->end = r->p + n;
    r->st = CODEC_OK;
    if (n < 4 + 4) return CODEC_TRUNCATED;
    if (memcmp(r->p, magic, 2) != 0) return CODEC_BAD_MAGIC;
    if (r->p[2] != CODEC_VERSION) return CODEC_BAD_VERSION;
    const unsigned char *crc_at = r->end - 4;
    uint32_t want = (uint32_t)crc_at[0] | (uint32_t)crc_at[1] << 8 | (uint32_t)crc_at[2] << 16 |
                    (uint32_t)crc_at[3] << 24;
    if (CRC_CHECKED && codec_crc32(data, n - 4) != want) return CODEC_BAD_CHECKSUM;
    r->end = crc_at;
    r->p += 3;
    return CODEC_OK;
}

/* --- turn records ---------------------------------------------------------- */

void turn_rec_clear(turn_rec *t) {
    for (int i = 0; i < SEG_COUNT; i++) {
        tokvec_clear(&t->tok[i]);
        strbuf_clear(&t->text[i]);
    }
}

void turn_rec_free(turn_rec *t) {
    for (int i = 0; i < SEG_COUNT; i++) {
        tokvec_free(&t->tok[i]);
        strbuf_free(&t->text[i]);
    }
}

size_t turn_rec_tokens(const turn_rec *t) {
    size_t n = 0;
    for (int i = 0; i < SEG_COUNT; i++) n += t->tok[i].n;
    return n;
}

void codec_turn_encode(const turn_rec *t, strbuf *out) {
    size_t start = out->n;
    strbuf_append(out, TURN_MAGIC, 2);
    put_u8(out, CODEC_VERSION);
    put_u8(out, t->kind);
    put_le(out, t->turn, 4);
    put_le(out, t->fingerprint, 8);
    for (int i = 0; i < SEG_COUNT; i++) {
        if (t->kind == TURN_TOKENS) {
            put_varint(out, t->tok[i].n);
            for (size_t k = 0; k < t->tok[i].n; k++) put_varint(out, (uint32_t)t->tok[i].v[k]);
        } else {
            put_bytes(out, t->text[i].s, t->text[i].n);
        }
    }
    put_crc(out, start);
}

codec_status codec_turn_decode(const void *data, size_t n, turn_rec *out) {
    reader r;
    codec_status st = open_record(&r, data, n, TURN_MAGIC);
    if (st) return st;
    turn_rec_clear(out);
    out->kind = (uint8_t)get_le(&r, 1);
    out->turn = (uint32_t)get_le(&r, 4);
    out->fingerprint = get_le(&r, 8);
    if (r.st) return r.st;
    if (out->kind != TURN_TOKENS && out->kind != TURN_TEXT) return CODEC_BAD_VALUE;
    for (int i = 0; i < SEG_COUNT && !r.st; i++) {
        if (out->kind == TURN_TOKENS) {
            uint64_t count = get_varint(&r);
            /* each id takes at least one byte: reject counts the input cannot hold
             * before allocating for them */
            if (!r.st && count > (uint64_t)(r.end - r.p)) r.st = CODEC_TRUNCATED;
            if (r.st) break;
            tokvec_reserve(&out->tok[i], (size_t)count);
            for (uint64_t k = 0; k < count && !r.st; k++) {
                uint64_t id = get_varint(&r);
                if (!r.st && id >= TOKEN_ID_MAX) r.st = CODEC_BAD_VALUE;
                if (!r.st) tokvec_push(&out->tok[i], (int32_t)id);
            }
        } else {
            size_t len = 0;
            const unsigned char *s = get_span(&r, &len);
            if (s) strbuf_append(&out->text[i], s, len);
        }
    }
    if (!r.st && r.p != r.end) r.st = CODEC_BAD_VALUE; /* trailing bytes */
    return r.st;
}

/* --- meta records ------------------------------------------------------------ */

void codec_meta_encode(const session_meta *m, strbuf *out) {
    size_t start = out->n;
    strbuf_append(out, META_MAGIC, 2);
    put_u8(out, CODEC_VERSION);
    put_u8(out, m->mode);
    put_le(out, m->turn, 4);
    put_le(out, (uint64_t)m->created_ms, 8);
    put_le(out, (uint64_t)m->last_ms, 8);
    put_le(out, m->fingerprint, 8);
    put_le(out, m->n_tokens, 4);
    put_bytes(out, m->user_id, strlen(m->user_id));
    put_bytes(out, m->model, strlen(m->model));
    put_bytes(out, m->request_id, strlen(m->request_id));
    put_crc(out, start);
}

static bool copy_str(char *dst, size_t cap, const unsigned char *s, size_t n) {
    if (!s || n >= cap || memchr(s, '\0', n)) return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

codec_status codec_meta_decode(const void *data, size_t n, session_meta *out) {
    reader r;
    codec_status st = open_record(&r, data, n, META_MAGIC);
    if (st) return st;
    memset(out, 0, sizeof *out);
    out->mode = (uint8_t)get_le(&r, 1);
    out->turn = (uint32_t)get_le(&r, 4);
    out->created_ms = (int64_t)get_le(&r, 8);
    out->last_ms = (int64_t)get_le(&r, 8);
    out->fingerprint = get_le(&r, 8);
    out->n_tokens = (uint32_t)get_le(&r, 4);
    size_t ulen = 0, mlen = 0, rlen = 0;
    const unsigned char *u = get_span(&r, &ulen);
    const unsigned char *mo = get_span(&r, &mlen);
    const unsigned char *rq = get_span(&r, &rlen);
    if (r.st) return r.st;
    if (r.p != r.end) return CODEC_BAD_VALUE;
    if (out->mode < MODE_TOKENIZED || out->mode > MODE_RAW) return CODEC_BAD_VALUE;
    if (!copy_str(out->user_id, sizeof out->user_id, u, ulen) || !id_is_valid(out->user_id))
        return CODEC_BAD_VALUE;
    if (!copy_str(out->model, sizeof out->model, mo, mlen)) return CODEC_BAD_VALUE;
    if (!copy_str(out->request_id, sizeof out->request_id, rq, rlen) || (rlen && !id_is_valid(out->request_id)))
        return CODEC_BAD_VALUE;
    return CODEC_OK;
}

/* --- commit records ---------------------------------------------------------- */

void codec_commit_encode(const session_meta *m, const turn_rec *t, strbuf *out) {
    strbuf meta = {0};
    codec_meta_encode(m, &meta);
    put_varint(out, meta.n);
    strbuf_append(out, meta.s, meta.n);
    strbuf_free(&meta);
    codec_turn_encode(t, out);
}

codec_status codec_commit_decode(const void *data, size_t n, session_meta *m, turn_rec *t) {
    reader r = {data, (const unsigned char *)data + n, CODEC_OK};
    size_t mlen = 0;
    const unsigned char *meta = get_span(&r, &mlen);
    if (r.st) return r.st;
    codec_status st = codec_meta_decode(meta, mlen, m);
    if (st || !t) return st;
    st = codec_turn_decode(r.p, (size_t)(r.end - r.p), t);
    if (!st && t->turn != m->turn) st = CODEC_BAD_VALUE;
    return st;
}

const char *codec_status_str(codec_status s) {
    switch (s) {
    case CODEC_OK: return "ok";
    case CODEC_TRUNCATED: return "truncated record";
    case CODEC_BAD_MAGIC: return "not a DisCEdge record";
    case CODEC_BAD_VERSION: return "unsupported record version";
    case CODEC_BAD_CHECKSUM: return "checksum mismatch";
    case CODEC_BAD_VALUE: return "field out of range";
    }
    return "unknown";
}
