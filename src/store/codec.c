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

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320). The table is a
 * constant, not built on first use: a lazily built table is a data race, and
 * on a weakly ordered CPU (ARM edge boxes) a thread could see the "ready" flag
 * before the entries and checksum the first records wrongly, which readers
 * then refuse forever. Generated with the bitwise algorithm; tests/unit/
 * test_codec.c recomputes every entry and the standard check values. */
const uint32_t codec_crc32_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu, 0xe963a535u, 0x9e6495a3u, 0x0edb8832u,
    0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u, 0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u, 0x136c9856u, 0x646ba8c0u, 0xfd62f97au,
    0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u, 0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu, 0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u,
    0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u, 0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u, 0x2f6f7c87u, 0x58684c11u, 0xc1611dabu,
    0xb6662d3du, 0x76dc4190u, 0x01db7106u, 0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du, 0x91646c97u, 0xe6635c01u, 0x6b6b51f4u,
    0x1c6c6162u, 0x856530d8u, 0xf262004eu, 0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u, 0x4db26158u, 0x3ab551ceu, 0xa3bc0074u,
    0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u, 0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau, 0xbe0b1010u, 0xc90c2086u, 0x5768b525u,
    0x206f85b3u, 0xb966d409u, 0xce61e49fu, 0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au, 0xead54739u, 0x9dd277afu, 0x04db2615u,
    0x73dc1683u, 0xe3630b12u, 0x94643b84u, 0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu, 0x196c3671u, 0x6e6b06e7u, 0xfed41b76u,
    0x89d32be0u, 0x10da7a5au, 0x67dd4accu, 0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu, 0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u,
    0x41047a60u, 0xdf60efc3u, 0xa867df55u, 0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u, 0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u,
    0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du, 0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u, 0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u,
    0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u, 0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u, 0x616bffd3u, 0x166ccf45u, 0xa00ae278u,
    0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u, 0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u, 0xbdbdf21cu, 0xcabac28au, 0x53b39330u,
    0x24b4a3a6u, 0xbad03605u, 0xcdd70693u, 0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du};

uint32_t codec_crc32(const void *data, size_t n) {
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = codec_crc32_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
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

static void put_crc(strbuf *b, size_t start) { put_le(b, codec_crc32(b->s + start, b->n - start), 4); }

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
    if (m->node_url[0]) put_bytes(out, m->node_url, strlen(m->node_url)); /* optional (codec.h) */
    put_crc(out, start);
}

/* Ids read back from records: the characters ids have always been made of.
 * Not id_is_valid, which also refuses dots at the ends or in pairs since
 * ids became subject-safe: a record written before (a user "bob.") must
 * still decode, or its session could not even be deleted. */
static bool stored_id_ok(const char *id) {
    for (; *id; id++)
        if (!((*id >= 'a' && *id <= 'z') || (*id >= 'A' && *id <= 'Z') || (*id >= '0' && *id <= '9') || *id == '.' ||
              *id == '_' || *id == '-'))
            return false;
    return true;
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
    size_t nlen = 0;
    const unsigned char *nu = !r.st && r.p != r.end ? get_span(&r, &nlen) : NULL; /* optional (codec.h) */
    if (r.st) return r.st;
    if (r.p != r.end) return CODEC_BAD_VALUE;
    if (nu && (!nlen || !copy_str(out->node_url, sizeof out->node_url, nu, nlen))) return CODEC_BAD_VALUE;
    if (out->mode < MODE_TOKENIZED || out->mode > MODE_RAW) return CODEC_BAD_VALUE;
    /* a tombstone (turn 0, nats.c) names no owner */
    if (!copy_str(out->user_id, sizeof out->user_id, u, ulen) || (!ulen && out->turn) || !stored_id_ok(out->user_id))
        return CODEC_BAD_VALUE;
    if (!copy_str(out->model, sizeof out->model, mo, mlen)) return CODEC_BAD_VALUE;
    if (!copy_str(out->request_id, sizeof out->request_id, rq, rlen) || !stored_id_ok(out->request_id))
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
