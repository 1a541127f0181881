/* codec.h - the binary encoding of a session as it is stored and replicated.
 *
 * A session is one meta record plus one record per committed turn. A turn
 * record is the *delta* of that turn only, so what a commit writes (and what a
 * replica later ships) grows with the turn, not with the conversation.
 *
 * Turn record, version 1, little endian:
 *
 *   "DT" | u8 version | u8 kind | u32 turn | u64 fingerprint
 *   4 x segment: varint length, then the payload
 *        kind TOKENS: length token ids, each an unsigned LEB128 varint
 *        kind TEXT:   length bytes of UTF-8
 *   u32 CRC-32 of every byte before it
 *
 * The four segments are always present (possibly empty), in this order:
 *   SEG_SYSTEM  the system message (only ever non-empty in turn 1)
 *   SEG_USER    the rendered user message, ending with the assistant prefix
 *   SEG_REPLY   the reply: the generated token ids exactly, or its text
 *   SEG_END     the template's end-of-turn tokens after the reply
 * Keeping the boundaries lets truncation drop whole turns, lets tests compare
 * user segments across modes, and lets a later KV-cache match prefixes.
 *
 * Token ids are < 2^21 for every vocabulary we know, so a varint costs 1-3
 * bytes where raw int32 would cost 4; text costs ~4 bytes per token.
 *
 * The fingerprint names the tokenizer and chat template that produced the
 * tokens (llm_fingerprint). A node whose model differs must refuse the record
 * rather than feed its model foreign token ids. Text records carry it too, so
 * a raw session is tied to the template that rendered it.
 *
 * Meta record, version 1:
 *   "DM" | u8 version | u8 mode | u32 turn | u64 created_ms | u64 last_ms
 *   | u64 fingerprint | u32 n_tokens | varint+bytes user_id | varint+bytes model
 *   | varint+bytes request_id (of the turn that wrote it; may be empty)
 *   [| varint+bytes node_url] | u32 CRC-32
 * node_url (issue 15, KV transfer): how peers reach the node that committed
 * the turn (its --advertise-url), so that the node serving the next turn
 * can fetch that node's KV of the session. Optional and written only by a
 * node that advertises a URL, so a deployment that does not use KV
 * transfer writes records exactly as before. It is in the meta rather than
 * in a node-id -> URL table learned from announcements because the meta is
 * what every node already reads before a turn, replicated with the turn
 * itself: no second channel to keep current, nothing lost on a restart,
 * and it names the node of exactly the turn read. Readers from before it
 * refuse a record with it (they allow no trailing bytes): turn on
 * --advertise-url only once every node sharing the store runs a version
 * that reads it (docs/DEPLOY.md).
 *
 * Commit record (what the NATS store publishes per turn): varint length of a
 * meta record, the meta record, then the turn record. One message carries a
 * turn and the session state after it, so a commit is a single atomic append.
 *
 * Decoders treat their input as untrusted (it comes from disk or from other
 * nodes): every length is bounds-checked and the CRC must match. */
#ifndef DC_CODEC_H
#define DC_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../util/ids.h"
#include "../util/vec.h"

enum { SEG_SYSTEM, SEG_USER, SEG_REPLY, SEG_END, SEG_COUNT };
enum { TURN_TOKENS = 1, TURN_TEXT = 2 };

typedef struct {
    uint32_t turn;
    uint8_t kind;         /* TURN_TOKENS or TURN_TEXT */
    uint64_t fingerprint;
    tokvec tok[SEG_COUNT]; /* kind TURN_TOKENS */
    strbuf text[SEG_COUNT]; /* kind TURN_TEXT */
} turn_rec;

/* Session modes, as stored in the meta record. */
typedef enum { MODE_TOKENIZED = 1, MODE_RAW = 2, MODE_CLIENT_SIDE = 3 } session_mode;

typedef struct {
    uint8_t mode;        /* session_mode */
    uint32_t turn;       /* last committed turn; 0 = none yet */
    int64_t created_ms;  /* wall clock */
    int64_t last_ms;     /* last activity (commit), wall clock; TTL counts from here */
    uint64_t fingerprint;
    uint32_t n_tokens;   /* tokens stored (TOKENS) or fed last turn (TEXT) */
    char user_id[ID_MAX + 1];
    char model[128];
    char request_id[ID_MAX + 1]; /* the client's id for the last turn: a retry of it is answered, not refused */
    char node_url[256];          /* the committing node's --advertise-url; "" when it has none (optional field) */
    /* Not encoded: where the store read this meta (store.h, store_turn_commit).
     * NATS: the stream sequence of the message; 0: not read from the store. */
    uint64_t rev;
} session_meta;

typedef enum {
    CODEC_OK = 0,
    CODEC_TRUNCATED, /* input ended early or a length points past it */
    CODEC_BAD_MAGIC,
    CODEC_BAD_VERSION,
    CODEC_BAD_CHECKSUM,
    CODEC_BAD_VALUE /* a field out of range (kind, id length, token id) */
} codec_status;

void turn_rec_free(turn_rec *t);
void turn_rec_clear(turn_rec *t); /* empties the segments, keeps the memory */
size_t turn_rec_tokens(const turn_rec *t); /* sum of token segment lengths */

void codec_turn_encode(const turn_rec *t, strbuf *out);
codec_status codec_turn_decode(const void *data, size_t n, turn_rec *out);

void codec_meta_encode(const session_meta *m, strbuf *out);
codec_status codec_meta_decode(const void *data, size_t n, session_meta *out);

void codec_commit_encode(const session_meta *m, const turn_rec *t, strbuf *out);
/* Decodes the meta part always, and the turn part when t is non-NULL. */
codec_status codec_commit_decode(const void *data, size_t n, session_meta *m, turn_rec *t);

const char *codec_status_str(codec_status s);

uint32_t codec_crc32(const void *data, size_t n);
extern const uint32_t codec_crc32_table[256]; /* read-only: safe from any thread */

#endif
